"""Verdict rules: how a sweep's stored data answer the claim a protocol quotes.

A rule is a function ``fn(data, params) -> (status, summary, evidence)`` registered in
``VERDICTS`` with a pydantic model of its parameters (``Rule``). The model is the rule's schema:
``grpo-lab check`` validates a protocol's ``[verdict] params`` against it before anything runs,
and checks every parameter that names a grid axis (``axis``), a value on it (``claimed``) or an
algorithm label (``better``, ``worse``, ``subject``, ...) against the protocol itself.

Statuses are ``holds``, ``violated`` and ``inconclusive``. Every rule can reach each of them at its
protocol's shipped run counts (``tests/test_verdicts.py`` builds synthetic data for each). Where the
data cannot speak, the status is ``inconclusive`` and the summary starts "no signal:" with the
reason (``NoSignal``): every condition gave identical results (an inert axis), every group had
zero reward variance, the clip never activated, a ceiling, a loss identically zero.

``judge`` adds what a reader needs beside the answer: the *hypothesis* the rule tested (what
"better" / "claimed" mean, not a finding), and the *scope* (environment, algorithms and their
settings, budget, runs) within which the verdict speaks (design.md §4).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict

from grpo_lab.analysis import SweepData, as_data
from grpo_lab.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from grpo_lab.protocols import Protocol


Outcome = tuple[str, str, dict[str, Any]]  # (status, summary, evidence)
STATUSES = ("holds", "violated", "inconclusive")


# ----------------------------------------------------------------------------- data and verdict


@dataclass
class Verdict:
    """A protocol's answer: ``status`` in ``STATUSES``, a one-line summary, the evidence (numbers,
    with their confidence intervals), the hypothesis the rule tested and the verdict's scope."""

    protocol: str
    claim: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    question: str = ""
    hypothesis: str = ""
    scope: str = ""
    not_shown: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=float)


class NoSignal(Exception):
    """Raised inside a rule when the data hold no signal; ``judge`` turns it into
    ``inconclusive`` with the summary "no signal: <reason>"."""

    def __init__(self, reason: str, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence or {}


def no_signal(reason: str, evidence: dict[str, Any] | None = None) -> Outcome:
    ev = {**(evidence or {}), "no_signal": reason}
    return "inconclusive", f"no signal: {reason}", ev


# ----------------------------------------------------------------------------- rule registry


class Params(BaseModel):
    """A rule's parameters. Subclasses list which fields name grid axes, values on an axis, or
    algorithm labels, so a protocol can be checked against them before it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    AXES: ClassVar[tuple[str, ...]] = ()  # fields holding "cfg.<grid axis>"
    CLAIMED: ClassVar[tuple[tuple[str, str], ...]] = ()  # (value field, its axis field)
    LABELS: ClassVar[tuple[str, ...]] = ()  # fields holding labels (str or list of str)

    def hypothesis(self) -> str:
        return ""


@dataclass(frozen=True)
class Rule:
    """A verdict rule: ``fn(data, params)`` with its parameter schema ``params``."""

    fn: Callable[[SweepData, Any], Outcome]
    params: type[Params]
    doc: str = ""

    def validate(self, params: dict[str, Any] | Params) -> Params:
        return params if isinstance(params, self.params) else self.params.model_validate(params)

    def __call__(self, data: SweepData | pd.DataFrame, params: dict[str, Any] | Params) -> Outcome:
        p = self.validate(params)
        try:
            return self.fn(as_data(data), p)
        except NoSignal as e:
            return no_signal(e.reason, e.evidence)


VERDICTS: Registry[Rule] = Registry("verdict rule")


def rule(name: str, params: type[Params]) -> Callable[[Callable[..., Outcome]], Rule]:
    """``@rule("ratio-bound", BoundParams)``: register ``fn`` with its parameter schema."""

    def add(fn: Callable[..., Outcome]) -> Rule:
        return VERDICTS.add(name, Rule(fn, params, fn.__doc__ or ""))

    return add


def did_you_mean(word: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' when a close option exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- judge and scope


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def scope_line(
    protocol: Protocol, budget: str, runs: int, overrides: dict[str, Any] | None = None
) -> str:
    """Where the verdict speaks: environment, algorithms and their settings, grid, budget, runs."""
    env = protocol.env.name + (f" {_short(protocol.env.kwargs)}" if protocol.env.kwargs else "")
    algos = "; ".join(
        f"{a.label or a.name} = {a.name}" + (f" {_short(a.config)}" if a.config else "")
        for a in protocol.algorithms
    )
    grid = ", ".join(
        f"{k} in {_short(v)}" for k, v in protocol.grid.items() if k not in (overrides or {})
    )
    b = getattr(protocol.budget, budget, {}) if budget in ("quick", "full") else {}
    parts = [f"env {env}", f"algorithms: {algos}"]
    if grid:
        parts.append(f"grid: {grid}")
    parts.append(f"{budget} budget {_short(b)}" if b else f"{budget} budget")
    if overrides:
        parts.append(f"overrides {_short(overrides)}")
    parts.append(f"{runs} runs")
    return "; ".join(parts)


def judge(
    protocol: Protocol,
    sweep_path: str | Path,
    *,
    budget: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Verdict:
    """Apply the protocol's verdict rule to the stored results of its sweep."""
    data = SweepData.load(sweep_path)
    r = VERDICTS.get(protocol.verdict.rule)
    params = r.validate(protocol.verdict.params)
    status, summary, evidence = r(data, params)
    budget = budget or str(Path(sweep_path).name).rsplit("-", 1)[-1]
    runs = int(data.summary["run_id"].nunique()) if data.summary is not None else 0
    return Verdict(
        protocol.name,
        protocol.claim,
        status,
        summary,
        evidence,
        question=protocol.question,
        hypothesis=params.hypothesis(),
        scope=scope_line(protocol, budget, runs, overrides),
        not_shown=protocol.not_shown,
    )
