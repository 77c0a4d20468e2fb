"""Agreement coefficients that never raise on degenerate input: NaN plus a reason instead.

Thin wrappers only: scipy.stats (Spearman ρ, Pearson r, Kendall τ-b), sklearn.metrics.cohen_kappa_score
(quadratic weights) and krippendorff.alpha (ordinal). What they add is the guard every user of small rating
sets needs — pairs with a NaN are dropped, fewer than MIN_ITEMS items or a constant side gives NaN with the
reason, which the stages log as `missing.<metric>`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score

MIN_ITEMS = 3


@dataclass(frozen=True)
class Coef:
    value: float
    reason: str | None = None  # why value is NaN; None when it is a number
    n: int = 0


TIE_DECIMALS = 9  # means of 1–5 ratings: equal values that differ only by float rounding are one tie


def paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The two arrays restricted to positions where both are finite, rounded to TIE_DECIMALS: two means of the
    same ratings summed in another order (4.6 vs 4.6000000000000005) must tie in a rank correlation, or the
    coefficient would depend on the order of the sum."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return np.round(a[keep], TIE_DECIMALS), np.round(b[keep], TIE_DECIMALS)


def degenerate(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("x", "y")) -> str | None:
    if len(a) < MIN_ITEMS:
        return f"fewer than {MIN_ITEMS} items with both scores (n={len(a)})"
    for arr, name in ((a, names[0]), (b, names[1])):
        if np.ptp(arr) == 0:
            return f"{name} scores are constant ({arr[0]:g}) over {len(arr)} items"
    return None


def _guarded(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[..., Coef]:
    def wrapped(x: Sequence[float], y: Sequence[float], names: tuple[str, str] = ("x", "y")) -> Coef:
        a, b = paired(x, y)
        reason = degenerate(a, b, names)
        if reason:
            return Coef(math.nan, reason, len(a))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(fn(a, b))
        return Coef(value, None if math.isfinite(value) else "library returned NaN", len(a))

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_guarded
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ (scipy.stats.spearmanr)."""
    return stats.spearmanr(a, b).statistic


@_guarded
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r (scipy.stats.pearsonr)."""
    return stats.pearsonr(a, b).statistic


@_guarded
def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall τ-b (scipy.stats.kendalltau, variant='b': corrects for ties, which rating scales are full of)."""
    return stats.kendalltau(a, b, variant="b").statistic


CORRELATIONS: dict[str, Callable[..., Coef]] = {"spearman": spearman, "pearson": pearson, "kendall": kendall}


def qwk(judge: Sequence[float], human: Sequence[float], lo: int = 1, hi: int = 5,
        names: tuple[str, str] = ("judge", "human")) -> Coef:
    """Quadratic-weighted Cohen's κ (sklearn) between integer ratings; inputs are rounded to the scale."""
    a, b = paired(judge, human)
    if len(a) < MIN_ITEMS:
        return Coef(math.nan, f"fewer than {MIN_ITEMS} items with both scores (n={len(a)})", len(a))
    a, b = np.clip(np.rint(a), lo, hi).astype(int), np.clip(np.rint(b), lo, hi).astype(int)
    for arr, name in ((a, names[0]), (b, names[1])):
        if np.ptp(arr) == 0:  # κ is then 0 or undefined by construction: says nothing about agreement
            return Coef(math.nan, f"{name} ratings are constant ({arr[0]}) over {len(arr)} items", len(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(a, b, weights="quadratic", labels=list(range(lo, hi + 1))))
    return Coef(value, None if math.isfinite(value) else "kappa undefined (no variation expected by chance)",
                len(a))


def kripp_alpha(ratings: np.ndarray, lo: int = 1, hi: int = 5, level: str = "ordinal") -> Coef:
    """Krippendorff's α; `ratings` is raters × items with NaN for missing (krippendorff.alpha)."""
    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2:
        return Coef(math.nan, "need at least 2 raters", 0)
    pairable = int((np.isfinite(data).sum(axis=0) >= 2).sum())
    if pairable < MIN_ITEMS:
        return Coef(math.nan, f"fewer than {MIN_ITEMS} items rated by 2+ raters (n={pairable})", pairable)
    values = data[np.isfinite(data)]
    if np.ptp(values) == 0:
        return Coef(math.nan, f"all ratings are the same value ({values[0]:g})", pairable)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(krippendorff.alpha(reliability_data=data, value_domain=list(range(lo, hi + 1)),
                                         level_of_measurement=level))
    return Coef(value, None if math.isfinite(value) else "alpha undefined", pairable)
