"""Results on disk as plain data (JSON + parquet, never pickles), written atomically, loaded into
one tidy pandas DataFrame.

Layout (every file can be opened directly: ``json.load``, ``pandas.read_parquet``, ``jq``, DuckDB)::

    <root>/<sweep>/manifest.json                 the sweep: name, protocol, created / updated
                                                 times (UTC, ISO 8601), grid description, and
                                                 its run ids with their status
    <root>/<sweep>/runs/<run_id>/config.json     the resolved configuration of the run, as JSON:
                                                 pydantic models dumped with
                                                 ``model_dump(mode="json")`` plus free-form fields
                                                 (env name and kwargs, algorithm, seed, ...);
                                                 ``run_id == run_id(config)`` when the id is the
                                                 default hash of this file's content
    <root>/<sweep>/runs/<run_id>/metrics.parquet one row per optimiser step; columns run_id
                                                 (string), step (int64, 0-based, the step count
                                                 ``diverged_at`` refers to), iteration (int64),
                                                 then one float64 column per step metric
                                                 (NaN after a divergence, as in the RunRecord)
    <root>/<sweep>/runs/<run_id>/iterations.parquet
                                                 one row per iteration; columns run_id,
                                                 iteration (int64), one float64 column per
                                                 iteration metric (J, gap, reward_mean, ...)
    <root>/<sweep>/runs/<run_id>/final_probs.json
                                                 the last policy pi(a|s) as an S x A nested list
    <root>/<sweep>/runs/<run_id>/summary.json    written LAST: status "ok" | "diverged" | "error",
                                                 diverged_at, error, j_final, j_star,
                                                 gap = j_star - j_final, wall_time (s),
                                                 num_steps, num_iterations, written_at, any extra
                                                 scalars; for a failed run the last metrics seen

Completeness: a run directory is complete exactly when its ``summary.json`` exists. Every file is
written atomically (a temporary file ``.<name>.<random>.tmp`` in the same directory, flushed and
fsynced, then ``os.replace``d onto its name, then the directory fsynced), and ``summary.json`` is
written after every other file of the run; rewriting a run first removes its ``summary.json``.
A crash at any point therefore leaves either a complete run or a directory that every reader
(``is_complete``, ``completed_runs``, ``load_results``) treats as incomplete. Temporary files
start with a dot and are never read as results. Non-finite floats in the JSON files are written
as ``null`` (strict JSON; NaN and +-inf are then indistinguishable there); the parquet tables keep
NaN as NaN.

The manifest describes the sweep for a reader; the truth about a run is its own directory. Runs
do not update the manifest (concurrent workers would race on it): the sweep driver rewrites it,
e.g. ``write_manifest(root, sweep, runs=ids)`` reads each run's status back from disk.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel

from grpo_lab.algorithms.common import RunRecord

MANIFEST = "manifest.json"
RUNS = "runs"
CONFIG = "config.json"
STEPS = "metrics.parquet"
ITERATIONS = "iterations.parquet"
FINAL_PROBS = "final_probs.json"
SUMMARY = "summary.json"

KINDS = ("steps", "iterations", "summary")
RUN_STATUSES = ("ok", "diverged", "error")
ID_LENGTH = 16  # hex digits of sha256 kept in a run id: 64 bits, collision odds ~n^2 / 2^65
CFG_PREFIX = "cfg."

# summary fields the store fills itself; extra_summary may not overwrite them
_SUMMARY_KEYS = (
    "run_id",
    "status",
    "diverged_at",
    "error",
    "j_final",
    "j_star",
    "gap",
    "wall_time",
    "num_steps",
    "num_iterations",
    "written_at",
    "last_metrics",
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+-]{0,199}")


# ----------------------------------------------------------------------------- JSON values


def _to_json(value: Any, where: str, *, strict_floats: bool) -> Any:
    """``value`` as plain JSON data (dict with str keys, list, str, int, float, bool, None).

    Pydantic models become ``model_dump(mode="json")``; tuples become lists; numpy and 0-d torch
    scalars become Python scalars; enums their value; paths strings. A non-finite float raises
    (``strict_floats``, configurations: NaN != NaN would make ids unstable) or becomes None.
    ``where`` names the position for error messages, e.g. ``config['loss']['eps_low']``.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (np.generic, torch.Tensor)):
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise TypeError(f"{where} is a tensor of shape {tuple(value.shape)}, not a scalar")
        value = value.item()
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if strict_floats:
            raise ValueError(f"{where} is {value!r}; a configuration needs finite floats")
        return None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has key {k!r} of type {type(k).__name__}; keys are str")
            out[k] = _to_json(v, f"{where}[{k!r}]", strict_floats=strict_floats)
        return out
    if isinstance(value, (list, tuple)):
        return [
            _to_json(v, f"{where}[{i}]", strict_floats=strict_floats) for i, v in enumerate(value)
        ]
    raise TypeError(f"{where} has type {type(value).__name__}, which has no JSON form")


