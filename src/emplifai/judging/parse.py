"""Turning a judge's reply into a score — or an explicit failure.

JSON first (`{"score": 4}`, also inside prose or a ```json fence), then a strict regex fallback that only
accepts a number the reply clearly presents as the score. Anything else is a failure: score NaN, the raw
reply kept, counted per criterion. Never 0, never dropped.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NAN = float("nan")
_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)  # reasoning models (DeepSeek-R1)
# strict fallbacks: the whole reply is a number, or a number introduced as the score, or "N/5" / "N点"
_FALLBACKS = (
    re.compile(r"^\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*[。.]?\s*$"),
    re.compile(r"(?:score|rating|点数|評価|スコア)\s*(?:は|=|:|：)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|／|out of)\s*\d+"),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*点"),
)


@dataclass(frozen=True)
class Parsed:
    score: float  # NaN on failure
    ok: bool
    method: str  # "json" | "regex" | "failed: <why>"


def _in_range(value: float, lo: int, hi: int) -> bool:
    return not math.isnan(value) and lo <= value <= hi


def parse_score(reply: str | None, lo: int = 1, hi: int = 5, key: str = "score") -> Parsed:
    """The score in `reply`, or Parsed(NaN, False, reason). Out-of-range numbers are failures too."""
    if reply is None:
        return Parsed(NAN, False, "failed: no reply")
    text = unicodedata.normalize("NFKC", _THINK.sub("", str(reply))).strip()
    if not text:
        return Parsed(NAN, False, "failed: empty reply")
    for blob in [text, *_JSON_OBJ.findall(text)]:
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if isinstance(data, Mapping):
            value = data.get(key, data.get("score", data.get("rating")))
            if isinstance(value, str):
                value = value.strip()
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return Parsed(NAN, False, f"failed: JSON without a numeric {key!r}")
            if not _in_range(number, lo, hi):
                return Parsed(NAN, False, f"failed: {number:g} outside {lo}..{hi}")
            return Parsed(number, True, "json")
    for pattern in _FALLBACKS:
        found = pattern.findall(text)
        if found:
            numbers = {float(x) for x in found}
            if len(numbers) > 1:
                return Parsed(NAN, False, f"failed: ambiguous, several scores {sorted(numbers)}")
            (number,) = numbers
            if not _in_range(number, lo, hi):
                return Parsed(NAN, False, f"failed: {number:g} outside {lo}..{hi}")
            return Parsed(number, True, "regex")
    return Parsed(NAN, False, "failed: no score found")


def weighted_score(probs: Mapping[int, float]) -> tuple[float, int | None, float]:
    """G-Eval: (Σ s·p(s) with p renormalized over the scale, argmax s, digit mass before renormalizing)."""
    mass = float(sum(p for p in probs.values() if p > 0))
    if not probs or mass <= 0 or not math.isfinite(mass):
        return NAN, None, 0.0
    weighted = sum(s * p for s, p in probs.items() if p > 0) / mass
    return float(weighted), max(probs, key=lambda s: probs[s]), mass


def weighted_from_top_logprobs(tokens: Sequence[Mapping[str, float]] | None, lo: int, hi: int
                               ) -> tuple[float, int | None, float]:
    """From an OpenAI `top_logprobs` list: the first generated token whose best candidate is a digit in
    lo..hi is the score token; its digit candidates give the weighted score. NaN when there is none."""
    digits = {str(s): s for s in range(lo, hi + 1)}
    for alts in tokens or []:
        if not alts:
            continue
        best = max(alts, key=lambda t: alts[t]).strip()
        if best in digits:
            probs: dict[int, float] = {}
            for tok, lp in alts.items():
                s = digits.get(tok.strip())
                if s is not None:
                    probs[s] = probs.get(s, 0.0) + math.exp(lp)
            return weighted_score(probs)
    return NAN, None, 0.0
