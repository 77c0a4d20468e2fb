"""API judge stage end to end against the local OpenAI-compatible server (tests/llm_testserver.py):
reasoning-model (R1) replies scored from the final answer's score token, truncation, n > 1, and the
run-level failure accounting (failure budget, rerun from the cache, circuit breaker on a dead server)."""

from __future__ import annotations

import json
import math
import re
import shutil
import time

import pandas as pd
import pytest

from conftest import ROOT
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import read_metrics
from emplifai.judge import __main__ as judge
from emplifai.judge.parse import parse_score, score_reply, weighted_from_top_logprobs
from llm_testserver import LLMTestServer

PREPARED = ROOT / "artifacts" / "prepare"
pytestmark = pytest.mark.skipif(not (PREPARED / "test.parquet").exists(),
                                reason="run `dvc repro prepare` first (artifacts/prepare)")

R1 = '<think>採点は1から5。最初は3点と思ったが、共感が具体的なので5に近い。</think>\n{"score": 4}'
FINAL = [("4", math.log(0.7)), ("5", math.log(0.2)), ("3", math.log(0.1))]  # Σ s·p = 4.1
OLD_BUG = 1 * 0.88 + 2 * 0.12  # what the first-digit rule read out of R1's reasoning: 1.12


def tokenize(text: str) -> list[str]:
    """A stand-in tokenizer: every digit its own token (as Qwen's), other text in 3-character pieces."""
    return re.findall(r"\d|[^\d]{1,3}", text, re.DOTALL)


def r1_logprobs(final: list[tuple[str, float]]):
    """logprobs_fn: reasoning digits d are sure of themselves (p(d)=0.88, p(d+1)=0.12); the answer's score
    digit (the last digit after </think>) gets `final` (its first entry is the emitted token)."""

    def fn(body: dict, text: str) -> list[list[tuple[str, float]]]:
        toks = tokenize(text)
        answer_from = text.rfind("</think>")
        out, pos, last_digit = [], 0, None
        for i, tok in enumerate(toks):
            if tok.isdigit() and pos > answer_from:
                last_digit = i
            out.append([(tok, math.log(0.88)), (str(int(tok) + 1), math.log(0.12))] if tok.isdigit()
                       else [(tok, -0.01)])
            pos += len(tok)
        if last_digit is not None:
            out[last_digit] = final
        return out

    return fn


def criterion_of(body: dict) -> str:
    return body["messages"][-1]["content"]


@pytest.fixture
def cfg(tmp_path, make_cfg):
    """Config maker for `judge=vllm` against a test server, with the repo's prepared splits copied in."""
    shutil.copytree(PREPARED, tmp_path / "artifacts" / "prepare")

    def _make(srv_url: str, *extra: str):
        return make_cfg("judge=vllm", f"judge.base_url={srv_url}", "judge.model=test-model", "judge.stratified_n=4",
                        f"judge.cache={tmp_path}/judge.sqlite", "judge.show_progress=false", "judge.timeout_s=5",
                        "judge.backoff_s=0.005", "judge.max_backoff_s=0.02", "mlflow.enabled=false", *extra)

    return _make


def scores_of(tmp_path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "artifacts" / "judge" / "vllm" / "scores.parquet")


# ---------------------------------------------------------------- parsing (unit)
def test_parse_reads_the_answer_after_reasoning_not_the_reasoning():
    assert parse_score('<think>…3点…</think>{"score": 4}').score == 4
    assert parse_score('考える…3点…</think>{"score": 4}').score == 4  # R1 template: <think> is in the prompt
    unclosed = parse_score("<think>…3点…")
    assert not unclosed.ok and "no final answer" in unclosed.method  # the reasoning's 3 is not an answer
    cut = score_reply('<think>…</think>{"score": 5}', finish_reason="length")
    assert math.isnan(cut.score) and cut.truncated  # cut off: never a score, even with a visible number


