"""The loss curves of a training run as plot data: reports/train/<run>/{train_loss,val_loss}.csv (loss.png
draws the same).

One row per optimizer step at which that loss was measured: `step` = optimizer steps done when it was measured
(a training batch's loss before its update, a validation after the last update), `epoch` = step / steps per
epoch (fractional: 1.5 is halfway through the second epoch), and the loss (`train_loss`: the mean of the step's
accumulated batches). Two files, not one with empty cells: DVC hands a plot every row of its file, and Vega reads
an empty cell as 0. The sweep's runs share steps per epoch, so dvc.yaml's top-level `loss` plot overlays them,
and `dvc plots diff` two versions of each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from emplifai.core.paths import write_plot_data
from emplifai.train.runs import steps_per_epoch

SERIES = {"train_loss": "train/loss", "val_loss": "val/loss"}  # file stem / column -> SFTModule.history key


def loss_tables(history: Mapping[str, Sequence[tuple[int, float]]], n_batches: int, accumulate: Any = 1
                ) -> dict[str, pd.DataFrame]:
    """SFTModule.history ({"train/loss": [(step, loss)], "val/loss": [...]}) → {"train_loss": step, epoch,
    train_loss; "val_loss": step, epoch, val_loss}, by step. Steps per epoch as runs.val_loss_per_epoch counts
    them (`runs.steps_per_epoch`)."""
    per_epoch = steps_per_epoch(n_batches, accumulate)
    tables = {}
    for column, key in SERIES.items():
        points = pd.DataFrame(list(history.get(key, [])), columns=["step", column], dtype=float)
        table = points.groupby(points["step"].astype(int))[column].mean().sort_index().reset_index()
        table.insert(1, "epoch", table["step"] / per_epoch)
        tables[column] = table
    return tables


def write_loss_tables(history: Mapping[str, Sequence[tuple[int, float]]], n_batches: int, accumulate: Any,
                      folder: Path) -> list[Path]:
    """<folder>/train_loss.csv and val_loss.csv, 6 significant digits: identical runs write identical bytes."""
    return [write_plot_data(table, folder / f"{name}.csv")
            for name, table in loss_tables(history, n_batches, accumulate).items()]
