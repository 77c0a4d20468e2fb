"""Judge stage: parser, rubric, hf_local shared-prefix scoring with a real model, openai backend against a
real local HTTP server (faults, retries, cache, judge isolation, resume), and the secrets guarantee."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, SAMPLE, compose_cfg
from emplifai.judge import __main__ as judge
from emplifai.judge.parse import parse_score, weighted_from_top_logprobs, weighted_score
from emplifai.judge.rubric import JudgeItem, JudgePrompt, Rubric, RubricError
from emplifai.prepare import __main__ as prepare
from llm_testserver import LLMTestServer

FAST = ["judge.backoff_s=0.005", "judge.max_backoff_s=0.02"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The shipped sample, prepared once per module (132/18/18 dialogues, 48 rated responses)."""
    base = tmp_path_factory.mktemp("prep")
    prepare.run(compose_cfg([f"data.raw_dir={SAMPLE}", f"paths.artifacts={base}/artifacts",
                             f"paths.reports={base}/reports", "mlflow.enabled=false"]))
    return base / "artifacts" / "prepare"


@pytest.fixture
def jcfg(tmp_path, prepared):
    """compose(overrides) with the prepared sample copied under tmp_path and a fresh judge cache."""
    shutil.copytree(prepared, tmp_path / "artifacts" / "prepare")

    def _make(*overrides: str):
        return compose_cfg([f"paths.root={tmp_path}", f"paths.models={ROOT}/models", f"paths.artifacts={tmp_path}/artifacts",
                            f"paths.reports={tmp_path}/reports", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                            f"judge.cache={tmp_path}/judge.sqlite", *overrides])

    return _make


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("reply, score, method", [
    ('{"score": 4}', 4.0, "json"),
    ('```json\n{"score": "5"}\n```', 5.0, "json"),
    ('<think>迷うが 2 か 3</think>{"score": 3}', 3.0, "json"),
    ("この応答は共感的です。点数: 4", 4.0, "regex"),
    ("Score: 2 (the reply ignores the feeling)", 2.0, "regex"),
    ("４", 4.0, "regex"),
    ("3/5", 3.0, "regex"),
])
def test_parser_accepts_json_then_strict_regex(reply, score, method):
    p = parse_score(reply, 1, 5)
    assert (p.score, p.ok, p.method) == (score, True, method)


@pytest.mark.parametrize("reply, why", [
    ('{"score": 7}', "outside"), ("点数: 0", "outside"), ('{"score": "good"}', "numeric"),
    ("I think this is a fine reply.", "no score"), ("", "empty"), (None, "no reply"),
    ("点数: 2、いや点数: 4", "ambiguous"), ("}{garbage", "no score"),
])
def test_parser_failures_are_nan_never_zero(reply, why):
    p = parse_score(reply, 1, 5)
    assert math.isnan(p.score) and not p.ok and why in p.method


def test_weighted_scores_from_probabilities_and_logprobs():
    assert weighted_score({1: 0.0, 2: 0.1, 3: 0.1, 4: 0.0, 5: 0.0}) == (2.5, 2, 0.2)
    w, arg, mass = weighted_from_top_logprobs(
        [{'{"': -0.01}, {"score": -0.01}, {"4": math.log(0.6), "5": math.log(0.2), "x": math.log(0.2)}], 1, 5)
    assert w == pytest.approx((4 * 0.6 + 5 * 0.2) / 0.8) and arg == 4 and mass == pytest.approx(0.8)
    assert math.isnan(weighted_from_top_logprobs([{"a": -0.1}], 1, 5)[0])


# ---------------------------------------------------------------- rubric
def test_rubric_any_criteria_set_and_bad_rubric(tmp_path):
    cfg = compose_cfg([])
    r = Rubric.from_config(cfg.judge)
    assert r.keys == list(cfg.data.criteria) and (r.lo, r.hi) == (1, 5)
    assert [c.key for c in r.criteria if c.with_emotion] == ["emotion_specific_empathy"]
    three = {"name": "mini", "criteria": [{"key": k, "ja": k, "definition": "d", "anchors": {i: "a" for i in range(1, 6)}}
                                          for k in ("fluency", "harmlessness", "general_empathy")]}
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(three), encoding="utf-8")
    mini = Rubric.from_config(compose_cfg([f"judge.rubric_file={tmp_path}/mini.yaml"]).judge)
    assert mini.keys == ["fluency", "harmlessness", "general_empathy"]
    three["criteria"][0]["anchors"] = {1: "a", 5: "b"}
    with pytest.raises(RubricError, match="anchors must cover 1..5"):
        Rubric.from_mapping(three, "bad.yaml")


