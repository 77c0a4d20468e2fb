"""Japanese word segmentation (fugashi + unidic-lite): fastText needs spaces between words."""

from __future__ import annotations

import functools
import unicodedata


@functools.lru_cache(maxsize=1)
def _tagger():
    import fugashi

    return fugashi.Tagger("-Owakati")


def wakati(text: str) -> str:
    """NFKC-normalized text as space-separated morphemes ("" for empty text)."""
    text = unicodedata.normalize("NFKC", str(text or "")).replace("\n", " ").strip()
    if not text:
        return ""
    return " ".join(_tagger().parse(text).split())


def wakati_many(texts: list[str]) -> list[str]:
    return [wakati(t) for t in texts]
