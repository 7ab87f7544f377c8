"""GRPO on small causal LMs (grpo_lab/algorithms/grpo_lm.py): bad input before training, the
loop's metrics and determinism, the behaviour-policy mismatch, the warm-start cache, the probe KL
against sampled estimators, learning on 2-digit addition, and torchrun DDP == one process."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.algorithms.grpo_lm import (
    LMGRPOConfig,
    LMGRPOTrainer,
    supervised_warm_start,
    train_lm_grpo,
    warm_started_model,
)
from grpo_lab.envs.lm_tasks import CharTokenizer, make_task, task_tokenizer
from grpo_lab.losses import kl_penalty
from grpo_lab.policies.lm import build_model, probe_kl, sample, save_model, token_logprobs

ADD = make_task("addition", digits=2)
# a random model never answers right; the format reward gives its groups reward variance
FMT = make_task("addition", digits=2, format_reward=0.5)
# a fast configuration: random init (no SFT), a few prompts, short runs
FAST = {"sft_steps": 0, "n_train": 200, "n_eval": 16, "prompts_per_batch": 4, "group_size": 4,
        "iterations": 2, "probe_prompts": 4, "eval_every": 1}  # fmt: skip


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValidationError, match="group_size"):
        LMGRPOConfig(group_size=1)
    with pytest.raises(ValidationError, match="multiple of rollout_shards=3"):
        LMGRPOConfig(prompts_per_batch=16, rollout_shards=3)
    with pytest.raises(ValidationError, match="is_cap truncates importance weights"):
        LMGRPOConfig(is_cap=2.0)
    with pytest.raises(ValidationError, match="loss.advantage must be 'group'"):
        LMGRPOConfig(loss="ppo")
    with pytest.raises(ValidationError, match="sampler"):
        LMGRPOConfig(sampler="float16")


def test_config_rejects_a_correction_without_a_weight_to_pi():
    """pi / mu exists only between the tempered distributions: a nucleus sampler (top_p < 1) has
    no mass on pi's tail and a greedy one is a point mass, so a correction is rejected there."""
    with pytest.raises(ValidationError, match=r"correction='token' needs top_p == 1.*top_p=0.9"):
        LMGRPOConfig(correction="token", sampler="bfloat16", top_p=0.9)
    with pytest.raises(ValidationError, match="correction='sequence' needs temperature > 0"):
        LMGRPOConfig(correction="sequence", temperature=0.0)
    LMGRPOConfig(correction="token", temperature=0.7)  # a tempered sampler is corrected exactly
    LMGRPOConfig(correction="none", top_p=0.9, temperature=0.0)  # no weight: sampling only


def test_bad_input_is_caught_before_training(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="no-such-model"):
        LMGRPOTrainer(ADD, LMGRPOConfig(warm_start=str(tmp_path / "no-such-model"), **FAST))
    # prompt (bos + 6) + answer (3) + eos = 11 tokens do not fit a context of 8
    with pytest.raises(ValueError, match="11"):
        LMGRPOTrainer(ADD, LMGRPOConfig(context_len=8, **FAST))
    # a checkpoint whose tokenizer cannot encode the task's alphabet
    ckpt = tmp_path / "letters"
    tok = CharTokenizer("abcdefghijklm")
    save_model(build_model("tiny", vocab_size=tok.vocab_size, context_len=64), ckpt)
    tok.save(ckpt / "tokenizer.json")
    with pytest.raises(ValueError, match="cannot encode"):
        LMGRPOTrainer(ADD, LMGRPOConfig(warm_start=str(ckpt), **FAST))


def test_a_run_records_the_metrics_and_repeats_exactly():
    cfg = LMGRPOConfig(**FAST)
    rec = train_lm_grpo(FMT, cfg)
    steps, iters = rec.stacked("step"), rec.stacked("iter")
    for k in ("ratio_max", "ratio_min", "clip_frac_low", "clip_frac_high", "approx_kl", "kl_ref",
              "probe_kl", "entropy", "grad_norm", "lr", "pg_loss", "grad_clip_frac"):  # fmt: skip
        assert steps[k].shape == (1, 2) and torch.isfinite(steps[k]).all(), k
    for k in ("reward_mean", "reward_std", "zero_std_frac", "length_mean", "rollout_time",
              "update_time", "rollout_tok_per_s", "update_tok_per_s", "eval_acc"):  # fmt: skip
        assert iters[k].shape == (1, 2) and torch.isfinite(iters[k]).all(), k
    assert (steps["probe_kl"] >= 0).all() and (steps["ratio_min"] <= steps["ratio_max"]).all()
    assert set(rec.summary) == {"eval_acc_start", "eval_acc_final", "eval_acc_gain"}
    assert (iters["reward_std"] > 0).any()  # groups with a signal: the policy moves
    assert (steps["probe_kl"] > 0).all() and (steps["grad_norm"] > 0).all()
    again = train_lm_grpo(FMT, cfg)
    for k in ("pg_loss", "probe_kl", "ratio_max"):
        torch.testing.assert_close(again.stacked("step")[k], steps[k], rtol=0, atol=0)
    torch.testing.assert_close(again.stacked("iter")["reward_mean"], iters["reward_mean"])


