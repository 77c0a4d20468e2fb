"""Stage `emotion`: predictors end to end, invalid answers, BERTScore/word-vector scores, the openai predictor
against a real local HTTP server with injected faults, and per-emotion aggregation (label separation, chiVe and
rescaled scores: test_emotion_scores.py)."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import read_metrics
from emplifai.data.taxonomy import Taxonomy
from emplifai.emotion import __main__ as emotion
from emplifai.emotion import breakdown, scoring, wordvec
from emplifai.emotion.fasttext_model import train_vectors
from emplifai.emotion.predictors import answer_cleaner
from emplifai.emotion.prompt import clean_answer
from emplifai.metrics.bertscore import BertScorer
from emplifai.metrics.bootstrap import mean_with_ci
from llm_testserver import LLMTestServer

torch.set_num_threads(2)
PREPARED = ROOT / "artifacts" / "prepare"
ENCODER = {"name": "e5-small", "path": str(ROOT / "models/base/e5-small"), "num_layers": 9}
needs_models = pytest.mark.skipif(not (ROOT / "models/base/gemma3-270m/config.json").exists()
                                  or not (ROOT / "models/base/e5-small/config.json").exists(),
                                  reason="run `dvc repro models` first")


@pytest.fixture(scope="module")
def scorer() -> BertScorer:
    return BertScorer(ENCODER)


@pytest.fixture
def prepared(tmp_path, make_cfg):
    """A config whose artifacts/prepare holds the shipped sample's prepared splits."""
    from emplifai.prepare import __main__ as prepare

    def _cfg(*overrides: str):
        cfg = make_cfg(f"data.raw_dir={ROOT / 'src/emplifai/sample'}", *overrides)
        if not (tmp_path / "artifacts/prepare/test.parquet").exists():
            prepare.run(cfg)
        return cfg

    return _cfg


def _runs(cfg) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([exp.experiment_id], "tags.stage = 'emotion'")


# ---- scores -------------------------------------------------------------------------------------------

@needs_models
def test_bertscore_identity_synonyms_and_matches_bert_score(scorer):
    from bert_score import score

    cands = ["不安", "心配", "安心", "とても不安です", "喜び", "不安"]
    refs = ["不安", "不安", "不安", "不安", "悲嘆", "不安"]
    ours = scorer.score(cands, refs)
    assert ours[0] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert ours[1, 2] > ours[2, 2]          # 心配 (worry) is closer to 不安 (anxiety) than 安心 (relief)
    p, r, f = score(cands, refs, model_type=ENCODER["path"], num_layers=9, idf=False)
    np.testing.assert_allclose(ours, torch.stack([p, r, f], -1).numpy(), atol=1e-6)
    idx, f1 = scorer.nearest(["しんぱい", "うれしい気持ち"], ["不安", "喜び", "怒り"])[0]
    assert 0 <= idx < 3 and 0 < f1 <= 1


def test_fasttext_cosine_symmetric_and_bounded(tmp_path):
    train = pd.read_parquet(PREPARED / "train.parquet") if PREPARED.exists() else None
    texts = (train[["situation", "patient"]].to_numpy().ravel().tolist() if train is not None
             else ["今日はとても不安です。", "手術が怖い。", "家族に感謝している。"] * 10)
    cfg = {"cache_dir": str(tmp_path), "dim": 20, "epoch": 3, "min_count": 1, "minn": 1, "maxn": 3,
           "bucket": 20000}
    vec = train_vectors(cfg, texts, seed=1)
    again = train_vectors(cfg, texts, seed=1)
    assert again.path == vec.path                       # cached by corpus + params hash
    pairs = [("不安", "心配"), ("喜び", "悲嘆"), ("手術が怖い", "恐れ"), ("感謝", "感謝")]
    for a, b in pairs:
        c = vec.cosine(a, b)
        assert -1.0 <= c <= 1.0 and c == pytest.approx(vec.cosine(b, a), abs=1e-12)
    assert vec.cosine("感謝", "感謝") == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(vec.cosine("", "不安"))            # no text → missing, never 0
    # the same file as emotion.vectors.source=fasttext_bin (how cc.ja.300.bin is read), named by its source
    given = wordvec.load({"vectors": {"source": "fasttext_bin", "fasttext_bin": str(vec.path)}, "fasttext": cfg}, [], 1)
    assert given.source == "fasttext_bin" and given.cosine("不安", "心配") == pytest.approx(vec.cosine("不安", "心配"))
    with pytest.raises(UserError, match="fasttext_bin"):
        wordvec.load({"vectors": {"source": "fasttext_bin", "fasttext_bin": None}, "fasttext": cfg}, [], 1)
    with pytest.raises(UserError, match="expected one of"):
        wordvec.load({"vectors": {"source": "glove"}, "fasttext": cfg}, [], 1)


