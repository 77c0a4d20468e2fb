"""The report's emotion section, from what the `emotion` stage wrote under reports/emotion/ only.

Kept out of report/__main__.py, which only lays sections out: the scores with their CIs (metrics.json, read like
every metrics file, one predictor per row), raw and rescaled, which word vectors the cosine came from, how many
taxonomy names they cover and whether they separate the names at all — without that a cosine cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from emplifai.core.metrics_file import read_metrics
from emplifai.report.metric_tables import fmt, group_table, groups, missing_table

SCORES = ["n", "invalid_rate", "accuracy", "macro_f1", "bertscore_f1", "bertscore_f1_rescaled", "wordvec_cos",
          "wordvec_cos_rescaled"]
PER_EMOTION = ["emotion", "ja", "n", "accuracy", "bertscore_f1", "bertscore_f1_rescaled", "wordvec_cos",
               "most_confused_with"]


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def vectors_note(labels: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    """One paragraph: the vector source, its coverage of the names, and both measures' separation figures."""
    vec = labels.get("vectors", {})
    if not vec:
        return "No label-separation figures (reports/emotion/label_separation.json is missing: rerun `emotion`)."
    other = ", ".join(f"{n} ({h})" for n, h in vec.get("not_one_word", {}).items())
    parts = [f"Word vectors `{vec.get('source')}`: {vec.get('description')}; {vec.get('covered')}/{vec.get('names')} "
             f"taxonomy names covered" + (f", not as one word: {other}" if other else "") + "."]
    for m in labels.get("measures", []):
        close = ", ".join(f"{a}–{b} {fmt(v)}" for a, b, v in m.get("closest_pairs", [])[:4])
        verdict = "separates the names" if m.get("separates") else f"DOES NOT SEPARATE the names ({m.get('reason')})"
        parts.append(f"`{m['measure']}` between different names: mean {fmt(m.get('offdiag_mean'))}, max "
                     f"{fmt(m.get('offdiag_max'))} (closest: {close}) — {verdict}.")
    parts.append("`*_rescaled` = (score − that mean) / (1 − that mean): 1 on the gold name, ≈ 0 for a wrong "
                 "label. A cosine between a wrong label and a gold name the vectors place within "
                 "the pair threshold is NaN (`wordvec_note` in predictions.parquet says why).")
    return " ".join(parts)


def emotion_section(reports: Path) -> list[tuple[str, Any]]:
    """Blocks for the report: ("p"|"h3", text), ("table", DataFrame), ("img", Path)."""
    folder = reports / "emotion"
    summary = read_metrics(folder / "metrics.json")
    if not summary.metrics:
        return [("p", "No emotion-prediction results.")]
    blocks: list[tuple[str, Any]] = [("table", group_table(summary, "predictor", SCORES))]
    if summary.missing:
        blocks += [("p", "Missing values and why"), ("table", missing_table(summary))]
    blocks += [("p", vectors_note(_read(folder / "label_separation.json"), fmt)),
               ("img", folder / "label_separation.png")]
    for predictor in groups(summary):
        per = folder / predictor / "per_emotion.csv"
        if per.exists():
            frame = pd.read_csv(per)
            head = frame.sort_values("bertscore_f1").head(8) if "bertscore_f1" in frame else frame.head(8)
            table = pd.DataFrame({c: [_cell(r, c, fmt) for r in head.to_dict(orient="records")]
                                  for c in PER_EMOTION if c in head})
            blocks += [("h3", f"{predictor}: hardest emotions (95% CI: that emotion's dialogues resampled)"),
                       ("table", table)]
        blocks.append(("img", folder / predictor / "confusion.png"))
    return blocks


def _cell(row: dict[str, Any], col: str, fmt: Callable[[Any], str]) -> str:
    lo, hi = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if f"{col}_ci_low" in row and not (pd.isna(lo) and pd.isna(hi)) else ""
    value = row.get(col)
    if col in ("emotion", "ja", "most_confused_with", "n"):
        return "" if pd.isna(value) else str(value)          # a CSV's empty cell reads back as NaN
    return fmt(value) + ci
