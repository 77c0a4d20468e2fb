"""The Alternative Annotator Test (alt-test): may the judge replace a human rater?

Calderon, Reichart & Dror, ACL 2025 (arXiv 2501.10970); numbers match their public code (nitaytech/AltTest,
`alt_test` in alt_test_example.ipynb) on the same inputs. Per criterion, leave one rater h out; on each
response h rated, score the judge and h against the remaining raters (neg_rmse or accuracy), and count who is
at least as close (a tie counts for both). A one-sided t-test of mean(h ≥ judge − judge ≥ h) < ε per rater,
then Benjamini–Yekutieli over raters at q. Winning rate ω = share of raters rejected (the judge may replace a
rater when ω ≥ 0.5); advantage probability ρ = mean over raters of P(judge ≥ h), for comparing judges.

Choices where the reference leaves room:
- a response without a judge score (NaN) is dropped, like an instance missing from the LLM annotations;
- a rater with fewer than `min_items` eligible responses is skipped, as in the reference (not tested, not in
  ω's denominator); if none is left, ω and ρ are NaN with the reason — never 0, never a verdict;
- BY uses scipy.stats.false_discovery_control (adjusted p ≤ q is the same step-up rule); a NaN p-value (a
  constant difference exactly equal to ε) counts in m and is never rejected, as in the reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

METRICS = ("neg_rmse", "accuracy")
PASS = 0.5  # the paper's passing winning rate
COLUMNS = ["criterion", "winning_rate", "advantage_prob", "passed", "n_responses", "n_raters", "epsilon", "reason"]


def alignment(pred: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
    """Per response: how well `pred` matches the remaining raters' scores (a row of `others`, NaN = absent).

    neg_rmse = −sqrt(mean((pred − a)²)) over the remaining raters a; accuracy = share of them equal to pred.
    """
    rated = np.isfinite(others)
    if metric == "neg_rmse":
        sq = np.where(rated, (pred[:, None] - others) ** 2, 0.0)
        return -np.sqrt(sq.sum(axis=1) / rated.sum(axis=1))
    if metric == "accuracy":
        return (rated & (pred[:, None] == others)).sum(axis=1) / rated.sum(axis=1)
    raise ValueError(f"alt_test metric must be one of {METRICS}, got {metric!r}")


def rater_tests(judge: np.ndarray, raters: np.ndarray, epsilon: float, metric: str, min_items: int
                ) -> pd.DataFrame:
    """One row per rater with ≥ min_items eligible responses: n, p-value (H0: rater's advantage ≥ ε), ρ_h.

    `raters` is responses × raters (NaN where a rater did not rate); eligible responses have a judge score
    and ≥ 2 raters, so someone remains when one is left out.
    """
    keep = np.isfinite(judge) & (np.isfinite(raters).sum(axis=1) >= 2)
    judge, raters = judge[keep], raters[keep]
    rows = []
    for h in range(raters.shape[1]):
        on = np.isfinite(raters[:, h])
        if on.sum() < min_items:
            continue
        others = raters[on].copy()
        others[:, h] = np.nan
        s_judge, s_h = alignment(judge[on], others, metric), alignment(raters[on, h], others, metric)
        judge_wins, h_wins = (s_judge >= s_h).astype(float), (s_h >= s_judge).astype(float)
        with warnings.catch_warnings():  # a constant difference: scipy warns, gives p = 0 or 1 (NaN at ε)
            warnings.simplefilter("ignore")
            p = stats.ttest_1samp(h_wins - judge_wins, epsilon, alternative="less").pvalue
        rows.append({"rater": h, "n": int(on.sum()), "p_value": float(p), "advantage_prob": judge_wins.mean()})
    return pd.DataFrame(rows, columns=["rater", "n", "p_value", "advantage_prob"])


def by_reject(p_values: Sequence[float], q: float) -> np.ndarray:
    """Benjamini–Yekutieli step-up at FDR q (valid under any dependence: raters share responses)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    if not len(p):
        return np.zeros(0, dtype=bool)
    return stats.false_discovery_control(p, method="by") <= q


def alt_test_one(judge: np.ndarray, raters: np.ndarray, epsilon: float = 0.2, q: float = 0.05,
                 metric: str = "neg_rmse", min_items: int = 30) -> dict:
    """ω, ρ, verdict, counts and a NaN reason for one criterion (arrays as in `rater_tests`)."""
    if metric not in METRICS:
        raise ValueError(f"alt_test metric must be one of {METRICS}, got {metric!r}")
    eligible = np.isfinite(judge) & (np.isfinite(raters).sum(axis=1) >= 2)
    out = {"winning_rate": math.nan, "advantage_prob": math.nan, "passed": pd.NA,
           "n_responses": int(eligible.sum()), "n_raters": 0, "epsilon": float(epsilon), "reason": ""}
    if not eligible.any():
        out["reason"] = "no response has a judge score and ≥ 2 human raters (nobody left after leaving one out)"
        return out
    tests = rater_tests(judge, raters, epsilon, metric, min_items)
    if tests.empty:
        most = int(np.isfinite(raters[eligible]).sum(axis=0).max())
        out["reason"] = (f"every rater has fewer than {min_items} responses with a judge score and another "
                         f"rater (most: {most}; agreement.alt_test.min_items, the t-test's minimum)")
        return out
    omega = float(by_reject(tests["p_value"], q).mean())
    out.update(winning_rate=omega, advantage_prob=float(tests["advantage_prob"].mean()), passed=omega >= PASS,
               n_raters=len(tests))
    return out


def alt_test(merged: pd.DataFrame, criteria: Sequence[str], epsilon: float = 0.2, q: float = 0.05,
             metric: str = "neg_rmse", min_items: int = 30) -> pd.DataFrame:
    """One row per criterion (COLUMNS) from `tables.merge` output: `judge` + one `rater:<id>` column each.

    n_responses: responses with a judge score and ≥ 2 raters; n_raters: raters tested (ω's denominator).
    `passed` is a nullable bool: <NA> whenever ω is NaN.
    """
    cols = [c for c in merged.columns if str(c).startswith("rater:")]
    rows = []
    for crit in criteria:
        f = merged[merged["criterion"] == crit]
        rows.append({"criterion": crit, **alt_test_one(f["judge"].to_numpy(dtype=float),
                                                        f[cols].to_numpy(dtype=float).reshape(len(f), len(cols)),
                                                        epsilon, q, metric, min_items)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["passed"] = table["passed"].astype("boolean")
    return table


def as_metrics(table: pd.DataFrame, prefix: str) -> tuple[dict[str, float], dict[str, str]]:
    """`<prefix>/<criterion>/alt_test/{winning_rate,advantage_prob,passed}` (passed 1.0/0.0) + NaN reasons."""
    metrics, reasons = {}, {}
    for row in table.to_dict(orient="records"):
        passed = math.nan if pd.isna(row["passed"]) else float(bool(row["passed"]))
        for stat, value in (("winning_rate", row["winning_rate"]), ("advantage_prob", row["advantage_prob"]),
                            ("passed", passed)):
            key = f"{prefix}/{row['criterion']}/alt_test/{stat}"
            metrics[key] = float(value)
            if math.isnan(value):
                reasons[key] = f"alt-test: {row['reason']}"
    return metrics, reasons
