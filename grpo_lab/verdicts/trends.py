"""Rules about how speed and stability move along an axis or between settings: monotone trends,
the learning-rate trade-off (both halves) and best of both worlds.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from grpo_lab.analysis import Score, SweepData, final_scores
from grpo_lab.verdicts.common import (
    drawdown,
    mean_diff_ci,
    speed,
    trend,
)
from grpo_lab.verdicts.core import Outcome, Params, rule


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
        df = speed(data, p.fraction, p.speed_target)
        y = df["speed"]
    else:
        df = final_scores(data, p.score)
        y = df["score"] if p.metric == "final" else (df["score"] < p.collapse_below)
    x = df[p.axis].to_numpy(dtype=float)
    y = np.asarray(y, dtype=float)
    status, phrase, ev = trend(x, y, p.direction, p.metric, p.axis, p.reps, p.seed)
    ev.update(axis=p.axis, metric=p.metric, direction=p.direction)
    if phrase.startswith("no signal"):
        ev["no_signal"] = phrase.removeprefix("no signal: ")
    return status, phrase, ev


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
    sp = speed(data, p.fraction, p.speed_target)
    dd = drawdown(data, p.ceiling)
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
    s1, ph1, ev1 = trend(x1, y1, "decreasing", speed_name, p.axis, p.reps, p.seed)
    s2, ph2, ev2 = trend(x2, y2, "increasing", "drawdown", p.axis, p.reps, p.seed)
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
    sp = speed(data, p.fraction, p.speed_target).set_index("run_id")
    dd = drawdown(data, p.ceiling).set_index("run_id")
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

    cs = mean_diff_ci(as_strata(d_speed), p.reps)
    cd = mean_diff_ci(as_strata(np.nan_to_num(d_dd, posinf=1e300)), p.reps)
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
