"""Sweeps: expand a protocol's grid into runs, run them batched, store them, resume, judge.

    runs     = expand(protocol, budget)                 one RunSpec per algorithm x grid point
    run id   = store.run_id(stored config)              a hash of everything that fixes the numbers
    batches  = runs grouped by their non-batchable fields (lr, eps, seed, ... vary inside a batch:
               grpo_lab.algorithms.ALGORITHMS[name].batchable), at most ``batch_size`` runs each
    resume   = runs whose summary.json exists are skipped: a sweep killed at any point and
               restarted completes every run exactly once, with the same numbers (a run's numbers
               depend on its own config and seed only, not on its batch-mates)
    failure  = a diverging configuration is recorded by the trainer ("diverged", with its step);
               a batch that raises is retried one run at a time, and a run that still raises is
               stored with status "error" and its message; the sweep goes on
    verdict  = the protocol's rule on the stored steps, written to ``verdict.json``

Backends: "local" runs the batches in this process, or in ``workers`` processes.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from grpo_lab import store
from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs.tabular import make_env
from grpo_lab.protocols import VERDICTS, Protocol, RunSpec, Verdict, expand

BACKENDS = ("local",)


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
    out = []
    for i, (rid, spec) in enumerate(batch):
        store.write_run(root, sweep, rid, stored_config(spec), record, i, wall_time=wall)
        out.append((rid, record.status[i]))
    return out


def _execute(
    root: Path, sweep: str, batches: list[list[tuple[str, RunSpec]]], workers: int, progress: bool
) -> Iterator[list[tuple[str, str]]]:
    if workers <= 1:
        for b in batches:
            yield run_batch(str(root), sweep, b)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_batch, str(root), sweep, b) for b in batches]
        for f in futures:
            yield f.result()


def judge(protocol: Protocol, sweep_path: Path) -> Verdict:
    """Apply the protocol's verdict rule to the stored steps of its sweep."""
    steps = store.load_results(sweep_path, "steps")
    status, summary, evidence = VERDICTS.get(protocol.verdict.rule)(steps, protocol.verdict.params)
    return Verdict(protocol.name, protocol.claim, status, summary, evidence)


def run_protocol(
    protocol: Protocol,
    out: str | Path,
    *,
    budget: str = "quick",
    overrides: dict[str, Any] | None = None,
    backend: str = "local",
    workers: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) every run of ``protocol`` under ``out/<name>-<budget>`` and judge it."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(out)
    sweep = f"{protocol.name}-{budget}"
    specs = expand(protocol, budget, overrides)
    runs = {store.run_id(stored_config(s)): s for s in specs}
    done = store.completed_runs(root, sweep) if store.sweep_dir(root, sweep).exists() else set()
    todo = [(rid, s) for rid, s in runs.items() if rid not in done]
    store.write_manifest(
        root,
        sweep,
        protocol=protocol.name,
        grid={"budget": budget, "axes": protocol.grid, "overrides": overrides or {}},
        runs=list(runs),
    )
    batches = make_batches(todo, batch_size)
    columns = (
        TextColumn(f"[bold]{protocol.name}[/] ({budget})"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("runs", total=len(runs), completed=len(runs) - len(todo))
        for finished in _execute(root, sweep, batches, workers, progress):
            bar.advance(task, len(finished))
    store.write_manifest(root, sweep, protocol=protocol.name, runs=list(runs))
    sweep_path = store.sweep_dir(root, sweep)
    verdict = judge(protocol, sweep_path)
    store.atomic_write_bytes(sweep_path / "verdict.json", verdict.to_json().encode())
    return SweepResult(sweep_path, verdict, ran=len(todo), skipped=len(runs) - len(todo))
