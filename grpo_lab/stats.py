"""Aggregate scores over runs and tasks, with stratified-bootstrap confidence intervals.

The definitions are those of rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge
of the Statistical Precipice", arXiv 2108.13264): stratified bootstrap intervals (§4.1), run-score
performance profiles (§4.2), IQM / mean / median / optimality gap (§4.3) and the probability of
improvement (§4.4).

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

import numpy as np
import pandas as pd
from scipy import stats as sps

from grpo_lab.registry import Registry

Kernel = Callable[[Sequence[np.ndarray], float], np.ndarray]
# kernel(K arrays (..., n_k), gamma) -> (...) or (Q, ...)
STATISTICS: Registry[Kernel] = Registry("statistic")

METHODS = ("percentile", "bca")
MIN_REPS = 100
# Resampled scores held in memory per bootstrap batch. The batch size depends only on the data's
# size, so a fixed seed gives the same resamples on every call with data of that size.
_BATCH_ELEMENTS = 2**18


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


def _check_bootstrap_args(reps: object, confidence: object, seed: object, method: object) -> str:
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
    if m not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
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


def probability_of_improvement_ci(
    scores_x: np.ndarray,
    scores_y: np.ndarray,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    method: str = "percentile",
) -> tuple[float, float, float]:
    """P(X > Y) (see ``probability_of_improvement``) with a stratified-bootstrap interval (§4.4).

    The runs of X and of Y are resampled independently within each task (2K strata), as rliable's
    ``StratifiedIndependentBootstrap`` does for paired comparisons; intervals as in
    ``stratified_bootstrap_ci``.

    Shapes: scores_x (m,) or (m, K), scores_y (n,) or (n, K), m, n >= 2 -> (point, low, high).
    """
    x, y = _as_scores("scores_x", scores_x), _as_scores("scores_y", scores_y)
    _check_same_tasks({"scores_x": x, "scores_y": y})
    _check_runs("scores_x", x)
    _check_runs("scores_y", y)
    m = _check_bootstrap_args(reps, confidence, seed, method)
    kernel = _improvement_kernel(x.shape[1])
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
