"""Helpers the comparison rules share: pairing runs across an axis, paired differences with
stratified intervals, trends, speed and drawdown per run, and the no-signal guards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from grpo_lab.analysis import SweepData, varying_columns
from grpo_lab.verdicts.core import NoSignal


def tied_to(s: pd.DataFrame, axis: str) -> set[str]:
    """cfg.* columns that are a function of ``axis`` and it of them (a zipped axis "a+b")."""
    out = {axis}
    for c in varying_columns(s, {axis}):
        pairs = s[[axis, c]].astype(str).drop_duplicates()
        if pairs[axis].is_unique and pairs[c].is_unique:
            out.add(c)
    return out


def ceiling_check(s: pd.DataFrame, ceiling: float | None, what: str) -> None:
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


def default_ceiling(score_key: str, ceiling: float | None) -> float | None:
    return 1.0 if ceiling is None and score_key == "return" else ceiling


def signal_checks(data: SweepData, s: pd.DataFrame, axis: str | None) -> None:
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
    steps = data.steps
    if axis is not None and ("eps" in axis or "clip" in axis) and steps is not None and len(steps):
        st = steps
        if "clip_frac" in st:
            cf = st["clip_frac"].to_numpy(dtype=float)
            if np.isfinite(cf).any() and np.nanmax(cf) == 0.0:
                raise NoSignal(
                    f"the clip never activated (clip_frac = 0 at every step), so {axis} "
                    "cannot change any update (e.g. one optimiser step per batch: ratio 1)",
                    {"clip_frac_max": 0.0},
                )


# ----------------------------------------------------------------------------- trends


def spearman_ci(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
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


def trend(
    x: np.ndarray, y: np.ndarray, direction: str, name: str, axis: str, reps: int, seed: int
) -> tuple[str, str, dict[str, Any]]:
    """One monotone trend: (status, phrase, evidence) for 'name is direction in axis'."""
    ev: dict[str, Any] = {"runs": len(x)}
    if len(x) < 4 or np.unique(x).size < 2:
        return "inconclusive", f"too few runs or axis values to relate {name} to {axis}", ev
    if np.unique(y).size < 2:
        ev["rho"] = None
        return "inconclusive", f"no signal: {name} is the same in every run ({y[0]:.3g})", ev
    rho, low, high = spearman_ci(x, y, reps, seed)
    ev.update(rho=rho, rho_ci95=[low, high])
    desc = f"Spearman rho({axis}, {name}) = {rho:.2f} [95% CI {low:.2f}, {high:.2f}]"
    sign = 1 if direction == "increasing" else -1
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "holds", f"{name} {direction} in {axis}: {desc}", ev
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "violated", f"{name} not {direction} in {axis}: {desc}", ev
    return "inconclusive", f"no clear trend of {name}: {desc}", ev


def speed(data: SweepData, fraction: float, target: float | None) -> pd.DataFrame:
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


def drawdown(data: SweepData, ceiling: float | None) -> pd.DataFrame:
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


# ----------------------------------------------------------------------------- paired helpers


def paired_wide(s: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Runs equal but for ``axis`` (and the columns zipped with it) side by side: a frame indexed
    (stratum, pair) with one score column per axis value; the pairing and stratum columns."""
    pair_cols = varying_columns(s, tied_to(s, axis))
    strata_cols = [c for c in pair_cols if not c.endswith("seed")]

    def join(cols: list[str]) -> pd.Series:
        return s[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series("", s.index)

    t = s.assign(_pair=join(pair_cols), _stratum=join(strata_cols))
    wide = t.pivot_table(index=["_stratum", "_pair"], columns=axis, values="score", aggfunc="first")
    return wide.dropna(), pair_cols, strata_cols


def mean_diff_ci(d: pd.Series, reps: int) -> tuple[float, float, float]:
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
