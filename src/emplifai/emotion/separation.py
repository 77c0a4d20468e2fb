"""Label separation: can a similarity measure tell the taxonomy's names apart at all? Run before scoring.

A score of prediction vs gold only means agreement if the measure rates two *different* names clearly below
identity. So the stage first scores every pair of taxonomy names with the measure itself (vector cosine,
BERTScore F1), and

- when the vectors do not separate the names (mean off-diagonal ≥ `max_mean`, or more than `max_share` of the
  pairs ≥ `pair`), every `wordvec_cos` is NaN with that reason; a wrong label whose name the vectors place
  within `pair` of the gold name is NaN with the pair named (pruned vectors can give synonyms one row);
- the mean off-diagonal value is the measure's baseline: `rescale` maps it to 0 and identity to 1
  (bert-score's baseline rescaling, the baseline taken from the taxonomy itself), so a wrong label reads ≈ 0.

Written as reports/emotion/label_separation.{csv,json,png}: the vector matrix, the figures, both heat maps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emplifai.core.paths import atomic_path, save_figure, write_text

IDENTITY_GAP = 1e-9  # a baseline this close to 1 leaves nothing to rescale


@dataclass
class LabelSeparation:
    """Similarity of every pair of taxonomy names under one measure, and what follows for scoring."""

    measure: str                      # "wordvec_cos" | "bertscore_f1"
    names: list[str]                  # the Japanese names the measure compares
    matrix: np.ndarray
    keys: list[str] = field(default_factory=list)   # taxonomy keys, for plots (ASCII: no CJK font needed)
    pair: float = 0.9
    reason: str = ""                  # why the measure does not separate the names ("" when it does)
    unseparated: dict[frozenset[str], float] = field(default_factory=dict)

    @property
    def offdiag(self) -> np.ndarray:
        upper = self.matrix[np.triu_indices(len(self.names), 1)]
        return upper[np.isfinite(upper)]

    @property
    def baseline(self) -> float:
        """The measure's value for a wrong label on average: the mean over different names."""
        return float(self.offdiag.mean()) if self.offdiag.size else float("nan")

    def closest(self, k: int = 5) -> list[tuple[str, str, float]]:
        i, j = np.triu_indices(len(self.names), 1)
        vals = self.matrix[i, j]
        order = [o for o in np.argsort(-np.nan_to_num(vals, nan=-np.inf), kind="stable") if np.isfinite(vals[o])]
        return [(self.names[i[o]], self.names[j[o]], float(vals[o])) for o in order[:k]]

    def rescale(self, values: np.ndarray | Sequence[float]) -> np.ndarray:
        """(x − baseline) / (1 − baseline): 1 on identity, ≈ 0 on the taxonomy's own off-diagonal mean."""
        b = self.baseline
        x = np.asarray(values, dtype=np.float64)
        if not np.isfinite(b) or b >= 1.0 - IDENTITY_GAP:
            return np.full_like(x, np.nan)
        return (x - b) / (1.0 - b)

    def pair_reason(self, a: str, b: str) -> str:
        """Why the score of name `a` against name `b` means nothing ("" when it does)."""
        if self.reason:
            return self.reason
        value = self.unseparated.get(frozenset((a, b)))
        if value is None or a == b:
            return ""
        return f"{self.measure} does not separate {a} from {b} ({value:.3f} ≥ {self.pair})"

    def metrics(self) -> dict[str, float]:
        off = self.offdiag
        prefix = f"emotion/labels/{self.measure}"
        return {f"{prefix}_offdiag_mean": self.baseline,
                f"{prefix}_offdiag_max": float(off.max()) if off.size else float("nan"),
                f"{prefix}_unseparated_pairs": float(len(self.unseparated)),
                f"{prefix}_separates": float(not self.reason)}


