"""The analysis layer under the verdicts and the report: one ``SweepData`` (a sweep's stored
results as tidy tables), one definition of each final score, the condition columns of a sweep, and
compute costs per env step. Metrics compute here; ``grpo_lab.stats`` adds intervals; verdict rules
(``grpo_lab.verdicts``) and figures (``grpo_lab.report``) read only what this module gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

EPS_LOW, EPS_HIGH, LR, LABEL = "cfg.loss.eps_low", "cfg.loss.eps_high", "cfg.lr", "cfg.label"
DELTA = "cfg.delta"
NOT_AXES = ("cfg.seed", "cfg.protocol")  # replicates, and the sweep's own name
# axes first in this order (then alphabetical): eps before lr makes eps the heatmap rows and
# eps_high a function of eps_low rather than the other way round
AXIS_ORDER = (LABEL, EPS_LOW, EPS_HIGH, LR)


@dataclass
class SweepData:
    """A sweep's stored results as tidy tables (``grpo_lab.store.load_results``): one row per
    optimiser step, per iteration, and per run, each with the run's ``cfg.*`` columns; None where
    that kind could not be loaded (``load_sweep``: ``notes`` says why). ``SweepData.load`` reads
    a sweep for a verdict (it raises on unreadable data); ``load_sweep`` for a report (never)."""

    steps: pd.DataFrame | None = None
    iterations: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    sweep: str = ""
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, sweep_path: str | Path) -> SweepData:
        from grpo_lab.store import load_results

        p = Path(sweep_path)
        return cls(
            steps=load_results(p, "steps"),
            iterations=load_results(p, "iterations"),
            summary=load_results(p, "summary"),
            sweep=p.name,
            path=p,
        )

    @property
    def runs(self) -> pd.DataFrame | None:
        """One row per run with its cfg.* columns (the summary, else the first frame there is)."""
        for df in (self.summary, self.iterations, self.steps):
            if df is not None and len(df):
                return df.drop_duplicates("run_id").reset_index(drop=True)
        return None

    @property
    def axes(self) -> list[str]:
        runs = self.runs
        return [] if runs is None else condition_axes(runs)


def as_data(data: SweepData | pd.DataFrame) -> SweepData:
    """Rules that read only the steps also accept the steps table itself."""
    return SweepData(steps=data) if isinstance(data, pd.DataFrame) else data


# ----------------------------------------------------------------------------- scores


SCORES = ("return", "eval_acc", "eval_return")
SCORE_WORDS = {  # what each score is, for figure axes and captions
    "return": "final normalised return J / |J*| (exact; 1 = optimal)",
    "eval_acc": "final held-out accuracy (greedy completions)",
    "eval_return": "final evaluation return (deterministic policy, mean over its episodes)",
}
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


def varying_columns(s: pd.DataFrame, exclude: set[str]) -> list[str]:
    """cfg.* columns that vary across runs, without ``exclude``."""
    cols = [c for c in s.columns if c.startswith("cfg.") and c not in exclude]
    return [c for c in cols if s[c].astype(str).nunique() > 1]


# ----------------------------------------------------------------------------- compute cost


COST_COLUMNS = ("rollout_us_per_step", "update_us_per_step", "total_us_per_step")
COST_TIMINGS = ("rollout_time", "update_time", "env_steps_per_s")


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
    per = per_iteration_costs(iterations, summary)
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


def per_iteration_costs(iterations: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    """The batch's timings per iteration, indexed (label, batch, iteration), with batch_steps."""
    need = {"run_id", "iteration", *COST_TIMINGS}
    missing = sorted(need - set(iterations.columns))
    if missing:
        raise ValueError(
            f"iterations lacks {missing}: compute costs need per-iteration timings "
            "(the classic-control trainers log them)"
        )
    it = iterations[sorted(need)].astype({c: "float64" for c in COST_TIMINGS})
    it["label"] = iterations["cfg.label"] if "cfg.label" in iterations else "all"
    batch = it["run_id"]
    if summary is not None and "batch" in summary:
        batch = it["run_id"].map(summary.set_index("run_id")["batch"]).fillna(it["run_id"])
    it["batch"] = batch
    runs = it.groupby(["label", "batch"])["run_id"].nunique().rename("runs")
    it = it[np.isfinite(it[list(COST_TIMINGS)]).all(axis=1)]
    # the batch's timings of iteration i, logged alike by each of its runs still going
    per = it.groupby(["label", "batch", "iteration"])[list(COST_TIMINGS)].first()
    per["batch_steps"] = per["env_steps_per_s"] * per["rollout_time"]
    per.attrs["runs"] = runs
    return per


def load_sweep(path: str | Path) -> SweepData:
    """Load the three kinds of results of the sweep at ``path``; never raises for missing data."""
    from grpo_lab.store import load_results as _load_results

    p = Path(path)
    data = SweepData(sweep=p.name, path=p)
    for kind in ("summary", "iterations", "steps"):
        try:
            df = _load_results(p, kind)
        except (ValueError, OSError) as e:
            data.notes.append(f"{kind} not loaded: {e}")
            continue
        if kind == "summary" and df.attrs.get("stale"):
            data.notes.append(
                f"{df.attrs['stale']} run(s) on disk are not in the sweep's manifest (an earlier "
                "grid or config version) and are left out"
            )
        ok = data.summary is not None and (data.summary["status"] != "error").any()
        if kind != "summary" and not len(df):
            why = "these runs record no steps" if ok else "every complete run failed"
            data.notes.append(f"no {kind} rows ({why})")
        setattr(data, kind, df if len(df) else None)
    if data.summary is not None and data.summary.attrs.get("skipped"):
        data.notes.append(
            f"{data.summary.attrs['skipped']} incomplete run directories left out "
            "(no summary.json: still running or killed)"
        )
    return data


def condition_axes(runs: pd.DataFrame) -> list[str]:
    """The configuration columns that tell conditions apart (module docstring).

    ``runs``: one row per run with ``cfg.*`` columns (any results frame; duplicates of a run are
    dropped). A column is an axis if it takes more than one value (None counts as a value) among
    the runs of one label, or it is the label and there are several; ``cfg.seed`` never is. A
    column that is a function of the axes before it (in ``AXIS_ORDER``, then alphabetical) is
    dropped: eps_high that equals eps_low adds no condition.
    """
    if "run_id" in runs:
        runs = runs.drop_duplicates("run_id")
    label = LABEL if LABEL in runs else ("cfg.algorithm" if "cfg.algorithm" in runs else None)
    cols = [c for c in runs.columns if c.startswith("cfg.") and c not in NOT_AXES and c != label]
    varying = set()
    groups = runs.groupby(label, dropna=False) if label else [(None, runs)]
    for _, g in groups:
        varying |= {c for c in cols if _nunique(g[c]) > 1}
    order = {c: i for i, c in enumerate(AXIS_ORDER)}
    candidates = sorted(varying, key=lambda c: (order.get(c, len(order)), c))
    axes = [label] if label and _nunique(runs[label]) > 1 else []
    for c in candidates:
        if axes and runs.groupby(axes, dropna=False)[c].agg(_nunique).max() <= 1:
            continue  # determined by the axes already chosen
        axes.append(c)
    return axes


def _nunique(s: pd.Series) -> int:
    return int(s.astype(object).map(_key).nunique(dropna=False))


def _key(v: Any) -> Any:
    """A value as a hashable, NaN-safe key (None and NaN are one 'missing' value)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "\0missing"
    return v
