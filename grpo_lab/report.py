"""Reports: the verdict table of a results directory, the evidence behind each verdict, and the
figures its data supports, as Markdown and as one self-contained HTML page.

``write_report(out)`` reads every ``<out>/<sweep>/verdict.json`` written by ``grpo_lab.sweep``
and writes

    <out>/report.md                     verdict table first, then one section per protocol: its
                                        evidence, the data it rests on, its figures (linked PNGs)
                                        and the tables behind them
    <out>/report.html                   the same, figures embedded as base64 PNG (no other file is
                                        needed to read it), inline CSS
    <out>/figures/<sweep>/<name>.png    every figure, also as a file

Which figures a sweep gets is read off its data (``FIGURES``, in this order; a figure whose data
is absent, empty or non-finite is skipped with a note, and a figure that raises is noted, never
fatal):

    learning-curves       exact normalised return J/J* (or the gap J* - J when some J* <= 0) per
                          iteration, mean over seeds with a 95% bootstrap band
                          (``learning_curve_table``)
    eps-lr-heatmaps       when cfg.loss.eps_low and cfg.lr both vary: final gap (mean over seeds)
                          and the fraction of optimiser steps outside the clip range
                          (``eps_lr_tables``)
    exact-ratio           max / min exact ratio per optimiser step, coloured by eps, clip lines
    kl-per-update         exact KL(pi_old || pi_new) of each update, against TRPO's delta
    trpo-bound-slack      slack of TRPO Theorem 1 per optimiser step
    gain-vs-bounds        true gain J(new) - J(old) against the TRPO bound, the surrogate gain
                          and the clipped gain, with y = x
    algorithm-comparison  when several algorithm labels: final normalised return (classic
                          control: final evaluation return) per condition, IQM with a
                          stratified-bootstrap interval (``comparison_table``)
    sample-efficiency     classic control: training episode return against environment steps,
                          each run interpolated onto a common env-step grid, IQM over seeds with
                          a 95% stratified-bootstrap band (``sample_efficiency_table``)
    compute-cost          classic control: rollout and update wall time per environment step
                          per algorithm, IQM over timed batches (``compute_cost_table``)

A protocol's own figures come first (``PRIMARY``: the classic suite leads with
sample-efficiency).

Conditions: runs that differ only in ``cfg.seed`` are replicates of one condition; the condition
axes of a sweep are the configuration columns that vary within an algorithm label (plus the label
when there are several), without columns that are functions of axes already chosen (eps_high
when it follows eps_low). Every bootstrap uses a fixed seed, so the same data give the same
report, byte for byte.

Each figure's numbers come back with it (``Plot.tables``) and the short ones are printed under
it; ``*_table`` functions return them without drawing. Figures are built on ``Figure`` objects
without pyplot, so nothing global keeps them alive; matplotlib is imported on the first draw.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from grpo_lab import stats
from grpo_lab.analysis import (
    DELTA,
    EPS_HIGH,
    EPS_LOW,
    LABEL,
    LR,
    SCORE_WORDS,
    SweepData,
    final_scores,
    load_sweep,
)
from grpo_lab.registry import Registry
from grpo_lab.store import atomic_write_bytes

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when the CLI starts
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


CONFIDENCE = 0.95
CI_REPS = 1000  # bootstrap resamples of a band; the seed is fixed: same data, same band
CI_SEED = 0
COMPARE_REPS = 2000
VIOLATION_TOL = 1e-9  # as the ratio-bound verdict: r beyond the clip range by more than this
MAX_PANELS = 6
DPI = 100


# ----------------------------------------------------------------------------- verdicts


def read_verdicts(out: str | Path) -> list[dict[str, Any]]:
    """Every verdict under ``out`` (one per sweep directory), sorted by protocol name."""
    root = Path(out)
    if not root.is_dir():
        raise ValueError(f"results directory {str(root)!r} does not exist")
    found = []
    for p in sorted(root.glob("*/verdict.json")):
        try:
            found.append(json.loads(p.read_text()) | {"sweep": p.parent.name})
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"verdict file {str(p)!r} is not a JSON object: {e}") from None
    if not found:
        raise ValueError(
            f"no verdict.json under {str(root)!r}: run `grpo-lab run --out {root}` first"
        )
    return sorted(found, key=lambda v: (v["protocol"], v["sweep"]))


def _fmt(v: Any) -> str:
    """Evidence as a reader wants it: numbers rounded to their precision. An interval
    (point, low, high) keeps the decimals that give its width two significant digits; a single
    number keeps 3 significant digits; lists, tuples and dicts are formatted element by element."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if not math.isfinite(x) or x == 0 or not 1e-3 <= abs(x) < 1e6:
            return f"{x:.3g}"
        return np.format_float_positional(x, precision=3, unique=False, fractional=False, trim="-")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        nums = [x for x in v if isinstance(x, (float, np.floating))]
        if len(v) in (2, 3) and len(nums) == len(v) and all(np.isfinite(nums)):
            width = max(nums) - min(nums)
            if width > 0:
                d = max(0, min(12, 1 - int(np.floor(np.log10(width)))))
                return "[" + ", ".join(f"{x:.{d}f}" for x in nums) + "]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _verdict_context(v: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines that say what a verdict answers and where: question, the hypothesis the rule
    tested (not a finding), scope, and what the verdict does not show (empty ones left out)."""
    names = (
        ("question", "Question"),
        ("hypothesis", "Hypothesis tested"),
        ("scope", "Scope"),
        ("not_shown", "Does not show"),
    )
    return [(label, str(v[k])) for k, label in names if v.get(k)]


# ----------------------------------------------------------------------------- sweep data


def _short(col: str) -> str:
    if col in (LABEL, "cfg.algorithm"):
        return "algorithm"
    return col.removeprefix("cfg.").removeprefix("loss.")


def _value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def _name(cols: list[str], key: tuple) -> str:
    """A condition's name: 'grpo, eps_low=0.1, lr=0.03' (a label is shown by its value)."""
    if not cols:
        return "all runs"
    return ", ".join(
        _value(v) if c in (LABEL, "cfg.algorithm") else f"{_short(c)}={_value(v)}"
        for c, v in zip(cols, key, strict=True)
    )


def _groups(df: pd.DataFrame, cols: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key, rows) per combination of ``cols``, sorted (missing values last); [((), df)] if none."""
    if not cols:
        return [((), df)]
    out = df.groupby(cols, dropna=False, sort=True)
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in out]


# ----------------------------------------------------------------------------- statistics


def _column_means(m: np.ndarray) -> np.ndarray:
    return m.mean(axis=0)


def mean_ci(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs with a pointwise 95% percentile-bootstrap band: (R, X) -> 3 arrays (X,).

    Each column (iteration, step) is a stratum of ``stats.stratified_bootstrap_ci``: its R runs
    are resampled with replacement, CI_REPS times, seed CI_SEED. With R = 1 the band is NaN. The
    band is pointwise: the whole curve lies inside it with probability below 95%.
    """
    m = np.asarray(matrix, dtype=np.float64)
    mean = m.mean(axis=0)
    if m.shape[0] < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    _, low, high = stats.stratified_bootstrap_ci(
        m, _column_means, reps=CI_REPS, confidence=CONFIDENCE, seed=CI_SEED
    )
    return mean, np.asarray(low).reshape(-1), np.asarray(high).reshape(-1)


def ratio_violations(steps: pd.DataFrame, tol: float = VIOLATION_TOL) -> pd.Series:
    """Per optimiser step: did any visited (s, a) leave the clip range, i.e. was
    exact_ratio_max > 1 + eps_high + tol or exact_ratio_min < 1 - eps_low - tol?

    Boolean (nullable): NA where the step has no exact ratio or its run has no eps (TRPO).
    """
    hi = 1.0 + steps[EPS_HIGH].astype("float64") if EPS_HIGH in steps else np.nan
    lo = 1.0 - steps[EPS_LOW].astype("float64")
    bad = (steps["exact_ratio_max"] - hi > tol) | (lo - steps["exact_ratio_min"] > tol)
    bad = bad.astype("boolean")
    unknown = steps["exact_ratio_max"].isna() | steps["exact_ratio_min"].isna() | lo.isna()
    bad[unknown] = pd.NA
    return bad