def test_clean_answer_marks_invalid_and_keeps_raw():
    clean = answer_cleaner({"refusal_patterns": ["わかりません", "申し訳"], "max_answer_chars": 12})
    assert clean("感情：「不安」。\n次の対話…").text == "不安"
    assert clean("  喜び  ").valid
    for raw, reason in [("", "empty answer"), ("\n\n", "empty answer"), ("わかりません", "refusal"),
                        ("申し訳ありませんが答えられません", "refusal"), ("？？？!!", "empty answer"),
                        ("12345", "garbled answer"), ("\ufffd\ufffd", "garbled answer"),
                        ("この患者はとても長い説明の感情を持っています", "answer longer than 12 characters")]:
        a = clean(raw)
        assert not a.valid and a.reason == reason and a.raw == raw, raw
    assert clean_answer(None, __import__("re").compile("x^"), 10).reason == "no answer"


def test_per_emotion_aggregation_on_hand_made_table():
    tax = Taxonomy.from_mapping({"name": "t", "emotions": [{"key": "joy", "ja": "喜び"}, {"key": "fear", "ja": "恐れ"},
                                                           {"key": "relief", "ja": "安堵"}]}, "t")
    pred = pd.DataFrame({
        "gold":   ["joy", "joy", "joy", "joy", "fear", "fear"],
        "label":  ["joy", "fear", "fear", "", "fear", "relief"],
        "valid":  [True, True, True, False, True, True],
        "bertscore_f1": [1.0, 0.8, 0.6, np.nan, 1.0, 0.7],
        "wordvec_cos": [1.0, 0.5, 0.3, np.nan, 1.0, 0.2],
    })
    table = breakdown.per_emotion(pred, tax, (500, 0.95, 0)).set_index("emotion")
    joy, fear, relief = table.loc["joy"], table.loc["fear"], table.loc["relief"]
    assert (joy.n, joy.n_valid, joy.invalid_rate) == (4, 3, 0.25)
    assert joy.accuracy == pytest.approx(1 / 3) and joy.bertscore_f1 == pytest.approx(0.8)
    assert joy.wordvec_cos == pytest.approx(0.6) and joy.most_confused_with == "fear"
    # CIs resample that emotion's dialogues: the same numbers as the stage's bootstrap on those values alone
    _, lo, hi, _ = mean_with_ci([1.0, 0.8, 0.6], 500, 0, 0.95)
    assert (joy.bertscore_f1_ci_low, joy.bertscore_f1_ci_high) == pytest.approx((lo, hi))
    assert 0.6 <= joy.bertscore_f1_ci_low < 0.8 < joy.bertscore_f1_ci_high <= 1.0
    assert joy.accuracy_ci_low == 0.0 and 2 / 3 <= joy.accuracy_ci_high <= 1.0
    assert fear.wordvec_cos_ci_low < fear.wordvec_cos < fear.wordvec_cos_ci_high
    assert math.isnan(relief.bertscore_f1_ci_low) and math.isnan(relief.accuracy_ci_high)
    assert fear.accuracy == 0.5 and fear.most_confused_with == "relief" and fear.bertscore_f1 == pytest.approx(0.85)
    assert relief.n == 0 and math.isnan(relief.accuracy) and math.isnan(relief.bertscore_f1)
    conf = breakdown.confusion(pred, tax)
    assert conf.loc["joy", "fear"] == 2 and conf.loc["joy", breakdown.NO_LABEL] == 1 and conf.to_numpy().sum() == 6
    metrics, reasons = scoring.metrics(pred.assign(bertscore_p=pred.bertscore_f1, bertscore_r=pred.bertscore_f1),
                                       resamples=200, confidence=0.95, seed=0)
    assert metrics["emotion/invalid_rate"] == pytest.approx(1 / 6) and metrics["emotion/n_valid"] == 5
    assert metrics["emotion/accuracy"] == pytest.approx(2 / 5) and not reasons
    assert metrics["emotion/bertscore_f1_ci_low"] <= metrics["emotion/bertscore_f1"] <= \
        metrics["emotion/bertscore_f1_ci_high"]
    none, why = scoring.metrics(pred.assign(valid=False, bertscore_p=np.nan, bertscore_r=np.nan), 50, 0.95, 0)
    assert none["emotion/invalid_rate"] == 1.0 and math.isnan(none["emotion/accuracy"])
    assert math.isnan(none["emotion/bertscore_f1"]) and "emotion/bertscore_f1" in why


