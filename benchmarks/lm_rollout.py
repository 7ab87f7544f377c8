"""Rollout speed of grpo_lab's KV-cache sampler vs transformers' generate; one GRPO step's split.

A model from TINY_CONFIGS (vocab 40, context 128) gets B random prompts of 6-10 tokens, left-padded.
1. Sampling, side by side after a warm-up: ``grpo_lab.policies.lm.sample`` and ``model.generate``
   (do_sample, temperature 1, top_p 1), both with an EOS id outside the vocabulary, so every row
   generates all ``--new-tokens`` tokens; the best of ``--repeats`` interleaved timings of each,
   in tokens/s.
2. One GRPO step (arXiv 2402.03300): the rollout (``sample`` with the real EOS id 2, so rows may
   stop early; tokens/s counts completion tokens) vs the update (``token_logprobs`` on the
   rollout, the clipped surrogate ``grpo_lab.losses.policy_loss`` with token-mean aggregation,
   backward, AdamW step); the fastest of ``--repeats`` steps after a warm-up step. Rewards are
   random; advantages are group-normalised (G >= 2) or batch-normalised (G = 1): the timing
   does not depend on their values.
Both paths use the same torch thread count (default: the cores this process may use).

    .venv/bin/python benchmarks/lm_rollout.py [--model small] [--prompts 64] [--new-tokens 32]
        [--group-size 1] [--threads N] [--dtype float32] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from grpo_lab.losses import policy_loss
from grpo_lab.policies.lm import (
    DTYPES,
    TINY_CONFIGS,
    Rollout,
    build_model,
    repeat_prompts,
    sample,
    token_logprobs,
)

VOCAB, CONTEXT = 40, 128
PAD, BOS, EOS = 0, 1, 2
NEVER = VOCAB  # an EOS id outside the vocabulary: never produced, every row runs to the end


def random_prompts(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n left-padded prompts: BOS + 5..9 tokens drawn from 3..V-1. (n, P) ids and mask."""
    lengths = torch.randint(6, 11, (n,), generator=gen)  # (n,) incl. BOS
    width = int(lengths.max())
    ids = torch.randint(3, VOCAB, (n, width), generator=gen)  # (n, P)
    cols = torch.arange(width)
    mask = (cols >= width - lengths[:, None]).long()  # (n, P): 0...0 1...1
    ids[cols == width - lengths[:, None]] = BOS
    return ids.masked_fill(mask == 0, PAD), mask


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Wall seconds of fn() and its result (synchronising an accelerator before reading)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def advantages(num: int, group_size: int, gen: torch.Generator) -> torch.Tensor:
    """Random rewards, normalised per group of G (or over the batch when G = 1). (B,)"""
    r = torch.rand(num, generator=gen).view(-1, group_size if group_size > 1 else num)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-6)).reshape(-1)


def update(
    model: torch.nn.Module, opt: torch.optim.Optimizer, roll: Rollout, adv: torch.Tensor
) -> float:
    """One policy-gradient step on a rollout: token_logprobs, clipped surrogate, AdamW."""
    logp = token_logprobs(model, roll.input_ids, roll.attention_mask, start=roll.prompt_len)
    loss, _ = policy_loss(
        logp, roll.logprobs, adv.to(logp.device), roll.completion_mask, eps_low=0.2
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=list(TINY_CONFIGS), default="small")
    ap.add_argument("--prompts", type=int, default=64, help="distinct prompts B")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=1, help="completions per prompt G")
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads, the same for every path (default: the cores available)",
    )
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each sampler and GRPO steps (best)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(
        args.model,
        vocab_size=VOCAB,
        context_len=CONTEXT,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    gen = torch.Generator().manual_seed(args.seed)
    ids, mask = random_prompts(args.prompts, gen)
    if args.group_size > 1:
        ids, mask = repeat_prompts(ids, mask, args.group_size)
    ids, mask = ids.to(args.device), mask.to(args.device)
    rows, n_new = ids.shape[0], args.new_tokens
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.model} ({n_params:,} params, {args.dtype}, {args.device}), "
        f"{args.threads} threads; {rows} rows (B={args.prompts} x G={args.group_size}), "
        f"prompt width {ids.shape[1]}, {n_new} new tokens; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores before the run"
    )

    sampler_gen = torch.Generator(device=args.device).manual_seed(args.seed)

    def ours() -> torch.Tensor:
        kw = dict(max_new_tokens=n_new, eos_id=NEVER, pad_id=PAD, generator=sampler_gen)
        return sample(model, ids, mask, **kw).input_ids

    def hf() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(
                ids,
                attention_mask=mask,
                do_sample=True,
                max_new_tokens=n_new,
                top_p=1.0,
                temperature=1.0,
                pad_token_id=PAD,
                eos_token_id=NEVER,
            )

    torch.manual_seed(args.seed)  # generate draws from the global generator
    paths = {"grpo_lab sample": ours, "transformers generate": hf}
    for fn in paths.values():  # warm-up
        out = fn()
        assert out.shape == (rows, ids.shape[1] + n_new), out.shape
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # interleaved, so a change of machine load hits both
        for name, fn in paths.items():
            runs[name].append(timed(fn, args.device)[0])
    times = {name: min(t) for name, t in runs.items()}
    tokens = rows * n_new
    print(f"\nsampling ({tokens} tokens per call, best of {args.repeats} after a warm-up)")
    for name, sec in times.items():
        print(f"  {name:<22} {sec:8.3f} s  {tokens / sec:10.0f} tokens/s")
    ratio = times["transformers generate"] / times["grpo_lab sample"]
    print(f"  ratio sample/generate throughput: {ratio:.2f}x")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    roll_kw = dict(max_new_tokens=n_new, eos_id=EOS, pad_id=PAD, generator=sampler_gen)
    steps = []  # (rollout s, update s, completion tokens, loss) per step
    for _ in range(1 + args.repeats):  # the first step warms up (AdamW state, allocator)
        t_roll, roll = timed(lambda: sample(model, ids, mask, **roll_kw), args.device)
        adv = advantages(rows, args.group_size, gen)
        t_upd, loss = timed(lambda r=roll, a=adv: update(model, opt, r, a), args.device)
        steps.append((t_roll, t_upd, int(roll.completion_mask.sum()), loss))
    t_roll, t_upd, n_tok, loss = min(steps[1:], key=lambda s: s[0] + s[1])
    total = t_roll + t_upd
    print(
        f"\none GRPO step (the fastest of {args.repeats}: {n_tok} completion tokens, loss {loss:+.4f})"
    )
    for name, sec in (("rollout", t_roll), ("update", t_upd)):
        print(f"  {name:<8} {sec:8.3f} s  {n_tok / sec:10.0f} tokens/s  {sec / total:4.0%}")


if __name__ == "__main__":
    main()
