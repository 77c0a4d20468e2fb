"""The wire side of an OpenAI-compatible `/chat/completions` call: request/result types, reply parsing
(choices, finish reasons, tokens, logprobs), Retry-After and error text.

Kept apart from the client (openai_compat.py) so the client holds only the sending policy (concurrency,
retries, circuit breaker, cache) and this module only what a server's bytes mean.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from emplifai.core.secrets import Secrets, redact  # noqa: F401 - re-exported: the client masks its errors


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request; every field that changes the answer is part of the cache key."""

    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None  # e.g. 5, for G-Eval probability-weighted scores
    response_format: dict | None = None  # e.g. {"type": "json_object"} where the server supports it
    n: int = 1
    stop: list[str] | None = None


@dataclass
class ChatResult:
    """Outcome of one request: texts on success, `error` (never an exception) on final failure."""

    texts: list[str]  # one per choice; [] on error
    top_logprobs: list[list[dict[str, float]]] | None  # per choice, per generated token: {token: logprob}
    error: str | None  # None on success, e.g. "HTTP 400: ..." or "timeout (60s) (gave up after 3 attempts)"
    cached: bool = False
    attempts: int = 0
    finish_reasons: list[str | None] | None = None  # per choice: "stop" | "length" | ... (None: not given)
    tokens: list[list[str]] | None = None  # per choice, the generated tokens (with logprobs; for offsets)

    @property
    def text(self) -> str | None:
        """First choice's text, or None on error."""
        return self.texts[0] if self.texts else None

    @property
    def ok(self) -> bool:
        return self.error is None


class Malformed(Exception):
    """The server answered 2xx but the body is not a usable chat completion."""


@dataclass
class Completion:
    """One parsed reply: per choice its text, finish_reason, generated tokens and their top logprobs."""

    texts: list[str]
    top_logprobs: list[list[dict[str, float]]] | None  # per choice, per generated token: {token: logprob}
    finish_reasons: list[str | None]
    tokens: list[list[str]] | None  # per choice, the generated token strings (joined: the reply)


def parse_choices(data: Any) -> Completion:
    """Choices sorted by index. The sampled token strings are kept (not just the top alternatives) so a
    caller can map a character of the reply back to the token that produced it."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise Malformed("no 'choices' in the reply")
    if not all(isinstance(c, dict) for c in choices):
        raise Malformed("a choice is not an object")
    choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
    texts: list[str] = []
    finish: list[str | None] = []
    logprobs: list[list[dict[str, float]]] = []
    tokens: list[list[str]] = []
    any_logprobs = False
    for choice in choices:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise Malformed("a choice has no 'message'")
        content = message.get("content")
        texts.append(content if isinstance(content, str) else "")  # None (e.g. a refusal) -> "" for the caller
        reason = choice.get("finish_reason")
        finish.append(reason if isinstance(reason, str) else None)
        lp = choice.get("logprobs")
        entries = lp.get("content") if isinstance(lp, dict) else None
        per_token: list[dict[str, float]] = []
        sampled: list[str] = []
        if isinstance(entries, list):
            any_logprobs = True
            for tok in entries:
                tok = tok if isinstance(tok, dict) else {}
                alts: dict[str, float] = {}
                for alt in tok.get("top_logprobs") or []:
                    if isinstance(alt, dict) and "token" in alt and isinstance(alt.get("logprob"), int | float):
                        name, value = str(alt["token"]), float(alt["logprob"])
                        alts[name] = max(value, alts.get(name, -math.inf))
                if not alts and isinstance(tok.get("logprob"), int | float):
                    alts[str(tok.get("token", ""))] = float(tok["logprob"])
                per_token.append(alts)
                sampled.append(str(tok.get("token", "")))
        logprobs.append(per_token)
        tokens.append(sampled)
    if not any_logprobs:
        return Completion(texts, None, finish, None)
    return Completion(texts, logprobs, finish, tokens)


def parse_completion(data: Any) -> tuple[list[str], list[list[dict[str, float]]] | None, list[str | None]]:
    """Texts of `choices[i].message.content`, per-token top-logprob dicts if present, and each choice's
    `finish_reason` ("length" = cut off by max_tokens: the caller must not read a score out of it)."""
    c = parse_choices(data)
    return c.texts, c.top_logprobs, c.finish_reasons


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


MAX_ERROR_BODY = 1 << 16  # characters of an error page read for its message (a 10 MB page is cut first)


def snippet(resp: httpx.Response, secret: Secrets = None, limit: int = 300) -> str:
    """Short single-line excerpt of an error body (the server's own message) for the error string; redacted
    before it is cut, so a key echoed across the cut cannot leave a fragment behind."""
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        text = (err.get("message") if isinstance(err, dict) else err) or json.dumps(data, ensure_ascii=False)
    except ValueError:
        text = resp.text
    return redact(" ".join(str(text)[:MAX_ERROR_BODY].split()), secret)[:limit]


def body_problem(err: Exception, body: bytes) -> str:
    """Why a 2xx body is no completion, in words: a body cut short (mid-JSON, mid-character) says so."""
    ends_open = not body.rstrip().endswith(b"}")  # a chat completion is an object: cut off if it never closes
    cut = ", cut short?" if ends_open else ""
    if isinstance(err, UnicodeDecodeError):
        return f"the body ({len(body)} bytes) is not valid UTF-8{cut} ({err.reason}: byte {err.start})"
    if isinstance(err, json.JSONDecodeError):
        return f"the body ({len(body)} bytes) is not valid JSON{cut} ({err.msg}: character {err.pos})"
    return str(err)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`url` without its `user:password@` (the form every log line, error and cache key may show) and the
    (user, password) pair for HTTP Basic auth, or None when the URL carries none."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


