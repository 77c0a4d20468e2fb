"""SFT speed claims, measured side by side in one command (each case in its own process, for its peak RSS).

    python benchmarks/bench_sft.py [--steps 3] [--batch 8] [--threads 2] [--cases ours,ours_gc,trl,...]

1. Training throughput (target tokens/s) of our loop (emplifai.sft: length-bucketed batches, lm_head only at
   target positions, chunked with the gradient taken in the same pass) vs TRL's SFTTrainer (bench-only
   dependency `trl`, its defaults: gradient checkpointing on), Gemma-3-270M, the same pre-tokenized,
   prompt-masked examples (`completion_mask`), LoRA config, batch size, max length and learning rate. Ours
   both with gradient checkpointing (`ours_gc`, our default too) and without (`ours`). One warm-up step,
   then `--steps` timed steps each. Goal: >= 1.5x, lower peak memory.
2. Generation: batched (left padding) vs one prompt at a time, same prompts, greedy. Goal: >= 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup(threads: int, n: int, max_length: int = 192):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_cfg
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.modelzoo import load_causal_lm
    from emplifai.sft.datamodule import read_split
    from emplifai.sft.prompts import PromptBuilder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = compose_cfg(["model=gemma3-270m"])
    model, tok = load_causal_lm(cfg.model)
    builder = PromptBuilder.from_config(cfg.prompt, str(cfg.model.chat_format), tok, Taxonomy.from_config(cfg.taxonomy))
    rows = read_split(ROOT / "artifacts" / "prepare", "train").head(n).to_dict("records")
    return cfg, model, builder, rows, [builder.encode(r, max_length) for r in rows]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(a, checkpointing: bool) -> dict:
    import torch

    from emplifai.sft.adapter import attach_lora
    from emplifai.sft.datamodule import LengthBucketSampler, collate
    from emplifai.sft.module import target_loss

    cfg, model, builder, _, enc = setup(a.threads, a.batch * (a.steps + 1))
    model = attach_lora(model, cfg.train.lora, checkpointing)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = list(LengthBucketSampler([len(e.input_ids) for e in enc], a.batch, seed=0))
    tokens, t0 = 0, 0.0
    for i, idx in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        loss, n = target_loss(model, collate([enc[j] for j in idx], builder.tokenizer.pad_token_id))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        tokens += n if i >= 1 else 0
    dt = time.perf_counter() - t0
    return {"target_tokens_per_s": tokens / dt, "seconds": dt, "peak_rss_mb": peak_mb()}


def trl(a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cfg, model, builder, _, enc = setup(a.threads, a.batch * (a.steps + 1))
    data = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": [0] * e.n_prompt + [1] * e.n_target}
                              for e in enc])
    lora = cfg.train.lora
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, *args, **kw):
            times.append(time.perf_counter())

    args = SFTConfig(output_dir="/tmp/bench_sft_trl", per_device_train_batch_size=a.batch, max_length=192,
                     max_steps=a.steps + 1, learning_rate=2e-4, completion_only_loss=True, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_grad_norm=1.0, bf16=False,
                     dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=builder.tokenizer,
                         peft_config=peft_cfg, callbacks=[Clock()])
    trainer.train()
    dt = sum(times[i + 1] - times[i] for i in range(2, len(times), 2))  # steps after the first
    per_example = sum(e.n_target for e in enc) / len(enc)
    return {"target_tokens_per_s": per_example * a.batch * a.steps / dt, "seconds": dt, "peak_rss_mb": peak_mb(),
            "trl_version": __import__("trl").__version__}


def gen(a, batched: bool) -> dict:
    from emplifai.sft.generation import generate

    cfg, model, builder, rows, _ = setup(a.threads, a.gen_prompts)
    g = {**cfg.generate, "max_new_tokens": a.new_tokens, "batch_size": len(rows) if batched else 1,
         "stop_at_newline": False, "do_sample": False}
    generate(model, builder, rows[:1], {**g, "max_new_tokens": 2}, 0, desc="warm-up")
    t0 = time.perf_counter()
    out = generate(model, builder, rows, g, 0, desc="batched" if batched else "one at a time")
    dt = time.perf_counter() - t0
    return {"responses_per_s": len(rows) / dt, "seconds": dt, "new_tokens": sum(r["n_tokens"] for r in out),
            "peak_rss_mb": peak_mb()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--case")
    p.add_argument("--cases", default="ours,ours_gc,trl,gen_batched,gen_single")
    a = p.parse_args()
    if a.case:
        fn = {"ours": lambda x: ours(x, False), "ours_gc": lambda x: ours(x, True), "trl": trl,
              "gen_batched": lambda x: gen(x, True), "gen_single": lambda x: gen(x, False)}
        print("RESULT " + json.dumps(fn[a.case](a)))
        return
    res = {}
    for case in a.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--case", case, *sys.argv[1:]], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        res[case] = json.loads(line[-1][7:]) if line else {"error": out.stderr[-1500:]}
        print(case, res[case], flush=True)
    print(f"\nload average {os.getloadavg()}; threads={a.threads}, batch={a.batch}, timed steps={a.steps}")

    def ok(*cases: str) -> bool:
        return all(c in res and "error" not in res[c] for c in cases)

    for case, what in (("ours", "no gradient checkpointing"), ("ours_gc", "gradient checkpointing, our default")):
        if ok(case, "trl"):
            r = res[case]["target_tokens_per_s"] / res["trl"]["target_tokens_per_s"]
            m = res[case]["peak_rss_mb"] / res["trl"]["peak_rss_mb"]
            print(f"train ({what}): ours {res[case]['target_tokens_per_s']:.1f} vs TRL SFTTrainer "
                  f"{res['trl']['target_tokens_per_s']:.1f} target tok/s -> {r:.2f}x (goal >= 1.5x); "
                  f"peak RSS {res[case]['peak_rss_mb']:.0f} vs {res['trl']['peak_rss_mb']:.0f} MB ({m:.2f}x, goal < 1)")
    if ok("gen_batched", "gen_single"):
        r = res["gen_single"]["seconds"] / res["gen_batched"]["seconds"]
        print(f"generate: batched {res['gen_batched']['seconds']:.1f} s vs one at a time "
              f"{res['gen_single']['seconds']:.1f} s for {a.gen_prompts} prompts -> {r:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
