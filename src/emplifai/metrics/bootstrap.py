"""Seeded percentile bootstrap CIs where the unit of resampling is the response (a cluster bootstrap).

A response carries several criteria and several raters; resampling (response, criterion) cells as if they were
independent would count one response many times over and narrow every CI. So the draws here are arrays of
response indices: every statistic of one resample is computed from the same drawn responses, with all their
criteria and ratings together, and macro / response-level / system-level CIs stay coherent with each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from emplifai.metrics.coefficients import Coef, degenerate, paired

MAX_DEGENERATE = 0.1  # more undefined resamples than this → no CI (the interval would describe another population)


def draws(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) indices of n clusters drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def draws_within(groups: Sequence, n_resamples: int, seed: int) -> np.ndarray:
    """Like `draws`, but each cluster's slot is refilled from its own group (responses within systems), so every
    resample keeps each system's size: a system's mean varies, its weight in the comparison does not."""
    labels = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, len(labels)), dtype=int)
    for g in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == g)
        out[:, members] = rng.choice(members, size=(n_resamples, len(members)), replace=True)
    return out


def percentile_ci(dist: np.ndarray, level: float = 0.95) -> tuple[float, float, str | None]:
    """(low, high, reason) from a bootstrap distribution; undefined (NaN) resamples are dropped, up to 10%."""
    dist = np.asarray(dist, dtype=float)
    finite = dist[np.isfinite(dist)]
    if not len(dist) or len(finite) < (1 - MAX_DEGENERATE) * len(dist):
        return math.nan, math.nan, f"{len(dist) - len(finite)} of {len(dist)} resamples were degenerate"
    tail = (1 - level) / 2 * 100
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)), None


def mean_ci(x: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, str | None]:
    """(low, high, reason) of the mean of `x` (finite values, each its own cluster: a dialogue, a response)."""
    return percentile_ci(x[draws(x.size, int(n_resamples), seed)].mean(axis=1), level)


def mean_with_ci(values: Sequence[float | None] | np.ndarray, n_resamples: int, seed: int, level: float = 0.95,
                 unit: str = "value", nan_cause: str = "") -> tuple[float, float, float, str]:
    """(mean, low, high, reason) of the finite values, each its own cluster (a dialogue, a response): the
    project's one CI of a mean (emotion scores, per-emotion tables, judge means, the epoch comparison).
    No finite value: all NaN; one: its value, no CI; the reason says which ("" when there is a CI)."""
    arr = np.array([math.nan if v is None else v for v in values], dtype=float)
    x = arr[np.isfinite(arr)]
    if x.size == 0:
        why = f"all {arr.size} {unit}s are NaN" + (f" ({nan_cause})" if nan_cause else "") if arr.size else f"no {unit}s"
        return math.nan, math.nan, math.nan, why
    if x.size == 1:
        return float(x[0]), math.nan, math.nan, f"one {unit}: no CI"
    low, high, why = mean_ci(x, n_resamples, seed, level)
    return float(x.mean()), low, high, why or ""


def distributions(stat: Callable[[np.ndarray], Mapping[str, float]], idx: np.ndarray) -> dict[str, np.ndarray]:
    """{name: values over resamples} of a statistic that maps one row of cluster indices to named numbers."""
    rows = [stat(i) for i in idx]
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {k: np.array([r.get(k, math.nan) for r in rows], dtype=float) for k in names}


def paired_ci(fn: Callable[..., Coef], x: Sequence[float], y: Sequence[float], n_resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> tuple[float, float, str | None]:
    """(low, high, reason) of a paired coefficient's CI where each pair is its own cluster (one row per
    response). Not for data with several rows per response: use `draws` over responses instead."""
    a, b = paired(x, y)
    reason = degenerate(a, b)
    if reason:
        return math.nan, math.nan, reason
    dist = np.array([fn(a[i], b[i]).value for i in draws(len(a), n_resamples, seed)])
    return percentile_ci(dist, level)