def test_prompt_hides_system_and_shows_emotion_only_where_asked():
    cfg = compose_cfg([])
    r = Rubric.from_config(cfg.judge)
    b = JudgePrompt(cfg.judge.grading_prompt, r)
    item = JudgeItem("r1", "d1", "SECRET_SYSTEM", "rated", "状況", "患者", "応答", "悲しみ")
    prompts = {c.key: b.full_prompt(item, c) for c in r.criteria}
    assert not any("SECRET_SYSTEM" in p for p in prompts.values())
    assert "悲しみ" in prompts["emotion_specific_empathy"] and "悲しみ" not in prompts["fluency"]
    assert all(p.endswith("点数:") for p in prompts.values())
    assert not any("SECRET_SYSTEM" in m["content"] for m in b.chat_messages(item, r.criteria[0]))


# ---------------------------------------------------------------- hf_local (real model)
MINI = {"name": "mini3", "criteria": [
    {"key": "general_empathy", "ja": "共感", "definition": "気持ちに寄り添うか", "anchors": {1: "なし", 2: "少し", 3: "普通", 4: "良い", 5: "深い"}},
    {"key": "emotion_specific_empathy", "ja": "感情", "definition": "感情に応じるか", "with_emotion": True,
     "anchors": {1: "誤り", 2: "少し", 3: "普通", 4: "良い", 5: "的確"}},
    {"key": "fluency", "ja": "流暢さ", "definition": "自然な日本語か", "anchors": {1: "否", 2: "低", 3: "中", 4: "高", 5: "完璧"}}]}


def test_hf_local_real_model_shared_prefix_equals_independent_and_caches(jcfg, tmp_path):
    """SmolLM2-135M judges 2 responses for real (short 3-criterion rubric: SmolLM2 splits Japanese into
    many tokens; the full rubric with Gemma runs in the slow test below)."""
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(MINI, allow_unicode=True), encoding="utf-8")
    base = ("judge.model=smollm2-135m", "judge.stratified_n=2", f"judge.rubric_file={tmp_path}/mini.yaml",
            "mlflow.enabled=false")
    metrics = judge.run(jcfg(*base))
    scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "hf_local" / "scores.parquet")
    assert len(scores) == 2 * 3 and scores["parse_ok"].all()
    assert scores["score"].between(1, 5).all() and scores["score_argmax"].isin([1, 2, 3, 4, 5]).all()
    assert metrics["judge/model_calls"] == 6 and metrics["judge/cache_hits"] == 0
    again = judge.run(jcfg(*base))  # rerun: zero model calls, same grades
    assert again["judge/model_calls"] == 0 and again["judge/cache_hits"] == 6
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "artifacts/judge/hf_local/scores.parquet"), scores)
    slow = judge.run(jcfg(*base, "judge.batch_criteria=false", "judge.name=independent"))
    assert slow["judge/model_calls"] == 6  # own cache namespace: never reuses the shared-prefix grades
    ind = pd.read_parquet(tmp_path / "artifacts" / "judge" / "independent" / "scores.parquet")
    assert (ind["score"] - scores["score"]).abs().max() < 1e-4
    assert (ind["score_argmax"] == scores["score_argmax"]).all()
    assert metrics["judge/truncated_prompts"] == 0 and metrics["judge/longest_prompt_tokens"] > 100
    assert math.isnan(again["judge/truncated_prompts"])  # every grade cached: no prompt was read, nothing known
    # model.max_length below the longest prompt: the context is cut (counted), and the cut prompts are another
    # cache namespace (the model read other tokens)
    short = metrics["judge/longest_prompt_tokens"] - 5
    cut = judge.run(jcfg(*base, "model=smollm2-135m", f"model.max_length={short}", "judge.name=cut"))
    assert cut["judge/truncated_prompts"] >= 1 and cut["judge/model_calls"] == 6
    for name in ("summary.csv", "length_bias.csv", "scores_heatmap.png", "length_bias.png", "metrics.json"):
        assert (tmp_path / "reports" / "judge" / "hf_local" / name).stat().st_size > 0


