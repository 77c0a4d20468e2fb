"""Seeded percentile bootstrap CIs over items (scipy.stats.bootstrap, paired resampling)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from emplifai.stats.agreement import Coef, degenerate, paired


def paired_ci(fn: Callable[..., Coef], x: Sequence[float], y: Sequence[float], n_resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> tuple[float, float, str | None]:
    """(low, high, reason) of a paired coefficient's CI. Resamples where the coefficient is undefined
    (e.g. all-equal scores drawn) are dropped by taking NaN-aware percentiles; reason says if too many were."""
    a, b = paired(x, y)
    reason = degenerate(a, b)
    if reason:
        return math.nan, math.nan, reason

    def stat(i: np.ndarray) -> float:
        return fn(a[i.astype(int)], b[i.astype(int)]).value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(len(a)),), stat, n_resamples=n_resamples, vectorized=False,
                              method="percentile", confidence_level=level, rng=np.random.default_rng(seed))
        dist = res.bootstrap_distribution
    finite = dist[np.isfinite(dist)]
    if len(finite) < 0.9 * n_resamples:
        return math.nan, math.nan, f"{n_resamples - len(finite)} of {n_resamples} resamples were degenerate"
    if len(finite) == len(dist):
        return float(res.confidence_interval.low), float(res.confidence_interval.high), None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)), None
