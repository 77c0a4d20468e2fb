"""Word vectors behind the `wordvec_cos` score, from one of three sources (`emotion.vectors.source`):

- `chive` (default): chiVe word2vec (Works Applications, Apache-2.0; 300-d, Sudachi-normalized words) as the
  `ja-ginza` package ships it (480k keys on 20k rows). Only the vector files are read — no spaCy, no parser.
- `trained`: a skip-gram on the train split (`emotion.fasttext`, see fasttext_model.py).
- `fasttext_bin`: a fastText `.bin` given by path (the paper's cc.ja.300.bin).

Why chiVe by default: a skip-gram trained on ~100 dialogues places every taxonomy name next to every other
(mean cosine 0.84 between different names on the shipped sample, 1.000 on a 54-dialogue set), so a wrong label
scores like a right one; chiVe was trained on a web corpus and separates them. Whatever the source, the
label-separation check (separation.py) decides whether its cosines may be reported at all.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emplifai.core.errors import UserError
from emplifai.core.paths import resolve
from emplifai.data.words import normalize, sub_units, sudachi_words

SOURCES = ("chive", "trained", "fasttext_bin")
CHIVE_PACKAGE = "ja_ginza"
# Sudachi parts of speech that carry no content: dropped from a multi-word text unless nothing else is left.
FUNCTION_POS = ("助詞", "助動詞", "補助記号", "空白", "接尾辞")
# How a text got its vector, best first: the whole text is a key; every token is; some token needed its Sudachi
# A-unit parts; some needed single characters; nothing was found (the text has no vector).
HOW = ("word", "tokens", "subwords", "chars", "none")


class WordVectors:
    """What the stage needs from a source: a vector per text (zeros when none), how it was found, a cosine."""

    source = ""
    description = ""

    def lookup(self, text: str) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def _cached(self, text: str) -> tuple[np.ndarray, str]:
        memo = self.__dict__.setdefault("_memo", {})  # predictions repeat: each distinct text is looked up once
        if text not in memo:
            memo[text] = self.lookup(text)
        return memo[text]

    def vector(self, text: str) -> np.ndarray:
        return self._cached(text)[0]

    def how(self, text: str) -> str:
        """One of HOW: whether the text was covered, and how directly."""
        return self._cached(text)[1]

    def cosine(self, a: str, b: str) -> float:
        """Cosine in [-1, 1]; NaN when either text has no vector (empty or all unknown), never 0."""
        va, vb = self.vector(a), self.vector(b)
        na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
        if na == 0.0 or nb == 0.0 or math.isnan(na) or math.isnan(nb):
            return float("nan")
        return float(np.clip(va @ vb / (na * nb), -1.0, 1.0))

    def cosines(self, cands: list[str], refs: list[str]) -> np.ndarray:
        """Pairwise `cosine`, the shape of BertScorer.score's F1 column (for separation.similarity_matrix)."""
        return np.array([self.cosine(a, b) for a, b in zip(cands, refs, strict=True)], dtype=np.float64)


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A, spaCy's string key (`hash_string`, seed 1): ja-ginza's key2row maps these to rows."""
    mask, m, r = (1 << 64) - 1, 0xC6A4A7935BD1E995, 47
    h = (seed ^ (len(data) * m)) & mask
    full = len(data) // 8 * 8
    for i in range(0, full, 8):
        k = (int.from_bytes(data[i: i + 8], "little") * m) & mask
        k = ((k ^ (k >> r)) * m) & mask
        h = ((h ^ k) * m) & mask
    if full < len(data):
        h = ((h ^ int.from_bytes(data[full:], "little")) * m) & mask
    h = ((h ^ (h >> r)) * m) & mask
    return h ^ (h >> r)


def chive_folder() -> Path:
    """The installed ja-ginza package's vocab/ folder, found without importing the package (that needs spaCy)."""
    spec = importlib.util.find_spec(CHIVE_PACKAGE)
    folders = [] if spec is None else sorted(Path(spec.submodule_search_locations[0]).glob("ja_ginza-*/vocab"))
    if not folders or not (folders[-1] / "vectors").is_file():
        raise UserError("emotion.vectors.source=chive needs the ja-ginza package's vectors: `make setup` installs "
                        "it (pip install --no-deps ja-ginza, see constraints.txt), or set emotion.vectors.source="
                        "trained | fasttext_bin")
    return folders[-1]


