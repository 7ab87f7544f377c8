"""Protocols: a claim of the seed, the experiment that tests it, and the rule that turns the data
into a verdict.

A protocol is a TOML file in ``protocols/`` validated into a ``Protocol`` before anything runs:

    name = "ratio-bound"
    claim = "The dual-clipping mechanism ensures that policy updates are bounded: |r - 1| <= eps"
    question = "After each optimiser step, does every visited (s, a) keep its ratio in range?"

    [env]                      # a registered environment (grpo_lab.envs.ENVIRONMENTS)
    name = "garnet"
    kwargs = { num_states = 8, num_actions = 3, branching = 2, seed = 0 }

    [[algorithms]]             # one or more; config = the algorithm's config fields
    name = "grpo"
    config = { loss = "dapo", epochs = 4 }

    [grid]                     # dotted config field -> values; the sweep is their product
    "loss.eps_low+loss.eps_high" = [0.1, 0.2, 0.3]   # "a+b": one axis that sets both fields
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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs import ENVIRONMENTS
from grpo_lab.verdicts import VERDICTS, did_you_mean

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
        return ENVIRONMENTS.check(v)


class AlgoSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    label: str | None = None  # how reports name it (default: name)
    config: dict[str, Any] = Field(default_factory=dict)
    # tuned per algorithm before the evaluation runs: dotted config field -> candidate values
    tune: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("tune")
    @classmethod
    def _tune(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, values in v.items():
            if not values:
                raise ValueError(f"tune axis {k!r} is empty; give at least one value")
        return v

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

    def tuned(self) -> bool:
        """Whether any algorithm is tuned before its evaluation runs (``tune``)."""
        return any(a.tune for a in self.algorithms)

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    claim: str = Field(min_length=1)  # the seed's sentence, quoted
    question: str = ""  # what is measured, in one line
    env: EnvSpec
    algorithms: list[AlgoSpec] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    budget: Budgets = Field(default_factory=Budgets)
    verdict: VerdictSpec
    suite: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]*$")  # `grpo-lab run --suite`
    not_shown: str = ""  # what the verdict does not show (printed beside its scope)
    tune_seeds: list[int] = Field(default_factory=list)  # seeds of the tuning runs only

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
        for keys, value in values.items():
            try:
                for key in keys.split("+"):  # "a+b": one axis setting both fields
                    _set_dotted(full, key, value)
            except KeyError:
                raise ProtocolError(
                    f"{source}.{keys}: {algo.name} has no config field {key!r}; "
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


ENV_AXIS = "env.kwargs."  # a grid key "env.kwargs.seed" varies the environment, not the config


def _env_at(env: EnvSpec, point: dict[str, Any]) -> EnvSpec:
    kw = {k.removeprefix(ENV_AXIS): v for k, v in point.items() if k.startswith(ENV_AXIS)}
    return env.model_copy(update={"kwargs": {**env.kwargs, **kw}}) if kw else env


def expand(
    protocol: Protocol,
    budget: str = "quick",
    overrides: dict[str, Any] | None = None,
    tuned: dict[str, dict[str, Any]] | None = None,
) -> list[RunSpec]:
    """Every evaluation run of ``protocol`` under ``budget``: algorithms x the grid's product,
    validated.

    ``overrides`` (dotted config field -> value, as ``grpo-lab run --set``) apply after the
    budget; a grid axis named in ``overrides`` is replaced by that single value. Grid keys
    ``env.kwargs.<name>`` vary the environment (several MDPs of a family) instead of the config.
    ``tuned`` (label -> the chosen values of its ``tune`` axes, ``sweep.run_protocol`` finds them
    on the tuning runs) applies after the budget; an algorithm with ``tune`` but no entry there
    takes each tune axis's first value (what ``grpo-lab check`` validates).
    """
    return _expand(protocol, budget, overrides, tuned, tuning=False)


def expand_tuning(
    protocol: Protocol, budget: str = "quick", overrides: dict[str, Any] | None = None
) -> list[RunSpec]:
    """The tuning runs: each algorithm with ``tune`` at every point of its tune axes x the
    grid's environment axes x ``tune_seeds`` (disjoint from the evaluation seeds). The grid's
    other axes are not tuned over: a tuned setting must hold for the evaluation grid."""
    return _expand(protocol, budget, overrides, None, tuning=True)


def _expand(
    protocol: Protocol,
    budget: str,
    overrides: dict[str, Any] | None,
    tuned: dict[str, dict[str, Any]] | None,
    *,
    tuning: bool,
) -> list[RunSpec]:
    if budget not in BUDGETS:
        raise ProtocolError(f"unknown budget {budget!r}; choose one of {list(BUDGETS)}")
    overrides = overrides or {}
    grid = {k: ([overrides[k]] if k in overrides else v) for k, v in protocol.grid.items()}
    extra = {k: v for k, v in overrides.items() if k not in grid}
    budget_values = {**getattr(protocol.budget, budget), **extra}
    runs = []
    for i, algo in enumerate(protocol.algorithms):
        label = algo.label or algo.name
        if tuning:
            if not algo.tune:
                continue
            axes = {k: v for k, v in grid.items() if k.startswith(ENV_AXIS)}
            axes.update({k: [overrides[k]] if k in overrides else v for k, v in algo.tune.items()})
            axes["seed"] = protocol.tune_seeds
            fixed = budget_values
        else:
            axes = grid
            pick = (tuned or {}).get(label, {k: v[0] for k, v in algo.tune.items()})
            fixed = {**budget_values, **{k: v for k, v in pick.items() if k not in overrides}}
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            cfg_point = {k: v for k, v in point.items() if not k.startswith(ENV_AXIS)}
            cfg = _resolve(algo, i, fixed, cfg_point)
            env = _env_at(protocol.env, point)
            runs.append(RunSpec(protocol.name, algo.name, label, env, cfg, point))
    return runs


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file (nothing runs): the schema, the environment's kwargs
    against its generator, the verdict's params against the rule's schema and the grid, and every
    resolved run of both budgets. All errors are gathered, each naming its field path."""
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
    errors = check_verdict(protocol) + check_tuning(protocol)
    envs = {protocol.env.model_dump_json(): protocol.env}
    for b in BUDGETS:
        try:
            specs = expand(protocol, b) + expand_tuning(protocol, b)
            envs.update({sp.env.model_dump_json(): sp.env for sp in specs})
        except ProtocolError as e:
            errors.append(f"(budget {b}) {e}")
    for env in envs.values():
        errors += [e for e in check_env(env) if e not in errors]
    if len(errors) == 1:
        raise ProtocolError(f"{p.name}: {errors[0]}")
    if errors:
        raise ProtocolError(f"{p.name}: {len(errors)} errors:\n  " + "\n  ".join(errors))
    return protocol


