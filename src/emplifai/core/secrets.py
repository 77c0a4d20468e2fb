"""Masking secrets in text we keep (errors, MLflow params/tags, logs, cache namespaces): one place, used by the
LLM client and the tracking spine alike, so core never reaches up into llm/."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

Secrets = str | Sequence[str] | None  # the key, or every secret a call holds (key, a URL's password)


SECRET_ENV = re.compile(r"(?i)(api_?key|token|secret|password)")  # an environment variable that holds a secret


def env_secrets(extra_names: Iterable[str | None] = (), min_chars: int = 8) -> list[str]:
    """Values (at least `min_chars` long) of secret-looking environment variables and of the named ones (e.g.
    `judge.api_key_env`), longest first so a key is masked whole before any shorter secret inside it."""
    names = {n for n in os.environ if SECRET_ENV.search(n)} | {n for n in extra_names if n}
    return sorted({os.environ[n] for n in names if len(os.environ.get(n) or "") >= min_chars}, key=len, reverse=True)


# credential-shaped text, the one list: an Authorization header, `Bearer <token>`, `user:pass@host`,
# `?api_key=...`, OpenAI-style `sk-...` keys, `password: ...` / `token=...`; group 1..6 is the part kept
CREDENTIALS = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)[^\s\"',;}<]+"
    r"|(\bbearer\s+)[^\s\"',;<]+"
    r"|(//)[^/\s:@]+:[^/\s@]+(?=@)"
    r"|([?&](?:api_?key|key|token|access_token)=)[^&\s\"']+"
    r"|(\bsk-)[A-Za-z0-9_-]{6,}"
    r"|(\b(?:x-)?(?:api[_-]?key|(?:access[_-]?|auth[_-]?|refresh[_-]?)?token|secret|password)\b[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',}]+")
FRAGMENT = 8  # a run of this many characters of a known secret is masked too (a server that clips its echo)


def redact(text: str, secret: Secrets, marker: str = "***", fragments: bool = True) -> str:
    """`text` with each known secret, any FRAGMENT characters of one (`fragments`: a key the client sent; not
    for environment values, where a long path-like value shares runs with ordinary text), and anything
    credential-shaped (its value; `Bearer `, `//`, `password: ` stay) replaced by `marker`."""
    for one in [secret] if isinstance(secret, str) else list(secret or ()):
        if one:
            text = text.replace(one, marker)
            text = _mask_fragments(text, one, marker) if fragments else text
    return CREDENTIALS.sub(lambda m: next(g for g in m.groups() if g is not None) + marker, text)


def _mask_fragments(text: str, secret: str, marker: str = "***") -> str:
    """Every run of `text` made of FRAGMENT-long pieces of `secret` → `marker`: what is left of a key a server
    clipped mid-echo (`sk-Zq8VtN3r…`), which the whole-key replace cannot see."""
    if len(secret) < FRAGMENT or len(text) < FRAGMENT:
        return text
    pieces = {secret[i: i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    hit = [False] * len(text)
    for i in range(len(text) - FRAGMENT + 1):
        if text[i: i + FRAGMENT] in pieces:
            hit[i: i + FRAGMENT] = [True] * FRAGMENT
    if not any(hit):
        return text
    out, i = [], 0
    while i < len(text):
        if hit[i]:
            while i < len(text) and hit[i]:
                i += 1
            out.append(marker)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