def resolve_config(config: Mapping[str, Any] | BaseModel, **extra: Any) -> dict[str, Any]:
    """The configuration as plain JSON data, the form stored in ``config.json`` and hashed by
    ``run_id``: pydantic models (at any depth) dumped with ``model_dump(mode="json")``, tuples as
    lists, numpy / 0-d torch scalars as Python scalars. Keys must be str and floats finite.

    ``extra`` adds free-form top-level fields beside the model's own, e.g.
    ``resolve_config(grpo_cfg, algorithm="grpo", env="bandit", env_kwargs={"k": 3})`` gives
    ``{"lr": ..., "loss": {...}, ..., "algorithm": "grpo", "env": "bandit", ...}``, whose columns
    load as ``cfg.lr``, ``cfg.loss.eps_low``, ``cfg.env``. A name in both raises.
    """
    resolved = _to_json(config, "config", strict_floats=True)
    if not isinstance(resolved, dict):
        raise TypeError(f"config must be a mapping or a pydantic model, got {type(config)}")
    clash = sorted(set(resolved) & set(extra))
    if clash:
        raise ValueError(f"extra fields {clash} are already fields of the config")
    resolved.update(_to_json(extra, "config", strict_floats=True))
    return resolved


def canonical_json(config: Mapping[str, Any] | BaseModel) -> str:
    """The canonical text of a resolved configuration: sorted keys, no whitespace, ASCII.

    Floats are written by ``repr`` (the shortest text that reads back to the same double), so
    0.1 and 0.1 + 1e-17 differ only if their doubles differ; an int and a float of equal value
    (1 and 1.0) differ in text and hence in id (typed pydantic fields resolve both to one type).
    """
    return json.dumps(
        resolve_config(config), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def run_id(config: Mapping[str, Any] | BaseModel) -> str:
    """Stable id of a run: the first 16 hex digits of sha256(``canonical_json(config)``).

    Equal resolved configurations (in any key order, tuple or list) get the same id on every
    machine and Python version; any changed value, key or nesting gets a different one.
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()[:ID_LENGTH]


# ----------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, no file, or all of ``data``:
    write a temporary ``.<name>.<random>.tmp`` in the same directory, flush and fsync it,
    ``os.replace`` it onto ``path``, fsync the directory. On any error the temporary is removed
    and the error re-raised; ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 honours the umask (mkstemp would leave the result readable by us only)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ----------------------------------------------------------------------------- paths


def _check_name(arg: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"{arg} {value!r} is not a valid directory name: use 1-200 characters from "
            "A-Z a-z 0-9 _ . , = + -, not starting with '.', ',', '=', '+' or '-'"
        )
    return value


def sweep_dir(root: str | os.PathLike[str], sweep: str) -> Path:
    """``<root>/<sweep>``."""
    return Path(root) / _check_name("sweep", sweep)


def run_dir(root: str | os.PathLike[str], sweep: str, run_id: str) -> Path:
    """``<root>/<sweep>/runs/<run_id>``."""
    return sweep_dir(root, sweep) / RUNS / _check_name("run_id", run_id)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- writing runs


def _step_iterations(record: RunRecord, num_iterations: int) -> list[int | None]:
    """The iteration of each optimiser step, (K,) -> list.

    Read off the step metric ``iteration`` where any configuration of the batch logged it (the C
    configurations of a batched record share their step schedule, so one live configuration
    dates the step for all, including those that diverged and log NaN); where none is alive, the
    step k of a schedule with K = n * I steps is dated k // n; otherwise unknown (None)."""
    if not record.step:
        return []
    stacked = record.stacked("step")
    num_steps = next(iter(stacked.values())).shape[-1]
    known = [None] * num_steps
    if "iteration" in stacked:
        col = stacked["iteration"].to(torch.float64)  # (C, K)
        col = torch.where(torch.isfinite(col), col, float("-inf")).amax(dim=0)  # (K,)
        known = [int(v) if math.isfinite(v) else None for v in col.tolist()]
    if num_iterations and num_steps % num_iterations == 0:
        per = num_steps // num_iterations
        known = [k // per if v is None else v for k, v in enumerate(known)]
    return known


def _metric_table(
    run_id: str, index_name: str, index: list[int | None], metrics: dict[str, np.ndarray]
) -> pa.Table:
    n = len(index)
    cols: dict[str, pa.Array] = {
        "run_id": pa.array([run_id] * n, pa.string()),
        index_name: pa.array(index, pa.int64()),
    }
    for name, values in metrics.items():
        if name in cols:
            raise ValueError(f"metric name {name!r} clashes with a reserved column")
        cols[name] = pa.array(values, pa.float64())  # from numpy: NaN stays NaN, not null
    return pa.table(cols)


def _row(stacked: dict[str, torch.Tensor], index: int) -> dict[str, np.ndarray]:
    return {k: v[index].detach().cpu().to(torch.float64).numpy() for k, v in stacked.items()}


def _scalar(t: torch.Tensor | None, index: int) -> float | None:
    if t is None:
        return None
    v = float(t.reshape(-1)[index]) if t.dim() else float(t)
    return v if math.isfinite(v) else None


def _prepare_run(path: Path, config: Mapping[str, Any] | BaseModel) -> None:
    """Make ``path`` an incomplete run directory holding ``config.json``: remove a previous
    ``summary.json`` first (so a rewrite is never mistaken for the old complete run), then the
    old tables (so a failed rewrite leaves none of them behind)."""
    resolved = resolve_config(config)
    path.mkdir(parents=True, exist_ok=True)
    if (path / SUMMARY).exists():
        _unlink(path / SUMMARY)
        _fsync_dir(path)
    for name in (STEPS, ITERATIONS, FINAL_PROBS):
        _unlink(path / name)
    _write_json(path / CONFIG, resolved)


def _check_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_SUMMARY_KEYS))
    if clash:
        raise ValueError(f"extra_summary may not set {clash}; the store writes these fields")
    return _to_json(extra, "extra_summary", strict_floats=False)