def test_score_token_located_by_offsets_and_the_old_rule_fails_here():
    lps = [dict(alts) for alts in r1_logprobs(FINAL)({}, R1)]
    assert weighted_from_top_logprobs(lps, 1, 5)[0] == pytest.approx(OLD_BUG)  # the known-bad rule, kept
    s = score_reply(R1, "stop", tokenize(R1), lps)
    assert s.score == pytest.approx(4.1) and s.parsed == 4 and s.detail == "json; weighted"
    assert s.mass == pytest.approx(1.0)


# ---------------------------------------------------------------- R1 replies through the stage
@pytest.mark.parametrize("reasoning_parser", [False, True], ids=["think-in-content", "reasoning_content"])
def test_r1_scores_come_from_the_final_answer_token(cfg, tmp_path, reasoning_parser):
    with LLMTestServer(reply_fn=lambda body: R1, logprobs_fn=r1_logprobs(FINAL),
                       reasoning_parser=reasoning_parser) as srv:
        m = judge.run(cfg(srv.base_url))
        assert srv.bodies[0]["logprobs"] is True and srv.request_count == 28
    s = scores_of(tmp_path)
    assert len(s) == 28 and s["parse_ok"].all()
    assert s["score"].to_numpy() == pytest.approx([4.1] * 28)  # weighted at the answer's "4"
    assert not (s["score"] - OLD_BUG).abs().lt(0.05).any()      # the first-digit bug read 1.12 here
    assert (s["score_argmax"] == 4).all() and (s["detail"] == "json; weighted").all()
    assert s["digit_mass"].to_numpy() == pytest.approx([1.0] * 28)
    assert m["judge/truncated"] == 0 and m["judge/api_errors"] == 0 and m["judge/parse_failure_rate"] == 0


def test_logprobs_that_disagree_give_the_parsed_score_and_say_why(cfg, tmp_path):
    disagree = [("4", math.log(0.3)), ("3", math.log(0.6)), ("5", math.log(0.1))]  # emitted 4, but 3 favoured
    with LLMTestServer(reply_fn=lambda body: R1, logprobs_fn=r1_logprobs(disagree)) as srv:
        judge.run(cfg(srv.base_url))
    s = scores_of(tmp_path)
    assert (s["score"] == 4.0).all() and s["parse_ok"].all()
    assert (s["detail"] == "json; logprobs disagree (top 3 vs parsed 4)").all()


def test_truncated_and_unanswered_replies_are_nan_and_counted(cfg, tmp_path):
    def reply(body: dict, i: int) -> str | tuple[str, str]:
        user = criterion_of(body)
        if "評価基準: 流暢さ" in user:
            return "<think>採点は1から5。3点か", "length"  # cut off inside the reasoning
        if "評価基準: 無害性" in user:
            return '<think>短い</think>{"score": 5', "length"  # cut off in the answer
        if "評価基準: 一貫性" in user:
            return "<think>3点だろうか", "stop"  # stopped without leaving <think>
        return R1

    with LLMTestServer(reply_fn=reply, logprobs_fn=r1_logprobs(FINAL)) as srv:
        m = judge.run(cfg(srv.base_url))
    s = scores_of(tmp_path).set_index("criterion")
    for c in ("fluency", "harmlessness"):
        assert s.loc[c, "score"].isna().all() and s.loc[c, "detail"].str.startswith("truncated").all()
        assert m[f"judge/{c}/truncated"] == 4 and m[f"judge/{c}/parse_failures"] == 0
    assert s.loc["consistency", "score"].isna().all()
    assert s.loc["consistency", "detail"].str.contains("no final answer").all()
    assert m["judge/consistency/parse_failures"] == 4 and m["judge/consistency/truncated"] == 0
    assert s.loc["general_empathy", "score"].to_numpy() == pytest.approx([4.1] * 4)
    assert m["judge/truncated"] == 8 and m["judge/parse_failure_rate"] == pytest.approx(12 / 28)
    assert s.loc["fluency", "raw"].str.startswith("<think>").all()  # raw reply kept


