"""The prepare splits as prompt-masked examples, served in length-bucketed batches (little padding)."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence
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
    batch it, shuffle the batches. Seeded per epoch (`set_epoch`); rank r of n takes every n-th batch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 16, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise SFTDataError(f"train.batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.pool, self.num_replicas, self.rank, self.epoch = pool_batches * batch_size, num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
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
        return batches[self.rank:: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


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

    def _loader(self, data: list[Encoded], shuffle: bool) -> DataLoader:
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = LengthBucketSampler([len(e.input_ids) for e in data], int(self.cfg.batch_size), shuffle,
                                      self.seed, int(self.cfg.get("bucket_pool_batches", 16)), world, rank)
        pad = self.builder.tokenizer.pad_token_id
        return DataLoader(data, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad),
                          num_workers=int(self.cfg.get("num_workers", 0)))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val, shuffle=False) if self.val else []

    @property
    def target_tokens(self) -> int:
        return sum(e.n_target for e in self.train)
