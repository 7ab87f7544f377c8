"""Sweeps: expand a protocol's grid into runs, run them batched, store them, resume, judge.

    runs     = expand(protocol, budget)                 one RunSpec per algorithm x grid point
    run id   = store.run_id(stored config)              a hash of everything that fixes the numbers
    batches  = runs grouped by their non-batchable fields (lr, eps, seed, ... vary inside a batch:
               grpo_lab.algorithms.ALGORITHMS[name].batchable), at most ``batch_size`` runs each
    resume   = runs whose summary.json exists are skipped: a sweep killed at any point and
               restarted completes every run exactly once, with the same numbers (a run's numbers
               depend on its own config and seed only, not on its batch-mates)
    summary  = each run's summary.json also names its ``batch`` (the batch's first run id) and
               ``batch_size``: the runs of one batch share their timings (wall_time is the
               batch's time / batch_size)
    failure  = a diverging configuration is recorded by the trainer ("diverged", with its step);
               a batch that raises is retried one run at a time, and a run that still raises is
               stored with status "error" and its message; the sweep goes on
    tuning   = algorithms with a ``tune`` table first run every tune point on ``tune_seeds``
               (and every environment of the grid) in ``<name>-<budget>-tune``; each keeps the
               point with the best mean final score (``choose_tuned``), and only then do the
               evaluation runs start, on the grid's own (fresh) seeds ("Deep RL that matters",
               arXiv 1709.06560: each algorithm tuned, the same budget, fresh evaluation seeds)
    verdict  = the protocol's rule on the stored steps, written to ``verdict.json``

Backends (``BACKENDS``):
    "local"  the batches run in this process, or in a pool of ``workers`` processes
    "ray"    each batch is a Ray task (``pip install 'grpo_lab[ray]'``): on a local Ray instance
             of ``workers`` CPUs, or on the cluster at ``address``; see ``ray_session``
Every backend runs the same ``run_batch`` on the same batches, so it changes where the numbers
are computed, never the numbers; resume, failure isolation and the verdict are the same.
"""

from __future__ import annotations

import itertools
import json
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from grpo_lab import store
from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs import make as make_env
from grpo_lab.protocols import Protocol, RunSpec, expand, expand_tuning
from grpo_lab.verdicts import SweepData, Verdict, final_scores, judge

BACKENDS = ("local", "ray")


@dataclass
class SweepResult:
    sweep_path: Path
    verdict: Verdict
    ran: int  # runs executed now
    skipped: int  # runs already complete


def stored_config(spec: RunSpec) -> dict[str, Any]:
    """What config.json holds for a run: the algorithm's resolved config plus what else fixes
    its numbers (algorithm, environment) and how reports name it (protocol, label)."""
    return store.resolve_config(
        spec.config,
        algorithm=spec.algorithm,
        env=spec.env.model_dump(mode="json"),
        label=spec.label,
        protocol=spec.protocol,
    )


def _batch_key(spec: RunSpec) -> str:
    batchable = set(ALGORITHMS.get(spec.algorithm).batchable)
    flat = store.flatten(spec.config.model_dump(mode="json"))
    shared = {k: v for k, v in flat.items() if k not in batchable}
    return json.dumps([spec.algorithm, spec.env.model_dump(mode="json"), shared], sort_keys=True)


def make_batches(
    todo: list[tuple[str, RunSpec]], batch_size: int
) -> list[list[tuple[str, RunSpec]]]:
    """Group runs that may share one batched program; split groups to ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[str, list[tuple[str, RunSpec]]] = {}
    for rid, spec in todo:
        groups.setdefault(_batch_key(spec), []).append((rid, spec))
    batches = []
    for group in groups.values():
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def run_batch(root: str, sweep: str, batch: list[tuple[str, RunSpec]]) -> list[tuple[str, str]]:
    """Train one batch and store each run; returns (run_id, status) per run. Never raises for a
    run's own failure: a raising batch is retried run by run, and a raising run is stored as
    status "error"."""
    spec0 = batch[0][1]
    algo = ALGORITHMS.get(spec0.algorithm)
    mdp = make_env(spec0.env.name, **spec0.env.kwargs)
    t0 = time.perf_counter()
    try:
        record = algo.train(mdp, [spec.config for _, spec in batch])
    except Exception as e:  # a run's own failure: isolate it, keep the sweep going
        if len(batch) > 1:
            out = []
            for item in batch:
                out += run_batch(root, sweep, [item])
            return out
        rid, spec = batch[0]
        msg = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        store.write_failed_run(root, sweep, rid, stored_config(spec), msg)
        return [(rid, "error")]
    wall = (time.perf_counter() - t0) / len(batch)
    # which runs shared one batched program (their timings are one measurement): its first run
    together = {"batch": batch[0][0], "batch_size": len(batch)}
    out = []
    for i, (rid, spec) in enumerate(batch):
        store.write_run(
            root, sweep, rid, stored_config(spec), record, i, wall_time=wall, extra_summary=together
        )
        out.append((rid, record.status[i]))
    return out


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the 'ray' backend needs Ray, which is not installed: pip install 'grpo_lab[ray]'"
        ) from e
    return ray


def check_backend(backend: str, workers: int = 1, address: str | None = None) -> None:
    """Check a backend choice before anything runs: ValueError for an unknown backend,
    ``workers`` < 1 or an address without the "ray" backend; ImportError (how to install it)
    for "ray" without Ray installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if address is not None and backend != "ray":
        raise ValueError(f"an address is only for the 'ray' backend, not {backend!r}")
    if backend == "ray":
        _import_ray()


