"""Judge tables, bias diagnostics and plots for reports/judge/<judge>/.

`means.csv` is the mean score per criterion × system as plot data: one bar each (DVC's `bar_horizontal`
template), so `dvc plots diff` puts two versions' bars next to each other."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from emplifai.core.paths import atomic_path, save_figure, write_plot_data
from emplifai.metrics.coefficients import spearman

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JUDGE_COLUMNS = ["response_id", "dialogue_id", "system", "source", "criterion", "score", "score_argmax",
                 "score_std", "raw", "parse_ok", "detail", "digit_mass", "judge", "response_chars"]


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean / std / n / parse failures per system × criterion; n counts scored responses only (a failed grade
    is NaN and in no mean, so counting it would make every interval built on n too narrow)."""
    g = scores.groupby(["system", "criterion"], sort=False)
    return pd.DataFrame({"mean": g["score"].mean(), "std": g["score"].std(), "n": g["score"].count(),
                         "parse_failures": g["parse_ok"].apply(lambda s: int((~s).sum()))}).reset_index()


def length_bias(scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of each criterion's score with response length (chars), overall and per system.
    A judge that rewards length (a known LLM-judge bias) shows a high ρ within systems."""
    rows = []
    groups = [("(all)", scores), *scores.groupby("system", sort=False)]
    for system, frame in groups:
        for criterion, f in frame.groupby("criterion", sort=False):
            c = spearman(f["score"], f["response_chars"], names=("score", "length"))
            rows.append({"system": system, "criterion": criterion, "spearman_length": c.value, "n": c.n,
                         "reason": c.reason or ""})
    return pd.DataFrame(rows)


def means_table(summ: pd.DataFrame, criteria: list[str]) -> pd.DataFrame:
    """One row per criterion × system (the rubric's criterion order, then the summary's system order) with the
    bar's label `criterion_system` ("<criterion> | <system>": DVC's bar template takes one category field).
    A cell without a mean (every score failed to parse) has no bar: Vega would draw its empty cell as 0."""
    order = {c: i for i, c in enumerate(criteria)}
    rows = summ[summ["criterion"].isin(order) & summ["mean"].notna()].copy()
    rows["_order"] = rows["criterion"].map(order)
    rows = rows.sort_values("_order", kind="stable")
    return pd.DataFrame({"criterion_system": (rows["criterion"] + " | " + rows["system"]).to_numpy(),
                         "criterion": rows["criterion"].to_numpy(), "system": rows["system"].to_numpy(),
                         "mean": rows["mean"].to_numpy(dtype=float), "n": rows["n"].to_numpy()})


def write_means(summ: pd.DataFrame, criteria: list[str], path: Path) -> Path:
    return write_plot_data(means_table(summ, criteria), path)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
    return path


def heatmap(table: pd.DataFrame, title: str, path: Path, vmin: float = 1, vmax: float = 5,
            cmap: str = "viridis", fmt: str = "{:.2f}") -> Path:
    fig, ax = plt.subplots(figsize=(1.3 * len(table.columns) + 3, 0.5 * len(table.index) + 2))
    im = ax.imshow(table.to_numpy(dtype=float), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=35, ha="right")
    ax.set_yticks(range(len(table.index)), table.index)
    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        ax.text(j, i, "NaN" if np.isnan(v) else fmt.format(v), ha="center", va="center", color="white"
                if not np.isnan(v) and v < (vmin + vmax) / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return save_figure(fig, path, dpi=110)