def check_env(env: EnvSpec) -> list[str]:
    """``env.kwargs`` against the generator's signature (unknown names, with "did you mean"),
    then the environment built once, so a bad value fails here and not after the sweep."""
    from grpo_lab.envs import env_parameters, make

    allowed = env_parameters(env.name)
    unknown = [k for k in env.kwargs if allowed is not None and k not in allowed]
    if unknown:
        return [
            f"env.kwargs.{k}: {env.name} has no argument {k!r}{did_you_mean(k, allowed or [])}; "
            f"allowed: {allowed}"
            for k in unknown
        ]
    try:
        make(env.name, **env.kwargs)
    except (TypeError, ValueError) as e:
        return [f"env.kwargs: {env.name}: {e}"]
    return []


def check_tuning(protocol: Protocol) -> list[str]:
    """Tuned algorithms need tuning seeds disjoint from the evaluation seeds (a setting chosen on
    the seeds it is judged on is not a fair comparison), and a tune axis is not a grid axis."""
    if not protocol.tuned():
        return (
            ["tune_seeds: no algorithm has a tune table; remove tune_seeds or add one"]
            if protocol.tune_seeds
            else []
        )
    out = []
    if not protocol.tune_seeds:
        out.append("tune_seeds: algorithms with a tune table need tuning seeds, e.g. [100, 101]")
    shared = sorted(set(protocol.tune_seeds) & set(protocol.grid.get("seed", [0])))
    if shared:
        out.append(f"tune_seeds: {shared} are also evaluation seeds (grid.seed); use fresh ones")
    for i, a in enumerate(protocol.algorithms):
        both = sorted(set(a.tune) & set(protocol.grid))
        if both:
            out.append(f"algorithms[{i}].tune: {both} are grid axes too; tune or sweep, not both")
    return out


def check_verdict(protocol: Protocol) -> list[str]:
    """``[verdict] params`` against the rule's schema (``grpo_lab.verdicts.Params``), then every
    parameter naming a grid axis, a value on it or an algorithm label against the protocol."""
    name = protocol.verdict.rule
    rule = VERDICTS.get(name)
    fields = sorted(rule.params.model_fields)
    try:
        params = rule.validate(protocol.verdict.params)
    except ValidationError as e:
        out = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            path = f"verdict.params.{loc}"
            if err["type"] == "extra_forbidden":
                out.append(
                    f"{path}: rule {name!r} has no parameter {loc!r}"
                    f"{did_you_mean(loc, fields)}; parameters: {fields}"
                )
            elif err["type"] == "missing":
                out.append(f"{path}: rule {name!r} needs it; parameters: {fields}")
            else:
                out.append(f"{path}: {err['msg']}")
        return out
    axes = {f"cfg.{k}": v for key, v in protocol.grid.items() for k in key.split("+")}
    out = []
    for f in params.AXES:
        v = getattr(params, f)
        if v not in axes:
            hint = (
                f" (did you mean 'cfg.{v}'?)" if f"cfg.{v}" in axes else did_you_mean(v, list(axes))
            )
            out.append(f"verdict.params.{f}: {v!r} is not a grid axis{hint}; axes: {sorted(axes)}")
    for f, af in params.CLAIMED:
        v, axis = getattr(params, f), getattr(params, af)
        if axis in axes and not any(v == x for x in axes[axis]):
            out.append(f"verdict.params.{f}: {v!r} is not on the grid of {axis}: {axes[axis]}")
    labels = [a.label or a.name for a in protocol.algorithms]
    for f in params.LABELS:
        v = getattr(params, f)
        for x in [] if v is None else [v] if isinstance(v, str) else v:
            if x not in labels:
                out.append(
                    f"verdict.params.{f}: {x!r} is not an algorithm label"
                    f"{did_you_mean(x, labels)}; labels: {labels}"
                )
    return out


def find_protocols(
    directory: str | Path = PROTOCOL_DIR, suite: str | None = None
) -> dict[str, Path]:
    """Protocol name -> file, for every ``*.toml`` in ``directory`` whose ``suite`` is ``suite``
    (None: every suite). The "default" suite is what ``grpo-lab run`` runs without names."""
    d = Path(directory)
    if not d.is_dir():
        raise ProtocolError(f"protocol directory {str(d)!r} does not exist")
    found = {}
    for f in sorted(d.glob("*.toml")):
        raw = tomllib.loads(f.read_text())
        if suite is None or raw.get("suite", "default") == suite:
            found[raw.get("name", f.stem)] = f
    return found
