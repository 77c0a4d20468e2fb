"""fastText models: skip-gram vectors for the cosine score, and the supervised `fasttext_clf` classifier.

Both train on wakati-tokenized text with `thread=1` (fastText is deterministic only single-threaded),
and are cached under `cache_dir` by a hash of the exact corpus and parameters, so a rerun or a second
predictor reuses them. A given .bin (`emotion.vectors.source=fasttext_bin`, e.g. cc.ja.300.bin) is
loaded as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emplifai.core.errors import UserError
from emplifai.core.paths import atomic_path, resolve
from emplifai.data.words import wakati
from emplifai.emotion.wordvec import WordVectors

SKIPGRAM_KEYS = ("dim", "epoch", "minn", "maxn", "min_count", "ws", "lr", "neg", "bucket")
CLASSIFIER_KEYS = ("dim", "epoch", "lr", "word_ngrams", "minn", "maxn", "bucket", "loss")


class FastTextError(UserError):
    pass


def fasttext_module():
    """fastText itself, as Explosion's maintained fork `floret` (same API and .bin format).

    Both `fasttext` 0.9.3 (built from source) and `fasttext-numpy2-wheel` 0.9.2 abort training with
    "Encountered NaN" at random on this project's machines, even on a large separable toy corpus;
    floret trains the same data reliably. Its `predict` on a single string trips numpy 2's copy rules,
    so callers pass lists (the list path returns plain lists).
    """
    import floret

    return floret


def _key(lines: list[str], params: Mapping[str, Any], kind: str, seed: int) -> str:
    h = hashlib.sha256(json.dumps({"kind": kind, "seed": seed, **params}, sort_keys=True).encode())
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _train(lines: list[str], params: dict[str, Any], kind: str, seed: int, cache_dir: Path) -> Path:
    fasttext = fasttext_module()

    target = cache_dir / f"{kind}-{_key(lines, params, kind, seed)}.bin"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, corpus = tempfile.mkstemp(prefix=f".{kind}.", suffix=".txt", dir=cache_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        # floret has no `seed` option: one thread makes training deterministic (each thread's RNG is seeded
        # with its index); `seed` still keys the cache for callers that vary it.
        args = {"input": corpus, "thread": 1, "verbose": 0, **params}
        try:
            model = (fasttext.train_supervised(**args) if kind == "classifier"
                     else fasttext.train_unsupervised(model="skipgram", **args))
        except RuntimeError as err:
            raise FastTextError(f"fastText {kind} training failed ({err}); lower emotion.fasttext.lr / "
                                f"predictor.lr") from None
        with atomic_path(target) as tmp:
            model.save_model(str(tmp))
    finally:
        Path(corpus).unlink(missing_ok=True)
    return target


def _params(cfg: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    names = {"min_count": "minCount", "word_ngrams": "wordNgrams"}
    return {names.get(k, k): cfg[k] for k in keys if cfg.get(k) is not None}


def corpus_lines(texts: Iterable[str], extra_corpus: str | None = None) -> list[str]:
    """Tokenized, non-empty lines of `texts` plus every *.txt under `extra_corpus` (one line = one text)."""
    lines = [w for w in (wakati(t) for t in texts) if w]
    if extra_corpus:
        folder = resolve(extra_corpus)
        files = sorted(folder.rglob("*.txt")) if folder.is_dir() else []
        if not files:
            raise FastTextError(f"emotion.fasttext.extra_corpus={folder}: no *.txt files there")
        for f in files:
            lines += [w for w in (wakati(x) for x in f.read_text(encoding="utf-8").splitlines()) if w]
    return lines


class Vectors(WordVectors):
    """fastText sentence vectors (mean of normalized word vectors, subwords included) on wakati tokens."""

    def __init__(self, path: Path, source: str = "trained") -> None:
        fasttext = fasttext_module()

        if not path.exists():
            raise FastTextError(f"fastText model not found: {path}")
        self.path, self.source = path, source
        self.model = fasttext.load_model(str(path))
        self.description = f"fastText {path.name} ({self.model.get_dimension()}-d)"

    def lookup(self, text: str) -> tuple[np.ndarray, str]:
        tokens = wakati(text)
        vec = np.asarray(self.model.get_sentence_vector(tokens), dtype=np.float64)
        if not tokens or not np.any(vec):
            return vec, "none"
        known = [self.model.get_word_id(t) >= 0 for t in tokens.split()]
        return vec, ("word" if known == [True] else "tokens" if all(known) else "subwords")


def train_vectors(cfg: Mapping[str, Any], train_texts: list[str], seed: int) -> Vectors:
    """`cfg` = emotion.fasttext: skip-gram on the train text (+ extra corpus), cached by corpus + params."""
    lines = corpus_lines(train_texts, cfg.get("extra_corpus"))
    if not lines:
        raise FastTextError("no training text for the fastText vectors (empty train split)")
    return Vectors(_train(lines, _params(cfg, SKIPGRAM_KEYS), "skipgram", seed, resolve(cfg["cache_dir"])))


class Classifier:
    """The supervised fastText classifier over taxonomy keys."""

    def __init__(self, path: Path) -> None:
        fasttext = fasttext_module()

        self.path = path
        self.model = fasttext.load_model(str(path))

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        labels, probs = self.model.predict([wakati(t) for t in texts], k=1)
        return [(lab[0].removeprefix("__label__"), float(p[0])) for lab, p in zip(labels, probs, strict=True)]


def train_classifier(texts: list[str], labels: list[str], cfg: Mapping[str, Any], seed: int,
                     cache_dir: Path) -> Classifier:
    lines = [f"__label__{lab} {wakati(t)}" for t, lab in zip(texts, labels, strict=True)]
    if not lines:
        raise FastTextError("fasttext_clf: the train split is empty")
    return Classifier(_train(lines, _params(cfg, CLASSIFIER_KEYS), "classifier", seed, cache_dir))
