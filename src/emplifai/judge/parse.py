"""Turning a judge's reply into a score — or an explicit failure.

Only the final answer counts: a reasoning model's `<think>…</think>` is stripped first (its digits are
deliberation, not the verdict), and a reply that never leaves its reasoning has no answer. In the answer,
JSON first (`{"score": 4}`, also inside prose or a ```json fence), then a strict regex fallback that only
accepts a number the reply clearly presents as the score. Anything else is a failure: score NaN, the raw
reply kept, counted per criterion. Never 0, never dropped.

With per-token logprobs, `score_reply` weights the scale's digits (G-Eval) at the token that wrote the
answer's score — found by character offsets, never "the first digit of the reply" — and only when that
token's most likely digit is the score the text states. A reply cut off at max_tokens is `truncated`.
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
_OPEN, _CLOSE = "<think>", "</think>"  # reasoning models (DeepSeek-R1)
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


@dataclass(frozen=True)
class Sample:
    """One reply (one of n choices) judged: the score to use, how it was read, or why it failed."""

    score: float  # logprob-weighted if the score token agrees with the text, else parsed; NaN = failed
    parsed: float  # the score the reply states; NaN = failed
    detail: str  # "json" | "regex" (+ "; weighted" | "; logprobs …") | "truncated: …" | "failed: …"
    mass: float = NAN  # probability on the scale's digits at the score token; NaN without logprobs

    @property
    def ok(self) -> bool:
        return not math.isnan(self.score)

    @property
    def truncated(self) -> bool:
        return self.detail.startswith("truncated")


def split_reasoning(reply: str) -> tuple[str | None, int]:
    """(final answer, its offset in `reply`): the text after the last `</think>`. R1's chat template opens the
    block in the prompt, so a reply may hold only the closing tag. A `<think>` never closed: (None, -1)."""
    low = reply.lower()
    close = low.rfind(_CLOSE)
    start = close + len(_CLOSE) if close >= 0 else 0
    if _OPEN in low[start:]:
        return None, -1
    return reply[start:], start


def _in_range(value: float, lo: int, hi: int) -> bool:
    return not math.isnan(value) and lo <= value <= hi


def parse_score(reply: str | None, lo: int = 1, hi: int = 5, key: str = "score") -> Parsed:
    """The score in `reply`, or Parsed(NaN, False, reason). Out-of-range numbers are failures too."""
    if reply is None:
        return Parsed(NAN, False, "failed: no reply")
    answer, _ = split_reasoning(str(reply))
    if answer is None:
        return Parsed(NAN, False, "failed: no final answer (<think> never closed)")
    text = unicodedata.normalize("NFKC", answer).strip()
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


def digit_probs(alts: Mapping[str, float], lo: int, hi: int) -> dict[int, float]:
    """p(s) for each scale digit among one token's top-logprob candidates (" 4" and "４" count as 4)."""
    digits = {str(s): s for s in range(lo, hi + 1)}
    probs: dict[int, float] = {}
    for tok, lp in alts.items():
        s = digits.get(unicodedata.normalize("NFKC", tok).strip())
        if s is not None:
            probs[s] = probs.get(s, 0.0) + math.exp(lp)
    return probs


def weighted_from_top_logprobs(tokens: Sequence[Mapping[str, float]] | None, lo: int, hi: int
                               ) -> tuple[float, int | None, float]:
    """The first generated token whose best candidate is a digit in lo..hi, weighted. Only right for a reply
    that is nothing but the score; the judge uses `score_reply` (a reasoning model's first digit is in its
    reasoning). NaN when there is none."""
    digits = {str(s) for s in range(lo, hi + 1)}
    for alts in tokens or []:
        if alts and max(alts, key=lambda t: alts[t]).strip() in digits:
            return weighted_score(digit_probs(alts, lo, hi))
    return NAN, None, 0.0


def score_offset(answer: str, score: float, key: str = "score") -> int | None:
    """Character offset in `answer` of the digit that states `score` (the last such place), or None."""
    keyed = re.compile(rf"""["']?(?:{re.escape(key)}|score|rating)["']?\s*[:：=]\s*["']?\s*(\d+(?:\.\d+)?)""",
                       re.IGNORECASE)
    found = [m.start(1) for pattern in (keyed, *_FALLBACKS) for m in pattern.finditer(answer)
             if float(unicodedata.normalize("NFKC", m.group(1))) == score]
    return max(found) if found else None


def token_at(tokens: Sequence[str], reply: str, offset: int) -> int | None:
    """Index of the generated token that wrote `reply[offset]`. The concatenated tokens are aligned to the
    reply by its tail: a server may generate text the reply lacks before it (reasoning moved to
    `reasoning_content`) or after it (an end-of-sequence token). None when they do not line up."""
    joined = "".join(tokens)
    tail = reply[offset:]
    pos = next((p for t in (tail, tail.rstrip()) if t for p in [joined.rfind(t)] if p >= 0), -1)
    end = 0
    for i, tok in enumerate(tokens):
        end += len(tok)
        if 0 <= pos < end:
            return i
    return None


def _weighted_at_score(reply: str, answer: str, start: int, score: float, tokens: Sequence[str] | None,
                       top_logprobs: Sequence[Mapping[str, float]], lo: int, hi: int, key: str
                       ) -> tuple[float, str, float]:
    """(weighted score, "" | why it is not used, digit mass) at the token that wrote the answer's score."""
    if score != int(score):
        return NAN, "logprobs unused (score not an integer)", NAN
    offset = score_offset(answer, score, key)
    if offset is None:
        return NAN, "logprobs unused (score not located)", NAN
    toks = list(tokens) if tokens else [max(a, key=lambda t: a[t]) if a else "" for a in top_logprobs]
    i = token_at(toks, reply, start + offset) if len(toks) == len(top_logprobs) else None
    if i is None:
        return NAN, "logprobs unused (tokens do not line up with the reply)", NAN
    weighted, top, mass = weighted_score(digit_probs(top_logprobs[i], lo, hi))
    if top is None:
        return NAN, f"logprobs unused (no digit among the candidates of token {toks[i]!r})", NAN
    if top != int(score):
        return NAN, f"logprobs disagree (top {top} vs parsed {int(score)})", mass
    return weighted, "", mass


def score_reply(reply: str | None, finish_reason: str | None = None, tokens: Sequence[str] | None = None,
                top_logprobs: Sequence[Mapping[str, float]] | None = None, lo: int = 1, hi: int = 5,
                key: str = "score") -> Sample:
    """One choice of an API judge's reply → Sample. Cut off by max_tokens (`finish_reason` "length") is
    `truncated` and never a score, even if a number is visible: the model had not finished deciding."""
    answer, start = split_reasoning(reply or "")
    if finish_reason == "length":
        where = " inside <think>" if answer is None else ""
        return Sample(NAN, NAN, f"truncated: cut off at max_tokens{where} (finish_reason length)")
    if reply is None or answer is None:
        return Sample(NAN, NAN, parse_score(reply, lo, hi, key).method)
    p = parse_score(answer, lo, hi, key)
    if not p.ok:
        return Sample(NAN, NAN, p.method)
    if not top_logprobs:
        return Sample(p.score, p.score, p.method)
    weighted, why, mass = _weighted_at_score(reply, answer, start, p.score, tokens, top_logprobs, lo, hi, key)
    if why:
        return Sample(p.score, p.score, f"{p.method}; {why}", mass)
    return Sample(weighted, p.score, f"{p.method}; weighted", mass)
