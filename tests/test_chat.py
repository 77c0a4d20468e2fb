"""One prompt layer: every local LM use honours `model.chat_format`. SmolLM2-135M-Instruct (ChatML) stands in
for the study's chat models (llm-jp, Swallow, MedLlama3, R1) in hf_rank, hf_generate and the hf_local judge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, compose_cfg
from emplifai.lm.chat import ChatFormat, ChatFormatError

torch.set_num_threads(2)
SMOL = ROOT / "models/base/smollm2-135m"
GEMMA = ROOT / "models/base/gemma3-270m"
needs_smol = pytest.mark.skipif(not (SMOL / "config.json").exists(), reason="run `dvc repro models` first")


@pytest.fixture(scope="module")
def smol():
    from emplifai.lm import load_causal_lm

    return load_causal_lm({"name": "smollm2-135m", "path": str(SMOL)})


@needs_smol
def test_chat_format_matches_the_template_and_plain_is_raw_text(smol):
    _, tok = smol
    fmt = ChatFormat.of(tok, "chat_template")
    user = "状況：入院中\n患者：眠れません。"
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": user}]
    assert fmt.render("SYS", user) == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    before, after = fmt.frame("SYS")
    assert before.endswith("<|im_start|>user\n") and after.endswith("<|im_start|>assistant\n")
    assert fmt.end_of_turn() == "<|im_end|>" and not fmt.add_special_tokens
    plain = ChatFormat.of(tok, "plain")
    assert plain.render("SYS", user) == "SYS\n\n" + user and plain.render("", user) == user
    assert plain.end_of_turn("\n") == "\n" and plain.add_special_tokens


@pytest.mark.skipif(not (GEMMA / "config.json").exists(), reason="run `dvc repro models` first")
def test_chat_format_without_a_template_is_a_clear_error():
    from emplifai.lm import load_tokenizer

    tok = load_tokenizer({"name": "gemma3-270m", "path": str(GEMMA)})
    with pytest.raises(ChatFormatError, match="no chat template"):
        ChatFormat.of(tok, "chat_template")
    with pytest.raises(ChatFormatError, match="must be one of"):
        ChatFormat.of(tok, "chatml")


@needs_smol
def test_hf_rank_scores_after_the_assistant_prompt_and_shared_cache_holds(smol, make_cfg):
    """The ranked prompt is the chat template's; the label is closed by <|im_end|>; the shared prefix KV
    path gives the same scores as one full forward per label."""
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.emotion.hf import Ranker, prompts
    from emplifai.emotion.predictors import Context

    model, tok = smol
    cfg = make_cfg("model=smollm2-135m", "predictor=hf_rank", "emotion.prompt.few_shot=1")
    train = pd.read_parquet(ROOT / "artifacts/prepare/train.parquet")
    test = pd.read_parquet(ROOT / "artifacts/prepare/test.parquet")
    ctx = Context(cfg, Taxonomy.from_config(cfg.taxonomy), train, train.iloc[:0], lambda: None, "cpu", 42, ROOT)
    build, fmt, prefix = prompts(ctx, tok)
    prompt = fmt.render(build.system, build(test.iloc[0]))
    assert prefix.startswith("<|im_start|>system") and prompt.startswith(prefix)
    assert prompt.endswith("感情：<|im_end|>\n<|im_start|>assistant\n")
    names = [n + fmt.end_of_turn() for n in ctx.taxonomy.ja_names[:5]]
    fast = Ranker(model, tok, prefix, names, add_special_tokens=False).scores(prompt)
    slow = Ranker(model, tok, prefix, names, shared_cache=False, add_special_tokens=False).scores(prompt)
    np.testing.assert_allclose(fast, slow, atol=1e-3)
    ids = Ranker(model, tok, prefix, names, add_special_tokens=False).prompt_ids(prompt)[0].tolist()
    assert tok.decode(ids) == prompt and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no stray BOS
    assert ids[-4:] == tok("<|im_start|>assistant\n", add_special_tokens=False).input_ids  # then the label


@needs_smol
def test_emotion_stage_with_a_chat_model(make_cfg, tmp_path):
    """hf_rank and hf_generate end to end with SmolLM2 as a chat model: labels valid, answers kept raw."""
    import shutil

    from emplifai.emotion import __main__ as emotion

    shutil.copytree(ROOT / "artifacts/prepare", tmp_path / "artifacts/prepare")
    common = ("model=smollm2-135m", "emotion.first_n=2", "emotion.fasttext.epoch=2", "emotion.fasttext.dim=20",
              "mlflow.enabled=false", "emotion.prompt.few_shot=0", "emotion.predictors=null")
    emotion.run(make_cfg("predictor=hf_rank", *common))
    rank = pd.read_parquet(tmp_path / "artifacts/emotion/hf_rank/predictions.parquet")
    assert len(rank) == 2 and rank["valid"].all() and rank["label"].ne("").all()
    emotion.run(make_cfg("predictor=hf_generate", "predictor.max_new_tokens=4", *common))
    gen = pd.read_parquet(tmp_path / "artifacts/emotion/hf_generate/predictions.parquet")
    assert len(gen) == 2 and gen["raw"].map(lambda r: isinstance(r, str) and "<|im" not in r).all()


@needs_smol
def test_hf_local_judge_prompt_is_the_chat_template(smol):
    from emplifai.judge.rubric import JudgeItem, JudgePrompt, Rubric
    from emplifai.judge.scorer import DigitScorer

    model, tok = smol
    cfg = compose_cfg(["judge.model=smollm2-135m"])
    rubric = Rubric.from_config(cfg.judge)
    b = JudgePrompt(cfg.judge.grading_prompt, rubric)
    item = JudgeItem("r1", "d1", "SYSTEM_NAME", "human", "入院中", "眠れません。", "それはおつらいですね。", "悲しみ")
    fmt = ChatFormat.of(tok, "chat_template")
    head, body, suffixes = b.local_parts(item, rubric.criteria[:2], fmt)
    assert head.startswith("<|im_start|>system\n") and head.endswith("<|im_start|>user\n")
    assert all(s.endswith("整数一つだけで答えてください。<|im_end|>\n<|im_start|>assistant\n") for s in suffixes)
    full = head + body + suffixes[0]
    user = full[len(fmt.frame(b.head)[0]):-len(fmt.frame(b.head)[1])]
    assert full == fmt.render(b.head, user) and "SYSTEM_NAME" not in full
    plain_parts = b.local_parts(item, rubric.criteria[:2], ChatFormat.of(tok, "plain"))
    assert plain_parts == (b.head, b.context(item), [b.suffix(item, c) for c in rubric.criteria[:2]])
    scorer = DigitScorer(model, tok, rubric.lo, rubric.hi, add_special_tokens=False)
    fast = scorer.score(head, body, suffixes)
    slow = scorer.score(head, body, suffixes, shared=False)
    assert all(1 <= s.score <= 5 and s.mass > 0 for s in fast)
    np.testing.assert_allclose([s.score for s in fast], [s.score for s in slow], atol=1e-3)