def test_behaviour_mismatch_gives_importance_weights_away_from_one():
    base = LMGRPOConfig(**{**FAST, "iterations": 1})
    tr = LMGRPOTrainer(FMT, base.model_copy(update={"sampler": "bfloat16", "correction": "token"}))
    old = tr.model
    behaviour = tr._behaviour(old)
    assert next(behaviour.parameters()).dtype == torch.bfloat16
    (ro, _), *_ = tr.rollout(0, behaviour)["parts"]
    recomputed = token_logprobs(old, ro.input_ids, ro.attention_mask, start=ro.prompt_len)
    m = ro.completion_mask
    log_w = (recomputed - ro.logprobs)[m]
    assert log_w.abs().max() > 1e-4  # bf16 sampling is a different distribution
    assert log_w.abs().max() < 0.5  # ... but close to pi_old
    tr.update(0)  # and the corrected update runs
    stale = LMGRPOTrainer(FMT, base.model_copy(update={"sampler": "stale", "iterations": 3}))
    stale.update(0)
    stale.update(1)  # now the sampler is the policy of one iteration before
    b = stale._behaviour(stale.model)
    assert b is not stale.model
    params = zip(b.parameters(), stale.model.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in params)


def test_trainer_scores_the_tempered_policy_it_samples_from():
    """temperature 0.5: mu (Rollout.logprobs) and pi_old (the trainer's score) are both
    log softmax(z / 0.5) of the sampled tokens, checked against a float64 copy of the model one
    unpadded row at a time; so the current sampler's importance weight is 1 and the ratio at
    theta_old compares the distribution that was sampled."""
    tau = 0.5
    cfg = LMGRPOConfig(**{**FAST, "iterations": 1}, temperature=tau, correction="token")
    tr = LMGRPOTrainer(FMT, cfg)
    assert tr.pi_temperature == tau
    (ro, _), *_ = tr.rollout(0, tr.model)["parts"]
    m = ro.completion_mask
    with torch.no_grad():
        old_logp, _ = tr.score(tr.model, ro.input_ids, ro.attention_mask, ro.prompt_len)
    torch.testing.assert_close(old_logp[m], ro.logprobs[m], atol=1e-5, rtol=0)  # w = 1
    ref = copy.deepcopy(tr.model).double()
    raw_gap = 0.0
    for i in range(ro.input_ids.shape[0]):
        toks = ro.input_ids[i][ro.attention_mask[i].bool()]
        n = len(toks) - int(m[i].sum())  # prompt tokens of row i
        with torch.no_grad():
            z = ref(input_ids=toks[None]).logits[0, n - 1 : -1]  # (T_i, V)
        want = torch.log_softmax(z / tau, -1).gather(-1, toks[n:, None])[:, 0]
        torch.testing.assert_close(ro.logprobs[i, : len(want)].double(), want, atol=2e-5, rtol=0)
        raw = torch.log_softmax(z, -1).gather(-1, toks[n:, None])[:, 0]
        raw_gap = max(raw_gap, float((raw - want).abs().max()))
    assert raw_gap > 0.1  # the raw logits give other numbers: the weight would not be pi / mu
    metrics = tr.update(0)
    assert torch.isfinite(metrics["probe_kl"]).all() and torch.isfinite(metrics["pg_loss"]).all()


def test_warm_start_is_trained_once_and_reused(tmp_path):
    cfg = LMGRPOConfig(**{**FAST, "sft_steps": 3, "sft_batch": 8}, cache_dir=str(tmp_path))
    tok = task_tokenizer(ADD)
    train, _ = ADD.splits(cfg.n_train, cfg.n_eval, cfg.data_seed)
    first = warm_started_model(cfg, ADD, tok, train)
    (ckpt,) = list(tmp_path.glob("sft-*"))
    assert (ckpt / "config.json").is_file() and (ckpt / "tokenizer.json").is_file()
    stamp = (ckpt / "config.json").stat().st_mtime_ns
    second = warm_started_model(cfg, ADD, tok, train)
    assert (ckpt / "config.json").stat().st_mtime_ns == stamp  # loaded, not retrained
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # another SFT setting is another checkpoint
    warm_started_model(cfg.model_copy(update={"sft_lr": 1e-3}), ADD, tok, train)
    assert len(list(tmp_path.glob("sft-*"))) == 2


