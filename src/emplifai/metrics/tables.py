"""Judge-vs-human agreement tables built from the wrappers in emplifai.metrics.coefficients (no formulas here).

Input: one judge's long scores (response_id, system, criterion, score) and human ratings (response_id,
rater_id, criterion, score). Only (response, criterion) pairs with both are compared: a judge reply that
failed (score NaN) is no item, so every `n` counts scored pairs only and every CI resamples the responses that
have one (a response the judge failed on entirely is not in the draws). Nothing is pooled over criteria: the
criteria differ in their means for humans and judge alike, so correlating (response, criterion) cells
would report the criteria's shared ordering as agreement. Across criteria there are only
- `macro`: the mean of the per-criterion coefficients, and
- `response_level`: each response's mean over the criteria, judge vs humans,
with CIs from one cluster bootstrap over responses (emplifai.metrics.bootstrap) shared by every row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emplifai.metrics.bootstrap import distributions, draws, percentile_ci
from emplifai.metrics.coefficients import CORRELATIONS, Coef, kripp_alpha, qwk

MACRO, RESPONSE_LEVEL = "macro", "response_level"
ALPHAS = ("alpha_humans", "alpha_with_judge")
BOOTSTRAPPED = (*CORRELATIONS, *ALPHAS)  # qwk and the ceilings are point estimates (qwk is slow to resample)


def merge(scores: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    """One row per (response_id, criterion) with a judge score (not NaN) and human ratings: judge score, human
    mean/median, one column per rater."""
    wide = ratings.pivot_table(index=["response_id", "criterion"], columns="rater_id", values="score",
                               aggfunc="mean")
    wide.columns = [f"rater:{c}" for c in wide.columns]
    human = ratings.groupby(["response_id", "criterion"])["score"].agg(human_mean="mean", human_median="median",
                                                                      n_raters="size")
    judge = scores.dropna(subset=["score"]).groupby(["response_id", "criterion", "system"], as_index=False)["score"]
    judge = judge.mean().rename(columns={"score": "judge"})
    return judge.merge(human.join(wide).reset_index(), on=["response_id", "criterion"], how="inner")


def rater_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("rater:")]


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis) if a.shape[axis] else np.full(np.delete(a.shape, axis), np.nan)


def _nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis) if a.shape[axis] else np.full(np.delete(a.shape, axis), np.nan)


@dataclass(frozen=True)
class Cube:
    """Responses × criteria (× raters): the row (response) is the unit every bootstrap resamples."""

    responses: np.ndarray  # (R,) response ids
    systems: np.ndarray  # (R,)
    criteria: list[str]
    judge: np.ndarray  # (R, C)
    raters: np.ndarray  # (K, R, C), NaN where a rater did not rate
    rater_ids: list[str]

    @classmethod
    def from_merged(cls, merged: pd.DataFrame, criteria: list[str]) -> Cube:
        responses = sorted(merged["response_id"].unique())
        systems = merged.groupby("response_id")["system"].first().reindex(responses).to_numpy()

        def grid(col: str) -> np.ndarray:
            wide = merged.pivot_table(index="response_id", columns="criterion", values=col, aggfunc="mean")
            return wide.reindex(index=responses, columns=criteria).to_numpy(dtype=float)

        cols = rater_columns(merged)
        raters = np.stack([grid(c) for c in cols]) if cols else np.empty((0, len(responses), len(criteria)))
        return cls(np.asarray(responses), systems, list(criteria), grid("judge"), raters,
                   [c.removeprefix("rater:") for c in cols])

    def take(self, idx: np.ndarray) -> Cube:
        return Cube(self.responses[idx], self.systems[idx], self.criteria, self.judge[idx], self.raters[:, idx],
                    self.rater_ids)

    def response_means(self) -> tuple[np.ndarray, np.ndarray]:
        """(judge (R,), raters (K, R)): means over every criterion, NaN unless all were scored — a mean over
        fewer criteria would move with which criteria are missing, since their means differ."""
        return self.judge.mean(axis=1), self.raters.mean(axis=2)


def headline(judge: np.ndarray, raters: np.ndarray, lo: int, hi: int, alphas: bool) -> dict[str, Coef]:
    """The bootstrapped coefficients: judge vs the mean human (correlations), Krippendorff's α."""
    out = {name: fn(judge, _nanmean(raters, 0), names=("judge", "human mean")) for name, fn in CORRELATIONS.items()}
    if alphas:
        out["alpha_humans"] = kripp_alpha(raters, lo, hi)
        rounded = np.clip(np.rint(judge), lo, hi)[None, :]
        out["alpha_with_judge"] = kripp_alpha(np.vstack([raters, rounded]), lo, hi)
    return out


