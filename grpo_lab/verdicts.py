"""Verdict rules: how a sweep's stored data answer the claim a protocol quotes.

A rule is a function ``fn(data, params) -> (status, summary, evidence)`` registered in
``VERDICTS`` with a pydantic model of its parameters (``Rule``). The model is the rule's schema:
``grpo-lab check`` validates a protocol's ``[verdict] params`` against it before anything runs,
and checks every parameter that names a grid axis (``axis``), a value on it (``claimed``) or an
algorithm label (``better``, ``worse``, ``subject``, ...) against the protocol itself.

Statuses are ``holds``, ``violated`` and ``inconclusive``. Every rule can reach each of them at its
protocol's shipped run counts (``tests/test_verdicts.py`` builds synthetic data for each). Where the
data cannot speak, the status is ``inconclusive`` and the summary starts "no signal:" with the
reason (``NoSignal``): every condition gave identical results (an inert axis), every group had
zero reward variance, the clip never activated, a ceiling, a loss identically zero.

``judge`` adds what a reader needs beside the answer: the *hypothesis* the rule tested (what
"better" / "claimed" mean, not a finding), and the *scope* (environment, algorithms and their
settings, budget, runs) within which the verdict speaks (design.md §4).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from grpo_lab.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from grpo_lab.protocols import Protocol

Outcome = tuple[str, str, dict[str, Any]]  # (status, summary, evidence)
STATUSES = ("holds", "violated", "inconclusive")


# ----------------------------------------------------------------------------- data and verdict


@dataclass
class Verdict:
    """A protocol's answer: ``status`` in ``STATUSES``, a one-line summary, the evidence (numbers,
    with their confidence intervals), the hypothesis the rule tested and the verdict's scope."""

    protocol: str
    claim: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    question: str = ""
    hypothesis: str = ""
    scope: str = ""
    not_shown: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=float)


@dataclass
class SweepData:
    """A sweep's stored results as tidy tables (``grpo_lab.store.load_results``): one row per
    optimiser step, per iteration, and per run, each with the run's ``cfg.*`` columns."""

    steps: pd.DataFrame
    iterations: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None

    @classmethod
    def load(cls, sweep_path: str | Path) -> SweepData:
        from grpo_lab.store import load_results

        return cls(
            steps=load_results(sweep_path, "steps"),
            iterations=load_results(sweep_path, "iterations"),
            summary=load_results(sweep_path, "summary"),
        )


def _as_data(data: SweepData | pd.DataFrame) -> SweepData:
    """Rules that read only the steps also accept the steps table itself."""
    return SweepData(steps=data) if isinstance(data, pd.DataFrame) else data