# ---- predictors end to end ----------------------------------------------------------------------------

@needs_models
def test_fasttext_clf_stage_end_to_end(prepared, tmp_path):
    cfg = prepared("emotion.predictors=null", "predictor=fasttext_clf", "emotion.fasttext.epoch=3",
                   "emotion.fasttext.dim=20")
    out = emotion.run(cfg)
    pred = pd.read_parquet(tmp_path / "artifacts/emotion/fasttext_clf/predictions.parquet")
    assert len(pred) == 18 and pred["valid"].all() and (pred["method"] == "classifier").all()
    assert set(pred["label"]) <= set(Taxonomy.from_config(cfg.taxonomy).keys)
    assert pred["bertscore_f1"].between(0, 1 + 1e-6).all()
    assert (pred["wordvec_cos"].between(-1, 1) | (pred["wordvec_note"] != "")).all()
    exact = pred["label"] == pred["gold"]
    assert np.allclose(pred.loc[exact, "bertscore_f1"], 1.0, atol=1e-5)   # right label = gold name
    assert out["emotion/fasttext_clf/accuracy"] == pytest.approx(exact.mean())
    assert 0 <= out["emotion/fasttext_clf/val_accuracy"] <= 1
    summary = read_metrics(tmp_path / "reports/emotion/metrics.json")
    assert list(summary.metrics) == list(out)                  # all predictors' metrics, as the stage returns them
    assert np.allclose(list(summary.metrics.values()), list(out.values()), equal_nan=True)
    assert read_metrics(tmp_path / "artifacts/emotion/fasttext_clf/metrics.json").tags["predictor"] == "fasttext_clf"
    per = pd.read_csv(tmp_path / "reports/emotion/fasttext_clf/per_emotion.csv")
    assert len(per) == 28 and per["n"].sum() == 18 and {"wordvec_cos_ci_low", "accuracy_ci_high"} <= set(per)
    assert (tmp_path / "reports/emotion/fasttext_clf/confusion.png").stat().st_size > 10_000
    assert (tmp_path / "reports/emotion/label_separation.png").stat().st_size > 10_000
    assert pd.read_csv(tmp_path / "reports/emotion/label_separation.csv", index_col="key").shape == (28, 29)
    (run,) = _runs(cfg)
    assert run.data.tags["predictor"] == "fasttext_clf" and run.data.tags["vectors"] == "chive"
    assert run.data.metrics["emotion/accuracy"] == pytest.approx(exact.mean())
    assert "emotion/bertscore_f1_ci_low" in run.data.metrics and "emotion/wordvec_cos_rescaled" in run.data.metrics
    assert run.data.metrics["emotion/labels/wordvec_coverage"] == 1.0
    assert run.data.metrics["emotion/labels/wordvec_cos_offdiag_mean"] < 0.5


