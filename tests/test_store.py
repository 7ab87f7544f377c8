"""Tests of grpo_lab/store.py: a real GRPO record round-trips exactly (float64 parquet, NaN kept),
run ids are a pinned hash of canonical JSON, a crash never leaves a run that looks complete, and
loading joins flattened config columns over one sweep or a root of several."""

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from grpo_lab import store
from grpo_lab.algorithms.common import RunRecord
from grpo_lab.algorithms.grpo import GRPOConfig, train_grpo
from grpo_lab.envs.tabular import make_env

ENV = {"env": "bandit", "env_kwargs": {"k": 3, "seed": 0}, "algorithm": "grpo"}


def _configs(cfgs):
    return [store.resolve_config(c, **ENV) for c in cfgs]


@pytest.fixture(scope="module")
def batch():
    """Two healthy GRPO configurations (different lr and eps) run as one batch."""
    mdp = make_env("bandit", k=3, seed=0)
    a = GRPOConfig(iterations=3, lr=0.1, seed=0, group_size=4, num_groups=2)
    loss = a.loss.model_copy(update={"eps_low": 0.1, "eps_high": 0.1})
    b = a.model_copy(update={"lr": 0.3, "seed": 1, "loss": loss})
    rec = train_grpo(mdp, [a, b])
    assert rec.status == ["ok", "ok"]
    return _configs([a, b]), rec


@pytest.fixture(scope="module")
def diverged_batch():
    """Adam moves each logit by about lr per step: lr = 1e308 overflows the second config's
    logits to inf within two steps (as in test_grpo), the first stays finite."""
    mdp = make_env("bandit", k=3, seed=0)
    good = GRPOConfig(iterations=3, lr=0.1, loss="dapo", seed=0, group_size=4, num_groups=2)
    bad = good.model_copy(update={"lr": 1e308})
    rec = train_grpo(mdp, [good, bad])
    assert rec.status == ["ok", "diverged"]
    return _configs([good, bad]), rec


def _write_batch(root, sweep, configs, rec, **kw):
    ids = [store.run_id(c) for c in configs]
    for i, (rid, c) in enumerate(zip(ids, configs, strict=True)):
        store.write_run(root, sweep, rid, c, rec, i, **kw)
    return ids


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- round trip


def test_round_trip_tables_equal_the_records_tensors_exactly(tmp_path, batch):
    # truth: the RunRecord itself; parquet stores float64, so equality is exact (NaN == NaN)
    configs, rec = batch
    ids = _write_batch(tmp_path, "sw", configs, rec, wall_time=1.5, extra_summary={"note": "x"})
    steps = store.load_results(tmp_path / "sw")
    iters = store.load_results(tmp_path / "sw", kind="iterations")
    summ = store.load_results(tmp_path / "sw", kind="summary")
    st, it = rec.stacked("step"), rec.stacked("iter")
    num_steps, num_iters = st["loss"].shape[1], it["J"].shape[1]
    assert len(steps) == 2 * num_steps and len(iters) == 2 * num_iters and len(summ) == 2
    assert steps.attrs["skipped"] == 0
    for c, rid in enumerate(ids):
        s = steps[steps.run_id == rid]
        assert s["step"].tolist() == list(range(num_steps))
        assert s["iteration"].tolist() == st["iteration"][c].long().tolist()
        for name, t in st.items():
            if name != "iteration":
                np.testing.assert_array_equal(s[name].to_numpy(), t[c].numpy(), err_msg=name)
        i = iters[iters.run_id == rid]
        assert i["iteration"].tolist() == list(range(num_iters))
        for name, t in it.items():
            if name != "iteration":
                np.testing.assert_array_equal(i[name].to_numpy(), t[c].numpy(), err_msg=name)
        row = summ[summ.run_id == rid].iloc[0]
        assert row["status"] == "ok" and row["sweep"] == "sw" and row["note"] == "x"
        assert row["j_final"] == rec.j_final[c].item() and row["j_star"] == rec.j_star[c].item()
        assert row["gap"] == rec.j_star[c].item() - rec.j_final[c].item()
        assert row["wall_time"] == 1.5 and row["num_steps"] == num_steps
        assert pd.isna(row["diverged_at"])
        np.testing.assert_array_equal(
            store.read_final_probs(tmp_path, "sw", rid), rec.final_probs[c].numpy()
        )
    assert steps["step"].dtype == np.int64 and steps["iteration"].dtype == np.int64


