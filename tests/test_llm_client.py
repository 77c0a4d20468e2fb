"""The shared OpenAI-compatible client against a real local HTTP server (tests/llm_testserver.py).

Faults are injected by the server, over real sockets: 429 + Retry-After, 500s, hangs, malformed JSON, a
process killed mid-run. Small backoffs keep the whole file fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from emplifai.core.errors import UserError
from emplifai.core.secrets import redact
from emplifai.llm import (
    ChatRequest,
    OpenAICompatClient,
    ResponseCache,
    cache_key,
    parse_completion,
    parse_retry_after,
    stable_hash,
)
from llm_testserver import LLMTestServer

FAST = {"backoff_s": 0.005, "max_backoff_s": 0.02, "show_progress": False}


def req(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": text}], **kw)


def test_replies_parsed_in_order_with_logprobs_and_params_sent() -> None:
    n = 8

    def slow_first(body: dict) -> str:  # earlier requests answer later, so completion order != request order
        i = int(body["messages"][-1]["content"].split()[-1])
        time.sleep(0.02 * (n - i))
        return f"answer {i}"

    with LLMTestServer(reply_fn=slow_first) as srv:
        client = OpenAICompatClient(srv.base_url, "test-model", concurrency=n, **FAST)
        reqs = [req(f"q {i}", seed=7, logprobs=True, top_logprobs=3, n=2, response_format={"type": "json_object"})
                for i in range(n)]
        results = client.chat_many(reqs)
    assert [r.text for r in results] == [f"answer {i}" for i in range(n)]
    assert results[0].texts == ["answer 0", "answer 0 #1"]
    assert results[0].top_logprobs[0] == [{"answer": -0.1, "alt1": -2.0, "alt2": -3.0},
                                          {"0": -0.1, "alt1": -2.0, "alt2": -3.0}]
    body = srv.bodies[0]
    assert body["model"] == "test-model" and body["seed"] == 7 and body["n"] == 2
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
    assert client.stats == {"requests_sent": n, "cache_hits": 0, "retries": 0, "failures": 0}
    assert all(r.ok and r.attempts == 1 and not r.cached for r in results)


def test_parse_completion_shapes() -> None:
    texts, lps, finish = parse_completion({"choices": [
        {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        {"index": 0, "message": {"content": None}, "finish_reason": "stop"}]})
    assert texts == ["", "b"] and lps is None  # sorted by index; a None content (refusal) is ""
    assert finish == ["stop", "length"]
    _, lps, _ = parse_completion({"choices": [{"message": {"content": "4"}, "logprobs": {"content": [
        {"token": "4", "logprob": -0.2, "top_logprobs": [{"token": "4", "logprob": -0.2},
                                                         {"token": "5", "logprob": -1.9}]}]}}]})
    assert lps == [[{"4": -0.2, "5": -1.9}]]


def test_retry_after_429_is_honoured() -> None:
    with LLMTestServer(script=["429"], retry_after=1) as srv:
        client = OpenAICompatClient(srv.base_url, "m", **FAST)
        result = client.chat(req("hello"))
    assert result.ok and result.text == "echo: hello" and result.attempts == 2
    waited = srv.request_times[1] - srv.request_times[0]
    assert 0.95 <= waited < 3.0, waited  # the backoff alone would be ~5 ms
    assert client.stats["retries"] == 1 and client.stats["requests_sent"] == 2


def test_retry_after_http_date_and_parsing() -> None:
    assert parse_retry_after("2") == 2.0 and parse_retry_after("garbage") is None and parse_retry_after(None) is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    with LLMTestServer(script=["503"], retry_after=2, retry_after_http_date=True) as srv:
        result = OpenAICompatClient(srv.base_url, "m", **FAST).chat(req("x"))
    assert result.ok
    assert srv.request_times[1] - srv.request_times[0] >= 0.9  # date has 1 s resolution: waits 1–2 s


def test_persistent_500_gives_error_result_after_retries() -> None:
    with LLMTestServer(default="500") as srv:
        client = OpenAICompatClient(srv.base_url, "m", max_retries=3, **FAST)
        results = client.chat_many([req("a"), req("b")])
    assert srv.request_count == 8  # (1 + 3 retries) per request
    for r in results:
        assert r.texts == [] and r.text is None and r.attempts == 4
        assert r.error.startswith("HTTP 500: scripted 500") and "4 attempts" in r.error
    assert client.stats["failures"] == 2 and client.stats["retries"] == 6


def test_other_4xx_is_not_retried() -> None:
    with LLMTestServer(default="400") as srv:
        result = OpenAICompatClient(srv.base_url, "m", **FAST).chat(req("a"))
    assert srv.request_count == 1 and result.error.startswith("HTTP 400") and result.attempts == 1


def test_hang_past_timeout_gives_timeout_error() -> None:
    with LLMTestServer(default="hang", hang_s=20) as srv:
        client = OpenAICompatClient(srv.base_url, "m", timeout_s=0.3, max_retries=1, **FAST)
        start = time.monotonic()
        result = client.chat(req("a"))
        elapsed = time.monotonic() - start
    assert result.error.startswith("timeout (0.3s)") and "2 attempts" in result.error
    assert srv.request_count == 2 and elapsed < 3.0


def test_malformed_json_retried_then_error_without_sinking_batch() -> None:
    # concurrency 1: request 1 meets malformed, no_choices (both attempts spent), request 2 malformed then ok
    with LLMTestServer(script=["malformed", "no_choices", "malformed"]) as srv:
        client = OpenAICompatClient(srv.base_url, "m", max_retries=1, concurrency=1, **FAST)
        first, second = client.chat_many([req("a"), req("b")])
    assert first.error.startswith("malformed reply: no 'choices'") and first.attempts == 2
    assert second.ok and second.text == "echo: b" and second.attempts == 2
    assert client.stats["failures"] == 1


def test_connection_refused_is_an_error_result() -> None:
    srv = LLMTestServer()
    url = srv.base_url
    srv.stop()  # port now closed
    result = OpenAICompatClient(url, "m", max_retries=1, **FAST).chat(req("a"))
    assert result.error.startswith("connection error") and result.attempts == 2


def test_cache_second_run_sends_zero_requests(tmp_path: Path) -> None:
    cache = tmp_path / "llm.sqlite"
    reqs = [req(f"q{i}", logprobs=True, top_logprobs=2) for i in range(6)]
    with LLMTestServer() as srv:
        first = OpenAICompatClient(srv.base_url, "m", cache_path=cache, cache_namespace="ns", **FAST).chat_many(reqs)
        again = OpenAICompatClient(srv.base_url, "m", cache_path=cache, cache_namespace="ns", **FAST)
        second = again.chat_many(reqs)
    assert srv.request_count == 6
    assert again.stats["requests_sent"] == 0 and again.stats["cache_hits"] == 6
    assert [r.texts for r in second] == [r.texts for r in first]
    assert [r.top_logprobs for r in second] == [r.top_logprobs for r in first]
    assert all(r.cached for r in second) and not any(r.cached for r in first)


def test_cache_isolated_by_namespace_model_and_params(tmp_path: Path) -> None:
    cache = tmp_path / "llm.sqlite"
    with LLMTestServer() as srv:
        def run(model: str, ns: str, **kw: object) -> OpenAICompatClient:
            client = OpenAICompatClient(srv.base_url, model, cache_path=cache, cache_namespace=ns, **FAST)
            client.chat(req("same prompt", **kw))
            return client

        assert run("judge-a", "judge/openai/judge-a/rubric1").stats["requests_sent"] == 1
        assert run("judge-a", "judge/openai/judge-a/rubric1").stats["cache_hits"] == 1
        assert run("judge-a", "judge/openai/judge-a/rubric2").stats["requests_sent"] == 1  # rubric changed
        assert run("judge-b", "judge/openai/judge-a/rubric1").stats["requests_sent"] == 1  # model changed
        assert run("judge-a", "judge/openai/judge-a/rubric1", temperature=0.7).stats["requests_sent"] == 1
        assert run("judge-a", "judge/openai/judge-a/rubric1", seed=1).stats["requests_sent"] == 1
    assert srv.request_count == 5
    with ResponseCache(cache) as rc:
        assert len(rc) == 5 and rc.count("judge/openai/judge-a/rubric1") == 4


def test_response_cache_roundtrip_and_keys(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as rc:
        assert rc and len(rc) == 0 and rc.get("k") is None  # an empty cache is still truthy
        rc.put("k", {"texts": ["1"], "top_logprobs": [[{"1": float("-inf")}]]}, namespace="ns")
        assert rc.get("k") == {"texts": ["1"], "top_logprobs": [[{"1": float("-inf")}]]}
    payload = {"messages": [{"role": "user", "content": "あ"}], "temperature": 0.0}
    reordered = {"temperature": 0.0, "messages": [{"content": "あ", "role": "user"}]}
    assert cache_key("ns", "m", payload) == cache_key("ns", "m", reordered)
    assert cache_key("ns", "m", payload) != cache_key("ns2", "m", payload) != cache_key("ns", "m2", payload)
    assert stable_hash({"a": 1}) == stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_failures_not_cached_and_duplicates_sent_once(tmp_path: Path) -> None:
    cache = tmp_path / "llm.sqlite"
    with LLMTestServer(default="500") as srv:
        bad = OpenAICompatClient(srv.base_url, "m", max_retries=0, cache_path=cache, **FAST).chat(req("a"))
    assert not bad.ok
    with LLMTestServer() as srv:
        client = OpenAICompatClient(srv.base_url, "m", cache_path=cache, **FAST)
        results = client.chat_many([req("a"), req("a"), req("b")])
    assert srv.request_count == 2 and [r.text for r in results] == ["echo: a", "echo: a", "echo: b"]
    with LLMTestServer() as srv:  # without a cache, repeated requests are independent calls (sampling)
        OpenAICompatClient(srv.base_url, "m", **FAST).chat_many([req("a"), req("a")])
    assert srv.request_count == 2


CRASHING_RUN = textwrap.dedent("""
    import sys
    from emplifai.llm import ChatRequest, OpenAICompatClient
    url, cache = sys.argv[1], sys.argv[2]
    client = OpenAICompatClient(url, "m", cache_path=cache, cache_namespace="ns", concurrency=1,
                                timeout_s=120, show_progress=False)
    client.chat_many([ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(8)])
