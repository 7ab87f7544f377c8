"""Algorithms built from the loss functions: GRPO (grpo.py), PPO (ppo.py), TRPO (trpo.py), and
the gradient-estimator experiment (gradient.py) that the importance-sampling and gradient-bias
protocols run like an algorithm.

``ALGORITHMS`` names each one for protocols: its config model, its batched trainer
``train(mdp, configs) -> RunRecord`` and the config fields one batched run may vary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from grpo_lab.algorithms import (
    classic,
    classic_grpo,
    classic_trpo,
    gradient,
    grpo,
    grpo_lm,
    ppo,
    trpo,
)
from grpo_lab.algorithms.common import RunRecord
from grpo_lab.registry import Registry


@dataclass(frozen=True)
class Algorithm:
    """What a sweep needs to know of an algorithm."""

    config: type[BaseModel]
    train: Callable[[Any, Sequence[BaseModel]], RunRecord]  # (environment, configs)
    batchable: tuple[str, ...]


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
ALGORITHMS.add("grpo", Algorithm(grpo.GRPOConfig, grpo.train_grpo, grpo.BATCHABLE))
ALGORITHMS.add("ppo", Algorithm(ppo.PPOConfig, ppo.train_ppo, ppo.BATCHABLE))
ALGORITHMS.add("trpo", Algorithm(trpo.TRPOConfig, trpo.train_trpo, trpo.BATCHABLE))
# not a trainer: a gradient estimator measured against the exact gradient (gradient.py)
ALGORITHMS.add(
    "gradient", Algorithm(gradient.GradientConfig, gradient.train_gradient, gradient.BATCHABLE)
)
# GRPO on a language-model task (grpo_lm.py): the environment is an LMTask, not an MDP
ALGORITHMS.add("lm-grpo", Algorithm(grpo_lm.LMGRPOConfig, grpo_lm.train_lm_grpo, grpo_lm.BATCHABLE))
# classic control (classic*.py): the environment is a ClassicTask (e.g. "CartPole-v1")
ALGORITHMS.add(
    "classic-ppo",
    Algorithm(classic.ClassicPPOConfig, classic.train_classic_ppo, classic.PPO_BATCHABLE),
)
ALGORITHMS.add(
    "classic-grpo",
    Algorithm(
        classic_grpo.ClassicGRPOConfig, classic_grpo.train_classic_grpo, classic_grpo.BATCHABLE
    ),
)
ALGORITHMS.add(
    "classic-trpo",
    Algorithm(
        classic_trpo.ClassicTRPOConfig, classic_trpo.train_classic_trpo, classic_trpo.BATCHABLE
    ),
)
