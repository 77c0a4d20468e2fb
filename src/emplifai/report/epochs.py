"""Epoch comparison: does LoRA SFT for 1, 2 or 3 epochs (the study's design) help, by validation loss and
by the judge, against the base model and the human supporter turns?

`train` writes `train/val_loss_epoch_<k>` into reports/train/<run>/metrics.json (`val_loss_per_epoch`); the
report reads those files and artifacts/judge/<judge>/scores.parquet and writes
reports/epochs/epoch_comparison.{png,csv} (the CSV holds exactly the plotted numbers, for `dvc plots`).
A system whose scores are all NaN is reported missing with the reason — never as 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emplifai.core.metrics_file import read_metrics
from emplifai.metrics.bootstrap import mean_with_ci
from emplifai.train.runs import VAL_LOSS_KEY as KEY

EPOCHS = re.compile(r"(?:^|[_+,])epochs=(\d+)(?:$|[_+,])")


def val_losses(train_reports: Path, runs: Sequence[str]) -> pd.DataFrame:
    """One row per training run of the sweep (reports/train/<run>/metrics.json, only the runs the config names,
    so a stale or hand-run folder never slips in): run, epochs, epoch_<k> ..., note."""
    rows = []
    for run in runs:
        path = train_reports / run / "metrics.json"
        if not path.exists():
            rows.append({"run": run, "epochs": math.nan, "note": f"no {path} (train this run first)"})
            continue
        metrics = read_metrics(path).metrics
        per = {int(k[len(KEY):]): v for k, v in metrics.items() if k.startswith(KEY)}
        row: dict[str, Any] = {"run": path.parent.name, "epochs": metrics.get("train/epochs")}
        row |= {f"epoch_{k}": (math.nan if v is None else float(v)) for k, v in sorted(per.items())}
        row["note"] = "" if per else "no per-epoch validation loss recorded (no val examples, or an older run)"
        rows.append(row)
    frame = pd.DataFrame(rows)
    cols = sorted((c for c in frame.columns if c.startswith("epoch_")), key=lambda c: int(c[6:]))
    return frame[["run", "epochs", *cols, "note"]] if rows else frame


def system_epoch(system: str, run_epochs: dict[str, int]) -> tuple[str, str, float] | None:
    """(group "<model>+<prompt>", label, epoch) of a generate system: base → 0, an adapter named
    `...epochs=<k>...` or whose train run recorded train/epochs → k; `human` → ("", "human", NaN); others None."""
    if system == "human":
        return "", "human", math.nan
    parts = system.split("+")
    if len(parts) != 3:
        return None
    model, adapter, prompt = parts
    found = EPOCHS.search(adapter)
    epoch = 0 if adapter == "base" else int(found.group(1)) if found else run_epochs.get(adapter)
    return (f"{model}+{prompt}", adapter, float(epoch)) if epoch is not None else None


def judge_means(scores: pd.DataFrame, boot: dict[str, Any]) -> pd.DataFrame:
    """system, criterion, mean, ci_low, ci_high, n, reason: the mean judge score of every system × criterion
    with the project's seeded bootstrap CI (metrics/bootstrap.py), each response its own cluster (its scores
    averaged first); NaN + reason where no score parsed, never 0."""
    rows = []
    for (system, criterion), f in scores.groupby(["system", "criterion"], sort=False):
        per_response = f.groupby("response_id")["score"].mean().to_numpy(dtype=float)
        mean, lo, hi, why = mean_with_ci(per_response, int(boot["n_resamples"]), int(boot["seed"]),
                                         float(boot["level"]), unit="score", nan_cause="unparseable judge replies")
        rows.append({"system": system, "criterion": criterion, "mean": mean, "ci_low": lo, "ci_high": hi,
                     "n": int(np.isfinite(per_response).sum()), "reason": why})
    return pd.DataFrame(rows, columns=["system", "criterion", "mean", "ci_low", "ci_high", "n", "reason"])


def read_scores(artifacts: Path, judge: str) -> pd.DataFrame | None:
    path = artifacts / "judge" / judge / "scores.parquet"
    return pd.read_parquet(path, columns=["response_id", "system", "criterion", "score"]) if path.exists() else None


def judge_scores(artifacts: Path, judges: Sequence[str], run_epochs: dict[str, int], boot: dict[str, Any]
                 ) -> pd.DataFrame:
    """judge, criterion, group, system (short label), name, epoch, mean, ci_low, ci_high, n, reason: the base,
    fine-tuned and human systems (rated responses left out); the bootstrap resamples responses."""
    rows = []
    for judge in judges:
        scores = read_scores(artifacts, judge)
        if scores is None:
            continue
        for r in judge_means(scores, boot).to_dict("records"):
            where = system_epoch(str(r["system"]), run_epochs)
            if where is not None:
                rows.append({"judge": judge, "criterion": r["criterion"], "group": where[0], "system": where[1],
                             "name": r["system"], "epoch": where[2], **{k: r[k] for k in
                                                                       ("mean", "ci_low", "ci_high", "n", "reason")}})
    return pd.DataFrame(rows, columns=["judge", "criterion", "group", "system", "name", "epoch", "mean", "ci_low",
                                       "ci_high", "n", "reason"])


def plotted(losses: pd.DataFrame, judged: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind the plot, long: one row per (val-loss run | judge × criterion × system) and epoch."""
    rows = [{"kind": "val_loss", "judge": "", "criterion": "", "series": r["run"], "epoch": int(c[6:]),
             "value": r[c], "ci_low": math.nan, "ci_high": math.nan, "n": math.nan, "reason": ""}
            for r in losses.to_dict("records") for c in r if c.startswith("epoch_") and pd.notna(r[c])]
    rows += [{"kind": "judge", "judge": r["judge"], "criterion": r["criterion"],
              "series": r["name"], "epoch": r["epoch"], "value": r["mean"],
              "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"], "reason": r["reason"]}
             for r in judged.to_dict("records")]
    # `value` last and `epoch` before it: what `dvc plots` takes for y (and x: epoch) without a template
    return pd.DataFrame(rows, columns=["kind", "judge", "criterion", "series", "n", "reason", "ci_low",
                                       "ci_high", "epoch", "value"])


