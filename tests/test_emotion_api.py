"""The emotion `openai` predictor's run-level failure accounting against the local OpenAI-compatible server:
the failure budget (stop before writing, rerun asks only for what failed), api_errors / truncated metrics,
and a dead server failing the stage in seconds."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import ROOT
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import read_metrics
from emplifai.emotion import __main__ as emotion
from llm_testserver import LLMTestServer

PREPARED = ROOT / "artifacts" / "prepare"
needs_fixtures = pytest.mark.skipif(not (PREPARED / "test.parquet").exists()
                                    or not (ROOT / "models/base/e5-small/config.json").exists(),
                                    reason="run `dvc repro models prepare` first")


@pytest.fixture
def cfg(tmp_path, make_cfg):
    import shutil

    shutil.copytree(PREPARED, tmp_path / "artifacts" / "prepare")

    def _make(url: str, *extra: str):
        return make_cfg("emotion.predictors=null", "predictor=openai", f"predictor.base_url={url}", "predictor.model=test-model",
                        "predictor.api_key_env=null", "predictor.timeout_s=5", "predictor.max_retries=1",
                        "predictor.backoff_s=0.005", "predictor.max_backoff_s=0.02", "predictor.show_progress=false",
                        f"predictor.cache={tmp_path}/llm.sqlite", "emotion.first_n=6", "emotion.fasttext.epoch=2",
                        "emotion.fasttext.dim=20", "emotion.bootstrap.n_resamples=50", "mlflow.enabled=false", *extra)

    return _make


class FirstTwoFail:
    """behaviour_fn: the first two distinct dialogues asked about always get HTTP 500 (a fixed subset)."""

    def __init__(self) -> None:
        self.lock, self.bad = threading.Lock(), set()

    def __call__(self, body: dict) -> str | None:
        key = body["messages"][-1]["content"]
        with self.lock:
            if len(self.bad) < 2:
                self.bad.add(key)
            return "500" if key in self.bad else None


class Answers:
    """reply_fn: every answer 不安; every other dialogue's is cut off at max_tokens (remembered, to count)."""

    def __init__(self) -> None:
        self.lock, self.cut, self.seen = threading.Lock(), set(), []

    def __call__(self, body: dict, i: int) -> tuple[str, str]:
        key = body["messages"][-1]["content"]
        with self.lock:
            if key not in self.seen:
                self.seen.append(key)
            if self.seen.index(key) % 2:
                self.cut.add(key)
            return "不安", "length" if key in self.cut else "stop"


@needs_fixtures
def test_openai_predictor_failure_budget_metrics_and_rerun(cfg, tmp_path):
    out = tmp_path / "artifacts" / "emotion" / "openai"
    answers = Answers()
    with LLMTestServer(reply_fn=answers, behaviour_fn=FirstTwoFail()) as srv:
        with pytest.raises(UserError, match=r"^2 of 6 requests to .* failed after retries \(33\.3% > "
                                            r"max_failure_rate 2\.0%\); first error: HTTP 500"):
            emotion.run(cfg(srv.base_url))
        assert not (out / "predictions.parquet").exists() and not (out / "metrics.json").exists()
        assert srv.request_count == 4 + 2 * 2

        before = srv.request_count  # a looser budget: completes, the two failures are invalid and counted
        emotion.run(cfg(srv.base_url, "predictor.max_failure_rate=0.5"))
        assert srv.request_count - before == 2 * 2  # the 4 answers came from the cache
        m = read_metrics(out / "metrics.json").metrics
        assert m["emotion/api_errors"] == 2 and m["emotion/cache_hits"] == 4
        assert m["emotion/truncated"] == len(answers.cut) == 2

        srv.behaviour_fn = None  # the server recovers: the rerun asks only for the two that failed
        before = srv.request_count
        emotion.run(cfg(srv.base_url))
        assert srv.request_count - before == 2
    m = read_metrics(out / "metrics.json").metrics
    assert m["emotion/api_errors"] == 0 and m["emotion/cache_hits"] == 4


@needs_fixtures
def test_openai_predictor_dead_server_fails_fast(cfg, tmp_path):
    srv = LLMTestServer()
    url = srv.base_url
    srv.stop()
    start = time.monotonic()
    with pytest.raises(UserError, match=r"all 6 requests .* failed, e\.g\. circuit open: 5 consecutive connection"):
        emotion.run(cfg(url, "++preflight=false", "predictor.max_retries=5", "predictor.backoff_s=1.0",
                        "predictor.concurrency=1"))
    assert time.monotonic() - start < 10  # fastText vectors are trained first (~1 s); the requests take ~3 s
    assert not (tmp_path / "artifacts" / "emotion" / "openai" / "predictions.parquet").exists()


@needs_fixtures
def test_another_server_or_predictor_never_answers_from_this_ones_cache(cfg, tmp_path):
    """The cache namespace holds what answered: after predictor=openai against server A, predictor=vllm
    against server B with the same cache file asks B for every dialogue (it used to be all cache hits)."""
    with LLMTestServer(reply_fn=lambda body, i: ("不安", "stop")) as a, \
            LLMTestServer(reply_fn=lambda body, i: ("喜び", "stop")) as b:
        emotion.run(cfg(a.base_url))
        assert a.request_count == 6
        emotion.run(cfg(b.base_url))  # same predictor, another server
        assert b.request_count == 6
        emotion.run(cfg(b.base_url, "predictor.name=vllm", "+predictor.type=openai"))  # another predictor, same server
        assert b.request_count == 12
        emotion.run(cfg(b.base_url, "predictor.temperature=0.5"))  # other decoding
        assert b.request_count == 18
        emotion.run(cfg(b.base_url))  # and the same setup again is all cache hits
        assert b.request_count == 18
    m = read_metrics(tmp_path / "artifacts" / "emotion" / "openai" / "metrics.json").metrics
    assert m["emotion/cache_hits"] == 6
