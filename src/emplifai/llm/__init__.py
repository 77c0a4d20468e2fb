"""Shared LLM-client layer: one OpenAI-compatible client (bounded concurrency, retries, persistent cache)
used by the emotion predictor `openai` and the judge backend `openai`."""

from emplifai.llm.cache import ResponseCache, cache_key, canonical_json, stable_hash
from emplifai.llm.openai_compat import (
    ChatRequest,
    ChatResult,
    OpenAICompatClient,
    parse_completion,
    parse_retry_after,
)

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