""")


def test_resume_after_process_killed_midway(tmp_path: Path) -> None:
    cache = tmp_path / "llm.sqlite"
    script = tmp_path / "run.py"
    script.write_text(CRASHING_RUN)
    with LLMTestServer(block_after=3, hang_s=60) as srv:  # answers 3 calls, then never answers again
        proc = subprocess.Popen([sys.executable, str(script), srv.base_url, str(cache)])
        deadline = time.monotonic() + 30
        while srv.request_count < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert srv.request_count == 4, "the child never reached the blocking call"
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no cleanup, no close()
        proc.wait(10)
    with ResponseCache(cache) as rc:
        assert len(rc) == 3  # every finished answer was committed as it arrived
    with LLMTestServer() as srv:
        client = OpenAICompatClient(srv.base_url, "m", cache_path=cache, cache_namespace="ns", **FAST)
        results = client.chat_many([ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(8)])
    assert srv.request_count == 5 and client.stats["cache_hits"] == 3
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(8)]


def test_concurrency_is_bounded() -> None:
    with LLMTestServer(delay_s=0.15) as srv:
        client = OpenAICompatClient(srv.base_url, "m", concurrency=3, backoff_s=0.01)  # progress bar on
        results = client.chat_many([req(str(i)) for i in range(12)])
    assert all(r.ok for r in results)
    assert srv.max_in_flight == 3


def test_works_when_called_inside_a_running_event_loop() -> None:
    with LLMTestServer() as srv:
        client = OpenAICompatClient(srv.base_url, "m", **FAST)

        async def caller() -> str | None:
            return client.chat(req("from async")).text

        assert asyncio.run(caller()) == "echo: from async"


@pytest.mark.parametrize("offset", [0, 250, 270, 280, 285, 290, 300, 400])
def test_key_echoed_at_any_offset_of_a_long_error_leaves_no_fragment(offset: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The error body is cut to 300 characters: the key is redacted before the cut, so a key that straddles it
    leaves no fragment (any 6 characters of it) in the error we keep."""
    secret = "sk-emplifai-OFFSET-0123456789abcdef"
    monkeypatch.setenv("EMPLIFAI_TEST_KEY", secret)
    with LLMTestServer(script=["400"], echo_auth_in_errors=offset) as srv:
        client = OpenAICompatClient(srv.base_url, "m", "EMPLIFAI_TEST_KEY", max_retries=0, concurrency=1, **FAST)
        result = client.chat(req("a"))
    assert result.error and "HTTP 400" in result.error
    fragments = {secret[i: i + 6] for i in range(len(secret) - 5)}
    assert not any(f in result.error for f in fragments), result.error


