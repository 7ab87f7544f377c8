"""Batched vs looped GRPO sweep on a Garnet MDP: the speed ratio of the batched program.

A 16 x 16 grid of (eps, lr) configurations (256 runs) x 200 updates (one optimiser step per
iteration) on a 16-state, 4-action Garnet runs once as one batched program (C = 256 on the
leading axis) and config by config (C = 1 each). Looping all 256 takes long, so by default a
random subset of ``--loop-sample`` configurations is looped and the per-configuration time is
multiplied by 256 (printed as an estimate); ``--loop-sample 256`` loops them all. The looped runs
are also checked against the batched ones: the same seeds must give the same final policies.
Both paths use the same torch thread count (default: the cores this process may use).

    .venv/bin/python benchmarks/tabular_sweep.py [--configs 256] [--updates 200] [--loop-sample 8]

Measured 2026-11-26 on the 2-core CPU machine, audit on, float64, 2 threads: batched 36.7 s for
the 256 runs, looped 4.97 s per run (estimated 1272 s for 256): 34.7x; with 1 thread 29.6x.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from grpo_lab.algorithms.grpo import GRPOConfig, train_grpo
from grpo_lab.envs.tabular import make_env


def grid(n: int, updates: int, audit: bool) -> list[GRPOConfig]:
    side = int(round(n**0.5))
    eps = torch.linspace(0.05, 0.4, side).tolist()
    lrs = torch.logspace(-2, 0, side).tolist()
    base = GRPOConfig(iterations=updates, loss="dapo", audit=audit)
    cfgs = []
    for i, e in enumerate(eps):
        for j, lr in enumerate(lrs):
            loss = base.loss.model_copy(update={"eps_low": e, "eps_high": e})
            cfgs.append(base.model_copy(update={"loss": loss, "lr": lr, "seed": i * side + j}))
    return cfgs[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", type=int, default=256)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--loop-sample", type=int, default=8)
    ap.add_argument("--no-audit", action="store_true", help="skip the exact per-step audit")
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads, the same for both paths (default: the cores available)",
    )
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    mdp = make_env("garnet", num_states=16, num_actions=4, branching=2, seed=0, dtype=dtype)
    cfgs = grid(args.configs, args.updates, audit=not args.no_audit)
    train_grpo(mdp, grid(4, 2, True))  # warm-up: first-call costs are not the subject

    t0 = time.perf_counter()
    batched = train_grpo(mdp, cfgs)
    t_batched = time.perf_counter() - t0

    sample = sorted(random.Random(0).sample(range(len(cfgs)), min(args.loop_sample, len(cfgs))))
    t0 = time.perf_counter()
    max_diff = 0.0
    for c in sample:
        alone = train_grpo(mdp, cfgs[c])
        max_diff = max(max_diff, float((alone.final_probs[0] - batched.final_probs[c]).abs().max()))
    t_loop_each = (time.perf_counter() - t0) / len(sample)
    t_looped = t_loop_each * len(cfgs)
    est = "" if len(sample) == len(cfgs) else f" (estimated from {len(sample)} looped runs)"

    print(
        f"Garnet S=16 (+1 terminal) A=4, {len(cfgs)} configs x {args.updates} updates, "
        f"audit={'off' if args.no_audit else 'on'}, {args.dtype}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"batched: {t_batched:8.2f} s for all {len(cfgs)} runs")
    print(f"looped : {t_looped:8.2f} s for all {len(cfgs)} runs{est}; {t_loop_each:.3f} s per run")
    print(f"speed ratio batched/looped: {t_looped / t_batched:.1f}x   (target >= 30x)")
    print(
        f"batched == looped: max |final probs difference| = {max_diff:.2e} over {len(sample)} runs"
    )
    print(
        f"status: {sum(s == 'ok' for s in batched.status)} ok, "
        f"{sum(s != 'ok' for s in batched.status)} diverged"
    )


if __name__ == "__main__":
    main()