@needs_models
def test_hf_rank_and_hf_generate_with_gemma(prepared, tmp_path):
    """Both LM predictors in one stage run (one MLflow run each), on 2 dialogues with the real Gemma."""
    cfg = prepared("emotion.predictors=[hf_rank,hf_generate]", "emotion.first_n=2",
                   "emotion.fasttext.epoch=2", "emotion.fasttext.dim=20",
                   # zero-shot keeps the CPU test short (the stage default is few-shot): emotion.overrides
                   "++emotion.overrides.hf_rank.prompt.few_shot=0", "++emotion.overrides.hf_generate.prompt.few_shot=0",
                   "++emotion.overrides.hf_generate.max_new_tokens=3", "++emotion.overrides.hf_generate.batch_size=2")
    emotion.run(cfg)
    rank = pd.read_parquet(tmp_path / "artifacts/emotion/hf_rank/predictions.parquet")
    assert len(rank) == 2 and rank["valid"].all() and (rank["method"] == "rank").all()
    assert (rank["text"] == rank["label_ja"]).all()
    assert np.isfinite(rank["confidence"]).all()  # calibrated: mean log-prob minus the content-free prior
    gen = pd.read_parquet(tmp_path / "artifacts/emotion/hf_generate/predictions.parquet")
    assert len(gen) == 2 and gen["raw"].map(lambda r: isinstance(r, str)).all()
    assert set(gen["method"]) <= {"exact", "nearest", "invalid"}
    assert gen.loc[gen["valid"], "label"].ne("").all() and gen.loc[~gen["valid"], "bertscore_f1"].isna().all()
    assert {r.data.tags["predictor"] for r in _runs(cfg)} == {"hf_rank", "hf_generate"}
    summary = read_metrics(tmp_path / "reports/emotion/metrics.json").metrics
    assert {k.split("/")[1] for k in summary} == {"hf_rank", "hf_generate"}


@needs_models
def test_rank_shared_cache_matches_full_forward():
    """The KV-cache paths give the same scores as one full forward per label (tiny prompt, real Gemma)."""
    from emplifai.emotion.hf import Ranker
    from emplifai.lm import load_causal_lm

    model, tok = load_causal_lm({"name": "g", "path": str(ROOT / "models/base/gemma3-270m")})
    prefix = "次の患者の感情を答えてください。\n患者：手術が怖いです。\n感情：恐れ\n\n"
    prompt = prefix + "患者：退院できて本当にうれしい。\n感情："
    names = ["喜び\n", "恐れ\n", "不賛成\n", "恥ずかしさ\n"]
    fast = Ranker(model, tok, prefix, names).scores(prompt)
    slow = Ranker(model, tok, prefix, names, shared_cache=False).scores(prompt)
    np.testing.assert_allclose(fast, slow, atol=1e-3)
    assert fast.argmax() == slow.argmax()
    batched = Ranker(model, tok, prefix, names).scores_batch([prompt, prefix + "患者：眠れない。\n感情："], batch_size=2)[0]
    np.testing.assert_allclose(batched, slow, atol=1e-3)  # what hf_rank runs: dialogues packed per forward


