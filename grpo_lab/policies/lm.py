"""Small causal language models as GRPO policies: build, score, sample.

A thin layer over ``transformers`` causal LMs (Llama architecture by default), built from a config
offline and seeded, for GRPO (arXiv 2402.03300) on tiny models. Token conventions are the
caller's: ids arrive as plain tensors, ``pad_id`` / ``eos_id`` as integers.

Notation: a batch of B sequences of length T = P + T_c, the first P columns a LEFT-padded prompt,
the last T_c the completion (right-padded after EOS). With attention mask m (B, T) in {0, 1} a
token's position is its index among the valid tokens of its row,

    position_{i,t} = sum_{s <= t} m_{i,s} - 1        (0 on the left padding),

so a left-padded row is scored exactly as the same row without padding. The policy is

    pi_theta(y_t | y_<t) = softmax(z_t)_{y_t},    z_t = f_theta(y_<t) the raw logits (V,),

and every log-probability here is log_softmax(z) in float32 (float64 for a float64 model),
whatever the model's dtype. With a temperature tau > 0 and a nucleus mass p (``sample``'s
``temperature`` / ``top_p``), tokens are drawn from

    q_{tau,p}(v | y_<t) = softmax(z_t / tau)_v / sum_{u in N_t} softmax(z_t / tau)_u   (v in N_t),
    q_{tau,p}(v | y_<t) = 0                                                       (v not in N_t),

N_t the nucleus of softmax(z_t / tau) (``top_p_filter``); tau = 0 is greedy, a point mass on
argmax z_t. ``sampling_logprobs`` gives log q_{tau,p}, ``Rollout.logprobs`` is log q_{tau,p} of
each drawn token (the behaviour log-probability mu of an importance weight pi / mu, which must
be the distribution actually sampled from), and ``token_logprobs`` scores any (tau, p); the
defaults tau = 1, p = 1 are the raw policy pi_theta.

    build_model / save_model        a seeded model from TINY_CONFIGS, a saved directory or a config
    token_logprobs(_and_entropy)    log pi_theta(y_t | y_<t) (and its entropy H) for t >= start
    top_p_filter                    nucleus filtering (Holtzman et al., arXiv 1904.09751)
    sampling_logprobs               log q_{tau,p}(v) of the sampling distribution, every token v
    sample                          batched sampling with a KV cache -> Rollout
    repeat_prompts                  G copies of each prompt, adjacent (one GRPO group)
    probe_kl                        exact full-vocabulary KL(pi_old || pi_new), averaged over tokens
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from grpo_lab._checks import compute_dtype

Tensor = torch.Tensor
hf_logging.disable_progress_bar()  # no "Loading weights" bar per run of a sweep

DEFAULT_VOCAB_SIZE = 40  # a character vocabulary: pad, bos, eos, digits, operators, letters

# Llama keyword arguments per named architecture; vocab_size and max_position_embeddings come from
# build_model. Parameter counts at vocab 40: tiny 136,512; small 1,584,768 (tested in range).
_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
TINY_CONFIGS: dict[str, dict] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **_SPECIAL_IDS,
    },
    "small": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        **_SPECIAL_IDS,
    },
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# the nucleus is kept up to this rounding slack: mass >= top_p - _TOP_P_SLACK
_TOP_P_SLACK = 1e-6


# ----------------------------------------------------------------------------- build / save


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")


def _check_device(device: str) -> str:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; allowed: 'cpu', 'cuda', 'cuda:<index>'")
    return device


def _config_from_name(name: str, vocab_size: int | None, context_len: int) -> LlamaConfig:
    if context_len < 2:
        raise ValueError(f"context_len must be >= 2, got {context_len}")
    vocab = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    return LlamaConfig(**TINY_CONFIGS[name], vocab_size=vocab, max_position_embeddings=context_len)


def _seeded_model(config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    # the global RNG is restored on exit: building a model does not shift the caller's stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(config, LlamaConfig):
            return LlamaForCausalLM(config)
        return AutoModelForCausalLM.from_config(config)


def _load_dir(path: Path, vocab_size: int | None, dtype: torch.dtype) -> PreTrainedModel:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is a directory without a config.json (save_model)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    if vocab_size is not None and model.config.vocab_size != vocab_size:
        raise ValueError(
            f"model at {str(path)!r} has vocab_size {model.config.vocab_size}, not {vocab_size}"
        )
    return model


def build_model(
    spec: str | os.PathLike | PreTrainedConfig,
    *,
    vocab_size: int | None = None,
    context_len: int = 128,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> PreTrainedModel:
    """A causal LM from a ``TINY_CONFIGS`` name, a directory written by ``save_model``, or a config.

    - name (checked first): a Llama model with ``vocab_size`` (default ``DEFAULT_VOCAB_SIZE``) and
      ``max_position_embeddings = context_len``, initialised from ``torch.manual_seed(seed)``
      (same seed -> identical weights; the caller's global RNG state is left as it was).
    - directory: loaded with ``AutoModelForCausalLM.from_pretrained``; ``context_len`` and ``seed``
      do not apply, ``vocab_size`` if given must match the saved one.
    - config: used as given (``context_len`` does not apply), seeded like a name; ``vocab_size`` if
      given must match ``config.vocab_size``.

    Weights are initialised in float32 and then cast to ``dtype`` (one of ``DTYPES``), so a bf16
    model is the rounded float32 model of the same seed. ``device``: "cpu", "cuda" or "cuda:<i>".
    The model is returned in eval mode (dropout off, as ``from_pretrained`` returns it), so
    ``sample`` draws its randomness from its generator alone; ``.train()`` turns dropout on.
    Raises FileNotFoundError for a path that does not exist (naming it and the TINY_CONFIGS
    names), ValueError for an unknown dtype or device.
    """
    dt = _resolve_dtype(dtype)
    device = _check_device(device)
    if isinstance(spec, PreTrainedConfig):
        if vocab_size is not None and spec.vocab_size != vocab_size:
            raise ValueError(f"config has vocab_size {spec.vocab_size}, not {vocab_size}")
        model = _seeded_model(spec, seed)
    elif isinstance(spec, str) and spec in TINY_CONFIGS:
        model = _seeded_model(_config_from_name(spec, vocab_size, context_len), seed)
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{str(path)!r} is neither a TINY_CONFIGS name ({', '.join(TINY_CONFIGS)}) nor "
                "a directory written by save_model"
            )
        model = _load_dir(path, vocab_size, dt)
    else:
        raise TypeError(f"spec must be a name, a path or a config, got {type(spec).__name__}")
    return model.to(device=device, dtype=dt).eval()


def save_model(model: PreTrainedModel, path: str | os.PathLike) -> None:
    """Write ``model`` (weights as safetensors, plus config.json) to directory ``path``.

    transformers 5 always writes safetensors (``save_pretrained`` lost ``safe_serialization``).
    ``build_model(path)`` loads it back with identical weights.
    """
    model.save_pretrained(Path(path))


# ----------------------------------------------------------------------------- scoring


def _position_ids(attention_mask: Tensor) -> Tensor:
    """position_{i,t} = sum_{s<=t} m_{i,s} - 1, clamped to 0 on left padding: (B, T) long."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def _check_pair(input_ids: Tensor, attention_mask: Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )


def _scored(attention_mask: Tensor, start: int) -> Tensor:
    """Positions t >= start that can be scored: valid tokens with a valid token before them.

    Shapes: (B, T) -> (B, T - start) bool. A row's first valid token has no prefix to condition
    on, so it is never scored (start >= P keeps the whole completion).
    """
    m = attention_mask.long()
    before = m.cumsum(dim=-1) - m  # (B, T): valid tokens strictly before t
    return ((m > 0) & (before > 0))[:, start:]


def _next_token_logits(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, start: int
) -> Tensor:
    """Raw logits z_t predicting token t, for t = start..T-1: (B, T - start, V), model dtype."""
    _check_pair(input_ids, attention_mask)
    t_len = input_ids.shape[1]
    if not 1 <= start <= t_len:
        raise ValueError(f"start must be in [1, T={t_len}], got {start}")
    dev = model.device
    mask = attention_mask.to(dev).long()
    out = model(
        input_ids=input_ids.to(dev),
        attention_mask=mask,
        position_ids=_position_ids(mask),
        use_cache=False,
        logits_to_keep=t_len - start + 1,  # positions start-1 .. T-1
    )
    return out.logits[:, :-1]  # (B, T - start, V): position t-1 predicts token t


def _scored_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    start: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """log q_{tau,p}(. | y_<t) (B, Tc, V) (log_softmax(z_t) at the defaults), log-prob of y_t
    (B, Tc) and the scored positions (B, Tc)."""
    _check_temperature_top_p(temperature, top_p)
    logits = _next_token_logits(model, input_ids, attention_mask, start)  # (B, Tc, V)
    logp_all = sampling_logprobs(logits, temperature, top_p)  # (B, Tc, V)
    target = input_ids[:, start:].to(logits.device)  # (B, Tc)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, Tc)
    return logp_all, logp, _scored(attention_mask, start).to(logits.device)


def token_logprobs_and_entropy(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    start: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """log pi_theta(y_t | y_<t) and H[pi_theta(. | y_<t)] for every t >= start.

        logp_{i,t} = log_softmax(z_{i,t})_{y_{i,t}},    H_{i,t} = -sum_v p_v log p_v

    from one forward pass with position ids from the attention mask (module docstring), so left
    padding does not change the result. With ``temperature`` tau / ``top_p`` p the scored
    distribution is the sampling distribution q_{tau,p} (``sampling_logprobs``; 0 log 0 = 0 in H,
    and a token outside the nucleus has logp = -inf); the defaults score pi_theta itself.
    Shapes: input_ids, attention_mask (B, T) -> (B, T - start) each, float32 (float64 for a
    float64 model), 0 where attention_mask[:, start:] is 0 and at a row's first valid token
    (nothing to condition on). Differentiable in the model's parameters (wrap in
    ``torch.no_grad()`` to score only).
    """
    logp_all, logp, valid = _scored_logprobs(
        model, input_ids, attention_mask, start, temperature, top_p
    )
    finite = logp_all
    if top_p < 1.0 or temperature == 0.0:  # 0 log 0 = 0 outside the support (-inf there)
        finite = torch.where(logp_all.isneginf(), 0.0, logp_all)
    entropy = -(logp_all.exp() * finite).sum(dim=-1)  # (B, Tc)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero)


def token_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    start: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Tensor:
    """log pi_theta(y_t | y_<t) = log_softmax(z_t)_{y_t} for t >= start: (B, T) -> (B, T - start).

    With ``temperature`` tau / ``top_p`` p: log q_{tau,p}(y_t | y_<t) of the sampling
    distribution (``sampling_logprobs``), what ``sample`` with the same settings records in
    ``Rollout.logprobs``. float32 (float64 for a float64 model) whatever the model dtype; 0 where
    attention_mask[:, start:] is 0 and at a row's first valid token. See
    ``token_logprobs_and_entropy``.
    """
    _, logp, valid = _scored_logprobs(model, input_ids, attention_mask, start, temperature, top_p)
    return torch.where(valid, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def probe_kl(
    model_old: PreTrainedModel,
    model_new: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    start: int,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Exact KL(pi_old || pi_new) over the full vocabulary, averaged over completion positions.

        KL_{i,t} = sum_v pi_old(v | y_<t) [log pi_old(v | y_<t) - log pi_new(v | y_<t)]
        result   = sum_{i,t} w_{i,t} KL_{i,t} / sum_{i,t} w_{i,t}

    for t >= start, computed in float64 from both models' logits on the same tokens (the
    per-token KL of TRPO's trust region, arXiv 1502.05477 eq. 12, without sampling error).
    Shapes: input_ids, attention_mask (B, T); mask (B, T - start) bool/0-1, default
    attention_mask[:, start:], always restricted to tokens with a prefix (w = 0 at padding and at
    a row's first valid token) -> scalar float64 on model_old's device. Differentiable in both
    models' parameters (wrap in ``torch.no_grad()`` for a probe). ``temperature`` tau > 0: the
    KL between the tempered policies softmax(z / tau) (default 1: the raw ones).
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 for probe_kl, got {temperature}")
    w = attention_mask[:, start:] if mask is None else mask
    if w.shape != (input_ids.shape[0], input_ids.shape[1] - start):
        raise ValueError(f"mask must be (B, T - start), got shape {tuple(w.shape)}")
    lp_old = torch.log_softmax(
        _next_token_logits(model_old, input_ids, attention_mask, start).double() / temperature,
        dim=-1,
    )  # (B, Tc, V)
    lp_new = torch.log_softmax(
        _next_token_logits(model_new, input_ids, attention_mask, start).double() / temperature,
        dim=-1,
    ).to(lp_old.device)  # (B, Tc, V)
    kl = (lp_old.exp() * (lp_old - lp_new)).sum(dim=-1)  # (B, Tc)
    w = w.to(kl.device).bool() & _scored(attention_mask, start).to(kl.device)  # (B, Tc)
    if not bool(w.any()):
        raise ValueError("mask selects no position")
    return torch.where(w, kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum() / w.sum()


# ----------------------------------------------------------------------------- sampling


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., arXiv 1904.09751 §3.1): (..., V) -> (..., V).

    With p = softmax(logits) sorted descending, p_(1) >= p_(2) >= ..., keep the smallest prefix
    V^(p) whose mass sum_{k <= K} p_(k) >= top_p (always the top token; a token is kept when the
    mass strictly before it is < top_p, up to a rounding slack of 1e-6) and set the other logits
    to -inf; softmax of the result is p renormalised on V^(p). ``top_p = 1`` returns ``logits``
    unchanged. Ties at the boundary are broken by the sort order.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits.to(compute_dtype(logits)), dim=-1)  # (..., V)
    sorted_p, order = probs.sort(dim=-1, descending=True)  # (..., V)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # (..., V)
    keep_sorted = mass_before < top_p - _TOP_P_SLACK
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (..., V)
    return logits.masked_fill(~keep, float("-inf"))


def _check_temperature_top_p(temperature: float, top_p: float) -> None:
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _sampling_logits(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """top_p_filter(z / tau, top_p) in float32 or wider, tau > 0: (..., V) -> (..., V)."""
    return top_p_filter(logits.to(compute_dtype(logits)) / temperature, top_p)


def sampling_logprobs(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """log q_{tau,p}(v) of the distribution ``sample`` draws from, every token v: (..., V) -> (..., V).

        q_{tau,p} = softmax(top_p_filter(z / tau, p))      tau > 0
        q_{0,p}   = one_hot(argmax z)                       tau = 0 (greedy)

    i.e. the tempered policy softmax(z / tau) renormalised on its nucleus N (Holtzman et al.,
    arXiv 1904.09751 §3.1: p'(v) = p(v) / sum_{u in N} p(u) on N, 0 elsewhere); tau and p apply
    in that order, as in ``transformers`` generate. This, and not log_softmax(z), is the
    behaviour log-probability log mu an importance weight pi / mu needs: the weight corrects
    from the distribution the token was actually drawn from (IMPALA, arXiv 1802.01561 eq. 1).
    -inf outside the support (outside N; every token but the argmax when greedy), so a sampled
    token is always finite. float32 (float64 for float64 logits); differentiable in ``logits``
    for tau > 0 (the nucleus set itself is piecewise constant), constant for tau = 0.
    """
    _check_temperature_top_p(temperature, top_p)
    if temperature == 0.0:
        z = logits.to(compute_dtype(logits))
        out = torch.full_like(z, float("-inf"))
        return out.scatter(-1, z.argmax(dim=-1, keepdim=True), 0.0)
    return torch.log_softmax(_sampling_logits(logits, temperature, top_p), dim=-1)


@dataclass
class Rollout:
    """A batch of prompts with sampled completions (``sample``); B rows, P prompt, T completion.

    input_ids        (B, P + T) long: left-padded prompt, then the completion, pad after EOS
    attention_mask   (B, P + T) long: the prompt's mask, then ``completion_mask``
    completion_mask  (B, T) bool: completion tokens up to and including EOS
    logprobs         (B, T) float32 (float64 model: float64): log q_{tau,p}(y_t | y_<t) of each
                     sampled token under the distribution it was DRAWN from, temperature and
                     top-p included (``sampling_logprobs``; 0 when greedy: a point mass), i.e.
                     the behaviour log-probability log mu of an importance weight and what
                     ``token_logprobs(..., temperature=tau, top_p=p)`` gives on this rollout; at
                     tau = 1, p = 1 it is log_softmax(z_t)_{y_t}, the raw pi_theta. 0 where masked
    prompt_len       P
    lengths          (B,) long: completion lengths incl. EOS, completion_mask.sum(-1)
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    logprobs: Tensor
    prompt_len: int
    lengths: Tensor

    @property
    def completions(self) -> Tensor:
        """The completion tokens (B, T)."""
        return self.input_ids[:, self.prompt_len :]


def _check_left_padded(input_ids: Tensor, attention_mask: Tensor) -> None:
    _check_pair(input_ids, attention_mask)
    m = attention_mask.long()
    if not bool((m[:, -1] == 1).all()) or not bool((m[:, 1:] >= m[:, :-1]).all()):
        raise ValueError("prompts must be LEFT-padded: each mask row is 0...0 1...1, ending in 1")


def _draw(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One token per row from q = softmax(top_p_filter(z / temperature)), argmax if temperature
    0, and log q of the drawn token (``sampling_logprobs``, from the same filtered logits).

    Shapes: logits (B, V) -> (B,) long, (B,) float32 (float64 logits: float64). The only
    randomness is ``generator``.
    """
    if temperature == 0.0:
        tok = logits.argmax(dim=-1)
        return tok, torch.zeros(tok.shape, dtype=compute_dtype(logits), device=tok.device)
    z = _sampling_logits(logits, temperature, top_p)  # (B, V)
    tok = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(-1)
    logq = torch.log_softmax(z, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # (B,)
    return tok, logq


def _check_sample_args(
    model: PreTrainedModel, prompt_len: int, max_new_tokens: int, temperature: float, top_p: float
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    _check_temperature_top_p(temperature, top_p)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and prompt_len + max_new_tokens > context:
        raise ValueError(
            f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"context {context}"
        )


def _cache_kwarg(model: PreTrainedModel, cache: DynamicCache) -> dict[str, DynamicCache]:
    """The KV cache as the model's forward names it: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values`` (5.x before the rename; the GPU image has 5.17)."""
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Batched autoregressive sampling with a KV cache: y_t ~ softmax(top_p_filter(z_t / tau)).

    One forward over the left-padded prompts (B, P) fills a ``DynamicCache``; then each step feeds
    one new token per running row at position n_i + t (n_i the prompt's valid length) with the
    mask extended by one column. A row that emits ``eos_id`` is done: it leaves the batch and the
    cache (``batch_select_indices``), so finished rows cost nothing, and its later tokens are
    ``pad_id``, masked, with log-prob 0. Sampling stops after ``max_new_tokens`` steps or as soon
    as every row is done, so the completion length T <= max_new_tokens.

    ``temperature = 0`` is greedy (argmax of z_t); otherwise temperature scales the logits before
    the nucleus filter (``top_p_filter``), as in ``transformers`` generate. Randomness comes only
    from ``generator`` (a ``torch.Generator`` on the model's device; None: torch's global one):
    one generator state -> one rollout. ``Rollout.logprobs`` are the log-probabilities of the
    distribution each token was drawn from, temperature and top-p included (see ``Rollout``).
    Dropout is not switched off here: ``build_model`` returns eval mode.

    Shapes: input_ids, attention_mask (B, P), each mask row 0...0 1...1 -> Rollout with
    input_ids (B, P + T). Inputs are moved to the model's device; so is the result.
    """
    _check_left_padded(input_ids, attention_mask)
    batch, prompt_len = input_ids.shape
    _check_sample_args(model, prompt_len, max_new_tokens, temperature, top_p)
    dev = model.device
    prompt_ids = input_ids.to(dev)
    prompt_mask = attention_mask.to(dev).long()
    positions = _position_ids(prompt_mask)  # (B, P)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **_cache_kwarg(model, cache),
    )
    logits = out.logits[:, -1]  # (B_a, V), B_a rows still running (B at first)
    rows = torch.arange(batch, device=dev)  # (B_a,) each running row's index in the batch
    next_pos = positions[:, -1] + 1  # (B_a,) the first completion position
    mask = prompt_mask  # (B_a, P + t)
    completion = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(batch, max_new_tokens, dtype=compute_dtype(logits), device=dev)
    completion_mask = torch.zeros(batch, max_new_tokens, dtype=torch.bool, device=dev)
    steps = max_new_tokens
    for t in range(max_new_tokens):
        tok, logq = _draw(logits, temperature, top_p, generator)  # (B_a,) each
        completion[rows, t] = tok
        logprobs[rows, t] = logq
        completion_mask[rows, t] = True
        running = tok != eos_id  # (B_a,)
        if t == max_new_tokens - 1 or not bool(running.any()):
            steps = t + 1
            break
        if not bool(running.all()):  # drop finished rows from the batch and the cache
            keep = running.nonzero().squeeze(-1)  # (B_a',)
            cache.batch_select_indices(keep)
            rows, tok, mask, next_pos = rows[keep], tok[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)  # (B_a, P + t + 1)
        out = model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=mask,
            position_ids=(next_pos + t).unsqueeze(-1),
            use_cache=True,
            **_cache_kwarg(model, cache),
        )
        logits = out.logits[:, -1]  # (B_a, V)
    completion_mask = completion_mask[:, :steps]  # (B, T)
    return Rollout(
        input_ids=torch.cat([prompt_ids, completion[:, :steps]], dim=-1),
        attention_mask=torch.cat([prompt_mask, completion_mask.long()], dim=-1),
        completion_mask=completion_mask,
        logprobs=logprobs[:, :steps],
        prompt_len=prompt_len,
        lengths=completion_mask.sum(dim=-1),
    )


def repeat_prompts(
    input_ids: Tensor, attention_mask: Tensor, group_size: int
) -> tuple[Tensor, Tensor]:
    """G = group_size copies of each prompt for a GRPO group (arXiv 2402.03300 §4.1).

    Shapes: (B, P) each -> (B * G, P) each; row i * G + g is copy g of prompt i, so group i is
    rows i*G .. (i+1)*G - 1 (``torch.repeat_interleave`` on dim 0). G < 2 is a ValueError: a
    group of one has zero group-relative advantage.
    """
    _check_pair(input_ids, attention_mask)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"G >= 2 completions per prompt are needed, got group_size={group_size}")
    return (
        input_ids.repeat_interleave(group_size, dim=0),
        attention_mask.repeat_interleave(group_size, dim=0),
    )
