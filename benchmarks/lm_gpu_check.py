"""The language-model path on a GPU: GRPO iterations on CUDA in float32 and bfloat16, with the
sampler in the trainer's dtype or in bfloat16 beside a float32 trainer (importance-corrected),
printing per configuration the rollout and update throughput, the exact probe KL and the
held-out accuracy, and checking that log-probabilities stay float32 under a bfloat16 model.

    python benchmarks/lm_gpu_check.py [--device cuda] [--model small] [--iterations 5]

Runs on CPU too (``--device cpu``), slowly; the CPU test suite covers the same code.
"""

from __future__ import annotations

import argparse
import time

import torch

from grpo_lab.algorithms.grpo_lm import LMGRPOConfig, LMGRPOTrainer
from grpo_lab.envs.lm_tasks import make_task
from grpo_lab.policies.lm import build_model, token_logprobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="small")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--sft-steps", type=int, default=300)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")

    m = build_model(args.model, vocab_size=20, context_len=32, device=args.device, dtype="bfloat16")
    ids = torch.randint(3, 20, (4, 12), device=args.device)
    lp = token_logprobs(m, ids, torch.ones_like(ids), start=4)
    print(
        f"bfloat16 model: log-prob dtype {lp.dtype} (want float32), finite {bool(lp.isfinite().all())}"
    )

    task = make_task("addition", digits=2)
    cases = [
        ("float32", "current", "none"),
        ("bfloat16", "current", "none"),
        ("float32", "bfloat16", "token"),
        ("float32", "bfloat16", "sequence"),
    ]
    for dtype, sampler, correction in cases:
        cfg = LMGRPOConfig(
            model=args.model, device=args.device, dtype=dtype, sampler=sampler,
            correction=correction, sft_steps=args.sft_steps, sft_lr=1e-3, n_train=2000, n_eval=200,
            prompts_per_batch=args.prompts, group_size=8, iterations=args.iterations,
            eval_every=args.iterations, lr=3e-4, loss="dr_grpo", cache_dir="/tmp/grpo_lab_cache",
        )  # fmt: skip
        t0 = time.perf_counter()
        tr = LMGRPOTrainer(task, cfg)
        t_init = time.perf_counter() - t0
        for it in range(cfg.iterations):
            tr.update(it)
        rec = tr.finish()
        st, itm = rec.stacked("step"), rec.stacked("iter")
        print(
            f"{dtype:8s} trainer, sampler {sampler:8s} correction {correction:8s}: init {t_init:5.1f} s; "
            f"rollout {float(itm['rollout_tok_per_s'][0].median()):8.0f} tok/s, update "
            f"{float(itm['update_tok_per_s'][0].median()):8.0f} tok/s; probe KL "
            f"{float(st['probe_kl'][0].mean()):.2e}; ratio max {float(st['ratio_max'][0].max()):.3f}; "
            f"accuracy {float(rec.summary['eval_acc_start'][0]):.3f} -> "
            f"{float(rec.summary['eval_acc_final'][0]):.3f}; status {rec.status[0]}"
        )


if __name__ == "__main__":
    main()
