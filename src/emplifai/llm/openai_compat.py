"""Client for any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp server, Ollama, OpenAI, ...).

Why a synchronous facade over asyncio: pipeline stages are plain functions, but judging thousands of
responses needs bounded concurrency. Failures never escape `chat_many`: each request ends as a ChatResult,
with `error` set when it finally failed, so one bad reply never aborts a batch; the stage then decides with
`check_failures` (a run-level failure budget) whether the batch is good enough to write. A circuit breaker
stops a batch once the server is unreachable, so a dead server fails a stage in seconds, not hours. The API
key is read from the environment at call time and lives only in the request headers of that call; a
`user:password@` in base_url is Basic auth, cut from the URL that logs and errors show. Every error kept is
redacted of both (whole, or any 8 characters of them: a server may clip what it quotes back).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import random
import sqlite3
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from emplifai.core.errors import UserError
from emplifai.llm.cache import ResponseCache, cache_key
from emplifai.llm.protocol import (
    ChatRequest,
    ChatResult,
    Malformed,
    body_problem,
    parse_choices,
    parse_retry_after,
    redact,
    snippet,
    split_credentials,
)

__all__ = ["ChatRequest", "ChatResult", "OpenAICompatClient"]


CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)  # refused, DNS, connect timeout: nobody answers


class _Circuit:
    """Counts consecutive connection errors across a batch; at `limit` it opens and nothing more is sent.
    An HTTP answer of any status (5xx too) proves the server is there and resets the count."""

    def __init__(self, limit: int | None, url: str) -> None:
        self.limit, self.url, self.streak, self.reason = limit, url, 0, ""

    def answered(self) -> None:
        if not self.reason:
            self.streak = 0

    def connect_failed(self, error: str) -> None:
        self.streak += 1
        if self.limit and self.streak >= self.limit and not self.reason:
            self.reason = (f"circuit open: {self.streak} consecutive connection errors to {self.url} "
                           f"(last: {error}); the rest were not sent")


class OpenAICompatClient:
    """Bounded-concurrency, retrying, caching client. `stats`: requests_sent, cache_hits, retries, failures."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        *,
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        concurrency: int = 8,
        cache_path: str | Path | None = None,
        cache_namespace: str = "",
        extra_body: dict | None = None,
        show_progress: bool = True,
        max_failure_rate: float | None = 0.02,
        max_consecutive_connection_errors: int | None = 5,
    ) -> None:
        if concurrency < 1:
            raise UserError(f"LLM client: concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise UserError(f"LLM client: max_retries must be >= 0, got {max_retries}")
        if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
            raise UserError(f"LLM client: max_failure_rate must be in [0, 1] (or null), got {max_failure_rate}")
        # a `user:password@` in base_url is sent as HTTP Basic auth and shown nowhere (logs, errors, repr)
        url, self._basic = split_credentials(base_url.rstrip("/"))
        self.base_url = url
        self.model = model
        self.api_key_env = api_key_env or None  # the NAME of the env var; the key itself is never stored
        if self._basic and self.api_key_env:
            raise UserError(f"LLM client: base_url {url} carries a user:password and api_key_env names an API key "
                            f"({self.api_key_env}); both would be the Authorization header: keep one (the key in "
                            "that env var, and base_url without user:password@; or api_key_env=null)")
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.concurrency = int(concurrency)
        self.cache_namespace = cache_namespace
        self.extra_body = dict(extra_body or {})
        self.show_progress = show_progress
        self.max_failure_rate = None if max_failure_rate is None else float(max_failure_rate)
        self.max_consecutive_connection_errors = int(max_consecutive_connection_errors or 0) or None  # 0: off
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self._tls: Any = None  # TLS context built once per client (loading CA certs costs ~50 ms per batch)
        self.stats: dict[str, int] = {"requests_sent": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    @classmethod
    def from_config(
        cls, cfg: DictConfig | dict, cache_path: str | Path | None = None, namespace: str = ""
    ) -> OpenAICompatClient:
        """Build from a config node with keys base_url, model, api_key_env, timeout_s, max_retries,
        backoff_s, max_backoff_s, concurrency, extra_body, max_failure_rate, max_consecutive_connection_errors
        (all but base_url/model optional)."""
        c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        missing = [k for k in ("base_url", "model") if not c.get(k)]
        if missing:
            raise UserError(f"LLM client config is missing {', '.join(missing)}")
        keys = ("timeout_s", "max_retries", "backoff_s", "max_backoff_s", "max_retry_after_s", "concurrency",
                "extra_body", "show_progress", "max_consecutive_connection_errors")
        opts = {k: c[k] for k in keys if c.get(k) is not None}
        if "max_failure_rate" in c:  # null = no limit (only "every request failed" stops a stage)
            opts["max_failure_rate"] = c["max_failure_rate"]
        return cls(c["base_url"], c["model"], c.get("api_key_env"), cache_path=cache_path,
                   cache_namespace=namespace, **opts)

    def __repr__(self) -> str:
        return (f"OpenAICompatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, cache={self.cache!r})")

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent (and hashed for the cache key); `extra_body` first, explicit fields win."""
        body: dict[str, Any] = dict(self.extra_body)
        body.update(model=self.model, messages=[dict(m) for m in request.messages],
                    temperature=request.temperature, max_tokens=request.max_tokens)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.logprobs:
            body["logprobs"] = True
            if request.top_logprobs is not None:
                body["top_logprobs"] = request.top_logprobs
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.n != 1:
            body["n"] = request.n
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def cache_key(self, request: ChatRequest) -> str:
        return cache_key(self.cache_namespace, self.model, self.payload(request))

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UserError(f"environment variable {self.api_key_env} is not set: it must hold the API key for "
                            f"{self.base_url} (config key api_key_env names the variable, never the key)")
        return key

    def chat(self, request: ChatRequest) -> ChatResult:
        return self.chat_many([request], desc="LLM call")[0]

    def check_failures(self, results: Sequence[ChatResult]) -> None:
        """Raise UserError when the batch is not good enough to write, before the caller writes anything.

        Every request failed: a setup error (URL, model id, key), not a batch of invalid answers. More than
        `max_failure_rate` failed after retries: a sick server; the answers received are already cached and
        failures never are, so the rerun asks only for what failed."""
        errors = [r.error for r in results if r.error]
        if not errors:
            return
        first = next((e for e in errors if e.startswith("circuit open")), errors[0])
        if len(errors) == len(results):
            raise UserError(f"all {len(results)} requests to {self.base_url} (model {self.model!r}) failed, "
                            f"e.g. {first}; check base_url, model (the server's model id) and api_key_env")
        rate = len(errors) / len(results)
        if self.max_failure_rate is not None and rate > self.max_failure_rate:
            raise UserError(f"{len(errors)} of {len(results)} requests to {self.base_url} (model {self.model!r}) "
                            f"failed after retries ({rate:.1%} > max_failure_rate {self.max_failure_rate:.1%}); "
                            f"first error: {first}. Nothing was written; the {len(results) - len(errors)} answers "
                            "received are cached, so a rerun asks only for the failed ones")

    def chat_many(self, requests: Sequence[ChatRequest], desc: str = "LLM calls") -> list[ChatResult]:
        """One result per request, in order; failures are ChatResults with `error`, never exceptions.

        With a cache, cached answers are reused and identical requests are sent once. The API key env var
        is read only when something must be sent (a fully cached rerun works offline, without a key).
        Raises only UserError (that env var missing). `stats["requests_sent"]` counts HTTP attempts."""
        results: list[ChatResult | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}  # key -> indexes waiting for it
        payloads: dict[str, dict[str, Any]] = {}
        for i, req in enumerate(requests):
            body = self.payload(req)
            key = cache_key(self.cache_namespace, self.model, body) if self.cache is not None else f"#{i}"
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.stats["cache_hits"] += 1
                results[i] = ChatResult(hit["texts"], hit.get("top_logprobs"), None, cached=True, attempts=0,
                                        finish_reasons=hit.get("finish_reasons"), tokens=hit.get("tokens"))
            else:
                pending.setdefault(key, []).append(i)
                payloads[key] = body
        if pending:
            api_key = self._api_key()  # only needed when something must go over the network
            bar = tqdm(total=len(requests), initial=len(requests) - sum(map(len, pending.values())),
                       desc=desc, unit="call", disable=not self.show_progress)
            try:
                weights = {k: len(v) for k, v in pending.items()}
                done = self._run_loop(lambda: self._send_all(payloads, weights, api_key, bar))
            finally:
                bar.close()
            for key, idxs in pending.items():
                for j, i in enumerate(idxs):  # duplicates get their own copy
                    results[i] = done[key] if j == 0 else dataclasses.replace(done[key], texts=list(done[key].texts))
        return [r for r in results if r is not None]

    def _run_loop(self, make_coro: Any) -> Any:
        """asyncio.run, or on a fresh thread if the caller already runs an event loop (e.g. Jupyter)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(make_coro())
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(make_coro())).result()

    async def _send_all(
        self, payloads: dict[str, dict], weights: dict[str, int], api_key: str | None, bar: Any
    ) -> dict[str, ChatResult]:
        headers = {"Content-Type": "application/json"}
        secrets = [api_key] if api_key else []  # what an echoing server must never get into an error we keep
        auth = None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif self._basic:
            auth = httpx.BasicAuth(*self._basic)
            secrets += [*self._basic, base64.b64encode(":".join(self._basic).encode()).decode()]
        secrets = [s for s in secrets if s]
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        if self._tls is None:  # httpx builds one even for plain http; reuse it across batches
            self._tls = httpx.create_ssl_context()
        circuit = _Circuit(self.max_consecutive_connection_errors, self.base_url)
        # a connect timeout well below the request timeout: an unreachable host is known in seconds
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s / 2))
        async with httpx.AsyncClient(timeout=timeout, limits=limits, verify=self._tls, auth=auth) as http:

            async def one(key: str) -> tuple[str, ChatResult]:
                async with sem:
                    try:
                        res = await self._send_one(http, payloads[key], headers, circuit, secrets)
                    except Exception as err:  # a bug or odd transport state must not sink the whole batch
                        res = ChatResult([], None, f"unexpected {type(err).__name__}: {err}", attempts=1)
                if res.error is None and self.cache is not None:
                    try:  # committed now, so a crash later does not lose this answer
                        self.cache.put(key, {"texts": res.texts, "top_logprobs": res.top_logprobs,
                                             "finish_reasons": res.finish_reasons, "tokens": res.tokens},
                                       namespace=self.cache_namespace, model=self.model)
                    except sqlite3.Error as err:  # keep the answer; the next run just asks again
                        warnings.warn(f"LLM cache write to {self.cache.path} failed: {err}", stacklevel=2)
                if res.error is not None:
                    res.error = redact(res.error, secrets)
                    self.stats["failures"] += 1
                bar.update(weights[key])
                return key, res

            pairs = await asyncio.gather(*(one(k) for k in payloads))
        return dict(pairs)

    async def _send_one(self, http: httpx.AsyncClient, body: dict, headers: dict[str, str],
                        circuit: _Circuit, secrets: Sequence[str] = ()) -> ChatResult:
        url = f"{self.base_url}/chat/completions"
        last_error = "no attempt made"
        attempt = 0
        for attempt in range(1, self.max_retries + 2):
            if circuit.reason:  # the server is unreachable: do not queue more connection attempts behind it
                return ChatResult([], None, circuit.reason, attempts=attempt - 1)
            retry_after: float | None = None
            unreachable = False
            self.stats["requests_sent"] += 1
            try:
                resp = await asyncio.wait_for(http.post(url, json=body, headers=headers), self.timeout_s)
            except CONNECT_ERRORS as err:  # before TimeoutException: ConnectTimeout is one
                last_error = redact(f"connection error: {type(err).__name__}: {err}", secrets)[:300]
                unreachable = True
                circuit.connect_failed(last_error)
            except (TimeoutError, httpx.TimeoutException):
                last_error = f"timeout ({self.timeout_s:g}s)"
            except httpx.TransportError as err:  # connected, then the connection broke (mid-body too): retried
                last_error = redact(f"connection error: {type(err).__name__}: {err}", secrets)[:300]
            except httpx.DecodingError as err:  # a compressed body cut short or corrupt: as a malformed reply
                circuit.answered()
                last_error = redact(f"malformed reply: the body could not be decoded ({err})", secrets)[:300]
            else:
                circuit.answered()
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        c = parse_choices(resp.json())
                        return ChatResult(c.texts, c.top_logprobs, None, cached=False, attempts=attempt,
                                          finish_reasons=c.finish_reasons, tokens=c.tokens)
                    except (Malformed, ValueError) as err:  # JSON and UTF-8 decoding errors are ValueErrors
                        last_error = redact(f"malformed reply: {body_problem(err, resp.content)}", secrets)[:300]
                elif status == 429 or status >= 500:
                    last_error = f"HTTP {status}: {snippet(resp, secrets)}"
                    if status in (429, 503):
                        retry_after = parse_retry_after(resp.headers.get("retry-after"))
                else:  # other 4xx: our request is wrong, retrying cannot help
                    return ChatResult([], None, f"HTTP {status}: {snippet(resp, secrets)}", attempts=attempt)
            if attempt > self.max_retries:
                break
            self.stats["retries"] += 1
            if retry_after is not None:
                delay = min(retry_after, self.max_retry_after_s)
            elif unreachable:  # short, flat: the circuit breaker, not a growing backoff, decides when to stop
                delay = min(self.backoff_s, 1.0) * random.uniform(0.5, 1.0)
            else:  # exponential backoff with full jitter
                delay = random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            await asyncio.sleep(delay)
        return ChatResult([], None, f"{last_error} (gave up after {attempt} attempts)", attempts=attempt)
