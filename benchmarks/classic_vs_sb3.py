"""grpo_lab's batched classic-control PPO / TRPO against Stable-Baselines3, side by side in one run.

1. PPO on CartPole-v1 with the RL Zoo's tuned hyperparameters in both libraries (8 envs x 32
   steps, batch 256, 20 epochs, gamma 0.98, GAE lambda 0.8, lr 1e-3 and clip 0.2 both annealed
   linearly to 0, ent_coef 0, 64x64 tanh MlpPolicy; ``ClassicPPOConfig``'s defaults), one run per
   seed in each library (grpo_lab: ``train_classic_ppo`` with C = 1).
2. TRPO on CartPole-v1: sb3-contrib's ``TRPO`` with its defaults against ``train_classic_trpo``
   (``ClassicTRPOConfig``'s defaults), 2 envs x 512 steps unless ``--trpo-envs/--trpo-steps``.
3. The sweep: ``--sweep-runs`` PPO runs on a clip x lr grid (clip 0.1..0.4 x lr 3e-4..3e-3,
   row-major, the first n; beyond 16 the grid repeats; seed = run index) as ONE batched grpo_lab
   call (C = n) against the same n SB3 runs one after another. ``--sweep-sb3-sample k`` times only
   k random SB3 runs and multiplies the mean time by n (printed as an estimate).

Printed first: torch threads, CPU count, load average, library versions. Then per library and
algorithm: the evaluation return per seed (mean of ``--eval-episodes`` deterministic episodes:
``record.summary["eval_return"]`` / SB3's ``evaluate_policy``), how many seeds reach >= 475, the
wall time, training env steps per second and the ratio grpo_lab / SB3. "train" time = building the
environments and model + training, evaluation excluded (grpo_lab's ``evaluate`` is timed by
wrapping it and subtracted from the call's wall time; SB3's ``evaluate_policy`` is timed apart).
grpo_lab's per-iteration ``env_steps_per_s`` (rollout only, no update) is printed as well.
Both libraries run in this process on the CPU with the same ``torch.set_num_threads``.

    .venv/bin/python benchmarks/classic_vs_sb3.py [--timesteps 100000] [--seeds 3]
        [--sweep-runs 16] [--sweep-timesteps T] [--sweep-sb3-sample 0] [--threads 1]

Needs the ``bench`` extra (stable-baselines3, sb3-contrib); exits with a message without it.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from grpo_lab.algorithms import classic, classic_trpo
from grpo_lab.algorithms.classic import ClassicPPOConfig, train_classic_ppo
from grpo_lab.algorithms.classic_trpo import ClassicTRPOConfig, train_classic_trpo
from grpo_lab.algorithms.common import RunRecord

SOLVED = 475.0
CLIPS = (0.1, 0.2, 0.3, 0.4)
LRS = (3e-4, 1e-3, 2e-3, 3e-3)


@dataclass
class Run:
    """One training run's outcome: eval return, env steps done, train and eval seconds."""

    eval_return: float
    steps: int
    train_s: float
    eval_s: float


@dataclass
class Batch:
    """A batched grpo_lab call: C runs, one wall time, the rollout-only steps/s (median)."""

    runs: list[Run]
    wall_s: float
    eval_s: float
    rollout_steps_per_s: float


# ----------------------------------------------------------------------------- helpers


def import_sb3() -> tuple[ModuleType, ModuleType]:
    """stable_baselines3 and sb3_contrib, or exit with a message (the optional ``bench`` extra)."""
    try:
        import sb3_contrib
        import stable_baselines3
    except ImportError as e:
        sys.exit(
            f"this benchmark needs stable-baselines3 and sb3-contrib ({e}); install the extra: "
            "pip install -e '.[bench]'"
        )
    return stable_baselines3, sb3_contrib


def linear(v0: float) -> Callable[[float], float]:
    """SB3 schedule: v0 times the remaining progress (1 -> 0), i.e. annealed linearly to 0."""
    return lambda f: f * v0