@pytest.mark.slow
def test_hf_local_gemma_full_rubric_stage(jcfg, tmp_path):
    """The default judge (Gemma-3-270M, seven criteria) on a stratified handful of the sample."""
    m = judge.run(jcfg("judge.stratified_n=4"))
    scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "hf_local" / "scores.parquet")
    assert len(scores) == 28 and scores["score"].between(1, 5).all() and m["judge/parse_failure_rate"] == 0
    assert set(scores["system"]) >= {"human"}


# ---------------------------------------------------------------- openai backend (real local HTTP server)
def judge_reply(body: dict) -> str:
    """A scripted judge: fluency → garbage, harmlessness → out of range, others → JSON by response length."""
    user = body["messages"][-1]["content"]
    if "評価基準: 流暢さ" in user:
        return "よく分かりません。"
    if "評価基準: 無害性" in user:
        return '{"score": 9}'
    return json.dumps({"score": 1 + len(user) % 5})


def openai_overrides(srv: LLMTestServer, *extra: str) -> list[str]:
    return ["judge=openai", f"judge.base_url={srv.base_url}", "judge.model=test-model", "judge.api_key_env=null",
            "judge.stratified_n=4",
            "judge.show_progress=false", "judge.timeout_s=2", "mlflow.enabled=false", *FAST, *extra]


def test_openai_judge_parse_failures_retries_cache_and_isolation(jcfg, tmp_path):
    with LLMTestServer(reply_fn=judge_reply, script=["429", "500", "malformed"], retry_after=0.05,
                       models=("test-model", "another-judge")) as srv:
        m = judge.run(jcfg(*openai_overrides(srv)))
        scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet")
        assert len(scores) == 28 and srv.request_count == 28 + 3  # three faults retried, none dropped
        by = scores.set_index(["criterion"]).sort_index()
        assert by.loc["fluency", "score"].isna().all() and not by.loc["fluency", "parse_ok"].any()
        assert by.loc["fluency", "raw"].eq("よく分かりません。").all()  # raw reply kept
        assert by.loc["harmlessness", "score"].isna().all()  # out of range is a failure, not clipped
        assert by.loc["general_empathy", "score"].between(1, 5).all()
        assert m["judge/fluency/parse_failure_rate"] == 1.0 and m["judge/general_empathy/parse_failure_rate"] == 0
        assert m["judge/parse_failure_rate"] == pytest.approx(2 / 7)
        again = judge.run(jcfg(*openai_overrides(srv)))
        assert again["judge/model_calls"] == 0 and srv.request_count == 31  # rerun: zero requests
        other = judge.run(jcfg(*openai_overrides(srv, "judge.model=another-judge", "judge.name=other")))
        assert other["judge/model_calls"] == 28  # another judge model never gets these grades
        assert {b["model"] for b in srv.bodies[-28:]} == {"another-judge"}


@pytest.mark.slow
def test_openai_judge_against_transformers_serve(jcfg, tmp_path, real_llm_server):
    """The real thing: transformers' own OpenAI-compatible server (it ignores json mode and logprobs)."""
    over = ["judge=openai", f"judge.base_url={real_llm_server.base_url}", f"judge.model={real_llm_server.model}",
            "judge.api_key_env=null", "judge.stratified_n=1", "judge.max_tokens=12", "judge.timeout_s=120",
            "judge.concurrency=2", "judge.show_progress=false", "mlflow.enabled=false", *FAST]
    m = judge.run(jcfg(*over))
    scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet")
    assert len(scores) == 7 and m["judge/model_calls"] == 7
    assert not scores["detail"].astype(str).str.startswith("error").any()  # every request answered
    assert (scores["raw"].str.len() > 0).all()                               # real replies kept
    parsed = scores[scores["parse_ok"]]
    assert parsed["score"].between(1, 5).all() and scores.loc[~scores["parse_ok"], "score"].isna().all()
    assert m["judge/parse_failure_rate"] == pytest.approx(1 - len(parsed) / 7)
    assert judge.run(jcfg(*over))["judge/model_calls"] == 0                   # rerun: from the cache


