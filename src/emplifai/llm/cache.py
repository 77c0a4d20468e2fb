"""Persistent response cache for LLM calls (sqlite, stdlib only).

Why sqlite: one file, atomic per-row commits (WAL), safe for concurrent readers/writers, and each answer is
committed the moment it arrives, so a run killed halfway resumes without repeating finished calls.
Keys never include secrets: they hash only the namespace, the model id and the request payload.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace, UTF-8 kept) so equal payloads hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of `obj`'s canonical JSON; use it to put a rubric/prompt hash into a cache namespace."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def namespace(backend: str, source: str, model: str, prompt: str, decoding: Any = None, dtype: str | None = None,
              device: str | None = None) -> str:
    """The one place a cache namespace is built, from every part that decides what an answer is: the backend,
    what answered (the server URL, credentials stripped, or the weights' content hash), the model id, the dtype
    and device it ran in (local models), the prompt + rubric hash and the decoding params. Change any one and
    the cache misses (tests/test_llm_client.py changes each in turn)."""
    from emplifai.core.secrets import redact

    parts = {"backend": backend, "source": redact(source, None), "model": model, "dtype": dtype, "device": device,
             "prompt": prompt, "decoding": stable_hash(decoding) if decoding is not None else None}
    return "|".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def cache_key(namespace: str, model: str, payload: dict[str, Any]) -> str:
    """sha256 over (namespace, model, canonical payload); the payload holds messages and all decoding params."""
    blob = canonical_json({"namespace": namespace, "model": model, "payload": payload})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Key → JSON value store in one sqlite file; thread-safe; every `put` is committed immediately."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None if absent."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any], *, namespace: str = "", model: str = "") -> None:
        """Insert or replace one row and commit it (autocommit mode), so it survives a crash right after."""
        blob = json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # -inf logprobs allowed here
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, namespace, model, value, created) VALUES (?, ?, ?, ?, ?)",
                (key, namespace, model, blob, time.time()),
            )

    def __bool__(self) -> bool:  # an empty cache is still a cache (`if cache:` must not depend on rows)
        return True

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def count(self, namespace: str | None = None) -> int:
        """Rows in total, or in one namespace."""
        if namespace is None:
            return len(self)
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM responses WHERE namespace = ?", (namespace,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
