"""One short run on a GPU box: our SFT step and the hf_rank Ranker at Gemma-3-270M's architecture, in bf16.

    PYTHONPATH=src python benchmarks/gpu_check.py --out $OUT/gpu.json            # cuda, bf16 autocast
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --steps 1 --batches 2 --policies matmuls \
        --ranker-prompts 4 --out /tmp/gpu.json                                  # dry run here (fp32)

The weights do not travel (536 MB), so the model is RANDOMLY INITIALISED from the real config.json: right
for throughput, memory and MFU (they depend on shapes, not values), meaningless for losses and rankings.
The tokenizer (tokenizer.json, for the Ranker's prompts) travels when carried; without it the Ranker part
is skipped with the reason. Sequences for SFT are synthetic token ids with the shipped sample's lengths
(prompt + supporter 145-188 tokens, ~32 target tokens each).

SFT: our loop (emplifai.train: attach_lora, enable_checkpointing, target_loss = lm_head on target tokens
only, chunked) under bf16 autocast as Lightning's `bf16-mixed` runs it, per checkpoint policy and batch
size; and the plain HF loss (full logits, HF's own gradient checkpointing) as the reference TRL-like step
(trl is not installed there). Figures: target tokens/s, peak GPU memory, useful FLOP/s and MFU against the
bf16 matmul peak on the model's own GEMM shapes timed in this process (and, for scale, a 8192^3 GEMM).
Ranker: prompts/s of `scores` (one prompt at a time) and of `scores_batch` when the class has it.
Every part catches its own failure (recorded in the JSON under "errors") and the run stops starting new
parts after --budget-s seconds. Figures: {"<case>": {"<figure>": value}} in --out.
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import json
import platform
import sys
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MODEL_DIR = ROOT / "models" / "base" / "gemma3-270m"
START = time.perf_counter()


def omegaconf_stand_in() -> str:
    """emplifai's config helpers import omegaconf at module level; a box without Hydra gets a stand-in with
    the names those imports need (nothing here calls them)."""
    try:
        import omegaconf  # noqa: F401

        return "installed"
    except ImportError:
        import lightning.pytorch  # noqa: F401  (it notes omegaconf's absence now, before the stand-in exists)

        mod = types.ModuleType("omegaconf")
        mod.__spec__ = importlib.machinery.ModuleSpec("omegaconf", None)
        mod.DictConfig, mod.ListConfig = type("DictConfig", (dict,), {}), type("ListConfig", (list,), {})
        mod.OmegaConf = type("OmegaConf", (), {"to_container": staticmethod(lambda x, **kw: x)})
        sys.modules["omegaconf"] = mod
        return "missing: stand-in module"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_from_config(device: str, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(MODEL_DIR))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.train(), config


def synthetic_batches(n: int, batch: int, vocab: int, seed: int = 0) -> list[dict]:
    """Right-padded batches with the sample's lengths: 145-188 tokens, the last 20-45 of them targets."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(145, 189, (batch,), generator=g)
        n_target = torch.randint(20, 46, (batch,), generator=g)
        width = int(lengths.max())
        ids = torch.randint(10, vocab, (batch, width), generator=g)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        labels = torch.where(torch.arange(width)[None] >= (lengths - n_target)[:, None], ids, -100)
        labels[mask == 0] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def sft_case(a, policy: str, batch: int, peak: float, square: float | None, chunk: int | None = None) -> dict:
    """Target tokens/s, peak memory, MFU of `steps` timed steps after `warmup` (policy "hf" = plain HF loss)."""
    import torch

    from emplifai.train.adapter import attach_lora
    from emplifai.train.flops import StepFlops
    from emplifai.train.module import enable_checkpointing, target_loss

    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    model, config = model_from_config(a.device, torch.float32)
    flops, why = StepFlops.of(config, lora)
    model = attach_lora(model, lora, policy != "none")
    if policy in ("full", "matmuls"):
        enable_checkpointing(model, policy, lora["r"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    data = synthetic_batches(a.warmup + a.steps, batch, config.vocab_size)
    autocast = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.precision == "bf16-mixed")
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated() / 2**20 if a.device.startswith("cuda") else None
    tokens, useful, seconds = 0, 0.0, 0.0
    for i, b in enumerate(data):
        b = {k: v.to(a.device) for k, v in b.items()}
        sync(a.device)
        t0 = time.perf_counter()
        with autocast:
            if policy == "hf":
                loss = model(**b).loss
                n = int((b["labels"][:, 1:] != -100).sum())
            else:
                loss, n = target_loss(model, b, **({"chunk": chunk} if chunk else {}))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(a.device)
        if i >= a.warmup:
            seconds += time.perf_counter() - t0
            tokens += n
            useful += flops(b["attention_mask"], n) if flops else float("nan")
    mem = torch.cuda.max_memory_allocated() / 2**20 if a.device.startswith("cuda") else None  # JSON null
    del model, opt, params
    gc.collect()  # peft/HF modules hold reference cycles: free the GPU memory before the next case
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"policy": policy, "batch": batch, "loss_chunk": chunk or "default", "target_tokens_per_s": tokens / seconds, "step_ms": 1e3 * seconds
            / a.steps, "peak_mem_mb": mem, "model_mem_mb": base_mem, "useful_tflop_per_s": useful / seconds / 1e12,
            "mfu": useful / seconds / peak, "mfu_vs_square_gemm": useful / seconds / square if square else None,
            **({"flops_note": why} if why else {})}


