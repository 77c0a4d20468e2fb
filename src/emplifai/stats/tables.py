"""Judge-vs-human agreement tables built from the wrappers in emplifai.stats (no formulas here).

Input: one judge's long scores (response_id, system, criterion, score) and human ratings (response_id,
rater_id, criterion, score). Only responses with both are compared. "overall" pools every criterion.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from emplifai.stats.agreement import CORRELATIONS, Coef, kripp_alpha, qwk
from emplifai.stats.bootstrap import paired_ci

OVERALL = "overall"


def merge(scores: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    """One row per (response_id, criterion): judge score, human mean/median, one column per rater."""
    wide = ratings.pivot_table(index=["response_id", "criterion"], columns="rater_id", values="score",
                               aggfunc="mean")
    wide.columns = [f"rater:{c}" for c in wide.columns]
    human = ratings.groupby(["response_id", "criterion"])["score"].agg(human_mean="mean", human_median="median",
                                                                      n_raters="size")
    judge = scores[["response_id", "criterion", "system", "score"]].rename(columns={"score": "judge"})
    return judge.merge(human.join(wide).reset_index(), on=["response_id", "criterion"], how="inner")


def rater_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("rater:")]


def coefficients(frame: pd.DataFrame, lo: int, hi: int, boot: dict | None) -> tuple[dict, dict]:
    """(values, reasons) for one criterion (or overall) of one judge."""
    values: dict[str, float] = {"n": float(len(frame))}
    reasons: dict[str, str] = {}

    def put(name: str, c: Coef) -> None:
        values[name] = c.value
        if c.reason:
            reasons[name] = c.reason

    for name, fn in CORRELATIONS.items():
        put(name, fn(frame["judge"], frame["human_mean"], names=("judge", "human mean")))
        if boot:
            low, high, why = paired_ci(fn, frame["judge"], frame["human_mean"], int(boot["n_resamples"]),
                                       int(boot["seed"]), float(boot["level"]))
            values[f"{name}_ci_low"], values[f"{name}_ci_high"] = low, high
            if why:
                reasons[f"{name}_ci_low"] = reasons[f"{name}_ci_high"] = why
    put("qwk", qwk(frame["judge"], frame["human_median"], lo, hi))
    raters = frame[rater_columns(frame)].to_numpy(dtype=float).T
    put("alpha_humans", kripp_alpha(raters, lo, hi))
    judge_row = np.clip(np.rint(frame["judge"].to_numpy(dtype=float)), lo, hi)[None, :]
    put("alpha_with_judge", kripp_alpha(np.vstack([raters, judge_row]), lo, hi))
    return values, reasons


def ceiling(frame: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """Each human vs the mean (and median, for κ) of the other humans: how well *anyone* can agree."""
    rows = []
    cols = rater_columns(frame)
    for col in cols:
        others = frame[[c for c in cols if c != col]]
        row = {"rater": col.removeprefix("rater:")}
        reasons = []
        for name, fn in CORRELATIONS.items():
            c = fn(frame[col], others.mean(axis=1), names=("rater", "others' mean"))
            row[name] = c.value
            reasons += [f"{name}: {c.reason}"] if c.reason else []
        c = qwk(frame[col], others.median(axis=1), lo, hi, names=("rater", "others"))
        row["qwk"] = c.value
        reasons += [f"qwk: {c.reason}"] if c.reason else []
        row["reason"] = "; ".join(reasons)
        rows.append(row)
    return pd.DataFrame(rows)


def per_criterion(merged: pd.DataFrame, criteria: list[str], lo: int, hi: int, boot: dict | None
                  ) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """(coefficient table with one row per criterion + overall, reasons keyed 'criterion/stat', ceilings)."""
    rows, reasons, ceilings = [], {}, []
    for crit in [*criteria, OVERALL]:
        frame = merged if crit == OVERALL else merged[merged["criterion"] == crit]
        if crit == OVERALL:  # α over every (response, criterion) unit; correlations pool all pairs
            frame = frame.assign(response_id=frame["response_id"] + "|" + frame["criterion"])
        values, why = coefficients(frame, lo, hi, boot)
        ceil = ceiling(frame, lo, hi).assign(criterion=crit)
        ceilings.append(ceil)
        for stat in ("spearman", "pearson", "kendall", "qwk"):
            finite = ceil[stat].dropna() if len(ceil) else pd.Series(dtype=float)
            values[f"ceiling_{stat}"] = float(finite.mean()) if len(finite) else math.nan
            if not len(finite):
                why[f"ceiling_{stat}"] = "no rater could be compared with the others"
        rows.append({"criterion": crit, **values})
        reasons |= {f"{crit}/{k}": v for k, v in why.items()}
    return pd.DataFrame(rows), reasons, pd.concat(ceilings, ignore_index=True)


def per_system(merged: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """Point estimates (no CIs: a dozen items per system) per system × criterion, plus mean gap."""
    rows = []
    for (system, crit), f in merged.groupby(["system", "criterion"], sort=True):
        row = {"system": system, "criterion": crit, "n": len(f), "judge_mean": f["judge"].mean(),
               "human_mean": f["human_mean"].mean()}
        notes = []
        for name, fn in CORRELATIONS.items():
            c = fn(f["judge"], f["human_mean"], names=("judge", "human mean"))
            row[name] = c.value
            notes += [f"{name}: {c.reason}"] if c.reason else []
        c = qwk(f["judge"], f["human_median"], lo, hi)
        row["qwk"] = c.value
        row["reason"] = "; ".join(notes + ([f"qwk: {c.reason}"] if c.reason else []))
        rows.append(row)
    return pd.DataFrame(rows)


def disagreements(merged: pd.DataFrame, texts: pd.DataFrame, top: int) -> pd.DataFrame:
    """The largest |judge − human mean| gaps with the response and the patient's words."""
    frame = merged.assign(gap=merged["judge"] - merged["human_mean"]).dropna(subset=["gap"])
    frame = frame.reindex(frame["gap"].abs().sort_values(ascending=False).index).head(top)
    cols = ["response_id", "system", "criterion", "judge", "human_mean", "gap"]
    return frame[cols].merge(texts, on="response_id", how="left")