@pytest.mark.slow
@needs_models
def test_openai_predictor_against_transformers_serve(prepared, tmp_path, real_llm_server):
    """The real thing: transformers' own OpenAI-compatible server generating with SmolLM2."""
    cfg = _openai_cfg(prepared, real_llm_server.base_url, tmp_path, model=real_llm_server.model, timeout_s=120,
                      concurrency=2, max_tokens=8)
    emotion.run(cfg)
    pred = pd.read_parquet(tmp_path / "artifacts/emotion/openai/predictions.parquet")
    assert len(pred) == 6 and (pred["raw"].str.len() > 0).all(), pred[["raw", "reason"]]  # real replies, all kept
    assert not pred["reason"].str.startswith("API error").any()
    ok, bad = pred[pred["valid"]], pred[~pred["valid"]]
    assert ok["bertscore_f1"].between(0, 1).all() and (ok["label"] != "").all()
    assert bad[["bertscore_f1", "wordvec_cos"]].isna().all().all() and (bad["reason"] != "").all()
    emotion.run(cfg)                                   # rerun: every answer from the cache
    runs = sorted(_runs(cfg), key=lambda r: r.info.start_time)
    assert [r.data.metrics["emotion/cache_hits"] for r in runs] == [0, 6]
    again = pd.read_parquet(tmp_path / "artifacts/emotion/openai/predictions.parquet")
    assert again["raw"].tolist() == pred["raw"].tolist()


# ---- openai predictor against a real local HTTP server ------------------------------------------------

def _openai_cfg(prepared, base_url: str, tmp_path, **extra):
    over = [f"predictor.{k}={v}" for k, v in extra.items()]
    return prepared("predictor=openai", f"predictor.base_url={base_url}", "predictor.model=test-model",
                    "predictor.api_key_env=null",
                    "predictor.timeout_s=1", "predictor.max_retries=2", "predictor.backoff_s=0.01",
                    "predictor.show_progress=false", f"predictor.cache={tmp_path}/llm.sqlite",
                    "emotion.first_n=6", "emotion.fasttext.epoch=2", "emotion.fasttext.dim=20",
                    "predictor.max_failure_rate=null", "emotion.predictors=null", *over)


@needs_models
def test_openai_predictor_faults_invalid_answers_and_cache(prepared, tmp_path):
    answers = iter(["感情：不安", "", "申し訳ありませんが、お答えできません。", "しんぱい", "喜び", "喜び"])
    lock = __import__("threading").Lock()

    def reply(body: dict) -> str:
        with lock:
            return next(answers, "喜び")

    # request 1: 429 then ok; request 2: 500 then ok; one malformed reply, retried; one hang → timeout
    script = ["429", "ok", "500", "ok", "malformed", "ok", "ok", "hang", "hang", "hang", "ok"]
    with LLMTestServer(script=script, reply_fn=reply, retry_after=0, hang_s=3) as srv:
        cfg = _openai_cfg(prepared, srv.base_url, tmp_path, concurrency=1)
        emotion.run(cfg)
        first_count = srv.request_count
        pred = pd.read_parquet(tmp_path / "artifacts/emotion/openai/predictions.parquet")
        assert len(pred) == 6
        invalid = pred[~pred["valid"]]
        assert set(invalid["reason"]) >= {"empty answer", "refusal"}
        assert any(r.startswith("API error") for r in invalid["reason"])        # the timed-out request
        assert invalid[["bertscore_f1", "wordvec_cos"]].isna().all().all()
        assert (invalid["label"] == "").all()
        assert pred.loc[invalid.index[invalid["reason"] == "refusal"][0], "raw"].startswith("申し訳")
        ok = pred[pred["valid"]]
        assert ok["bertscore_f1"].notna().all() and set(ok["method"]) <= {"exact", "nearest"}
        assert (ok.loc[ok["text"] == "不安", "method"] == "exact").all()
        m = read_metrics(tmp_path / "artifacts/emotion/openai/metrics.json").metrics
        assert m["emotion/invalid_rate"] == pytest.approx(len(invalid) / 6) and m["emotion/n_valid"] == len(ok)

        emotion.run(cfg)                                     # rerun: answered from the cache, no new calls
        assert srv.request_count == first_count + 1         # only the request that failed is retried
    runs = _runs(cfg)
    assert len(runs) == 2 and all(r.data.tags["predictor"] == "openai" for r in runs)
    assert max(r.data.metrics["emotion/cache_hits"] for r in runs) == 5
    with sqlite3.connect(tmp_path / "llm.sqlite") as db:
        assert db.execute("select count(*) from sqlite_master").fetchone()[0] >= 1