def ranker_case(a, n_prompts: int) -> dict:
    """hf_rank's Ranker on a 28-label taxonomy, sample dialogues behind an instruction + few-shot prefix."""
    import pandas as pd
    import torch
    import yaml
    from transformers import AutoTokenizer

    from emplifai.emotion.hf import Ranker

    if not (MODEL_DIR / "tokenizer.json").exists():
        return {"skipped": f"no tokenizer at {MODEL_DIR} (carry tokenizer.json + tokenizer_config.json)"}
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    dtype = torch.bfloat16 if a.precision == "bf16-mixed" else torch.float32
    model, _ = model_from_config(a.device, dtype)
    model.eval()
    labels = [e["ja"] for e in yaml.safe_load((ROOT / "conf/taxonomy/goemotions_ja.yaml").read_text())["emotions"]]
    sample = ROOT / "src" / "emplifai" / "sample"
    dia = pd.read_csv(sample / "dialogues.csv").merge(pd.read_csv(sample / "situations.csv"), on="situation_id")

    def shot(r) -> str:
        return f"状況: {r.situation}\n患者: {r.patient}\n支援者: {r.supporter}\n患者の感情:"

    prefix = ("次の医療場面の対話を読み、患者の感情を一つ選んでください。選択肢: " + "、".join(labels) + "\n\n"
              + "".join(f"{shot(r)} {r.emotion}\n\n" for r in dia.head(4).itertuples()))
    prompts = [prefix + shot(r) for r in dia.iloc[4: 4 + n_prompts].itertuples()]
    ranker = Ranker(model, tok, prefix, [x + "\n" for x in labels])
    out = {"prompts": len(prompts), "prefix_tokens": len(ranker.prefix_ids), "labels": len(labels)}
    ranker.scores(prompts[0])  # warm-up
    sync(a.device)
    t0 = time.perf_counter()
    one = [ranker.scores(p) for p in prompts]
    sync(a.device)
    out["one_at_a_time_prompts_per_s"] = len(prompts) / (time.perf_counter() - t0)
    batch_fn = getattr(ranker, "scores_batch", None)
    if batch_fn is None:
        out["batched"] = "Ranker has no scores_batch"
        return out
    for size in a.ranker_batches:
        batch_fn(prompts[:size], batch_size=size)  # warm-up at this shape
        sync(a.device)
        t0 = time.perf_counter()
        many = batch_fn(prompts, batch_size=size)
        sync(a.device)
        out[f"batch{size}_prompts_per_s"] = len(prompts) / (time.perf_counter() - t0)
        out[f"batch{size}_max_abs_diff_vs_one"] = float(max(abs(x - y).max() for x, y in zip(many, one, strict=True)))
    return out


def environment(a) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": a.device, "precision": a.precision, "threads": torch.get_num_threads(),
           "omegaconf": omegaconf_stand_in(), "weights": "random init from config.json (throughput only)"}
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        env["peft"] = "missing"
    if a.device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=p.name, gpu_mem_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   sms=p.multi_processor_count)
    return env