def test_config_columns_are_flattened_and_groupable(tmp_path, batch):
    # truth: the configs given; cfg.<dotted key> columns carry them onto every row
    configs, rec = batch
    _write_batch(tmp_path, "sw", configs, rec)
    df = store.load_results(tmp_path / "sw")
    groups = df.groupby(["cfg.lr", "cfg.loss.eps_low"]).size()
    num_steps = rec.stacked("step")["loss"].shape[1]
    assert groups.to_dict() == {(0.1, 0.2): num_steps, (0.3, 0.1): num_steps}
    assert set(df["cfg.env"]) == {"bandit"} and set(df["cfg.env_kwargs.k"]) == {3}
    assert list(df.columns[:5]) == ["sweep", "run_id", "status", "step", "iteration"]


def test_config_json_is_the_resolved_config_and_hashes_to_the_run_id(tmp_path, batch):
    # truth: config.json must be enough to rerun, and its content must reproduce the id
    configs, rec = batch
    ids = _write_batch(tmp_path, "sw", configs, rec)
    for rid, cfg in zip(ids, configs, strict=True):
        stored = store.read_config(tmp_path, "sw", rid)
        assert stored == cfg and store.run_id(stored) == rid
        rebuilt = GRPOConfig(**{k: v for k, v in stored.items() if k not in ENV})
        assert store.resolve_config(rebuilt, **ENV) == cfg


# ----------------------------------------------------------------------------- run ids


def test_run_id_is_sha256_of_the_hand_written_canonical_json():
    # truth: the canonical text written by hand (sorted keys, no whitespace, repr floats)
    expected = hashlib.sha256(b'{"a":1,"b":{"c":0.5,"d":[1,2]}}').hexdigest()[:16]
    assert store.run_id({"b": {"d": (1, 2), "c": 0.5}, "a": 1}) == expected
    assert store.run_id({"a": 1, "b": {"c": 0.5, "d": [1, 2]}}) == expected
    assert store.run_id({"a": np.int64(1), "b": {"c": np.float64(0.5), "d": [1, 2]}}) == expected


def test_run_id_is_stable_for_equal_configs_and_pydantic_models():
    cfg = GRPOConfig(lr=0.1)
    assert store.run_id(cfg) == store.run_id(GRPOConfig(lr=0.1)) == store.run_id(GRPOConfig())
    assert store.run_id(cfg) == store.run_id(cfg.model_dump(mode="json"))
    assert store.run_id({"x": cfg}) == store.run_id({"x": cfg.model_dump(mode="json")})
    assert len(store.run_id(cfg)) == 16


@pytest.mark.parametrize(
    "changed",
    [
        {"lr": float(np.nextafter(0.1, 1.0)), "loss": {"eps_low": 0.2}, "tag": "a"},  # 1 ulp
        {"lr": 0.1, "loss": {"eps_low": 0.21}, "tag": "a"},  # nested float
        {"lr": 0.1, "loss": {"eps_low": 0.2, "x": None}, "tag": "a"},  # nested key added
        {"lr": 0.1, "loss": {"eps_lo": 0.2}, "tag": "a"},  # nested key renamed
        {"lr": 0.1, "loss": {"eps_low": 0.2}, "tag": "b"},  # string
        {"lr": 0.1, "loss": {"eps_low": 0.2}},  # key removed
        {"lr": 0.1, "loss": 0.2, "tag": "a"},  # nesting flattened
        {"lr": 0.1, "loss": {"eps_low": 0.2}, "tag": ["a"]},  # str -> list
        {"lr": 1, "loss": {"eps_low": 0.2}, "tag": "a"},  # value
    ],
)
def test_run_id_changes_with_any_change(changed):
    base = {"lr": 0.1, "loss": {"eps_low": 0.2}, "tag": "a"}
    assert store.run_id(changed) != store.run_id(base)