def test_supervised_warm_start_lowers_the_answer_loss():
    tok = task_tokenizer(ADD)
    train, _ = ADD.splits(200, 10, 0)
    model = build_model("tiny", vocab_size=tok.vocab_size, context_len=32, seed=0)
    losses = supervised_warm_start(model, tok, train, steps=30, lr=3e-3, batch=32)
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_probe_kl_and_sampled_kl_estimators_agree():
    """Completions sampled from pi_old: the sampled k1 and k3 estimates of KL(pi_old || pi_new)
    per token agree with the exact full-vocabulary KL on the same positions within 5 standard
    errors (both unbiased estimators of the same per-position expectation)."""
    tok = task_tokenizer(ADD)
    old = build_model("tiny", vocab_size=tok.vocab_size, context_len=32, seed=0)
    new = build_model("tiny", vocab_size=tok.vocab_size, context_len=32, seed=0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    from grpo_lab.envs.lm_tasks import encode_prompts

    ids, am = encode_prompts(tok, [e.prompt for e in ADD.sample(400, seed=2)])
    ro = sample(old, ids, am, max_new_tokens=4, eos_id=tok.eos_id, pad_id=tok.pad_id,
                generator=torch.Generator().manual_seed(3))  # fmt: skip
    m = ro.completion_mask
    lo = token_logprobs(old, ro.input_ids, ro.attention_mask, start=ro.prompt_len)
    ln = token_logprobs(new, ro.input_ids, ro.attention_mask, start=ro.prompt_len)
    with torch.no_grad():
        exact = float(
            probe_kl(old, new, ro.input_ids, ro.attention_mask, start=ro.prompt_len, mask=m)
        )
    assert exact > 0
    for kind in ("k1", "k3"):
        # KL(pi_old || pi_new) from samples of pi_old: log rho = log pi_new - log pi_old
        est = kl_penalty(lo, ln, kind)[m].double()  # kl_penalty(x, ref): rho = ref / x
        se = float(est.std() / est.numel() ** 0.5)
        assert abs(float(est.mean()) - exact) < 5 * se, (kind, float(est.mean()), exact, se)


@pytest.mark.slow
def test_grpo_improves_held_out_addition_accuracy(tmp_path):
    """A tiny model warm-started on 2-digit addition (900 SFT steps), then 60 GRPO iterations
    (Dr. GRPO, 32 prompts x 8 completions): its greedy accuracy on the 200 held-out prompts rises by
    at least 10 points over the warm-start model's on the same prompts (measured 2026-12-06: 71% ->
    87%; the standard error of one accuracy is about 3.5 points). The warm start sits near a sharp
    transition: on this machine 600 SFT steps gave 11% (seeds 0-2: 7.5-13.5%) and 700 gave 19.5%,
    where 40.5% had been measured before at 600, so 900 steps keep it away from both ends."""
    cfg = LMGRPOConfig(
        model="tiny", sft_steps=900, sft_lr=3e-3, n_train=2000, n_eval=200, cache_dir=str(tmp_path),
        loss="dr_grpo", lr=3e-4, prompts_per_batch=32, group_size=8, iterations=60, eval_every=60,
        seed=0,
    )  # fmt: skip
    rec = train_lm_grpo(ADD, cfg)
    start, final = float(rec.summary["eval_acc_start"][0]), float(rec.summary["eval_acc_final"][0])
    assert 0.02 < start < 0.85, start  # the warm start solves some prompts, not all
    assert final >= start + 0.10, (start, final)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    """A 2-process gloo run (DDP, the batch's two shards on two ranks) ends with the parameters
    of a 1-process run over the same two shards."""
    config = json.dumps({**FAST, "iterations": 2, "rollout_shards": 2, "minibatches": 2,
                         "prompts_per_batch": 4, "lr": 1e-3, "loss": "dapo"})  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"n{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", "-m", "grpo_lab.algorithms.grpo_lm", "--task", "addition",
               "--task-kwargs", '{"format_reward": 0.5}', "--config", config, "--save", str(out)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = out
    # the gradient itself (its norm before clipping), not only the Adam step, is the same
    g1, g2 = (
        json.loads((outs[n] / "record.json").read_text())["steps"]["grad_norm"] for n in (1, 2)
    )
    assert len(g1) == 4 and g1 == pytest.approx(g2, rel=1e-5)
    one, two = (build_model(Path(outs[n]) / "model") for n in (1, 2))
    for (name, p), q in zip(one.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    moved = build_model("tiny", vocab_size=task_tokenizer(ADD).vocab_size, context_len=64)
    params = zip(one.parameters(), moved.parameters(), strict=True)
    assert any(not torch.allclose(p, q) for p, q in params)
