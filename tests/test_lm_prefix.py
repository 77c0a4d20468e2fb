"""Prefix-KV scoring (emplifai.lm.prefix) on real small models: every fast path equals a plain full forward,
and hf_rank's batched ranker equals the per-dialogue one (Gemma-3-270M plain, SmolLM2-135M chat template)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, compose_cfg
from emplifai.lm.prefix import (
    PrefixKV,
    branch_forward,
    branch_supported,
    extend,
    head_logits,
    padded_batch,
    softcap,
    softcap_slope,
)

torch.set_num_threads(2)
GEMMA, SMOL = ROOT / "models/base/gemma3-270m", ROOT / "models/base/smollm2-135m"
needs = pytest.mark.skipif(not all((p / "config.json").exists() for p in (GEMMA, SMOL))
                           or not (ROOT / "artifacts/prepare/test.parquet").exists(),
                           reason="run `dvc repro models prepare` first")
PREFIX = "次の患者の感情を答えてください。\n患者：手術が怖いです。\n感情：恐れ\n\n"
RESTS = ["患者：退院できて本当にうれしい。\n感情：", "患者：眠れない。\n感情："]
BRANCHES = ["喜び\n", "恐れ\n", "不賛成\n", "\n"]


@pytest.fixture(scope="module")
def gemma():
    from emplifai.lm import load_causal_lm

    return load_causal_lm({"name": "gemma3-270m", "path": str(GEMMA)})


@pytest.fixture(scope="module")
def smol():
    from emplifai.lm import load_causal_lm

    return load_causal_lm({"name": "smollm2-135m", "path": str(SMOL)})


def ids(tok, text: str, bos: bool = False) -> list[int]:
    return tok(text, add_special_tokens=bos).input_ids


def reference_logp(model, prompt: list[int], cont: list[int]) -> torch.Tensor:
    """log p(next token) at every position of `cont`, from one plain forward over prompt + cont."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont]), use_cache=False, logits_to_keep=len(cont) + 1).logits[0, :-1]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(cont)), torch.tensor(cont)]


def branch_logp(model, prefix: list[int], rests: list[list[int]], branches: list[list[int]]) -> list:
    """The same log-probs from branch_forward: per row and branch, the rest's last state + the branch's."""
    with torch.no_grad():
        hidden, cols = branch_forward(model, PrefixKV.encode(model, prefix), [[r] + branches for r in rests])
        out = []
        for r, spans in enumerate(cols):
            for j, b in enumerate(branches):
                at = [spans[0][-1]] + spans[j + 1][:-1]
                lp = torch.log_softmax(head_logits(model, hidden[r, at]), -1)
                out.append(lp[torch.arange(len(b)), torch.tensor(b)])
    return out


@needs
@pytest.mark.parametrize("which", ["gemma", "smol"])
def test_branch_forward_equals_full_forward(which, request):
    """Rows of different lengths, branches of different lengths (one of a single token): each branch scored
    as if prefix + its row's rest + the branch had run alone."""
    model, tok = request.getfixturevalue(which)
    assert branch_supported(model)
    prefix, rests = ids(tok, PREFIX, bos=True), [ids(tok, r) for r in RESTS]
    branches = [ids(tok, b) for b in BRANCHES]
    assert len({len(r) for r in rests}) == 2 and min(map(len, branches)) == 1
    got = branch_logp(model, prefix, rests, branches)
    want = [reference_logp(model, prefix + r, b) for r in rests for b in branches]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


@needs
def test_branch_forward_past_gemmas_sliding_window(gemma):
    """Prompts longer than Gemma's 512-token window: the packed mask applies the window by position, and the
    prefix cache keeps every key (a sliding-window cache layer would have dropped the oldest)."""
    model, tok = gemma
    prefix = ids(tok, "患者の言葉：" + "とても不安で眠れない日が続いています。" * 60, bos=True)
    rests = [ids(tok, RESTS[0]), ids(tok, RESTS[1] * 12)]
    branches = [ids(tok, BRANCHES[0])]
    assert len(prefix) > model.config.sliding_window  # the prefix alone is wider than the window
    got = branch_logp(model, prefix, rests, branches)
    want = [reference_logp(model, prefix + r, b) for r in rests for b in branches]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


@needs
def test_eager_attention_takes_the_additive_mask(smol):
    model, tok = smol
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        prefix, rest, branches = ids(tok, PREFIX), [ids(tok, RESTS[1])], [ids(tok, b) for b in BRANCHES[:2]]
        got = branch_logp(model, prefix, rest, branches)
        want = [reference_logp(model, prefix + rest[0], b) for b in branches]
    finally:
        model.set_attn_implementation(impl)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


@needs
def test_prefix_copy_extend_and_padded_batch_equal_full_forward(gemma):
    """The per-prompt path: a fresh copy of the prefix cache per prompt (the prefix stays intact), the rest
    on it, then the continuations as one right-padded batch on that cache repeated."""
    model, tok = gemma
    prefix = ids(tok, PREFIX, bos=True)
    kv = PrefixKV.encode(model, prefix)
    branches = [ids(tok, b) for b in BRANCHES]
    for rest_text in RESTS:  # the second prompt reuses the same PrefixKV: the first must not have changed it
        rest = ids(tok, rest_text)
        with torch.no_grad():
            cache = kv.cache()
            last = extend(model, cache, rest)[-1:]
            hidden = padded_batch(model, cache, branches, tok.pad_token_id)
            for j, b in enumerate(branches):
                states = torch.cat([last, hidden[j, : len(b) - 1]])
                got = torch.log_softmax(head_logits(model, states), -1)[torch.arange(len(b)), torch.tensor(b)]
                torch.testing.assert_close(got, reference_logp(model, prefix + rest, b), atol=1e-4, rtol=0)
        assert kv.kv[0][0].shape[2] == len(prefix)