def ceiling(judge: np.ndarray, raters: np.ndarray, ids: list[str], lo: int, hi: int, with_qwk: bool
            ) -> tuple[pd.DataFrame, dict[str, Coef]]:
    """The human ceiling like for like: each held-out rater vs the mean of the OTHER raters, and the judge vs
    that same mean on the same items. (The judge vs the mean of all raters faces a less noisy target than any
    rater can, which flatters it against the ceiling.) Returns per-rater rows and their averages."""
    rows = []
    coefs = {**CORRELATIONS, **({"qwk": None} if with_qwk else {})}
    for k, rater in enumerate(ids):
        others = np.delete(raters, k, axis=0)
        target, median = _nanmean(others, 0), _nanmedian(others, 0)
        keep = np.isfinite(raters[k]) & np.isfinite(target) & np.isfinite(judge)
        row: dict = {"rater": rater, "n": int(keep.sum())}
        notes = {}
        for name, fn in coefs.items():
            for side, x in (("ceiling", raters[k]), ("judge_vs_others", judge)):
                who = "rater" if side == "ceiling" else "judge"
                c = (qwk(x[keep], median[keep], lo, hi, names=(who, "others' median")) if fn is None
                     else fn(x[keep], target[keep], names=(who, "others' mean")))
                row[f"{side}_{name}"] = c.value
                notes |= {f"{side}_{name}": c.reason} if c.reason else {}
        rows.append({**row, "reason": "; ".join(f"{k}: {v}" for k, v in notes.items()), "_notes": notes})
    means = {}
    for name in coefs:
        for side in ("ceiling", "judge_vs_others"):
            col = f"{side}_{name}"
            finite = [r[col] for r in rows if math.isfinite(r[col])]
            why = next((r["_notes"][col] for r in rows if col in r["_notes"]), "need 2+ raters")
            means[col] = (Coef(float(np.mean(finite)), None, len(finite)) if finite
                          else Coef(math.nan, f"no rater could be compared: {why}", 0))
    return pd.DataFrame(rows).drop(columns="_notes", errors="ignore"), means


def _point(judge: np.ndarray, raters: np.ndarray, ids: list[str], lo: int, hi: int, ordinal: bool
           ) -> tuple[dict[str, Coef], pd.DataFrame]:
    n = int((np.isfinite(judge) & np.isfinite(_nanmean(raters, 0))).sum())
    coefs = {"n": Coef(float(n), None, n), **headline(judge, raters, lo, hi, ordinal)}
    if ordinal:
        coefs["qwk"] = qwk(judge, _nanmedian(raters, 0), lo, hi)
    ceil, means = ceiling(judge, raters, ids, lo, hi, with_qwk=ordinal)
    return {**coefs, **means}, ceil


def _macro(rows: Mapping[str, Mapping[str, Coef]], criteria: list[str]) -> dict[str, Coef]:
    """Mean over criteria of each coefficient; NaN naming the criteria where any one is undefined (a mean over
    the rest would not be comparable across judges)."""
    out = {}
    for stat in rows[criteria[0]] if criteria else ():
        if stat == "n":
            continue
        values = {c: rows[c][stat] for c in criteria}
        bad = [f"{c} ({v.reason})" for c, v in values.items() if not math.isfinite(v.value)]
        out[stat] = (Coef(math.nan, "undefined for " + "; ".join(bad), len(criteria)) if bad
                     else Coef(float(np.mean([v.value for v in values.values()])), None, len(criteria)))
    return out


def _resample_stat(cube: Cube, lo: int, hi: int) -> Callable[[np.ndarray], dict[str, float]]:
    """The bootstrapped coefficients of one set of drawn responses: per criterion, their mean, response level."""

    def stat(idx: np.ndarray) -> dict[str, float]:
        sub = cube.take(idx)
        out = {}
        for c, crit in enumerate(cube.criteria):
            for name, coef in headline(sub.judge[:, c], sub.raters[:, :, c], lo, hi, True).items():
                out[f"{crit}/{name}"] = coef.value
        for name in BOOTSTRAPPED:
            values = [out[f"{c}/{name}"] for c in cube.criteria]
            out[f"{MACRO}/{name}"] = float(np.mean(values)) if values else math.nan  # NaN if any is NaN
        for name, coef in headline(*sub.response_means(), lo, hi, False).items():
            out[f"{RESPONSE_LEVEL}/{name}"] = coef.value
        return out

    return stat


def coefficient_table(merged: pd.DataFrame, criteria: list[str], lo: int, hi: int, boot: dict | None
                      ) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """(table with one row per criterion, then `macro` and `response_level`; reasons keyed 'row/stat';
    the per-rater ceiling rows). CIs (`<stat>_ci_low/_ci_high`) come from one set of response draws."""
    cube = Cube.from_merged(merged, criteria)
    rows: dict[str, dict[str, Coef]] = {}
    ceilings = []
    for c, crit in enumerate(criteria):
        rows[crit], ceil = _point(cube.judge[:, c], cube.raters[:, :, c], cube.rater_ids, lo, hi, True)
        ceilings.append(ceil.assign(criterion=crit))
    rows[MACRO] = {"n": Coef(float(len(cube.responses)), None), **_macro(rows, criteria)}  # scored on ≥ 1 criterion
    rows[RESPONSE_LEVEL], ceil = _point(*cube.response_means(), cube.rater_ids, lo, hi, False)
    ceilings.append(ceil.assign(criterion=RESPONSE_LEVEL))
    table = {row: {stat: c.value for stat, c in coefs.items()} for row, coefs in rows.items()}
    reasons = {f"{row}/{stat}": c.reason for row, coefs in rows.items() for stat, c in coefs.items() if c.reason}
    if boot and len(cube.responses):
        idx = draws(len(cube.responses), int(boot["n_resamples"]), int(boot["seed"]))
        for key, dist in distributions(_resample_stat(cube, lo, hi), idx).items():
            row, stat = key.rsplit("/", 1)
            low, high, why = percentile_ci(dist, float(boot["level"]))
            if not math.isfinite(table[row][stat]):  # no CI around an undefined estimate
                low, high, why = math.nan, math.nan, reasons.get(key, "estimate undefined")
            table[row] |= {f"{stat}_ci_low": low, f"{stat}_ci_high": high}
            if why:
                reasons[f"{key}_ci_low"] = reasons[f"{key}_ci_high"] = why
    frame = pd.DataFrame([{"criterion": row, **values} for row, values in table.items()])
    order = [c for s in frame.columns for c in (s, f"{s}_ci_low", f"{s}_ci_high") if c in frame and "_ci_" not in s]
    return frame[order], reasons, pd.concat(ceilings, ignore_index=True)


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
