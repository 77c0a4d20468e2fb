"""Japanese word splitting, done one way: `normalize` (NFKC, newlines to spaces, trimmed), then split.

- `words` / `wakati`: MeCab with unidic-lite (fugashi): fastText's input (it needs spaces between words) and
  generate's distinct-n.
- `sudachi_words`: Sudachi (mode C, with the mode-A `sub_units` of a word) for chiVe, whose keys are Sudachi's
  words and normalized forms (気づき → 気付き); another dictionary would miss them, so the chiVe lookup keeps
  Sudachi — on the same normalized text.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any


def normalize(text: str | None) -> str:
    """NFKC (full-width ASCII and half-width kana folded), newlines as spaces, trimmed; "" for None."""
    return unicodedata.normalize("NFKC", str(text or "")).replace("\n", " ").strip()


@functools.lru_cache(maxsize=1)
def _tagger():
    import fugashi

    return fugashi.Tagger("-Owakati")


def words(text: str | None) -> list[str]:
    """The normalized text's MeCab (unidic-lite) words; [] for empty text."""
    text = normalize(text)
    return _tagger().parse(text).split() if text else []


def wakati(text: str | None) -> str:
    """`words` joined by spaces ("" for empty text): the form fastText trains and predicts on."""
    return " ".join(words(text))


def wakati_many(texts: list[str]) -> list[str]:
    return [wakati(t) for t in texts]


@functools.lru_cache(maxsize=1)
def _sudachi() -> tuple[Any, Any]:
    from sudachipy import Dictionary, SplitMode

    return Dictionary(dict="core").tokenizer(mode=SplitMode.C), SplitMode.A


def sudachi_words(text: str | None) -> list[Any]:
    """The normalized text's Sudachi mode-C morphemes (surface, POS, normalized and dictionary form), blanks
    dropped; [] for empty text."""
    text = normalize(text)
    return [m for m in _sudachi()[0].tokenize(text) if m.surface().strip()] if text else []


def sub_units(morpheme: Any) -> list[Any]:
    """A Sudachi mode-C word's mode-A parts (one part when it does not split)."""
    return list(morpheme.split(_sudachi()[1]))
