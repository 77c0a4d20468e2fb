"""Seeded train/val/test splits grouped by situation (no situation in two splits), stratified by emotion.

Greedy, like sklearn's StratifiedGroupKFold but for unequal ratios and tiny classes (which it rejects):
situations are visited in seeded random order, emotion by emotion, and each goes to the split that is
furthest below its ratio, counting both the emotion's own dialogues and all dialogues.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def split_dialogues(dialogues: pd.DataFrame, train: float, val: float, test: float, seed: int) -> pd.Series:
    """Split name per row of `dialogues` (needs columns situation_id, emotion)."""
    ratios = np.array([train, val, test], dtype=float)
    if ratios.min() < 0 or ratios.sum() <= 0:
        raise ValueError(f"split ratios must be >= 0 and sum > 0, got train={train} val={val} test={test}")
    ratios /= ratios.sum()
    rng = np.random.default_rng(seed)
    sizes = dialogues.groupby("situation_id", sort=True).agg(emotion=("emotion", "first"), n=("emotion", "size"))
    total = float(sizes["n"].sum())
    assigned = np.zeros(3)
    choice: dict[str, str] = {}
    emotions = sorted(sizes["emotion"].unique())
    for emotion in rng.permutation(emotions):
        group = sizes[sizes["emotion"] == emotion]
        order = rng.permutation(group.index.to_numpy())
        emo_total, emo_assigned = float(group["n"].sum()), np.zeros(3)
        for sid in order:
            n = group.at[sid, "n"]
            score = 0.5 * (ratios - emo_assigned / emo_total) + (ratios - assigned / total)
            score[ratios == 0] = -np.inf
            k = int(np.argmax(score))
            choice[sid] = SPLITS[k]
            assigned[k] += n
            emo_assigned[k] += n
    return dialogues["situation_id"].map(choice).astype(object)