def write_run(
    root: str | os.PathLike[str],
    sweep: str,
    run_id: str,
    config: Mapping[str, Any] | BaseModel,
    record: RunRecord,
    index: int,
    *,
    extra_summary: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
) -> Path:
    """Write configuration ``index`` of a batched ``record`` (slice [index] of every (C, ...)
    tensor) as the run ``<root>/<sweep>/runs/<run_id>``; returns that directory.

    Order: config.json, final_probs.json, metrics.parquet, iterations.parquet, then summary.json
    (module docstring), each atomically. ``record.summary``'s figures (and ``extra_summary``)
    join the summary. ``wall_time`` (seconds) is stored as given: for a batched
    record, the caller decides whether it is the batch's time or a share of it.
    """
    num_configs = len(record.status)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_configs:
        raise ValueError(f"index must be an int in [0, {num_configs}) (C = {num_configs})")
    status = record.status[index]
    if status not in ("ok", "diverged"):
        raise ValueError(f"record.status[{index}] is {status!r}; expected 'ok' or 'diverged'")
    per_run = {k: float(v[index]) for k, v in record.summary.items()}  # record's own figures
    extra = _check_extra({**per_run, **(extra_summary or {})})
    path = run_dir(root, sweep, run_id)

    # everything is built and checked before the run directory is touched
    steps, iters = record.stacked("step"), record.stacked("iter")
    for where, stacked in (("step", steps), ("iter", iters)):
        for name, t in stacked.items():
            if t.shape[0] != num_configs:
                raise ValueError(
                    f"record.{where}[{name!r}] has {t.shape[0]} configurations, "
                    f"record.status {num_configs}"
                )
    num_iterations = next(iter(iters.values())).shape[-1] if iters else 0
    step_iter = _step_iterations(record, num_iterations)
    step_metrics = {k: v for k, v in _row(steps, index).items() if k != "iteration"}
    iter_metrics = {k: v for k, v in _row(iters, index).items() if k != "iteration"}
    step_table = _metric_table(run_id, "step", list(range(len(step_iter))), step_metrics)
    step_table = step_table.add_column(2, "iteration", pa.array(step_iter, pa.int64()))
    iter_table = _metric_table(run_id, "iteration", list(range(num_iterations)), iter_metrics)
    probs = None
    if record.final_probs is not None:
        probs = record.final_probs[index].detach().cpu().to(torch.float64).tolist()
        probs = _to_json(probs, "final_probs", strict_floats=False)

    _prepare_run(path, config)
    if probs is not None:
        _write_json(path / FINAL_PROBS, probs)
    _write_parquet(path / STEPS, step_table)
    _write_parquet(path / ITERATIONS, iter_table)

    j_final, j_star = _scalar(record.j_final, index), _scalar(record.j_star, index)
    summary = {
        "run_id": run_id,
        "status": status,
        "diverged_at": record.diverged_at[index] if record.diverged_at else None,
        "error": record.error[index] if record.error else None,
        "j_final": j_final,
        "j_star": j_star,
        "gap": None if j_final is None or j_star is None else j_star - j_final,
        "wall_time": wall_time,
        "num_steps": len(step_iter),
        "num_iterations": num_iterations,
        "written_at": _now(),
        **extra,
    }
    _write_json(path / SUMMARY, _to_json(summary, "summary", strict_floats=False))
    return path