class NoSignal(Exception):
    """Raised inside a rule when the data hold no signal; ``judge`` turns it into
    ``inconclusive`` with the summary "no signal: <reason>"."""

    def __init__(self, reason: str, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence or {}


def no_signal(reason: str, evidence: dict[str, Any] | None = None) -> Outcome:
    ev = {**(evidence or {}), "no_signal": reason}
    return "inconclusive", f"no signal: {reason}", ev


# ----------------------------------------------------------------------------- rule registry


class Params(BaseModel):
    """A rule's parameters. Subclasses list which fields name grid axes, values on an axis, or
    algorithm labels, so a protocol can be checked against them before it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    AXES: ClassVar[tuple[str, ...]] = ()  # fields holding "cfg.<grid axis>"
    CLAIMED: ClassVar[tuple[tuple[str, str], ...]] = ()  # (value field, its axis field)
    LABELS: ClassVar[tuple[str, ...]] = ()  # fields holding labels (str or list of str)

    def hypothesis(self) -> str:
        return ""


@dataclass(frozen=True)
class Rule:
    """A verdict rule: ``fn(data, params)`` with its parameter schema ``params``."""

    fn: Callable[[SweepData, Any], Outcome]
    params: type[Params]
    doc: str = ""

    def validate(self, params: dict[str, Any] | Params) -> Params:
        return params if isinstance(params, self.params) else self.params.model_validate(params)

    def __call__(self, data: SweepData | pd.DataFrame, params: dict[str, Any] | Params) -> Outcome:
        p = self.validate(params)
        try:
            return self.fn(_as_data(data), p)
        except NoSignal as e:
            return no_signal(e.reason, e.evidence)


VERDICTS: Registry[Rule] = Registry("verdict rule")


def rule(name: str, params: type[Params]) -> Callable[[Callable[..., Outcome]], Rule]:
    """``@rule("ratio-bound", BoundParams)``: register ``fn`` with its parameter schema."""

    def add(fn: Callable[..., Outcome]) -> Rule:
        return VERDICTS.add(name, Rule(fn, params, fn.__doc__ or ""))

    return add


def did_you_mean(word: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' when a close option exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- judge and scope


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def scope_line(
    protocol: Protocol, budget: str, runs: int, overrides: dict[str, Any] | None = None
) -> str:
    """Where the verdict speaks: environment, algorithms and their settings, grid, budget, runs."""
    env = protocol.env.name + (f" {_short(protocol.env.kwargs)}" if protocol.env.kwargs else "")
    algos = "; ".join(
        f"{a.label or a.name} = {a.name}" + (f" {_short(a.config)}" if a.config else "")
        for a in protocol.algorithms
    )
    grid = ", ".join(
        f"{k} in {_short(v)}" for k, v in protocol.grid.items() if k not in (overrides or {})
    )
    b = getattr(protocol.budget, budget, {}) if budget in ("quick", "full") else {}
    parts = [f"env {env}", f"algorithms: {algos}"]
    if grid:
        parts.append(f"grid: {grid}")
    parts.append(f"{budget} budget {_short(b)}" if b else f"{budget} budget")
    if overrides:
        parts.append(f"overrides {_short(overrides)}")
    parts.append(f"{runs} runs")
    return "; ".join(parts)


def judge(
    protocol: Protocol,
    sweep_path: str | Path,
    *,
    budget: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Verdict:
    """Apply the protocol's verdict rule to the stored results of its sweep."""
    data = SweepData.load(sweep_path)
    r = VERDICTS.get(protocol.verdict.rule)
    params = r.validate(protocol.verdict.params)
    status, summary, evidence = r(data, params)
    budget = budget or str(Path(sweep_path).name).rsplit("-", 1)[-1]
    runs = int(data.summary["run_id"].nunique()) if data.summary is not None else 0
    return Verdict(
        protocol.name,
        protocol.claim,
        status,
        summary,
        evidence,
        question=protocol.question,
        hypothesis=params.hypothesis(),
        scope=scope_line(protocol, budget, runs, overrides),
        not_shown=protocol.not_shown,
    )


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


# ----------------------------------------------------------------------------- scores


SCORES = ("return", "eval_acc", "eval_return")
Score = Literal["auto", "return", "eval_acc", "eval_return"]


def final_scores(data: SweepData, score: str = "auto") -> pd.DataFrame:
    """One row per run: its config columns and its final score: "return", the normalised return
    J_final / |J*| (tabular runs), "eval_acc", the held-out accuracy of a language model at the
    end (``eval_acc_final``), or "eval_return", the mean return of deterministic evaluation
    episodes (classic control); "auto" takes the one the summary has. Runs that raised are
    dropped; diverged runs keep their (non-finite or collapsed) score."""
    s = data.summary[data.summary["status"] != "error"].copy()
    if score == "auto":
        has_return = "j_final" in s and s["j_final"].notna().any()
        score = next(
            (k for k, col in (("eval_acc", "eval_acc_final"), ("eval_return", "eval_return"))
             if not has_return and col in s),
            "return",
        )  # fmt: skip
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {['auto', *SCORES]}")
    if score == "return":
        s["score"] = s["j_final"] / s["j_star"].abs()
    else:
        s["score"] = s["eval_acc_final" if score == "eval_acc" else "eval_return"]
    s.attrs["score"] = {"return": "J/J*", "eval_acc": "held-out accuracy"}.get(
        score, "evaluation return"
    )
    s.attrs["score_key"] = score
    return s


def _varying(s: pd.DataFrame, exclude: set[str]) -> list[str]:
    """cfg.* columns that vary across runs, without ``exclude``."""
    cols = [c for c in s.columns if c.startswith("cfg.") and c not in exclude]
    return [c for c in cols if s[c].astype(str).nunique() > 1]


def _tied_to(s: pd.DataFrame, axis: str) -> set[str]:
    """cfg.* columns that are a function of ``axis`` and it of them (a zipped axis "a+b")."""
    out = {axis}
    for c in _varying(s, {axis}):
        pairs = s[[axis, c]].astype(str).drop_duplicates()
        if pairs[axis].is_unique and pairs[c].is_unique:
            out.add(c)
    return out


def _ceiling_check(s: pd.DataFrame, ceiling: float | None, what: str) -> None:
    """NoSignal when every run's score sits at the ceiling (within 1e-9 relative)."""
    if ceiling is None or not len(s):
        return
    at = np.isclose(s["score"].to_numpy(dtype=float), ceiling, rtol=1e-9, atol=1e-9)
    if at.all():
        raise NoSignal(
            f"ceiling: every run ended at the maximum {what} {ceiling:g}, so the conditions "
            "cannot be told apart (use a smaller budget or a harder task)",
            {"runs_at_ceiling": int(at.sum()), "ceiling": ceiling},
        )


def _default_ceiling(score_key: str, ceiling: float | None) -> float | None:
    return 1.0 if ceiling is None and score_key == "return" else ceiling


def _signal_checks(data: SweepData, s: pd.DataFrame, axis: str | None) -> None:
    """The no-signal guards that apply to any comparison of final scores: every group had zero
    reward variance (no advantage, no gradient); for a clip-epsilon axis, the clip never
    activated (the epsilon cannot matter)."""
    it = data.iterations
    if it is not None and "zero_std_frac" in it and len(it):
        z = it["zero_std_frac"].to_numpy(dtype=float)
        if np.isfinite(z).any() and np.nanmin(z) >= 1.0:
            raise NoSignal(
                "every group had zero reward variance in every iteration (all advantages 0, "
                "ratio 1): nothing was learned, so the conditions cannot differ",
                {"zero_std_frac_min": 1.0},
            )
    if axis is not None and ("eps" in axis or "clip" in axis) and len(data.steps):
        st = data.steps
        cols = [c for c in ("clip_frac", "exact_frac_outside") if c in st]
        if cols and "clip_frac" in st:
            cf = st["clip_frac"].to_numpy(dtype=float)
            if np.isfinite(cf).any() and np.nanmax(cf) == 0.0:
                raise NoSignal(
                    f"the clip never activated (clip_frac = 0 at every step), so {axis} "
                    "cannot change any update (e.g. one optimiser step per batch: ratio 1)",
                    {"clip_frac_max": 0.0},
                )


# ----------------------------------------------------------------------------- best setting


class BestSettingParams(Params):
    AXES: ClassVar[tuple[str, ...]] = ("axis",)
    CLAIMED: ClassVar[tuple[tuple[str, str], ...]] = (("claimed", "axis"),)
    axis: str
    claimed: float | int | str
    score: Score = "auto"
    ceiling: float | None = None  # the score's maximum (J/J*: 1); all runs there: no signal
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return (
            f"{self.axis} = {self.claimed} gives a higher final score than every other value, in"
            " paired runs (same seed and other settings)"
        )


@rule("best-setting", BestSettingParams)
def _best_setting(data: SweepData, p: BestSettingParams) -> Outcome:
    """A claim that one value of a sweep axis is optimal (the seed: "optimal eps (0.2)").

    Every value of ``axis`` runs with the same seeds and other settings, so the comparison is
    paired: for each other value v and each pair (runs equal but for the axis),
    d = score(v) - score(claimed). Per value: the mean of d over strata (the other varying axes,
    e.g. lr; seeds are the runs within a stratum) with a 95% stratified bootstrap CI
    (arXiv 2108.13264 §4.1). Holds when every other value's CI lies below 0; violated when some
    value's CI lies above 0; otherwise inconclusive. Beside it, each value's IQM stratified by the
    other axes (the mean over strata of the per-stratum IQM), so trimming never drops a stratum.
    """
    from grpo_lab import stats

    s = final_scores(data, p.score)
    axis, claimed = p.axis, p.claimed
    evidence: dict[str, Any] = {"axis": axis, "claimed": claimed}
    if axis not in s:
        return "inconclusive", f"the sweep has no column {axis!r}", evidence
    values = sorted(s[axis].unique(), key=lambda v: (str(type(v)), v))
    if claimed not in values:
        return "inconclusive", f"the sweep has no run with {axis} = {claimed}", evidence
    _signal_checks(data, s, axis)
    _ceiling_check(s, _default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
    wide, pair_cols, strata_cols = _paired_wide(s, axis)
    evidence["paired_by"] = pair_cols
    evidence["strata"] = strata_cols
    if len(wide) == 0:
        return "inconclusive", "no complete pair of runs over the axis values", evidence
    d_all = wide.sub(wide[claimed], axis=0).drop(columns=[claimed])
    if np.allclose(d_all.to_numpy(dtype=float), 0.0, atol=1e-12):
        raise NoSignal(
            f"every value of {axis} gave identical results in every pair: the swept axis was "
            "inert here",
            evidence,
        )
    strata = sorted(wide.index.get_level_values(0).unique())
    per = min(int((wide.index.get_level_values(0) == k).sum()) for k in strata)

    def by_stratum(col: pd.Series) -> np.ndarray:  # (R, K): R pairs per stratum
        return np.stack([col.xs(k, level=0).to_numpy(dtype=float)[:per] for k in strata], axis=1)

    def strat_iqm(m: np.ndarray) -> float:
        return float(np.mean([stats.iqm(m[:, k]) for k in range(m.shape[1])]))

    table = {}
    for v in wide.columns:
        m = by_stratum(wide[v])
        table[v] = (
            stats.stratified_bootstrap_ci(m, strat_iqm, reps=min(p.reps, 500), seed=0)
            if per > 1
            else (strat_iqm(m),) * 3
        )
    evidence["iqm_ci"] = {str(k): v for k, v in table.items()}
    evidence["pairs"] = int(len(wide))
    diffs = {v: _mean_diff_ci(d_all[v], p.reps) for v in d_all.columns}
    evidence["paired_difference_ci"] = {str(k): v for k, v in diffs.items()}
    what = s.attrs["score"]
    line = ", ".join(f"{v}: {d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for v, (d, lo, hi) in diffs.items())
    desc = f"paired difference in final {what} vs {axis} = {claimed} (mean, 95% CI): {line}"
    above = [v for v, (_, lo, _) in diffs.items() if lo > 0]
    if above:
        return "violated", f"{axis} = {above} beat {claimed}; {desc}", evidence
    if all(hi < 0 for _, _, hi in diffs.values()):
        return "holds", f"{axis} = {claimed} beats every other value; {desc}", evidence
    return "inconclusive", f"no value separates from {claimed}; {desc}", evidence


# ----------------------------------------------------------------------------- trends


def _spearman_ci(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """Spearman's rho with a 95% percentile bootstrap CI over runs."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if np.unique(x[i]).size > 1 and np.unique(y[i]).size > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    if not boots:
        return rho, float("nan"), float("nan")
    low, high = (float(q) for q in np.quantile(boots, [0.025, 0.975]))
    return rho, low, high


def _trend(
    x: np.ndarray, y: np.ndarray, direction: str, name: str, axis: str, reps: int, seed: int
) -> tuple[str, str, dict[str, Any]]:
    """One monotone trend: (status, phrase, evidence) for 'name is direction in axis'."""
    ev: dict[str, Any] = {"runs": len(x)}
    if len(x) < 4 or np.unique(x).size < 2:
        return "inconclusive", f"too few runs or axis values to relate {name} to {axis}", ev
    if np.unique(y).size < 2:
        ev["rho"] = None
        return "inconclusive", f"no signal: {name} is the same in every run ({y[0]:.3g})", ev
    rho, low, high = _spearman_ci(x, y, reps, seed)
    ev.update(rho=rho, rho_ci95=[low, high])
    desc = f"Spearman rho({axis}, {name}) = {rho:.2f} [95% CI {low:.2f}, {high:.2f}]"
    sign = 1 if direction == "increasing" else -1
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "holds", f"{name} {direction} in {axis}: {desc}", ev
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "violated", f"{name} not {direction} in {axis}: {desc}", ev
    return "inconclusive", f"no clear trend of {name}: {desc}", ev


def _speed(data: SweepData, fraction: float, target: float | None) -> pd.DataFrame:
    """Per run: the first iteration at which it reaches the target ("speed", fewer is faster;
    censored runs get iterations + 1). Tabular runs: J >= ``fraction`` |J*|. Classic control
    (no J*): the iteration's mean training episode return >= ``target``, counted in env steps
    (``speed_unit`` "env_steps"; censored: the run's last env step count + 1)."""
    it = data.iterations
    s = data.summary.set_index("run_id")
    tabular = "J" in it and "j_star" in s
    rows = []
    for rid, r in it.groupby("run_id"):
        r = r.sort_values("iteration")
        if tabular:
            hit = r.loc[r["J"] >= fraction * abs(float(s.loc[rid, "j_star"])), "iteration"]
            censor = float(r["iteration"].max()) + 2
        else:
            if target is None:
                raise ValueError("speed on classic control needs params.speed_target")
            ret = r["episode_return"]
            hit = r.loc[ret >= target, "env_steps"]
            censor = float(r["env_steps"].max()) + 1
        rows.append({"run_id": rid, "speed": float(hit.min()) if len(hit) else censor})
    cfg = s[[c for c in s.columns if c.startswith("cfg.")]].reset_index()
    out = pd.DataFrame(rows).merge(cfg, on="run_id")
    out.attrs["unit"] = "iterations" if tabular else "env steps"
    return out


class TrendParams(Params):
    AXES: ClassVar[tuple[str, ...]] = ("axis",)
    axis: str
    metric: Literal["speed", "final", "collapse"]
    direction: Literal["increasing", "decreasing"]
    fraction: float = Field(0.9, gt=0.0, le=1.0)
    speed_target: float | None = None
    score: Score = "auto"
    collapse_below: float = 0.5
    seed: int = 0
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return f"{self.metric} is {self.direction} in {self.axis} (Spearman rho over runs)"


@rule("monotone-trend", TrendParams)
def _monotone_trend(data: SweepData, p: TrendParams) -> Outcome:
    """A claim that a metric rises or falls with a sweep axis.

    metric "speed": iterations to reach ``fraction`` (0.9) of J* (censored runs count as never);
    "final": final score; "collapse": 1 if the final score < ``collapse_below``. Spearman's rho
    between the axis and the metric over runs, with a 95% bootstrap CI over runs: the claim
    (``direction``) holds when the CI excludes 0 on its side, is violated when it excludes 0 on
    the other side, else inconclusive.
    """
    if p.metric == "speed":
        df = _speed(data, p.fraction, p.speed_target)
        y = df["speed"]
    else:
        df = final_scores(data, p.score)
        y = df["score"] if p.metric == "final" else (df["score"] < p.collapse_below)
    x = df[p.axis].to_numpy(dtype=float)
    y = np.asarray(y, dtype=float)
    status, phrase, ev = _trend(x, y, p.direction, p.metric, p.axis, p.reps, p.seed)
    ev.update(axis=p.axis, metric=p.metric, direction=p.direction)
    if phrase.startswith("no signal"):
        ev["no_signal"] = phrase.removeprefix("no signal: ")
    return status, phrase, ev


def _drawdown(data: SweepData, ceiling: float | None) -> pd.DataFrame:
    """Per run, how much it fell back from its best: (max_t score_t - final score) / scale.
    Tabular: score_t = J_t, scale |J*|. Classic control: score_t = the iteration's mean
    training episode return, scale ``ceiling`` (else the largest |return| seen in the sweep)."""
    it = data.iterations
    s = data.summary.set_index("run_id")
    tabular = "J" in it and "j_star" in s
    col = "J" if tabular else "episode_return"
    scale_all = ceiling if ceiling is not None else float(np.nanmax(np.abs(it[col])))
    rows = []
    for rid, r in it.groupby("run_id"):
        v = r.sort_values("iteration")[col].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        scale = abs(float(s.loc[rid, "j_star"])) if tabular else scale_all
        dd = float((v.max() - v[-1]) / scale) if len(v) else float("nan")
        if s.loc[rid, "status"] == "diverged":
            dd = float("inf")  # a diverged run counts as the largest fall
        rows.append({"run_id": rid, "drawdown": dd})
    cfg = s[[c for c in s.columns if c.startswith("cfg.")]].reset_index()
    return pd.DataFrame(rows).merge(cfg, on="run_id")


class TradeoffParams(Params):
    AXES: ClassVar[tuple[str, ...]] = ("axis",)
    axis: str
    fraction: float = Field(0.9, gt=0.0, le=1.0)  # speed: iterations to fraction * J*
    speed_target: float | None = None  # speed on classic control: a training return to reach
    ceiling: float | None = None  # classic control: the drawdown's scale (e.g. 500)
    seed: int = 0
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return (
            f"as {self.axis} rises, runs reach the target in fewer steps (speed) AND fall back "
            "further from their best (instability: drawdown)"
        )


@rule("speed-and-instability", TradeoffParams)
def _speed_and_instability(data: SweepData, p: TradeoffParams) -> Outcome:
    """The seed's "high learning rate: faster convergence but potential instability", both halves.

    Speed: iterations (tabular: to ``fraction`` J*) or env steps (classic: to a training return of
    ``speed_target``) until the run first reaches its target; fewer is faster; censored runs count
    as never. Instability: the drawdown (max_t score_t - final score) / scale (``_drawdown``);
    a diverged run counts as the largest. Each half is a Spearman trend over runs with a 95%
    bootstrap CI: speed must fall with the axis, instability rise. Holds only if both hold;
    violated if either goes the other way; else inconclusive; the summary names each half.
    """
    sp = _speed(data, p.fraction, p.speed_target)
    dd = _drawdown(data, p.ceiling)
    x1, y1 = sp[p.axis].to_numpy(dtype=float), sp["speed"].to_numpy(dtype=float)
    x2 = dd[p.axis].to_numpy(dtype=float)
    y2 = np.nan_to_num(dd["drawdown"].to_numpy(dtype=float), posinf=1e300)
    unit = sp.attrs["unit"]
    target = (
        f"{p.fraction:.0%} of J*"
        if unit == "iterations"
        else f"a training return of {p.speed_target:g}"
    )
    speed_name = f"{unit} to {target} (fewer is faster)"
    s1, ph1, ev1 = _trend(x1, y1, "decreasing", speed_name, p.axis, p.reps, p.seed)
    s2, ph2, ev2 = _trend(x2, y2, "increasing", "drawdown", p.axis, p.reps, p.seed)
    evidence: dict[str, Any] = {
        "axis": p.axis,
        "speed": speed_name,
        "speed_trend": ev1,
        "instability_trend": ev2,
        "speed_status": s1,
        "instability_status": s2,
        "runs_with_drawdown": int((y2 > 1e-9).sum()),
    }
    for v, g in sp.groupby(p.axis):
        evidence[f"median_speed_at_{v:g}"] = float(g["speed"].median())
    for v, g in dd.groupby(p.axis):
        evidence[f"max_drawdown_at_{v:g}"] = float(g["drawdown"].max())
    summary = f"speed: {s1} ({ph1}); instability: {s2} ({ph2})"
    if s1 == "holds" and s2 == "holds":
        return "holds", summary, evidence
    if "violated" in (s1, s2):
        which = " and ".join(
            h for h, st in (("speed", s1), ("instability", s2)) if st == "violated"
        )
        return "violated", f"the {which} half fails; " + summary, evidence
    which = " and ".join(h for h, st in (("speed", s1), ("instability", s2)) if st != "holds")
    return "inconclusive", f"the {which} half is not shown; " + summary, evidence


# ----------------------------------------------------------------------------- improvement


class ImprovementParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("better", "worse")
    better: str
    worse: str
    score: Score = "auto"
    ceiling: float | None = None
    interval: Literal["newcombe-delong", "newcombe", "percentile", "bca"] = "newcombe-delong"
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return f"P({self.better} > {self.worse}) on the final score exceeds 1/2"


def _by_task(g: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    """Scores as (R,) or, with task columns (several environments), (R, K): R runs per task
    (the fewest any task has), K tasks, for the stratified statistics of ``grpo_lab.stats``."""
    if not tasks:
        return g["score"].to_numpy(dtype=float)
    cols = [grp["score"].to_numpy(dtype=float) for _, grp in g.groupby(tasks)]
    r = min(len(c) for c in cols)
    return np.stack([c[:r] for c in cols], axis=1)


@rule("improvement", ImprovementParams)
def _improvement(data: SweepData, p: ImprovementParams) -> Outcome:
    """A claim that algorithm ``better`` beats ``worse``.

    Score = final J / |J*| per run (or ``score``: see ``final_scores``), by ``cfg.label``;
    probability of improvement P(X > Y) (arXiv 2108.13264 §4.4) with a 95% CI: by default
    Newcombe's (2006) method 5 widened to the DeLong variance (``stats.probability_of_improvement_ci``),
    which keeps >= 93% coverage from 5 runs per side where the percentile bootstrap covered ~69%
    at P = 0.9 (tests/test_stats.py). Holds when the CI lies above 1/2, violated when below, else
    inconclusive. IQMs with CIs
    of every algorithm are in the evidence, and the mean env steps each used where the summaries
    record them. Fewer than 2 runs on a side: inconclusive with the reason. With several
    environments (a grid over ``env.kwargs.*``), each is a task: P(X > Y) is the mean over tasks
    of the per-task probability, and intervals resample within tasks (stratified).
    """
    from grpo_lab import stats

    better, worse = p.better, p.worse
    s = final_scores(data, p.score)
    tasks = [c for c in _varying(s, set()) if c.startswith("cfg.env.")]
    by = {k: _by_task(g, tasks) for k, g in s.groupby("cfg.label")}
    evidence: dict[str, Any] = {"tasks": tasks} if tasks else {}
    if better not in by or worse not in by:
        return (
            "inconclusive",
            f"the sweep lacks {better!r} or {worse!r}: has {sorted(by)}",
            evidence,
        )
    for k, v in by.items():
        evidence[f"runs_{k}"] = int(v.size)
        evidence[f"iqm_{k}"] = (
            stats.stratified_bootstrap_ci(v, "iqm", reps=p.reps, seed=0)
            if len(v) > 1
            else (float(v[0]),) * 3
        )
    if "env_steps" in s:
        for k, g in s.groupby("cfg.label"):
            evidence[f"env_steps_{k}"] = float(g["env_steps"].mean())
    small = [k for k in (better, worse) if len(by[k]) < 2]
    if small:
        return (
            "inconclusive",
            f"too few runs to compare: {', '.join(f'{k} has {len(by[k])}' for k in small)} "
            "(an interval needs >= 2 per side)",
            evidence,
        )
    both = s[s["cfg.label"].isin([better, worse])]
    _signal_checks(data, both, None)
    _ceiling_check(both, _default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
    if np.unique(np.concatenate([by[better].ravel(), by[worse].ravel()])).size == 1:
        raise NoSignal(f"every run of {better} and {worse} ended with the same score", evidence)
    pt, low, high = stats.probability_of_improvement_ci(
        by[better], by[worse], reps=p.reps, seed=0, method=p.interval
    )
    evidence.update(p_improvement=pt, p_improvement_ci95=[low, high], interval=p.interval)
    desc = (
        f"P({better} > {worse}) = {pt:.2f} [95% CI {low:.2f}, {high:.2f}] on final "
        f"{s.attrs['score']}"
    )
    if low > 0.5:
        return "holds", desc, evidence
    if high < 0.5:
        return "violated", desc, evidence
    return "inconclusive", desc, evidence


# ----------------------------------------------------------------------------- compute cost


COST_COLUMNS = ("rollout_us_per_step", "update_us_per_step", "total_us_per_step")
_TIMINGS = ("rollout_time", "update_time", "env_steps_per_s")


def compute_costs(iterations: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wall time spent per environment step, per algorithm label and batch, from per-iteration
    timings (the classic-control trainers log them).

    A batched run times its C configurations together: ``rollout_time`` and ``update_time`` (s)
    of iteration i are the batch's, and so is ``env_steps_per_s`` (all C configurations' steps
    in that rollout / its time), so n_i = env_steps_per_s_i x rollout_time_i is the env steps
    the batch took in iteration i. Over the batch's iterations with finite timings:

        rollout_us_per_step = 1e6 sum_i rollout_time_i / sum_i n_i
        update_us_per_step  = 1e6 sum_i update_time_i  / sum_i n_i
        total_us_per_step   = their sum

    microseconds of wall time per env step, amortised over the batch. The runs of one batch
    share one measurement, so the batch, not the run, is the unit: ``summary``'s ``batch``
    column (``sweep.run_batch`` stores it) says which runs ran together; without it every run
    counts as its own batch.

    Shapes: ``iterations`` with run_id, iteration, rollout_time, update_time, env_steps_per_s
    and cfg.label (else all runs are one label, "all") -> one row per (label, batch) with a
    finite cost: label, batch, runs, *COST_COLUMNS.
    """
    per = _per_iteration_costs(iterations, summary)
    sums = per.groupby(level=["label", "batch"])[["rollout_time", "update_time", "batch_steps"]]
    sums = sums.sum()
    sums = sums[sums["batch_steps"] > 0]
    out = pd.DataFrame(
        {
            "rollout_us_per_step": 1e6 * sums["rollout_time"] / sums["batch_steps"],
            "update_us_per_step": 1e6 * sums["update_time"] / sums["batch_steps"],
        }
    )
    out["total_us_per_step"] = out["rollout_us_per_step"] + out["update_us_per_step"]
    out = out.join(per.attrs["runs"]).reset_index()
    return out[["label", "batch", "runs", *COST_COLUMNS]]


def _per_iteration_costs(iterations: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    """The batch's timings per iteration, indexed (label, batch, iteration), with batch_steps."""
    need = {"run_id", "iteration", *_TIMINGS}
    missing = sorted(need - set(iterations.columns))
    if missing:
        raise ValueError(
            f"iterations lacks {missing}: compute costs need per-iteration timings "
            "(the classic-control trainers log them)"
        )
    it = iterations[sorted(need)].astype({c: "float64" for c in _TIMINGS})
    it["label"] = iterations["cfg.label"] if "cfg.label" in iterations else "all"
    batch = it["run_id"]
    if summary is not None and "batch" in summary:
        batch = it["run_id"].map(summary.set_index("run_id")["batch"]).fillna(it["run_id"])
    it["batch"] = batch
    runs = it.groupby(["label", "batch"])["run_id"].nunique().rename("runs")
    it = it[np.isfinite(it[list(_TIMINGS)]).all(axis=1)]
    # the batch's timings of iteration i, logged alike by each of its runs still going
    per = it.groupby(["label", "batch", "iteration"])[list(_TIMINGS)].first()
    per["batch_steps"] = per["env_steps_per_s"] * per["rollout_time"]
    per.attrs["runs"] = runs
    return per


class CostParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("cheaper", "than")
    AXES: ClassVar[tuple[str, ...]] = ("size_axis",)
    cheaper: str
    than: str
    measure: Literal["update_us_per_step", "total_us_per_step"] = "update_us_per_step"
    size_axis: str = "cfg.hidden"  # the network size swept; parameters grow as hidden^2
    slope_margin: float = Field(0.1, ge=0.0)  # "grows no faster": exponent difference < this
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return (
            f"{self.cheaper} spends less {self.measure.replace('_', ' ')} than {self.than} at "
            f"every {self.size_axis}, and its cost grows no faster with the parameter count"
        )


def _log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log x: cost ~ size^slope."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _cost_half(
    rows: pd.DataFrame, p: CostParams, what: str, rng: np.random.Generator
) -> tuple[str, str, dict[str, Any]]:
    """One half of the cost verdict from rows (label, size, num, den): per size the amortised
    cost sum(num) / sum(den) of each algorithm, the ratio than / cheaper with a 95% bootstrap CI
    over rows (iterations), and the growth exponents b of cost ~ size^b with a CI of their
    difference. Returns (status, phrase, evidence)."""
    ev: dict[str, Any] = {}
    lab = rows["label"]
    sizes = sorted(set(rows.loc[lab == p.cheaper, "size"]) & set(rows.loc[lab == p.than, "size"]))
    if not sizes:
        return "inconclusive", f"{what}: no size measured for both algorithms", ev

    def amortised(label: str, z: Any) -> tuple[float, np.ndarray]:
        g = rows[(rows["label"] == label) & (rows["size"] == z)]
        t, n = g["num"].to_numpy(dtype=float), g["den"].to_numpy(dtype=float)
        i = rng.integers(0, len(t), (p.reps, len(t)))
        return t.sum() / n.sum(), t[i].sum(1) / n[i].sum(1)

    ratios, logs = {}, {p.cheaper: [], p.than: []}
    point = {p.cheaper: [], p.than: []}
    for z in sizes:
        a, ba = amortised(p.cheaper, z)
        b, bb = amortised(p.than, z)
        r = np.divide(bb, ba, out=np.full_like(bb, np.inf), where=ba > 0)
        lo, hi = (float(q) for q in np.quantile(r, [0.025, 0.975]))
        ratios[z] = (b / a if a > 0 else float("inf"), lo, hi)
        ev[f"{what}_{p.cheaper}_at_{z:g}"] = a
        ev[f"{what}_{p.than}_at_{z:g}"] = b
        point[p.cheaper].append(a)
        point[p.than].append(b)
        logs[p.cheaper].append(np.log(np.maximum(ba, 1e-300)))
        logs[p.than].append(np.log(np.maximum(bb, 1e-300)))
    ev[f"{what}_ratio_ci"] = {f"{z:g}": v for z, v in ratios.items()}
    line = ", ".join(f"{z:g}: {r:.2g}x [{lo:.2g}, {hi:.2g}]" for z, (r, lo, hi) in ratios.items())
    phrase = f"{what}, {p.than} / {p.cheaper} at {p.size_axis} = {line}"
    slope_bad = slope_ok = None
    if len(sizes) >= 2:
        x = np.asarray(sizes, dtype=float)
        lx = np.log(x)
        sa = np.polyfit(lx, np.stack(logs[p.cheaper], 1).T, 1)[0]
        sb = np.polyfit(lx, np.stack(logs[p.than], 1).T, 1)[0]
        lo, hi = (float(q) for q in np.quantile(sa - sb, [0.025, 0.975]))
        ba_, bb_ = (_log_slope(x, np.asarray(point[k])) for k in (p.cheaper, p.than))
        ev[f"{what}_growth_exponent_{p.cheaper}"] = ba_
        ev[f"{what}_growth_exponent_{p.than}"] = bb_
        ev[f"{what}_growth_exponent_difference_ci95"] = [lo, hi]
        phrase += (
            f"; growth b = {ba_:.2f} ({p.cheaper}), {bb_:.2f} ({p.than}), "
            f"difference [{lo:.2f}, {hi:.2f}]"
        )
        slope_bad, slope_ok = lo > p.slope_margin, hi < p.slope_margin
    if any(hi < 1 for _, _, hi in ratios.values()) or slope_bad:
        return "violated", phrase, ev
    if all(lo > 1 for _, lo, _ in ratios.values()) and (slope_ok or slope_ok is None):
        return "holds", phrase, ev
    return "inconclusive", phrase, ev


def _work_rows(it: pd.DataFrame, col: str) -> pd.DataFrame:
    """Counted updates: (label, size, num = update FLOPs of one configuration, den = that
    configuration's env steps in the iteration, the increase of its cumulative ``env_steps``)."""
    if "update_flops" not in it or "env_steps" not in it:
        return pd.DataFrame(columns=["label", "size", "num", "den"])
    w = it.sort_values(["run_id", "iteration"])
    steps = w.groupby("run_id")["env_steps"].diff().fillna(w["env_steps"])
    w = w.assign(num=w["update_flops"].astype(float), den=steps.astype(float))
    w = w[np.isfinite(w["num"]) & (w["den"] > 0)]
    label = w["cfg.label"] if "cfg.label" in w else "all"
    return pd.DataFrame({"label": label, "size": w[col], "num": w["num"], "den": w["den"]})


@rule("cost", CostParams)
def _cost(data: SweepData, p: CostParams) -> Outcome:
    """The seed's "computational efficiency (no conjugate gradient) ... better scalability", judged
    on cost, not on return, in two halves:

    - wall time: per iteration the update time (``measure``: + the rollout's) over the env steps
      of the batch (``compute_costs``); iterations of one batch are repeated timings on one
      machine, the unit of the interval;
    - optimiser work: the update's floating-point operations per env step of one configuration,
      counted by the trainers (``count_flops_every``: matmul-type FLOPs, forward and backward;
      the counted iterations' timings are left out of the wall-time half).

    Each half, per network size (``size_axis``): the amortised cost sum / sum of each algorithm,
    the ratio R = cost(``than``) / cost(``cheaper``) with a 95% bootstrap CI over iterations, and
    the exponent b of cost ~ size^b with a CI of the difference of exponents. A half holds when
    at every size the CI of R lies above 1 and ``cheaper``'s exponent is not larger (CI of the
    difference below ``slope_margin``); it is violated when at some size the CI of R lies below
    1 or the difference's CI lies above ``slope_margin``. The verdict holds when every measured
    half holds, is violated when one is, else inconclusive; without FLOP counts the work half is
    reported as not measured and the wall-time half decides.
    """
    it = data.iterations
    if it is None or not set(_TIMINGS) <= set(it.columns):
        return "inconclusive", "no per-iteration timings in the sweep", {}
    col = p.size_axis
    if col not in it:
        return "inconclusive", f"the sweep has no column {col!r}", {}
    per = _per_iteration_costs(it, data.summary).reset_index()
    # each batch's network size: a non-batchable field, shared by every run of the batch
    run_size = it.drop_duplicates("run_id").set_index("run_id")[col]
    s = data.summary
    run_batch = s.set_index("run_id")["batch"] if s is not None and "batch" in s else {}
    batch_size_of = {run_batch.get(r, r): z for r, z in run_size.items()}
    per["size"] = per["batch"].map(batch_size_of)
    num = per["update_time"] + (per["rollout_time"] if p.measure == "total_us_per_step" else 0.0)
    wall = pd.DataFrame(
        {"label": per["label"], "size": per["size"], "num": 1e6 * num, "den": per["batch_steps"]}
    )
    wall = wall[np.isfinite(wall["num"]) & (wall["den"] > 0)]
    evidence: dict[str, Any] = {"measure": p.measure}
    labels = set(wall["label"])
    if p.cheaper not in labels or p.than not in labels:
        return "inconclusive", f"the sweep lacks {p.cheaper!r} or {p.than!r}", evidence
    rng = np.random.default_rng(0)
    s1, ph1, ev1 = _cost_half(wall, p, p.measure, rng)
    evidence.update(ev1, wall_time_half=s1)
    work = _work_rows(it, col)
    if len(work) and {p.cheaper, p.than} <= set(work["label"]):
        s2, ph2, ev2 = _cost_half(work, p, "update_flops_per_step", rng)
        evidence.update(ev2, work_half=s2)
    else:
        s2, ph2 = None, "optimiser work: not measured (count_flops_every = 0)"
        evidence["work_half"] = "not measured"
    desc = f"wall time: {s1} ({ph1}); work: {s2 or 'not measured'} ({ph2})"
    halves = [h for h in (s1, s2) if h is not None]
    if all(h == "holds" for h in halves):
        return "holds", desc, evidence
    if "violated" in halves:
        return "violated", desc, evidence
    return "inconclusive", desc, evidence


# ----------------------------------------------------------------------------- unbiasedness


class UnbiasedParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("subject",)
    test: Literal["direction", "scale"] = "direction"
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    tolerance: float = Field(0.1, gt=0.0)
    subject: list[str] | None = None

    def hypothesis(self) -> str:
        who = ", ".join(self.subject) if self.subject else "every estimator"
        what = "in direction (up to a constant factor)" if self.test == "direction" else "exactly"
        return f"the Monte Carlo mean of {who} equals the exact grad J {what}"


@rule("unbiased", UnbiasedParams)
def _unbiased(data: SweepData, p: UnbiasedParams) -> Outcome:
    """A claim that a gradient estimator is unbiased, on gradient experiments
    (``ALGORITHMS["gradient"]``: the Monte Carlo mean of N estimates against the exact grad J).

    ``test`` "direction" (default) compares the mean with its least-squares multiple of grad J (a
    constant factor is absorbed by the learning rate); "scale" compares it with grad J itself. Per
    run: **biased** when the Bonferroni p-value of the largest |z| (``p_direction`` / ``p_bias``)
    is below ``alpha`` / R (R runs judged: Bonferroni over runs too), or when the run diverged
    (some estimates overflowed: dropping them would bias the mean, so the divergence counts
    against the estimator); **unbiased** when not and the relative bias, bounded above by its
    estimate + 3 x the relative Monte Carlo error, is below ``tolerance``; else undetermined.
    The claim covers the runs whose ``cfg.label`` is in ``subject`` (default: all): violated if
    any is biased, holds if all are unbiased, else inconclusive. The evidence has a line per
    estimator (label), subject or not.
    """
    test, tol = p.test, p.tolerance
    p_col, err_col = (
        ("p_direction", "dir_rel_error") if test == "direction" else ("p_bias", "rel_norm_error")
    )
    s = data.summary
    if s is None or p_col not in s.columns:
        return "inconclusive", "no gradient experiment in the sweep", {"runs": 0}
    s = s[s["status"] != "error"].copy()
    judged = s[s["cfg.label"].isin(p.subject)] if p.subject else s
    n = len(judged)
    a_run = p.alpha / max(n, 1)
    rel_noise = s["noise_rel"] / (s["fit_scale"].abs() if test == "direction" else 1.0)
    s["mc_error"] = rel_noise
    s["bias_upper"] = s[err_col] + 3.0 * rel_noise
    diverged = (s["status"] == "diverged").to_numpy()
    s["verdict"] = [
        "diverged" if dv else ("biased" if pv < a_run else ("unbiased" if u < tol else "undetermined"))
        for dv, pv, u in zip(diverged, s[p_col], s["bias_upper"], strict=True)
    ]  # fmt: skip
    evidence: dict[str, Any] = {
        "test": test,
        "alpha_per_run": a_run,
        "tolerance": tol,
        "subject": p.subject or "all runs",
    }
    for label, g in s.groupby("cfg.label", sort=False):  # one line per estimator
        counts = g["verdict"].value_counts()
        tag = "" if not p.subject or label in p.subject else " (shown beside, not judged)"
        evidence[f"estimator {label}{tag}"] = (
            ", ".join(f"{k} {v}/{len(g)}" for k, v in counts.items())
            + f"; relative bias {g[err_col].min():.3g}-{g[err_col].max():.3g}"
            + f" (MC error {g['mc_error'].max():.2g}); min p {g[p_col].min():.2g};"
            + f" cosine {g['cosine'].min():.3f}-{g['cosine'].max():.3f}"
        )
    if n == 0:
        return "inconclusive", f"no run labelled {p.subject} in the sweep", evidence
    v = s.loc[judged.index, "verdict"]
    bad = v.isin(["biased", "diverged"])
    biased = sorted(set(judged.loc[bad, "cfg.label"]))
    unbiased_all = sorted(set(s.loc[s["verdict"] == "unbiased", "cfg.label"]))
    evidence["biased"] = biased
    n_div = int((v == "diverged").sum())
    desc = (
        f"{int((v == 'biased').sum())} of {n} runs biased in {test} (p < {a_run:.2g})"
        + (f", {n_div} diverged (counted as biased)" if n_div else "")
        + f"; unbiased within {tol:g}: {unbiased_all or 'none'}"
    )
    if bad.any():
        return "violated", f"biased: {biased}; " + desc, evidence
    if (v == "unbiased").all():
        return "holds", desc, evidence
    return "inconclusive", desc, evidence


# ----------------------------------------------------------------------------- variance


class VarianceParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("reference", "subject")
    reference: str
    subject: list[str] = Field(min_length=1)
    measure: Literal["grad_var_rel_dir", "grad_var_rel", "grad_mse_rel"] = "grad_var_rel_dir"
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    def hypothesis(self) -> str:
        return (
            f"{', '.join(self.subject)} each give a smaller {self.measure} than {self.reference} "
            "at every grid point"
        )


@rule("variance-reduction", VarianceParams)
def _variance_reduction(data: SweepData, p: VarianceParams) -> Outcome:
    """The seed's "Advantage Estimation: Reduces variance in gradient estimates", on gradient
    experiments (``instrument.gradient_quality``: ``grad_var_rel``, ``grad_mse_rel``,
    ``grad_var_rel_dir`` with delta-method standard errors ``*_se``).

    For each subject estimator s and grid point (the reference's varying cfg columns):
        L = log(v_s / v_ref),  se_L = sqrt((se_s / v_s)^2 + (se_ref / v_ref)^2)
    with a normal CI at ``confidence``, Bonferroni-corrected over the subject x point
    comparisons. A comparison reduces when the CI lies below 0, raises when above. Holds when
    every comparison reduces, violated when any raises, else inconclusive. The runs share seeds
    (common random numbers), so treating them as independent makes the CI conservative.
    """
    from scipy.stats import norm

    s = data.summary
    col, se_col = p.measure, f"{p.measure}_se"
    if s is None or col not in s or se_col not in s:
        return "inconclusive", f"no {col} with its standard error in the sweep", {"runs": 0}
    s = s[s["status"] != "error"]
    ref = s[s["cfg.label"] == p.reference]
    if ref.empty:
        return "inconclusive", f"no run labelled {p.reference!r}", {}
    pts = _varying(ref, set())

    def key(d: pd.DataFrame) -> pd.Series | str:  # "group_size=8, point_seed=1"
        if not pts:
            return ""
        named = d[pts].astype(str).apply(lambda c: c.name.removeprefix("cfg.") + "=" + c)
        return named.agg(", ".join, axis=1)

    ref = ref.assign(_pt=key(ref)).set_index("_pt")
    subj = s[s["cfg.label"].isin(p.subject)]
    subj = subj.assign(_pt=key(subj))
    k = max(len(subj), 1)
    z = float(norm.ppf(1 - (1 - p.confidence) / 2 / k))
    evidence: dict[str, Any] = {
        "measure": col,
        "reference": p.reference,
        "comparisons": len(subj),
        "z_bonferroni": z,
        "points": pts,
    }
    outcome: dict[str, list[str]] = {"reduces": [], "raises": [], "undetermined": []}
    for label, g in subj.groupby("cfg.label", sort=False):
        parts = []
        for _, r in g.iterrows():
            v0, e0 = float(ref.loc[r["_pt"], col]), float(ref.loc[r["_pt"], se_col])
            v1, e1 = float(r[col]), float(r[se_col])
            if not (v0 > 0 and v1 > 0 and np.isfinite([v0, v1, e0, e1]).all()):
                outcome["undetermined"].append(f"{label}@{r['_pt']}")
                parts.append(f"{r['_pt'] or 'all'}: undefined")
                continue
            lg = np.log(v1 / v0)
            se = float(np.hypot(e1 / v1, e0 / v0))
            lo, hi = float(np.exp(lg - z * se)), float(np.exp(lg + z * se))
            which = "reduces" if hi < 1 else ("raises" if lo > 1 else "undetermined")
            outcome[which].append(f"{label}@{r['_pt']}")
            parts.append(f"{r['_pt'] or 'all'}: {np.exp(lg):.2f} [{lo:.2f}, {hi:.2f}]")
        evidence[f"ratio {label} / {p.reference}"] = "; ".join(parts)
    evidence.update({k2: len(v) for k2, v in outcome.items()})
    n = len(subj)
    desc = (
        f"{col} ratio to {p.reference}: {len(outcome['reduces'])} of {n} comparisons lower, "
        f"{len(outcome['raises'])} higher ({p.confidence:.0%} CIs, Bonferroni over {n})"
    )
    if n == 0:
        return "inconclusive", f"no run labelled {p.subject}", evidence
    if outcome["raises"]:
        return "violated", f"raises variance: {outcome['raises']}; " + desc, evidence
    if len(outcome["reduces"]) == n:
        return "holds", desc, evidence
    return "inconclusive", desc, evidence


# ----------------------------------------------------------------------------- stationary points


class StationaryParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("subject", "reference")
    grad_tol: float = Field(0.01, gt=0.0)  # stationary: ||grad J|| end / start below this
    gap_tol: float | None = Field(0.01, gt=0.0)  # optimal: J/J* >= 1 - gap_tol (None: skip)
    plateau_window: float = Field(0.1, gt=0.0, le=1.0)  # the last fraction of the iterations
    plateau_tol: float = Field(1e-3, gt=0.0)  # J moved less than this x |J*| over the window
    min_frac: float = Field(0.5, gt=0.0, le=1.0)  # counterexamples in >= this share of a label
    subject: list[str] = Field(min_length=1)
    reference: list[str] = Field(default_factory=list)

    def hypothesis(self) -> str:
        return (
            f"every run of {', '.join(self.subject)} whose J has stopped moving stops at a local "
            f"optimum: ||grad J|| fell below {self.grad_tol:g} of its start"
            + (f" and J/J* >= {1 - self.gap_tol:g}" if self.gap_tol else "")
        )


def _stationary_outcomes(data: SweepData, p: StationaryParams) -> pd.DataFrame:
    """Per run: plateaued, stationary, optimal, outcome and reason (``_stationary``)."""
    s = data.summary.set_index("run_id")
    rows = []
    for rid, r in data.iterations.groupby("run_id"):
        j = r.sort_values("iteration")["J"].to_numpy(dtype=float)
        j = np.append(j, float(s.loc[rid, "j_final"]))
        js = abs(float(s.loc[rid, "j_star"]))
        k = max(2, int(round(p.plateau_window * (len(j) - 1))) + 1)
        tail = j[-k:]
        slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) if len(tail) > 1 else 0.0
        drift = abs(slope * (len(tail) - 1)) / js
        g0, g1 = float(s.loc[rid, "grad_norm_init"]), float(s.loc[rid, "grad_norm_final"])
        ratio = g1 / g0 if g0 > 0 else float("nan")
        score = float(s.loc[rid, "j_final"]) / js
        plateaued = bool(np.isfinite(drift) and drift < p.plateau_tol)
        stationary = bool(ratio < p.grad_tol)
        optimal = p.gap_tol is None or score >= 1 - p.gap_tol
        if s.loc[rid, "status"] != "ok" or not plateaued:
            outcome, reason = "undetermined", "J still moving" if plateaued is False else "failed"
        elif stationary and optimal:
            outcome, reason = "local-optimum", ""
        else:
            why = [
                w for w, bad in (("gradient", not stationary), ("suboptimal", not optimal)) if bad
            ]
            outcome, reason = "counterexample", "+".join(why)
        rows.append({"run_id": rid, "label": s.loc[rid, "cfg.label"], "score": score,
                     "grad_ratio": ratio, "drift": drift, "outcome": outcome, "reason": reason})  # fmt: skip
    return pd.DataFrame(rows)


@rule("stationary", StationaryParams)
def _stationary(data: SweepData, p: StationaryParams) -> Outcome:
    """The seed's theorem "Under certain conditions, GRPO converges to a local optimum of the
    expected return", judged where it ends: GRPO run to its end on an exact MDP.

    Per run (the iterations table's exact J, then ``j_final``; the summary's exact
    ``grad_norm_init`` / ``grad_norm_final``): **plateaued** when the least-squares trend of J
    over the last ``plateau_window`` of the run moved J by < ``plateau_tol`` |J*|; **stationary**
    when ||grad J(final)|| / ||grad J(start)|| < ``grad_tol``; **optimal** when J/J* >=
    1 - ``gap_tol`` (for policy classes that contain every policy every local optimum is global,
    gradient domination, Agarwal et al. 2021, arXiv 1908.00261; a small gradient alone cannot
    tell a saturated wrong answer from the optimum). A plateaued run is a local optimum if
    stationary and optimal, else a counterexample (reason "gradient" and/or "suboptimal"); a run
    still moving is undetermined.
    Inconclusive when a ``reference`` run (an unbiased control) is not a local optimum (the budget
    cannot show convergence) or every subject run is undetermined; violated when some subject
    label has counterexamples in >= ``min_frac`` of its runs (and >= 2); holds when every subject
    run is a local optimum; else inconclusive.
    """
    need = {"grad_norm_init", "grad_norm_final", "j_final", "j_star"}
    if data.summary is None or not need <= set(data.summary.columns) or data.iterations is None:
        return "inconclusive", f"the sweep lacks {sorted(need)} (tabular GRPO records them)", {}
    o = _stationary_outcomes(data, p)
    evidence: dict[str, Any] = {}
    for label, g in o.groupby("label", sort=False):
        counts = g["outcome"].value_counts()
        reasons = g.loc[g["reason"] != "", "reason"].value_counts()
        evidence[f"label {label}"] = (
            ", ".join(f"{k} {v}/{len(g)}" for k, v in counts.items())
            + (f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if len(reasons) else "")
            + f"; J/J* {g['score'].min():.4f}-{g['score'].max():.4f}"
            + f"; grad ratio {g['grad_ratio'].min():.2g}-{g['grad_ratio'].max():.2g}"
        )
    ref = o[o["label"].isin(p.reference)]
    bad_ref = sorted(set(ref.loc[ref["outcome"] != "local-optimum", "label"]))
    if bad_ref:
        return (
            "inconclusive",
            f"the unbiased controls {bad_ref} did not all reach a local optimum: the budget or lr "
            "cannot show convergence here",
            evidence,
        )
    sub = o[o["label"].isin(p.subject)]
    if sub.empty:
        return "inconclusive", f"no run labelled {p.subject}", evidence
    failing = []
    for label, g in sub.groupby("label", sort=False):
        k = int((g["outcome"] == "counterexample").sum())
        if k >= 2 and k >= p.min_frac * len(g):
            failing.append(f"{label} ({k}/{len(g)})")
    n_local = int((sub["outcome"] == "local-optimum").sum())
    n_und = int((sub["outcome"] == "undetermined").sum())
    desc = (
        f"{n_local} of {len(sub)} subject runs stopped at a local optimum, "
        f"{int((sub['outcome'] == 'counterexample').sum())} stopped elsewhere, {n_und} still moving"
    )
    if failing:
        return (
            "violated",
            f"stopped away from a local optimum: {', '.join(failing)}; " + desc,
            evidence,
        )
    if n_local == len(sub):
        return "holds", desc, evidence
    if n_und == len(sub):
        return "inconclusive", "no signal: every subject run was still moving; " + desc, evidence
    return "inconclusive", desc, evidence


# ----------------------------------------------------------------------------- paired helpers


def _paired_wide(s: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Runs equal but for ``axis`` (and the columns zipped with it) side by side: a frame indexed
    (stratum, pair) with one score column per axis value; the pairing and stratum columns."""
    pair_cols = _varying(s, _tied_to(s, axis))
    strata_cols = [c for c in pair_cols if not c.endswith("seed")]

    def join(cols: list[str]) -> pd.Series:
        return s[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series("", s.index)

    t = s.assign(_pair=join(pair_cols), _stratum=join(strata_cols))
    wide = t.pivot_table(index=["_stratum", "_pair"], columns=axis, values="score", aggfunc="first")
    return wide.dropna(), pair_cols, strata_cols


def _mean_diff_ci(d: pd.Series, reps: int) -> tuple[float, float, float]:
    """Mean over strata of the per-stratum mean paired difference, with a 95% stratified
    bootstrap CI (pairs resampled within their stratum, arXiv 2108.13264 §4.1)."""
    from grpo_lab import stats

    strata = sorted(d.index.get_level_values(0).unique())
    per = min(int((d.index.get_level_values(0) == k).sum()) for k in strata)
    m = np.stack([d.xs(k, level=0).to_numpy(dtype=float)[:per] for k in strata], axis=1)
    if per < 2:
        v = float(m.mean())
        return v, v, v
    return stats.stratified_bootstrap_ci(m, "mean", reps=reps, seed=0)  # type: ignore[return-value]


class InteriorParams(Params):
    AXES: ClassVar[tuple[str, ...]] = ("axis",)
    axis: str
    score: Score = "auto"
    ceiling: float | None = None
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return (
            f"some interior value of {self.axis} beats both its smallest and its largest value "
            "(a balanced setting), in paired runs"
        )


@rule("interior-optimum", InteriorParams)
def _interior_optimum(data: SweepData, p: InteriorParams) -> Outcome:
    """A claim that a balanced (interior) setting of an axis is best (the seed: "Optimal c1:
    Balanced approach"). Runs are paired across the axis (same seed and other settings); for an
    interior value v and the two end values lo < v < hi, the paired differences
    score(v) - score(lo) and score(v) - score(hi), each a mean over strata with a 95% stratified
    bootstrap CI. Holds when some interior v has both CIs above 0; violated when an end value
    beats every interior value (every CI of score(end) - score(v) above 0); else inconclusive.
    """
    s = final_scores(data, p.score)
    evidence: dict[str, Any] = {"axis": p.axis}
    if p.axis not in s:
        return "inconclusive", f"the sweep has no column {p.axis!r}", evidence
    values = sorted(s[p.axis].unique().tolist())
    if len(values) < 3:
        return "inconclusive", f"{p.axis} needs >= 3 values for an interior one", evidence
    _signal_checks(data, s, None)
    _ceiling_check(s, _default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
    wide, pair_cols, _ = _paired_wide(s, p.axis)
    evidence["paired_by"] = pair_cols
    if len(wide) == 0:
        return "inconclusive", "no complete pair of runs over the axis values", evidence
    if np.allclose(wide.sub(wide[values[0]], axis=0).to_numpy(dtype=float), 0.0, atol=1e-12):
        raise NoSignal(f"every value of {p.axis} gave identical results in every pair", evidence)
    lo, hi, inner = values[0], values[-1], values[1:-1]
    diffs = {
        (a, b): _mean_diff_ci(wide[a] - wide[b], p.reps) for a in values for b in values if a != b
    }
    evidence["paired_difference_ci"] = {f"{a} - {b}": v for (a, b), v in diffs.items()}
    balanced = [v for v in inner if diffs[(v, lo)][1] > 0 and diffs[(v, hi)][1] > 0]
    ends = [e for e in (lo, hi) if all(diffs[(e, v)][1] > 0 for v in inner)]
    line = ", ".join(
        f"{v} - {e}: {d:+.3g} [{a:+.3g}, {b:+.3g}]"
        for v in inner
        for e in (lo, hi)
        for d, a, b in [diffs[(v, e)]]
    )
    desc = f"paired differences in final {s.attrs['score']} (mean, 95% CI): {line}"
    if balanced:
        return "holds", f"{p.axis} = {balanced} beats both ends; " + desc, evidence
    if ends:
        return "violated", f"the end value(s) {ends} beat every interior value; " + desc, evidence
    return "inconclusive", "no interior value separates from both ends; " + desc, evidence


class BestOfBothParams(Params):
    LABELS: ClassVar[tuple[str, ...]] = ("subject", "fast", "stable")
    subject: str
    fast: str
    stable: str
    fraction: float = Field(0.9, gt=0.0, le=1.0)
    speed_target: float | None = None
    ceiling: float | None = None
    speed_margin: float = Field(0.0, ge=0.0)  # iterations (or env steps) slower than fast allowed
    drawdown_margin: float = Field(0.01, ge=0.0)  # drawdown above stable's allowed (x |J*|)
    reps: int = Field(2000, ge=100)

    def hypothesis(self) -> str:
        return (
            f"{self.subject} reaches the target no later than {self.fast} (+{self.speed_margin:g})"
            f" AND falls back no further than {self.stable} (+{self.drawdown_margin:g}), per seed"
        )


@rule("best-of-both", BestOfBothParams)
def _best_of_both(data: SweepData, p: BestOfBothParams) -> Outcome:
    """The seed's "Adaptive learning rate: Best of both worlds": as fast as the high rate and as
    stable as the low one. Per seed (paired: the conditions share seeds), with speed and
    drawdown as in ``speed-and-instability``:
        d_speed    = speed(subject) - speed(fast)          (fewer iterations is faster)
        d_drawdown = drawdown(subject) - drawdown(stable)
    each a mean over seeds with a 95% bootstrap CI. Holds when the CI of d_speed lies at or below
    ``speed_margin`` and that of d_drawdown below ``drawdown_margin``; violated when either CI
    lies above its margin; else inconclusive (the summary names each half).
    """
    sp = _speed(data, p.fraction, p.speed_target).set_index("run_id")
    dd = _drawdown(data, p.ceiling).set_index("run_id")
    df = sp[["cfg.label", "speed"]].join(dd["drawdown"])
    seed_col = next((c for c in ("cfg.seed", "cfg.point_seed") if c in sp), None)
    if seed_col is None:
        return "inconclusive", "no seed column to pair the conditions", {}
    df["seed"] = sp[seed_col]
    labels = set(df["cfg.label"])
    missing = sorted({p.subject, p.fast, p.stable} - labels)
    if missing:
        return "inconclusive", f"the sweep lacks {missing}", {}
    wide_s = df.pivot_table(index="seed", columns="cfg.label", values="speed").dropna()
    wide_d = df.pivot_table(index="seed", columns="cfg.label", values="drawdown").dropna()
    d_speed = (wide_s[p.subject] - wide_s[p.fast]).rename_axis(None)
    d_dd = (wide_d[p.subject] - wide_d[p.stable]).rename_axis(None)

    def as_strata(d: Any) -> pd.Series:  # one stratum: the seeds are the pairs
        d = np.asarray(d, dtype=float)
        return pd.Series(d, index=pd.MultiIndex.from_product([[""], range(len(d))]))

    cs = _mean_diff_ci(as_strata(d_speed), p.reps)
    cd = _mean_diff_ci(as_strata(np.nan_to_num(d_dd, posinf=1e300)), p.reps)
    unit = sp.attrs["unit"]
    evidence: dict[str, Any] = {
        "seeds": int(len(d_speed)),
        f"speed_difference_vs_{p.fast}_ci": cs,
        f"drawdown_difference_vs_{p.stable}_ci": cd,
    }
    for lab in (p.subject, p.fast, p.stable):
        g = df[df["cfg.label"] == lab]
        evidence[f"median_speed_{lab}"] = float(g["speed"].median())
        evidence[f"max_drawdown_{lab}"] = float(g["drawdown"].max())
    s_half = "holds" if cs[2] <= p.speed_margin else "violated" if cs[1] > p.speed_margin else "?"
    d_half = (
        "holds" if cd[2] <= p.drawdown_margin else "violated" if cd[1] > p.drawdown_margin else "?"
    )
    desc = (
        f"{unit} to target, {p.subject} - {p.fast}: {cs[0]:+.3g} [{cs[1]:+.3g}, {cs[2]:+.3g}] "
        f"(margin {p.speed_margin:g}); drawdown, {p.subject} - {p.stable}: {cd[0]:+.3g} "
        f"[{cd[1]:+.3g}, {cd[2]:+.3g}] (margin {p.drawdown_margin:g})"
    )
    evidence.update(speed_half=s_half, stability_half=d_half)
    if s_half == d_half == "holds":
        return (
            "holds",
            "as fast as the fast setting and as stable as the stable one: " + desc,
            evidence,
        )
    if "violated" in (s_half, d_half):
        which = [h for h, st in (("speed", s_half), ("stability", d_half)) if st == "violated"]
        return "violated", f"the {' and '.join(which)} half fails: " + desc, evidence
    return "inconclusive", desc, evidence