def eps_lr_tables(summary: pd.DataFrame, steps: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The two eps x lr tables of the heatmap figure (rows cfg.loss.eps_low, columns cfg.lr):

        final_gap        mean over seeds of J* - J(final policy), from the summaries (runs whose
                         gap is missing, e.g. failed runs, are left out)
        violation_frac   (steps with |r - 1| beyond the clip range, ``ratio_violations``) /
                         (steps with an exact ratio), pooled over the seeds of the cell

    Pass the rows of one algorithm label: the tables average over everything else.
    """
    gap = summary.assign(_g=pd.to_numeric(summary["gap"], errors="coerce")).dropna(subset="_g")
    final_gap = gap.groupby([EPS_LOW, LR])["_g"].mean().unstack(LR).sort_index()
    v = steps.assign(_v=ratio_violations(steps)).dropna(subset="_v")
    v["_v"] = v["_v"].astype("float64")
    violation = v.groupby([EPS_LOW, LR])["_v"].mean().unstack(LR).sort_index()
    for t in (final_gap, violation):
        t.columns.name, t.index.name = LR, EPS_LOW
    return {
        "final_gap": final_gap.sort_index(axis=1),
        "violation_frac": violation.sort_index(axis=1),
    }


# ----------------------------------------------------------------------------- figures


@dataclass
class Plot:
    """A drawn figure: its PNG, what it shows, and the numbers it was drawn from."""

    name: str
    title: str
    caption: str
    png: bytes
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


class SkipFigure(Exception):
    """The sweep's data do not support this figure; the message says why."""


FigureBuilder = Callable[[SweepData], Plot]
FIGURES: Registry[FigureBuilder] = Registry("figure")
FIGURE_ORDER = (
    "learning-curves",
    "eps-lr-heatmaps",
    "exact-ratio",
    "kl-per-update",
    "trpo-bound-slack",
    "gain-vs-bounds",
    "algorithm-comparison",
    "gradient-bias",
    "sample-efficiency",
    "compute-cost",
)
# the figure that is the verdict's evidence comes first (protocol name or verdict rule name)
PRIMARY = {
    "importance-sampling": ("gradient-bias",),
    "gradient-bias": ("gradient-bias",),
    "ratio-bound": ("exact-ratio", "eps-lr-heatmaps"),
    "trpo-bound": ("trpo-bound-slack", "gain-vs-bounds"),
    "surrogate-bound": ("gain-vs-bounds",),
    "classic-epsilon-sweep": ("sample-efficiency",),
    "classic-lr-sweep": ("sample-efficiency",),
    "classic-compare": ("sample-efficiency", "algorithm-comparison", "compute-cost"),
    "classic-cost": ("compute-cost",),
}


def figure_order(protocol: str) -> list[str]:
    first = list(PRIMARY.get(protocol, ()))
    return first + [n for n in FIGURE_ORDER if n not in first]


def _figure(
    n_panels: int,
    title: str,
    *,
    width: float = 4.4,
    height: float = 3.3,
    legend: list[str] | None = None,
    panel_title_lines: int = 0,
    left: float = 0.85,
    sharey: bool = False,
) -> tuple[Figure, list[Axes]]:
    """A pyplot-free figure with ``n_panels`` axes (at most 3 a row) and fixed margins in inches:
    room on the right for a legend of ``legend`` labels, on top for ``title`` (wrapped to the
    figure's width). A fixed layout instead of a layout engine: it renders in about half the
    time, and the same every time."""
    from matplotlib.figure import Figure

    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    legend_w = 0.0
    if legend:
        legend_w = 0.75 + 0.068 * max(len(x) for x in legend)
    fig_w = width * ncols + legend_w + max(left - 0.85, 0.0)
    title_lines = textwrap.wrap(title, max(30, int(fig_w * 8.5)))  # ~8.5 chars/inch at 12 pt
    top_in = 0.35 + 0.25 * len(title_lines) + 0.22 * panel_title_lines
    gap_h = 0.75 + 0.22 * panel_title_lines
    fig_h = height * nrows + top_in
    fig = Figure(figsize=(fig_w, fig_h))
    fig.suptitle("\n".join(title_lines))
    panel_w = (fig_w - legend_w - left - 0.2) / ncols
    panel_h = (fig_h - top_in - 0.6) / nrows
    fig.subplots_adjust(
        left=left / fig_w,
        right=1 - (legend_w + 0.2) / fig_w,
        bottom=0.6 / fig_h,
        top=1 - top_in / fig_h,
        wspace=0.95 / max(panel_w - 0.95, 0.5),
        hspace=gap_h / max(panel_h - gap_h, 0.5),
    )
    axs = list(fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel())
    for ax in axs[n_panels:]:
        ax.set_visible(False)
    return fig, axs[:n_panels]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        fig.clear()  # a pyplot-free Figure: nothing global holds it once this reference goes
    return buf.getvalue()


def _palette(names: list[str], numeric: bool) -> dict[str, Any]:
    """A colour per name: ordered colours for the sorted values of one numeric axis (plasma
    without its pale yellow end), else distinct ones."""
    import seaborn as sns

    n = max(len(names), 1)
    if numeric:
        colours = sns.color_palette("plasma", as_cmap=True)(np.linspace(0.0, 0.8, n))
        colours = [tuple(c) for c in colours] if n > 1 else ["#0d0887"]
    else:
        colours = sns.color_palette("tab10" if n <= 10 else "husl", n)
    return dict(zip(names, colours, strict=False))


def _colours(runs: pd.DataFrame, colour: list[str]) -> dict[str, Any]:
    """Condition name -> colour for the combinations of the ``colour`` axes among ``runs``."""
    names = [_name(colour, k) for k, _ in _groups(runs, colour)]
    numeric = len(colour) == 1 and pd.api.types.is_numeric_dtype(runs[colour[0]])
    return _palette(names, numeric)


def _layout(
    runs: pd.DataFrame, axes: list[str], colour_first: str | None = None
) -> tuple[list[str], list[str]]:
    """(colour axes, panel axes): colour by ``colour_first`` if it is an axis, else the label,
    else the last axis; one panel per combination of the rest, unless there are more than
    MAX_PANELS of them (then everything is coloured in one panel)."""
    if not axes:
        return [], []
    pick = colour_first if colour_first in axes else (LABEL if LABEL in axes else axes[-1])
    panels = [a for a in axes if a != pick]
    if panels and runs.groupby(panels, dropna=False).ngroups > MAX_PANELS:
        return list(axes), []
    return [pick], panels


def _label(ax: Axes, xlabel: str, ylabel: str, *, integer_x: bool = False) -> None:
    """Axis labels; the y label only in the first column (panels of a row share y)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(fig: Figure, axs: list[Axes], title: str) -> None:
    """One legend for all panels, right of them (the room ``_figure`` left for it)."""
    handles, labels = {}, []
    for ax in axs:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        pars = fig.subplotpars
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            title=title,
            loc="upper left",
            bbox_to_anchor=(pars.right + 0.15 / fig.get_figwidth(), pars.top),
            fontsize="small",
            title_fontsize="small",
            frameon=False,
        )


@dataclass
class Curves:
    """Mean-over-seeds curves of one quantity: the table a curve figure is drawn from."""

    table: pd.DataFrame  # panel, condition, <x>, mean, low, high, runs
    frame: pd.DataFrame  # the rows they were computed from
    colour: list[str]  # the axes that colour the lines
    panels: list[str]  # the axes that split the panels
    notes: list[str]


def seed_curves(data: SweepData, frame: pd.DataFrame, x: str, y: str, what: str = "") -> Curves:
    """Per condition, the mean of ``y`` over seeds at each ``x`` with its 95% bootstrap band
    (``mean_ci``). ``frame``: rows (run_id, x, y, cfg.*). A run with a non-finite y anywhere on
    its curve is left out of its condition's mean and band; the notes count such runs."""
    frame = frame.dropna(subset=[x])
    if not len(frame):
        raise SkipFigure(f"no rows with {x!r}")
    runs = frame.drop_duplicates("run_id")
    colour, panels = _layout(runs, [a for a in data.axes if a in frame])
    rows, notes = [], []
    for pkey, pframe in _groups(frame, panels):
        panel = _name(panels, pkey) if panels else ""
        for ckey, cframe in _groups(pframe, colour):
            wide = cframe.groupby(["run_id", x])[y].mean().unstack(x)  # (R, X)
            wide = wide.reindex(sorted(wide.columns), axis=1)
            values = wide.to_numpy(dtype=np.float64)
            finite = np.isfinite(values).all(axis=1)
            name = _name(colour, ckey)
            if not finite.all():
                notes.append(
                    f"{name}{' (' + panel + ')' if panel else ''}: {int((~finite).sum())} of "
                    f"{len(finite)} runs have non-finite {what or y} and are left out of the mean"
                )
            if not finite.any():
                continue
            mean, low, high = mean_ci(values[finite])
            for i, xv in enumerate(wide.columns.to_numpy(dtype=np.float64)):
                rows.append(
                    {"panel": panel, "condition": name, x: xv, "mean": mean[i], "low": low[i],
                     "high": high[i], "runs": int(finite.sum())}
                )  # fmt: skip
    if not rows:
        raise SkipFigure(f"every run has non-finite {what or y}")
    return Curves(pd.DataFrame(rows), frame, colour, panels, notes)


def _draw_curves(
    c: Curves,
    x: str,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    decorate: Callable[[Axes, pd.DataFrame], None] | None = None,
    extra_labels: tuple[str, ...] = (),
    centre: str = "mean",
) -> Figure:
    """One panel per panel key, one line (the table's ``centre`` column: mean or iqm) and band
    per condition, one shared legend."""
    colours = _colours(c.frame.drop_duplicates("run_id"), c.colour)
    names = list(colours)
    panel_groups = _groups(c.frame, c.panels)
    fig, axs = _figure(
        len(panel_groups),
        title,
        legend=names + list(extra_labels),
        panel_title_lines=int(bool(c.panels)),
        sharey=True,
    )
    for ax, (pkey, pframe) in zip(axs, panel_groups, strict=True):
        panel = _name(c.panels, pkey) if c.panels else ""
        for name in names:
            t = c.table[(c.table["panel"] == panel) & (c.table["condition"] == name)]
            if not len(t):
                continue
            xs = t[x].to_numpy(dtype=np.float64)
            marker = "." if len(xs) < 30 else None
            ax.plot(xs, t[centre], color=colours[name], lw=1.6, label=name, marker=marker)
            low, high = t["low"].to_numpy(np.float64), t["high"].to_numpy(np.float64)
            if np.isfinite(low).any():
                ax.fill_between(xs, low, high, color=colours[name], alpha=0.2, lw=0)
        if decorate is not None:
            decorate(ax, pframe)
        if panel:
            ax.set_title(panel, fontsize="medium")
        _label(ax, xlabel, ylabel, integer_x=True)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    _legend(fig, axs, ", ".join(_short(col) for col in c.colour) or "runs")
    return fig


def _wants_log(values: pd.Series) -> bool:
    """Log scale for a positive quantity spanning more than a decade."""
    v = values.astype("float64")
    v = v[np.isfinite(v)]
    return bool(len(v) and (v > 0).all() and v.max() > 10 * v.min())


def _seeds_note(data: SweepData) -> str:
    runs = data.runs
    if runs is None:
        return ""
    axes = data.axes
    n = runs.groupby(axes, dropna=False).size() if axes else pd.Series([len(runs)])
    lo, hi = int(n.min()), int(n.max())
    return f"{lo} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"


def _band_note() -> str:
    return (
        f"Band: pointwise {CONFIDENCE:.0%} percentile bootstrap of the mean over seeds "
        f"({CI_REPS} resamples, seed {CI_SEED})."
    )


def _normalised(data: SweepData) -> tuple[pd.DataFrame, str, str]:
    """Per (run, x = updates completed) the exact normalised return J / |J*| (the score the
    verdicts use, ``analysis.final_scores``); the final policy (summary j_final) is the point after
    the last update."""
    it = data.iterations
    if it is None or "J" not in it or "gap" not in it:
        raise SkipFigure("no iteration rows with exact J and gap")
    cfg = [c for c in it.columns if c.startswith("cfg.")]
    rows = it[["run_id", "iteration", "J", "gap", *cfg]].copy()
    rows["j_star"] = rows["J"] + rows["gap"]
    s = data.summary
    if s is not None and {"j_final", "j_star", "num_iterations"} <= set(s.columns):
        last = s.loc[s["run_id"].isin(rows["run_id"])].copy()
        last = last.assign(
            iteration=pd.to_numeric(last["num_iterations"], errors="coerce"),
            J=pd.to_numeric(last["j_final"], errors="coerce"),
            j_star=pd.to_numeric(last["j_star"], errors="coerce"),
        )
        last = last.dropna(subset=["iteration", "J"])
        rows = pd.concat(
            [rows, last[["run_id", "iteration", "J", "j_star", *cfg]]], ignore_index=True
        )
    rows["iteration"] = pd.to_numeric(rows["iteration"], errors="coerce").astype("float64")
    rows["y"] = rows["J"].astype("float64") / rows["j_star"].astype("float64").abs()
    return rows, "normalised return J / |J*| (exact; 1 = optimal)", "J/|J*|"


def learning_curve_table(data: SweepData) -> pd.DataFrame:
    """The numbers of the learning-curve figure: per panel and condition, at each number of
    updates completed (``iteration``), the mean over seeds of the exact normalised return
    (``_normalised``) with its 95% bootstrap band (low, high) and the number of runs."""
    rows, _, what = _normalised(data)
    return seed_curves(data, rows, "iteration", "y", what).table


@FIGURES.register("learning-curves")
def learning_curves(data: SweepData) -> Plot:
    rows, ylabel, what = _normalised(data)
    curves = seed_curves(data, rows, "iteration", "y", what)
    fig = _draw_curves(
        curves,
        "iteration",
        title=f"Learning curves: exact {what} after each update, mean over seeds",
        xlabel="updates completed (iterations)",
        ylabel=ylabel,
    )
    caption = (
        f"Exact {what} of the policy after each update (x = 0: the initial policy; last point: "
        f"the final policy), mean over {_seeds_note(data)} per condition. {_band_note()}"
    )
    return Plot(
        "learning-curves",
        "Learning curves",
        " ".join([caption, *curves.notes]),
        _png(fig),
        {"curve": curves.table},
    )


@FIGURES.register("eps-lr-heatmaps")
def eps_lr_heatmaps(data: SweepData) -> Plot:
    import seaborn as sns

    axes = data.axes
    if EPS_LOW not in axes or LR not in axes:
        raise SkipFigure("the sweep does not vary both cfg.loss.eps_low and cfg.lr")
    if data.summary is None or data.steps is None or "exact_ratio_max" not in data.steps:
        raise SkipFigure("no summaries or no exact-ratio steps")
    label = LABEL if LABEL in data.summary else None
    labels = _groups(data.summary, [label] if label else [])
    panels = []
    for key, s in labels:
        st = data.steps[data.steps[label] == key[0]] if label else data.steps
        if s[EPS_LOW].notna().any() and s[LR].notna().any():
            panels.append((_value(key[0]) if key else "", eps_lr_tables(s, st)))
    panels = [(n, t) for n, t in panels if t["final_gap"].size or t["violation_frac"].size]
    if not panels:
        raise SkipFigure("no run with both eps_low and lr")
    fig, axs = _figure(
        2 * len(panels),
        "eps x learning rate: final optimality gap and clip-range violations",
        width=5.2,
        height=3.6,
        panel_title_lines=1,
    )
    specs = (
        ("final_gap", "final gap J* - J (mean over seeds)", "rocket_r", None, None),
        ("violation_frac", "fraction of steps with r outside [1-eps_low, 1+eps_high]", "mako_r", 0.0, 1.0),
    )  # fmt: skip
    tables = {}
    for i, (name, t) in enumerate(panels):
        for j, (key, what, cmap, vmin, vmax) in enumerate(specs):
            ax = axs[2 * i + j]
            table = t[key]
            tables[f"{key}{'_' + name if len(panels) > 1 else ''}"] = table
            if not table.size:
                ax.set_visible(False)
                continue
            shown = table.rename(index=_value, columns=_value)
            sns.heatmap(
                shown,
                ax=ax,
                annot=True,
                fmt=".3g",
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                cbar_kws={"label": "J* - J (return units)" if key == "final_gap" else "fraction of steps"},
            )  # fmt: skip
            ax.set_xlabel("learning rate (cfg.lr)")
            ax.set_ylabel("eps_low (clip range below 1)")
            ax.set_title(f"{name + ': ' if name else ''}{what}", fontsize="medium")
    caption = (
        "Left: exact optimality gap J* - J of the final policy, mean over "
        f"{_seeds_note(data)}. Right: fraction of optimiser steps after which some visited (s, a) "
        "has r = pi_new / pi_old outside [1 - eps_low, 1 + eps_high] (exact, tolerance "
        f"{VIOLATION_TOL:g}), pooled over seeds."
    )
    return Plot(
        "eps-lr-heatmaps",
        "eps x learning rate: final gap and violations",
        caption,
        _png(fig),
        tables,
    )


@FIGURES.register("exact-ratio")
def exact_ratio(data: SweepData) -> Plot:
    st = data.steps
    if st is None or not {"exact_ratio_max", "exact_ratio_min"} <= set(st.columns):
        raise SkipFigure("no exact_ratio_max / exact_ratio_min per step")
    st = st.dropna(subset=["exact_ratio_max", "exact_ratio_min", "step"])
    if not len(st):
        raise SkipFigure("no step has a finite exact ratio")
    runs = st.drop_duplicates("run_id")
    axes = [a for a in data.axes if a in st]
    colour, panels = _layout(runs, axes, EPS_LOW)
    panel_groups = _groups(st, panels)
    colours = _colours(runs, colour)
    fig, axs = _figure(
        len(panel_groups),
        "Exact policy ratio after each optimiser step: max and min over visited (s, a)",
        legend=list(colours),
        panel_title_lines=int(bool(panels)),
        sharey=True,
    )
    violations = ratio_violations(st) if EPS_LOW in st else pd.Series(pd.NA, index=st.index)
    rows = []
    for ax, (pkey, pframe) in zip(axs, panel_groups, strict=True):
        for ckey, cframe in _groups(pframe, colour):
            name = _name(colour, ckey)
            c = colours[name]
            hi = cframe.groupby("step")["exact_ratio_max"].max()
            lo = cframe.groupby("step")["exact_ratio_min"].min()
            xs = hi.index.to_numpy(dtype=np.float64)
            ax.plot(xs, hi.to_numpy(), color=c, lw=1.3, label=name)
            ax.plot(xs, lo.to_numpy(), color=c, lw=1.3)
            clip = []
            if EPS_LOW in cframe and cframe[EPS_LOW].notna().any():
                e_lo = cframe[EPS_LOW].dropna().unique()
                e_hi = cframe[EPS_HIGH].dropna().unique() if EPS_HIGH in cframe else e_lo
                clip = [1 + v for v in e_hi] + [1 - v for v in e_lo]
            for y in clip:
                ax.axhline(y, color=c, ls="--", lw=1.0, alpha=0.8)
            v = violations.loc[cframe.index].dropna()
            rows.append(
                {"panel": _name(panels, pkey) if panels else "", "condition": name,
                 "steps": len(cframe), "violating_steps": int(v.astype(bool).sum()) if len(v) else None,
                 "violation_frac": float(v.astype("float64").mean()) if len(v) else None,
                 "max_ratio": float(hi.max()), "min_ratio": float(lo.min())}
            )  # fmt: skip
        ax.axhline(1.0, color="0.3", lw=0.8)
        if panels:
            ax.set_title(_name(panels, pkey), fontsize="medium")
        _label(ax, "optimiser step", "exact ratio pi_new / pi_old (max and min)", integer_x=True)
        if st["exact_ratio_max"].max() / max(st["exact_ratio_min"].min(), 1e-300) > 20:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    _legend(fig, axs, ", ".join(_short(c) for c in colour) or "runs")
    caption = (
        "Solid: the largest and smallest r(s, a) = pi_new(a|s) / pi_old(a|s) over every (s, a) "
        "the old policy visits, worst case over seeds. Dashed, same colour: the clip range "
        "1 + eps_high and 1 - eps_low of that condition (absent for TRPO, which has no clip). The "
        "seed's lemma |r - 1| <= eps holds only if solid lines stay inside dashed ones."
    )
    return Plot(
        "exact-ratio",
        "Exact ratio per optimiser step",
        caption,
        _png(fig),
        {"ratio": pd.DataFrame(rows)},
    )


@FIGURES.register("kl-per-update")
def kl_per_update(data: SweepData) -> Plot:
    st = data.steps
    if st is None or "kl_mean" not in st or "iteration" not in st:
        raise SkipFigure("no exact kl_mean per step")
    st = st.dropna(subset=["iteration", "step"])
    # the KL of an update: kl_mean (against the iteration's pi_old) after its last optimiser step
    last = st.sort_values(["run_id", "step"]).groupby(["run_id", "iteration"]).tail(1)
    last = last.assign(update=last["iteration"].astype("float64") + 1)
    kl = last["kl_mean"].astype("float64")
    if not np.isfinite(kl).any():
        raise SkipFigure("kl_mean is non-finite everywhere")
    deltas = last[DELTA].dropna() if DELTA in last else pd.Series(dtype="float64")

    def delta_lines(ax: Axes, frame: pd.DataFrame) -> None:
        if DELTA in frame:
            for d in sorted(frame[DELTA].dropna().unique()):
                ax.axhline(d, color="k", ls=":", lw=1.2, label=f"TRPO delta = {d:g}")

    log = _wants_log(kl)
    curves = seed_curves(data, last, "update", "kl_mean")
    fig = _draw_curves(
        curves,
        "update",
        title="Exact KL(pi_old || pi_new) of each update, mean over seeds",
        xlabel="update (iteration)",
        ylabel="exact mean KL, visitation-weighted (nats)",
        log=log,
        decorate=delta_lines,
        extra_labels=tuple(f"TRPO delta = {d:g}" for d in sorted(deltas.unique())),
    )
    caption = (
        "sum_s d(s) KL(pi_old(.|s) || pi_new(.|s)) between the policy before an update and after "
        f"its last optimiser step, mean over {_seeds_note(data)}. {_band_note()}"
    )
    if len(deltas):
        trpo = last[last[DELTA].notna()]
        over = trpo["kl_mean"] > trpo[DELTA] * (1 + 1e-9)
        caption += (
            f" Dotted: TRPO's delta. TRPO constrains its KL estimate (cfg.kl_constraint), so the "
            f"exact KL can exceed delta: it did at {int(over.sum())} of {len(trpo)} TRPO updates."
        )
    return Plot(
        "kl-per-update",
        "Exact KL per update",
        " ".join([caption, *curves.notes]),
        _png(fig),
        {"kl": curves.table},
    )


@FIGURES.register("trpo-bound-slack")
def trpo_bound_slack(data: SweepData) -> Plot:
    st = data.steps
    if st is None or "bound_slack" not in st:
        raise SkipFigure("no bound_slack per step")
    slack = st["bound_slack"].astype("float64")
    finite = slack[np.isfinite(slack)]
    if not len(finite):
        raise SkipFigure("bound_slack is non-finite everywhere (e.g. a finite-horizon MDP)")
    positive = bool((finite > 0).all())

    def zero(ax: Axes, frame: pd.DataFrame) -> None:
        if not positive:
            ax.axhline(0.0, color="k", lw=1.0, label="slack = 0 (bound tight)")

    curves = seed_curves(data, st, "step", "bound_slack")
    fig = _draw_curves(
        curves,
        "step",
        title="TRPO Theorem 1: slack true gain - (L - C max KL) per optimiser step",
        xlabel="optimiser step",
        ylabel="bound slack (return units; >= 0: bound holds)",
        log=_wants_log(finite),
        decorate=zero,
        extra_labels=() if positive else ("slack = 0 (bound tight)",),
    )
    neg = int((finite < -VIOLATION_TOL).sum())
    caption = (
        "Slack of eta(new) >= L_old(new) - C max_s KL(pi_old || pi_new), C = 4 max|A| gamma / "
        f"(1 - gamma)^2, at each step: {neg} of {len(finite)} steps below 0; median "
        f"{float(finite.median()):.3g}, min {float(finite.min()):.3g} (return units). Mean over "
        f"{_seeds_note(data)}. {_band_note()}" + (" Log scale." if _wants_log(finite) else "")
    )
    return Plot(
        "trpo-bound-slack",
        "TRPO bound slack",
        " ".join([caption, *curves.notes]),
        _png(fig),
        {"slack": curves.table},
    )


GAINS = (
    ("trpo_bound", "TRPO bound L - C max KL"),
    ("surrogate_gain", "surrogate gain L - J(old)"),
    ("clipped_gain", "clipped-objective gain"),
)


@FIGURES.register("gain-vs-bounds")
def gain_vs_bounds(data: SweepData) -> Plot:
    st = data.steps
    if st is None or "true_gain" not in st:
        raise SkipFigure("no true_gain per step")
    st = st[np.isfinite(st["true_gain"].astype("float64"))]
    present = [
        (c, what) for c, what in GAINS if c in st and np.isfinite(st[c].astype("float64")).any()
    ]
    if not len(st) or not present:
        raise SkipFigure("no step with a finite true gain and a finite predicted gain")
    runs = st.drop_duplicates("run_id")
    colour = [a for a in data.axes if a in st]
    if len(_groups(runs, colour)) > 12:  # too many colours to read: the label or 1st axis
        colour = [LABEL] if LABEL in colour else colour[:1]
    colours = _colours(runs, colour)
    names = [*colours, "y = x"]
    fig, axs = _figure(
        len(present),
        "True improvement against what each objective predicts, per optimiser step",
        width=4.2,
        height=3.8,
        legend=names,
        panel_title_lines=2,
    )
    rows = []
    for ax, (col, what) in zip(axs, present, strict=True):
        pts = st[np.isfinite(st[col].astype("float64"))]
        for ckey, g in _groups(pts, colour):
            ax.scatter(
                g[col],
                g["true_gain"],
                s=10,
                alpha=0.6,
                color=colours[_name(colour, ckey)],
                label=_name(colour, ckey),
                lw=0,
            )
        lo = float(min(pts[col].min(), pts["true_gain"].min()))
        hi = float(max(pts[col].max(), pts["true_gain"].max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=1.0, ls="--", label="y = x")
        below = int((pts["true_gain"] < pts[col] - VIOLATION_TOL).sum())
        rows.append({"predicted": col, "steps": len(pts), "true_below_predicted": below})
        ax.set_title(f"{what}\ntrue < predicted at {below} of {len(pts)} steps", fontsize="medium")
        ax.set_xlabel(f"{col} (return units)")
        ax.set_ylabel("true gain J(new) - J(old) (return units)")
        ax.grid(True, alpha=0.3)
    _legend(fig, axs, ", ".join(_short(c) for c in colour) or "runs")
    caption = (
        "Each point is one optimiser step (exact values). An objective is a lower bound on the "
        "true improvement exactly when every point lies on or above y = x: TRPO Theorem 1 claims "
        "it for the bound; the seed claims it for the clipped objective."
    )
    return Plot(
        "gain-vs-bounds",
        "True gain vs bound, surrogate and clipped gain",
        caption,
        _png(fig),
        {"below_diagonal": pd.DataFrame(rows)},
    )


def comparison_scores(data: SweepData) -> tuple[dict[str, np.ndarray], str]:
    """Final score of every run (``final_scores``; classic control: ``eval_return``) per
    condition (label, then any other axes), finite scores only, conditions in sorted order; and
    what the score is."""
    s = data.summary
    if s is None or LABEL not in s or s[LABEL].nunique() < 2:
        raise SkipFigure("fewer than two algorithm labels")
    exact = "j_final" in s and "j_star" in s and s["j_final"].notna().any()
    if not exact and "eval_return" not in s and "eval_acc_final" not in s:
        raise SkipFigure("no j_final / j_star (or eval_return) in the summaries")
    scored_runs = final_scores(SweepData(summary=s))  # the verdicts' own score definition
    score = pd.to_numeric(scored_runs["score"], errors="coerce").reindex(s.index)
    what = SCORE_WORDS[scored_runs.attrs["score_key"]]
    axes = [a for a in data.axes if a in s]
    if LABEL not in axes:
        axes = [LABEL, *axes]
    scored = s.assign(_score=score)
    groups = [(_name(axes, k), g["_score"].to_numpy(np.float64)) for k, g in _groups(scored, axes)]
    groups = [(n, v[np.isfinite(v)]) for n, v in groups]
    groups = [(n, v) for n, v in groups if len(v)]
    if not groups:
        raise SkipFigure("no run has a finite final return")
    return dict(groups), what


def comparison_table(data: SweepData) -> pd.DataFrame:
    """The numbers of the algorithm-comparison figure: per condition with >= 2 runs, the IQM
    and mean of the final score with 95% stratified-bootstrap intervals
    (``stats.aggregate_with_ci``, COMPARE_REPS resamples, seed CI_SEED) and the run count."""
    scores, _ = comparison_scores(data)
    enough = {n: v for n, v in scores.items() if len(v) >= 2}
    agg = (
        stats.aggregate_with_ci(
            enough, ("iqm", "mean"), reps=COMPARE_REPS, confidence=CONFIDENCE, seed=CI_SEED
        )
        if enough
        else pd.DataFrame(columns=["algorithm", "statistic", "point", "low", "high"])
    )
    agg = agg.rename(columns={"algorithm": "condition"})
    agg["runs"] = agg["condition"].map({n: len(v) for n, v in scores.items()})
    return agg


@FIGURES.register("algorithm-comparison")
def algorithm_comparison(data: SweepData) -> Plot:
    scores, what = comparison_scores(data)
    agg = comparison_table(data)
    groups = list(scores.items())
    longest = max(len(n) for n, _ in groups)
    fig, (ax,) = _figure(
        1, "Algorithm comparison", width=6.5, height=max(2.0, 0.45 * len(groups) + 1.0),
        left=0.3 + 0.075 * longest, panel_title_lines=1,
    )  # fmt: skip
    colours = _palette([n for n, _ in groups], False)
    for i, (n, v) in enumerate(groups):
        ax.scatter(v, np.full(len(v), i + 0.18), color="0.5", s=14, zorder=2, lw=0)
        row = agg[(agg["condition"] == n) & (agg["statistic"] == "iqm")]
        if len(row):
            p, lo, hi = (float(row[c].iloc[0]) for c in ("point", "low", "high"))
            ax.errorbar(
                p, i, xerr=[[p - lo], [hi - p]], fmt="D", color=colours[n], capsize=4, zorder=3
            )
    ax.set_yticks(range(len(groups)), [n for n, _ in groups])
    ax.invert_yaxis()
    ax.set_xlabel(what)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(
        "Final policy per algorithm: IQM with 95% CI (diamond), runs (grey)", fontsize="medium"
    )
    few = [n for n, v in groups if len(v) < 2]
    caption = (
        f"Score per run: {what}. Diamond and bar: interquartile mean and its {CONFIDENCE:.0%} "
        f"stratified-bootstrap interval over seeds ({COMPARE_REPS} resamples, seed {CI_SEED}; "
        "grpo_lab.stats.aggregate_with_ci)."
        + (f" Too few runs for an interval: {', '.join(few)}." if few else "")
    )
    return Plot(
        "algorithm-comparison", "Algorithm comparison", caption, _png(fig), {"aggregate": agg}
    )


def gradient_bias_table(data: SweepData) -> pd.DataFrame:
    """The numbers of the gradient-bias figure: per gradient experiment (run), its label, the
    relative bias in scale (||mean - grad J|| / ||grad J||) and in direction (after the best
    multiple of grad J), their Monte Carlo error (``noise_rel``), the cosine and the p-values."""
    s = data.summary
    need = {"rel_norm_error", "dir_rel_error", "noise_rel", "cosine", LABEL}
    if s is None or not need <= set(s.columns):
        raise SkipFigure("no gradient experiment in the sweep")
    s = s[s["status"] != "error"]
    if not len(s):
        raise SkipFigure("every gradient experiment failed")
    cols = [LABEL, "run_id", "rel_norm_error", "dir_rel_error", "noise_rel", "fit_scale"]
    cols += ["cosine", "p_bias", "p_direction", "num_samples"]
    return s[[c for c in cols if c in s.columns]].reset_index(drop=True)


@FIGURES.register("gradient-bias")
def gradient_bias(data: SweepData) -> Plot:
    t = gradient_bias_table(data)
    labels = list(dict.fromkeys(t[LABEL]))
    longest = max(len(str(n)) for n in labels)
    fig, axs = _figure(
        2, "Gradient estimators against the exact grad J", width=5.0,
        height=max(2.0, 0.45 * len(labels) + 1.0), left=0.3 + 0.075 * longest,
        panel_title_lines=1, sharey=True,
    )  # fmt: skip
    colours = _palette(labels, False)
    for ax, col, title in (
        (axs[0], "rel_norm_error", "in scale: ||mean - grad J|| / ||grad J||"),
        (axs[1], "dir_rel_error", "in direction: after the best multiple of grad J"),
    ):
        for i, n in enumerate(labels):
            rows = t[t[LABEL] == n]
            err = (
                2.0 * rows["noise_rel"] / (rows["fit_scale"].abs() if col == "dir_rel_error" else 1)
            )
            offsets = np.linspace(-0.15, 0.15, len(rows)) if len(rows) > 1 else np.zeros(1)
            ax.errorbar(
                rows[col], i + offsets, xerr=err, fmt="o", color=colours[n], capsize=3, ms=5
            )
        ax.axvline(0.0, color="0.3", lw=0.8)
        ax.set_xlabel("relative bias (1 = as large as grad J)")
        ax.set_title(title, fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3)
    axs[0].set_yticks(range(len(labels)), labels)
    axs[0].invert_yaxis()
    caption = (
        "Each point is one gradient experiment (one point theta): the Monte Carlo mean of N "
        "estimates against the exact policy gradient (grpo_lab.algorithms.gradient). Bars: "
        "+-2 Monte Carlo standard errors (||se|| / ||grad J||); a bias is real when its point "
        "lies beyond its bar. Left: the estimator's mean against grad J itself; right: against "
        "the least-squares multiple of grad J (a constant factor only rescales the learning rate)."
    )
    return Plot("gradient-bias", "Gradient bias", caption, _png(fig), {"gradient_experiments": t})


GRID_POINTS = 60  # points of the common env-step grid of a sample-efficiency curve


def curve_on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One run's curve y(x), read at the points of ``grid`` by linear interpolation between its
    logged points, NaN outside [x_first, x_last] (no extrapolation):

        y(g) = y_i + (g - x_i) (y_{i+1} - y_i) / (x_{i+1} - x_i)   for x_i <= g <= x_{i+1}

    Points with a non-finite x or y (an iteration in which no episode ended) are dropped first;
    with none left the result is all NaN.

    Shapes: x, y (I,) with the finite x strictly increasing, grid (X,) -> (X,).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    g = np.asarray(grid, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = np.full(g.shape, np.nan)
    if not len(x):
        return out
    if (np.diff(x) <= 0).any():
        raise ValueError(f"x must be strictly increasing where y is finite, got {x.tolist()}")
    inside = (g >= x[0]) & (g <= x[-1])
    out[inside] = np.interp(g[inside], x, y)
    return out


def _env_step_curves(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per run its finite (x, y) points sorted by x, duplicates of x averaged: (run_id, x, y)."""
    f = frame[["run_id", x, y]].astype({x: "float64", y: "float64"})
    f = f[np.isfinite(f[x]) & np.isfinite(f[y])]
    return f.groupby(["run_id", x], as_index=False)[y].mean().sort_values(["run_id", x])


def iqm_grid_curves(data: SweepData, frame: pd.DataFrame, x: str, y: str) -> Curves:
    """Per condition, the IQM over seeds of ``y`` on a common grid of ``x`` with its pointwise
    95% stratified-bootstrap band (``stats.iqm_curve_ci``, percentile, CI_REPS resamples, seed
    CI_SEED).

    Runs log at different x (GRPO's iterations take a random number of env steps), so each run is
    first read on one grid per panel (``curve_on_grid``): GRID_POINTS points evenly spaced from
    the smallest first x to the largest last x of the panel's runs. A condition's curve is drawn
    where every one of its runs has a value (between its runs' largest first x and smallest last
    x), so each point is the IQM of all its runs. ``frame``: rows (run_id, x, y, cfg.*).
    """
    pts = _env_step_curves(frame, x, y)
    if not len(pts):
        raise SkipFigure(f"no run has a finite {y} at a finite {x}")
    runs = frame.drop_duplicates("run_id")
    runs = runs[runs["run_id"].isin(pts["run_id"])]
    colour, panels = _layout(runs, [a for a in data.axes if a in frame])
    rows, notes = [], []
    for pkey, pruns in _groups(runs, panels):
        panel = _name(panels, pkey) if panels else ""
        ppts = pts[pts["run_id"].isin(pruns["run_id"])]
        grid = np.linspace(ppts[x].min(), ppts[x].max(), GRID_POINTS)
        for ckey, cruns in _groups(pruns, colour):
            name = _name(colour, ckey)
            cpts = ppts[ppts["run_id"].isin(cruns["run_id"])].groupby("run_id")
            curves = np.stack(  # (R, X)
                [curve_on_grid(r[x].to_numpy(), r[y].to_numpy(), grid) for _, r in cpts]
            )
            common = np.isfinite(curves).all(axis=0)  # (X,) where every run has a value
            if not common.any():
                notes.append(f"{name}{' (' + panel + ')' if panel else ''}: its runs' env-step "
                             "ranges do not overlap; no curve")  # fmt: skip
                continue
            c = curves[:, common]
            if len(c) > 1:
                iqm, low, high = stats.iqm_curve_ci(
                    c, reps=CI_REPS, confidence=CONFIDENCE, seed=CI_SEED
                )
            else:
                iqm, low, high = c[0], np.full(c.shape[1], np.nan), np.full(c.shape[1], np.nan)
            for i, xv in enumerate(grid[common]):
                rows.append(
                    {"panel": panel, "condition": name, x: float(xv), "iqm": float(iqm[i]),
                     "low": float(low[i]), "high": float(high[i]), "runs": len(c)}
                )  # fmt: skip
    if not rows:
        raise SkipFigure(f"no condition has runs whose {x} ranges overlap")
    return Curves(pd.DataFrame(rows), runs, colour, panels, notes)


def _returns_by_env_step(data: SweepData) -> pd.DataFrame:
    it = data.iterations
    if it is None or not {"env_steps", "episode_return"} <= set(it.columns):
        raise SkipFigure("no iteration rows with env_steps and episode_return (classic control)")
    return it


def sample_efficiency_table(data: SweepData) -> pd.DataFrame:
    """The numbers of the sample-efficiency figure: per panel and condition, at each point of the
    common env-step grid, the IQM over seeds of the training episode return with its 95%
    stratified-bootstrap band (low, high) and the number of runs (``iqm_grid_curves``)."""
    return iqm_grid_curves(data, _returns_by_env_step(data), "env_steps", "episode_return").table


@FIGURES.register("sample-efficiency")
def sample_efficiency(data: SweepData) -> Plot:
    it = _returns_by_env_step(data)
    curves = iqm_grid_curves(data, it, "env_steps", "episode_return")
    fig = _draw_curves(
        curves,
        "env_steps",
        title="Sample efficiency: training episode return against environment steps, IQM over seeds",
        xlabel="environment steps",
        ylabel="episode return (training rollouts)",
        centre="iqm",
    )
    from matplotlib.ticker import EngFormatter, MaxNLocator

    for ax in fig.axes:  # env steps as 10k, 20k, ...: full numbers overlap
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    caption = (
        "Mean return of the episodes that ended in each rollout (PPO, TRPO: those ending inside "
        "its fixed window of steps; GRPO: every episode of the iteration, none for an iteration cut "
        "by the budget), at the environment steps spent by the end of that rollout. Each run is "
        f"interpolated linearly onto a common grid of {GRID_POINTS} env-step points (no "
        "extrapolation); a condition's curve spans the steps every one of its runs covers. Line: "
        f"interquartile mean over {_seeds_note(data)} (arXiv 2108.13264). Band: pointwise "
        f"{CONFIDENCE:.0%} percentile stratified bootstrap of the IQM ({CI_REPS} resamples, seed "
        f"{CI_SEED})."
    )
    return Plot(
        "sample-efficiency",
        "Sample efficiency",
        " ".join([caption, *curves.notes]),
        _png(fig),
        {"curve": curves.table},
    )


COST_PARTS = (("rollout_us_per_step", "rollout"), ("update_us_per_step", "update"))


def compute_cost_table(data: SweepData) -> pd.DataFrame:
    """The numbers of the compute-cost figure: per algorithm label and cost
    (``analysis.compute_costs``: rollout, update and total microseconds of wall time per env
    step, amortised over the batch), the IQM over timed batches with its 95% stratified-bootstrap
    interval (COMPARE_REPS resamples, seed CI_SEED; NaN with one batch), the batches and runs.

    Per label, not per condition: the runs of one batch share their timings, and a batch holds
    every condition that differs only in batchable fields (lr, eps, seed)."""
    from grpo_lab.verdicts import COST_COLUMNS, compute_costs

    it = data.iterations
    need = {"rollout_time", "update_time", "env_steps_per_s"}
    if it is None or not need <= set(it.columns):
        raise SkipFigure("no per-iteration rollout_time, update_time and env_steps_per_s")
    costs = compute_costs(it, data.summary)
    if not len(costs):
        raise SkipFigure("no run has finite timings")
    rows = []
    for label, g in costs.groupby("label", sort=True):
        for col in COST_COLUMNS:
            v = g[col].to_numpy(np.float64)
            point, low, high = (
                stats.stratified_bootstrap_ci(
                    v, "iqm", reps=COMPARE_REPS, confidence=CONFIDENCE, seed=CI_SEED
                )
                if len(v) > 1
                else (float(v[0]), math.nan, math.nan)
            )
            rows.append({"algorithm": label, "cost": col, "iqm": point, "low": low, "high": high,
                         "batches": len(v), "runs": int(g["runs"].sum())})  # fmt: skip
    return pd.DataFrame(rows)


@FIGURES.register("compute-cost")
def compute_cost(data: SweepData) -> Plot:
    t = compute_cost_table(data)
    names = list(dict.fromkeys(t["algorithm"]))
    longest = max(len(n) for n in names)
    fig, axs = _figure(
        len(COST_PARTS), "Compute per environment step: rollout and update wall time",
        width=4.6, height=max(2.0, 0.45 * len(names) + 1.0), left=0.3 + 0.075 * longest,
        panel_title_lines=1, sharey=True,
    )  # fmt: skip
    colours = _palette(names, False)
    for ax, (col, what) in zip(axs, COST_PARTS, strict=True):
        for i, n in enumerate(names):
            row = t[(t["algorithm"] == n) & (t["cost"] == col)].iloc[0]
            p, lo, hi = float(row["iqm"]), float(row["low"]), float(row["high"])
            ax.barh(i, p, color=colours[n], alpha=0.8)
            if math.isfinite(lo):
                ax.errorbar(p, i, xerr=[[p - lo], [hi - p]], fmt="none", color="k", capsize=4)
        ax.set_xlabel("microseconds of wall time per env step")
        ax.set_title(f"{what} (IQM over batches)", fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3)
    axs[0].set_yticks(range(len(names)), names)
    axs[0].invert_yaxis()
    single = [n for n in names if int(t.loc[t["algorithm"] == n, "batches"].iloc[0]) < 2]
    caption = (
        "Wall time of the rollouts (acting in the environments) and of the updates (from the "
        "batch to the new policy: PPO's epochs with a critic, GRPO's epochs without one, TRPO's "
        "conjugate gradient, line search and critic fit) per environment step, summed over the "
        "iterations of a batched program and divided by all its env steps "
        "(grpo_lab.analysis.compute_costs). The runs of one batch share one timing, so the "
        f"batch is the unit: IQM over batches with a {CONFIDENCE:.0%} stratified-bootstrap "
        "interval where there are several"
        + (f" (one batch, no interval: {', '.join(single)})" if single else "")
        + ". The rollout cost falls with the number of environments stepped at once (a "
        "setting, not the algorithm); the update cost is the algorithm's. Timings depend on the "
        "machine, its load and torch's threads: compare within one sweep."
    )
    return Plot(
        "compute-cost", "Compute cost per environment step", caption, _png(fig), {"cost": t}
    )


def build_figures(data: SweepData, protocol: str = "") -> tuple[list[Plot], list[str]]:
    """Every figure the sweep's data support, in ``figure_order(protocol)``, and a note for each
    one skipped (unsupported data) or failed (an exception: the report still gets written)."""
    plots, skipped = [], []
    for name in figure_order(protocol):
        try:
            plot = FIGURES.get(name)(data)
        except SkipFigure as e:
            skipped.append(f"{name}: {e}")
            continue
        except Exception as e:  # a figure must never cost the report
            skipped.append(f"{name}: failed with {type(e).__name__}: {e}")
            continue
        plots.append(plot)
    return plots, skipped


# ----------------------------------------------------------------------------- sections


@dataclass
class Section:
    """What the report shows of one sweep beyond its verdict."""

    sweep: str
    data_lines: list[str]
    plots: list[Plot]
    skipped: list[str]
    figure_paths: dict[str, str] = field(default_factory=dict)  # plot name -> path from <out>


def _data_lines(data: SweepData) -> list[str]:
    lines = []
    s = data.summary
    if s is not None:
        counts = s["status"].value_counts().sort_index()
        lines.append(f"runs: {len(s)} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if data.steps is not None:
        lines.append(f"optimiser steps recorded: {len(data.steps)}")
    if data.iterations is not None:
        lines.append(f"iterations recorded: {len(data.iterations)}")
    runs = data.runs
    if runs is not None:
        axes = data.axes
        parts = []
        for a in axes:
            vals = sorted({_value(v) for v in runs[a]}, key=_sort_key)
            parts.append(f"{_short(a)} in {{{', '.join(vals)}}}")
        lines.append(
            "conditions: "
            + ("; ".join(parts) if parts else "one (only the seed varies)")
            + f"; {_seeds_note(data)} per condition"
        )
    return lines + data.notes


def _sort_key(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def build_section(out: str | Path, verdict: dict[str, Any], *, figures: bool = True) -> Section:
    """Load the verdict's sweep under ``out`` and draw its figures (none if not ``figures``)."""
    data = load_sweep(Path(out) / verdict["sweep"])
    if not figures:
        return Section(verdict["sweep"], _data_lines(data), [], ["all: figures=False"])
    plots, skipped = build_figures(data, verdict.get("protocol", ""))
    return Section(verdict["sweep"], _data_lines(data), plots, skipped)


# ----------------------------------------------------------------------------- Markdown


def _md_cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4g}"
    if v is None or v is pd.NA:
        return ""
    return str(v).replace("|", "\\|")


def _md_table(df: pd.DataFrame) -> list[str]:
    """A DataFrame as a Markdown table (the index too, when it is named)."""
    t = df.reset_index() if df.index.name or df.columns.name else df
    if df.columns.name:
        t.columns = [
            f"{df.index.name} \\ {df.columns.name}" if c == df.index.name else _md_cell(c)
            for c in t.columns
        ]
    cols = [_md_cell(c) for c in t.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in t.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return lines


def render_markdown(
    verdicts: list[dict[str, Any]], sections: dict[str, Section] | None = None
) -> str:
    """The report as Markdown: the verdict table, then per protocol its evidence and, where
    ``sections`` has its sweep, the data, figures (links to ``figure_paths``) and notes."""
    lines = [
        "# grpo_lab report",
        "",
        "| protocol | sweep | verdict | claim (from the seed) | evidence |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        claim = v["claim"].replace("|", "\\|")
        summary = v["summary"].replace("|", "\\|")
        lines.append(
            f"| {v['protocol']} | {v['sweep']} | **{v['status']}** | {claim} | {summary} |"
        )
    for v in verdicts:
        lines += [
            "",
            f"## {v['protocol']} ({v['sweep']}): {v['status']}",
            "",
            f"> {v['claim']}",
            "",
            f"**Answer:** {v['summary']}",
            "",
        ]
        lines += [f"**{label}:** {text}\n" for label, text in _verdict_context(v)]
        lines += ["**Evidence:**", ""]
        lines += [f"- {k}: {_fmt(x)}" for k, x in v["evidence"].items()]
        sec = (sections or {}).get(v["sweep"])
        if sec is None:
            continue
        lines += ["", "### Data", ""] + [f"- {x}" for x in sec.data_lines]
        for p in sec.plots:
            lines += ["", f"### {p.title}", ""]
            if p.name in sec.figure_paths:
                lines += [f"![{p.title}]({sec.figure_paths[p.name]})", ""]
            lines.append(p.caption)
            for tname, t in _shown_tables(p).items():
                lines += ["", f"*{tname}*", ""] + _md_table(t)
        if sec.skipped:
            lines += ["", "### Figures not drawn", ""] + [f"- {x}" for x in sec.skipped]
    return "\n".join(lines) + "\n"


TABLE_TITLES = {
    "ratio": "per condition: optimiser steps outside the clip range, extreme exact ratios",
    "final_gap": "final gap J* - J, mean over seeds (rows eps_low, columns lr)",
    "violation_frac": "fraction of steps outside the clip range (rows eps_low, columns lr)",
    "below_diagonal": "optimiser steps where the true gain fell below the predicted gain",
    "aggregate": "final score per condition: IQM and mean with 95% bootstrap CI",
    "cost": "microseconds of wall time per env step: IQM over batches (95% CI if several)",
}


def _shown_tables(p: Plot) -> dict[str, pd.DataFrame]:
    """The tables worth printing beside a figure, by title (curves are too long to read)."""
    shown = {}
    for key, t in p.tables.items():
        base = next((k for k in TABLE_TITLES if key == k or key.startswith(k + "_")), None)
        if base is not None and len(t):
            suffix = key[len(base) + 1 :]
            shown[f"Table: {TABLE_TITLES[base]}{' (' + suffix + ')' if suffix else ''}"] = t
    return shown


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.holds { color: #17672e; font-weight: bold; }
.violated { color: #a4161a; font-weight: bold; }
.inconclusive { color: #7a5d00; font-weight: bold; }
blockquote { border-left: 4px solid #ccc; margin: 0.5em 0; padding: 0.2em 1em; color: #444; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.note { color: #666; font-size: 0.9em; }
"""


def _h(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(df: pd.DataFrame) -> str:
    t = df.reset_index() if df.index.name or df.columns.name else df
    if df.columns.name:
        t.columns = [
            f"{df.index.name} \\ {df.columns.name}" if c == df.index.name else _md_cell(c)
            for c in t.columns
        ]
    head = "".join(f"<th>{_h(_md_cell(c))}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_h(_md_cell(v))}</td>" for v in row) + "</tr>"
        for row in t.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _anchor(sweep: str) -> str:
    return "sweep-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in sweep)


def render_html(verdicts: list[dict[str, Any]], sections: dict[str, Section] | None = None) -> str:
    """The report as one self-contained HTML page: the verdict table first, then per protocol
    its evidence, data, figures (embedded base64 PNG) with captions, tables and notes."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>grpo_lab report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>grpo_lab report</h1>",
        "<table><thead><tr><th>protocol</th><th>sweep</th><th>verdict</th>"
        "<th>claim (from the seed)</th><th>evidence</th></tr></thead><tbody>",
    ]
    for v in verdicts:
        st = _h(v["status"])
        out.append(
            f'<tr><td><a href="#{_anchor(v["sweep"])}">{_h(v["protocol"])}</a></td>'
            f'<td>{_h(v["sweep"])}</td><td class="{st}">{st}</td>'
            f"<td>{_h(v['claim'])}</td><td>{_h(v['summary'])}</td></tr>"
        )
    out.append("</tbody></table>")
    for v in verdicts:
        st = _h(v["status"])
        out += [
            f'<section id="{_anchor(v["sweep"])}">',
            f'<h2>{_h(v["protocol"])} ({_h(v["sweep"])}): <span class="{st}">{st}</span></h2>',
            f"<blockquote>{_h(v['claim'])}</blockquote>",
            f"<p><b>Answer:</b> {_h(v['summary'])}</p>",
            *(f"<p><b>{_h(lab)}:</b> {_h(t)}</p>" for lab, t in _verdict_context(v)),
            "<h3>Evidence</h3>",
            "<table><tbody>"
            + "".join(
                f"<tr><th>{_h(k)}</th><td>{_h(_fmt(x))}</td></tr>" for k, x in v["evidence"].items()
            )
            + "</tbody></table>",
        ]
        sec = (sections or {}).get(v["sweep"])
        if sec is not None:
            out.append(
                "<h3>Data</h3><ul>" + "".join(f"<li>{_h(x)}</li>" for x in sec.data_lines) + "</ul>"
            )
            for p in sec.plots:
                b64 = base64.b64encode(p.png).decode("ascii")
                out += [
                    f"<h3>{_h(p.title)}</h3>",
                    f'<figure><img src="data:image/png;base64,{b64}" alt="{_h(p.title)}">',
                    f"<figcaption>{_h(p.caption)}</figcaption></figure>",
                ]
                for tname, t in _shown_tables(p).items():
                    out.append(f'<p class="note">{_h(tname)}</p>' + _html_table(t))
            if sec.skipped:
                out.append(
                    '<h3>Figures not drawn</h3><ul class="note">'
                    + "".join(f"<li>{_h(x)}</li>" for x in sec.skipped)
                    + "</ul>"
                )
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- writing


def write_report(out: str | Path, *, figures: bool = True) -> Path:
    """Write ``<out>/report.md``, ``<out>/report.html`` and ``<out>/figures/<sweep>/*.png`` from
    the results under ``out``; returns the path of report.md. Raises ValueError naming ``out``
    when it does not exist or holds no verdict; missing or partial data only skip figures.

    ``figures=False`` writes both reports without drawing (a figure costs about a second of
    matplotlib; the figures directory is left as it is)."""
    root = Path(out)
    verdicts = read_verdicts(root)
    sections = {}
    for v in verdicts:
        sec = build_section(root, v, figures=figures)
        sections[v["sweep"]] = sec
        if not figures:
            continue
        fig_dir = root / "figures" / v["sweep"]
        for p in sec.plots:
            atomic_write_bytes(fig_dir / f"{p.name}.png", p.png)
            sec.figure_paths[p.name] = f"figures/{v['sweep']}/{p.name}.png"
        drawn = {p.name for p in sec.plots}
        for name in FIGURE_ORDER:  # a figure of an earlier report that no longer applies
            stale = fig_dir / f"{name}.png"
            if name not in drawn and stale.is_file():
                stale.unlink()
    atomic_write_bytes(root / "report.html", render_html(verdicts, sections).encode())
    path = root / "report.md"
    atomic_write_bytes(path, render_markdown(verdicts, sections).encode())
    return path
