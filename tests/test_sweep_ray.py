"""Tests of the "ray" backend of grpo_lab/sweep.py: the same numbers as "local", resume across
backends, failure isolation inside Ray workers, and the CLI options around it.

One local Ray instance of 2 CPUs serves the whole module (the ``ray_instance`` fixture, started
through ``sweep.ray_session`` as ``run_protocol`` would start it); ``run_protocol`` finds Ray
initialised and reuses it, so Ray starts once (most of this file's time) and each sweep takes
well under a second once the two workers have imported torch.
"""

import sys

import pandas as pd
import pytest
from conftest import TINY  # 2 lr x 3 seeds of GRPO on a 3-armed bandit
from typer.testing import CliRunner

from grpo_lab import store
from grpo_lab.cli import app
from grpo_lab.protocols import load_protocol
from grpo_lab.sweep import ray_session, run_protocol

# A seed that passes config validation (``seed: int``, unbounded) but makes training raise in the
# Ray worker: the tabular policy seeds its initial logits with torch.Generator().manual_seed(seed),
# which raises "ValueError: Overflow when unpacking long long" beyond 64 bits. Monkeypatching
# ALGORITHMS does not reach Ray's worker processes, and registering a failing algorithm there would
# need a module on the workers' path plus a worker set-up hook; a config value travels with the run.
# TOML integers stop at 2**63 - 1, so the grid is set on the loaded protocol.
RAISING_SEED = 2**64

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_instance():
    import ray  # a test dependency: a missing Ray fails here rather than skipping in CI

    def warm_up():  # a local function: cloudpickle ships it by value, not as this test module
        import torch._dynamo  # noqa: F401  (torch.optim imports it on the first optimiser)

        import grpo_lab.sweep  # noqa: F401

    with ray_session(workers=2):  # the local instance run_protocol starts without an address
        # each worker's imports (torch, grpo_lab, torch._dynamo: several seconds) overlap the
        # driver's local reference sweep instead of delaying the first Ray sweep
        warm = [ray.remote(num_cpus=1)(warm_up).remote() for _ in range(2)]
        yield ray
        ray.get(warm)
    assert not ray.is_initialized(), "ray_session shuts down the local instance it started"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("protocol") / "tiny.toml"
    path.write_text(TINY)
    return load_protocol(path)


@pytest.fixture(scope="module")
def local_sweep(tiny, tmp_path_factory):
    """The reference: TINY run in-process by the local backend."""
    r = run_protocol(tiny, tmp_path_factory.mktemp("local"), batch_size=2, progress=False)
    assert (r.ran, r.skipped) == (6, 0)
    return r


def _table(sweep_path, kind="steps"):
    df = store.load_results(sweep_path, kind)
    index = "step" if kind == "steps" else "iteration"
    metrics = [c for c in df.columns if c not in ("sweep", "status") and not c.startswith("cfg.")]
    assert len(metrics) > 5  # run_id, the index and the metrics themselves
    return df[metrics].sort_values(["run_id", index]).reset_index(drop=True)


@pytest.mark.slow
def test_ray_stores_the_same_numbers_as_local(ray_instance, tiny, local_sweep, tmp_path):
    r = run_protocol(tiny, tmp_path, backend="ray", workers=2, batch_size=2, progress=False)
    assert (r.ran, r.skipped) == (6, 0)
    assert set(store.load_results(r.sweep_path, "summary")["status"]) == {"ok"}
    for kind in ("steps", "iterations"):
        pd.testing.assert_frame_equal(
            _table(r.sweep_path, kind), _table(local_sweep.sweep_path, kind)
        )
    assert (r.verdict.status, r.verdict.summary) == (
        local_sweep.verdict.status,
        local_sweep.verdict.summary,
    )
    assert ray_instance.is_initialized(), "a Ray the caller initialised is left running"


