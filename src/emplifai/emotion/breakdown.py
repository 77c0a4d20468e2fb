"""Per-emotion table (with bootstrap CIs) and confusion plot: which emotions are predicted well, which are confused.

Also each predictor's (gold, predicted) pairs as data (reports/emotion/predictions/<predictor>.csv): DVC's
`confusion` template draws them, so `dvc plots diff` puts two versions' matrices side by side. One folder of
same-shaped files is one top-level plot entry in dvc.yaml whatever `emotion.predictors` lists."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from emplifai.core.paths import atomic_path, save_figure, write_plot_data
from emplifai.data.taxonomy import Taxonomy
from emplifai.metrics.bootstrap import mean_with_ci

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NO_LABEL = "(invalid/unmapped)"
PAIRS_DIR = "predictions"  # reports/emotion/<PAIRS_DIR>/<predictor>.csv


PER_EMOTION_SCORES = ("accuracy", "bertscore_f1", "bertscore_f1_rescaled", "wordvec_cos", "wordvec_cos_rescaled")


def per_emotion(pred: pd.DataFrame, taxonomy: Taxonomy, boot: tuple[int, float, int] = (1000, 0.95, 0)
                ) -> pd.DataFrame:
    """One row per taxonomy emotion (also those absent from the split: n=0, scores NaN).

    accuracy is over valid labelled items; score means over valid items, each with a bootstrap CI
    (`boot` = resamples, confidence, seed) that resamples that emotion's dialogues; one dialogue gives no
    interval (NaN). `most_confused_with` is the most frequent wrong label (ties: alphabetical).
    """
    rows = []
    for key in taxonomy.keys:
        g = pred[pred["gold"] == key]
        valid = g[g["valid"]]
        labelled = valid[valid["label"] != ""]
        wrong = labelled.loc[labelled["label"] != key, "label"]
        confused = wrong.value_counts().sort_index().sort_values(ascending=False, kind="stable")
        row = {"emotion": key, "ja": taxonomy.ja(key), "n": len(g), "n_valid": len(valid),
               "invalid_rate": (len(g) - len(valid)) / len(g) if len(g) else np.nan}
        for col in PER_EMOTION_SCORES:
            values = ((labelled["label"] == key).astype(float) if col == "accuracy"
                      else valid[col] if col in valid else pd.Series(dtype=float)).dropna()
            mean, low, high, _ = mean_with_ci(values.tolist(), boot[0], boot[2], boot[1])  # one dialogue: no CI
            row |= {col: mean, f"{col}_ci_low": low, f"{col}_ci_high": high}
        rows.append(row | {"most_confused_with": confused.index[0] if len(confused) else ""})
    return pd.DataFrame(rows)


def predicted_labels(pred: pd.DataFrame) -> pd.Series:
    """The predicted label of each row; an invalid or unmapped prediction is NO_LABEL."""
    return pred["label"].where(pred["valid"] & (pred["label"] != ""), NO_LABEL)


def confusion(pred: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """Counts, gold rows × predicted columns (+ a column for invalid or unmapped predictions)."""
    table = pd.crosstab(pred["gold"], predicted_labels(pred))
    return table.reindex(index=taxonomy.keys, columns=[*taxonomy.keys, NO_LABEL], fill_value=0)


def plot_confusion(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Row-normalized heat map (share of each gold emotion's items) with the counts written in."""
    counts = table.to_numpy()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(12, 10.5))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=90, fontsize=8)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    for i, j in zip(*np.nonzero(counts), strict=True):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                color="white" if share[i, j] > 0.6 else "black")
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of gold row")
    return save_figure(fig, path, dpi=100)


def prediction_pairs(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per dialogue, in the split's order: dialogue_id, gold, predicted (NO_LABEL when invalid)."""
    return pd.DataFrame({"dialogue_id": pred["dialogue_id"].astype(str).to_numpy(),
                         "gold": pred["gold"].astype(str).to_numpy(), "predicted": predicted_labels(pred).to_numpy()})


def write_pairs(pred: pd.DataFrame, path: Path) -> Path:
    return write_plot_data(prediction_pairs(pred), path)


def write_reports(pred: pd.DataFrame, taxonomy: Taxonomy, name: str, out_dir: Path,
                  boot: tuple[int, float, int] = (1000, 0.95, 0)) -> list[Path]:
    """reports/emotion/<name>/{per_emotion,confusion}.csv + confusion.png (`out_dir`), and the (gold, predicted)
    pairs beside the predictors' folders: reports/emotion/predictions/<name>.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = per_emotion(pred, taxonomy, boot)
    csv = out_dir / "per_emotion.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, encoding="utf-8", float_format="%.4f")
    conf = confusion(pred, taxonomy)
    conf_csv = out_dir / "confusion.csv"
    with atomic_path(conf_csv) as tmp:
        conf.to_csv(tmp, encoding="utf-8")
    png = plot_confusion(conf, f"emotion: {name} (n={len(pred)})", out_dir / "confusion.png")
    pairs = write_pairs(pred, out_dir.parent / PAIRS_DIR / f"{name}.csv")
    return [csv, conf_csv, png, pairs]