@contextmanager
def ray_session(address: str | None = None, workers: int = 1) -> Iterator[Any]:
    """Ray, initialised for a sweep; yields the ``ray`` module.

    - Ray already initialised in this process (by the caller, or an enclosing ``ray_session``):
      used as it is, and left running; ``address`` and ``workers`` are then ignored.
    - ``address`` given ("auto", "ray://host:10001", ...): ``ray.init(address=address)`` connects
      to that cluster. The cluster is never shut down, and the connection is left open for later
      sweeps of this process (Ray closes it at exit).
    - otherwise: a new local Ray instance limited to ``workers`` CPUs (so at most ``workers``
      batches at once; RAY_ADDRESS is not consulted), without dashboard or worker logs, shut
      down when the block ends.

    Raises ImportError naming ``pip install 'grpo_lab[ray]'`` when Ray is missing.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        ray.init(address=address)
        yield ray
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ray.init(  # "local": a new instance even where RAY_ADDRESS names a cluster
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _execute_local(
    root: Path, sweep: str, batches: list[list[tuple[str, RunSpec]]], workers: int
) -> Iterator[list[tuple[str, str]]]:
    if workers <= 1:
        for b in batches:
            yield run_batch(str(root), sweep, b)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_batch, str(root), sweep, b) for b in batches]
        for f in futures:
            yield f.result()


def _execute_ray(
    root: Path,
    sweep: str,
    batches: list[list[tuple[str, RunSpec]]],
    workers: int,
    address: str | None,
) -> Iterator[list[tuple[str, str]]]:
    """One Ray task per batch (one CPU each), yielded in the order they finish. The tasks write
    their runs under ``root`` themselves, so ``root`` is made absolute here; on a cluster it must
    be a filesystem every node mounts at that same path."""
    with ray_session(address, workers) as ray:
        task = ray.remote(num_cpus=1)(run_batch)
        pending = [task.remote(str(root.resolve()), sweep, b) for b in batches]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:  # raised or abandoned (e.g. Ctrl-C): stop the tasks still queued or running
            for ref in pending:
                ray.cancel(ref)


def _execute(
    root: Path,
    sweep: str,
    batches: list[list[tuple[str, RunSpec]]],
    *,
    backend: str,
    workers: int,
    address: str | None,
) -> Iterator[list[tuple[str, str]]]:
    """Run the batches on ``backend``; yields each batch's (run_id, status) list once it is
    stored (local: in submission order; ray: in the order the batches finish)."""
    if not batches:
        return  # nothing to run: no Ray start-up for a completed sweep
    if backend == "ray":
        yield from _execute_ray(root, sweep, batches, workers, address)
    else:
        yield from _execute_local(root, sweep, batches, workers)


def choose_tuned(
    protocol: Protocol, tune_path: str | Path
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each tuned algorithm's best point: the tune point with the highest mean final score
    (``verdicts.final_scores`` with the verdict's ``score`` parameter) over its tuning runs
    (tuning seeds x environments); ties go to the earlier point in the file's order. Returns
    (label -> chosen values, label -> {point: mean score} as text for the evidence)."""
    summary = store.load_results(tune_path, "summary")
    score = str(protocol.verdict.params.get("score", "auto"))
    s = final_scores(SweepData(summary=summary), score)
    chosen: dict[str, dict[str, Any]] = {}
    table: dict[str, Any] = {}
    for algo in protocol.algorithms:
        if not algo.tune:
            continue
        label = algo.label or algo.name
        mine = s[s["cfg.label"] == label]
        keys = list(algo.tune)
        means = {}
        for values in itertools.product(*(algo.tune[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            hit = mine
            for k, v in point.items():
                first = k.split("+")[0]
                hit = hit[hit[f"cfg.{first}"] == v]
            if len(hit):
                means[json.dumps(point)] = (point, float(hit["score"].mean()), len(hit))
        if not means:
            continue
        best = max(means.values(), key=lambda t: t[1])  # max keeps the first of equal scores
        chosen[label] = best[0]
        table[label] = {k: f"{m:.4g} ({n} runs)" for k, (_, m, n) in means.items()}
    return chosen, table


def _run_specs(
    root: Path,
    sweep: str,
    title: str,
    specs: list[RunSpec],
    grid: dict[str, Any],
    *,
    backend: str,
    workers: int,
    address: str | None,
    batch_size: int,
    progress: bool,
) -> tuple[int, int]:
    """Run (or resume) ``specs`` as sweep ``sweep``; returns (ran, skipped)."""
    runs = {store.run_id(stored_config(s)): s for s in specs}
    done = store.completed_runs(root, sweep) if store.sweep_dir(root, sweep).exists() else set()
    todo = [(rid, s) for rid, s in runs.items() if rid not in done]
    name = title.split(" ")[0]  # the protocol's name
    store.write_manifest(root, sweep, protocol=name, grid=grid, runs=list(runs))
    batches = make_batches(todo, batch_size)
    columns = (
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("runs", total=len(runs), completed=len(runs) - len(todo))
        run = _execute(root, sweep, batches, backend=backend, workers=workers, address=address)
        for finished in run:
            bar.advance(task, len(finished))
    store.write_manifest(root, sweep, protocol=name, runs=list(runs))
    return len(todo), len(runs) - len(todo)


def run_protocol(
    protocol: Protocol,
    out: str | Path,
    *,
    budget: str = "quick",
    overrides: dict[str, Any] | None = None,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) every run of ``protocol`` under ``out/<name>-<budget>`` and judge it.

    ``backend`` "local": ``workers`` == 1 runs the batches in this process, more in a process
    pool. ``backend`` "ray": each batch is a Ray task; ``address`` connects to a Ray cluster
    ("auto", "ray://host:10001"), otherwise a local Ray instance of ``workers`` CPUs is started
    for this call and shut down after it (``ray_session``: an already initialised Ray is reused).
    Ray workers write their runs straight into ``out``: on a cluster, ``out`` must be a shared
    filesystem mounted at the same absolute path on every node (NFS, a cluster volume), or the
    runs land on the workers' disks and the driver finds no results to resume from or judge.

    A protocol with tuned algorithms runs its tuning sweep ``<name>-<budget>-tune`` first
    (module docstring, "tuning"); the chosen settings are stored in ``tuned.json`` beside the
    verdict and named in its evidence.
    """
    check_backend(backend, workers, address)
    root = Path(out)
    sweep = f"{protocol.name}-{budget}"
    opts = dict(
        backend=backend, workers=workers, address=address, batch_size=batch_size, progress=progress
    )
    tuned, table = None, {}
    ran = skipped = 0
    if protocol.tuned():
        tsweep = f"{sweep}-tune"
        grid = {"budget": budget, "tune_seeds": protocol.tune_seeds, "overrides": overrides or {}}
        r, k = _run_specs(
            root, tsweep, f"{protocol.name} tuning ({budget})",
            expand_tuning(protocol, budget, overrides), grid, **opts,
        )  # fmt: skip
        ran, skipped = ran + r, skipped + k
        tuned, table = choose_tuned(protocol, store.sweep_dir(root, tsweep))
    specs = expand(protocol, budget, overrides, tuned)
    grid = {"budget": budget, "axes": protocol.grid, "overrides": overrides or {}}
    if tuned:
        grid["tuned"] = tuned
    r, k = _run_specs(root, sweep, f"{protocol.name} ({budget})", specs, grid, **opts)
    ran, skipped = ran + r, skipped + k
    sweep_path = store.sweep_dir(root, sweep)
    verdict = judge(protocol, sweep_path, budget=budget, overrides=overrides)
    if tuned is not None:
        store.atomic_write_bytes(
            sweep_path / "tuned.json", json.dumps({"chosen": tuned, "mean_score": table}).encode()
        )
        verdict.evidence["tuned"] = tuned
        verdict.evidence["tuning_mean_scores"] = table
        verdict.scope += f"; each algorithm tuned on seeds {protocol.tune_seeds}: {tuned}"
    store.atomic_write_bytes(sweep_path / "verdict.json", verdict.to_json().encode())
    return SweepResult(sweep_path, verdict, ran=ran, skipped=skipped)
