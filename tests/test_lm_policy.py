"""Causal-LM policy (grpo_lab.policies.lm), each against an independent computation.

The references recompute from scratch: one row at a time without padding, no KV cache, a float64
copy of the model, and hand-written nucleus / KL sums. Tiny models (vocab 16) keep the file fast.
"""

import copy
import math

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from grpo_lab.policies.lm import (
    TINY_CONFIGS,
    build_model,
    probe_kl,
    repeat_prompts,
    sample,
    sampling_logprobs,
    save_model,
    token_logprobs,
    token_logprobs_and_entropy,
    top_p_filter,
)

PAD, BOS, EOS = 0, 1, 2
VOCAB = 16


def sharp_model(seed: int = 0, init: float = 0.2):
    """A tiny model with larger initial weights than the default 0.02: peaked, varied next-token
    distributions (near-uniform ones would make greedy ties and weak sampler checks)."""
    cfg = LlamaConfig(
        **TINY_CONFIGS["tiny"], vocab_size=VOCAB, max_position_embeddings=64, initializer_range=init
    )
    return build_model(cfg, seed=seed)


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[BOS, 5, 6], [BOS, 3, 4, 9, 6], [BOS, 7, 8, 3, 12, 4], [BOS, 9]]


@torch.no_grad()
def last_logits_alone(model, tokens: list[int]) -> torch.Tensor:
    """Next-token logits after ``tokens``: one unpadded row, full forward, no cache. (V,)"""
    return model(input_ids=torch.tensor([tokens])).logits[0, -1]


def valid_tokens(ids: torch.Tensor, mask: torch.Tensor, i: int) -> list[int]:
    return ids[i][mask[i].bool()].tolist()


# ----------------------------------------------------------------------------- build / save


def test_tiny_configs_parameter_counts():
    counts = {
        name: sum(p.numel() for p in build_model(name, vocab_size=40).parameters())
        for name in TINY_CONFIGS
    }
    assert 100_000 <= counts["tiny"] <= 300_000
    assert 1_000_000 <= counts["small"] <= 3_000_000