def test_credentials_in_urls_and_headers_are_redacted() -> None:
    text = "GET https://alice:pw123@llm.example/v1?api_key=k-999&x=1 with Authorization: Bearer tok-abc"
    out = redact(text, None)
    assert not any(s in out for s in ("pw123", "k-999", "tok-abc", "alice")), out
    assert "llm.example/v1" in out and "x=1" in out


@pytest.mark.parametrize("text, secret", [
    ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ('{"Authorization": "Bearer tok-abcdef"}', "tok-abcdef"),
    ("key sk-proj-A1b2C3d4E5 leaked", "A1b2C3d4E5"),
    ("https://bob:hunter22@host/v1", "hunter22"),
    ("https://host/v1?token=zzz999&a=1", "zzz999"),
    ("password: s3cr3t!x", "s3cr3t!x"),
    ('{"api_key": "k-123456"}', "k-123456"),
    ("x-api-key=abc-def-ghi", "abc-def-ghi"),
])
def test_one_credential_list_masks_every_place_that_keeps_text(text, secret) -> None:
    """The client's errors, MLflow params/tags and the judge's response table mask the same shapes
    (core.secrets.CREDENTIALS, the one list), each with its own marker."""
    from emplifai.core.provenance import mask
    from emplifai.judge.responses import scrub

    for out in (redact(text, None), mask(text), scrub(text)):
        assert secret not in out and ("***" in out or "[redacted]" in out), out
    assert mask("max_tokens=64 tokenizer=fast judge.api_key_env=OPENAI_API_KEY") == \
        "max_tokens=64 tokenizer=fast judge.api_key_env=OPENAI_API_KEY"  # names of settings stay readable


