"""Protocols: a claim of the seed, the experiment that tests it, and the rule that turns the data
into a verdict.

A protocol is a TOML file in ``protocols/`` validated into a ``Protocol`` before anything runs:

    name = "ratio-bound"
    claim = "The dual-clipping mechanism ensures that policy updates are bounded: |r - 1| <= eps"
    question = "After each optimiser step, does every visited (s, a) keep its ratio in range?"

    [env]                      # a registered environment (grpo_lab.envs.tabular.ENVS)
    name = "garnet"
    kwargs = { num_states = 8, num_actions = 3, branching = 2, seed = 0 }

    [[algorithms]]             # one or more; config = the algorithm's config fields
    name = "grpo"
    config = { loss = "dapo", epochs = 4 }

    [grid]                     # dotted config field -> values; the sweep is their product
    "loss.eps_low" = [0.1, 0.2, 0.3]
    seed = [0, 1, 2]

    [budget.quick]             # overrides per budget: "quick" for tests, "full" for the record
    iterations = 5
    [budget.full]
    iterations = 100

    [verdict]                  # a registered rule (VERDICTS) and its parameters
    rule = "ratio-bound"

Every resolved configuration (each algorithm x grid point x budget) is validated when the file is
loaded; an error names its path, e.g. ``algorithms[0].config.lr`` or ``grid.lr[2]``, and the
allowed values where there is a list of them.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs.tabular import ENVS
from grpo_lab.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "protocols"
BUDGETS = ("quick", "full")


class ProtocolError(ValueError):
    """A protocol file that cannot run; the message names the field path."""


# ----------------------------------------------------------------------------- schema


class EnvSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return ENVS.check(v)


class AlgoSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    label: str | None = None  # how reports name it (default: name)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return ALGORITHMS.check(v)


class Budgets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    quick: dict[str, Any] = Field(default_factory=dict)
    full: dict[str, Any] = Field(default_factory=dict)


class VerdictSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        return VERDICTS.check(v)


class Protocol(BaseModel):
    """A validated protocol file (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    claim: str = Field(min_length=1)  # the seed's sentence, quoted
    question: str = ""  # what is measured, in one line
    env: EnvSpec
    algorithms: list[AlgoSpec] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    budget: Budgets = Field(default_factory=Budgets)
    verdict: VerdictSpec

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, values in v.items():
            if not values:
                raise ValueError(f"grid axis {k!r} is empty; give at least one value")
        return v


# ----------------------------------------------------------------------------- runs


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            raise KeyError(dotted)
        d = nxt
    if parts[-1] not in d:
        raise KeyError(dotted)
    d[parts[-1]] = value


@dataclass(frozen=True)
class RunSpec:
    """One run of a protocol: an algorithm with a resolved, validated config on the env."""

    protocol: str
    algorithm: str
    label: str
    env: EnvSpec
    config: BaseModel
    point: dict[str, Any] = field(default_factory=dict)  # the grid values of this run

    def resolved(self) -> dict[str, Any]:
        """Everything that determines the run's numbers, as JSON-ready data."""
        return {
            "algorithm": self.algorithm,
            "env": self.env.model_dump(mode="json"),
            "config": self.config.model_dump(mode="json"),
        }


def _resolve(
    algo: AlgoSpec, index: int, budget: dict[str, Any], point: dict[str, Any]
) -> BaseModel:
    """Base config -> full dict -> budget and grid overrides -> validated config model."""
    cls = ALGORITHMS.get(algo.name).config
    where = f"algorithms[{index}].config"
    try:
        full = cls.model_validate(algo.config).model_dump()
    except ValidationError as e:
        raise ProtocolError(_explain(e, where)) from None
    for source, values in (("budget", budget), ("grid", point)):
        for key, value in values.items():
            try:
                _set_dotted(full, key, value)
            except KeyError:
                raise ProtocolError(
                    f"{source}.{key}: {algo.name} has no config field {key!r}; "
                    f"fields: {sorted(full)}"
                ) from None
    try:
        return cls.model_validate(full)
    except ValidationError as e:
        axes = ", ".join(f"{k}={v!r}" for k, v in point.items())
        at = f" (at grid point {axes})" if axes else ""
        raise ProtocolError(_explain(e, where) + at) from None


def _explain(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
        path = (where + loc).lstrip(".") or "(top level)"
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


def expand(
    protocol: Protocol, budget: str = "quick", overrides: dict[str, Any] | None = None
) -> list[RunSpec]:
    """Every run of ``protocol`` under ``budget``: algorithms x the grid's product, validated.

    ``overrides`` (dotted config field -> value, as ``grpo-lab run --set``) apply after the
    budget; a grid axis named in ``overrides`` is replaced by that single value.
    """
    if budget not in BUDGETS:
        raise ProtocolError(f"unknown budget {budget!r}; choose one of {list(BUDGETS)}")
    overrides = overrides or {}
    grid = {k: ([overrides[k]] if k in overrides else v) for k, v in protocol.grid.items()}
    extra = {k: v for k, v in overrides.items() if k not in grid}
    budget_values = {**getattr(protocol.budget, budget), **extra}
    keys = list(grid)
    runs = []
    for i, algo in enumerate(protocol.algorithms):
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            cfg = _resolve(algo, i, budget_values, point)
            label = algo.label or algo.name
            runs.append(RunSpec(protocol.name, algo.name, label, protocol.env, cfg, point))
    return runs


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file; resolve every run of both budgets (nothing runs)."""
    p = Path(path)
    if not p.is_file():
        raise ProtocolError(f"protocol file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ProtocolError(f"{p.name}: not valid TOML: {e}") from None
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as e:
        raise ProtocolError(f"{p.name}: " + _explain(e, "")) from None
    for b in BUDGETS:
        try:
            expand(protocol, b)
        except ProtocolError as e:
            raise ProtocolError(f"{p.name} (budget {b}): {e}") from None
    return protocol


def find_protocols(directory: str | Path = PROTOCOL_DIR) -> dict[str, Path]:
    """Protocol name -> file, for every ``*.toml`` in ``directory`` (the default suite)."""
    d = Path(directory)
    if not d.is_dir():
        raise ProtocolError(f"protocol directory {str(d)!r} does not exist")
    found = {}
    for f in sorted(d.glob("*.toml")):
        found[tomllib.loads(f.read_text()).get("name", f.stem)] = f
    return found


# ----------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """A protocol's answer: ``status`` in {"holds", "violated", "inconclusive"}, a one-line
    summary, and the evidence (numbers, with their confidence intervals) it rests on."""

    protocol: str
    claim: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=float)


# rule(steps (tidy DataFrame, one row per optimiser step), params) -> (status, summary, evidence)
VerdictRule = Callable[[pd.DataFrame, dict[str, Any]], tuple[str, str, dict[str, Any]]]
VERDICTS: Registry[VerdictRule] = Registry("verdict rule")


def _upper_rate_bound(n: int, confidence: float = 0.95) -> float:
    """Exact (Clopper-Pearson) upper bound on a rate after 0 events in n trials: 1 - (1-c)^(1/n)."""
    return 1.0 - (1.0 - confidence) ** (1.0 / n) if n > 0 else 1.0


def _universal(
    steps: pd.DataFrame, bad: pd.Series, what: str, worst: str
) -> tuple[str, str, dict[str, Any]]:
    """Verdict for a claim that must hold at every optimiser step: one exact counterexample
    refutes it; none in n steps bounds the violation rate (95% Clopper-Pearson)."""
    n = int(bad.notna().sum())
    k = int(bad.fillna(False).sum())
    runs_with = int(steps.loc[bad.fillna(False).astype(bool), "run_id"].nunique()) if k else 0
    evidence = {
        "steps": n,
        "violating_steps": k,
        "violation_rate": k / n if n else float("nan"),
        "runs": int(steps["run_id"].nunique()),
        "runs_with_violation": runs_with,
        "worst": worst,
    }
    if n == 0:
        return "inconclusive", f"no optimiser step recorded {what}", evidence
    if k > 0:
        return (
            "violated",
            f"{what} failed at {k} of {n} steps ({runs_with} runs); {worst}",
            evidence,
        )
    ub = _upper_rate_bound(n)
    evidence["violation_rate_upper95"] = ub
    return (
        "holds",
        f"{what} held at all {n} steps (violation rate < {ub:.2g}, 95%); {worst}",
        evidence,
    )


@VERDICTS.register("ratio-bound")
def _ratio_bound(steps: pd.DataFrame, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The seed's lemma |r - 1| <= eps, checked exactly after every optimiser step over every
    (s, a) the old policy visits (``exact_ratio_max/min`` against the run's eps_low / eps_high)."""
    tol = float(params.get("tol", 1e-9))
    lo = 1.0 - steps["cfg.loss.eps_low"]
    hi = 1.0 + steps["cfg.loss.eps_high"]
    over = steps["exact_ratio_max"] - hi
    under = lo - steps["exact_ratio_min"]
    bad = ((over > tol) | (under > tol)).astype("boolean")
    bad[steps["exact_ratio_max"].isna()] = pd.NA
    excess = float(pd.concat([over, under]).max())
    worst = f"largest excursion beyond the clip range: {excess:.3g}"
    status, summary, ev = _universal(steps, bad, "|r - 1| <= eps", worst)
    ev["max_excursion"] = excess
    ev["max_exact_ratio"] = float(steps["exact_ratio_max"].max())
    ev["min_exact_ratio"] = float(steps["exact_ratio_min"].min())
    ev["mean_frac_outside"] = float(steps["exact_frac_outside"].mean())
    return status, summary, ev


@VERDICTS.register("trpo-bound")
def _trpo_bound(steps: pd.DataFrame, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """TRPO Theorem 1 (arXiv 1502.05477): J(new) - J(old) >= L_old(new) - J(old) - C max KL at
    every step (``bound_slack >= 0``); its slack is reported relative to |true gain|."""
    tol = float(params.get("tol", 1e-9))
    slack = steps["bound_slack"]
    bad = (slack < -tol).astype("boolean")
    bad[slack.isna()] = pd.NA
    worst = f"min slack {slack.min():.3g}, median slack {slack.median():.3g}"
    status, summary, ev = _universal(steps, bad, "the Theorem 1 lower bound", worst)
    ev["min_slack"] = float(slack.min())
    ev["median_slack"] = float(slack.median())
    ev["median_true_gain"] = float(steps["true_gain"].median())
    return status, summary, ev


@VERDICTS.register("surrogate-bound")
def _surrogate_bound(
    steps: pd.DataFrame, params: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """The seed's "the clipped objective provides a lower bound on the true objective": is the
    exact clipped objective's gain <= the true gain J(new) - J(old) at every step?"""
    tol = float(params.get("tol", 1e-9))
    gap = steps["clipped_gain"] - steps["true_gain"]
    bad = (gap > tol).astype("boolean")
    bad[gap.isna()] = pd.NA
    worst = f"largest overestimate of the true gain: {gap.max():.3g}"
    status, summary, ev = _universal(steps, bad, "clipped gain <= true gain", worst)
    ev["max_overestimate"] = float(gap.max())
    return status, summary, ev