def test_seeded_init_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = (build_model("tiny", vocab_size=VOCAB, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if pa.dim() == 2 and "embed" not in name:
            assert not torch.equal(pa, pc), name
    assert a.config.vocab_size == VOCAB and a.config.max_position_embeddings == 128
    assert not a.training  # eval mode: no dropout noise outside the generator


def test_save_and_build_round_trip(tmp_path):
    model = sharp_model()
    path = tmp_path / "policy"
    save_model(model, path)
    assert (path / "model.safetensors").is_file()
    loaded = build_model(path)
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = loaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, want)
    assert build_model(str(path), dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(path, vocab_size=VOCAB + 1)


def test_build_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as e:
        build_model(missing)
    assert "tiny" in str(e.value) and "small" in str(e.value)
    with pytest.raises(FileNotFoundError, match="tiny, small"):
        build_model("huge")
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        build_model("tiny", dtype="float8")
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        build_model("tiny", device="tpu")


def test_repeat_prompts_layout_and_group_size():
    ids, mask = left_pad(PROMPTS)
    rid, rmask = repeat_prompts(ids, mask, 3)
    assert rid.shape == (12, ids.shape[1]) and rmask.shape == rid.shape
    for i in range(4):
        for g in range(3):
            assert torch.equal(rid[i * 3 + g], ids[i]) and torch.equal(rmask[i * 3 + g], mask[i])
    for bad in (1, 0):
        with pytest.raises(ValueError, match="G >= 2"):
            repeat_prompts(ids, mask, bad)


# ----------------------------------------------------------------------------- scoring


def test_token_logprobs_match_float64_rows_alone():
    model = sharp_model()
    ids, mask = left_pad(PROMPTS)  # left padding 3, 1, 0, 4: row 3 starts at t = 4
    start = 3
    logp, ent = token_logprobs_and_entropy(model, ids, mask, start=start)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == (4, ids.shape[1] - start)
    assert torch.equal(token_logprobs(model, ids, mask, start=start), logp)
    ref = copy.deepcopy(model).double()
    for i in range(4):
        toks = valid_tokens(ids, mask, i)
        pad = ids.shape[1] - len(toks)
        with torch.no_grad():
            lp_all = torch.log_softmax(ref(input_ids=torch.tensor([toks])).logits[0], dim=-1)
        for t in range(start, ids.shape[1]):
            j = t - pad  # index of token t in the unpadded row
            if j < 1:  # padding, or the first token (no prefix): reported as 0
                assert logp[i, t - start] == 0 and ent[i, t - start] == 0
                continue
            want = lp_all[j - 1, toks[j]]
            want_ent = -(lp_all[j - 1].exp() * lp_all[j - 1]).sum()
            assert logp[i, t - start].item() == pytest.approx(want.item(), abs=2e-5)
            assert ent[i, t - start].item() == pytest.approx(want_ent.item(), abs=2e-5)


def test_token_logprobs_of_a_bf16_model_are_float32():
    model = sharp_model()
    ids, mask = left_pad(PROMPTS)
    half = copy.deepcopy(model).to(torch.bfloat16)
    want = token_logprobs(model, ids, mask, start=2)
    got = token_logprobs(half, ids, mask, start=2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)
    assert not torch.equal(got, want)  # the bf16 weights really were used
    g = torch.Generator().manual_seed(0)
    r = sample(half, ids, mask, max_new_tokens=4, eos_id=EOS, pad_id=PAD, generator=g)
    assert r.logprobs.dtype == torch.float32
    rescored = token_logprobs(half, r.input_ids, r.attention_mask, start=r.prompt_len)
    torch.testing.assert_close(rescored, r.logprobs, atol=0.05, rtol=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_probe_kl_matches_direct_double_loop(temperature):
    old, new = sharp_model(seed=0), sharp_model(seed=1)
    ids, mask = left_pad(PROMPTS)
    start = 2
    sel = mask[:, start:].clone()
    sel[0, -1] = 0  # a custom mask: drop one valid position
    ref_old, ref_new = copy.deepcopy(old).double(), copy.deepcopy(new).double()
    total, count = 0.0, 0
    for i in range(ids.shape[0]):
        for t in range(start, ids.shape[1]):
            prefix = valid_tokens(ids[:, :t], mask[:, :t], i)
            if not sel[i, t - start] or not prefix:  # masked, or a first token: not scored
                continue
            p = torch.softmax(last_logits_alone(ref_old, prefix) / temperature, -1).tolist()
            q = torch.softmax(last_logits_alone(ref_new, prefix) / temperature, -1).tolist()
            total += sum(pv * math.log(pv / qv) for pv, qv in zip(p, q, strict=True))
            count += 1
    got = probe_kl(old, new, ids, mask, start=start, mask=sel, temperature=temperature)
    assert got.dim() == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(total / count, rel=1e-5)
    assert got.item() > 0
    assert probe_kl(old, copy.deepcopy(old), ids, mask, start=start).item() == 0.0


# ----------------------------------------------------------------------------- top-p


def test_top_p_filter_hand_worked():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()  # noqa: E731
    assert kept(0.8) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.8
    assert kept(0.81) == [True, True, False, True]  # needs 0.15 too
    assert kept(0.96) == [True, True, True, True]
    assert kept(0.3) == [False, True, False, False]  # the top token always stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    kept_logits = top_p_filter(logits, 0.81)
    assert torch.equal(kept_logits[[0, 1, 3]], logits[[0, 1, 3]])
    batch = torch.stack([logits, logits.flip(0)]).expand(3, 2, 4)  # (..., V)
    assert torch.equal(top_p_filter(batch, 0.8)[1, 1], top_p_filter(logits.flip(0), 0.8))
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_sampling_logprobs_hand_worked():
    """q = softmax(z / tau) renormalised on its nucleus, worked by hand on 4 tokens."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=torch.float64)
    logits = probs.log()
    # tau = 0.5 squares the probabilities: 0.0225, 0.25, 0.0025, 0.09 (sum 0.365), i.e.
    # 0.062, 0.685, 0.007, 0.247; top_p = 0.9 keeps 0.685 + 0.247 = 0.932 >= 0.9: tokens 1 and 3
    got = sampling_logprobs(logits, temperature=0.5, top_p=0.9)
    inf = float("inf")
    want = torch.tensor(
        [-inf, math.log(0.25 / 0.34), -inf, math.log(0.09 / 0.34)], dtype=torch.float64
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # tau = 2, no nucleus: sqrt(p) / sum sqrt(p)
    root = probs.sqrt()
    torch.testing.assert_close(sampling_logprobs(logits, 2.0), (root / root.sum()).log())
    # defaults: the raw log_softmax; greedy: a point mass on the argmax
    torch.testing.assert_close(sampling_logprobs(logits), torch.log_softmax(logits, -1))
    assert sampling_logprobs(logits, 0.0).tolist() == [-inf, 0.0, -inf, -inf]
    with pytest.raises(ValueError, match="temperature"):
        sampling_logprobs(logits, -1.0)


def test_sampling_logprobs_match_an_independent_nucleus():
    """Random (B, V) logits: sampling_logprobs against torch.softmax and an explicit sort."""
    z = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for temperature, top_p in [(0.7, 0.75), (1.3, 0.5), (1.0, 1.0)]:
        got = sampling_logprobs(z, temperature, top_p)
        for i in range(z.shape[0]):
            want = torch.tensor(nucleus_reference(z[i], temperature, top_p), dtype=z.dtype).log()
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- sampling


def greedy_alone(model, tokens: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding of one unpadded row, each step a full forward from scratch."""
    out: list[int] = []
    for _ in range(steps):
        nxt = int(last_logits_alone(model, tokens + out).argmax())
        out.append(nxt)
        if nxt == eos:
            break
    return out


def test_greedy_sample_equals_uncached_greedy_with_eos():
    model = sharp_model()
    ids, mask = left_pad(PROMPTS)
    steps, eos = 12, 5  # token 5 ends some rows early (asserted below)
    want = [greedy_alone(model, valid_tokens(ids, mask, i), steps, eos) for i in range(4)]
    lens = [len(w) for w in want]
    assert min(lens) < max(lens) < steps  # EOS at different steps; all done before the budget
    r = sample(model, ids, mask, max_new_tokens=steps, eos_id=eos, pad_id=PAD, temperature=0.0)
    T = max(lens)  # stopped early once every row was done
    assert r.prompt_len == ids.shape[1] and r.input_ids.shape == (4, ids.shape[1] + T)
    assert r.lengths.tolist() == lens
    for i, w in enumerate(want):
        assert r.completions[i].tolist() == w + [PAD] * (T - len(w))
        assert r.completion_mask[i].tolist() == [True] * len(w) + [False] * (T - len(w))
    assert torch.equal(r.attention_mask, torch.cat([mask, r.completion_mask.long()], dim=-1))
    assert torch.all(r.logprobs[~r.completion_mask] == 0)
    assert torch.all(r.logprobs[r.completion_mask] == 0)  # greedy: log 1 of a point mass


def test_sample_logprobs_equal_rescoring_and_seeding():
    model = sharp_model()
    ids, mask = repeat_prompts(*left_pad(PROMPTS), 4)
    kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD, temperature=0.8, top_p=0.9)
    r = sample(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    assert r.input_ids.shape[1] - r.prompt_len <= 10 and int(r.lengths.max()) <= 10
    assert r.logprobs.dtype == torch.float32
    assert (~r.completion_mask).any()  # some rows stopped at EOS: the masking is exercised
    for i in range(ids.shape[0]):
        n = int(r.lengths[i])
        assert bool((r.completions[i, :n] == EOS).any()) == (n < r.completions.shape[1])
        assert torch.all(r.completions[i, n:] == PAD)
    with torch.no_grad():
        score = dict(start=r.prompt_len, temperature=0.8, top_p=0.9)
        rescored = token_logprobs(model, r.input_ids, r.attention_mask, **score)
        raw = token_logprobs(model, r.input_ids, r.attention_mask, start=r.prompt_len)
    torch.testing.assert_close(rescored, r.logprobs, atol=1e-5, rtol=1e-5)
    assert (raw - r.logprobs).abs().max() > 0.05  # the raw logits are not what was sampled
    again = sample(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    other = sample(model, ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(again.input_ids, r.input_ids) and torch.equal(again.logprobs, r.logprobs)
    assert not torch.equal(other.input_ids, r.input_ids)


def test_max_new_tokens_is_respected():
    model = sharp_model()
    ids, mask = left_pad(PROMPTS)
    g = torch.Generator().manual_seed(0)
    r = sample(model, ids, mask, max_new_tokens=3, eos_id=99, pad_id=PAD, generator=g)
    assert r.input_ids.shape == (4, ids.shape[1] + 3) and r.lengths.tolist() == [3] * 4
    with pytest.raises(ValueError, match="LEFT-padded"):
        sample(model, ids.flip(1), mask.flip(1), max_new_tokens=3, eos_id=EOS, pad_id=PAD)


def nucleus_reference(logits: torch.Tensor, temperature: float, top_p: float) -> list[float]:
    """softmax(logits / temperature) renormalised on the smallest top set of mass >= top_p."""
    p = torch.softmax(logits.double() / temperature, -1).tolist()
    order = sorted(range(len(p)), key=lambda v: -p[v])
    kept, mass = [], 0.0
    for v in order:
        kept.append(v)
        mass += p[v]
        if mass >= top_p:
            break
    if top_p < 1.0:
        assert all(abs(top_p - m) > 1e-3 for m in (mass, mass - p[kept[-1]]))  # not a boundary
    return [p[v] / mass if v in kept else 0.0 for v in range(len(p))]


def test_rollout_logprobs_are_the_tempered_nucleus_distribution():
    """Rollout.logprobs (the behaviour log mu of an importance weight) are log q_{tau,p} of the
    distribution each token was drawn from: checked token by token against a float64 copy of
    the model, one unpadded row at a time, with an explicit sort for the nucleus; the entropy
    of the scored distribution too, and finite gradients through the -inf of the nucleus."""
    model = sharp_model()
    ref = copy.deepcopy(model).double()
    temperature, top_p, steps = 0.7, 0.8, 4
    ids, mask = repeat_prompts(*left_pad(PROMPTS), 2)
    g = torch.Generator().manual_seed(5)
    r = sample(model, ids, mask, max_new_tokens=steps, eos_id=EOS, pad_id=PAD,
               temperature=temperature, top_p=top_p, generator=g)  # fmt: skip
    checked = differs = 0
    for i in range(ids.shape[0]):
        prefix = valid_tokens(ids, mask, i)
        for t in range(int(r.lengths[i])):
            q = nucleus_reference(last_logits_alone(ref, prefix), temperature, top_p)
            tok = int(r.completions[i, t])
            assert q[tok] > 0  # a sampled token is inside the nucleus
            assert r.logprobs[i, t].item() == pytest.approx(math.log(q[tok]), abs=2e-5)
            raw = torch.log_softmax(last_logits_alone(ref, prefix), -1)[tok].item()
            differs += abs(raw - math.log(q[tok])) > 1e-3  # the raw log_softmax is not log mu
            prefix.append(tok)
            checked += 1
    assert checked >= 2 * len(PROMPTS) and differs >= checked // 2
    # scoring with the same settings: the same numbers, an entropy of q, finite gradients
    logp, ent = token_logprobs_and_entropy(
        model, r.input_ids, r.attention_mask, start=r.prompt_len, temperature=temperature,
        top_p=top_p,
    )  # fmt: skip
    torch.testing.assert_close(logp, r.logprobs, atol=1e-5, rtol=1e-5)
    toks = valid_tokens(r.input_ids, r.attention_mask, 0)
    n = len(toks) - r.completions.shape[1]
    q = torch.tensor(nucleus_reference(last_logits_alone(ref, toks[:n]), temperature, top_p))
    want_ent = -sum(float(v * v.log()) for v in q if v > 0)
    assert ent[0, 0].item() == pytest.approx(want_ent, abs=2e-5)
    (logp.sum() + ent.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.75)])
def test_sampler_frequencies_match_the_distribution(temperature, top_p):
    model = sharp_model()
    prompt = [BOS, 7]
    n = 20_000
    ids, mask = torch.tensor([prompt] * n), torch.ones(n, 2, dtype=torch.long)
    g = torch.Generator().manual_seed(11)
    r = sample(
        model,
        ids,
        mask,
        max_new_tokens=1,
        eos_id=EOS,
        pad_id=PAD,
        temperature=temperature,
        top_p=top_p,
        generator=g,
    )
    counts = torch.bincount(r.completions[:, 0], minlength=VOCAB).double()
    ref = copy.deepcopy(model).double()
    probs = torch.tensor(nucleus_reference(last_logits_alone(ref, prompt), temperature, top_p))
    if top_p < 1.0:
        assert (probs == 0).sum() >= 3  # the nucleus really drops tokens
    assert torch.all(counts[probs == 0] == 0)
    sigma = (n * probs * (1 - probs)).sqrt()
    assert torch.all((counts - n * probs).abs() <= 5 * sigma + 1e-9), (counts, n * probs)


def test_absolute_positions_gpt2_left_padding_and_cache():
    """GPT-2 adds learned absolute position embeddings, so unlike Llama's RoPE (relative) a wrong
    position id changes its output: padded rows and cached steps must use the true positions."""
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2
    )
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = None
    model = build_model(cfg, seed=0)
    ids, mask = left_pad(PROMPTS)
    steps = 6
    want = [greedy_alone(model, valid_tokens(ids, mask, i), steps, eos=99) for i in range(4)]
    r = sample(model, ids, mask, max_new_tokens=steps, eos_id=99, pad_id=PAD, temperature=0.0)
    assert r.completions.tolist() == want
    logp = token_logprobs(model, r.input_ids, r.attention_mask, start=r.prompt_len)
    for i in range(4):
        toks = valid_tokens(r.input_ids, r.attention_mask, i)
        with torch.no_grad():
            lp_all = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0], -1)
        n = len(toks) - steps
        alone = lp_all[n - 1 : -1].gather(-1, torch.tensor(toks[n:])[:, None])[:, 0]
        torch.testing.assert_close(logp[i], alone, atol=1e-5, rtol=1e-5)
