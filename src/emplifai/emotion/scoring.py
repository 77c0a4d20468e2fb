"""The emotion stage's metrics: label accuracy / macro-F1 and the mean of each per-row score (BERTScore from
metrics/bertscore.py, the word-vector cosine) with the project's seeded bootstrap CI (metrics/bootstrap.py),
each dialogue its own cluster.
"""

from __future__ import annotations

import math

import pandas as pd

from emplifai.metrics.bootstrap import mean_with_ci

# Per-row scores against the gold name; `*_rescaled`: 0 = the measure's mean over different taxonomy names.
EMOTION_SCORES = ("bertscore_p", "bertscore_r", "bertscore_f1", "bertscore_f1_rescaled", "wordvec_cos",
                 "wordvec_cos_rescaled")
NOTE = "wordvec_note"  # per row: why its wordvec_cos is NaN although the answer is valid ("" when scored)


def metrics(pred: pd.DataFrame, resamples: int, confidence: float, seed: int
            ) -> tuple[dict[str, float], dict[str, str]]:
    """Stage metrics (`emotion/...`) and the reasons for any NaN among them."""
    from sklearn.metrics import accuracy_score, f1_score

    n = len(pred)
    valid = pred[pred["valid"]]
    labelled = valid[valid["label"] != ""]
    out: dict[str, float] = {"emotion/n": float(n), "emotion/n_valid": float(len(valid)),
                             "emotion/invalid_rate": (n - len(valid)) / n if n else float("nan")}
    reasons: dict[str, str] = {}
    if n == 0:
        reasons["emotion/invalid_rate"] = "no test items"
    if len(labelled):
        out["emotion/accuracy"] = float(accuracy_score(labelled["gold"], labelled["label"]))
        out["emotion/macro_f1"] = float(f1_score(labelled["gold"], labelled["label"], average="macro",
                                                 zero_division=0))
    else:
        for k in ("emotion/accuracy", "emotion/macro_f1"):
            out[k], reasons[k] = float("nan"), "no valid prediction mapped to a label"
    notes = valid[NOTE][valid[NOTE].fillna("") != ""] if NOTE in valid else pd.Series(dtype=str)
    for col in EMOTION_SCORES:
        if col not in valid:
            continue
        mean, low, high, why = mean_with_ci(valid[col].tolist(), resamples, seed, confidence, unit="dialogue")
        out |= {f"emotion/{col}": mean, f"emotion/{col}_ci_low": low, f"emotion/{col}_ci_high": high}
        if math.isnan(mean):
            why = (notes.mode().iloc[0] if col.startswith("wordvec") and len(notes)
                   else f"no valid prediction with a {col} score")
            reasons[f"emotion/{col}"] = why
        reasons |= {k: why for k in (f"emotion/{col}_ci_low", f"emotion/{col}_ci_high") if math.isnan(out[k])}
    if "wordvec_cos" in valid:
        out["emotion/wordvec_cos_n"] = float(valid["wordvec_cos"].notna().sum())
    return out, reasons
