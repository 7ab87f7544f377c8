"""Environments a protocol can name: batched tabular MDPs with exact evaluation (``tabular``,
``ENVS``) and language-model tasks with verifiable rewards (``lm_tasks``, ``LM_TASKS``); later
classic control. ``ENVIRONMENTS`` holds every one of them by name, ``make(name, **kwargs)``
builds one."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from grpo_lab.envs.lm_tasks import LM_TASKS, make_task
from grpo_lab.envs.tabular import ENVS
from grpo_lab.registry import Registry

ENVIRONMENTS: Registry[Callable[..., Any]] = Registry("env")
for _name in ENVS.names():
    ENVIRONMENTS.add(_name, ENVS.get(_name))
for _name in LM_TASKS.names():
    ENVIRONMENTS.add(_name, partial(make_task, _name))


def make(name: str, **kwargs: Any) -> Any:
    """Build the environment ``name`` (one of ``ENVIRONMENTS.names()``) with ``kwargs``: a
    ``TabularMDP`` or an ``LMTask``."""
    return ENVIRONMENTS.get(name)(**kwargs)
