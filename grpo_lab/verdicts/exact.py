"""Rules for claims that must hold at every optimiser step, checked exactly (one counterexample
refutes), and the seed's loss-variance convergence rule against the exact gap to J*.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from grpo_lab.analysis import SweepData
from grpo_lab.verdicts.core import NoSignal, Outcome, Params, rule

# ----------------------------------------------------------------------------- exact checks


def _upper_rate_bound(n: int, confidence: float = 0.95) -> float:
    """Exact (Clopper-Pearson) upper bound on a rate after 0 events in n trials: 1 - (1-c)^(1/n)."""
    return 1.0 - (1.0 - confidence) ** (1.0 / n) if n > 0 else 1.0


def _universal(steps: pd.DataFrame, bad: pd.Series, what: str, worst: str) -> Outcome:
    """Verdict for a claim that must hold at every optimiser step, checked exactly: one
    counterexample refutes it. With none, the summary says how many exact checks were made; the
    checks are correlated steps of deterministic runs, not a random sample, so no rate bound is
    claimed from them."""
    n = int(bad.notna().sum())
    k = int(bad.fillna(False).sum())
    runs_with = int(steps.loc[bad.fillna(False).astype(bool), "run_id"].nunique()) if k else 0
    evidence = {
        "steps": n,  # exact checks: one per optimiser step
        "violating_steps": k,  # counterexamples
        "runs": int(steps["run_id"].nunique()),
        "runs_with_violation": runs_with,
        "worst": worst,
    }
    if n == 0:
        return "inconclusive", f"no optimiser step recorded {what}", evidence
    if k > 0:
        return (
            "violated",
            f"{what} failed at {k} of {n} exact checks ({runs_with} runs); {worst}",
            evidence,
        )
    return "holds", f"0 counterexamples to {what} in {n} exact checks; {worst}", evidence


class BoundParams(Params):
    tol: float = Field(1e-9, ge=0.0)  # numerical slack before a check counts as failed


class RatioParams(BoundParams):
    ratio: Literal["exact_ratio", "ratio"] = "exact_ratio"

    def hypothesis(self) -> str:
        where = (
            "over every (s, a) the old policy visits (exact)"
            if self.ratio == "exact_ratio"
            else "over the sampled tokens of each step's minibatch"
        )
        return f"after every optimiser step, 1 - eps_low <= r <= 1 + eps_high {where}"


@rule("ratio-bound", RatioParams)
def _ratio_bound(data: SweepData, p: RatioParams) -> Outcome:
    """The seed's lemma |r - 1| <= eps, checked exactly after every optimiser step over every
    (s, a) the old policy visits (``exact_ratio_max/min`` against the run's eps_low / eps_high);
    with ``ratio = "ratio"``, over the sampled tokens of the step's minibatch (``ratio_max/min``,
    language models): one token outside the range is a counterexample."""
    steps = data.steps
    col = p.ratio
    lo = 1.0 - steps["cfg.loss.eps_low"]
    hi = 1.0 + steps["cfg.loss.eps_high"]
    over = steps[f"{col}_max"] - hi
    under = lo - steps[f"{col}_min"]
    bad = ((over > p.tol) | (under > p.tol)).astype("boolean")
    bad[steps[f"{col}_max"].isna()] = pd.NA
    excess = float(pd.concat([over, under]).max())
    worst = f"largest excursion beyond the clip range: {excess:.3g}"
    status, summary, ev = _universal(steps, bad, "|r - 1| <= eps", worst)
    ev["max_excursion"] = excess
    ev[f"max_{col}"] = float(steps[f"{col}_max"].max())
    ev[f"min_{col}"] = float(steps[f"{col}_min"].min())
    if col == "exact_ratio":
        ev["mean_frac_outside"] = float(steps["exact_frac_outside"].mean())
    return status, summary, ev


class TRPOBoundParams(BoundParams):
    def hypothesis(self) -> str:
        return "at every update, J(new) - J(old) >= L_old(new) - J(old) - C max_s KL (slack >= 0)"


@rule("trpo-bound", TRPOBoundParams)
def _trpo_bound(data: SweepData, p: TRPOBoundParams) -> Outcome:
    """TRPO Theorem 1 (arXiv 1502.05477): J(new) - J(old) >= L_old(new) - J(old) - C max KL at
    every step (``bound_slack >= 0``); its slack is reported beside the median true gain."""
    steps = data.steps
    slack = steps["bound_slack"]
    bad = (slack < -p.tol).astype("boolean")
    bad[slack.isna()] = pd.NA
    worst = f"min slack {slack.min():.3g}, median slack {slack.median():.3g}"
    status, summary, ev = _universal(steps, bad, "the Theorem 1 lower bound", worst)
    ev["min_slack"] = float(slack.min())
    ev["median_slack"] = float(slack.median())
    ev["median_true_gain"] = float(steps["true_gain"].median())
    return status, summary, ev


class SurrogateParams(BoundParams):
    def hypothesis(self) -> str:
        return "at every optimiser step, exact clipped-objective gain <= true gain J(new) - J(old)"


@rule("surrogate-bound", SurrogateParams)
def _surrogate_bound(data: SweepData, p: SurrogateParams) -> Outcome:
    """The seed's "the clipped objective provides a lower bound on the true objective": is the
    exact clipped objective's gain <= the true gain J(new) - J(old) at every step?"""
    steps = data.steps
    gap = steps["clipped_gain"] - steps["true_gain"]
    bad = (gap > p.tol).astype("boolean")
    bad[gap.isna()] = pd.NA
    worst = f"largest overestimate of the true gain: {gap.max():.3g}"
    status, summary, ev = _universal(steps, bad, "clipped gain <= true gain", worst)
    ev["max_overestimate"] = float(gap.max())
    return status, summary, ev


