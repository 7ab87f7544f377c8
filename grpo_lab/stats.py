"""Aggregate scores over runs and tasks, with stratified-bootstrap confidence intervals.

The definitions are those of rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge
of the Statistical Precipice", arXiv 2108.13264): stratified bootstrap intervals (§4.1), run-score
performance profiles (§4.2), IQM / mean / median / optimality gap (§4.3) and the probability of
improvement (§4.4). The interval of the probability of improvement is analytic by default
(Newcombe 2006's method 5, its variance inflated by DeLong 1988's where larger), since the
bootstrap intervals cover far below their level at the 4-5 runs per algorithm of the comparison
protocols (at 5 vs 5 the percentile one covers 90% at P = 1/2 and 69% at P = 0.9);
``simulate_improvement_ci``, ``improvement_power`` and ``min_runs_for_coverage`` measure any of
the intervals by simulation.

Shapes: ``scores`` is (R,) or (R, K) with R runs (seeds) and K tasks (environments, problems); a
(R,) array is one task, read as (R, 1). Comparisons take a dict ``algorithm -> scores`` whose
arrays share K (R may differ). Bootstrap resamples are N; thresholds ``taus`` are (Q,).

Named statistics live in the ``STATISTICS`` registry as vectorised kernels
``kernel(tasks, gamma) -> values``: ``tasks`` is a sequence of K arrays shaped (..., n_k), the runs
of task k along the last axis and any batch of resamples in front (the n_k may differ: a
jackknife drops one run of one task); the result is (...) for a scalar statistic, or (Q, ...) with
the output axes in front. The bootstrap calls a kernel once on all N resamples at once.

Every function is deterministic given ``seed``; bad input raises a ``ValueError`` that names the
argument and the allowed values.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from grpo_lab.registry import Registry

Kernel = Callable[[Sequence[np.ndarray], float], np.ndarray]
# kernel(K arrays (..., n_k), gamma) -> (...) or (Q, ...)
STATISTICS: Registry[Kernel] = Registry("statistic")

METHODS = ("percentile", "bca")
# intervals of P(X > Y): two analytic ones (the first the default), then the bootstrap METHODS
IMPROVEMENT_METHODS = ("newcombe-delong", "newcombe", *METHODS)
MIN_REPS = 100
# Resampled scores held in memory per bootstrap batch. The batch size depends only on the data's
# size, so a fixed seed gives the same resamples on every call with data of that size.
_BATCH_ELEMENTS = 2**18
_BISECTIONS = 52  # halvings of [0, 1] for the score interval's ends: 2^-52 ~ 2e-16


# ---------------------------------------------------------------------------------------------
# kernels: vectorised over leading (resample) axes, per-task samples may be ragged


def _pooled(tasks: Sequence[np.ndarray]) -> np.ndarray:
    """All run x task scores side by side: K arrays (..., n_k) -> (..., sum_k n_k)."""
    return tasks[0] if len(tasks) == 1 else np.concatenate(tasks, axis=-1)


def _task_means(tasks: Sequence[np.ndarray]) -> np.ndarray:
    """Per-task mean over runs: K arrays (..., n_k) -> (..., K)."""
    return np.stack([t.mean(axis=-1) for t in tasks], axis=-1)


@STATISTICS.register("iqm")
def _iqm_kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    return np.asarray(sps.trim_mean(_pooled(tasks), 0.25, axis=-1))


@STATISTICS.register("mean")
def _mean_kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    return _task_means(tasks).mean(axis=-1)


@STATISTICS.register("median")
def _median_kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    return np.median(_task_means(tasks), axis=-1)


@STATISTICS.register("optimality_gap")
def _optimality_gap_kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    return np.maximum(gamma - _pooled(tasks), 0.0).mean(axis=-1)


def _profile_kernel(taus: np.ndarray) -> Kernel:
    """Run-score distribution at each tau: K arrays (..., n_k) -> (Q, ...)."""

    def kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
        x = _pooled(tasks)  # (..., n)
        t = taus.reshape(taus.shape + (1,) * x.ndim)  # (Q, 1, ..., 1)
        return (x > t).mean(axis=-1)

    return kernel


def _improvement_kernel(n_tasks: int) -> Kernel:
    """Probability of improvement from 2K strata: X's K tasks, then Y's K tasks -> (...)."""

    def kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
        per_task = []
        for x, y in zip(tasks[:n_tasks], tasks[n_tasks:], strict=True):
            xi, yj = x[..., :, None], y[..., None, :]  # (..., m, 1), (..., 1, n)
            s = (xi > yj).astype(np.float64) + 0.5 * (xi == yj)
            per_task.append(s.mean(axis=(-2, -1)))
        return np.mean(per_task, axis=0)

    return kernel


def _matrix_kernel(fn: Callable[[np.ndarray], float | np.ndarray]) -> Kernel:
    """Adapt a user statistic of one (R, K) matrix to the kernel contract (a loop over resamples)."""

    def kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
        mat = np.stack(tasks, axis=-1)  # (..., R, K); equal R: bootstrap resamples keep sizes
        lead = mat.shape[:-2]
        flat = mat.reshape((-1,) + mat.shape[-2:])
        outs = np.stack([np.asarray(fn(m), dtype=np.float64) for m in flat], axis=-1)
        return outs.reshape(outs.shape[:-1] + lead)  # (*out, ...)

    return kernel


# ---------------------------------------------------------------------------------------------
# input checks


def _as_scores(name: str, x: object) -> np.ndarray:
    """Validate scores shaped (R,) or (R, K) and return them as float64 (R, K)."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be a numeric array shaped (runs,) or (runs, tasks), "
            f"got {type(x).__name__}"
        ) from e
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be shaped (runs,) or (runs, tasks), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); it needs at least one run and task")
    n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"{name} holds {n_nan} NaN and {n_inf} inf value(s) among {a.size} scores; scores "
            "must be finite (drop or impute failed runs before aggregating)"
        )
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _check_bootstrap_args(
    reps: object,
    confidence: object,
    seed: object,
    method: object,
    methods: Sequence[str] = METHODS,
) -> str:
    if isinstance(reps, bool) or not isinstance(reps, numbers.Integral) or reps < MIN_REPS:
        raise ValueError(f"reps must be an integer >= {MIN_REPS}, got {reps!r}")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or not 0.0 < float(confidence) < 1.0
    ):
        raise ValueError(
            f"confidence must be a number in the open interval (0, 1), got {confidence!r}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer (or None for fresh entropy), got {seed!r}")
    m = method.lower() if isinstance(method, str) else method
    if m not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {list(methods)}")
    return m


