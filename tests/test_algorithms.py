"""Tests of grpo_lab/algorithms/__init__.py: one contract every registered algorithm keeps,
parametrised over the ``ALGORITHMS`` registry (a new algorithm must add a small setup here).

The contract:
- its batchable fields exist in its config model;
- a batch of configurations that differ in batchable fields gives each configuration's numbers
  as if it ran alone (the PureJaxRL pattern, arXiv 2210.05639: the batch is an implementation
  detail, never a change of results) — up to the float rounding of differently shaped GEMMs;
- a fixed seed gives the same numbers twice (determinism);
- every logged number is finite or NaN (no infinities), and every run ends "ok" here.
Timing columns (wall time, tokens or steps per second) and work counted per batch are exempt
from equality: they measure the machine.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs import make
from grpo_lab.store import flatten

# name -> (environment, base config, the override that makes a second configuration)
SETUPS: dict[str, tuple[Any, dict[str, Any], dict[str, Any]]] = {
    "grpo": (
        ("garnet", {"num_states": 4, "num_actions": 3, "seed": 0}),
        {"iterations": 2, "epochs": 2, "num_groups": 4, "group_size": 4},
        {"seed": 7, "lr": 0.3},
    ),
    "ppo": (
        ("garnet", {"num_states": 4, "num_actions": 3, "seed": 0}),
        {"iterations": 2, "num_episodes": 16},
        {"seed": 7, "lr": 0.2},
    ),
    "trpo": (
        ("garnet", {"num_states": 4, "num_actions": 3, "seed": 0}),
        {"iterations": 2, "num_groups": 4, "group_size": 4},
        {"seed": 7, "delta": 0.003},
    ),
    "gradient": (
        ("bandit", {"k": 3, "seed": 0}),
        {"num_batches": 20},
        {"seed": 7},
    ),
    "lm-grpo": (
        ("addition", {"digits": 1}),
        {
            "sft_steps": 0,
            "n_train": 50,
            "n_eval": 8,
            "prompts_per_batch": 2,
            "group_size": 2,
            "iterations": 1,
            "probe_prompts": 2,
            "eval_every": 1,
        },  # fmt: skip
        {"seed": 7},
    ),
    "classic-ppo": (
        ("CartPole-v1", {}),
        {"total_timesteps": 2 * 8 * 32, "update_epochs": 2, "eval_episodes": 1},
        {"seed": 7, "lr": 3e-3},
    ),
    "classic-grpo": (
        ("CartPole-v1", {}),
        {"num_groups": 2, "group_size": 2, "iterations": 2, "eval_episodes": 1},
        {"seed": 7, "lr": 3e-3},
    ),
    "classic-trpo": (
        ("CartPole-v1", {}),
        {"n_steps": 128, "batch_size": 64, "total_timesteps": 2 * 2 * 128, "eval_episodes": 1},
        {"seed": 7, "delta": 0.003},
    ),
}
MACHINE = ("time", "per_s", "flops", "wall")  # columns that measure the machine, not the run


def test_every_registered_algorithm_has_a_contract_setup():
    assert set(SETUPS) == set(ALGORITHMS.names())


def _configs(name: str, cache: str) -> tuple[Any, list[Any]]:
    algo = ALGORITHMS.get(name)
    (env_name, kwargs), base, other = SETUPS[name]
    if name == "lm-grpo":
        base = {**base, "cache_dir": cache}
    env = make(env_name, **kwargs)
    return env, [algo.config(**base), algo.config(**{**base, **other})]


def _numbers(record: Any, c: int) -> dict[str, torch.Tensor]:
    """Configuration c's logged numbers: every step, iteration and summary series."""
    out = {}
    for where in ("step", "iteration", "iter"):
        try:
            stacked = record.stacked(where)
        except (KeyError, ValueError):
            continue
        out.update({f"{where}.{k}": v[c] for k, v in stacked.items()})
    for k, v in record.summary.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            out[f"summary.{k}"] = v[c]
    return {k: v for k, v in out.items() if not any(m in k for m in MACHINE)}


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_batchable_fields_are_config_fields(name):
    algo = ALGORITHMS.get(name)
    fields = set(flatten(algo.config().model_dump()))
    assert set(algo.batchable) <= fields, sorted(set(algo.batchable) - fields)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_batch_equals_alone_deterministic_and_finite(name, tmp_path):
    algo = ALGORITHMS.get(name)
    env, cfgs = _configs(name, str(tmp_path))
    other = SETUPS[name][2]
    batched = len(algo.batchable) > 0
    assert not batched or set(other) <= set(algo.batchable)  # the batch varies batchable fields
    together = algo.train(env, cfgs) if batched else None
    for c, cfg in enumerate(cfgs):
        alone = algo.train(env, [cfg])
        again = algo.train(env, [cfg])
        assert alone.status == again.status == ["ok"], (alone.status, alone.error)
        a, b = _numbers(alone, 0), _numbers(again, 0)
        assert a.keys() == b.keys() and a
        for k in a:  # determinism: the same seed, the same numbers, to the bit
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
            v = a[k].double()
            assert not torch.isinf(v).any(), f"{name}: {k} has infinities"
        if together is not None:
            t = _numbers(together, c)
            assert t.keys() == a.keys()
            for k in a:
                torch.testing.assert_close(
                    t[k].double(), a[k].double(), rtol=1e-5, atol=1e-6, equal_nan=True, msg=k
                )
    if together is not None:
        assert together.status == ["ok", "ok"]
        # the two configurations really differ (the test would be empty otherwise)
        t0, t1 = _numbers(together, 0), _numbers(together, 1)
        assert any(
            not torch.allclose(t0[k].double(), t1[k].double(), equal_nan=True)
            for k in t0
            if t0[k].shape == t1[k].shape
        )


def test_named_seed_streams_keep_their_values():
    """grpo_lab.seeding names every random stream; the values are those the code used before the
    names existed (stored runs reproduce), unique within a family."""
    from grpo_lab import seeding

    tabular = {seeding.SAMPLING, seeding.MINIBATCH, seeding.PPO_CRITIC_INIT}
    assert tabular == {0, 1, 2}
    assert (seeding.GRADIENT_SAMPLES, seeding.GRADIENT_POINT) == (2, 3)
    classic = [seeding.CLASSIC_ROLLOUT, seeding.CLASSIC_GROUP_RESET, seeding.CLASSIC_EVAL_RESET,
               seeding.MLP_INIT, seeding.CLASSIC_PPO_EPOCH]  # fmt: skip
    assert classic == [0, 1, 5, 7, 100] and len(set(classic)) == len(classic)
    assert (seeding.LM_PROMPTS, seeding.LM_SHARDS, seeding.LM_SFT) == (0, 10, 99)
    assert set(seeding.STREAMS.values()) >= {0, 1, 2, 3, 5, 7, 10, 99, 100}
    # derive_seed is SplitMix64 chained over (seed, index, stream): a hand-checked value
    assert seeding._splitmix64(0) == 0xE220A8397B1DCDAF