class ChiveVectors(WordVectors):
    """chiVe from ja-ginza's vocab/ files (vectors: .npy float32 rows; key2row: msgpack {hash: row}).

    A text's vector: the whole text as a key; else the mean of its Sudachi (mode C) content words' unit
    vectors, each looked up by surface, normalized form (気づき → 気付き) and dictionary form; a word still
    missing falls back to its mode-A parts, then to its characters. `how` says which step was needed.
    """

    source = "chive"

    def __init__(self, folder: Path | None = None) -> None:
        import msgpack

        folder = folder or chive_folder()
        self.table = np.load(folder / "vectors", allow_pickle=False)
        self.key2row: dict[int, int] = msgpack.unpackb((folder / "key2row").read_bytes(), strict_map_key=False)
        self.description = f"chiVe via ja-ginza {_version(CHIVE_PACKAGE)} ({len(self.key2row)} keys, " \
                           f"{self.table.shape[0]} rows, {self.table.shape[1]}-d)"

    def _row(self, *words: str) -> np.ndarray | None:
        for w in words:
            row = self.key2row.get(murmurhash64a(w.encode("utf-8")))
            if row is not None:
                return self.table[row]
        return None

    def lookup(self, text: str) -> tuple[np.ndarray, str]:
        text = normalize(text)
        zero = np.zeros(self.table.shape[1], dtype=np.float64)
        if not text:
            return zero, "none"
        whole = self._row(text)
        if whole is not None:
            return whole.astype(np.float64), "word"
        morphemes = sudachi_words(text)
        content = [m for m in morphemes if m.part_of_speech()[0] not in FUNCTION_POS] or morphemes
        found, worst = [], 1
        for m in content:
            vec, level = self._row(m.surface(), m.normalized_form(), m.dictionary_form()), 1
            if vec is None:
                parts = [self._row(a.surface(), a.normalized_form(), a.dictionary_form()) for a in sub_units(m)]
                vecs, level = [v for v in parts if v is not None], 2
                if len(parts) < 2 or not vecs:
                    vecs, level = [v for v in (self._row(c) for c in m.surface()) if v is not None], 3
                vecs = [v / np.linalg.norm(v) for v in vecs if np.linalg.norm(v) > 0]
                vec = np.mean(vecs, axis=0) if vecs else None
            if vec is not None and np.linalg.norm(vec) > 0:
                found.append(vec / np.linalg.norm(vec))
                worst = max(worst, level)
        if not found:
            return zero, "none"
        return np.mean(found, axis=0).astype(np.float64), HOW[worst]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def load(cfg: Mapping[str, Any], train_texts: list[str], seed: int) -> WordVectors:
    """`cfg` = emotion: the source `cfg.vectors.source` names, loaded or trained."""
    from emplifai.emotion.fasttext_model import Vectors, train_vectors

    source = str(cfg["vectors"]["source"])
    if source == "chive":
        return ChiveVectors()
    if source == "trained":
        return train_vectors(cfg["fasttext"], train_texts, seed)
    if source == "fasttext_bin":
        path = cfg["vectors"].get("fasttext_bin")
        if not path:
            raise UserError("emotion.vectors.source=fasttext_bin needs emotion.vectors.fasttext_bin=/path/model.bin")
        return Vectors(resolve(path), "fasttext_bin")
    raise UserError(f"emotion.vectors.source={source}: expected one of {', '.join(SOURCES)}")