def test_openai_every_request_failing_is_a_setup_error(jcfg, tmp_path):
    from emplifai.core.errors import UserError

    with LLMTestServer(default="400") as srv:  # e.g. a model id the server does not serve
        with pytest.raises(UserError, match=r"all 7 requests to .* failed, e.g. HTTP 400.*check base_url, model"):
            judge.run(jcfg(*openai_overrides(srv, "judge.stratified_n=1")))
    assert not (tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet").exists()  # no all-NaN table


def test_openai_hang_past_timeout_is_nan_not_abort(jcfg, tmp_path):
    with LLMTestServer(reply_fn=judge_reply, script=["hang"], hang_s=5) as srv:
        m = judge.run(jcfg(*openai_overrides(srv, "judge.stratified_n=1", "judge.max_retries=0", "judge.timeout_s=0.5",
                                             "judge.concurrency=1", "judge.max_failure_rate=null")))
    scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet")
    assert len(scores) == 7 and scores["detail"].str.startswith("error: timeout").sum() == 1
    assert m["judge/responses"] == 1


CRASH = """
import sys
from emplifai.judge import __main__ as judge
from conftest import compose_cfg
judge.run(compose_cfg(sys.argv[1:]))
"""


def test_openai_resume_after_killed_run(jcfg, tmp_path):
    """A run killed after 10 answers resumes: the rerun only asks for the remaining 18."""
    with LLMTestServer(reply_fn=judge_reply, block_after=10) as srv:
        args = [f"paths.root={tmp_path}", f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/rep",
                f"judge.cache={tmp_path}/judge.sqlite", "mlflow.enabled=false", "judge.concurrency=1",
                *openai_overrides(srv, "judge.timeout_s=60")]
        proc = subprocess.Popen([sys.executable, "-c", CRASH, *args], cwd=ROOT / "tests",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while srv.ok_count < 10 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        assert not (tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet").exists()  # nothing half-written
        srv.block_after = None
        before = srv.request_count
        m = judge.run(jcfg(*openai_overrides(srv)))
    assert m["judge/model_calls"] == 18 and srv.request_count - before == 18 and m["judge/cache_hits"] == 10


def test_api_key_never_in_mlflow_logs_or_reports(tmp_path, prepared):
    key = "sk-proj-Zq8VtN3rXb7LmK2pQw9YhE4dFg6JsA1uC5oI0"
    shutil.copytree(prepared, tmp_path / "artifacts" / "prepare")
    env = {**os.environ, "EMPLIFAI_JUDGE_API_KEY": key, "HF_HUB_OFFLINE": "1"}
    with LLMTestServer(reply_fn=judge_reply, script=["500"], echo_auth_in_errors=True) as srv:
        proc = subprocess.run([sys.executable, "-m", "emplifai.judge", f"paths.root={tmp_path}",
                               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                               *[o for o in openai_overrides(srv) if o not in ("judge.api_key_env=null", "mlflow.enabled=false")],
                               "judge.max_retries=0", "judge.max_failure_rate=null"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert all(h.get("Authorization") == f"Bearer {key}" for h in srv.headers)  # the key was really used
    assert key not in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id])
    assert run.data.params["judge.api_key_env"] == "EMPLIFAI_JUDGE_API_KEY"
    assert key not in json.dumps([run.data.params, run.data.tags, run.data.metrics])
    dest = tmp_path / "downloaded"
    dest.mkdir()
    client.download_artifacts(run.info.run_id, "", str(dest))
    scanned = [p for d in (dest, tmp_path / "logs", tmp_path / "reports", tmp_path / "artifacts" / "judge")
               for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in scanned) and any(p.name == "parse_failures.csv" for p in scanned)
    failed = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet")
    assert failed["detail"].str.contains(r"\*\*\*").any()  # the echoed key was redacted in the error kept
    for path in scanned:
        assert key.encode() not in path.read_bytes(), path
