"""Tests of grpo_lab/report.py on real results of two tiny sweeps (bandit, 3 iterations).

Truths relied on: the numbers a figure is drawn from are recomputed here independently from
``store.load_results`` with plain pandas groupbys (heatmap cells, learning-curve points, IQMs);
the violation counts must add up to the ratio-bound verdict's own count; a PNG file starts with
the 8-byte PNG signature; the HTML is self-contained when every <img> is a data URI.
"""

import base64
import gc
import json
import re
import shutil
import sys

import numpy as np
import pytest
from conftest import GRPO_DAPO, protocol_text

from grpo_lab import analysis, report, stats, store
from grpo_lab.protocols import load_protocol
from grpo_lab.sweep import run_protocol

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EPS_LR = protocol_text(
    name="tiny-eps",
    claim="a claim about eps",
    grid='"loss.eps_low" = [0.1, 0.3]\nlr = [0.1, 0.5]\nseed = [0, 1]',
)
SEEDS = protocol_text(
    name="tiny-seeds",
    claim="a claim about algorithms",
    grid="seed = [0, 1]",
    algorithms=GRPO_DAPO
    + '[[algorithms]]\nname = "trpo"\nlabel = "trpo-small"\nconfig = { delta = 0.01 }\n',
    rule="trpo-bound",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both sweeps under one results root, and the report written once."""
    base = tmp_path_factory.mktemp("report")
    out = base / "out"
    for name, text in (("eps", EPS_LR), ("seeds", SEEDS)):
        path = base / f"{name}.toml"
        path.write_text(text)
        run_protocol(load_protocol(path), out, progress=False)
    report.write_report(out)
    return out


def _imgs(page):
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_report_files_exist_and_the_html_is_self_contained(results):
    md = (results / "report.md").read_text()
    page = (results / "report.html").read_text()
    assert md.startswith("# grpo_lab report") and "| tiny-eps |" in md
    # the verdict table comes before the first figure
    table_end = page.index("</table>")
    assert "tiny-eps" in page[:table_end] and "tiny-seeds" in page[:table_end]
    assert table_end < page.index("<img")
    srcs = _imgs(page)
    pngs = sorted((results / "figures").rglob("*.png"))
    assert len(srcs) == len(pngs) >= 8
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    for png in pngs:
        assert png.read_bytes().startswith(PNG_SIGNATURE)
    # no other external reference: no <link>, <script src>, or url(...)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    # the Markdown links every figure by a path that exists
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(results / link for link in links) == pngs
    assert "failed with" not in md  # no figure raised on good data


def test_each_sweep_gets_the_figures_its_data_support(results):
    eps = {p.stem for p in (results / "figures" / "tiny-eps-quick").glob("*.png")}
    seeds = {p.stem for p in (results / "figures" / "tiny-seeds-quick").glob("*.png")}
    common = {"learning-curves", "exact-ratio", "kl-per-update", "gain-vs-bounds"}
    assert common <= eps and common <= seeds
    assert "eps-lr-heatmaps" in eps and "eps-lr-heatmaps" not in seeds  # eps and lr vary
    assert "algorithm-comparison" in seeds and "algorithm-comparison" not in eps  # 2 labels
    md = (results / "report.md").read_text()
    assert "eps-lr-heatmaps: the sweep does not vary both" in md
    assert "algorithm-comparison: fewer than two algorithm labels" in md
    assert "Dotted: TRPO's delta" in md  # the trpo runs get their delta line


def test_condition_axes_read_the_grid_off_the_data(results):
    eps = store.load_results(results / "tiny-eps-quick", "summary")
    seeds = store.load_results(results / "tiny-seeds-quick", "summary")
    # eps_high stays 0.28 (dapo) so it is no axis; the seed is replication, never an axis
    assert analysis.condition_axes(eps) == ["cfg.loss.eps_low", "cfg.lr"]
    # grpo and trpo differ in many config fields; only the label tells conditions apart
    assert analysis.condition_axes(seeds) == ["cfg.label"]


def test_heatmap_tables_equal_an_independent_groupby(results):
    sweep = results / "tiny-eps-quick"
    summary = store.load_results(sweep, "summary")
    steps = store.load_results(sweep, "steps")
    keys = ["cfg.loss.eps_low", "cfg.lr"]
    want_gap = (summary["j_star"] - summary["j_final"]).groupby([summary[k] for k in keys]).mean()
    out = (steps["exact_ratio_max"] > 1 + steps["cfg.loss.eps_high"] + 1e-9) | (
        steps["exact_ratio_min"] < 1 - steps["cfg.loss.eps_low"] - 1e-9
    )
    want_frac = out.astype(float).groupby([steps[k] for k in keys]).mean()

    tables = report.eps_lr_tables(summary, steps)
    plot = report.FIGURES.get("eps-lr-heatmaps")(report.load_sweep(sweep))
    for got in (tables, plot.tables):  # the function, and the numbers the figure was drawn from
        assert got["final_gap"].shape == (2, 2)
        np.testing.assert_allclose(got["final_gap"].stack().sort_index(), want_gap.sort_index())
        np.testing.assert_allclose(
            got["violation_frac"].stack().sort_index(), want_frac.sort_index()
        )
    # the cells add up to the verdict's own count of violating steps
    per_cell = steps.groupby(keys).size()
    violating = (tables["violation_frac"].stack() * per_cell).sum()
    verdict = json.loads((sweep / "verdict.json").read_text())
    assert round(violating) == verdict["evidence"]["violating_steps"]
    # same data, same picture: the PNG drawn again equals the file write_report wrote
    assert plot.png == (results / "figures" / "tiny-eps-quick" / "eps-lr-heatmaps.png").read_bytes()
    # figures are pyplot-free and cleared once saved: none outlives its builder
    from matplotlib.figure import Figure

    del plot
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is Figure]
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


def test_learning_curve_points_are_seed_means_of_exact_j_over_j_star(results):
    sweep = results / "tiny-eps-quick"
    it = store.load_results(sweep, "iterations")
    summary = store.load_results(sweep, "summary")
    curve = report.learning_curve_table(report.load_sweep(sweep))  # what the figure plots
    # one panel per eps_low, one line per lr, points 0..3 (3 iterations + the final policy)
    assert set(curve["panel"]) == {"eps_low=0.1", "eps_low=0.3"}
    assert set(curve["condition"]) == {"lr=0.1", "lr=0.5"}
    assert sorted(curve["iteration"].unique()) == [0, 1, 2, 3]
    row = curve[(curve["panel"] == "eps_low=0.3") & (curve["condition"] == "lr=0.5")]
    cell = (it["cfg.loss.eps_low"] == 0.3) & (it["cfg.lr"] == 0.5) & (it["iteration"] == 1)
    want = (it.loc[cell, "J"] / (it.loc[cell, "J"] + it.loc[cell, "gap"])).mean()
    assert row.loc[row["iteration"] == 1, "mean"].item() == pytest.approx(want, rel=1e-12)
    last = summary[(summary["cfg.loss.eps_low"] == 0.3) & (summary["cfg.lr"] == 0.5)]
    want_last = (last["j_final"] / last["j_star"]).mean()
    assert row.loc[row["iteration"] == 3, "mean"].item() == pytest.approx(want_last, rel=1e-12)
    # a percentile band of the mean of 2 seeds lies between the two seeds' values
    assert (curve["low"] <= curve["mean"] + 1e-12).all()
    assert (curve["mean"] <= curve["high"] + 1e-12).all()
    assert (curve["runs"] == 2).all()


def test_algorithm_comparison_is_the_iqm_of_final_normalised_return(results):
    sweep = results / "tiny-seeds-quick"
    summary = store.load_results(sweep, "summary")
    agg = report.comparison_table(report.load_sweep(sweep))  # what the figure plots
    assert set(agg["condition"]) == {"grpo", "trpo-small"}
    for label, g in summary.groupby("cfg.label"):
        scores = (g["j_final"] / g["j_star"]).to_numpy()
        got = agg[(agg["condition"] == label) & (agg["statistic"] == "iqm")]
        assert got["point"].item() == pytest.approx(stats.iqm(scores))
        assert got["low"].item() <= got["point"].item() <= got["high"].item()


def test_partial_data_skip_figures_with_a_note(results, tmp_path):
    out = tmp_path / "partial"
    shutil.copytree(results / "tiny-eps-quick", out / "tiny-eps-quick")
    for f in (out / "tiny-eps-quick" / "runs").glob("*/metrics.parquet"):
        f.unlink()  # every run lost its step table: only the iteration-based figure remains
    empty = out / "empty-quick"
    empty.mkdir()  # a verdict without any run
    (empty / "verdict.json").write_text(
        json.dumps(
            {
                "protocol": "empty",
                "claim": "c",
                "status": "inconclusive",
                "summary": "s",
                "evidence": {},
            }
        )  # fmt: skip
    )
    report.write_report(out)
    md = (out / "report.md").read_text()
    assert "steps not loaded" in md and "exact-ratio: no exact_ratio_max" in md
    assert {p.stem for p in (out / "figures").rglob("*.png")} == {"learning-curves"}
    assert "holds no complete run" in md  # the empty sweep, noted rather than fatal
    assert len(_imgs((out / "report.html").read_text())) == 1


def test_bad_input_raises_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        report.write_report(missing)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        report.write_report(tmp_path)  # a directory without any verdict.json


def test_render_markdown_without_sections_is_the_verdict_table():
    v = {"protocol": "p", "sweep": "p-quick", "claim": "a | b", "status": "holds",
         "summary": "ok", "evidence": {"x": 0.5}}  # fmt: skip
    md = report.render_markdown([v])
    assert "| p | p-quick | **holds** | a \\| b | ok |" in md and "- x: 0.5" in md
    assert "![" not in md


def test_mean_ci_is_deterministic_and_brackets_the_mean():
    m = np.array([[1.0, 2.0, 3.0], [2.0, 2.5, 5.0], [0.0, 3.0, 4.0]])
    a, b = report.mean_ci(m), report.mean_ci(m)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    mean, low, high = a
    np.testing.assert_allclose(mean, m.mean(axis=0))
    assert (low <= mean).all() and (mean <= high).all()
    assert (low >= m.min(axis=0)).all() and (high <= m.max(axis=0)).all()
    one = report.mean_ci(m[:1])  # one run: no band
    assert np.isnan(one[1]).all() and np.isnan(one[2]).all()


def test_figures_false_writes_both_reports_without_drawing(results, tmp_path):
    out = tmp_path / "nofig"
    shutil.copytree(results / "tiny-seeds-quick", out / "tiny-seeds-quick")
    report.write_report(out, figures=False)
    assert not (out / "figures").exists()
    assert "<img" not in (out / "report.html").read_text()
    assert "all: figures=False" in (out / "report.md").read_text()
    bad = out / "tiny-seeds-quick" / "verdict.json"
    bad.write_text("{not json")  # a corrupt verdict is an error naming its file
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        report.write_report(out, figures=False)


# ----------------------------------------------------------------------------- classic control

CLASSIC = """
name = "classic-compare"
claim = "a claim"
[env]
name = "CartPole-v1"
[[algorithms]]
name = "classic-grpo"
label = "grpo"
config = { num_groups = 2, group_size = 2, epochs = 1 }
[[algorithms]]
name = "classic-ppo"
label = "ppo"
config = { num_envs = 2, num_steps = 32, update_epochs = 2 }
[grid]
seed = [0, 1, 2, 3]
[budget.quick]
total_timesteps = 320
eval_episodes = 1
[verdict]
rule = "improvement"
params = { better = "grpo", worse = "ppo", score = "eval_return", reps = 200 }
"""


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A tiny stored classic-control sweep (GRPO and PPO on CartPole, 4 seeds, 320 env steps)
    named like the shipped protocol, so it gets that protocol's figure order."""
    base = tmp_path_factory.mktemp("classic")
    path = base / "classic.toml"
    path.write_text(CLASSIC)
    run_protocol(load_protocol(path), base / "out", progress=False)
    return base / "out" / "classic-compare-quick"


def test_curve_on_grid_hand_worked():
    # logged (100, 1), (200, 3), (300, NaN: no episode ended), (400, 7); read at
    # 50 (before the first point: NaN), 100 -> 1, 150 -> 2, 250 -> 3 + 50 * (7 - 3) / 200 = 4,
    # 400 -> 7, 450 (after the last point: NaN)
    got = report.curve_on_grid(
        [100.0, 200.0, 300.0, 400.0], [1.0, 3.0, np.nan, 7.0], [50, 100, 150, 250, 400, 450]
    )
    np.testing.assert_allclose(got, [np.nan, 1.0, 2.0, 4.0, 7.0, np.nan])
    assert np.isnan(report.curve_on_grid([1.0, 2.0], [np.nan, np.nan], [1.0, 1.5])).all()
    with pytest.raises(ValueError, match="x must be strictly increasing"):
        report.curve_on_grid([1.0, 1.0], [0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="x and y must be 1-D of one length"):
        report.curve_on_grid([1.0, 2.0], [0.0], [1.0])


def test_sample_efficiency_is_the_iqm_of_runs_read_on_a_common_env_step_grid(classic):
    """Truth: the curve recomputed here with numpy alone: each run's (env_steps,
    episode_return) points with a finite return, np.interp on the grid inside the run's own range,
    and the IQM of 4 runs = the mean of the middle two values."""
    data = report.load_sweep(classic)
    table = report.sample_efficiency_table(data)
    assert set(table["condition"]) == {"grpo", "ppo"} and (table["runs"] == 4).all()
    its = store.load_results(classic, "iterations")
    its = its[np.isfinite(its["episode_return"])]
    grid = np.linspace(its["env_steps"].min(), its["env_steps"].max(), report.GRID_POINTS)
    for label, t in table.groupby("condition"):
        curves = []
        for _, r in its[its["cfg.label"] == label].groupby("run_id"):
            x, y = r["env_steps"].to_numpy(), r["episode_return"].to_numpy()
            curves.append(np.where((grid >= x[0]) & (grid <= x[-1]), np.interp(grid, x, y), np.nan))
        curves = np.sort(np.array(curves), axis=0)  # (4, X), sorted per point
        common = np.isfinite(curves).all(axis=0)
        np.testing.assert_allclose(t["env_steps"], grid[common])
        np.testing.assert_allclose(t["iqm"], curves[1:3, common].mean(axis=0))
        assert (t["low"] <= t["iqm"] + 1e-9).all() and (t["iqm"] <= t["high"] + 1e-9).all()
    # GRPO's runs stop at different env steps: its curve spans what all four cover
    g = its[its["cfg.label"] == "grpo"].groupby("run_id")["env_steps"]
    grpo = table[table["condition"] == "grpo"]
    assert grpo["env_steps"].min() >= g.min().max() and grpo["env_steps"].max() <= g.max().min()


def test_classic_sweeps_get_sample_efficiency_first_and_compute_cost(classic):
    assert report.figure_order("classic-compare")[:3] == [
        "sample-efficiency",
        "algorithm-comparison",
        "compute-cost",
    ]
    assert report.figure_order("classic-lr-sweep")[0] == "sample-efficiency"
    plots, skipped = report.build_figures(report.load_sweep(classic), "classic-compare")
    assert [p.name for p in plots] == ["sample-efficiency", "algorithm-comparison", "compute-cost"]
    assert all(p.png.startswith(PNG_SIGNATURE) for p in plots)
    assert "learning-curves: no iteration rows with exact J and gap" in skipped
    # the comparison scores the final evaluation return; the costs are per algorithm and batch
    summary = store.load_results(classic, "summary")
    agg = plots[1].tables["aggregate"]
    for label, g in summary.groupby("cfg.label"):
        got = agg[(agg["condition"] == label) & (agg["statistic"] == "iqm")]["point"].item()
        assert got == pytest.approx(stats.iqm(g["eval_return"].to_numpy()))
    cost = plots[2].tables["cost"]
    assert set(cost["algorithm"]) == {"grpo", "ppo"}
    assert (cost["batches"] == 1).all() and (cost["runs"] == 4).all()
    assert cost["low"].isna().all()  # one timed batch per algorithm: no interval
    assert summary["batch"].nunique() == 2 and (summary["batch_size"] == 4).all()


def test_verdict_context_and_evidence_rounded_to_its_precision():
    """Issue 12, item 15: a verdict's section shows its answer, the hypothesis tested (not a
    finding), the scope and what it does not show; intervals keep the decimals that give their
    width two significant digits, single numbers three significant digits."""
    assert report._fmt((0.8123456, 0.7512, 0.8843)) == "[0.81, 0.75, 0.88]"  # width 0.13
    assert report._fmt([0.9990001, 0.9981, 0.99952]) == "[0.9990, 0.9981, 0.9995]"  # width 0.0014
    assert report._fmt(1234.5678) == "1230" and report._fmt(0.000123) == "0.000123"
    assert report._fmt({"a": 3, "b": None}) == "{a: 3, b: None}"
    v = {"protocol": "p", "sweep": "p-full", "status": "holds", "claim": "c", "summary": "s",
         "evidence": {"x": (0.5, 0.4, 0.6)}, "question": "q?", "hypothesis": "A beats B",
         "scope": "env garnet; 3 runs", "not_shown": "other MDPs"}  # fmt: skip
    md = report.render_markdown([v])
    for line in ("**Answer:** s", "**Hypothesis tested:** A beats B", "**Scope:** env garnet; 3 runs",
                 "**Does not show:** other MDPs", "- x: [0.50, 0.40, 0.60]"):  # fmt: skip
        assert line in md
    html = report.render_html([v])
    assert "<b>Hypothesis tested:</b> A beats B" in html and "<b>Scope:</b>" in html
