"""System-level agreement: do judge and humans rank the systems (styles, base, SFT epochs) the same way?

What a study reports is usually a ranking of systems, so this is the agreement that matters for its claims:
Kendall τ-b between the judge's and the humans' per-system means, and per system the judge − human gap (a
judge that is lenient with one system moves that system in the ranking). CIs resample responses within
systems (each system keeps its size), from the same seed as every other agreement CI.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from emplifai.core.tracking import metric_names
from emplifai.metrics.bootstrap import draws_within, percentile_ci
from emplifai.metrics.coefficients import MIN_ITEMS, kendall
from emplifai.metrics.tables import Cube, _nanmean


def _sums(cube: Cube) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per response: judge sum, human-mean sum and count over the criteria both scored (like for like)."""
    human = _nanmean(cube.raters, 0) if len(cube.raters) else np.full(cube.judge.shape, np.nan)
    both = np.isfinite(cube.judge) & np.isfinite(human)
    return (np.where(both, cube.judge, 0).sum(axis=1), np.where(both, human, 0).sum(axis=1),
            both.sum(axis=1).astype(float))


def _means(j: np.ndarray, h: np.ndarray, n: np.ndarray, members: list[np.ndarray], idx: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(judge, human) system means for each row of response indices idx (..., R) → (..., S)."""
    if not members:
        return np.zeros((*idx.shape[:-1], 0)), np.zeros((*idx.shape[:-1], 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = np.stack([n[idx[..., m]].sum(axis=-1) for m in members], axis=-1)
        return (np.stack([j[idx[..., m]].sum(axis=-1) for m in members], axis=-1) / cnt,
                np.stack([h[idx[..., m]].sum(axis=-1) for m in members], axis=-1) / cnt)


def system_level(cube: Cube, boot: dict | None) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
    """(per-system table, metrics keyed `kendall`, `kendall_ci_low`, ..., `<system>/gap`..., reasons)."""
    cube = cube.take(np.flatnonzero(_sums(cube)[2] > 0))  # responses with a judge and a human score
    j, h, n = _sums(cube)
    systems = list(dict.fromkeys(cube.systems.tolist()))
    members = [np.flatnonzero(cube.systems == s) for s in systems]
    ident = np.arange(len(n))
    jm, hm = _means(j, h, n, members, ident)
    tau = kendall(jm, hm, names=("judge system means", "human system means"))
    metrics: dict[str, float] = {"kendall": tau.value, "n_systems": float(len(systems))}
    reasons: dict[str, str] = {"kendall": tau.reason} if tau.reason else {}
    rows = [{"system": s, "n_responses": len(m), "judge_mean": jm[i], "human_mean": hm[i], "gap": jm[i] - hm[i],
             "gap_ci_low": math.nan, "gap_ci_high": math.nan, "flagged": math.nan, "reason": ""}
            for i, (s, m) in enumerate(zip(systems, members, strict=True))]
    if boot and systems:
        level = float(boot["level"])
        idx = draws_within(cube.systems, int(boot["n_resamples"]), int(boot["seed"]))
        bj, bh = _means(j, h, n, members, idx)
        dist = np.array([kendall(a, b).value for a, b in zip(bj, bh, strict=True)])
        low, high, why = percentile_ci(dist, level) if not tau.reason else (math.nan, math.nan, tau.reason)
        metrics |= {"kendall_ci_low": low, "kendall_ci_high": high}
        reasons |= {"kendall_ci_low": why, "kendall_ci_high": why} if why else {}
        for i, row in enumerate(rows):
            if row["n_responses"] < MIN_ITEMS:
                row["reason"] = f"fewer than {MIN_ITEMS} rated responses (n={row['n_responses']}): no CI, no flag"
                continue
            low, high, why = percentile_ci(bj[:, i] - bh[:, i], level)
            row |= {"gap_ci_low": low, "gap_ci_high": high, "reason": why or "",
                    "flagged": math.nan if why else float(low > 0 or high < 0)}
    table = pd.DataFrame(rows, columns=["system", "n_responses", "judge_mean", "human_mean", "gap", "gap_ci_low",
                                        "gap_ci_high", "flagged", "reason"])
    metrics["n_flagged"] = float(np.nansum(table["flagged"])) if len(table) else 0.0
    names = metric_names(row["system"] for row in rows)
    for row in rows:
        for stat in ("gap", "gap_ci_low", "gap_ci_high", "flagged"):
            key = f"{names[row['system']]}/{stat}"  # MLflow-safe and unique (core/tracking.py)
            metrics[key] = float(row[stat])
            if not math.isfinite(metrics[key]):
                reasons[key] = row["reason"] or "not computed (bootstrap off)"
    return table, metrics, reasons
