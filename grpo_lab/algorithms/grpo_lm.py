"""GRPO on small causal language models with verifiable rewards (DeepSeekMath, arXiv 2402.03300
§4.1-4.2), with the loss functions, presets and instrumentation of the tabular lab.

Before the first iteration: a warm start (supervised fine-tuning on the train split's reference
answers, ``supervised_warm_start``; cached on disk and reused across a sweep), the frozen
reference pi_ref (the warm-started model), a fixed probe batch, and the accuracy on the eval split.

One iteration, read top to bottom:
  1. pi_old <- pi_theta (a frozen copy). Draw ``prompts_per_batch`` prompts of the train split and
     G = ``group_size`` completions of each with the behaviour policy mu: pi_old itself
     (``sampler = "current"``), a bfloat16 copy of it, or the policy of ``stale_iterations``
     iterations ago (the sampler/trainer mismatch of practice), with temperature / top-p and a
     KV cache (``grpo_lab.policies.lm.sample``).
  2. Rewards R_i from the task's verifier; group advantages A_i (``loss``'s baseline and scale).
  3. log pi_old of every completion token recomputed by the trainer in float32; importance
     weights w = pi_old / mu per ``correction`` (token or sequence, truncated at ``is_cap``), mu
     the log-probability each token was drawn with (``Rollout.logprobs``).
  4. ``epochs`` x ``minibatches``: loss = sum_t w_agg * w_IS * l_clip(r_t, A_i) (+ beta KL to
     pi_ref, - ent_coef H), the surrogate and aggregation of ``loss`` (grpo_lab.losses);
     gradient clipping at ``max_grad_norm``; AdamW with a learning-rate schedule.
  5. After every optimiser step (against pi_old): the ratio audit of the minibatch, clip
     fractions by side, sampled KL to pi_old (k3) and to pi_ref, and the exact full-vocabulary
     KL(pi_old || pi_theta) on the probe batch (``probe_kl``). Per iteration: reward mean/std, the
     fraction of groups with zero reward variance, response length, entropy, rollout and update
     time with tokens per second; the eval accuracy every ``eval_every`` iterations.

The policy pi and the temperature. The trainer's policy is the TEMPERED one,

    pi_theta(v | y_<t) = softmax(z_theta,t / tau)_v,    tau = ``temperature`` (greedy 0: tau = 1),

in every log-probability of the loss and the instrumentation: pi_theta, pi_old, pi_ref, the
entropy bonus, the ratio audit and ``probe_kl``. Reasons: (i) an importance weight must be
pi / mu of the distributions actually sampled from (``importance_weights``; IMPALA, arXiv
1802.01561 eq. 1), and mu samples softmax(z_mu / tau); with the raw log_softmax(z) on both sides
the weight of a ``sampler = "current"`` run is 1 but compares two distributions nobody sampled
from, and for the bf16 / stale samplers it is the raw-logit ratio, not pi / mu. (ii) The on-policy
ratio r = pi_theta / pi_old compares the same family in numerator and denominator either way
(raw / raw before, tempered / tempered now), so r = 1 at theta = theta_old in both; but the
samples come from the tempered pi_old, and the PPO surrogate's gradient at theta_old,
E_{y ~ pi_old}[A grad log pi_theta(y)] (arXiv 1707.06347 eq. 7), is the policy gradient of the
expected reward only when pi_theta is the sampled distribution: with raw log-probs it is
E_{softmax(z/tau)}[A (grad z_y - E_{softmax(z)} grad z)], the gradient of neither the raw nor
the tempered objective. Tempered log-probs make it (1/tau) E_q[A (grad z_y - E_q grad z)] =
grad E_{q_theta}[R] (top_p = 1), and the clip range and the k3 KL estimates (sampled from pi_old) then refer
to the sampled distribution. (At tau = 1 nothing changes.)

Top-p is sampling-only: pi stays the un-truncated tempered policy, because the nucleus of
pi_theta moves with theta (a sampled token can leave it: log pi_theta = -inf) and the truncated
mu has no mass on pi's tail, so no weight pi / mu is an unbiased correction. Hence
``correction`` != "none" requires ``top_p == 1`` (and ``temperature > 0``: greedy mu is a point
mass), checked by the config; with ``correction = "none"`` a top_p < 1 run keeps the usual
nucleus bias (tail tokens are never sampled, only pushed down through the normaliser).

Distributed: under ``torchrun`` (``torch.distributed`` initialised; gloo on CPU, nccl on GPU) the
model is wrapped in DistributedDataParallel and the global batch is split across ranks by
``rollout_shards`` (each shard of prompts is sampled with its own generator, so a W-process run
sees the same data as a 1-process run with the same shards). Every normaliser of the loss is the
global one (token and sequence counts all-reduced) and the per-rank loss is multiplied by W, so
DDP's gradient average equals the gradient of the global loss: the parameters after N steps equal
a 1-process run's (tests/test_grpo_lm.py). Run ``python -m grpo_lab.algorithms.grpo_lm --help``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo_lab import seeding
from grpo_lab.advantages import group_advantages
from grpo_lab.algorithms.common import RunRecord, derive_seed
from grpo_lab.envs.lm_tasks import (
    CharTokenizer,
    Example,
    LMTask,
    check_context,
    check_tokenizer,
    encode_prompts,
    encode_sft,
    task_tokenizer,
)
from grpo_lab.losses import (
    PRESETS,
    LossSpec,
    aggregation_weights,
    clip_fractions,
    clipped_surrogate,
    importance_weights,
    kl_penalty,
    ratio_metrics,
)

Tensor = torch.Tensor
BATCHABLE: tuple[str, ...] = ()  # one model per run
SCHEDULES = ("constant", "linear", "cosine")
TOKENIZER_FILE = "tokenizer.json"  # saved beside a checkpoint's weights
_PROMPT_STREAM, _SHARD_STREAM = seeding.LM_PROMPTS, seeding.LM_SHARDS  # shard s: LM_SHARDS + s


class LMGRPOConfig(BaseModel):
    """One GRPO run on a language-model task (module docstring); every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model: a grpo_lab.policies.lm.TINY_CONFIGS name or a local checkpoint directory
    model: str = "tiny"
    context_len: int = Field(64, ge=8)
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "cpu"
    # warm start: supervised fine-tuning on the train split (skipped when sft_steps = 0)
    sft_steps: int = Field(300, ge=0)
    sft_lr: float = Field(3e-3, gt=0.0)
    sft_batch: int = Field(64, ge=1)
    warm_start: str | None = None  # a checkpoint directory to start from instead of SFT
    cache_dir: str | None = None  # SFT checkpoints (default: $GRPO_LAB_CACHE, ~/.cache/grpo_lab)
    # data
    n_train: int = Field(2000, ge=1)
    n_eval: int = Field(200, ge=1)
    data_seed: int = 0
    # GRPO
    loss: LossSpec = Field(default_factory=lambda: PRESETS.get("grpo"))
    group_size: int = Field(8, ge=2)
    prompts_per_batch: int = Field(16, ge=1)
    iterations: int = Field(20, ge=1)
    epochs: int = Field(1, ge=1)
    minibatches: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    # sampling; the trainer's pi is softmax(z / temperature) (module docstring); top_p samples only
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)  # default: the task's longest answer + EOS
    # behaviour policy and its correction
    sampler: Literal["current", "bfloat16", "stale"] = "current"
    stale_iterations: int = Field(1, ge=1)
    correction: Literal["none", "token", "sequence"] = "none"
    is_cap: float | None = Field(None, gt=0.0)
    # instrumentation
    probe_prompts: int = Field(16, ge=1)
    eval_every: int = Field(10, ge=1)
    rollout_shards: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> LMGRPOConfig:
        if self.prompts_per_batch % self.rollout_shards:
            raise ValueError(
                f"prompts_per_batch={self.prompts_per_batch} must be a multiple of "
                f"rollout_shards={self.rollout_shards}"
            )
        per_shard = self.prompts_per_batch // self.rollout_shards
        if per_shard % self.minibatches:
            raise ValueError(
                f"the prompts of a shard ({per_shard}) must split into minibatches="
                f"{self.minibatches} equal parts"
            )
        if self.is_cap is not None and self.correction == "none":
            raise ValueError(
                "is_cap truncates importance weights: set correction to token/sequence"
            )
        if self.correction != "none" and self.top_p < 1.0:
            raise ValueError(
                f"correction={self.correction!r} needs top_p == 1, got top_p={self.top_p}: the "
                "weight pi/mu must be between the distributions sampled from, and a nucleus "
                "sampler has no mass on the tail of pi = softmax(z / temperature); set top_p=1 "
                "or correction='none'"
            )
        if self.correction != "none" and self.temperature == 0.0:
            raise ValueError(
                f"correction={self.correction!r} needs temperature > 0, got temperature=0 "
                "(greedy: mu is a point mass, pi/mu is no correction); set temperature > 0 or "
                "correction='none'"
            )
        if self.loss.advantage != "group":
            raise ValueError(
                f"loss.advantage must be 'group' for GRPO, got {self.loss.advantage!r}"
            )
        return self