def write_failed_run(
    root: str | os.PathLike[str],
    sweep: str,
    run_id: str,
    config: Mapping[str, Any] | BaseModel,
    error: str,
    last_metrics: Mapping[str, Any] | None = None,
    *,
    extra_summary: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
) -> Path:
    """Record a run that raised: config.json, then summary.json with status "error", the error
    message and ``last_metrics`` (the last metrics seen before the exception, name -> scalar,
    stored under ``last_metrics``). No tables are written; old ones are removed. A failed run is
    complete (it has a summary): ``completed_runs(..., status={"ok", "diverged"})`` leaves it out
    for a resume that retries failures."""
    extra = _check_extra(extra_summary)
    path = run_dir(root, sweep, run_id)
    _prepare_run(path, config)
    summary = {
        "run_id": run_id,
        "status": "error",
        "diverged_at": None,
        "error": str(error),
        "j_final": None,
        "j_star": None,
        "gap": None,
        "wall_time": wall_time,
        "num_steps": 0,
        "num_iterations": 0,
        "written_at": _now(),
        "last_metrics": dict(last_metrics or {}),
        **extra,
    }
    _write_json(path / SUMMARY, _to_json(summary, "summary", strict_floats=False))
    return path


# ----------------------------------------------------------------------------- reading runs


def is_complete(root: str | os.PathLike[str], sweep: str, run_id: str) -> bool:
    """True iff the run directory holds its ``summary.json`` (written last, atomically)."""
    return (run_dir(root, sweep, run_id) / SUMMARY).is_file()


def _run_dirs(sweep_path: Path) -> list[Path]:
    runs = sweep_path / RUNS
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def completed_runs(
    root: str | os.PathLike[str], sweep: str, status: Iterable[str] | None = None
) -> set[str]:
    """Ids of the complete runs of a sweep (empty if the sweep does not exist yet), optionally
    only those whose summary status is in ``status`` (e.g. {"ok", "diverged"})."""
    wanted = None if status is None else set(status)
    if wanted is not None and not wanted <= set(RUN_STATUSES):
        raise ValueError(f"status {sorted(wanted)} must be a subset of {list(RUN_STATUSES)}")
    out = set()
    for p in _run_dirs(sweep_dir(root, sweep)):
        if (p / SUMMARY).is_file():
            if wanted is None or _read_json(p / SUMMARY).get("status") in wanted:
                out.add(p.name)
    return out


def read_config(root: str | os.PathLike[str], sweep: str, run_id: str) -> dict[str, Any]:
    """The stored ``config.json`` of a run."""
    return _read_json(run_dir(root, sweep, run_id) / CONFIG)


