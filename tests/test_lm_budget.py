"""model.max_length (emplifai.lm.budget): one cut for every local LM prompt, checked on real models — a prompt
cut by the budget scores exactly as the same tokens given short, the parts kept whole stay whole, and every
cut is counted and warned about."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, compose_cfg
from emplifai.core.errors import UserError
from emplifai.lm.budget import PromptBudget, cut_left

torch.set_num_threads(2)
GEMMA, SMOL = ROOT / "models/base/gemma3-270m", ROOT / "models/base/smollm2-135m"
PREPARED = ROOT / "artifacts/prepare"
needs = pytest.mark.skipif(not all((p / "config.json").exists() for p in (GEMMA, SMOL))
                           or not (PREPARED / "test.parquet").exists(), reason="run `dvc repro models prepare` first")
PREFIX = "次の患者の感情を答えてください。\n患者：手術が怖いです。\n感情：恐れ\n\n"
LONG = "状況：" + "検査の結果を待っている。" * 30 + "\n患者：退院できて本当にうれしい。\n感情："
SHORT = "患者：眠れない。\n感情："
LABELS = ["喜び\n", "恐れ\n", "不賛成\n"]


@pytest.fixture(scope="module")
def gemma():
    from emplifai.lm import load_causal_lm

    return load_causal_lm({"name": "gemma3-270m", "path": str(GEMMA)})


def test_cut_keeps_the_end_and_counts_each_prompt_once():
    assert cut_left([1, 2, 3, 4, 5], 3) == [3, 4, 5]
    assert cut_left([1, 2, 3, 4, 5], 3, keep_first=1) == [1, 4, 5]  # the BOS stays
    assert cut_left([1, 2], 3) == [1, 2] and cut_left([1, 2, 3], 1, keep_first=1) == [1]
    budget = PromptBudget(10)
    assert budget.fit([1, 2, 3], reserved=4) == [1, 2, 3]
    assert budget.metrics("emotion") == {"emotion/truncated_prompts": 0, "emotion/longest_prompt_tokens": 7}
    assert budget.fit(list(range(20)), reserved=4) == list(range(14, 20))
    assert budget.fit(list(range(20)), reserved=4) == list(range(14, 20))  # the same prompt, another system
    assert budget.fit(list(range(9)), reserved=2, keep_first=1) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert budget.metrics("emotion") == {"emotion/truncated_prompts": 2, "emotion/longest_prompt_tokens": 24}
    with pytest.raises(UserError, match=r"model.max_length=10 leaves no room .* already take 10 tokens; raise"):
        budget.fit([1], reserved=10)
    for bad in (None, "512", True, 1, 3.5):
        with pytest.raises(UserError, match="model.max_length must be an integer >= 2"):
            PromptBudget.of({"name": "m", "max_length": bad})


@needs
def test_budget_refuses_more_than_the_models_context_window(gemma):
    model, _ = gemma
    assert PromptBudget.of({"name": "gemma3-270m", "max_length": 32768}, model).max_length == 32768
    with pytest.raises(UserError, match=r"exceeds the context window of 'gemma3-270m' \(32768 positions"):
        PromptBudget.of({"name": "gemma3-270m", "max_length": 40000}, model)
    for name in ("gemma3-270m", "smollm2-135m"):  # the shipped configs: exactly the window of their weights
        cfg = compose_cfg([f"model={name}"]).model
        window = json.loads((ROOT / "models/base" / name / "config.json").read_text())
        assert cfg.max_length == window["max_position_embeddings"]


@needs
def test_ranker_cuts_the_start_of_the_dialogue_and_scores_what_remains(gemma):
    from emplifai.emotion.hf import Ranker

    model, tok = gemma
    plain = Ranker(model, tok, PREFIX, LABELS, shared_cache=False)
    rest, fixed = plain._rest(PREFIX + LONG), len(plain.prefix_ids) + int(plain._lens.max())
    assert len(rest) > 150
    budget = PromptBudget(fixed + 12)
    cut = Ranker(model, tok, PREFIX, LABELS, budget=budget)
    got = cut.scores_batch([PREFIX + LONG, PREFIX + SHORT], batch_size=2)  # the packed path
    assert budget.truncated == 1 and budget.longest == fixed + len(rest)
    assert tok.decode(rest[-12:]).endswith("退院できて本当にうれしい。\n感情：")  # the answer cue stays
    # what the model read: prefix + the last 12 tokens of the dialogue, one plain forward per label
    want = plain._reduce(plain._full(torch.tensor([plain.prefix_ids + rest[-12:]])))
    np.testing.assert_allclose(got[0], want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cut.scores(PREFIX + LONG), want, atol=1e-4, rtol=0)  # the per-dialogue path
    np.testing.assert_allclose(got[1], plain.scores(PREFIX + SHORT), atol=1e-4, rtol=0)  # fits: untouched
    assert budget.truncated == 1  # the same prompt scored twice is one cut prompt
    with pytest.raises(UserError, match="leaves no room for the item text of the emotion prompt"):
        Ranker(model, tok, PREFIX, LABELS, budget=PromptBudget(fixed))  # before encoding the prefix


@needs
def test_hf_rank_reports_its_cuts(gemma, caplog):
    """The predictor as the stage runs it: every test dialogue cut, counted, warned about, still a label."""
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.emotion.hf import hf_rank, load_model, prompts
    from emplifai.emotion.predictors import Context

    train = pd.read_parquet(PREPARED / "train.parquet")

    def context(max_length: int) -> Context:
        cfg = compose_cfg(["predictor=hf_rank", "emotion.prompt.few_shot=0", f"model.max_length={max_length}"])
        return Context(cfg, Taxonomy.from_config(cfg.taxonomy), train, train.iloc[:0], lambda: None, "cpu", 42, ROOT)

    def run(max_length: int) -> tuple[list, dict]:
        ctx = context(max_length)
        return hf_rank(ctx, pd.read_parquet(PREPARED / "test.parquet").head(2)), ctx.metrics

    full, metrics = run(32768)
    assert metrics["emotion/truncated_prompts"] == 0 and len(full) == 2
    longest = metrics["emotion/longest_prompt_tokens"]
    ctx = context(32768)
    _, tok = load_model(ctx)
    fixed = len(tok(prompts(ctx, tok)[2]).input_ids) + max(len(tok(n + "\n", add_special_tokens=False).input_ids)
                                                            for n in ctx.taxonomy.ja_names)
    assert fixed + 40 < longest < 400
    with caplog.at_level(logging.WARNING, logger="emplifai.lm.budget"):
        cut, metrics = run(fixed + 20)
    # both dialogues and the content-free calibration prompt ("N/A" for situation and both turns)
    assert metrics["emotion/truncated_prompts"] == 3 and metrics["emotion/longest_prompt_tokens"] == longest
    assert "3 prompt(s) exceeded model.max_length" in caplog.text
    assert len(cut) == 2 and all(p.label in ctx.taxonomy.keys for p in cut)


@needs
def test_judge_scorer_cuts_the_context_not_the_rubric_or_question(gemma):
    from emplifai.judge.scorer import DigitScorer

    model, tok = gemma
    head, body, questions = "採点基準：1から5で答える。\n\n", LONG, ["共感の点数:", "流暢さの点数:"]
    plain = DigitScorer(model, tok)
    head_ids, body_ids, sufs = plain.encode(head, body, questions)
    budget = PromptBudget(len(head_ids) + max(map(len, sufs)) + 10)
    got = DigitScorer(model, tok, budget=budget).score(head, body, questions)
    assert budget.truncated == 1
    with torch.no_grad():
        last = torch.cat([model(input_ids=torch.tensor([head_ids + body_ids[-10:] + s])).logits[:, -1] for s in sufs])
    want = plain._to_scores(last)
    assert [g.argmax for g in got] == [w.argmax for w in want]
    np.testing.assert_allclose([g.score for g in got], [w.score for w in want], atol=1e-4)
    independent = DigitScorer(model, tok, budget=PromptBudget(budget.max_length)).score(head, body, questions,
                                                                                       shared=False)
    np.testing.assert_allclose([g.score for g in independent], [w.score for w in want], atol=1e-4)


@needs
def test_generate_leaves_room_for_the_new_tokens_and_cuts_as_training_does():
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.generate.generation import decode_kwargs, generate
    from emplifai.lm import load_causal_lm
    from emplifai.train.examples import SFTPrompt

    cfg = compose_cfg(["model=smollm2-135m", "sft_prompt=patient_only"])
    model, tok = load_causal_lm(cfg.model)
    tok.padding_side = "left"
    builder = SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok, Taxonomy.from_config(cfg.taxonomy))
    rows = pd.read_parquet(PREPARED / "test.parquet").head(2).to_dict("records")
    gen_cfg = {**cfg.generate, "max_new_tokens": 4, "batch_size": 2, "stop_at_newline": False}
    prompts = [builder.prompt_ids(r) for r in rows]
    budget = PromptBudget(min(map(len, prompts)) - 6)
    out = generate(model, builder, rows, gen_cfg, seed=0, budget=budget)
    assert budget.truncated == 2 and budget.longest == max(map(len, prompts)) + 4
    room = budget.max_length - 4
    for row, prompt, got in zip(rows, prompts, out, strict=True):
        ids = prompt[:1] + prompt[len(prompt) - room + 1:]  # BOS/first token + the end, as train/examples cuts
        assert ids == builder.encode({**row, "supporter": ""}, room + 1).input_ids[:room]
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 **decode_kwargs(gen_cfg, tok))[0, len(ids):]
        assert got["response"] == tok.decode(new, skip_special_tokens=True).strip()
