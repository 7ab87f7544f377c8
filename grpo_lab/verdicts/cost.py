"""The cost rule: wall time and optimiser work per environment step, and how each grows with the
network's size.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from grpo_lab.analysis import COST_TIMINGS, SweepData, per_iteration_costs
from grpo_lab.verdicts.core import Outcome, Params, rule


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
        with np.errstate(invalid="ignore"):  # inf ratios (no update in a resample) are allowed
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
    if it is None or not set(COST_TIMINGS) <= set(it.columns):
        return "inconclusive", "no per-iteration timings in the sweep", {}
    col = p.size_axis
    if col not in it:
        return "inconclusive", f"the sweep has no column {col!r}", {}
    per = per_iteration_costs(it, data.summary).reset_index()
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