def plot(losses: pd.DataFrame, judged: pd.DataFrame, path: Path) -> Path:
    """Judge mean (95% CI) vs epoch per criterion, base (dashed) and human (dotted) as references; val loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from emplifai.core.paths import save_figure

    criteria = list(dict.fromkeys(judged["criterion"]))
    cols = min(4, len(criteria) + 1)
    fig, axes = plt.subplots(math.ceil((len(criteria) + 1) / cols), cols, figsize=(3.6 * cols, 3.0 * math.ceil(
        (len(criteria) + 1) / cols)), squeeze=False)
    flat = axes.ravel()
    for r in losses.to_dict("records"):
        ks = [int(c[6:]) for c in r if c.startswith("epoch_") and pd.notna(r[c])]
        if ks:
            flat[0].plot(ks, [r[f"epoch_{k}"] for k in ks], "o-", label=r["run"])
    flat[0].set(title="validation loss", xlabel="epoch", ylabel="cross-entropy")
    if flat[0].lines:
        flat[0].legend(fontsize=7)
    for ax, criterion in zip(flat[1:], criteria, strict=False):
        for (judge, group), f in judged[judged["criterion"] == criterion].groupby(["judge", "group"], sort=False):
            tuned = f[(f["epoch"] > 0) & f["mean"].notna()].sort_values("epoch")
            if len(tuned):
                err = np.array([tuned["mean"] - tuned["ci_low"], tuned["ci_high"] - tuned["mean"]])
                ax.errorbar(tuned["epoch"], tuned["mean"], yerr=np.nan_to_num(err), fmt="o-", capsize=3,
                            label=f"{judge} {group}".strip())
            for label, style in (("base", "--"), ("human", ":")):
                ref = f[(f["system"] == label) & f["mean"].notna()]
                if len(ref):
                    ax.axhline(float(ref["mean"].iloc[0]), ls=style, color="gray", label=label)
        ax.set(title=criterion, xlabel="epoch", ylabel="judge score")
        ax.legend(fontsize=6)
    for ax in flat[len(criteria) + 1:]:
        ax.set_visible(False)
    for ax in flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


def cell(row: dict[str, Any]) -> str:
    if not pd.notna(row["mean"]):
        return f"missing: {row['reason']}"
    ci = f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]" if pd.notna(row["ci_low"]) else f" ({row['reason']})"
    return f"{row['mean']:.2f}{ci}"


def section(artifacts: Path, reports: Path, boot: dict[str, Any], runs: Sequence[str], judges: Sequence[str]
            ) -> list[tuple[str, Any]]:
    """Report blocks: val loss per epoch per run; per judge, criterion × (base, epochs, human) mean [95% CI]."""
    from emplifai.core.paths import atomic_path

    losses = val_losses(reports / "train", runs)
    run_epochs = {str(r["run"]): int(r["epochs"]) for r in losses.to_dict("records") if pd.notna(r["epochs"])} \
        if len(losses) else {}
    judged = judge_scores(artifacts, judges, run_epochs, boot)
    blocks: list[tuple[str, Any]] = [("h3", "Validation loss per epoch (reports/train/<run>/metrics.json)")]
    shown = losses.copy()
    if len(shown):
        shown["epochs"] = [str(int(v)) if pd.notna(v) else "missing" for v in shown["epochs"]]
    for c in (c for c in shown.columns if c.startswith("epoch_")):
        shown[c] = [f"{v:.4f}" if pd.notna(v) else "missing" for v in shown[c]]
    blocks.append(("table", shown) if len(losses) else ("p", "No training runs under reports/train/."))
    for judge, f in judged.groupby("judge", sort=False):
        several = len(set(f["group"]) - {""}) > 1  # several models/prompts: name systems in full
        f = f.assign(label=f["name"] if several else f["system"])
        order = list(dict.fromkeys(f.sort_values("epoch", na_position="last")["label"]))
        table = f.assign(cell=[cell(r) for r in f.to_dict("records")]).pivot(
            index="criterion", columns="label", values="cell")[order].reset_index()
        blocks += [("h3", f"judge {judge}: mean score per epoch (95% bootstrap CI over responses, "
                          f"{boot['n_resamples']} resamples, seed {boot['seed']})"), ("table", table)]
    if judged.empty:
        blocks.append(("p", "No judge scores for base / fine-tuned / human systems (run generate and judge)."))
    out = reports / "epochs"
    with atomic_path(out / "epoch_comparison.csv") as tmp:
        plotted(losses, judged).to_csv(tmp, index=False)
    if len(losses) or len(judged):
        blocks.append(("img", plot(losses, judged, out / "epoch_comparison.png")))
    return blocks
