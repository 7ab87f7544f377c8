"""Rules that compare conditions on final scores: best setting of an axis, an interior optimum, and
the probability that one algorithm improves on another.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from grpo_lab.analysis import Score, SweepData, final_scores, varying_columns
from grpo_lab.verdicts.common import (
    ceiling_check,
    default_ceiling,
    mean_diff_ci,
    paired_wide,
    signal_checks,
)
from grpo_lab.verdicts.core import NoSignal, Outcome, Params, rule

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
    signal_checks(data, s, axis)
    ceiling_check(s, default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
    wide, pair_cols, strata_cols = paired_wide(s, axis)
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
    diffs = {v: mean_diff_ci(d_all[v], p.reps) for v in d_all.columns}
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
    signal_checks(data, s, None)
    ceiling_check(s, default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
    wide, pair_cols, _ = paired_wide(s, p.axis)
    evidence["paired_by"] = pair_cols
    if len(wide) == 0:
        return "inconclusive", "no complete pair of runs over the axis values", evidence
    if np.allclose(wide.sub(wide[values[0]], axis=0).to_numpy(dtype=float), 0.0, atol=1e-12):
        raise NoSignal(f"every value of {p.axis} gave identical results in every pair", evidence)
    lo, hi, inner = values[0], values[-1], values[1:-1]
    diffs = {
        (a, b): mean_diff_ci(wide[a] - wide[b], p.reps) for a in values for b in values if a != b
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
    tasks = [c for c in varying_columns(s, set()) if c.startswith("cfg.env.")]
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
    signal_checks(data, both, None)
    ceiling_check(both, default_ceiling(s.attrs["score_key"], p.ceiling), s.attrs["score"])
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
