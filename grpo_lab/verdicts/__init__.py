"""Verdict rules: how a sweep's stored data answer the claim a protocol quotes.

``core`` holds the registry (``VERDICTS``: a rule is ``fn(data, params)`` with a pydantic params
schema), ``Verdict``, ``judge`` and the scope line; the rules live by kind: ``exact`` (claims
checked exactly at every step, and the seed's convergence rule), ``compare`` (best setting,
interior optimum, probability of improvement), ``trends`` (monotone trends, the learning-rate
trade-off, best of both worlds), ``cost`` (wall time and optimiser work per env step) and
``gradient`` (unbiasedness, variance reduction, stationary end points); ``common`` has the helpers
they share. Data and scores come from ``grpo_lab.analysis``.
"""

from grpo_lab.analysis import COST_COLUMNS, SCORES, SweepData, compute_costs, final_scores
from grpo_lab.verdicts import compare, cost, exact, gradient, trends  # noqa: F401 (registers)
from grpo_lab.verdicts.core import (
    STATUSES,
    VERDICTS,
    NoSignal,
    Outcome,
    Params,
    Rule,
    Verdict,
    did_you_mean,
    judge,
    no_signal,
    rule,
    scope_line,
)
from grpo_lab.verdicts.exact import _upper_rate_bound, clopper_pearson, min_runs_for_holds

__all__ = [
    "COST_COLUMNS",
    "SCORES",
    "STATUSES",
    "VERDICTS",
    "NoSignal",
    "Outcome",
    "Params",
    "Rule",
    "SweepData",
    "Verdict",
    "_upper_rate_bound",
    "clopper_pearson",
    "compute_costs",
    "did_you_mean",
    "final_scores",
    "judge",
    "min_runs_for_holds",
    "no_signal",
    "rule",
    "scope_line",
]
