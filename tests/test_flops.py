"""What MFU measures: the useful-FLOP model (by hand and against PyTorch's FLOP counter on the real Gemma-3-270M),
the matmul peak, and the training-step choices it rewards (head chunks, selective recomputation)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, compose_cfg
from emplifai.lm import load_causal_lm
from emplifai.train.adapter import attach_lora
from emplifai.train.flops import Arch, StepFlops, attention_pairs, matmul_peak, step_flops, typical_shapes
from emplifai.train.module import enable_checkpointing, even_chunks, target_loss

needs_models = pytest.mark.skipif(not (ROOT / "models/base/gemma3-270m/config.json").exists()
                                  or not (ROOT / "models/base/smollm2-135m/config.json").exists(),
                                  reason="run `dvc repro models` first")
TINY = Arch(hidden=2, intermediate=3, layers=1, heads=1, kv_heads=1, head_dim=2, vocab=5, windows=(None,))


def test_attention_pairs_causal_window_and_full_square():
    assert attention_pairs(5, None) == 1 + 2 + 3 + 4 + 5
    assert attention_pairs(5, 2) == 1 + 2 + 2 + 2 + 2
    assert attention_pairs(5, 8) == 15 and attention_pairs(5, None, causal=False) == 25


def test_step_flops_by_hand():
    """One layer, LoRA r=1 on q_proj only, one 3-token sequence, 2 target tokens."""
    f = step_flops(TINY, [3], 2, lora_r=1, lora_modules=["q_proj"])
    linear = 4 * (2 * 2) + 2 * (2 * 3) + 3 * 2            # q, k, v, o: 2x2; gate, up: 2x3; down: 3x2
    assert f["body_fwd"] == 2 * 3 * linear
    assert f["attn_fwd"] == 6 * 4 * 1 * 2                   # 6 causal pairs x (QK^T + AV) x heads x head_dim
    # q/k/v read the frozen embedding: no input gradient; everything above q's adapter needs one
    assert f["body_bwd"] == 2 * 3 * (2 * 2 + 2 * (2 * 3) + 3 * 2)
    assert f["attn_bwd"] == 2 * f["attn_fwd"]
    assert f["lora_fwd"] == 2 * 3 * 1 * (2 + 2)             # A: 2->1, B: 1->2
    assert f["lora_bwd"] == 2 * 3 * 1 * (2 * 2 + 2)         # dB, grad into rank space, dA (no dx)
    assert f["head_fwd"] == f["head_bwd"] == 2 * 2 * 2 * 5  # target tokens x hidden x vocab, logits + dh
    assert f["total"] == 204 + 48 + 132 + 96 + 24 + 36 + 40 + 40
    fwd = step_flops(TINY, [3], 2, 1, ["q_proj"], backward=False)
    assert fwd["total"] == 204 + 48 + 24 + 40


@needs_models
def test_flop_model_equals_pytorchs_counter_on_gemma():
    """Exactly what torch's FLOP counter counts for our loss + backward (eager attention: dense QK^T/AV, so
    compared with causal=False), forward alone and forward + backward."""
    cfg = compose_cfg(["model=gemma3-270m"])
    model, _ = load_causal_lm(cfg.model)
    model.set_attn_implementation("eager")
    model = attach_lora(model, cfg.train.lora)
    model.train()
    ids = torch.randint(10, 5000, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :17] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    arch, lora = Arch.from_config(model.config), cfg.train.lora
    assert arch.windows.count(None) == 3 and set(arch.windows) == {None, 512}  # Gemma-3: 5 local : 1 global
    counted = {}
    for grad in (False, True):
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
            loss, n = target_loss(model, batch)
            if grad:
                loss.backward()
        counted[grad] = counter.get_total_flops()
    assert n == 2 * 7
    for grad in (False, True):
        expected = step_flops(arch, [24, 24], n, int(lora.r), lora.target_modules, backward=grad, causal=False)
        assert counted[grad] == expected["total"]


def test_batch_flops_count_non_pad_tokens_only():
    flops = StepFlops(TINY, 1, ["q_proj"])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert flops(mask, 3) == step_flops(TINY, [3, 2], 3, 1, ["q_proj"])["total"]
    model, why = StepFlops.of({"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 2,
                               "intermediate_size": 3, "vocab_size": 5}, {"r": 8, "target_modules": ["c_attn"]})
    assert model is None and "c_attn" in why


def test_matmul_peak_is_the_fastest_of_the_models_shapes():
    shapes = typical_shapes(TINY, 64)
    assert shapes[-1] == (128, 2, 5)
    out = matmul_peak([(64, 32, 48), (16, 32, 8)], seconds=0.01)
    assert set(out["by_shape"]) == {"64x32x48", "16x32x8"}
    assert out["peak"] == max(out["by_shape"].values()) > 0 and out["dtype"] == "float32"


def test_head_chunks_are_even_so_no_pass_over_the_vocabulary_is_nearly_empty():
    assert even_chunks(129, 128) == [(0, 64), (64, 129)]
    assert even_chunks(256, 128) == [(0, 128), (128, 256)]
    assert even_chunks(5, 128) == [(0, 5)]


@needs_models
def test_selective_recomputation_gives_the_gradients_of_full_recomputation():
    """`matmuls` keeps the frozen matmuls' outputs instead of recomputing them: same loss and LoRA gradients
    (dropout included: recomputation replays the RNG) as `full` and as no checkpointing."""
    cfg = compose_cfg(["model=smollm2-135m", "threads=2"])
    ids = torch.randint(10, 5000, (2, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :12] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    grads = {}
    for policy in (None, "full", "matmuls"):
        model, _ = load_causal_lm(cfg.model)
        torch.manual_seed(0)
        model = attach_lora(model, cfg.train.lora, policy is not None)
        if policy:
            enable_checkpointing(model, policy, int(cfg.train.lora.r))
        with torch.no_grad():  # B starts at zero (so would every A gradient): give both a gradient to check
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.02)
        model.train()
        torch.manual_seed(1)
        loss, _ = target_loss(model, batch)
        loss.backward()
        grads[policy] = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    assert all(g.abs().sum() > 0 for g in grads[None].values())
    for policy in ("full", "matmuls"):
        assert grads[policy].keys() == grads[None].keys()
        for k, g in grads[None].items():
            torch.testing.assert_close(grads[policy][k], g, rtol=1e-4, atol=1e-6)


def test_bench_sft_pairs_rounds_and_fails_a_missed_or_unmeasured_goal():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_sft

    def case(tps: float, rss: float, mfu: float = 0.4) -> dict:
        return {"target_tokens_per_s": tps, "peak_rss_mb": rss, "mfu": mfu}

    rounds = [{"ours_gc": case(10, 3000, 0.55), "trl": case(2, 4000)},
              {"ours_gc": case(4, 3000, 0.45), "trl": case(1, 4000)},  # a slow round for both: ratio 4x
              {"ours_gc": case(12, 3000, 0.6), "trl": {"error": "boom"}}]
    res, goals = bench_sft.summarize(rounds, ["ours_gc", "trl"])
    assert res["ours_gc"]["mfu"] == 0.55 and res["ours_gc"]["rounds"] == 3 and res["trl"]["rounds"] == 2
    assert res["ratios"]["ours_gc_vs_trl_target_tokens_per_s"] == 4.5  # median of 5x and 4x, the error skipped
    met, missed = bench_sft.judge(goals)
    assert met == {"ours_gc_mfu": True, "ours_gc_vs_trl_speed": True, "ours_gc_vs_trl_peak_rss": True}
    assert not missed
    _, goals = bench_sft.summarize([{"ours_gc": case(10, 3000, 0.3), "trl": {"error": "boom"}}], ["ours_gc", "trl"])
    met, missed = bench_sft.judge(goals)
    assert met == {"ours_gc_mfu": False, "ours_gc_vs_trl_speed": False, "ours_gc_vs_trl_peak_rss": False}
    assert len(missed) == 3 and "ours_gc_mfu = 0.30" in missed[0]
