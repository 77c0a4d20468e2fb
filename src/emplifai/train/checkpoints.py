"""Training checkpoints: when one may be resumed, written so that a kill never leaves a broken one.

`${paths.artifacts}/train/<run name>/` holds `last.ckpt` (LoRA weights, optimizer, scheduler, loop counters,
the train loader's place in its epoch, the random state), `best.ckpt` and `fingerprint.txt`. A rerun resumes
`last.ckpt` when the fingerprint (config, data, code) matches; `last.ckpt` is written after each validation and
every `train.checkpoint_every_n_steps` optimizer steps, so a run killed mid-epoch loses at most that many steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from emplifai.core.paths import atomic_path, resolve, write_text

log = logging.getLogger(__package__)

CODE = sorted(Path(__file__).parent.glob("*.py"))
LAST = "last.ckpt"
# how training is run or saved, not what it learns: a change keeps the checkpoint resumable
NOT_FINGERPRINTED = ("resume", "run_name", "num_workers", "sweep", "checkpoint_every_n_steps")


def fingerprint(cfg: DictConfig, prepare_dir: Path) -> str:
    """What must match for a checkpoint to be resumed: training config, model, prompt, taxonomy (its names are
    in the prompt), data and code."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("train", "model", "sft_prompt", "taxonomy")}
    keys["train"] = {k: v for k, v in keys["train"].items() if k not in NOT_FINGERPRINTED}
    h = hashlib.sha256(json.dumps([keys, cfg.seed], sort_keys=True, default=str).encode())
    if cfg.taxonomy.get("file"):  # a taxonomy file's content, not only its path
        h.update(resolve(cfg.taxonomy.file).read_bytes())
    for f in [prepare_dir / "train.parquet", prepare_dir / "val.parquet", *CODE]:
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()[:16]


def position(path: Path) -> str:
    """Where a checkpoint file stands ("step 6, epoch 1"), read as Lightning will read it (weights only);
    ValueError says why it cannot be resumed."""
    if path.is_dir():  # a sharded (DeepSpeed) checkpoint is a folder: Lightning's own loader judges it
        return "a sharded checkpoint"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated zip, an empty file, a pickle that is no checkpoint
        raise ValueError(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}") from err
    missing = sorted({"state_dict", "loops", "optimizer_states", "global_step"} - set(ckpt))
    if missing:
        raise ValueError(f"no {', '.join(missing)} in it")
    return f"step {ckpt['global_step']}, epoch {ckpt.get('epoch')}"


def checkpoint_dir(ckpt_dir: Path, fp: str, resume: bool, manage: bool = True) -> Path | None:
    """last.ckpt to resume from, or None. `manage` (the process that writes: rank 0) empties a folder from
    another config/data/code, stamps it, removes temp files of a save that was killed and an unreadable
    last.ckpt; the other ranks only look, and reach the same answer."""
    stamp, last = ckpt_dir / "fingerprint.txt", ckpt_dir / LAST
    same = stamp.exists() and stamp.read_text().strip() == fp
    if manage:
        if ckpt_dir.exists() and not same:
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text(stamp, fp)
        for tmp in ckpt_dir.glob(".*.tmp"):  # atomic_path's temp file of a save cut short
            tmp.unlink(missing_ok=True)
    if not (resume and same and last.exists()):
        return None
    try:
        where = position(last)
    except ValueError as err:
        log.warning("train: %s is unreadable (%s): starting over", last, err)
        if manage:
            last.unlink()
        return None
    log.info("train: resuming %s (%s)", last, where)
    return last


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file beside the checkpoint, then rename: a kill during the save leaves the
    previous checkpoint whole. (Lightning's own save writes through an fsspec transaction whose temp file is
    in the system temp folder; where that is another file system the final move is a copy onto the
    checkpoint, which a kill cuts short, and a killed save leaves the temp file behind.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # raises: not supported
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class PeriodicCheckpoint(pl.Callback):
    """last.ckpt every `every` optimizer steps, mid-epoch. Not after an epoch's last batch nor before a due
    validation: the validation-end checkpoint (ModelCheckpoint's save_last) is written there, and Lightning
    resumes a checkpoint taken at a batch that a validation follows as if that validation had run."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every, self._step = Path(path), int(every), -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        if not stepped or trainer.global_step % self.every:  # accumulating, or not the N-th step
            return
        every_val = trainer.val_check_batch if trainer.limit_val_batches else None
        if batch_idx + 1 >= trainer.num_training_batches or (
                isinstance(every_val, int) and (batch_idx + 1) % every_val == 0):
            return
        trainer.save_checkpoint(self.path)  # every rank calls it (a barrier); rank 0 writes


def checkpoint_callbacks(cfg: DictConfig, ckpt_dir: Path, has_val: bool) -> list[pl.Callback]:
    """best.ckpt (lowest val loss) and last.ckpt after each validation; last.ckpt every N steps as well."""
    best = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", save_last=True, save_top_k=1,
                                        monitor="val/loss" if has_val else None, mode="min",
                                        enable_version_counter=False)  # overwrite last.ckpt, never last-v1.ckpt
    every = int(cfg.train.get("checkpoint_every_n_steps") or 0)
    return [best, PeriodicCheckpoint(ckpt_dir / LAST, every)] if every > 0 else [best]
