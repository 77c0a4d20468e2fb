"""Run names of training runs: the folder of an adapter (models/sft/<name>), its checkpoints and reports.

One function for writer and readers: `train` names its run here, and `generate.adapters=sweep` finds the
sweep's adapters here, so the DVC stages train@<k>, a Hydra multirun `-m train.epochs=1,2,3` and generate
agree on `epochs=<k>` without anyone listing models/sft/. Also the per-epoch validation-loss keys `train`
writes into reports/train/<run>/metrics.json and the report's epoch comparison reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emplifai.core import tracking
from emplifai.core.errors import UserError

NO_SLUG = {"threads", "device", "preflight", "experiment", "train.resume", "train.num_workers",
           "train.checkpoint_every_n_steps"}  # not what is learned


def run_slug(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    """train.run_name, else the overrides (this run's Hydra overrides by default: `train.epochs=2` →
    `epochs=2`, in a multirun job and in the DVC stage train@2 alike), else "default"."""
    if cfg.train.get("run_name"):
        name = str(cfg.train.run_name)
    else:
        given = tracking._hydra_context()[1] if overrides is None else overrides
        keep = [o for o in given if o.split("=")[0].lstrip("+~") not in NO_SLUG]
        name = tracking.run_name("", keep).strip().replace("train.", "")
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name.replace(" ", "_")).strip("._")
    return name[:120] or "default"


def sweep_run_names(cfg: DictConfig) -> list[str]:
    """The run name of each run of the train sweep (`train.sweep.epochs`): the run `train.epochs=<k>` makes."""
    epochs = list((cfg.train.get("sweep") or {}).get("epochs") or [])
    if not epochs:
        raise UserError("train.sweep.epochs is empty: there is no sweep to name")
    names = []
    for k in epochs:
        one = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        one.train.epochs = int(k)
        names.append(run_slug(one, [f"train.epochs={k}"]))
    if len(set(names)) < len(names):
        raise UserError(f"train.run_name={cfg.train.run_name!r} gives every run of the sweep the name {names[0]!r}: "
                        "set train.run_name=null (names epochs=<k>) or make it use ${train.epochs}")
    return names


VAL_LOSS_KEY = "train/val_loss_epoch_"  # train's metrics.json: one key per epoch, read by the report


def steps_per_epoch(n_batches: Any, accumulate: Any = 1) -> int:
    """Optimizer steps in an epoch of `n_batches` batches: ceil(n_batches / accumulated batches), at least 1."""
    return max(1, math.ceil(int(n_batches) / max(1, int(accumulate))))


def val_loss_per_epoch(history: Sequence[tuple[int, float]], n_batches: int, accumulate: Any = 1) -> dict[str, float]:
    """{"train/val_loss_epoch_<k>": loss}. Validation runs at optimizer step s; epoch k ends at step
    k·steps_per_epoch, so s belongs to epoch ceil(s/steps_per_epoch); the last one of an epoch wins."""
    per_epoch = steps_per_epoch(n_batches, accumulate)
    return {f"{VAL_LOSS_KEY}{max(1, math.ceil(step / per_epoch))}": float(value) for step, value in history}