def similarity_matrix(names: Sequence[str], fn: Callable[[list[str], list[str]], np.ndarray]) -> np.ndarray:
    """names × names matrix of `fn(cands, refs)` (vectorized over all ordered pairs)."""
    n = len(names)
    flat = fn([a for a in names for _ in names], [b for _ in names for b in names])
    return np.asarray(flat, dtype=np.float64).reshape(n, n)


def check(measure: str, names: Sequence[str], matrix: np.ndarray, cfg: Mapping[str, Any],
          keys: Sequence[str] = ()) -> LabelSeparation:
    """`cfg` = emotion.separation: {max_mean, pair, max_share}."""
    names = list(names)
    pair, max_mean, max_share = float(cfg["pair"]), float(cfg["max_mean"]), float(cfg["max_share"])
    sep = LabelSeparation(measure, names, matrix, list(keys) or names, pair)
    i, j = np.triu_indices(len(names), 1)
    vals = matrix[i, j]
    sep.unseparated = {frozenset((names[a], names[b])): float(v)
                       for a, b, v in zip(i, j, vals, strict=True) if np.isfinite(v) and v >= pair}
    finite = vals[np.isfinite(vals)]
    if not finite.size:
        sep.reason = f"{measure}: no pair of taxonomy names has a value (no vectors for the names)"
    elif sep.baseline >= max_mean:
        sep.reason = (f"{measure} does not separate the taxonomy names: mean over different names "
                      f"{sep.baseline:.3f} ≥ {max_mean}")
    elif len(sep.unseparated) > max_share * finite.size:
        sep.reason = (f"{measure} does not separate the taxonomy names: {len(sep.unseparated)} of {finite.size} "
                      f"pairs ≥ {pair}")
    return sep


def summary(sep: LabelSeparation) -> dict[str, Any]:
    return {"measure": sep.measure, "separates": not sep.reason, "reason": sep.reason,
            "offdiag_mean": round(sep.baseline, 6), "offdiag_max": round(float(sep.offdiag.max()), 6)
            if sep.offdiag.size else None, "pair_threshold": sep.pair,
            "unseparated_pairs": [sorted(p) + [round(v, 6)] for p, v in sorted(
                sep.unseparated.items(), key=lambda kv: -kv[1])],
            "closest_pairs": [[a, b, round(v, 6)] for a, b, v in sep.closest(8)]}


def write(seps: Sequence[LabelSeparation], vectors: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """label_separation.csv (the vector matrix), .json (figures, coverage), .png (one heat map per measure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    vec = seps[0]
    csv = out_dir / "label_separation.csv"
    table = pd.DataFrame(vec.matrix, index=pd.Index(vec.keys, name="key"), columns=vec.keys)
    with atomic_path(csv) as tmp:
        table.insert(0, "ja", vec.names)
        table.to_csv(tmp, encoding="utf-8", float_format="%.4f")
    js = write_text(out_dir / "label_separation.json", json.dumps(
        {"vectors": dict(vectors), "measures": [summary(s) for s in seps]}, ensure_ascii=False, indent=2))
    fig, axes = plt.subplots(1, len(seps), figsize=(9.5 * len(seps), 8.5), squeeze=False)
    for ax, sep in zip(axes[0], seps, strict=True):
        finite = sep.matrix[np.isfinite(sep.matrix)]
        im = ax.imshow(sep.matrix, cmap="viridis", vmin=min(0.0, float(finite.min()) if finite.size else 0.0), vmax=1)
        ax.set_xticks(range(len(sep.keys)), sep.keys, rotation=90, fontsize=7)
        ax.set_yticks(range(len(sep.keys)), sep.keys, fontsize=7)
        state = "separates" if not sep.reason else "DOES NOT SEPARATE"
        top = float(sep.offdiag.max()) if sep.offdiag.size else float("nan")
        ax.set_title(f"{sep.measure}: off-diagonal mean {sep.baseline:.3f}, max {top:.3f} "
                     f"— {state}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    return [csv, js, save_figure(fig, out_dir / "label_separation.png", dpi=90)]