def _check_runs(name: str, scores: np.ndarray) -> None:
    if scores.shape[0] < 2:
        raise ValueError(
            f"{name} has {scores.shape[0]} run per task; a bootstrap over runs needs at least 2"
        )


def _check_gamma(gamma: object) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    return float(gamma)


def _check_same_tasks(named: Mapping[str, np.ndarray]) -> None:
    counts = {name: s.shape[1] for name, s in named.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"task counts differ: {counts}; every algorithm must be scored on the same tasks "
            "(a (runs,) array counts as 1 task)"
        )


def _as_taus(taus: object) -> np.ndarray:
    try:
        t = np.asarray(taus, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"taus must be a 1-D array of numbers, got {type(taus).__name__}") from e
    t = t.reshape(1) if t.ndim == 0 else t
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"taus must be a non-empty 1-D array, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"taus holds {int((~np.isfinite(t)).sum())} non-finite value(s)")
    return t


def _columns(scores: np.ndarray) -> list[np.ndarray]:
    """(R, K) -> K arrays (R,): the strata of the bootstrap."""
    return [scores[:, k] for k in range(scores.shape[1])]


def _out(x: np.ndarray) -> float | np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


# ---------------------------------------------------------------------------------------------
# point estimates


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all R x K run scores (arXiv 2108.13264 §4.3).

    With the N = R K scores sorted, x_(1) <= ... <= x_(N), and g = floor(N / 4):
        IQM = 1 / (N - 2g) * sum_{i = g+1}^{N-g} x_(i)
    i.e. ``scipy.stats.trim_mean(scores, 0.25, axis=None)``, which is exactly rliable's
    ``aggregate_iqm`` for every N. When N is not divisible by 4 it trims the whole number
    floor(N / 4) from each end, so it averages more than half of the scores; it is not the
    fractionally weighted interquartile mean (for [1, 2, 3, 4, 10, 100]: 4.75 here, 13/3 weighted).

    Shapes: scores (R,) or (R, K) -> float.
    """
    return float(_iqm_kernel(_columns(_as_scores("scores", scores)), 1.0))


def mean(scores: np.ndarray) -> float:
    """Mean over tasks of the per-task mean score (rliable ``aggregate_mean``, §4.3).

        mean = 1/K sum_k ( 1/R sum_r x_rk )

    Shapes: scores (R,) or (R, K) -> float.
    """
    return float(_mean_kernel(_columns(_as_scores("scores", scores)), 1.0))


def median(scores: np.ndarray) -> float:
    """Median over tasks of the per-task mean score (rliable ``aggregate_median``, §4.3).

        median = median_k ( 1/R sum_r x_rk )

    This is not the median of the R x K run scores: with one task (a (R,) array) it equals the
    mean of the runs. Use ``np.median`` for the median of the runs themselves.

    Shapes: scores (R,) or (R, K) -> float.
    """
    return float(_median_kernel(_columns(_as_scores("scores", scores)), 1.0))


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> float:
    """How far the run scores fall short of a target gamma, averaged over all runs and tasks (§4.3).

        gap = 1/(R K) sum_{r,k} max(gamma - x_rk, 0) = gamma - mean(min(x, gamma))

    Scores above gamma count as gamma (no credit for overshooting); lower is better. rliable's
    ``aggregate_optimality_gap``; gamma = 1 for scores normalised so that 1 is the target.

    Shapes: scores (R,) or (R, K) -> float.
    """
    g = _check_gamma(gamma)
    return float(_optimality_gap_kernel(_columns(_as_scores("scores", scores)), g))


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y): the chance a run of X beats a run of Y on the same task, averaged over tasks (§4.4).

        P(X > Y) = 1/K sum_k 1/(m n) sum_{i=1}^{m} sum_{j=1}^{n} S(x_ik, y_jk),
        S(a, b)  = 1 if a > b,  1/2 if a = b,  0 if a < b

    The inner double sum is the Mann-Whitney U statistic of task k, so each term is U_k / (m n),
    as in rliable (which sets identical samples to 1/2, the value S gives anyway). Ties count half,
    so P(X > Y) + P(Y > X) = 1.

    Shapes: scores_x (m,) or (m, K), scores_y (n,) or (n, K) -> float; m and n may differ.
    """
    x, y = _as_scores("scores_x", scores_x), _as_scores("scores_y", scores_y)
    _check_same_tasks({"scores_x": x, "scores_y": y})
    k = x.shape[1]
    return float(_improvement_kernel(k)(_columns(x) + _columns(y), 1.0))


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Run-score distribution: the fraction of all R x K runs scoring above each tau (§4.2).

        F(tau) = 1/(R K) sum_{r,k} 1[x_rk > tau]

    The comparison is strict, so a run scoring exactly tau does not count at tau.

    Shapes: scores (R,) or (R, K), taus (Q,) or a scalar -> (Q,).
    """
    t = _as_taus(taus)
    return np.asarray(_profile_kernel(t)(_columns(_as_scores("scores", scores)), 1.0))


# ---------------------------------------------------------------------------------------------
# stratified bootstrap


def _bootstrap(
    strata: list[np.ndarray],
    kernel: Kernel,
    gamma: float,
    *,
    reps: int,
    confidence: float,
    seed: int | None,
    method: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of ``kernel`` under independent resampling of each stratum (R_k,)."""
    point = np.asarray(kernel(strata, gamma), dtype=np.float64)
    batch = max(1, min(int(reps), _BATCH_ELEMENTS // sum(s.size for s in strata)))

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return kernel(samples, gamma)  # scipy always puts the runs on axis -1

    with warnings.catch_warnings():
        # a constant bootstrap distribution makes BCa 0/0; it is handled below
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        if method == "bca":  # the jackknife's 0/0 in the same case
            warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap(
            tuple(strata),
            statistic,
            n_resamples=int(reps),
            batch=batch,
            vectorized=True,
            paired=False,  # each task's runs are resampled on their own: the stratification
            confidence_level=float(confidence),
            method=method,
            rng=np.random.default_rng(seed),
        )
    dist = np.asarray(res.bootstrap_distribution)  # (*out, N)
    low = np.asarray(res.confidence_interval.low, dtype=np.float64)
    high = np.asarray(res.confidence_interval.high, dtype=np.float64)
    constant = dist.min(axis=-1) == dist.max(axis=-1)
    low = np.where(constant, dist[..., 0], low)
    high = np.where(constant, dist[..., 0], high)
    if np.isnan(low).any() or np.isnan(high).any():
        warnings.warn(
            "the BCa interval is undefined for some outputs (zero jackknife spread); they are "
            "NaN. method='percentile' is defined for them",
            RuntimeWarning,
            stacklevel=3,
        )
    return point, low, high


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: str | Callable[[np.ndarray], float | np.ndarray],
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "percentile",
    gamma: float = 1.0,
) -> tuple[float, float, float] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and stratified-bootstrap confidence interval of an aggregate statistic (§4.1).

    Stratified bootstrap: each of the N resamples draws, for every task k independently, R runs
    with replacement from task k's own R runs, x*_{.k} = x_{I_1 k}, ..., x_{I_R k} with I_i uniform
    on {1..R}; tasks are never resampled (rliable's default, task_bootstrap=False). A task whose
    runs are all equal therefore contributes a constant to every resample.

    method="percentile" (rliable's default): with theta*_1..theta*_N the statistic of each
    resample and alpha = (1 - confidence) / 2,
        [low, high] = [q_alpha(theta*), q_{1-alpha}(theta*)]   (linear-interpolated quantiles)
    method="bca": bias-corrected and accelerated (Efron & Tibshirani 1993, §14.3), via
    ``scipy.stats.bootstrap`` with one sample per task and ``paired=False``, which is the same
    stratified resampling; its acceleration is the multi-sample jackknife form
        a = sum_k sum_i U_ki^3 / R^3 / (6 (sum_k sum_i U_ki^2 / R^2)^{3/2}),
        U_ki = (R - 1) (mean_i theta_(k,i) - theta_(k,i)),
    with theta_(k,i) the statistic with run i of task k left out. Percentile and BCa share the
    resamples for a given seed. Where every resample gives the same value, the interval is that
    value for both methods (BCa alone would be 0/0).

    ``statistic``: a name in ``STATISTICS`` ("iqm", "mean", "median", "optimality_gap", the last
    at threshold ``gamma``), or a callable of one (R, K) matrix returning a float or an array
    (then called once per resample, so slower; percentile method only, because BCa's jackknife
    leaves tasks with unequal run counts).

    Shapes: scores (R,) or (R, K), R >= 2 -> floats (point, low, high), or arrays shaped like the
    callable's output.
    """
    s = _as_scores("scores", scores)
    _check_runs("scores", s)
    m = _check_bootstrap_args(reps, confidence, seed, method)
    g = _check_gamma(gamma)
    if callable(statistic):
        if m == "bca":
            raise ValueError(
                "method 'bca' needs a named statistic (one of "
                f"{STATISTICS.names()}); a callable statistic supports method 'percentile'"
            )
        kernel = _matrix_kernel(statistic)
    else:
        kernel = STATISTICS.get(statistic)
    point, low, high = _bootstrap(
        _columns(s), kernel, g, reps=reps, confidence=confidence, seed=seed, method=m
    )
    return _out(point), _out(low), _out(high)


def _newcombe_variance(theta: np.ndarray, m: int, n: int) -> np.ndarray:
    """Var(U / mn) at P(X > Y) = theta under Newcombe's (2006) method 5: Hanley & McNeil's (1982)
    variance with both sample sizes replaced by their mean, m* = n* = (m + n) / 2. Concave in
    theta for m + n <= 10 and nearly so above (see ``_score_interval``)."""
    c = (m + n) / 2.0 - 1.0
    return (
        theta * (1 - theta) / (m * n) * (1 + c * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
    )


def _score_interval(
    t: np.ndarray, scale: np.ndarray, m: int, n: int, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """The theta in [0, 1] with (theta - t)^2 <= z^2 scale V5(theta), V5 = ``_newcombe_variance``.

    f(theta) = (theta - t)^2 - z^2 scale V5(theta) has f(0) = t^2 >= 0, f(t) <= 0, f(1) >= 0,
    so bisection on [0, t] and [t, 1] finds an end on each side. The set is one interval when f
    is convex: V5'' <= (N/4 - 5/2) / (m n) (the bracket's theta (1 - theta) [...] has second
    derivative <= 1/2), so f'' = 2 - z^2 scale V5'' > 0 unless scale exceeds ~n / K at m = n and
    95%; the inflated scale is r / K with r <= 1.83 in all simulations here. Elementwise over t.
    """

    def f(th: np.ndarray) -> np.ndarray:
        return (th - t) ** 2 - z * z * scale * _newcombe_variance(th, m, n)

    lo_out, lo_in = np.zeros_like(t), t.copy()  # f(lo_out) >= 0 >= f(lo_in)
    hi_in, hi_out = t.copy(), np.ones_like(t)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo_out + lo_in)
        out = f(mid) > 0
        lo_out, lo_in = np.where(out, mid, lo_out), np.where(out, lo_in, mid)
        mid = 0.5 * (hi_in + hi_out)
        out = f(mid) > 0
        hi_out, hi_in = np.where(out, mid, hi_out), np.where(out, hi_in, mid)
    return lo_in, hi_in


def _improvement_analytic(
    x: np.ndarray, y: np.ndarray, confidence: float, inflate: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(X > Y) with the "newcombe" (inflate False) or "newcombe-delong" interval.

    Shapes: x (..., m, K), y (..., n, K), the same leading batch -> (point, low, high), each (...).
    """
    m, n, k = x.shape[-2], y.shape[-2], x.shape[-1]
    xi, yj = x[..., :, None, :], y[..., None, :, :]
    s = (xi > yj) + 0.5 * (xi == yj)  # (..., m, n, K): S(x_i, y_j) on each task
    t = s.mean(axis=(-3, -2)).mean(axis=-1)  # (...)
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    model = _newcombe_variance(t, m, n) / k  # K tasks with one theta: the mean's variance
    scale = np.full_like(t, 1.0 / k)
    if inflate:
        v10 = s.mean(axis=-2)  # (..., m, K): each x_i's placement among the y (DeLong's V10)
        v01 = s.mean(axis=-3)  # (..., n, K)
        delong = (v10.var(axis=-2, ddof=1) / m + v01.var(axis=-2, ddof=1) / n).sum(axis=-1) / k**2
        ratio = np.divide(delong, model, out=np.ones_like(t), where=model > 0)
        scale = scale * np.maximum(ratio, 1.0)
    low, high = _score_interval(t, scale, m, n, z)
    return t, low, high


def probability_of_improvement_ci(
    scores_x: np.ndarray,
    scores_y: np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "newcombe-delong",
) -> tuple[float, float, float]:
    """P(X > Y) (see ``probability_of_improvement``) with a confidence interval (§4.4).

    With theta-hat the point estimate (the task mean of U_k / (m n)), z the normal quantile of
    (1 + confidence) / 2, K tasks, m runs of X and n of Y per task:

    method="newcombe-delong" (default): Newcombe's method 5 with its variance inflated where the
    data show more spread than it assumes. Newcombe (2006, "Confidence intervals for an effect size
    measure based on the Mann-Whitney statistic. Part 2", Stat. Med. 25:559, doi:10.1002/sim.2324)
    method 5 is the score-type interval
        {theta in [0, 1]: (theta - theta-hat)^2 <= z^2 r V5(theta) / K},
        V5(theta) = theta (1 - theta) / (m n) [1 + (N/2 - 1) ((1 - theta) / (2 - theta)
                                                              + theta / (1 + theta))],  N = m + n,
    the Hanley & McNeil (1982, Radiology 143:29) variance with m* = n* = N/2 (method "newcombe":
    r = 1). V5 is a model variance, close to the true one for shifted normals (5 vs 5 at theta
    0.64: V5 0.0334, simulated variance 0.0334); with X much more spread than Y at theta = 1/2
    the true variance tends to 3/2 V5, and method 5 covers about 91-94% however many runs
    (table below). The inflation
        r = max(1, V_DeLong / (V5(theta-hat) / K)),
        V_DeLong = 1/K^2 sum_k [ s^2(V10_k) / m + s^2(V01_k) / n ],
    with V10_ik = 1/n sum_j S(x_ik, y_jk), V01_jk = 1/m sum_i S(x_ik, y_jk) and s^2 the sample
    variance (ddof 1), uses DeLong, DeLong & Clarke-Pearson's (1988, Biometrics 44:837)
    consistent variance estimate where it exceeds method 5's, so the interval is asymptotically
    valid for any pair of distributions; where V5 is the larger (shifts, ties), it is method 5.
    The combination is this module's; its coverage is checked below and in tests/test_stats.py.
    With K > 1 tasks both variances are of the task mean with one theta for all tasks (V5 is
    concave in theta for N <= 10 and nearly so above, so per-task thetas that differ make this
    conservative). Deterministic; ``reps`` and ``seed`` are unused.

    Both analytic intervals lie in [0, 1], do not collapse when the runs separate completely
    (theta-hat = 1: high = 1, low < 1), and are invariant under any increasing transform of the
    scores (they depend on S only).

    method="percentile" (rliable's) or "bca": the stratified bootstrap of
    ``stratified_bootstrap_ci``: the runs of X and of Y are resampled independently within each
    task (2K strata), as rliable's ``StratifiedIndependentBootstrap`` does. At few runs they
    undercover: when the runs separate completely every resample gives theta-hat = 1, so the
    interval is [1, 1] and misses any theta < 1.

    Coverage of the 95% interval, simulated (K = 1 task, n = m runs per side; the analytic
    methods by ``simulate_improvement_ci``, 4000 datasets a cell, standard error <= 0.0035; the
    bootstrap ones 1000 datasets of 1000 resamples, standard error ~0.007, checked against the
    public function at 5 vs 5). "shift": X ~ N(delta, 1), Y ~ N(0, 1); "sd 3:1": X ~ N(delta, 9);
    "acc": accuracies on 16 items, Bin(16, 0.95) / 16 vs Bin(16, 0.8) / 16 (ties); "J/J*":
    min(1, N(0.99, 0.05^2)) vs min(1, N(0.95, 0.05^2)) (7% of pairs tie at the ceiling 1):

        case            method             4     5     8    10    16    20    30  runs per side
        0.5 shift       newcombe-delong  .946  .957  .968  .967  .961  .954  .949
                        newcombe         .946  .942  .949  .950  .952  .946  .945
                        percentile       .924  .909  .942  .949  .942  .934  .956
                        bca              .968  .966  .977  .972  .964  .954  .964
        0.7 shift       newcombe-delong  .979  .979  .959  .964  .960  .955  .949
                        newcombe         .952  .957  .955  .959  .954  .950  .945
                        percentile       .851  .906  .914  .936  .936  .935  .943
                        bca              .912  .959  .976  .972  .962  .958  .964
        0.9 shift       newcombe-delong  .975  .972  .973  .968  .968  .968  .963
                        newcombe         .954  .953  .959  .962  .966  .968  .962
                        percentile       .578  .689  .809  .859  .899  .919  .939
                        bca              .581  .688  .863  .925  .942  .959  .949
        0.5 sd 3:1      newcombe-delong  .916  .949  .976  .964  .959  .951  .952
                        newcombe         .916  .934  .938  .933  .936  .925  .932
                        percentile       .896  .915  .935  .933  .952  .941  .943
                        bca              .939  .958  .986  .972  .969  .956  .952
        0.7 sd 5:1      newcombe-delong  .984  .973  .948  .948  .959  .951  .950
                        newcombe         .927  .953  .926  .925  .917  .906  .906
        0.904 acc       newcombe-delong  .969  .968  .967  .968  .971  .971  .971
                        percentile       .686  .714  .788  .867  .885  .905  .907
                        bca              .687  .743  .872  .915  .939  .947  .939
        0.707 J/J*      newcombe-delong  .980  .984  .962  .967  .959  .957  .955
                        percentile       .845  .899  .915  .926  .940  .934  .940

    Fewest runs per side with >= 93% (confidence - 0.02) in every case above: "newcombe-delong"
    5, and 4 for shifts and ties (at 4 vs 4 with sd 3:1, .916 at theta 1/2); "newcombe" 4 for
    shifts and ties, none under unequal spreads (it tends to ~.92); "percentile" 30 for shifts,
    more than 30 for the accuracy case; "bca" 16. At 3 vs 3 no interval reaches it: complete
    separation, probability 1/10 under identical distributions, already excludes 1/2 (.897).
    ``min_runs_for_coverage`` recomputes such a count for any method, thetas and spreads.
    Claims (low > 1/2) made when theta = 1/2 (shift): default 2.4% at 5 vs 5, 2.6% at 4 vs 4,
    "newcombe" 3.4% at 5 vs 5, "percentile" 4.9%; the power is ``improvement_power``.

    Shapes: scores_x (m,) or (m, K), scores_y (n,) or (n, K), m, n >= 2 -> (point, low, high).
    """
    x, y = _as_scores("scores_x", scores_x), _as_scores("scores_y", scores_y)
    _check_same_tasks({"scores_x": x, "scores_y": y})
    _check_runs("scores_x", x)
    _check_runs("scores_y", y)
    m = _check_bootstrap_args(reps, confidence, seed, method, IMPROVEMENT_METHODS)
    kernel = _improvement_kernel(x.shape[1])
    if m in METHODS:
        point, low, high = _bootstrap(
            _columns(x) + _columns(y),
            kernel,
            1.0,
            reps=reps,
            confidence=confidence,
            seed=seed,
            method=m,
        )
        return float(point), float(low), float(high)
    point = float(kernel(_columns(x) + _columns(y), 1.0))
    _, low, high = _improvement_analytic(x, y, float(confidence), inflate=m == "newcombe-delong")
    return point, min(float(low), point), max(float(high), point)


def _check_positive_int(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def simulate_improvement_ci(
    n: int,
    m: int | None = None,
    p_true: float = 0.5,
    *,
    method: str = "newcombe-delong",
    spread: float = 1.0,
    tasks: int = 1,
    sims: int = 4000,
    reps: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """How ``probability_of_improvement_ci`` behaves on data with a known P(X > Y) (Monte Carlo).

    Each of ``sims`` datasets holds n runs of X and m (default n) of Y on each of ``tasks`` tasks,
    independent, X ~ N(delta, spread^2), Y ~ N(0, 1), with
        delta = sqrt(1 + spread^2) Phi^-1(p_true),  so  P(X > Y) = p_true on every task.
    spread = 1 is a location shift (P = Phi(delta / sqrt 2)); any increasing transform of both
    (lognormal scores, say) gives the same intervals, since they depend on ranks only. Returns

        coverage     fraction of datasets with low <= p_true <= high
        coverage_se  its binomial standard error sqrt(coverage (1 - coverage) / sims)
        holds        fraction with low > 1/2: the improvement verdict "holds" (the power of the
                     claim X > Y when p_true > 1/2, its false-claim rate at p_true = 1/2)
        violated     fraction with high < 1/2
        width        mean of high - low

    The analytic methods run vectorised over all datasets through the code the public function
    uses; the bootstrap methods call the public function on each dataset (seed i for the i-th,
    ``reps`` resamples): about 3-5 ms per dataset at 5 vs 5 runs. Deterministic given ``seed``.
    """
    n = _check_positive_int("n", n, 2)
    m = n if m is None else _check_positive_int("m", m, 2)
    tasks = _check_positive_int("tasks", tasks, 1)
    sims = _check_positive_int("sims", sims, 1)
    if isinstance(p_true, bool) or not isinstance(p_true, numbers.Real) or not 0 < p_true < 1:
        raise ValueError(f"p_true must be a number in the open interval (0, 1), got {p_true!r}")
    if (
        isinstance(spread, bool)
        or not isinstance(spread, numbers.Real)
        or not (math.isfinite(spread) and spread > 0)
    ):
        raise ValueError(f"spread must be a finite number > 0, got {spread!r}")
    meth = _check_bootstrap_args(reps, confidence, seed, method, IMPROVEMENT_METHODS)
    rng = np.random.default_rng(seed)
    delta = math.sqrt(1.0 + spread**2) * float(sps.norm.ppf(p_true))
    x = rng.normal(delta, spread, size=(sims, n, tasks))
    y = rng.normal(0.0, 1.0, size=(sims, m, tasks))
    if meth in METHODS:
        ci = [
            probability_of_improvement_ci(
                x[i], y[i], reps=reps, confidence=confidence, seed=i, method=meth
            )
            for i in range(sims)
        ]
        low, high = np.array([c[1] for c in ci]), np.array([c[2] for c in ci])
    else:
        chunk = max(1, 2**22 // (n * m * tasks))
        parts = [
            _improvement_analytic(
                x[i : i + chunk], y[i : i + chunk], float(confidence), meth == "newcombe-delong"
            )
            for i in range(0, sims, chunk)
        ]
        low = np.concatenate([p[1] for p in parts])
        high = np.concatenate([p[2] for p in parts])
    cov = float(np.mean((low <= p_true) & (p_true <= high)))
    return {
        "coverage": cov,
        "coverage_se": math.sqrt(cov * (1 - cov) / sims),
        "holds": float(np.mean(low > 0.5)),
        "violated": float(np.mean(high < 0.5)),
        "width": float(np.mean(high - low)),
    }


def improvement_power(n: int, m: int | None = None, p_true: float = 0.75, **kwargs: Any) -> float:
    """P(the interval's low end > 1/2): how often the improvement claim X > Y "holds" with n runs
    of X and m (default n) of Y when the true P(X > Y) is ``p_true`` (its false-claim rate when
    ``p_true`` = 1/2). The normal model and keyword arguments of ``simulate_improvement_ci``.

    For example (default method, location shift, 4000 datasets): at 5 vs 5 runs about 0.14 at
    p_true 0.7 and 0.63 at 0.9; at 10 vs 10, 0.28 and 0.94; at 20 vs 20, 0.58 and 1.00. Method
    "newcombe": 0.19 and 0.71; 0.34 and 0.96; 0.60 and 1.00.
    """
    return simulate_improvement_ci(n, m, p_true, **kwargs)["holds"]


def min_runs_for_coverage(
    method: str = "newcombe-delong",
    *,
    p_values: Sequence[float] = (0.5, 0.7, 0.9),
    spreads: Sequence[float] = (1.0,),
    tolerance: float = 0.02,
    candidates: Sequence[int] = (4, 5, 6, 8, 10, 12, 16, 20, 25, 30),
    confidence: float = 0.95,
    sims: int = 4000,
    reps: int = 1000,
    seed: int = 0,
) -> int | None:
    """The fewest runs per side (n = m) from which on the interval's simulated coverage is at
    least ``confidence`` - ``tolerance`` at every candidate count, every p_true in ``p_values`` and
    every spread in ``spreads`` (``simulate_improvement_ci``, K = 1); None when the largest
    candidate falls short. Counts are scanned from the largest down, so a dip at a small count
    (discreteness) stops the scan. The estimates are Monte Carlo: with 4000 datasets a coverage of
    0.95 has a standard error of 0.0034. The bootstrap methods are slow here (``sims`` calls of
    the public function per cell).
    """
    if not 0 < tolerance < confidence:
        raise ValueError(f"tolerance must be in (0, confidence), got {tolerance!r}")
    ns = sorted({_check_positive_int("candidates", c, 2) for c in candidates}, reverse=True)
    if not ns:
        raise ValueError("candidates is empty")
    best = None
    for n in ns:
        for p in p_values:
            for sd in spreads:
                r = simulate_improvement_ci(
                    n, p_true=p, method=method, spread=sd, sims=sims, reps=reps,
                    confidence=confidence, seed=seed,
                )  # fmt: skip
                if r["coverage"] < confidence - tolerance:
                    return best
        best = n
    return best


def performance_profile_ci(
    scores: np.ndarray,
    taus: np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "percentile",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score performance profile with a pointwise stratified-bootstrap band (§4.2, §4.1).

    Every tau is computed on the same resamples, and the band is the per-tau interval of
    ``stratified_bootstrap_ci``: pointwise, not simultaneous (the whole curve lies inside it with
    probability below ``confidence``).

    Shapes: scores (R,) or (R, K), R >= 2, taus (Q,) -> (point, low, high), each (Q,).
    """
    s = _as_scores("scores", scores)
    _check_runs("scores", s)
    t = _as_taus(taus)
    m = _check_bootstrap_args(reps, confidence, seed, method)
    return _bootstrap(
        _columns(s), _profile_kernel(t), 1.0, reps=reps, confidence=confidence, seed=seed, method=m
    )


def _curve_iqm_kernel(tasks: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    """IQM of each point's runs: X arrays (..., R) -> (X, ...)."""
    return np.stack([np.asarray(sps.trim_mean(t, 0.25, axis=-1)) for t in tasks])


def iqm_curve(curves: np.ndarray) -> np.ndarray:
    """Interquartile mean over runs at each point of a curve (arXiv 2108.13264 §4.3, Fig. 9: the
    sample-efficiency curves of rliable).

    With the R runs' values at point x sorted, y_(1) <= ... <= y_(R), and g = floor(R / 4):
        IQM(x) = 1 / (R - 2g) * sum_{i = g+1}^{R-g} y_(i)
    i.e. ``iqm`` (floor trimming, as rliable) of each column on its own.

    Shapes: curves (R, X), R runs on a common grid of X points -> (X,).
    """
    c = _as_curves(curves)
    return np.asarray(_curve_iqm_kernel(_columns(c), 1.0), dtype=np.float64)


def iqm_curve_ci(
    curves: np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "percentile",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``iqm_curve`` with a pointwise bootstrap band: at each point x, the interval of
    ``stratified_bootstrap_ci(curves[:, x], "iqm")`` (runs resampled with replacement, R per
    resample; percentile interval by default, rliable's).

    Each point is one stratum resampled on its own, so the interval at x is exactly that of its
    column alone (rliable resamples whole runs; the pointwise intervals have the same distribution,
    since the IQM at x reads column x only). The band is pointwise, not simultaneous: the whole
    curve lies inside it with probability below ``confidence``. Where every run has one value the
    interval is that value.

    Shapes: curves (R, X), R >= 2 -> (point, low, high), each (X,).
    """
    c = _as_curves(curves)
    _check_runs("curves", c)
    m = _check_bootstrap_args(reps, confidence, seed, method)
    point, low, high = _bootstrap(
        _columns(c), _curve_iqm_kernel, 1.0, reps=reps, confidence=confidence, seed=seed, method=m
    )
    return point, low, high


def _as_curves(curves: object) -> np.ndarray:
    """Validate curves shaped (R, X) (finite numbers) and return them as float64."""
    if np.ndim(curves) != 2:
        raise ValueError(
            f"curves must be shaped (runs, points), got shape {np.shape(curves)}; one run's "
            "curve is (1, points)"
        )
    return _as_scores("curves", curves)


def aggregate_with_ci(
    score_dict: Mapping[str, np.ndarray],
    statistics: Sequence[str] = ("iqm", "mean", "median", "optimality_gap"),
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "percentile",
    gamma: float = 1.0,
) -> pd.DataFrame:
    """Aggregate statistics of several algorithms with stratified-bootstrap intervals (§4.1, §4.3).

    One row per (algorithm, statistic), in the dict's and the tuple's order, with columns
    algorithm, statistic, point, low, high. Each row equals
    ``stratified_bootstrap_ci(score_dict[algorithm], statistic, seed=seed, ...)``: every algorithm
    uses the same seed, so its interval does not depend on which other algorithms are in the dict.
    The settings are kept in ``DataFrame.attrs`` (reps, confidence, seed, method, gamma).

    Shapes: each value (R_a,) or (R_a, K) with one K for all algorithms -> DataFrame.
    """
    if not isinstance(score_dict, Mapping) or len(score_dict) == 0:
        raise ValueError("score_dict must be a non-empty dict of algorithm -> scores (runs, tasks)")
    names = (statistics,) if isinstance(statistics, str) else tuple(statistics)
    if not names:
        raise ValueError(f"statistics is empty; choose from {STATISTICS.names()}")
    for name in names:
        STATISTICS.check(name)
    m = _check_bootstrap_args(reps, confidence, seed, method)
    g = _check_gamma(gamma)
    arrays = {a: _as_scores(f"score_dict[{a!r}]", s) for a, s in score_dict.items()}
    _check_same_tasks(arrays)
    for a, s in arrays.items():
        _check_runs(f"score_dict[{a!r}]", s)
    rows = []
    for a, s in arrays.items():
        for name in names:
            point, low, high = stratified_bootstrap_ci(
                s, name, reps=reps, confidence=confidence, seed=seed, method=m, gamma=g
            )
            rows.append(
                {"algorithm": a, "statistic": name, "point": point, "low": low, "high": high}
            )
    df = pd.DataFrame(rows, columns=["algorithm", "statistic", "point", "low", "high"])
    df.attrs.update(reps=int(reps), confidence=float(confidence), seed=seed, method=m, gamma=g)
    return df