def table(res: dict) -> dict:
    """Print the SFT table; {"ours_<policy>_vs_hf_b<batch>_<figure>": ratio} (speed up, memory down)."""
    print(f"\n{'case':<26}{'tok/s':>10}{'step ms':>9}{'peak MB':>9}{'TFLOP/s':>9}{'MFU':>6}")
    ratios = {}
    for case, r in res.items():
        if case.startswith("sft_") and "mfu" in r:
            print(f"{case:<26}{r['target_tokens_per_s']:>10.0f}{r['step_ms']:>9.1f}{r['peak_mem_mb'] or 0:>9.0f}"
                  f"{r['useful_tflop_per_s']:>9.1f}{r['mfu']:>6.2f}")
            ref = res.get(f"sft_hf_b{r['batch']}", {})
            if r["policy"] != "hf" and "mfu" in ref:
                chunk = "" if r["loss_chunk"] == "default" else f"_chunk{r['loss_chunk']}"
                key = f"ours_{r['policy']}{chunk}_vs_hf_b{r['batch']}"
                ratios[f"{key}_tokens_per_s"] = r["target_tokens_per_s"] / ref["target_tokens_per_s"]
                if r["peak_mem_mb"] and ref["peak_mem_mb"]:
                    ratios[f"{key}_peak_mem"] = r["peak_mem_mb"] / ref["peak_mem_mb"]
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    if "ranker" in res:
        print("ranker", json.dumps(res["ranker"], ensure_ascii=False))
    return ratios


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", choices=["bf16-mixed", "32"], help="default: bf16-mixed on cuda, 32 on cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--policies", nargs="+", default=["matmuls", "full", "none", "hf"])
    p.add_argument("--loss-chunks", type=int, nargs="*", default=[1024, 4096],
                   help="extra cases: policy matmuls, largest batch, these lm_head chunk sizes")
    p.add_argument("--ranker-prompts", type=int, default=64)
    p.add_argument("--ranker-batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--budget-s", type=float, default=300, help="start no new part after this many seconds")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.precision = a.precision or ("bf16-mixed" if a.device.startswith("cuda") else "32")
    import torch

    res: dict[str, dict] = {"env": environment(a)}
    print(json.dumps(res["env"], ensure_ascii=False), flush=True)
    errors: dict[str, str] = {}

    def part(name: str, fn) -> None:
        if time.perf_counter() - START > a.budget_s:
            errors[name] = f"skipped: past --budget-s {a.budget_s}"
            return
        t0 = time.perf_counter()
        try:
            res[name] = {**fn(), "part_seconds": time.perf_counter() - t0}
            print(name, json.dumps(res[name], ensure_ascii=False), flush=True)
        except Exception as err:  # a failed part must not lose the others' figures
            errors[name] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name} FAILED\n{traceback.format_exc()}", flush=True)
        finally:
            args = {"indent": 2, "ensure_ascii": False, "default": str}
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({**res, **({"errors": errors} if errors else {})}, **args))

    omegaconf_stand_in()
    from emplifai.train.flops import Arch, matmul_peak, typical_shapes

    dtype = torch.bfloat16 if a.precision == "bf16-mixed" else torch.float32
    arch = Arch.from_config(json.loads((MODEL_DIR / "config.json").read_text()))

    def peak() -> dict:
        out = {}
        for b in a.batches:
            m = matmul_peak(typical_shapes(arch, b * 166), dtype, a.device)
            out[f"batch{b}_tflop_per_s"] = m["peak"] / 1e12
            out.update({f"batch{b}_{k}": v / 1e12 for k, v in m["by_shape"].items()})
        if a.device.startswith("cuda"):
            out["square8192_tflop_per_s"] = matmul_peak([(8192, 8192, 8192)], dtype, a.device)["peak"] / 1e12
        return out

    part("matmul_peak", peak)
    for b in a.batches:
        for policy in a.policies:
            part(f"sft_{policy}_b{b}", lambda b=b, policy=policy: sft_case(
                a, policy, b, res["matmul_peak"][f"batch{b}_tflop_per_s"] * 1e12,
                res["matmul_peak"].get("square8192_tflop_per_s", 0) * 1e12))
    for chunk in a.loss_chunks:  # lm_head rows per chunk: the CPU default bounds memory; a GPU has room
        b = max(a.batches)
        part(f"sft_matmuls_b{b}_chunk{chunk}", lambda b=b, chunk=chunk: sft_case(
            a, "matmuls", b, res["matmul_peak"][f"batch{b}_tflop_per_s"] * 1e12,
            res["matmul_peak"].get("square8192_tflop_per_s", 0) * 1e12, chunk))
    part("ranker", lambda: ranker_case(a, a.ranker_prompts))
    ratios = table(res)
    if ratios:
        res["ratios"] = ratios
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({**res, **({"errors": errors} if errors else {})}, indent=2, ensure_ascii=False,
                                default=str))
    print(f"\ntotal {time.perf_counter() - START:.0f} s; figures -> {a.out}" + (f"; errors: {errors}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