# ----------------------------------------------------------------------------- convergence rule


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a rate k / n (Clopper & Pearson 1934)."""
    from scipy.stats import beta

    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def min_runs_for_holds(max_error: float, confidence: float = 0.95) -> int:
    """The fewest runs at which 0 errors put the two-sided Clopper-Pearson upper bound below
    ``max_error``: the smallest n with 1 - ((1 - c) / 2)^(1/n) < max_error."""
    a = (1.0 - confidence) / 2
    n = 1
    while 1.0 - a ** (1.0 / n) >= max_error:
        n += 1
    return n


def _per_iteration_loss(steps: pd.DataFrame) -> pd.DataFrame:
    """The policy loss of the last optimiser step of each iteration, per run."""
    last = steps.sort_values("step").groupby(["run_id", "iteration"], as_index=False).last()
    return last[["run_id", "iteration", "pg_loss"]]


ZERO_LOSS = 1e-12  # |policy loss| below this at every step: identically zero (algebra, not data)


class ConvergenceParams(Params):
    window: int = Field(10, ge=2)
    threshold: float = Field(1e-4, gt=0.0)
    gap_tol: float = Field(0.01, gt=0.0)
    max_error: float = Field(0.1, gt=0.0, lt=1.0)

    def hypothesis(self) -> str:
        return (
            f"the error rate of is_converged (Var of the last {self.window} policy losses < "
            f"{self.threshold:g}, after epoch 10) against the exact gap (<= {self.gap_tol:g} |J*|)"
            f" is below {self.max_error:g}"
        )


@rule("convergence", ConvergenceParams)
def _convergence(data: SweepData, p: ConvergenceParams) -> Outcome:
    """The seed's ``is_converged`` (Var of the last ``window`` policy losses < ``threshold``,
    checked after epoch 10) against the truth (gap to J* <= ``gap_tol`` * |J*|), run by run.

    An error is a run where the seed's rule fires while the exact gap is still large (false
    convergence) or never fires although the policy reached the optimum (missed). The claim
    "is_converged detects convergence" holds when the error rate's 95% Clopper-Pearson upper
    bound is below ``max_error``, is violated when its lower bound is above, else inconclusive
    (``min_runs_for_holds``: 0 errors in 36 runs are needed to hold at max_error = 0.1).

    A run whose policy loss is identically zero (|loss| < 1e-12 at every step: one optimiser step
    per batch makes the ratio 1 and group-centred advantages sum to 0) makes the variance rule
    fire whatever happens; it is uninformative and is left out, and counted in the evidence.
    """
    steps = data.steps
    absmax = steps.groupby("run_id")["pg_loss"].apply(lambda x: float(np.nanmax(np.abs(x))))
    zero_runs = sorted(absmax.index[absmax < ZERO_LOSS])
    losses = _per_iteration_loss(steps)
    it = data.iterations.merge(losses, on=["run_id", "iteration"], how="left")
    label_of = data.summary.set_index("run_id")["cfg.label"] if "cfg.label" in data.summary else {}
    evidence: dict[str, Any] = {
        "runs_loss_identically_zero": len(zero_runs),
        "labels_loss_identically_zero": sorted({str(label_of[r]) for r in zero_runs})
        if len(zero_runs) and len(label_of)
        else [],
        "runs_needed_to_hold": min_runs_for_holds(p.max_error),
    }
    runs = sorted(set(it["run_id"].unique()) - set(zero_runs))
    if not runs:
        raise NoSignal(
            "the policy loss is identically zero in every run (one optimiser step per batch: "
            "ratio 1, group-centred advantages sum to 0), so the loss-variance rule fires "
            "whatever happens: the rule is uninformative here",
            evidence,
        )
    false_conv = missed = 0
    fired_gaps = []
    j_star = data.summary.set_index("run_id")["j_star"]
    for rid, r in it[it["run_id"].isin(runs)].groupby("run_id"):
        r = r.sort_values("iteration")
        js = abs(float(j_star[rid]))
        pl = r["pg_loss"].to_numpy()
        gaps = r["gap"].to_numpy()
        w = p.window
        fired = next(
            (e for e in range(len(pl)) if e > 10 and pl[max(0, e + 1 - w) : e + 1].var() < p.threshold),
            None,
        )  # fmt: skip
        reached = bool((gaps <= p.gap_tol * js).any())
        if fired is not None:
            fired_gaps.append(gaps[fired] / js)
            false_conv += int(gaps[fired] > p.gap_tol * js)
        else:
            missed += int(reached)
    n = len(runs)
    errors = false_conv + missed
    low, high = clopper_pearson(errors, n)
    evidence.update(
        runs_judged=n,
        false_convergence=false_conv,
        missed=missed,
        error_rate=errors / n,
        error_rate_ci95=[low, high],
        median_relative_gap_when_fired=float(np.median(fired_gaps)) if fired_gaps else None,
        max_error=p.max_error,
    )
    rate = f"error rate {errors}/{n} (95% CI {low:.2f}-{high:.2f})"
    detail = f"{false_conv} false convergence(s), {missed} missed"
    if zero_runs:
        detail += f"; {len(zero_runs)} runs with a loss identically zero left out (uninformative)"
    if high < p.max_error:
        return "holds", f"{rate} < {p.max_error:g}: {detail}", evidence
    if low > p.max_error:
        return "violated", f"{rate} > {p.max_error:g}: {detail}", evidence
    return "inconclusive", f"{rate} straddles {p.max_error:g}: {detail}", evidence