def test_missing_api_key_env_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMPLIFAI_TEST_MISSING_KEY", raising=False)
    with LLMTestServer() as srv:
        client = OpenAICompatClient(srv.base_url, "m", "EMPLIFAI_TEST_MISSING_KEY", **FAST)
        with pytest.raises(UserError, match="EMPLIFAI_TEST_MISSING_KEY is not set"):
            client.chat(req("a"))
    assert srv.request_count == 0


def test_api_key_sent_but_never_stored_logged_or_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-emplifai-TEST-9f8e7d6c5b4a"
    monkeypatch.setenv("EMPLIFAI_TEST_KEY", secret)
    cache = tmp_path / "llm.sqlite"
    with LLMTestServer(script=["ok", "500"], echo_auth_in_errors=True) as srv:
        client = OpenAICompatClient(srv.base_url, "m", "EMPLIFAI_TEST_KEY", max_retries=0, concurrency=1,
                                    cache_path=cache, cache_namespace="ns", **FAST)
        results = client.chat_many([req("a"), req("b")])
    assert srv.headers[0]["Authorization"] == f"Bearer {secret}"  # it was really used
    assert results[0].ok and "Bearer ***" in results[1].error  # the server quoted it back; we redacted it
    exposed = [repr(client), str(client.stats), str(vars(client)), repr(results)]
    assert not any(secret in text for text in exposed)
    files = list(tmp_path.glob("llm.sqlite*"))  # main db plus WAL/shm
    assert files and not any(secret.encode() in f.read_bytes() for f in files)


def test_from_config() -> None:
    cfg = OmegaConf.create({"base_url": "http://127.0.0.1:9/v1/", "model": "qwen", "api_key_env": "X_KEY",
                            "timeout_s": 5, "max_retries": 2, "concurrency": 4, "extra_body": {"top_k": 1}})
    client = OpenAICompatClient.from_config(cfg, cache_path=None, namespace="emotion/openai/qwen")
    assert (client.base_url, client.model, client.api_key_env) == ("http://127.0.0.1:9/v1", "qwen", "X_KEY")
    assert (client.timeout_s, client.max_retries, client.concurrency) == (5.0, 2, 4)
    assert client.payload(req("a"))["top_k"] == 1 and client.cache_namespace == "emotion/openai/qwen"
    with pytest.raises(UserError, match="missing model"):
        OpenAICompatClient.from_config(OmegaConf.create({"base_url": "http://x/v1"}))