def test_int_and_float_of_equal_value_differ_in_text_and_id():
    # documented: the id hashes JSON text; typed pydantic fields make both one type
    assert store.run_id({"k": 1}) != store.run_id({"k": 1.0})
    assert store.run_id(GRPOConfig(lr=1)) == store.run_id(GRPOConfig(lr=1.0))


@pytest.mark.parametrize(
    "config, error, match",
    [
        ({"lr": float("nan")}, ValueError, r"config\['lr'\] is nan"),
        ({"a": {"b": float("inf")}}, ValueError, r"config\['a'\]\['b'\] is inf"),
        ({1: 2}, TypeError, "key 1 of type int"),
        ({"f": object()}, TypeError, r"config\['f'\] has type object"),
        ({"t": torch.ones(2)}, TypeError, "tensor of shape"),
        ([1, 2], TypeError, "mapping or a pydantic model"),
    ],
)
def test_run_id_rejects_what_has_no_stable_json(config, error, match):
    with pytest.raises(error, match=match):
        store.run_id(config)


def test_resolve_config_extra_fields_may_not_shadow_model_fields():
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        store.resolve_config(GRPOConfig(), lr=0.5)


# ----------------------------------------------------------------------------- atomicity


def _fail_on(monkeypatch, name):
    """Make os.replace raise when it would install ``name`` (a crash at that moment)."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == name:
            raise OSError(f"simulated crash while installing {name}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_while_writing_the_summary_leaves_an_incomplete_run(tmp_path, batch, monkeypatch):
    # truth: summary.json is the completeness marker and is installed by os.replace only
    configs, rec = batch
    rid = store.run_id(configs[0])
    _fail_on(monkeypatch, store.SUMMARY)
    with pytest.raises(OSError, match="simulated crash"):
        store.write_run(tmp_path, "sw", rid, configs[0], rec, 0)
    monkeypatch.undo()
    d = store.run_dir(tmp_path, "sw", rid)
    assert not (d / store.SUMMARY).exists()
    assert not store.is_complete(tmp_path, "sw", rid)
    assert store.completed_runs(tmp_path, "sw") == set()
    # everything before the summary is there, and no temporary file is left behind
    assert _files(d) == sorted([store.CONFIG, store.FINAL_PROBS, store.ITERATIONS, store.STEPS])
    with pytest.raises(ValueError, match="no complete run.*1 incomplete"):
        store.load_results(tmp_path / "sw")
    # a complete neighbour loads; the crashed run is skipped and counted
    other = store.run_id(configs[1])
    store.write_run(tmp_path, "sw", other, configs[1], rec, 1)
    df = store.load_results(tmp_path / "sw")
    assert set(df.run_id) == {other}
    assert df.attrs["skipped"] == 1 and df.attrs["skipped_runs"] == [f"sw/{rid}"]


def test_stale_temp_files_are_never_taken_for_results(tmp_path, batch):
    # truth: a kill -9 between writing and os.replace leaves ".<name>.<hex>.tmp"; readers only
    # ever open the exact file names, so such leftovers are neither complete nor loaded
    configs, rec = batch
    rid = store.run_id(configs[0])
    d = store.run_dir(tmp_path, "sw", rid)
    d.mkdir(parents=True)
    (d / f".{store.SUMMARY}.0123456789ab.tmp").write_text('{"status": "ok"}')
    (d / f".{store.STEPS}.0123456789ab.tmp").write_bytes(b"junk")
    assert not store.is_complete(tmp_path, "sw", rid)
    assert store.completed_runs(tmp_path, "sw") == set()
    (store.run_dir(tmp_path, "sw", "x").parent / ".hidden").mkdir()  # not a run
    store.write_run(tmp_path, "sw", "other", configs[1], rec, 1)
    df = store.load_results(tmp_path / "sw")
    assert set(df.run_id) == {"other"} and df.attrs["skipped"] == 1


def test_rewriting_a_complete_run_that_crashes_is_incomplete_not_stale(
    tmp_path, batch, monkeypatch
):
    # truth: the old summary is removed before any file changes, so a half-rewritten run never
    # looks complete with a mix of old and new tables
    configs, rec = batch
    rid = store.run_id(configs[0])
    store.write_run(tmp_path, "sw", rid, configs[0], rec, 0)
    assert store.is_complete(tmp_path, "sw", rid)
    _fail_on(monkeypatch, store.STEPS)
    with pytest.raises(OSError, match="simulated crash"):
        store.write_run(tmp_path, "sw", rid, configs[0], rec, 0)
    monkeypatch.undo()
    assert not store.is_complete(tmp_path, "sw", rid)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_a_failed_atomic_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    store.atomic_write_bytes(target, b"old")
    _fail_on(monkeypatch, "f.json")
    with pytest.raises(OSError):
        store.atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["f.json"]


# ----------------------------------------------------------------------------- divergence, errors


def test_diverged_nan_metrics_and_status_survive_the_round_trip(tmp_path, diverged_batch):
    # truth: the record's NaN pattern (NaN from the divergence step on) and its status
    configs, rec = diverged_batch
    ids = _write_batch(tmp_path, "sw", configs, rec)
    steps = store.load_results(tmp_path / "sw")
    summ = store.load_results(tmp_path / "sw", kind="summary").set_index("run_id")
    k = rec.diverged_at[1]
    bad = steps[steps.run_id == ids[1]]
    for name, t in rec.stacked("step").items():
        if name != "iteration":
            np.testing.assert_array_equal(bad[name].to_numpy(), t[1].numpy(), err_msg=name)
    assert bad["loss"].iloc[k:].isna().all() and bad["loss"].iloc[:k].notna().all()
    assert (bad["status"] == "diverged").all()
    # the diverged steps keep their iteration, dated by the healthy configuration of the batch
    good = steps[steps.run_id == ids[0]]
    assert bad["iteration"].tolist() == good["iteration"].tolist()
    iters = store.load_results(tmp_path / "sw", kind="iterations")
    np.testing.assert_array_equal(
        iters[iters.run_id == ids[1]]["J"].to_numpy(), rec.stacked("iter")["J"][1].numpy()
    )
    assert summ.loc[ids[1], "status"] == "diverged"
    assert summ.loc[ids[1], "diverged_at"] == k
    assert "non-finite" in summ.loc[ids[1], "error"]
    assert summ.loc[ids[0], "status"] == "ok"
    assert store.completed_runs(tmp_path, "sw", status={"diverged"}) == {ids[1]}


def test_iteration_of_steps_where_every_config_diverged_comes_from_the_schedule(tmp_path):
    # truth: 2 iterations x 2 steps each, the only config dead from step 1 on: k // 2
    rec = RunRecord(status=["ok"], diverged_at=[None], error=[None])
    for it in range(2):
        it_metrics = {"iteration": torch.tensor([float(it)]), "J": torch.tensor([0.5])}
        rec.log("iter", it_metrics, torch.tensor([it == 0]))
        for s in range(2):
            alive = torch.tensor([it == 0 and s == 0])
            rec.log("step", {"iteration": torch.tensor([float(it)]), "loss": torch.ones(1)}, alive)
    rec.mark_diverged(torch.tensor([True]), 1, "non-finite loss")
    store.write_run(tmp_path, "sw", "r", {"a": 1}, rec, 0)
    df = store.load_results(tmp_path)
    assert df["iteration"].tolist() == [0, 0, 1, 1]
    assert df["loss"].isna().tolist() == [False, True, True, True]
    summ = store.load_results(tmp_path, kind="summary")
    assert summ["j_final"].isna().all() and summ["gap"].isna().all()  # record never finished


def test_a_failed_run_has_a_summary_row_and_no_metric_rows(tmp_path, batch):
    configs, rec = batch
    _write_batch(tmp_path, "sw", configs[:1], rec)
    store.write_failed_run(
        tmp_path, "sw", "boom", {"lr": 9.0}, "RuntimeError: out of memory", {"loss": 1.25}
    )
    assert store.is_complete(tmp_path, "sw", "boom")
    assert store.completed_runs(tmp_path, "sw", status={"ok", "diverged"}) == {
        store.run_id(configs[0])
    }
    summ = store.load_results(tmp_path, kind="summary").set_index("run_id")
    assert summ.loc["boom", "status"] == "error"
    assert summ.loc["boom", "error"] == "RuntimeError: out of memory"
    assert summ.loc["boom", "last_metrics.loss"] == 1.25
    steps = store.load_results(tmp_path)
    assert "boom" not in set(steps.run_id) and steps.attrs["skipped"] == 0
    # only failures: a summary row, an empty step table
    store.write_failed_run(tmp_path / "only", "sw", "boom", {"lr": 9.0}, "x")
    assert len(store.load_results(tmp_path / "only")) == 0
    assert len(store.load_results(tmp_path / "only", kind="summary")) == 1


def test_a_failed_rewrite_of_a_good_run_removes_its_old_tables(tmp_path, batch):
    configs, rec = batch
    rid = store.run_id(configs[0])
    store.write_run(tmp_path, "sw", rid, configs[0], rec, 0)
    store.write_failed_run(tmp_path, "sw", rid, configs[0], "retry failed")
    assert _files(store.run_dir(tmp_path, "sw", rid)) == [store.CONFIG, store.SUMMARY]


# ----------------------------------------------------------------------------- several sweeps


def test_load_over_a_root_with_two_sweeps(tmp_path, batch, diverged_batch):
    # truth: each sweep's rows keep their own sweep, status and config, even for a run id that
    # occurs in both sweeps (same config, written twice)
    configs, rec = batch
    dconfigs, drec = diverged_batch
    a = _write_batch(tmp_path, "sweep_a", configs, rec)
    b = _write_batch(tmp_path, "sweep_b", dconfigs + configs[:1], _concat(drec, rec))
    store.write_manifest(tmp_path, "sweep_a", protocol="p")
    (tmp_path / "notes").mkdir()  # not a sweep: ignored
    df = store.load_results(tmp_path, kind="summary")
    assert sorted(zip(df.sweep, df.run_id, strict=True)) == sorted(
        [("sweep_a", r) for r in a] + [("sweep_b", r) for r in b]
    )
    assert a[0] == b[2]
    steps = store.load_results(tmp_path)
    per_run = steps.groupby(["sweep", "run_id"]).size()
    assert (per_run == rec.stacked("step")["loss"].shape[1]).all() and len(per_run) == 5
    assert set(steps[steps.sweep == "sweep_b"]["cfg.loss.eps_low"]) == {0.2}
    assert set(steps[steps.sweep == "sweep_a"]["cfg.loss.eps_low"]) == {0.1, 0.2}
    assert set(steps[steps.sweep == "sweep_b"]["status"]) == {"ok", "diverged"}
    only_a = store.load_results(tmp_path / "sweep_a")
    assert set(only_a.sweep) == {"sweep_a"}


def _concat(r1, r2):
    """Configurations of two records with the same step schedule as one record (C1 + C2)."""
    out = RunRecord(
        status=r1.status + r2.status,
        diverged_at=r1.diverged_at + r2.diverged_at,
        error=r1.error + r2.error,
        final_probs=torch.cat([r1.final_probs, r2.final_probs]),
        j_final=torch.cat([r1.j_final, r2.j_final]),
        j_star=torch.cat([r1.j_star, r2.j_star]),
    )
    for where in ("step", "iter"):
        src1, src2 = getattr(r1, where), getattr(r2, where)
        getattr(out, where).update(
            {k: [torch.cat([x, y]) for x, y in zip(src1[k], src2[k], strict=True)] for k in src1}
        )
    return out


# ----------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_statuses_from_disk(tmp_path, batch):
    configs, rec = batch
    ids = [store.run_id(c) for c in configs]
    grid = {"lr": [0.1, 0.3], "loss.eps_low": [0.2, 0.1]}
    store.write_manifest(tmp_path, "sw", protocol="epsilon-sweep", grid=grid, runs=ids)
    m = store.read_manifest(tmp_path, "sw")
    assert m["sweep"] == "sw" and m["protocol"] == "epsilon-sweep" and m["grid"] == grid
    assert m["runs"] == [{"run_id": r, "status": "pending"} for r in ids]
    store.write_run(tmp_path, "sw", ids[0], configs[0], rec, 0)
    store.write_manifest(tmp_path, "sw", runs=ids)
    m2 = store.read_manifest(tmp_path, "sw")
    assert [r["status"] for r in m2["runs"]] == ["ok", "pending"]
    assert m2["created"] == m["created"] and m2["protocol"] == "epsilon-sweep"
    assert m2["grid"] == grid
    store.write_manifest(tmp_path, "sw", runs={"z": "error"})
    assert store.read_manifest(tmp_path, "sw")["runs"] == [{"run_id": "z", "status": "error"}]
    store.write_manifest(tmp_path, "sw")  # None: every run directory on disk
    assert store.read_manifest(tmp_path, "sw")["runs"] == [{"run_id": ids[0], "status": "ok"}]
    text = (tmp_path / "sw" / store.MANIFEST).read_text()
    assert json.loads(text) == store.read_manifest(tmp_path, "sw")  # plain JSON
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_load_results_reads_only_the_runs_the_manifest_lists(tmp_path, batch):
    # a run left by an earlier grid (or config version) stays on disk but out of the tables
    configs, rec = batch
    ids = [store.run_id(c) for c in configs]
    for i, (rid, c) in enumerate(zip(ids, configs, strict=True)):
        store.write_run(tmp_path, "sw", rid, c, rec, i)
    assert set(store.load_results(tmp_path / "sw", "summary")["run_id"]) == set(ids)  # no manifest
    store.write_manifest(tmp_path, "sw", runs=ids[1:])
    for kind in ("summary", "steps"):
        df = store.load_results(tmp_path / "sw", kind)
        assert set(df["run_id"]) == {ids[1]}
        assert df.attrs["stale"] == 1 and df.attrs["stale_runs"] == [f"sw/{ids[0]}"]


def test_read_manifest_of_a_missing_sweep_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        store.read_manifest(tmp_path, "nope")


# ----------------------------------------------------------------------------- bad input


def test_bad_paths_raise_value_errors_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="missing.*does not exist"):
        store.load_results(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no complete run"):
        store.load_results(empty)
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        store.load_results(file)
    (tmp_path / "sw" / "runs").mkdir(parents=True)
    with pytest.raises(ValueError, match="sw.*no complete run"):
        store.load_results(tmp_path / "sw")


def test_bad_arguments(tmp_path, batch):
    configs, rec = batch
    with pytest.raises(ValueError, match=r"unknown kind 'step'; choose one of"):
        store.load_results(tmp_path, kind="step")
    for bad in ("", "../x", "a/b", ".hidden", "-x"):
        with pytest.raises(ValueError, match="not a valid directory name"):
            store.write_run(tmp_path, "sw", bad, configs[0], rec, 0)
    with pytest.raises(ValueError, match="sweep '..'"):
        store.is_complete(tmp_path, "..", "r")
    for index in (2, -1, True):
        with pytest.raises(ValueError, match=r"index must be an int in \[0, 2\)"):
            store.write_run(tmp_path, "sw", "r", configs[0], rec, index)
    with pytest.raises(ValueError, match="extra_summary may not set"):
        store.write_run(tmp_path, "sw", "r", configs[0], rec, 0, extra_summary={"status": "ok"})
    with pytest.raises(ValueError, match="subset of"):
        store.completed_runs(tmp_path, "sw", status={"done"})
    assert _files(tmp_path) == []  # nothing was written by the rejected calls


def test_a_rejected_record_leaves_an_existing_run_untouched(tmp_path, batch):
    # truth: checks run before the directory is touched, so a complete run stays complete
    configs, rec = batch
    store.write_run(tmp_path, "sw", "r", configs[0], rec, 0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    clash = RunRecord(status=["ok"], diverged_at=[None], error=[None])
    clash.log("step", {"run_id": torch.ones(1)}, torch.tensor([True]))
    with pytest.raises(ValueError, match="'run_id' clashes with a reserved column"):
        store.write_run(tmp_path, "sw", "r", configs[0], clash, 0)
    with pytest.raises(ValueError, match="is nan"):
        store.write_run(tmp_path, "sw", "r", {"lr": float("nan")}, rec, 0)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
