"""Environments a protocol can name: batched tabular MDPs with exact evaluation (``tabular``,
``ENVS``), language-model tasks with verifiable rewards (``lm_tasks``, ``LM_TASKS``) and
classic-control tasks (``classic``, ``CLASSIC_ENVS``: a ``ClassicTask`` names one; the trainers
build its vector environments). ``ENVIRONMENTS`` holds every one of them by name,
``make(name, **kwargs)`` builds one."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from grpo_lab.envs.classic import CLASSIC_ENVS
from grpo_lab.envs.lm_tasks import LM_TASKS, make_task
from grpo_lab.envs.tabular import ENVS
from grpo_lab.registry import Registry

ENVIRONMENTS: Registry[Callable[..., Any]] = Registry("env")
for _name in ENVS.names():
    ENVIRONMENTS.add(_name, ENVS.get(_name))
for _name in LM_TASKS.names():
    ENVIRONMENTS.add(_name, partial(make_task, _name))


@dataclass(frozen=True)
class ClassicTask:
    """A classic-control task named by a protocol (``env_id``, e.g. "CartPole-v1"); the
    trainers of ``grpo_lab.algorithms.classic*`` build its vector environments."""

    env_id: str


for _name in CLASSIC_ENVS.names():
    ENVIRONMENTS.add(_name, partial(ClassicTask, _name))


def env_parameters(name: str) -> list[str] | None:
    """The keyword arguments environment ``name`` accepts (None: any), read off its generator's
    signature, so a protocol's ``env.kwargs`` can be checked before anything runs."""
    fn = ENVIRONMENTS.get(name)
    if isinstance(fn, partial) and fn.func is make_task:
        fn = LM_TASKS.get(fn.args[0])
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [k for k, p in sig.parameters.items() if p.kind in kinds]


def make(name: str, **kwargs: Any) -> Any:
    """Build the environment ``name`` (one of ``ENVIRONMENTS.names()``) with ``kwargs``: a
    ``TabularMDP`` or an ``LMTask``."""
    return ENVIRONMENTS.get(name)(**kwargs)