def sweep_grid(n: int) -> list[tuple[float, float]]:
    """The first n (clip, lr) pairs of the row-major CLIPS x LRS grid, repeating beyond 16."""
    pairs = [(c, lr) for c in CLIPS for lr in LRS]
    return [pairs[i % len(pairs)] for i in range(n)]


@contextmanager
def timed_grpo_eval() -> Iterator[list[float]]:
    """Time grpo_lab's ``evaluate`` inside the trainers (each call's seconds appended)."""
    times: list[float] = []
    orig = classic.evaluate

    def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = orig(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    classic.evaluate = classic_trpo.evaluate = wrapped
    try:
        yield times
    finally:
        classic.evaluate = classic_trpo.evaluate = orig


def machine_facts(sb3: ModuleType, contrib: ModuleType) -> None:
    import gymnasium

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {platform.processor() or platform.machine()}, os.cpu_count={os.cpu_count()}, "
        f"usable cores={len(os.sched_getaffinity(0))}, load average (1/5/15 min)={load}"
    )
    print(
        f"torch {torch.__version__} threads={torch.get_num_threads()} (interop "
        f"{torch.get_num_interop_threads()}), device=cpu; gymnasium {gymnasium.__version__}, "
        f"stable-baselines3 {sb3.__version__}, sb3-contrib {contrib.__version__}, "
        f"python {platform.python_version()}"
    )


# ----------------------------------------------------------------------------- grpo_lab


def grpo_batch(train: Callable[[None, Sequence[Any]], RunRecord], cfgs: Sequence[Any]) -> Batch:
    """One batched grpo_lab call over ``cfgs`` (C = len(cfgs)); train time = wall - eval time."""
    with timed_grpo_eval() as evals:
        t0 = time.perf_counter()
        rec = train(None, list(cfgs))
        wall = time.perf_counter() - t0
    eval_s = sum(evals)
    ret = rec.summary["eval_return"].tolist()
    steps = rec.summary["env_steps"].tolist()
    sps = float(rec.stacked("iter")["env_steps_per_s"].double().median())
    train_s = wall - eval_s
    runs = [Run(r, int(s), train_s, eval_s) for r, s in zip(ret, steps, strict=True)]
    return Batch(runs, wall, eval_s, sps)


