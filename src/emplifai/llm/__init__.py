"""Shared LLM-client layer: one OpenAI-compatible client (bounded concurrency, retries, persistent cache)
used by the emotion predictor `openai` and the judge backend `openai`. `protocol` holds the wire types and
reply parsing; `openai_compat` the sending policy (retries, circuit breaker, failure budget)."""

from emplifai.llm.cache import ResponseCache, cache_key, canonical_json, stable_hash
from emplifai.llm.openai_compat import OpenAICompatClient
from emplifai.llm.protocol import ChatRequest, ChatResult, parse_completion, parse_retry_after

__all__ = [
    "ChatRequest",
    "ChatResult",
    "OpenAICompatClient",
    "ResponseCache",
    "cache_key",
    "canonical_json",
    "parse_completion",
    "parse_retry_after",
    "stable_hash",
]