# ---------------------------------------------------------------- run-level failure accounting
def test_tokens_and_finish_reasons_come_back_from_the_cache(tmp_path: Path) -> None:
    """The judge maps the score's characters to tokens: the sampled tokens must survive the cache too."""
    cache = tmp_path / "llm.sqlite"
    with LLMTestServer(reply_fn=lambda body, i: ("a b", "length")) as srv:
        ask = req("x", logprobs=True, top_logprobs=2)
        first = OpenAICompatClient(srv.base_url, "m", cache_path=cache, **FAST).chat(ask)
        again = OpenAICompatClient(srv.base_url, "m", cache_path=cache, **FAST).chat(ask)
    assert first.tokens == [["a", "b"]] and first.finish_reasons == ["length"]
    assert again.cached and again.tokens == first.tokens and again.finish_reasons == ["length"]


def test_circuit_opens_on_a_dead_server_and_stops_sending() -> None:
    srv = LLMTestServer()
    url = srv.base_url
    srv.stop()  # connection refused from now on
    client = OpenAICompatClient(url, "m", max_retries=5, backoff_s=1.0, concurrency=4, show_progress=False)
    start = time.monotonic()
    results = client.chat_many([req(f"q{i}") for i in range(40)])
    assert time.monotonic() - start < 3  # without the breaker: 40 requests × up to 5 backoffs each
    assert all(r.error for r in results)
    opened = [r for r in results if r.error.startswith("circuit open: 5 consecutive connection errors")]
    assert len(opened) >= 36 and "(last: connection error: ConnectError" in opened[0].error
    assert client.stats["requests_sent"] <= 5 + 4  # the streak, plus at most the ones already in flight


def test_http_5xx_never_opens_the_circuit() -> None:
    with LLMTestServer(default="500") as srv:  # the server is there, just sick: retried, never "circuit open"
        client = OpenAICompatClient(srv.base_url, "m", max_retries=2, max_consecutive_connection_errors=2,
                                    concurrency=2, **FAST)
        results = client.chat_many([req(f"q{i}") for i in range(4)])
    assert srv.request_count == 4 * 3 and all(r.error.startswith("HTTP 500") for r in results)


def test_check_failures_failure_budget() -> None:
    from emplifai.llm import ChatResult

    ok, bad = ChatResult(["4"], None, None), ChatResult([], None, "HTTP 500: boom (gave up after 6 attempts)")
    client = OpenAICompatClient("http://127.0.0.1:9/v1", "m", max_failure_rate=0.25)
    client.check_failures([ok, ok, ok, bad])  # 25%: within the budget
    with pytest.raises(UserError, match=r"^2 of 4 requests .* failed after retries \(50\.0% > max_failure_rate "
                                        r"25\.0%\); first error: HTTP 500: boom .*rerun asks only for the failed"):
        client.check_failures([ok, bad, ok, bad])
    with pytest.raises(UserError, match=r"^all 2 requests .* failed, e\.g\. HTTP 500: boom.*check base_url"):
        client.check_failures([bad, bad])
    OpenAICompatClient("http://x/v1", "m", max_failure_rate=None).check_failures([ok, bad, bad])  # no limit
    with pytest.raises(UserError, match="max_failure_rate must be in"):
        OpenAICompatClient("http://x/v1", "m", max_failure_rate=2)
    cfg = {"base_url": "http://x/v1", "model": "m", "max_failure_rate": None, "max_consecutive_connection_errors": 0}
    c = OpenAICompatClient.from_config(cfg)
    assert c.max_failure_rate is None and c.max_consecutive_connection_errors is None  # both off


def test_every_part_of_a_cache_namespace_changes_it() -> None:
    """llm.cache.namespace is the one place a namespace is built: each part alone makes another namespace."""
    from emplifai.llm.cache import namespace

    base = {"backend": "judge/hf_local", "source": "sha256:abc", "model": "gemma", "prompt": "p1",
            "decoding": {"t": 0}, "dtype": "float32", "device": "cpu"}
    other = {"backend": "judge/openai", "source": "sha256:abd", "model": "gemma2", "prompt": "p2",
             "decoding": {"t": 1}, "dtype": "bfloat16", "device": "cuda"}
    first = namespace(**base)
    for part in base:
        assert namespace(**(base | {part: other[part]})) != first, part
    with_creds = namespace(**(base | {"source": "https://u:secret@host/v1?api_key=k1"}))
    assert "secret" not in with_creds and "k1" not in with_creds