def _lm() -> Any:
    """``grpo_lab.policies.lm``, imported on first use: importing transformers takes seconds, and
    ``grpo_lab.algorithms`` (which registers this trainer) is imported by every command."""
    from grpo_lab.policies import lm

    return lm


# ----------------------------------------------------------------------------- distributed


def _dist() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def _all_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks (x itself in one process), on x's device; NCCL reduces
    tensors on the rank's GPU, gloo on the CPU."""
    _, world = _dist()
    if world > 1:
        nccl = torch.distributed.get_backend() == "nccl"
        y = x.to(f"cuda:{torch.cuda.current_device()}" if nccl else "cpu", copy=True)
        torch.distributed.all_reduce(y)
        x = y.to(x.device)
    return x


def _rank_device(device: str, rank: int) -> str:
    """One GPU per process under torchrun: "cuda" means cuda:LOCAL_RANK there."""
    if device == "cuda" and _dist()[1] > 1:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


# ----------------------------------------------------------------------------- warm start


def supervised_warm_start(
    model: torch.nn.Module,
    tokenizer: CharTokenizer,
    examples: Sequence[Example],
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int = 0,
) -> list[float]:
    """Supervised fine-tuning: minimise the next-token cross-entropy of the reference answer and
    EOS given the prompt, ``steps`` AdamW steps on random batches of ``examples``. Returns the
    per-step losses. (GRPO learns nothing from groups that are all wrong: the warm start makes
    the base policy solve some prompts.)"""
    if steps == 0:
        return []
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(derive_seed(seed, 0, seeding.LM_SFT))
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(examples), (min(batch, len(examples)),), generator=g).tolist()
        ids, am, lm = (x.to(device) for x in encode_sft(tokenizer, [examples[i] for i in idx]))
        logits = model(input_ids=ids, attention_mask=am).logits[:, :-1].float()  # (B, L-1, V)
        target, m = ids[:, 1:], lm[:, 1:]  # token t+1 is predicted at position t
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        loss = (ce * m).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _cache_root(cfg: LMGRPOConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("GRPO_LAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "grpo_lab"


def warm_start_key(cfg: LMGRPOConfig, task: LMTask, train: Sequence[Example]) -> str:
    """What fixes the warm-start weights: the architecture, the SFT settings and data, the seed."""
    data = hashlib.sha256(json.dumps([[e.prompt, e.answer] for e in train]).encode()).hexdigest()
    key = [cfg.model, cfg.context_len, cfg.dtype, cfg.sft_steps, cfg.sft_lr, cfg.sft_batch]
    key += [cfg.seed, task.name, task.alphabet, data]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def warm_started_model(
    cfg: LMGRPOConfig, task: LMTask, tokenizer: CharTokenizer, train: Sequence[Example]
) -> torch.nn.Module:
    """The run's initial policy: ``warm_start`` if given; else the SFT checkpoint of this
    (model, SFT settings, data, seed) from the cache, trained and saved (atomically) when absent."""
    if cfg.warm_start is not None:
        path = Path(cfg.warm_start)
        if (path / TOKENIZER_FILE).is_file():  # the checkpoint's own tokenizer must fit the task
            check_tokenizer(CharTokenizer.load(path / TOKENIZER_FILE), task)
        return _lm().build_model(
            path, vocab_size=tokenizer.vocab_size, device=cfg.device, dtype=cfg.dtype
        )
    fresh = {"vocab_size": tokenizer.vocab_size, "context_len": cfg.context_len, "seed": cfg.seed}
    if cfg.sft_steps == 0:
        return _lm().build_model(cfg.model, device=cfg.device, dtype=cfg.dtype, **fresh)
    path = _cache_root(cfg) / f"sft-{warm_start_key(cfg, task, train)}"
    if (path / "config.json").is_file():
        return _lm().build_model(
            path, vocab_size=tokenizer.vocab_size, device=cfg.device, dtype=cfg.dtype
        )
    model = _lm().build_model(cfg.model, device=cfg.device, dtype="float32", **fresh)
    supervised_warm_start(
        model, tokenizer, train, steps=cfg.sft_steps, lr=cfg.sft_lr, batch=cfg.sft_batch,
        seed=cfg.seed,
    )  # fmt: skip
    rank, _ = _dist()
    if rank == 0:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        _lm().save_model(model, tmp)
        tokenizer.save(tmp / TOKENIZER_FILE)
        if not path.exists():
            os.replace(tmp, path)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype=getattr(torch, cfg.dtype))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def completions(
    model: torch.nn.Module,
    tokenizer: CharTokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Decoded completions of ``prompts`` (greedy by default), up to EOS."""
    device = next(model.parameters()).device
    ids, am = (x.to(device) for x in encode_prompts(tokenizer, prompts))
    ro = _lm().sample(
        model, ids, am, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id, temperature=temperature, top_p=top_p, generator=generator,
    )  # fmt: skip
    comp = ro.input_ids[:, ro.prompt_len :].cpu()
    return [tokenizer.decode(row) for row in comp]


def accuracy(
    model: torch.nn.Module,
    tokenizer: CharTokenizer,
    task: LMTask,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    batch: int = 256,
) -> float:
    """Fraction of ``examples`` whose greedy completion the task's verifier accepts."""
    right = 0
    for lo in range(0, len(examples), batch):
        part = examples[lo : lo + batch]
        outs = completions(
            model, tokenizer, [e.prompt for e in part], max_new_tokens=max_new_tokens
        )
        right += sum(task.is_correct(e, c) for e, c in zip(part, outs, strict=True))
    return right / len(examples)


# ----------------------------------------------------------------------------- the trainer


def _lr_lambda(cfg: LMGRPOConfig, total_steps: int) -> Any:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - frac)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return f


class LMGRPOTrainer:
    """The state of one GRPO run on a language-model task; ``update(it)`` is one iteration."""

    def __init__(self, task: LMTask, cfg: LMGRPOConfig) -> None:
        self.rank, self.world = _dist()
        cfg = cfg.model_copy(update={"device": _rank_device(cfg.device, self.rank)})
        self.task, self.cfg = task, cfg
        if cfg.rollout_shards % self.world:
            raise ValueError(
                f"rollout_shards={cfg.rollout_shards} must be a multiple of the world size "
                f"{self.world} (each rank samples whole shards)"
            )
        self.tok = task_tokenizer(task)
        check_tokenizer(self.tok, task)
        check_context(task, cfg.context_len)
        self.train, self.eval = task.splits(cfg.n_train, cfg.n_eval, cfg.data_seed)
        self.max_new = cfg.max_new_tokens or task.max_answer_len + 1
        self.model = warm_started_model(cfg, task, self.tok, self.train)
        self.device = next(self.model.parameters()).device
        self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)  # pi_ref
        self.stale: deque[dict[str, Tensor]] = deque(maxlen=cfg.stale_iterations + 1)
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        total = cfg.iterations * cfg.epochs * cfg.minibatches
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg, total))
        probe = self.eval[: cfg.probe_prompts]
        self.probe = tuple(x.to(self.device) for x in encode_sft(self.tok, probe))
        self.rec = RunRecord(status=["ok"], diverged_at=[None], error=[None])
        self.alive = torch.ones(1, dtype=torch.bool)
        self.step = 0
        self.acc_start = self.evaluate()

    def evaluate(self) -> float:
        return accuracy(self.model, self.tok, self.task, self.eval, max_new_tokens=self.max_new)

    @property
    def pi_temperature(self) -> float:
        """tau of the trainer's policy softmax(z / tau): ``temperature``, 1 when greedy."""
        return self.cfg.temperature if self.cfg.temperature > 0.0 else 1.0

    def score(
        self, model: torch.nn.Module, ids: Tensor, am: Tensor, start: int
    ) -> tuple[Tensor, Tensor]:
        """log pi(y_t | y_<t) and H[pi(. | y_<t)] of the trainer's policy pi = softmax(z / tau)
        (module docstring; tau = ``pi_temperature``) under ``model``: (B, L) -> (B, L - start)."""
        return _lm().token_logprobs_and_entropy(
            model, ids, am, start=start, temperature=self.pi_temperature
        )

    # -- 1. rollouts
    def _shards(self) -> range:
        per_rank = self.cfg.rollout_shards // self.world
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def _behaviour(self, old: torch.nn.Module) -> torch.nn.Module:
        cfg = self.cfg
        if cfg.sampler == "bfloat16":
            return copy.deepcopy(old).to(torch.bfloat16)
        if cfg.sampler == "stale" and len(self.stale) == self.stale.maxlen:
            stale = copy.deepcopy(old)
            stale.load_state_dict(self.stale[0])
            return stale
        return old  # "current" (and "stale" before enough history exists)

    def rollout(self, it: int, behaviour: torch.nn.Module) -> dict[str, Any]:
        """This rank's shards of the iteration's batch: prompts, completions, rewards."""
        cfg, G = self.cfg, self.cfg.group_size
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, it, _PROMPT_STREAM))
        idx = torch.randint(len(self.train), (cfg.prompts_per_batch,), generator=g)  # (P,)
        per_shard = cfg.prompts_per_batch // cfg.rollout_shards
        parts = []
        for s in self._shards():
            ex = [self.train[i] for i in idx[s * per_shard : (s + 1) * per_shard].tolist()]
            ids, am = encode_prompts(self.tok, [e.prompt for e in ex])
            ids, am = _lm().repeat_prompts(ids.to(self.device), am.to(self.device), G)  # (p*G, P)
            gen = torch.Generator(device=self.device)
            gen.manual_seed(derive_seed(cfg.seed, it, _SHARD_STREAM + s))
            ro = _lm().sample(
                behaviour, ids, am, max_new_tokens=self.max_new, eos_id=self.tok.eos_id,
                pad_id=self.tok.pad_id, temperature=cfg.temperature, top_p=cfg.top_p,
                generator=gen,
            )  # fmt: skip
            texts = [self.tok.decode(r) for r in ro.input_ids[:, ro.prompt_len :].cpu()]
            rewards = [self.task.reward(ex[i // G], t) for i, t in enumerate(texts)]
            parts.append((ro, torch.tensor(rewards, dtype=torch.float32)))
        return {"parts": parts}

    # -- 4. the loss of one minibatch
    def loss(
        self,
        ids: Tensor,
        am: Tensor,
        start: int,
        mask: Tensor,
        old_logp: Tensor,
        adv: Tensor,
        is_w: Tensor | None,
        ref_logp: Tensor,
        counts: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Shapes: ids, am (B, L); mask, old_logp, ref_logp, is_w (B, T); adv (B,); counts (3,)
        = global (tokens, sequences, batch size) of this minibatch."""
        lc = self.cfg.loss
        logp, ent = self.score(self.net, ids, am, start)  # (B, T) float32
        a = adv.to(logp.dtype).unsqueeze(-1).expand_as(logp)
        per_tok, ratio = clipped_surrogate(
            logp, old_logp, a, mask, lc.eps_low, lc.eps_high, lc.dual_clip, lc.ratio_level
        )
        if is_w is not None:
            per_tok = is_w * per_tok
        seq_len = mask.sum(-1, keepdim=True).expand_as(mask)  # (B, T)
        w = aggregation_weights(
            lc.agg, mask.reshape(1, -1), seq_len.reshape(1, -1), counts[1:2], int(counts[2]),
            lc.max_len or self.max_new, dtype=logp.dtype, num_tokens=counts[0:1],
        ).reshape(mask.shape)  # fmt: skip
        loss = (w * per_tok).sum()
        metrics = clip_fractions(ratio, a, mask, lc.eps_low, lc.eps_high, lc.dual_clip)
        metrics["pg_loss"] = loss.detach()
        if lc.beta > 0:
            loss = loss + lc.beta * (w * kl_penalty(logp, ref_logp, lc.kl_kind)).sum()
        if lc.ent_coef > 0:
            loss = loss - lc.ent_coef * (w * ent).sum()
        metrics["entropy"] = ((ent * mask).sum() / mask.sum()).detach()
        return loss, metrics

    def update(self, it: int) -> dict[str, Tensor]:
        cfg, lc, G = self.cfg, self.cfg.loss, self.cfg.group_size
        # 1. pi_old and the behaviour policy; rollouts
        old = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.stale.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        behaviour = self._behaviour(old)
        t0 = time.perf_counter()
        parts = self.rollout(it, behaviour)["parts"]
        t_roll = time.perf_counter() - t0
        # 2.-3. rewards, advantages, old / behaviour / reference log-probs per shard
        t0 = time.perf_counter()
        batch = []
        for ro, r in parts:
            adv = group_advantages(r, G, baseline=lc.adv_baseline, scale=lc.adv_scale)  # (p*G,)
            with torch.no_grad():
                start = ro.prompt_len
                old_logp, _ = self.score(old, ro.input_ids, ro.attention_mask, start)
                ref_logp, _ = self.score(self.ref, ro.input_ids, ro.attention_mask, start)
            mask = ro.completion_mask
            is_w = None
            if cfg.correction != "none":  # top_p == 1, tau > 0: mu = softmax(z_mu / tau)
                is_w = importance_weights(old_logp - ro.logprobs, mask, cfg.correction, cfg.is_cap)
            batch.append((ro, r, adv.to(self.device), old_logp, ref_logp, is_w))
        rewards = torch.cat([b[1] for b in batch])
        grp = rewards.reshape(-1, G)
        lengths = torch.cat([b[0].lengths.float().cpu() for b in batch])
        it_metrics = {
            "iteration": torch.tensor([float(it)]),
            "reward_mean": _all_sum(rewards.sum().reshape(1))
            / _all_sum(torch.tensor([float(rewards.numel())])),
            "reward_std": rewards.std().reshape(1),
            "zero_std_frac": (grp == grp[:, :1]).all(-1).float().mean().reshape(1),
            "length_mean": lengths.mean().reshape(1),
            "rollout_time": torch.tensor([t_roll]),
            "rollout_tok_per_s": torch.tensor([float(lengths.sum()) / max(t_roll, 1e-9)]),
        }
        # 4. epochs x minibatches (minibatch m = slice m of every shard's groups)
        metrics: dict[str, Tensor] = {}
        n_tok_step = 0.0
        for _epoch in range(cfg.epochs):
            for m in range(cfg.minibatches):
                rows = []
                for ro, _r, adv, old_logp, ref_logp, is_w in batch:
                    n = ro.input_ids.shape[0] // cfg.minibatches
                    sl = slice(m * n, (m + 1) * n)
                    w_sl = None if is_w is None else is_w[sl]
                    rows.append((ro, sl, adv[sl], old_logp[sl], ref_logp[sl], w_sl))
                mask_all = [ro.completion_mask[sl] for ro, sl, *_ in rows]
                local = torch.tensor(
                    [float(sum(int(x.sum()) for x in mask_all)),
                     float(sum(int((x.sum(-1) > 0).sum()) for x in mask_all)),
                     float(sum(x.shape[0] for x in mask_all))],
                )  # fmt: skip
                counts = _all_sum(local).to(self.device)
                self.opt.zero_grad()
                total = torch.zeros((), device=self.device)
                step_metrics: list[dict[str, Tensor]] = []
                for ro, sl, adv, old_logp, ref_logp, w_sl in rows:
                    loss, mt = self.loss(
                        ro.input_ids[sl], ro.attention_mask[sl], ro.prompt_len,
                        ro.completion_mask[sl], old_logp, adv, w_sl, ref_logp, counts,
                    )  # fmt: skip
                    (loss * self.world).backward()  # DDP averages over ranks: x W = the sum
                    total = total + loss.detach()
                    step_metrics.append(mt)
                grad_norm = torch.tensor(float("nan"))
                if cfg.max_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        self.model.parameters(), cfg.max_grad_norm
                    )
                if not torch.isfinite(total) or not torch.isfinite(grad_norm.nan_to_num(0.0)):
                    self.rec.mark_diverged(
                        torch.ones(1, dtype=torch.bool), self.step, "non-finite loss"
                    )
                    self.alive[:] = False
                    return {**metrics, **it_metrics}
                self.opt.step()
                self.sched.step()
                # 5. instrumentation against pi_old, after the step
                metrics = self._after_step(rows, old, step_metrics, total, grad_norm)
                metrics["iteration"] = torch.tensor([float(it)])
                self.rec.log("step", metrics, self.alive)
                self.step += 1
                n_tok_step += float(counts[0])
        t_upd = time.perf_counter() - t0
        it_metrics["update_time"] = torch.tensor([t_upd])
        it_metrics["update_tok_per_s"] = torch.tensor([n_tok_step / max(t_upd, 1e-9)])
        acc = float("nan")
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations:
            acc = self.evaluate()
        it_metrics["eval_acc"] = torch.tensor([acc])
        self.rec.log("iter", it_metrics, self.alive)
        return {**metrics, **it_metrics}

    @torch.no_grad()
    def _after_step(
        self,
        rows: list[tuple],
        old: torch.nn.Module,
        step_metrics: list[dict[str, Tensor]],
        total: Tensor,
        grad_norm: Tensor,
    ) -> dict[str, Tensor]:
        lc = self.cfg.loss
        audits = []
        for ro, sl, adv, old_logp, ref_logp, _w in rows:
            ids, am, mask = ro.input_ids[sl], ro.attention_mask[sl], ro.completion_mask[sl]
            logp, _ = self.score(self.model, ids, am, ro.prompt_len)
            ratio = torch.exp(torch.where(mask, logp - old_logp, 0.0))
            a = adv.to(logp.dtype).unsqueeze(-1).expand_as(logp)
            audit = ratio_metrics(logp, old_logp, ratio, a, mask, lc.eps_low, lc.eps_high)
            k3 = kl_penalty(logp, ref_logp, "k3")
            audit["kl_ref"] = (k3 * mask).sum() / mask.sum()
            audits.append((audit, float(mask.sum())))
        # token-weighted means over shards (max / min for the extremes)
        n = sum(w for _, w in audits)
        out: dict[str, Tensor] = {}
        for k in audits[0][0]:
            vals = torch.stack([a[k].float().cpu() for a, _ in audits])
            if k.endswith("_max"):
                out[k] = vals.max().reshape(1)
            elif k.endswith("_min"):
                out[k] = vals.min().reshape(1)
            else:
                out[k] = (vals * torch.tensor([w for _, w in audits])).sum().reshape(1) / n
        for k in step_metrics[0]:
            vals = torch.stack([m[k].float().reshape(()).cpu() for m in step_metrics])
            out[k] = vals.mean().reshape(1)
        pi, pa, pm = self.probe
        kl = _lm().probe_kl(
            old, self.model, pi, pa, start=1, mask=pm[:, 1:].bool(), temperature=self.pi_temperature
        )  # KL between the tempered policies (module docstring)
        out["probe_kl"] = kl.float().reshape(1)
        out["loss"] = total.reshape(1).cpu()
        out["grad_norm"] = grad_norm.reshape(1).cpu()
        out["lr"] = torch.tensor([self.sched.get_last_lr()[0]])
        return out

    def finish(self) -> RunRecord:
        acc = self.evaluate()
        self.rec.summary = {
            "eval_acc_start": torch.tensor([self.acc_start], dtype=torch.float64),
            "eval_acc_final": torch.tensor([acc], dtype=torch.float64),
            "eval_acc_gain": torch.tensor([acc - self.acc_start], dtype=torch.float64),
        }
        return self.rec


def train_lm_grpo(task: LMTask, configs: LMGRPOConfig | Sequence[LMGRPOConfig]) -> RunRecord:
    """Run GRPO for each configuration on ``task`` (module docstring) and return the record
    (C = number of configurations; configurations run one after the other)."""
    configs = [configs] if isinstance(configs, LMGRPOConfig) else list(configs)
    if not configs:
        raise ValueError("configs is empty")
    records = []
    for cfg in configs:
        trainer = LMGRPOTrainer(task, cfg)
        for it in range(cfg.iterations):
            if not bool(trainer.alive.all()):
                break
            trainer.update(it)
        records.append(trainer.finish())
    return _stack(records)


def _stack(records: list[RunRecord]) -> RunRecord:
    """One record with C = len(records) from one-configuration records of equal schedules."""
    if len(records) == 1:
        return records[0]
    out = RunRecord(status=[], diverged_at=[], error=[])
    for r in records:
        out.status += r.status
        out.diverged_at += r.diverged_at
        out.error += r.error
    for where in ("step", "iter"):
        src = [getattr(r, where) for r in records]
        for k in src[0]:
            cols = max(len(s.get(k, [])) for s in src)
            merged = []
            for j in range(cols):
                merged.append(
                    torch.cat([s[k][j] if j < len(s.get(k, [])) else torch.full((1,), float("nan"))
                               for s in src])
                )  # fmt: skip
            getattr(out, where)[k] = merged
    out.summary = {k: torch.cat([r.summary[k] for r in records]) for k in records[0].summary}
    return out


# ----------------------------------------------------------------------------- torchrun entry


def main(argv: Sequence[str] | None = None) -> None:
    """``torchrun --nproc_per_node N -m grpo_lab.algorithms.grpo_lm --task addition --set k=v
    ... --save DIR``: one GRPO run, DDP across the processes; rank 0 saves the final model and
    ``record.json`` (per-step metrics and the summary) under DIR."""
    from grpo_lab.envs.lm_tasks import make_task

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--task-kwargs", default="{}", help="JSON, e.g. '{\"digits\": 2}'")
    ap.add_argument("--config", default="{}", help="LMGRPOConfig fields as JSON")
    ap.add_argument("--save", default=None)
    args = ap.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    try:
        task = make_task(args.task, **json.loads(args.task_kwargs))
        cfg = LMGRPOConfig(**json.loads(args.config))
        trainer = LMGRPOTrainer(task, cfg)
        for it in range(cfg.iterations):
            if bool(trainer.alive.all()):
                trainer.update(it)
        rec = trainer.finish()
        if trainer.rank == 0 and args.save:
            out = Path(args.save)
            _lm().save_model(trainer.model, out / "model")
            trainer.tok.save(out / "model" / TOKENIZER_FILE)
            steps = {k: [float(v[0]) for v in vs] for k, vs in rec.step.items()}
            summ = {k: float(v[0]) for k, v in rec.summary.items()}
            (out / "record.json").write_text(json.dumps({"steps": steps, "summary": summ}))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