@pytest.mark.slow
def test_ray_resumes_a_partial_local_sweep(ray_instance, tiny, local_sweep, tmp_path):
    part = run_protocol(tiny, tmp_path, overrides={"seed": 0}, progress=False)  # 2 of the 6 runs
    assert (part.ran, part.skipped) == (2, 0)
    before = store.completed_runs(tmp_path, "tiny-quick")
    stamps = {rid: store.read_summary(tmp_path, "tiny-quick", rid)["written_at"] for rid in before}
    r = run_protocol(tiny, tmp_path, backend="ray", workers=2, batch_size=2, progress=False)
    assert (r.ran, r.skipped) == (4, 2)
    for rid, stamp in stamps.items():  # the local runs were not run again
        assert store.read_summary(tmp_path, "tiny-quick", rid)["written_at"] == stamp
    pd.testing.assert_frame_equal(_table(r.sweep_path), _table(local_sweep.sweep_path))
    again = run_protocol(tiny, tmp_path, backend="ray", workers=2, progress=False)
    assert (again.ran, again.skipped) == (0, 6)


@pytest.mark.slow
def test_a_raising_run_under_ray_is_recorded_as_under_local(ray_instance, tiny, tmp_path):
    p = tiny.model_copy(update={"grid": {"lr": [0.1, 0.5], "seed": [0, RAISING_SEED, 2]}})
    # batches of 2 put the raising seed beside a good one: such a batch is retried run by run
    results = {
        backend: run_protocol(
            p, tmp_path / backend, backend=backend, workers=workers, batch_size=2, progress=False
        )
        for backend, workers in (("local", 1), ("ray", 2))
    }
    outcome = {}
    for backend, r in results.items():
        assert (r.ran, r.skipped) == (6, 0)
        summary = store.load_results(r.sweep_path, "summary")
        assert summary.groupby("cfg.seed")["status"].agg(set).to_dict() == {
            0: {"ok"},
            2: {"ok"},
            RAISING_SEED: {"error"},
        }
        errors = summary.loc[summary["status"] == "error", "error"]
        assert errors.str.startswith("ValueError: Overflow").all(), errors.iloc[0]
        assert r.verdict.evidence["runs"] == 4  # judged on the runs that exist
        outcome[backend] = (r.verdict.status, r.verdict.summary, set(summary["run_id"]))
    assert outcome["ray"] == outcome["local"]
    pd.testing.assert_frame_equal(
        _table(results["ray"].sweep_path), _table(results["local"].sweep_path)
    )


@pytest.mark.slow
def test_cli_runs_on_ray(ray_instance, tmp_path):
    protocol = tmp_path / "tiny.toml"
    protocol.write_text(TINY)
    out = tmp_path / "out"
    args = [
        "run",
        str(protocol),
        "--quick",
        "--out",
        str(out),
        "--backend",
        "ray",
        "--workers",
        "2",
        "--no-figures",
    ]
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "tiny: " in r.output and "(6 runs now, 0 resumed)" in r.output
    assert len(store.completed_runs(out, "tiny-quick")) == 6


# ----------------------------------------------------------------------------- without Ray


def test_ray_backend_without_ray_says_how_to_install_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'grpo_lab\[ray\]'"):
        run_protocol(tiny, tmp_path / "out", backend="ray", progress=False)
    assert not (tmp_path / "out").exists()  # raised before anything was written
    protocol = tmp_path / "tiny.toml"
    protocol.write_text(TINY)
    r = runner.invoke(app, ["run", str(protocol), "--quick", "--backend", "ray"])
    assert r.exit_code == 2 and "grpo_lab[ray]" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--backend", "dask"], "unknown backend 'dask'; choose one of ['local', 'ray']"),
        (["--address", "auto"], "an address is only for the 'ray' backend"),
        (["--workers", "0"], "workers must be >= 1"),
    ],
)
def test_cli_backend_errors_exit_2(tmp_path, extra, match):
    protocol = tmp_path / "tiny.toml"
    protocol.write_text(TINY)
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["run", str(protocol), "--quick", "--out", str(out), *extra], env={"COLUMNS": "300"}
    )
    assert r.exit_code == 2, r.output
    assert match in r.output and "Traceback" not in r.output
    assert not out.exists()  # nothing ran