def read_summary(root: str | os.PathLike[str], sweep: str, run_id: str) -> dict[str, Any]:
    """The ``summary.json`` of a complete run (FileNotFoundError if the run is incomplete)."""
    return _read_json(run_dir(root, sweep, run_id) / SUMMARY)


def read_final_probs(root: str | os.PathLike[str], sweep: str, run_id: str) -> np.ndarray:
    """The final policy pi(a|s) of a run as an (S, A) float64 array (null -> NaN)."""
    probs = _read_json(run_dir(root, sweep, run_id) / FINAL_PROBS)
    return np.array(probs, dtype=np.float64)


# ----------------------------------------------------------------------------- manifest


def write_manifest(
    root: str | os.PathLike[str],
    sweep: str,
    *,
    protocol: str | None = None,
    grid: Any = None,
    runs: Mapping[str, str] | Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<root>/<sweep>/manifest.json`` atomically; returns its path.

    ``runs``: a mapping run id -> status is written as given; a sequence of run ids gets each
    status from disk (the summary's status, or "pending" for a run not complete); None lists every
    run directory on disk the same way. Rewriting keeps the first ``created`` time and, where
    ``protocol`` / ``grid`` are None, their stored values; ``updated`` is set to now.
    """
    path = sweep_dir(root, sweep) / MANIFEST
    old = _read_json(path) if path.is_file() else {}
    if runs is None:
        runs = [p.name for p in _run_dirs(sweep_dir(root, sweep))]
    if isinstance(runs, Mapping):
        run_list = [{"run_id": str(k), "status": str(v)} for k, v in runs.items()]
    else:
        run_list = []
        for rid in runs:
            summary = run_dir(root, sweep, rid) / SUMMARY
            status = _read_json(summary).get("status") if summary.is_file() else "pending"
            run_list.append({"run_id": rid, "status": status})
    extra = _to_json(dict(extra or {}), "extra", strict_floats=False)
    clash = sorted(set(extra) & {"sweep", "protocol", "created", "updated", "grid", "runs"})
    if clash:
        raise ValueError(f"extra may not set {clash}; write_manifest sets these fields")
    if grid is not None:
        grid = _to_json(grid, "grid", strict_floats=False)
    now = _now()
    manifest = {
        **{k: v for k, v in old.items() if k not in ("runs", "updated")},
        **extra,
        "sweep": sweep,
        "protocol": protocol if protocol is not None else old.get("protocol"),
        "created": old.get("created", now),
        "updated": now,
        "grid": grid if grid is not None else old.get("grid"),
        "runs": run_list,
    }
    _write_json(path, manifest)
    return path


def read_manifest(root: str | os.PathLike[str], sweep: str) -> dict[str, Any]:
    """The sweep's ``manifest.json`` (FileNotFoundError naming the path if there is none)."""
    path = sweep_dir(root, sweep) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}")
    return _read_json(path)


# ----------------------------------------------------------------------------- loading


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> one level with dotted keys: {"loss": {"eps_low": 0.2}} -> {"loss.eps_low":
    0.2}. Lists become tuples (hashable, so they can be groupby keys); an empty dict vanishes."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = _tuples(v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _is_sweep(path: Path) -> bool:
    return (path / RUNS).is_dir() or (path / MANIFEST).is_file()


def _sweeps(path: Path) -> list[Path]:
    if _is_sweep(path):
        return [path]
    return sorted(
        p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_sweep(p)
    )


def load_results(path: str | os.PathLike[str], kind: str = "steps") -> pd.DataFrame:
    """Every complete run under ``path`` as one tidy DataFrame.

    ``path`` is a sweep directory (it has ``runs/`` or ``manifest.json``) or a root holding
    sweeps. ``kind``:
      "steps"       one row per (run, optimiser step): the runs' metrics.parquet
      "iterations"  one row per (run, iteration): the runs' iterations.parquet
      "summary"     one row per run: summary.json's scalars (``last_metrics`` as
                    ``last_metrics.<name>``; list-valued extra fields are left out)
    Each row carries ``sweep``, ``run_id``, ``status`` and the run's configuration flattened to
    ``cfg.<dotted key>`` columns (``cfg.lr``, ``cfg.loss.eps_low``), so
    ``df.groupby(["cfg.lr", "cfg.loss.eps_low"])`` works. A config value of None is a missing
    group key to pandas: pass ``dropna=False`` to groupby to keep such rows. Failed runs
    (status "error") have a summary row but no step or iteration rows.

    Incomplete run directories (no summary.json) are skipped: ``df.attrs["skipped"]`` counts them
    and ``df.attrs["skipped_runs"]`` lists them as "<sweep>/<run_id>". Where a sweep has a
    manifest, only the runs it lists are read: runs of an earlier grid or of an earlier version
    of a config class (their ids differ) stay on disk but out of the tables, counted in
    ``df.attrs["stale"]`` and listed in ``df.attrs["stale_runs"]``. Raises ValueError naming
    ``path`` if it does not exist or holds no complete run.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    base = Path(path)
    if not base.is_dir():
        raise ValueError(f"results path {str(base)!r} does not exist or is not a directory")
    tables: list[pa.Table] = []
    summaries: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    skipped: list[str] = []
    stale: list[str] = []
    for sw in _sweeps(base):
        listed = _manifest_runs(sw)
        for rd in _run_dirs(sw):
            if listed is not None and rd.name not in listed:
                stale.append(f"{sw.name}/{rd.name}")
                continue
            if not (rd / SUMMARY).is_file():
                skipped.append(f"{sw.name}/{rd.name}")
                continue
            summary = _read_json(rd / SUMMARY)
            status = summary.get("status")
            keys = {"sweep": sw.name, "run_id": rd.name}
            configs.append({**keys, **flatten(_read_json(rd / CONFIG), CFG_PREFIX)})
            if kind == "summary":
                row = {k: v for k, v in flatten(summary).items() if not isinstance(v, tuple)}
                summaries.append({**row, **keys, "status": status})
                continue
            file = rd / (STEPS if kind == "steps" else ITERATIONS)
            if not file.is_file():
                if status == "error":
                    continue
                raise ValueError(f"complete run {str(rd)!r} (status {status!r}) lacks {file.name}")
            t = pq.read_table(file)
            n = t.num_rows
            t = t.drop_columns([c for c in ("sweep", "status") if c in t.column_names])
            t = t.append_column("sweep", pa.array([sw.name] * n, pa.string()))
            t = t.append_column("status", pa.array([status] * n, pa.string()))
            tables.append(t)
    if not configs:
        raise ValueError(
            f"results path {str(base)!r} holds no complete run "
            f"({len(skipped)} incomplete run directories skipped)"
        )
    cfg = pd.DataFrame(configs)
    index = "step" if kind == "steps" else "iteration"
    if kind == "summary":
        df = pd.DataFrame(summaries)
        if "diverged_at" in df:
            df["diverged_at"] = df["diverged_at"].astype("Int64")
        front = ["sweep", "run_id", "status"]
    else:
        front = ["sweep", "run_id", "status", index] + (["iteration"] if kind == "steps" else [])
        if tables:
            df = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        else:
            df = pd.DataFrame({c: pd.Series(dtype="int64") for c in front})
            df[["sweep", "run_id", "status"]] = df[["sweep", "run_id", "status"]].astype(str)
        for col in {index, "iteration"}:
            # int64 columns with nulls arrive as float64: nullable Int64 keeps them integers
            if col in df and not pd.api.types.is_integer_dtype(df[col]):
                df[col] = df[col].astype("Int64")
    df = df.merge(cfg, on=["sweep", "run_id"], how="left", validate="many_to_one")
    rest = [c for c in df.columns if c not in front and not c.startswith(CFG_PREFIX)]
    cfg_cols = [c for c in df.columns if c.startswith(CFG_PREFIX)]
    df = df[front + rest + cfg_cols]
    if kind != "summary":
        df = df.sort_values(["sweep", "run_id", index], kind="stable", ignore_index=True)
    df.attrs["skipped"] = len(skipped)
    df.attrs["skipped_runs"] = skipped
    df.attrs["stale"] = len(stale)
    df.attrs["stale_runs"] = stale
    return df


def _manifest_runs(sweep: Path) -> set[str] | None:
    """The run ids a sweep's manifest lists, or None without a manifest (or a run list)."""
    path = sweep / MANIFEST
    if not path.is_file():
        return None
    runs = _read_json(path).get("runs")
    return None if runs is None else {str(r["run_id"]) for r in runs}