def grpo_each(
    train: Callable[[None, Sequence[Any]], RunRecord], cfgs: Sequence[Any]
) -> tuple[list[Run], float]:
    """One grpo_lab call per config (C = 1); the runs and the median rollout-only steps/s."""
    batches = [grpo_batch(train, [c]) for c in cfgs]
    sps = sorted(b.rollout_steps_per_s for b in batches)[len(batches) // 2]
    return [b.runs[0] for b in batches], sps


# ----------------------------------------------------------------------------- SB3


def sb3_run(
    make_model: Callable[[Any, int], Any], timesteps: int, seed: int, n_envs: int, episodes: int
) -> Run:
    """Build (envs + model) and train one SB3 model, then evaluate it apart."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    t0 = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed)
    model = make_model(env, seed)
    model.learn(total_timesteps=timesteps)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True)
    eval_s = time.perf_counter() - t0
    env.close()
    eval_env.close()
    return Run(float(mean), int(model.num_timesteps), train_s, eval_s)


def sb3_ppo_maker(clip: float, lr: float) -> Callable[[Any, int], Any]:
    """SB3 PPO with the RL Zoo's CartPole-v1 hyperparameters (lr, clip annealed linearly to 0)."""
    from stable_baselines3 import PPO

    def make(env: Any, seed: int) -> Any:
        return PPO(
            "MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
            gae_lambda=0.8, learning_rate=linear(lr), clip_range=linear(clip), ent_coef=0.0,
            device="cpu", seed=seed, verbose=0,
        )  # fmt: skip

    return make


def sb3_trpo_maker(n_steps: int) -> Callable[[Any, int], Any]:
    """sb3-contrib TRPO with its defaults (n_steps from the options)."""
    from sb3_contrib import TRPO

    def make(env: Any, seed: int) -> Any:
        return TRPO("MlpPolicy", env, n_steps=n_steps, device="cpu", seed=seed, verbose=0)

    return make


# ----------------------------------------------------------------------------- printing


def print_runs(
    label: str, runs: Sequence[Run], seeds: Sequence[int], rollout_sps: float | None = None
) -> float:
    """Per-seed returns, solved count, times, train steps/s; returns the mean train steps/s."""
    rets = ", ".join(f"s{s}={r.eval_return:.1f}" for s, r in zip(seeds, runs, strict=True))
    solved = sum(r.eval_return >= SOLVED for r in runs)
    train = sum(r.train_s for r in runs)
    ev = sum(r.eval_s for r in runs)
    sps = sum(r.steps for r in runs) / train
    extra = f"; rollout-only {rollout_sps:,.0f}/s (median iter)" if rollout_sps else ""
    print(f"  {label:9s} eval return: {rets}  -> {solved}/{len(runs)} seeds >= {SOLVED:.0f}")
    print(
        f"  {'':9s} wall {train + ev:7.2f} s (train {train:7.2f} s + eval {ev:5.2f} s), "
        f"train env steps/s {sps:,.0f}{extra}"
    )
    return sps


def compare(
    title: str, ours: list[Run], theirs: list[Run], seeds: Sequence[int], sps: float
) -> None:
    print(title)
    a = print_runs("grpo_lab", ours, seeds, sps)
    b = print_runs("SB3", theirs, seeds)
    print(f"  ratio grpo_lab / SB3 train env steps/s: {a / b:.2f}x")


# ----------------------------------------------------------------------------- sections


def bench_ppo(args: argparse.Namespace) -> None:
    seeds = list(range(args.seeds))
    base = ClassicPPOConfig(
        total_timesteps=args.timesteps, eval_episodes=args.eval_episodes, backend=args.backend
    )
    cfgs = [base.model_copy(update={"seed": s}) for s in seeds]
    ours, sps = grpo_each(train_classic_ppo, cfgs)
    make = sb3_ppo_maker(0.2, 1e-3)
    theirs = [sb3_run(make, args.timesteps, s, base.num_envs, args.eval_episodes) for s in seeds]
    compare(f"PPO CartPole-v1, {args.timesteps} steps, C=1 per seed:", ours, theirs, seeds, sps)


def bench_trpo(args: argparse.Namespace) -> None:
    seeds = list(range(args.seeds))
    base = ClassicTRPOConfig(
        total_timesteps=args.timesteps, eval_episodes=args.eval_episodes, backend=args.backend,
        n_envs=args.trpo_envs, n_steps=args.trpo_steps,
    )  # fmt: skip
    cfgs = [base.model_copy(update={"seed": s}) for s in seeds]
    ours, sps = grpo_each(train_classic_trpo, cfgs)
    make = sb3_trpo_maker(args.trpo_steps)
    theirs = [sb3_run(make, args.timesteps, s, args.trpo_envs, args.eval_episodes) for s in seeds]
    title = (
        f"TRPO CartPole-v1, {args.timesteps} steps, {args.trpo_envs} envs x {args.trpo_steps} "
        "steps, C=1 per seed:"
    )
    compare(title, ours, theirs, seeds, sps)


def bench_sweep(args: argparse.Namespace) -> None:
    n, steps = args.sweep_runs, args.sweep_timesteps or args.timesteps
    grid = sweep_grid(n)
    base = ClassicPPOConfig(
        total_timesteps=steps, eval_episodes=args.eval_episodes, backend=args.backend
    )
    cfgs = [
        base.model_copy(update={"clip_coef": c, "lr": lr, "seed": i})
        for i, (c, lr) in enumerate(grid)
    ]
    batch = grpo_batch(train_classic_ppo, cfgs)
    k = args.sweep_sb3_sample or n
    sample = sorted(random.Random(0).sample(range(n), min(k, n)))
    theirs = [
        sb3_run(sb3_ppo_maker(*grid[i]), steps, i, base.num_envs, args.eval_episodes)
        for i in sample
    ]
    sb3_train = sum(r.train_s for r in theirs) / len(theirs) * n
    sb3_wall = sum(r.train_s + r.eval_s for r in theirs) / len(theirs) * n
    est = "" if len(sample) == n else f" (ESTIMATE: {len(sample)} runs timed, x {n}/{len(sample)})"
    ours_train = batch.wall_s - batch.eval_s
    print(f"Sweep: {n} PPO runs (clip x lr grid, seeds 0..{n - 1}), {steps} steps each:")
    print(
        f"  grpo_lab  one batched call (C={n}): wall {batch.wall_s:7.2f} s "
        f"(train {ours_train:7.2f} s + eval {batch.eval_s:5.2f} s), "
        f"{sum(r.eval_return >= SOLVED for r in batch.runs)}/{n} runs >= {SOLVED:.0f}"
    )
    print(
        f"  SB3       {n} runs in sequence: wall {sb3_wall:7.2f} s (train {sb3_train:7.2f} s)"
        f"{est}, {sum(r.eval_return >= SOLVED for r in theirs)}/{len(theirs)} timed runs >= "
        f"{SOLVED:.0f}"
    )
    print(
        f"  ratio SB3 / grpo_lab wall time: train {sb3_train / ours_train:.1f}x, "
        f"with eval {sb3_wall / batch.wall_s:.1f}x   (target >= 8x)"
    )
    print(f"  returns grpo_lab: {', '.join(f'{r.eval_return:.0f}' for r in batch.runs)}")
    print(f"  returns SB3 (runs {sample}): {', '.join(f'{r.eval_return:.0f}' for r in theirs)}")


def warm_up() -> None:
    """First-call costs (imports, allocator, kernels) are not the subject: tiny runs of each."""
    grpo_batch(train_classic_ppo, [ClassicPPOConfig(total_timesteps=256, eval_episodes=1)])
    grpo_batch(
        train_classic_trpo, [ClassicTRPOConfig(total_timesteps=256, n_steps=128, eval_episodes=1)]
    )
    sb3_run(sb3_ppo_maker(0.2, 1e-3), 256, 0, 8, 1)
    sb3_run(sb3_trpo_maker(128), 256, 0, 2, 1)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=100_000, help="per run (PPO and TRPO)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 per library and algorithm")
    ap.add_argument("--eval-episodes", type=int, default=20, help="deterministic eval episodes")
    ap.add_argument("--trpo-envs", type=int, default=2)
    ap.add_argument("--trpo-steps", type=int, default=512)
    ap.add_argument("--sweep-runs", type=int, default=16, help="0 skips the sweep")
    ap.add_argument("--sweep-timesteps", type=int, default=0, help="default: --timesteps")
    ap.add_argument(
        "--sweep-sb3-sample", type=int, default=0, help="time k SB3 sweep runs (0 = all)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, both libraries")
    ap.add_argument("--backend", choices=["torch", "gymnasium"], default="torch", help="grpo_lab")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ppo", "trpo", "sweep"])
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    sb3, contrib = import_sb3()
    torch.set_num_threads(args.threads)
    machine_facts(sb3, contrib)
    print(
        f"grpo_lab backend={args.backend}; eval = mean of {args.eval_episodes} deterministic "
        "episodes; train = env/model construction + training, evaluation excluded"
    )
    warm_up()
    if "ppo" not in args.skip:
        bench_ppo(args)
    if "trpo" not in args.skip:
        bench_trpo(args)
    if "sweep" not in args.skip and args.sweep_runs > 0:
        bench_sweep(args)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
