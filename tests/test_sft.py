"""Stages train + generate: prompt masking, target-only loss, LoRA adapters, resume, sweeps, generation.

Real models only (SmolLM2-135M for speed; Gemma-3-270M's tokenizer for the Japanese mask checks)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import CONF, ROOT, compose_cfg
from emplifai.data.taxonomy import Taxonomy
from emplifai.generate.generation import generate
from emplifai.lm import load_causal_lm, load_tokenizer
from emplifai.train.adapter import attach_lora, load_adapter, save_adapter
from emplifai.train.datamodule import LengthBucketSampler, collate, read_split
from emplifai.train.examples import IGNORE, PromptError, SFTPrompt
from emplifai.train.module import ChunkedHeadLoss, NoTargetTokens, target_loss

PREPARED = ROOT / "artifacts" / "prepare"
SMOL = ["model=smollm2-135m", "sft_prompt=patient_only", "threads=2"]
needs_models = pytest.mark.skipif(not (ROOT / "models/base/smollm2-135m/config.json").exists()
                                  or not (ROOT / "models/base/gemma3-270m/config.json").exists(),
                                  reason="run `dvc repro models` first")
needs_data = pytest.mark.skipif(not (PREPARED / "train.parquet").exists(), reason="run the prepare stage first")
pytestmark = [needs_models, needs_data]


@functools.cache
def tokenizer_for(model: str):
    return load_tokenizer(compose_cfg([f"model={model}"]).model)  # Gemma's 262k vocab: load once


def builder_for(*overrides: str) -> SFTPrompt:
    cfg = compose_cfg(list(overrides))
    tok = tokenizer_for(cfg.model.name)
    return SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok, Taxonomy.from_config(cfg.taxonomy))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_split(PREPARED, "train").head(6).to_dict("records")


@pytest.fixture
def smol_model():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, _ = load_causal_lm(compose_cfg(SMOL).model)
    return model


def batch_of(builder: SFTPrompt, rows: list[dict], max_length: int = 64) -> dict[str, torch.Tensor]:
    return collate([builder.encode(r, max_length) for r in rows], builder.tokenizer.pad_token_id)


@pytest.mark.parametrize("overrides", [["model=gemma3-270m"], ["model=smollm2-135m"],
                                       ["model=gemma3-270m", "sft_prompt=no_emotion"]])
def test_mask_covers_exactly_the_supporter_turn(overrides, rows):
    b = builder_for(*overrides)
    tok = b.tokenizer
    for row in rows:
        enc = b.encode(row, 512)
        assert enc.labels[: enc.n_prompt] == [IGNORE] * enc.n_prompt
        assert enc.labels[enc.n_prompt:] == enc.input_ids[enc.n_prompt:]
        assert enc.labels[-1] == tok.eos_token_id
        assert tok.decode(enc.labels[enc.n_prompt:-1]) == row["supporter"]
        prompt = tok.decode(enc.input_ids[: enc.n_prompt])
        assert row["patient"] in prompt and row["supporter"] not in prompt
        assert (row["situation"] in prompt) == ("{situation}" in b.template)
    emotion_ja = Taxonomy.from_config(compose_cfg().taxonomy).ja(rows[0]["emotion"])
    assert (emotion_ja in b.prompt_text(rows[0])) == ("{emotion}" in b.template)


def test_truncation_keeps_the_target_and_the_budget(rows):
    b = builder_for("model=gemma3-270m")
    full = b.encode(rows[0], 512)
    budget = 2 * full.n_target + 4  # the target fits in half of it; the prompt does not fit in the rest
    enc = b.encode(rows[0], budget)
    assert len(enc.input_ids) == budget and enc.input_ids[0] == full.input_ids[0]  # BOS kept, cut on the left
    assert enc.input_ids[-budget + 1:] == full.input_ids[-budget + 1:]
    assert enc.labels[enc.n_prompt:] == full.labels[full.n_prompt:]  # the whole target kept
    short = b.encode(rows[0], full.n_target)  # target longer than half the budget: cut at the end
    assert short.n_target == full.n_target // 2 and len(short.input_ids) == full.n_target


def test_bad_template_is_a_clear_error():
    cfg = compose_cfg()
    cfg.sft_prompt.template = "状況: {situaton}\n患者さん: {patient}"
    with pytest.raises(PromptError, match="situaton"):
        SFTPrompt.from_config(cfg.sft_prompt, "plain", tokenizer_for(cfg.model.name), Taxonomy.from_config(cfg.taxonomy))


def test_length_buckets_cover_everything_once_with_little_padding():
    lengths = [int(x) for x in torch.randint(20, 200, (203,), generator=torch.Generator().manual_seed(1))]
    s = LengthBucketSampler(lengths, 8, shuffle=True, seed=3, pool_batches=8)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert all(len(b) == 8 for b in batches if len(b) != 203 % 8)
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    rnd = [list(range(203))[j: j + 8] for j in range(0, 203, 8)]
    pad_random = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rnd)
    assert pad < pad_random / 3
    assert list(s) == batches  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != batches
    shards = [LengthBucketSampler(lengths, 8, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


@pytest.mark.parametrize("n", [37, 40, 3])
def test_ddp_ranks_step_together_and_validate_every_example_once(n):
    """Under DDP every rank must run the same number of training batches (each step all-reduces gradients):
    the batch list is padded with its first batches, as DistributedSampler pads. Validation takes every
    example exactly once over the ranks (the module sums loss x tokens across them)."""
    lengths = [int(x) for x in torch.randint(20, 200, (n,), generator=torch.Generator().manual_seed(n))]
    single = list(LengthBucketSampler(lengths, 4, seed=3))
    for world in (2, 3):
        shards = [list(LengthBucketSampler(lengths, 4, seed=3, num_replicas=world, rank=r)) for r in range(world)]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-len(single) // world)
        padding = (single * world)[: -len(single) % world]
        assert sorted(i for s in shards for b in s for i in b) == sorted(i for b in single + padding for i in b)
        evals = [[i for b in LengthBucketSampler(lengths, 4, shuffle=False, num_replicas=world, rank=r) for i in b]
                 for r in range(world)]
        assert sorted(i for e in evals for i in e) == list(range(n)) and all(evals)


def test_target_only_loss_equals_full_logits_loss(smol_model, rows):
    batch = batch_of(builder_for(*SMOL), rows[:3])
    with torch.no_grad():
        ours, n = target_loss(smol_model, batch)
        full = smol_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    assert n == int((batch["labels"] != IGNORE).sum())
    assert abs(float(ours) - float(full)) < 1e-4


def test_chunked_loss_gives_full_logits_gradients_to_the_adapter(smol_model, rows):
    # float64 model: the reference (full logits + autograd) is then exact, and what is left is our softmax's
    # fp32 rounding (in fp32 both sides round differently, ~2e-4 relative on some LoRA grads)
    cfg = compose_cfg(SMOL)
    model = attach_lora(smol_model.double(), {**cfg.train.lora, "dropout": 0.0}).double()
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero B: gradients reach both LoRA matrices
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.05
    batch = batch_of(builder_for(*SMOL), rows[:3])
    lora = [p for p in model.parameters() if p.requires_grad]

    ours, _ = target_loss(model, batch, chunk=7)  # several chunks, the last one partial
    assert type(ours.grad_fn.next_functions[0][0]).__name__ == "ChunkedHeadLossBackward"  # the fused path ran
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    full = torch.nn.functional.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE])
    assert abs(float(ours) - float(full)) < 1e-6
    for a, b in zip(torch.autograd.grad(ours, lora), torch.autograd.grad(full, lora), strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize("cap", [None, 30.0])
def test_chunked_head_loss_matches_autograd_with_a_trainable_head(cap):
    # the head is frozen in LoRA runs; a user who trains it (or a soft-capped model) gets the same math
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = (torch.randn(300, 16, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, 300, (50,), generator=g)
    z = hidden @ weight.t()
    ref = torch.nn.functional.cross_entropy(torch.tanh(z / cap) * cap if cap else z, targets, reduction="sum")
    ref_grads = torch.autograd.grad(3 * ref, (hidden, weight))
    ours = ChunkedHeadLoss.apply(hidden, weight, targets, cap, 16, True)
    torch.testing.assert_close(ours, ref.detach())
    for a, b in zip(torch.autograd.grad(3 * ours, (hidden, weight)), ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_batch_without_targets_fails_loudly(smol_model, rows):
    batch = batch_of(builder_for(*SMOL), rows[:2])
    batch["labels"][:] = IGNORE
    with pytest.raises(NoTargetTokens, match="no target tokens"):
        target_loss(smol_model, batch)


def test_loss_decreases_over_a_few_steps(smol_model, rows):
    cfg = compose_cfg(SMOL)
    model = attach_lora(smol_model, {**cfg.train.lora, "dropout": 0.0})
    batch = batch_of(builder_for(*SMOL), rows[:4], max_length=48)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(4):
        loss, _ = target_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_adapter_save_reload_gives_the_same_logits(smol_model, rows, tmp_path):
    cfg = compose_cfg(SMOL)
    batch = batch_of(builder_for(*SMOL), rows[:2])
    with torch.no_grad():
        base_logits = smol_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model = attach_lora(smol_model, cfg.train.lora).eval()
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter a real effect
            p.data = torch.randn(p.shape, generator=g) * 0.05
    with torch.no_grad():
        tuned = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_adapter(model, tmp_path / "adapter", {"model": cfg.model.name})
    fresh, _ = load_causal_lm(cfg.model)
    reloaded = load_adapter(fresh, tmp_path / "adapter", cfg.model.name)
    with torch.no_grad():
        again = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (tuned - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(again, tuned, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match="trained on model"):
        load_adapter(load_causal_lm(cfg.model)[0], tmp_path / "adapter", "gemma3-270m")


def test_lora_dropout_is_inverted_dropout_from_torchs_generator(smol_model):
    from emplifai.train.adapter import BitsDropout

    peft = attach_lora(smol_model, compose_cfg(SMOL).train.lora)
    drops = [d for m in peft.modules() for d in getattr(m, "lora_dropout", {}).values()]
    assert drops and all(type(d) is BitsDropout and d.p == 0.05 for d in drops)
    d = BitsDropout(0.1).train()
    x = torch.ones(400, 1000)
    torch.manual_seed(0)
    y = d(x)
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.003  # 400k draws: sd 0.0005
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 32768 / (32768 - 3277)))
    assert abs(float(y.mean()) - 1.0) < 0.01  # inverted dropout: the expectation is kept
    torch.manual_seed(0)
    assert torch.equal(d(x), y) and not torch.equal(d(x), y)  # the generator's state decides the mask
    assert torch.equal(d.eval()(x), x) and torch.equal(BitsDropout(0.0).train()(x), x)


def test_greedy_generation_is_deterministic(smol_model, rows):
    b = builder_for(*SMOL)
    gen_cfg = {**compose_cfg(SMOL).generate, "max_new_tokens": 5, "batch_size": 2}
    first = generate(smol_model, b, rows[:2], gen_cfg, seed=1)
    second = generate(smol_model, b, rows[:2], gen_cfg, seed=2)  # greedy: the seed must not matter
    assert [r["response"] for r in first] == [r["response"] for r in second]
    assert all(r["response"] and 0 < r["n_tokens"] <= 6 for r in first)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_study_model_config_composes(name):
    cfg = compose_cfg([f"model={name}", "train.epochs=3"])
    assert cfg.model.name == name and cfg.model.chat_format in ("plain", "chat_template")
    assert list(cfg.train.lora.target_modules) == list(cfg.model.lora_target_modules)
    assert cfg.generate.adapters == "sweep" and cfg.train.epochs == 3


def tiny(tmp_path: Path) -> list[str]:
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    if not (tmp_path / "artifacts" / "prepare").exists():
        (tmp_path / "artifacts" / "prepare").symlink_to(PREPARED)
    (tmp_path / "models").mkdir(exist_ok=True)
    if not (tmp_path / "models" / "base").exists():
        (tmp_path / "models" / "base").symlink_to(ROOT / "models" / "base")
    return [f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports",
            f"paths.models={tmp_path}/models", f"paths.log_dir={tmp_path}/logs",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *SMOL, "train.sample_n=4",
            "train.val_sample_n=2", "train.batch_size=2", "train.max_length=40", "train.lr=1e-3"]


@pytest.mark.slow
def test_train_resumes_then_generate_writes_every_system(tmp_path):
    from emplifai.generate import __main__ as gen_stage
    from emplifai.train import __main__ as train

    first = train.run(compose_cfg(tiny(tmp_path) + ["train.max_steps=1"]))
    assert first["train/steps"] == 1
    adapter = tmp_path / "models" / "sft" / "default"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "emplifai_adapter.json").exists()
    ckpt = tmp_path / "artifacts" / "train" / "default"
    assert (ckpt / "last.ckpt").stat().st_size < 20 * 2**20  # LoRA + optimizer only, not the base model
    second = train.run(compose_cfg(tiny(tmp_path) + ["train.max_steps=2"]))  # new config: starts fresh
    assert second["train/steps"] == 2
    # same config again: resumes from last.ckpt at step 2 and has nothing left to do
    third = train.run(compose_cfg(tiny(tmp_path) + ["train.max_steps=2"]))
    assert third["train/steps"] == 2 and third["train/best_val_loss"] == second["train/best_val_loss"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.data.tags["resumed_from"] != "(fresh)" for r in runs] == [False, False, True]
    assert len(client.get_metric_history(runs[1].info.run_id, "train/loss")) == 2
    assert {"val/loss", "train/lr", "train/target_tokens_per_s", "train/peak_mem_mb", "train/adapter_mb"} \
        <= set(runs[1].data.metrics)

    out = gen_stage.run(compose_cfg(tiny(tmp_path) + ["generate.sample_n=2", "generate.max_new_tokens=4",
                                                      f"generate.adapters=[{adapter}]"]))
    frame = pd.read_parquet(tmp_path / "artifacts" / "generate" / "responses.parquet")
    assert list(frame.columns) == gen_stage.COLUMNS and len(frame) == 4
    assert set(frame["system"]) == {"smollm2-135m+base+patient_only", "smollm2-135m+default+patient_only"}
    assert 0 < out["generate/smollm2-135m_default_patient_only/bertscore_f1"] <= 1
    from emplifai.core.metrics_file import read_metrics

    saved = read_metrics(tmp_path / "reports" / "generate" / "metrics.json")      # what MLflow got, on disk
    assert list(saved.metrics) == list(out) and saved.metrics["generate/responses"] == 4
    assert saved.tags["systems"] == "smollm2-135m+base+patient_only | smollm2-135m+default+patient_only"


@pytest.mark.slow
def test_epoch_multirun_gives_parent_and_children(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "emplifai.train", "-m", "train.epochs=1,2", *tiny(tmp_path),
           "train.sample_n=2", "train.val_sample_n=1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.metrics["train/steps"] for c in children) == [1, 2]
    # one adapter per job, named by its overrides (the sweep key first): epochs=1_model=..., epochs=2_model=...
    for epochs in (1, 2):
        (adapter,) = (tmp_path / "models" / "sft").glob(f"epochs={epochs}_*")
        assert (adapter / "adapter_model.safetensors").exists()


def test_resume_fingerprint_changes_with_the_taxonomy(tmp_path, make_cfg):
    """The taxonomy's names are in the SFT prompt: after a taxonomy edit a checkpoint must not be resumed."""
    from emplifai.train.__main__ import fingerprint

    prepared = ROOT / "artifacts" / "prepare"
    base = fingerprint(make_cfg(), prepared)
    assert fingerprint(make_cfg(), prepared) == base
    edited = make_cfg()
    edited.taxonomy.emotions[0].ja = "賞賛"
    assert fingerprint(edited, prepared) != base
    tax = tmp_path / "labels.yaml"
    tax.write_text("name: t\nemotions:\n  - {key: joy, ja: 喜び}\n", encoding="utf-8")
    with_file = fingerprint(make_cfg(f"taxonomy.file={tax}"), prepared)
    tax.write_text("name: t\nemotions:\n  - {key: joy, ja: うれしさ}\n", encoding="utf-8")
    assert fingerprint(make_cfg(f"taxonomy.file={tax}"), prepared) != with_file