@needs
def test_head_logits_softcap_matches_the_models_own_head(gemma):
    """Our head + soft-capping is what the model computes itself (Gemma-3-270M ships without a cap: one is
    set here, which Gemma3ForCausalLM applies in its forward); the slope is tanh's derivative."""
    model, tok = gemma
    x = torch.tensor([ids(tok, PREFIX, bos=True)])
    try:
        for cap in (None, 3.0):
            model.config.final_logit_softcapping = cap
            with torch.no_grad():
                own = model(x, use_cache=False).logits[0, -3:]
                hidden = model.get_decoder()(x).last_hidden_state[0, -3:]
                torch.testing.assert_close(head_logits(model, hidden), own.float(), atol=1e-4, rtol=1e-5)
    finally:
        model.config.final_logit_softcapping = None
    z = torch.linspace(-90, 90, 41, requires_grad=True)
    capped = softcap(z, 30.0)
    (grad,) = torch.autograd.grad(capped.sum(), z)
    torch.testing.assert_close(softcap_slope(capped.detach(), 30.0), grad)
    assert softcap(z, None) is z and softcap_slope(z, None) == 1.0


def stage_ranker(model, tok, *overrides: str):
    """The Ranker and prompt builder exactly as `hf_rank` builds them for this config."""
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.emotion.hf import Ranker, prompts
    from emplifai.emotion.predictors import Context

    cfg = compose_cfg(["predictor=hf_rank", *overrides])
    train = pd.read_parquet(ROOT / "artifacts/prepare/train.parquet")
    ctx = Context(cfg, Taxonomy.from_config(cfg.taxonomy), train, train.iloc[:0], lambda: None, "cpu", 42, ROOT)
    build, fmt, prefix = prompts(ctx, tok)
    suffix = fmt.end_of_turn(str(cfg.predictor.answer_suffix))
    ranker = Ranker(model, tok, prefix, [n + suffix for n in ctx.taxonomy.ja_names], str(cfg.predictor.score),
                    add_special_tokens=fmt.add_special_tokens)
    return ranker, lambda row: fmt.render(build.system, build(row))


def dialogues(n: int) -> list[dict]:
    """Test dialogues; the first made much longer than the others (padding between rows)."""
    rows = pd.read_parquet(ROOT / "artifacts/prepare/test.parquet").head(n).to_dict("records")
    rows[0] = {**rows[0], "patient": rows[0]["patient"] * 4}
    return rows


def assert_same_ranking(batched: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(batched) == len(reference)
    for b, r in zip(batched, reference, strict=True):
        assert b.shape == r.shape and int(b.argmax()) == int(r.argmax())
        np.testing.assert_allclose(b, r, atol=1e-4, rtol=0)


@needs
def test_batched_ranker_equals_per_dialogue_gemma(gemma):
    model, tok = gemma
    ranker, render = stage_ranker(model, tok, "emotion.prompt.few_shot=0")
    texts = [render(r) for r in dialogues(3)]
    lengths = [len(ranker._rest(t)) for t in texts]
    assert max(lengths) > 2 * min(lengths)
    reference = [ranker.scores(t) for t in texts]
    assert len(reference[0]) == 28
    assert_same_ranking(ranker.scores_batch(texts, batch_size=2), reference)  # a full batch and a partial one
    assert_same_ranking(ranker.scores_batch(texts, batch_size=8), reference)  # batch larger than the dialogues
    assert_same_ranking(ranker.scores_batch(texts[1:2], batch_size=8), reference[1:2])  # a single dialogue


@needs
def test_batched_ranker_equals_per_dialogue_smollm2_chat(smol):
    model, tok = smol
    ranker, render = stage_ranker(model, tok, "model=smollm2-135m", "emotion.prompt.few_shot=0")
    texts = [render(r) for r in dialogues(2)]
    assert texts[0].startswith("<|im_start|>system") and ranker.tok.decode(ranker.cands[0]).endswith("<|im_end|>")
    reference = [ranker.scores(t) for t in texts]
    assert_same_ranking(ranker.scores_batch(texts, batch_size=2), reference)
    assert_same_ranking(ranker.scores_batch(texts, batch_size=1), reference)


@needs
def test_models_the_packed_mask_cannot_express_fall_back_to_per_dialogue(gemma, monkeypatch):
    import copy
    from types import SimpleNamespace

    from emplifai.emotion import hf

    model, tok = gemma
    other = copy.deepcopy(model.config)
    other.layer_types = ["chunked_attention"] * other.num_hidden_layers
    assert branch_supported(model) and not branch_supported(SimpleNamespace(config=other))
    ranker = hf.Ranker(model, tok, PREFIX, BRANCHES[:3])
    prompts = [PREFIX + r for r in RESTS]
    reference = [ranker.scores(p) for p in prompts]
    monkeypatch.setattr(hf, "branch_supported", lambda m: False)
    monkeypatch.setattr(hf, "branch_forward", lambda *a: pytest.fail("the packed path ran"))
    for got, want in zip(ranker.scores_batch(prompts, batch_size=2), reference, strict=True):
        np.testing.assert_array_equal(got, want)
