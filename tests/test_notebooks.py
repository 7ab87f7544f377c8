"""Tests of notebooks/*.ipynb: each notebook runs top to bottom in the venv's Python kernel on a
quick sweep of three shipped protocols, on a single sweep directory and on an empty directory, and
the numbers it prints are the numbers recomputed here from ``grpo_lab.store.load_results`` (the
independent truth: the stored runs, read without the notebook's code).

All runs share one kernel (the slow imports are paid once); each run starts by resetting the
namespace (``%reset -f``) and setting GRPO_LAB_RESULTS in the kernel's environment.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from scipy import stats as sps

from grpo_lab import store
from grpo_lab.protocols import PROTOCOL_DIR, load_protocol
from grpo_lab.sweep import run_protocol

pytestmark = pytest.mark.slow

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PROTOCOLS = ("ratio-bound", "trpo-bound", "surrogate-bound")
SINGLE = "trpo-bound-quick"  # the sweep also used alone, as GRPO_LAB_RESULTS=<sweep dir>


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """{"all": root with the three quick sweeps, "single": one sweep's directory, "empty": an
    empty directory, "kernels": a kernelspec directory whose python3 is this interpreter}."""
    base = tmp_path_factory.mktemp("notebooks")
    root = base / "results"
    for name in PROTOCOLS:
        protocol = load_protocol(PROTOCOL_DIR / f"{name}.toml")
        run_protocol(protocol, root, budget="quick", progress=False)
    (base / "empty").mkdir()
    spec = base / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "grpo_lab venv", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return {"all": root, "single": root / SINGLE, "empty": base / "empty", "kernels": spec.parent}


@pytest.fixture(scope="module")
def kernel(dirs):
    """One kernel (this interpreter: the venv's Python) for every notebook run of this module, so
    the slow imports (torch, seaborn, scipy) are paid once; started in notebooks/, as Jupyter
    would, with GRPO_LAB_RESULTS in its environment."""
    specs = KernelSpecManager(kernel_dirs=[str(dirs["kernels"])])
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)
    env = {**os.environ, "GRPO_LAB_RESULTS": str(dirs["all"])}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend makes the figures cell outputs
    run_sync(km.start_kernel)(env=env, cwd=str(NOTEBOOK_DIR))
    yield km
    run_sync(km.shutdown_kernel)(now=True)


def execute(name, dirs, km, runs=("all", "single", "empty")):
    """Execute notebooks/<name> once per results directory ``dirs[run]`` in the shared kernel;
    returns {run: executed notebook}. Before each run an added first cell clears the namespace
    (``%reset -f``: a name the notebook does not define itself raises, as in a fresh kernel) and
    sets GRPO_LAB_RESULTS in the kernel's ``os.environ``. A cell that raises fails the test."""
    done = {}
    for run in runs:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        reset = f"%reset -f\nimport os\nos.environ['GRPO_LAB_RESULTS'] = {str(dirs[run])!r}"
        nb.cells.insert(0, nbformat.v4.new_code_cell(reset))
        client = NotebookClient(nb, km=km, timeout=300)
        try:
            client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
        for c in nb.cells:
            errors = [o for o in c.get("outputs", []) if o.output_type == "error"]
            assert not errors, f"{name} ({run}): {errors}"
        done[run] = nb
    return done


def cell(nb, tag):
    found = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected one cell tagged {tag!r}, found {len(found)}"
    return found[0]


def text(nb, tag):
    return "".join(o.text for o in cell(nb, tag).outputs if o.output_type == "stream")


def rich(nb, tag, mime):
    outs = [o for o in cell(nb, tag).outputs if o.output_type in ("display_data", "execute_result")]
    return [o.data[mime] for o in outs if mime in o.data]


def report(nb):
    return json.loads(text(nb, "summary"))


def all_text(nb):
    return "".join(
        o.text for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"
    )


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.outputs == [] and c.execution_count is None, f"{path.name} has outputs"


def test_explore_sweep(dirs, kernel):
    runs = execute("explore_sweep.ipynb", dirs, kernel)
    # truth: the sweep with the most runs, its most frequent label, the middle clip eps
    summary = store.load_results(dirs["all"], "summary")
    sweep = summary.groupby("sweep").size().idxmax()
    in_sweep = summary[summary["sweep"] == sweep]
    label = in_sweep.groupby("cfg.label").size().idxmax()
    by_algo = in_sweep[in_sweep["cfg.label"] == label]
    eps_values = sorted(by_algo["cfg.loss.eps_low"].dropna().unique())
    eps = float(eps_values[len(eps_values) // 2])
    chosen = by_algo[by_algo["cfg.loss.eps_low"] == eps]
    nb = runs["all"]
    got = report(nb)
    assert (got["sweep"], got["algorithm"], got["eps_low"]) == (sweep, label, eps)
    assert got["runs"] == len(chosen)
    varying = [c for c in chosen if c.startswith("cfg.") and chosen[c].nunique(dropna=False) > 1]
    assert got["axes"] == [c for c in varying if c != "cfg.seed"]
    norm = chosen["j_final"] / chosen["j_star"]
    assert got["final_J_over_Jstar_mean"] == pytest.approx(norm.mean(), rel=1e-12)
    assert got["final_gap_mean"] == pytest.approx(chosen["gap"].mean(), rel=1e-12)
    assert got["settings"] == chosen.groupby(got["axes"]).ngroups
    assert len(rich(nb, "learning-curves", "image/png")) == 1
    assert len(rich(nb, "all-sweeps", "image/png")) == 1
    assert rich(nb, "final-gaps", "text/html"), "the final-gap table is missing"
    # a single sweep directory: the same notebook picks its only sweep
    single = report(runs["single"])
    assert single["sweep"] == SINGLE and single["runs"] > 0
    # nothing to load: every section skipped with a note
    assert report(runs["empty"]) == {"runs": 0}
    assert "note:" in all_text(runs["empty"])


def ratio_truth(sweep_path):
    """The ratio audit of a sweep recomputed from its stored steps (every clipped run)."""
    steps = store.load_results(sweep_path, "steps")
    steps = steps[steps["cfg.loss.eps_low"].notna() & steps["exact_ratio_max"].notna()]
    over = steps["exact_ratio_max"] - (1 + steps["cfg.loss.eps_high"])
    under = (1 - steps["cfg.loss.eps_low"]) - steps["exact_ratio_min"]
    outside = (over > 1e-9) | (under > 1e-9)
    return {
        "runs": steps["run_id"].nunique(),
        "steps": len(steps),
        "violating_steps": int(outside.sum()),
        "max_exact_ratio": float(steps["exact_ratio_max"].max()),
        "min_exact_ratio": float(steps["exact_ratio_min"].min()),
        "mean_frac_outside": float(steps["exact_frac_outside"].mean()),
    }


def test_ratio_bound(dirs, kernel):
    runs = execute("ratio_bound.ipynb", dirs, kernel)
    nb = runs["all"]
    got = report(nb)
    sweep_path = dirs["all"] / "ratio-bound-quick"
    assert got["sweep"] == "ratio-bound-quick"  # the ratio-bound protocol's sweep is preferred
    truth = ratio_truth(sweep_path)
    for key, value in truth.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    # the printed headline and the data-filled paragraph carry the same numbers
    printed = re.search(r"max exact ratio: ([0-9.]+)", text(nb, "headline"))
    assert printed and float(printed.group(1)) == pytest.approx(truth["max_exact_ratio"], abs=1e-6)
    (paragraph,) = rich(nb, "explanation", "text/markdown")
    assert f"**{truth['max_exact_ratio']:.4f}**" in paragraph
    assert f"{truth['violating_steps']} of {truth['steps']}" in " ".join(paragraph.split())
    assert "2005.12729" in paragraph
    # the stored verdict is printed and agrees with the recomputation
    verdict = json.loads((sweep_path / "verdict.json").read_text())
    assert got["verdict_status"] == verdict["status"] == got["recomputed_status"]
    assert verdict["summary"] in text(nb, "verdict")
    assert verdict["evidence"]["violating_steps"] == truth["violating_steps"]
    assert verdict["evidence"]["max_exact_ratio"] == pytest.approx(truth["max_exact_ratio"])
    assert len(rich(nb, "ratio-plot", "image/png")) == 1
    assert len(rich(nb, "mass-outside", "image/png")) == 1
    # a sweep of another protocol: its clipped (GRPO) runs are audited the same way
    single = report(runs["single"])
    assert single["sweep"] == SINGLE
    assert single["verdict_status"] is None  # that sweep's verdict judges the TRPO bound
    assert single["max_exact_ratio"] == pytest.approx(
        ratio_truth(dirs["single"])["max_exact_ratio"], rel=1e-12
    )
    assert report(runs["empty"]) == {"steps": 0}
    assert "note:" in all_text(runs["empty"])


def test_compare_algorithms(dirs, kernel):
    runs = execute("compare_algorithms.ipynb", dirs, kernel)
    nb = runs["all"]
    got = report(nb)
    summary = store.load_results(dirs["all"], "summary")
    ok = summary[summary["status"] == "ok"]
    expected_iqm = {}
    for (sweep, label), g in ok.groupby(["sweep", "cfg.label"]):
        x = (g["j_final"] / g["j_star"]).to_numpy()
        expected_iqm.setdefault(sweep, {})[label] = (float(sps.trim_mean(x, 0.25)), len(x))
    assert set(got["iqm"]) == set(expected_iqm)
    for sweep, algos in expected_iqm.items():
        assert set(got["iqm"][sweep]) == set(algos)
        for label, (iqm, n) in algos.items():
            point, low, high, runs_n = got["iqm"][sweep][label]
            assert point == pytest.approx(iqm, rel=1e-12)
            assert low <= point <= high and runs_n == n
    labels = ok.groupby("sweep")["cfg.label"].agg(set)
    assert set().union(*labels) == {"grpo", "ppo", "trpo"}  # the shipped protocols run all three
    steps = store.load_results(dirs["all"], "steps")
    steps = steps[steps["bound_slack"].notna()]
    by = steps.groupby(["sweep", "cfg.label"])["bound_slack"]
    for (sweep, label), value in by.min().items():
        assert got["min_slack"][sweep][label] == pytest.approx(value, rel=1e-12)
    for (sweep, label), value in by.apply(lambda s: int((s < 0).sum())).items():
        assert got["violations"][sweep][label] == value
    assert len(rich(nb, "iqm-plot", "image/png")) == 1
    assert len(rich(nb, "trpo-slack", "image/png")) == 1
    pairs = "".join(rich(nb, "improvement", "text/plain"))
    assert ("P(X > Y)" in pairs) == any(len(s) >= 2 for s in labels)
    # pooled only over >= 2 sweeps that every algorithm ran; else a note
    shared = sum(s == set().union(*labels) for s in labels)
    assert ("note:" in text(nb, "pooled")) == (shared < 2)
    verdict = json.loads((dirs["all"] / SINGLE / "verdict.json").read_text())
    assert verdict["summary"] in text(nb, "trpo-slack")
    single = report(runs["single"])
    assert set(single["iqm"]) == {SINGLE} and set(single["iqm"][SINGLE]) == {"grpo", "trpo"}
    assert report(runs["empty"]) == {"iqm": {}, "min_slack": {}, "violations": {}}
    assert "note:" in all_text(runs["empty"])
