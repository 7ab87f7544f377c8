"""Rules on gradient experiments and end points: unbiasedness against the exact gradient, variance
reduction by advantage estimators, and whether GRPO stops at a local optimum.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from grpo_lab.analysis import SweepData, varying_columns
from grpo_lab.verdicts.core import Outcome, Params, rule

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
    pts = varying_columns(ref, set())

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
        if s.loc[rid, "status"] != "ok":
            outcome, reason = "undetermined", "failed"
        elif not plateaued:
            outcome, reason = "undetermined", "J still moving"
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