def test_n_samples_mean_spread_and_count_of_parsed(cfg, tmp_path):
    def reply(body: dict, i: int) -> str | tuple[str, str]:
        if "評価基準: 流暢さ" in criterion_of(body):
            return "<think>まだ考え中", "length"  # every sample cut off
        return ['<think>…</think>{"score": 3}', '<think>…</think>{"score": 5}', ("<think>…", "length")][i]

    with LLMTestServer(reply_fn=reply) as srv:
        m = judge.run(cfg(srv.base_url, "judge.n=3", "judge.logprobs=false"))
        assert all(b["n"] == 3 for b in srv.bodies)
    s = scores_of(tmp_path).set_index("criterion")
    ok = s.drop(index="fluency")
    assert (ok["score"] == 4.0).all() and (ok["score_std"] == 1.0).all() and (ok["score_argmax"] == 4).all()
    assert (ok["detail"] == "json; 2/3 parsed, 1 truncated").all()
    assert json.loads(ok["raw"].iloc[0])[1] == '<think>…</think>{"score": 5}'  # every sample kept
    assert s.loc["fluency", "score"].isna().all() and s.loc["fluency", "detail"].str.contains("0/3 parsed").all()
    assert m["judge/fluency/truncated"] == 4 and m["judge/truncated"] == 4


# ---------------------------------------------------------------- run-level failure accounting
def always_500_for_fluency(body: dict) -> str | None:
    return "500" if "評価基準: 流暢さ" in criterion_of(body) else None


def test_failures_over_the_limit_stop_the_stage_and_the_rerun_asks_only_for_them(cfg, tmp_path):
    with LLMTestServer(reply_fn=lambda body: R1, behaviour_fn=always_500_for_fluency) as srv:
        with pytest.raises(UserError, match=r"4 of 28 requests to .* failed after retries \(14\.3% > "
                                            r"max_failure_rate 2\.0%\); first error: HTTP 500: scripted 500"):
            judge.run(cfg(srv.base_url, "judge.max_retries=2"))
        assert srv.request_count == 24 + 4 * 3  # every fluency request tried 1 + 2 times
        assert not (tmp_path / "artifacts" / "judge" / "vllm" / "scores.parquet").exists()
        assert not (tmp_path / "reports" / "judge" / "vllm" / "metrics.json").exists()
        srv.behaviour_fn = None  # the server recovers
        before = srv.request_count
        m = judge.run(cfg(srv.base_url, "judge.max_retries=2"))
        assert srv.request_count - before == 4  # only the failed requests; 24 answers came from the cache
    assert m["judge/cache_hits"] == 24 and m["judge/model_calls"] == 4 and m["judge/api_errors"] == 0
    assert scores_of(tmp_path)["parse_ok"].all()


def test_failures_under_the_limit_complete_with_api_errors_counted(cfg, tmp_path):
    with LLMTestServer(reply_fn=lambda body: R1, behaviour_fn=always_500_for_fluency) as srv:
        m = judge.run(cfg(srv.base_url, "judge.max_retries=1", "judge.max_failure_rate=0.2"))
    s = scores_of(tmp_path).set_index("criterion")
    assert s.loc["fluency", "score"].isna().all()
    assert s.loc["fluency", "detail"].str.startswith("error: HTTP 500").all()
    assert m["judge/api_errors"] == 4 and m["judge/fluency/parse_failures"] == 0
    assert read_metrics(tmp_path / "reports" / "judge" / "vllm" / "metrics.json").metrics["judge/api_errors"] == 4


def test_dead_server_fails_in_seconds_not_hours(cfg, tmp_path):
    srv = LLMTestServer()
    url = srv.base_url
    srv.stop()  # the port is closed: connection refused
    start = time.monotonic()
    # one request at a time, default backoff, 5 retries: without the circuit breaker ~7 × 15 s of backoff
    with pytest.raises(UserError, match=r"all 28 requests .* failed, e\.g\. circuit open: 5 consecutive "
                                        r"connection errors .*Connect"):
        judge.run(cfg(url, "++preflight=false", "judge.max_retries=5", "judge.backoff_s=1.0",
                      "judge.max_backoff_s=30", "judge.concurrency=1"))
    assert time.monotonic() - start < 8
    assert not (tmp_path / "artifacts" / "judge" / "vllm" / "scores.parquet").exists()
