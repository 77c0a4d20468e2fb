"""The prepare splits as prompt-masked examples, served in length-bucketed batches (little padding)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from emplifai.core.errors import UserError
from emplifai.core.paths import read_artifact
from emplifai.train.examples import IGNORE, Encoded, SFTPrompt

NEEDED = ("dialogue_id", "patient", "supporter")


class SFTDataError(UserError):
    pass


def read_split(prepare_dir: Path, split: str, max_examples: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One prepare split; `max_examples` keeps a seeded subset (same rows for every run with that seed)."""
    path = prepare_dir / f"{split}.parquet"
    frame = read_artifact(path, NEEDED, error=SFTDataError)
    bad = frame[frame["patient"].isna() | frame["supporter"].isna()]
    if len(bad):
        raise SFTDataError(f"{path}: row {int(bad.index[0])} (dialogue {bad.iloc[0]['dialogue_id']}): "
                           "empty patient or supporter text")
    if max_examples is not None and len(frame) > int(max_examples):
        frame = frame.sample(n=int(max_examples), random_state=seed).sort_index()
    return frame.reset_index(drop=True)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into pools of `pool_batches` batches, sort each pool by length,
    batch it, shuffle the batches. Seeded per epoch (`set_epoch`; Lightning calls it on samplers, not on a
    batch sampler like this one, so under the Trainer every epoch has epoch 0's order).

    Rank r of n takes every n-th batch, the list padded with its first batches to a multiple of n (all ranks
    step together, as DistributedSampler pads); for evaluation (shuffle=False) it takes every n-th example by
    length instead, so each example counts once. `resume_at` skips the batches already trained on, once."""

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 16, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise SFTDataError(f"train.batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.pool, self.num_replicas, self.rank, self.epoch = pool_batches * batch_size, num_replicas, rank, 0
        self.skip: tuple[int, int] | None = None  # (epoch, batches to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, done: int) -> None:
        """The next iteration of `epoch` starts after its first `done` batches (a run resumed mid-epoch)."""
        self.skip = (int(epoch), int(done))

    def _batches(self) -> list[list[int]]:
        if not self.shuffle and self.num_replicas > 1:
            mine = sorted(range(len(self.lengths)), key=lambda i: self.lengths[i])[self.rank:: self.num_replicas]
            return [mine[j: j + self.batch_size] for j in range(0, len(mine), self.batch_size)]
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(idx)
        batches = []
        for start in range(0, len(idx), self.pool):
            pool = sorted(idx[start: start + self.pool], key=lambda i: self.lengths[i])
            batches += [pool[j: j + self.batch_size] for j in range(0, len(pool), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        else:
            batches.sort(key=lambda b: self.lengths[b[0]])
        pad = -len(batches) % self.num_replicas
        if pad and batches:
            batches += (batches * -(-pad // len(batches)))[:pad]
        return batches[self.rank:: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()  # at the first next(): after the loop has set the epoch
        if self.skip is not None:
            (epoch, done), self.skip = self.skip, None
            if epoch == self.epoch:
                batches = batches[done:]
        yield from batches

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(DataLoader):
    """The train loader, with the `state_dict` / `load_state_dict` pair Lightning saves in a checkpoint and
    restores on resume: a run killed mid-epoch continues with the next batch of that epoch, not from its
    start. The state is the trainer's count of batches done (not what the sampler has handed out: workers
    prefetch ahead); `progress` reads it."""

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": int(self.progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(state["epoch"], state["batches_done"])


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (padding = -100)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SFTDataModule(pl.LightningDataModule):
    """Train / val examples from `${paths.artifacts}/prepare/`; rebuilt deterministically on every setup."""

    def __init__(self, prepare_dir: Path, builder: SFTPrompt, train_cfg: Any, seed: int) -> None:
        super().__init__()
        self.prepare_dir, self.builder, self.cfg, self.seed = Path(prepare_dir), builder, train_cfg, seed
        self.train: list[Encoded] = []
        self.val: list[Encoded] = []

    def _encode(self, frame: pd.DataFrame) -> list[Encoded]:
        return [self.builder.encode(row, int(self.cfg.max_length)) for row in frame.to_dict("records")]

    def setup(self, stage: str | None = None) -> None:
        if self.train:
            return
        self.train = self._encode(read_split(self.prepare_dir, "train", self.cfg.get("sample_n"), self.seed))
        self.val = self._encode(read_split(self.prepare_dir, "val", self.cfg.get("val_sample_n"), self.seed))
        if not self.train:
            raise SFTDataError(f"{self.prepare_dir / 'train.parquet'} has no rows to train on")

    def world(self) -> tuple[int, int]:
        """(processes, this one's rank) of the fit; (1, 0) outside one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _sampler(self, data: list[Encoded], shuffle: bool, world: int = 1, rank: int = 0) -> LengthBucketSampler:
        return LengthBucketSampler([len(e.input_ids) for e in data], int(self.cfg.batch_size), shuffle, self.seed,
                                   int(self.cfg.get("bucket_pool_batches", 16)), world, rank)

    def _loader(self, data: list[Encoded], shuffle: bool) -> DataLoader:
        sampler = self._sampler(data, shuffle, *self.world())
        kwargs = {"batch_sampler": sampler, "num_workers": int(self.cfg.get("num_workers", 0)),
                  "collate_fn": functools.partial(collate, pad_id=self.builder.tokenizer.pad_token_id)}
        if not shuffle:
            return DataLoader(data, **kwargs)
        return ResumableLoader(data, progress=self._batches_done, **kwargs)

    def _batches_done(self) -> int:
        """Batches of this epoch trained on (at a checkpoint saved after a batch, that batch included)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def n_train_batches(self, world: int = 1) -> int:
        """Training batches per epoch of each of `world` processes."""
        return len(self._sampler(self.train, True, world, 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        world, _ = self.world()
        if self.val and len(self.val) < world:
            raise SFTDataError(f"{len(self.val)} validation examples for {world} processes: each process validates "
                               "a share, so raise train.val_sample_n to at least the number of processes")
        return self._loader(self.val, shuffle=False) if self.val else []

    @property
    def target_tokens(self) -> int:
        return sum(e.n_target for e in self.train)
