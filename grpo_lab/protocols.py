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
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.envs import ENVIRONMENTS
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
        return ENVIRONMENTS.check(v)


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
    suite: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]*$")  # `grpo-lab run --suite`

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


@dataclass
class SweepData:
    """A sweep's stored results as tidy tables (``grpo_lab.store.load_results``): one row per
    optimiser step, per iteration, and per run, each with the run's ``cfg.*`` columns."""

    steps: pd.DataFrame
    iterations: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None

    @classmethod
    def load(cls, sweep_path: str | Path) -> SweepData:
        from grpo_lab.store import load_results

        return cls(
            steps=load_results(sweep_path, "steps"),
            iterations=load_results(sweep_path, "iterations"),
            summary=load_results(sweep_path, "summary"),
        )


def _as_data(data: SweepData | pd.DataFrame) -> SweepData:
    """Rules that read only the steps also accept the steps table itself."""
    return SweepData(steps=data) if isinstance(data, pd.DataFrame) else data


# rule(data, params) -> (status, summary, evidence)
VerdictRule = Callable[[SweepData, dict[str, Any]], tuple[str, str, dict[str, Any]]]
VERDICTS: Registry[VerdictRule] = Registry("verdict rule")


def judge(protocol: Protocol, sweep_path: str | Path) -> Verdict:
    """Apply the protocol's verdict rule to the stored results of its sweep."""
    data = SweepData.load(sweep_path)
    status, summary, evidence = VERDICTS.get(protocol.verdict.rule)(data, protocol.verdict.params)
    return Verdict(protocol.name, protocol.claim, status, summary, evidence)


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
def _ratio_bound(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The seed's lemma |r - 1| <= eps, checked exactly after every optimiser step over every
    (s, a) the old policy visits (``exact_ratio_max/min`` against the run's eps_low / eps_high);
    with ``ratio = "ratio"``, over the sampled tokens of the step's minibatch (``ratio_max/min``,
    language models): one token outside the range is a counterexample."""
    steps = _as_data(data).steps
    tol = float(params.get("tol", 1e-9))
    col = params.get("ratio", "exact_ratio")  # "ratio": the batch's sampled tokens (LM runs)
    if col not in ("exact_ratio", "ratio"):
        raise ValueError(f"ratio must be 'exact_ratio' or 'ratio', got {col!r}")
    lo = 1.0 - steps["cfg.loss.eps_low"]
    hi = 1.0 + steps["cfg.loss.eps_high"]
    over = steps[f"{col}_max"] - hi
    under = lo - steps[f"{col}_min"]
    bad = ((over > tol) | (under > tol)).astype("boolean")
    bad[steps[f"{col}_max"].isna()] = pd.NA
    excess = float(pd.concat([over, under]).max())
    worst = f"largest excursion beyond the clip range: {excess:.3g}"
    status, summary, ev = _universal(steps, bad, "|r - 1| <= eps", worst)
    ev["max_excursion"] = excess
    ev[f"max_{col}"] = float(steps[f"{col}_max"].max())
    ev[f"min_{col}"] = float(steps[f"{col}_min"].min())
    if col == "exact_ratio":
        ev["mean_frac_outside"] = float(steps["exact_frac_outside"].mean())
    return status, summary, ev


@VERDICTS.register("trpo-bound")
def _trpo_bound(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """TRPO Theorem 1 (arXiv 1502.05477): J(new) - J(old) >= L_old(new) - J(old) - C max KL at
    every step (``bound_slack >= 0``); its slack is reported beside the median true gain."""
    steps = _as_data(data).steps
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
def _surrogate_bound(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The seed's "the clipped objective provides a lower bound on the true objective": is the
    exact clipped objective's gain <= the true gain J(new) - J(old) at every step?"""
    steps = _as_data(data).steps
    tol = float(params.get("tol", 1e-9))
    gap = steps["clipped_gain"] - steps["true_gain"]
    bad = (gap > tol).astype("boolean")
    bad[gap.isna()] = pd.NA
    worst = f"largest overestimate of the true gain: {gap.max():.3g}"
    status, summary, ev = _universal(steps, bad, "clipped gain <= true gain", worst)
    ev["max_overestimate"] = float(gap.max())
    return status, summary, ev


# ----------------------------------------------------------------------------- statistical rules


def _clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a rate k / n (Clopper & Pearson 1934)."""
    from scipy.stats import beta

    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def _per_iteration_loss(steps: pd.DataFrame) -> pd.DataFrame:
    """The policy loss of the last optimiser step of each iteration, per run."""
    last = steps.sort_values("step").groupby(["run_id", "iteration"], as_index=False).last()
    return last[["run_id", "iteration", "pg_loss"]]


@VERDICTS.register("convergence")
def _convergence(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The seed's ``is_converged`` (Var of the last ``window`` policy losses < ``threshold``,
    checked after epoch 10) against the truth (gap to J* <= ``gap_tol`` * |J*|), run by run.

    An error is a run where the seed's rule fires while the exact gap is still large (false
    convergence) or never fires although the policy reached the optimum (missed). The claim
    "is_converged detects convergence" holds when the error rate's 95% Clopper-Pearson upper
    bound is below ``max_error``, is violated when its lower bound is above, else inconclusive.
    """
    window = int(params.get("window", 10))
    threshold = float(params.get("threshold", 1e-4))
    gap_tol = float(params.get("gap_tol", 0.01))
    max_error = float(params.get("max_error", 0.1))
    losses = _per_iteration_loss(data.steps)
    it = data.iterations.merge(losses, on=["run_id", "iteration"], how="left")
    false_conv = missed = 0
    fired_gaps = []
    runs = sorted(it["run_id"].unique())
    for rid in runs:
        r = it[it["run_id"] == rid].sort_values("iteration")
        j_star = float(data.summary.loc[data.summary["run_id"] == rid, "j_star"].iloc[0])
        pl = r["pg_loss"].to_numpy()
        gaps = r["gap"].to_numpy()
        fired = next(
            (
                e
                for e in range(len(pl))
                if e > 10 and pl[max(0, e + 1 - window) : e + 1].var() < threshold
            ),
            None,
        )
        reached = bool((gaps <= gap_tol * abs(j_star)).any())
        if fired is not None:
            fired_gaps.append(gaps[fired] / abs(j_star))
            false_conv += int(gaps[fired] > gap_tol * abs(j_star))
        else:
            missed += int(reached)
    n = len(runs)
    errors = false_conv + missed
    low, high = _clopper_pearson(errors, n) if n else (0.0, 1.0)
    evidence = {
        "runs": n,
        "false_convergence": false_conv,
        "missed": missed,
        "error_rate": errors / n if n else float("nan"),
        "error_rate_ci95": [low, high],
        "median_relative_gap_when_fired": float(pd.Series(fired_gaps).median())
        if fired_gaps
        else float("nan"),
        "max_error": max_error,
    }
    rate = f"error rate {errors}/{n} (95% CI {low:.2f}-{high:.2f})"
    detail = f"{false_conv} false convergence(s), {missed} missed"
    if n and high < max_error:
        return "holds", f"{rate} < {max_error}: {detail}", evidence
    if n and low > max_error:
        return "violated", f"{rate} > {max_error}: {detail}", evidence
    return "inconclusive", f"{rate} straddles {max_error}: {detail}", evidence


SCORES = ("return", "eval_acc", "eval_return")


def _final_scores(data: SweepData, score: str = "auto") -> pd.DataFrame:
    """One row per run: its config columns and its final score: "return", the normalised return
    J_final / J* (tabular runs), "eval_acc", the held-out accuracy of a language model at the
    end (``eval_acc_final``), or "eval_return", the mean return of deterministic evaluation
    episodes (classic control); "auto" takes the one the summary has."""
    s = data.summary[data.summary["status"] != "error"].copy()
    if score == "auto":
        has_return = "j_final" in s and s["j_final"].notna().any()
        score = next(
            (k for k, col in (("eval_acc", "eval_acc_final"), ("eval_return", "eval_return"))
             if not has_return and col in s),
            "return",
        )  # fmt: skip
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {['auto', *SCORES]}")
    if score == "return":
        s["score"] = s["j_final"] / s["j_star"].abs()
    else:
        s["score"] = s["eval_acc_final" if score == "eval_acc" else "eval_return"]
    s.attrs["score"] = {"return": "J/J*", "eval_acc": "held-out accuracy"}.get(
        score, "evaluation return"
    )
    return s


@VERDICTS.register("best-setting")
def _best_setting(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A claim that one value of a sweep axis is optimal (the seed: "optimal eps (0.2)").

    Score = final J / J* per run; per value of ``axis`` its IQM with a 95% stratified bootstrap CI
    over runs (arXiv 2108.13264). Holds when the claimed value has the best IQM and its CI lies
    above every other value's; violated when some other value's CI lies above the claimed one's;
    otherwise inconclusive (the data cannot tell them apart).
    """
    from grpo_lab import stats

    axis, claimed = params["axis"], params["claimed"]
    s = _final_scores(data, params.get("score", "auto"))
    table = {}
    for value, grp in s.groupby(axis):
        point, low, high = (
            stats.stratified_bootstrap_ci(
                grp["score"].to_numpy(), "iqm", reps=int(params.get("reps", 2000)), seed=0
            )
            if len(grp) > 1
            else (float(grp["score"].iloc[0]),) * 3
        )
        table[value] = (point, low, high)
    evidence = {"axis": axis, "claimed": claimed, "iqm_ci": {str(k): v for k, v in table.items()}}
    if claimed not in table:
        return "inconclusive", f"the sweep has no run with {axis} = {claimed}", evidence
    best = max(table, key=lambda k: table[k][0])
    evidence["best"] = best
    c_point, c_low, c_high = table[claimed]
    others = {k: v for k, v in table.items() if k != claimed}
    above = [k for k, (_, lo, _) in others.items() if lo > c_high]
    line = ", ".join(f"{k}: {p:.3f} [{lo:.3f}, {hi:.3f}]" for k, (p, lo, hi) in table.items())
    what = s.attrs["score"]
    if above:
        return "violated", f"{axis} = {above} beat {claimed} (IQM {what}, 95% CI: {line})", evidence
    if best == claimed and all(c_low > hi for _, _, hi in others.values()):
        return "holds", f"{axis} = {claimed} is best (IQM {what}, 95% CI: {line})", evidence
    return (
        "inconclusive",
        f"no value separates from {claimed} (IQM {what}, 95% CI: {line})",
        evidence,
    )


def _speed(data: SweepData, fraction: float) -> pd.DataFrame:
    """Per run: the first iteration with J >= fraction * J* (censored: iterations + 1)."""
    it = data.iterations
    s = data.summary.set_index("run_id")
    rows = []
    for rid, r in it.groupby("run_id"):
        j_star = abs(float(s.loc[rid, "j_star"]))
        hit = r.loc[r["J"] >= fraction * j_star, "iteration"]
        n_it = int(r["iteration"].max()) + 1
        rows.append({"run_id": rid, "speed": float(hit.min()) if len(hit) else float(n_it + 1)})
    cfg = s[[c for c in s.columns if c.startswith("cfg.")]].reset_index()
    return pd.DataFrame(rows).merge(cfg, on="run_id")


@VERDICTS.register("monotone-trend")
def _monotone_trend(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A claim that a metric rises or falls with a sweep axis (the seed: "high learning rate:
    faster convergence", "large eps: faster convergence but potential instability").

    metric "speed": iterations to reach ``fraction`` (0.9) of J* (censored runs count as never);
    "final": final J / J*; "collapse": 1 if final J / J* < ``collapse_below`` (0.5). Spearman's rho
    between the axis and the metric over runs, with a 95% bootstrap CI over runs: the claim
    (``direction`` "increasing" or "decreasing") holds when the CI excludes 0 on its side, is
    violated when it excludes 0 on the other side, else inconclusive.
    """
    import numpy as np
    from scipy.stats import spearmanr

    axis, metric, direction = params["axis"], params["metric"], params["direction"]
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"direction must be 'increasing' or 'decreasing', got {direction!r}")
    if metric == "speed":
        df = _speed(data, float(params.get("fraction", 0.9)))
        y = df["speed"]
    else:
        df = _final_scores(data, params.get("score", "auto"))
        y = df["score"] if metric == "final" else (df["score"] < params.get("collapse_below", 0.5))
    x = df[axis].to_numpy(dtype=float)
    y = np.asarray(y, dtype=float)
    evidence: dict[str, Any] = {
        "axis": axis,
        "metric": metric,
        "direction": direction,
        "runs": len(x),
    }
    if len(x) < 4 or np.unique(x).size < 2 or np.unique(y).size < 2:
        evidence["rho"] = float("nan")
        return "inconclusive", f"too little variation to relate {metric} to {axis}", evidence
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(int(params.get("seed", 0)))
    boots = []
    for _ in range(int(params.get("reps", 2000))):
        i = rng.integers(0, len(x), len(x))
        if np.unique(x[i]).size > 1 and np.unique(y[i]).size > 1:
            boots.append(spearmanr(x[i], y[i]).statistic)
    low, high = (float(q) for q in np.quantile(boots, [0.025, 0.975]))
    evidence.update(rho=rho, rho_ci95=[low, high])
    sign = 1 if direction == "increasing" else -1
    desc = f"Spearman rho({axis}, {metric}) = {rho:.2f} [95% CI {low:.2f}, {high:.2f}]"
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "holds", f"{metric} is {direction} in {axis}: {desc}", evidence
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "violated", f"{metric} is not {direction} in {axis}: {desc}", evidence
    return "inconclusive", f"no clear trend: {desc}", evidence


COST_COLUMNS = ("rollout_us_per_step", "update_us_per_step", "total_us_per_step")
_TIMINGS = ("rollout_time", "update_time", "env_steps_per_s")


def compute_costs(iterations: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wall time spent per environment step, per algorithm label and batch, from per-iteration
    timings (the classic-control trainers log them).

    A batched run times its C configurations together: ``rollout_time`` and ``update_time`` (s)
    of iteration i are the batch's, and so is ``env_steps_per_s`` (all C configurations' steps
    in that rollout / its time), so n_i = env_steps_per_s_i x rollout_time_i is the env steps
    the batch took in iteration i. Over the batch's iterations with finite timings:

        rollout_us_per_step = 1e6 sum_i rollout_time_i / sum_i n_i
        update_us_per_step  = 1e6 sum_i update_time_i  / sum_i n_i
        total_us_per_step   = their sum

    microseconds of wall time per env step, amortised over the batch. The runs of one batch
    share one measurement, so the batch, not the run, is the unit: ``summary``'s ``batch``
    column (``sweep.run_batch`` stores it) says which runs ran together; without it every run
    counts as its own batch. Costs compare between algorithms whose batches hold as many
    configurations, timed on one machine under one load.

    Shapes: ``iterations`` with run_id, iteration, rollout_time, update_time, env_steps_per_s
    and cfg.label (else all runs are one label, "all") -> one row per (label, batch) with a
    finite cost: label, batch, runs, *COST_COLUMNS.
    """
    need = {"run_id", "iteration", *_TIMINGS}
    missing = sorted(need - set(iterations.columns))
    if missing:
        raise ValueError(
            f"iterations lacks {missing}: compute costs need per-iteration timings "
            "(the classic-control trainers log them)"
        )
    it = iterations[sorted(need)].astype({c: "float64" for c in _TIMINGS})
    it["label"] = iterations["cfg.label"] if "cfg.label" in iterations else "all"
    batch = it["run_id"]
    if summary is not None and "batch" in summary:
        batch = it["run_id"].map(summary.set_index("run_id")["batch"]).fillna(it["run_id"])
    it["batch"] = batch
    runs = it.groupby(["label", "batch"])["run_id"].nunique().rename("runs")
    it = it[np.isfinite(it[list(_TIMINGS)]).all(axis=1)]
    # the batch's timings of iteration i, logged alike by each of its runs still going
    per = it.groupby(["label", "batch", "iteration"])[list(_TIMINGS)].first()
    per["batch_steps"] = per["env_steps_per_s"] * per["rollout_time"]
    sums = per.groupby(level=["label", "batch"])[["rollout_time", "update_time", "batch_steps"]]
    sums = sums.sum()
    sums = sums[sums["batch_steps"] > 0]
    out = pd.DataFrame(
        {
            "rollout_us_per_step": 1e6 * sums["rollout_time"] / sums["batch_steps"],
            "update_us_per_step": 1e6 * sums["update_time"] / sums["batch_steps"],
        }
    )
    out["total_us_per_step"] = out["rollout_us_per_step"] + out["update_us_per_step"]
    out = out.join(runs).reset_index()
    return out[["label", "batch", "runs", *COST_COLUMNS]]


def _cost_evidence(
    data: SweepData, better: str, worse: str, reps: int
) -> tuple[dict[str, Any], str]:
    """The improvement rule's ``cost`` evidence (``compute_costs``): per label the number of
    timed batches and each of ``COST_COLUMNS``: its IQM [95% CI] over batches, or the single
    value when one batch holds all its runs; with >= 2 batches of each of ``better`` and
    ``worse``, P(``better`` spends less update time per env step than ``worse``) and its CI."""
    from grpo_lab import stats

    if data.iterations is None or not set(_TIMINGS) <= set(data.iterations.columns):
        return {"cost": "no per-iteration timings in the sweep"}, ""
    costs = compute_costs(data.iterations, data.summary)
    by = {k: g for k, g in costs.groupby("label")}
    evidence: dict[str, Any] = {}
    for label, g in by.items():
        evidence[f"batches_{label}"] = len(g)
        for col in COST_COLUMNS:
            v = g[col].to_numpy()
            evidence[f"{col}_{label}"] = (
                stats.stratified_bootstrap_ci(v, "iqm", reps=reps, seed=0)
                if len(v) > 1
                else float(v[0])
            )
    if better not in by or worse not in by:
        return evidence, ""
    col = "update_us_per_step"
    ub, uw = (stats.iqm(by[k][col].to_numpy()) for k in (better, worse))
    evidence["update_cost_ratio"] = uw / ub  # worse / better: > 1 when better is cheaper
    desc = (
        f"; update wall time per env step: {better} {ub:.3g} us, {worse} {uw:.3g} us "
        f"({uw / ub:.2g}x)"
    )
    if min(len(by[better]), len(by[worse])) < 2:
        return evidence, desc + " (one timed batch each: no interval)"
    # P(X < Y) = P(-X > -Y): the lower cost is the improvement
    p, low, high = stats.probability_of_improvement_ci(
        -by[better][col].to_numpy(), -by[worse][col].to_numpy(), reps=reps, seed=0
    )
    evidence.update(p_cheaper_update=p, p_cheaper_update_ci95=[low, high])
    return evidence, desc + f", P({better} cheaper) = {p:.2f} [95% CI {low:.2f}, {high:.2f}]"


@VERDICTS.register("improvement")
def _improvement(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A claim that algorithm ``better`` beats ``worse`` (the seed: GRPO vs PPO / TRPO).

    Score = final J / J* per run (or ``score``: see ``_final_scores``), by ``cfg.label``;
    probability of improvement P(X > Y) with a 95% stratified bootstrap CI (arXiv 2108.13264
    §4.4): holds when the CI lies above 1/2, violated when below, else inconclusive. IQMs with CIs
    of every algorithm are in the evidence, and the mean env steps each used where the summaries
    record them (a comparison at equal env steps shows it).

    ``cost = true`` adds compute to the evidence and the summary line, never to the status: per
    algorithm the rollout, update and total microseconds of wall time per env step
    (``compute_costs``; the batch is the unit, so an interval needs several batches), and the
    ratio of update costs ``worse`` / ``better``.
    """
    from grpo_lab import stats

    better, worse = params["better"], params["worse"]
    s = _final_scores(data, params.get("score", "auto"))
    by = {k: g["score"].to_numpy() for k, g in s.groupby("cfg.label")}
    evidence: dict[str, Any] = {"better": better, "worse": worse}
    if better not in by or worse not in by:
        return (
            "inconclusive",
            f"the sweep lacks {better!r} or {worse!r}: has {sorted(by)}",
            evidence,
        )
    reps = int(params.get("reps", 2000))
    for k, v in by.items():
        evidence[f"iqm_{k}"] = (
            stats.stratified_bootstrap_ci(v, "iqm", reps=reps, seed=0)
            if len(v) > 1
            else (v[0],) * 3
        )
    if "env_steps" in s:
        for k, g in s.groupby("cfg.label"):
            evidence[f"env_steps_{k}"] = float(g["env_steps"].mean())
    p, low, high = stats.probability_of_improvement_ci(by[better], by[worse], reps=reps, seed=0)
    evidence.update(p_improvement=p, p_improvement_ci95=[low, high])
    desc = f"P({better} > {worse}) = {p:.2f} [95% CI {low:.2f}, {high:.2f}] on final {s.attrs['score']}"
    if params.get("cost", False):
        cost, cost_desc = _cost_evidence(data, better, worse, reps)
        evidence.update(cost)
        desc += cost_desc
    if low > 0.5:
        return "holds", desc, evidence
    if high < 0.5:
        return "violated", desc, evidence
    return "inconclusive", desc, evidence


@VERDICTS.register("unbiased")
def _unbiased(data: SweepData, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A claim that a gradient estimator is unbiased (the seed: "Importance sampling correction
    maintains unbiased gradient estimates"), on gradient experiments (``ALGORITHMS["gradient"]``:
    the Monte Carlo mean of N estimates against the exact grad J).

    ``test`` "direction" (default) compares the mean with its least-squares multiple of grad J (a
    constant factor is absorbed by the learning rate); "scale" compares it with grad J itself. Per
    run: **biased** when the Bonferroni p-value of the largest |z| (``p_direction`` / ``p_bias``)
    is below ``alpha`` / R (R runs judged: Bonferroni over runs too); **unbiased** when not and the
    relative bias, bounded above by its estimate + 3 x the relative Monte Carlo error, is below
    ``tolerance``; else undetermined. The claim covers the runs whose ``cfg.label`` is in
    ``subject`` (default: all): violated if any is biased, holds if all are unbiased, else
    inconclusive. The evidence has a line per estimator (label), subject or not.
    """
    test = params.get("test", "direction")
    if test not in ("direction", "scale"):
        raise ValueError(f"test must be 'direction' or 'scale', got {test!r}")
    alpha = float(params.get("alpha", 0.01))
    tol = float(params.get("tolerance", 0.1))
    p_col, err_col = (
        ("p_direction", "dir_rel_error") if test == "direction" else ("p_bias", "rel_norm_error")
    )
    s = data.summary
    if s is None or p_col not in s.columns:
        return "inconclusive", "no gradient experiment in the sweep", {"runs": 0}
    s = s[s["status"] != "error"].copy()
    subject = params.get("subject")
    judged = s[s["cfg.label"].isin(subject)] if subject else s
    n = len(judged)
    a_run = alpha / max(n, 1)
    rel_noise = s["noise_rel"] / (s["fit_scale"].abs() if test == "direction" else 1.0)
    s["mc_error"] = rel_noise
    s["bias_upper"] = s[err_col] + 3.0 * rel_noise
    s["verdict"] = [
        "biased" if p < a_run else ("unbiased" if u < tol else "undetermined")
        for p, u in zip(s[p_col], s["bias_upper"], strict=True)
    ]
    evidence: dict[str, Any] = {
        "test": test,
        "alpha_per_run": a_run,
        "tolerance": tol,
        "subject": subject or "all runs",
    }
    for label, g in s.groupby("cfg.label", sort=False):  # one line per estimator
        counts = g["verdict"].value_counts()
        evidence[f"estimator {label}"] = (
            ", ".join(f"{k} {v}/{len(g)}" for k, v in counts.items())
            + f"; relative bias {g[err_col].min():.3g}-{g[err_col].max():.3g}"
            + f" (MC error {g['mc_error'].max():.2g}); min p {g[p_col].min():.2g};"
            + f" cosine {g['cosine'].min():.3f}-{g['cosine'].max():.3f}"
        )
    if n == 0:
        return "inconclusive", f"no run labelled {subject} in the sweep", evidence
    v = s.loc[judged.index, "verdict"]
    biased = sorted(set(judged.loc[v == "biased", "cfg.label"]))
    unbiased_all = sorted(set(s.loc[s["verdict"] == "unbiased", "cfg.label"]))
    evidence["biased"] = biased
    desc = (
        f"{int((v == 'biased').sum())} of {n} runs biased in {test} (p < {a_run:.2g}); "
        f"unbiased within {tol:g}: {unbiased_all or 'none'}"
    )
    if (v == "biased").any():
        return "violated", f"biased: {biased}; " + desc, evidence
    if (v == "unbiased").all():
        return "holds", desc, evidence
    return "inconclusive", desc, evidence
