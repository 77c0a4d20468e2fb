"""SFT speed claims, measured side by side in one command (each case in its own process, for its peak RSS).

    python benchmarks/bench_sft.py [--steps 3] [--batch 8] [--threads 2] [--repeats 2] [--json PATH]
                                   [--cases ours_gc,ours_gc_full,ours_no_gc,trl,gen_batched,gen_single]

1. Training throughput (target tokens/s), peak RSS and model-FLOPs utilisation (MFU) of our loop
   (emplifai.train: length-bucketed batches, lm_head only at target positions, chunked with the gradient
   taken in the same pass) vs TRL's SFTTrainer (bench-only dependency `trl`, its defaults: gradient
   checkpointing on), Gemma-3-270M, the same pre-tokenized, prompt-masked examples (`completion_mask`),
   LoRA config, batch size, max length and learning rate. Ours with gradient checkpointing as configured
   (`ours_gc`: train.checkpoint_policy, our default), with the `full` recompute policy (`ours_gc_full`) and
   without checkpointing (`ours_no_gc`). One warm-up step, then `--steps` timed steps each.
   MFU = useful FLOPs (emplifai.train.flops: forward + activation backward of the frozen body on non-pad
   tokens, LoRA, LM head on target tokens; recomputation not counted) per second / the fp32 matmul peak on
   the model's own GEMM shapes, timed in the same process right after each timed step (same load).
   Goals: ours_gc MFU >= 0.5, >= 1.5x TRL's target tokens/s, lower peak RSS than TRL.
2. Generation: batched (left padding) vs one prompt at a time, same prompts, greedy. Goal: >= 2x.

The cases run interleaved, `--repeats` rounds; figures are medians over rounds, ratios medians of the
per-round ratios (neighbours in time share the machine's load). Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchkit

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_LENGTH = 192
GOALS = {"mfu": 0.5, "speedup": 1.5, "gen_speedup": 2.0}


def setup(threads: int, n: int):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_cfg
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.lm import load_causal_lm
    from emplifai.train.datamodule import read_split
    from emplifai.train.examples import SFTPrompt

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = compose_cfg(["model=gemma3-270m"])
    model, tok = load_causal_lm(cfg.model)
    builder = SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok,
                                    Taxonomy.from_config(cfg.taxonomy))
    rows = read_split(ROOT / "artifacts" / "prepare", "train").head(n).to_dict("records")
    return cfg, model, builder, rows, [builder.encode(r, MAX_LENGTH) for r in rows]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Utilisation:
    """MFU with the peak timed right after each timed step (the same load as the step, on a shared machine):
    useful FLOPs / sum(step seconds x peak FLOP/s)."""

    def __init__(self, arch, tokens: int) -> None:
        from emplifai.train.flops import typical_shapes

        self.shapes = typical_shapes(arch, tokens)
        self.useful, self.seconds, self.peak_seconds = 0.0, 0.0, 0.0

    def add(self, useful: float, seconds: float) -> None:
        from emplifai.train.flops import matmul_peak

        peak = matmul_peak(self.shapes, seconds=0.1)["peak"]
        self.useful, self.seconds, self.peak_seconds = (self.useful + useful, self.seconds + seconds,
                                                        self.peak_seconds + peak * seconds)

    def figures(self) -> dict:
        return {"useful_gflop_per_s": self.useful / self.seconds / 1e9,
                "peak_gflop_per_s": self.peak_seconds / self.seconds / 1e9, "mfu": self.useful / self.peak_seconds}


def ours(a, policy: str | None) -> dict:
    """Our loop; `policy`: None = no gradient checkpointing, "default" = train.checkpoint_policy, or full |
    matmuls."""
    import torch

    from emplifai.train.adapter import attach_lora
    from emplifai.train.datamodule import LengthBucketSampler, collate
    from emplifai.train.flops import StepFlops
    from emplifai.train.module import enable_checkpointing, target_loss

    cfg, model, builder, _, enc = setup(a.threads, a.batch * (a.steps + 1))
    flops, _ = StepFlops.of(model.config, cfg.train.lora)
    model = attach_lora(model, cfg.train.lora, policy is not None)
    if policy is not None:
        policy = str(cfg.train.checkpoint_policy) if policy == "default" else policy
        enable_checkpointing(model, policy, int(cfg.train.lora.r))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    batches = list(LengthBucketSampler([len(e.input_ids) for e in enc], a.batch, seed=0))
    tokens, real, cells = 0, 0, 0
    use = Utilisation(flops.arch, sum(len(e.input_ids) for e in enc) * a.batch // len(enc))
    for i, idx in enumerate(batches):
        batch = collate([enc[j] for j in idx], builder.tokenizer.pad_token_id)
        t0 = time.perf_counter()
        loss, n = target_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        if i >= 1:  # the first step is the warm-up
            mask = batch["attention_mask"]
            tokens, real, cells = tokens + n, real + int(mask.sum()), cells + mask.numel()
            rss = peak_mb()  # before the peak's GEMM operands exist
            use.add(flops(mask, n), dt)
    return {"target_tokens_per_s": tokens / use.seconds, "seconds": use.seconds, "peak_rss_mb": rss,
            "padding": 1 - real / cells, **use.figures()}


def trl(a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from emplifai.train.flops import StepFlops

    cfg, model, builder, _, enc = setup(a.threads, a.batch * (a.steps + 1))
    flops, _ = StepFlops.of(model.config, cfg.train.lora)
    data = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": [0] * e.n_prompt + [1] * e.n_target}
                              for e in enc])
    lora = cfg.train.lora
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    # TRL's sampler picks the examples; FLOPs add up over sequences, so the mean example's are exact in
    # expectation (its target count: TRL's shift drops the first completion token like ours)
    import torch

    mean_step = a.batch / len(enc) * flops(torch.tensor([[1] * len(e.input_ids) + [0] * (MAX_LENGTH - len(
        e.input_ids)) for e in enc]), sum(e.n_target for e in enc))
    use = Utilisation(flops.arch, sum(len(e.input_ids) for e in enc) * a.batch // len(enc))
    state = {"t0": 0.0, "step": 0, "rss": 0.0}

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            state["t0"] = time.perf_counter()

        def on_step_end(self, *args, **kw):
            dt = time.perf_counter() - state["t0"]
            state["step"] += 1
            if state["step"] > 1:  # the first step is the warm-up
                state["rss"] = peak_mb()
                use.add(mean_step, dt)

    args = SFTConfig(output_dir="/tmp/bench_sft_trl", per_device_train_batch_size=a.batch, max_length=MAX_LENGTH,
                     max_steps=a.steps + 1, learning_rate=2e-4, completion_only_loss=True, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_grad_norm=1.0, bf16=False,
                     dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=builder.tokenizer,
                         peft_config=peft_cfg, callbacks=[Clock()])
    trainer.train()
    per_example = sum(e.n_target for e in enc) / len(enc)
    return {"target_tokens_per_s": per_example * a.batch * a.steps / use.seconds, "seconds": use.seconds,
            "peak_rss_mb": state["rss"], "trl_version": __import__("trl").__version__, **use.figures()}


def gen(a, batched: bool) -> dict:
    from emplifai.generate.generation import generate

    cfg, model, builder, rows, _ = setup(a.threads, a.gen_prompts)
    g = {**cfg.generate, "max_new_tokens": a.new_tokens, "batch_size": len(rows) if batched else 1,
         "stop_at_newline": False, "do_sample": False}
    generate(model, builder, rows[:1], {**g, "max_new_tokens": 2}, 0, desc="warm-up")
    t0 = time.perf_counter()
    out = generate(model, builder, rows, g, 0, desc="batched" if batched else "one at a time")
    dt = time.perf_counter() - t0
    return {"responses_per_s": len(rows) / dt, "seconds": dt, "new_tokens": sum(r["n_tokens"] for r in out),
            "peak_rss_mb": peak_mb()}


CASES = {"ours_gc": lambda x: ours(x, "default"), "ours_gc_full": lambda x: ours(x, "full"),
         "ours_no_gc": lambda x: ours(x, None), "trl": trl,
         "gen_batched": lambda x: gen(x, True), "gen_single": lambda x: gen(x, False)}
TRAIN = {"ours_gc": "checkpointing (our default policy)", "ours_gc_full": "checkpointing, policy full",
         "ours_no_gc": "no checkpointing", "trl": "TRL SFTTrainer"}


def median_figures(runs: list[dict]) -> dict:
    """Median of each number over the rounds that ran; the error text if none did."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"][-500:]} if runs else {"error": "not run"}
    return {**{k: statistics.median(r[k] for r in ok) if isinstance(v, int | float) else v
               for k, v in ok[0].items()}, "rounds": len(ok)}


def paired(rounds: list[dict], num: str, den: str, figure: str) -> float:
    """Median over rounds of num/den of `figure` (each round's two runs are neighbours in time)."""
    vals = [r[num][figure] / r[den][figure] for r in rounds
            if "error" not in r.get(num, {"error": 1}) and "error" not in r.get(den, {"error": 1})]
    return statistics.median(vals) if vals else float("nan")


def summarize(rounds: list[dict], cases: list[str]) -> tuple[dict, dict[str, tuple[float, float, str]]]:
    """({case: median figures, "ratios": {...}}, {goal: (value, target, op)})."""
    res = {c: median_figures([r[c] for r in rounds if c in r]) for c in cases}
    # mfu ratio = the speed ratio with each run's own matmul peak as the clock: the same useful FLOPs per
    # target token on both sides, so it cancels the load of a shared machine between the two runs
    ratios = {f"{c}_vs_trl_{f}": paired(rounds, c, "trl", f) for c in TRAIN if c != "trl" and c in res
              for f in ("target_tokens_per_s", "peak_rss_mb", "mfu")} if "trl" in res else {}
    if "gen_batched" in res and "gen_single" in res:
        ratios["gen_batched_vs_single"] = paired(rounds, "gen_batched", "gen_single", "responses_per_s")
    goals = {}
    if "ours_gc" in res:
        goals["ours_gc_mfu"] = (res["ours_gc"].get("mfu", float("nan")), GOALS["mfu"], ">=")
    if "ours_gc" in res and "trl" in res:
        goals["ours_gc_vs_trl_speed"] = (ratios["ours_gc_vs_trl_target_tokens_per_s"], GOALS["speedup"], ">=")
        goals["ours_gc_vs_trl_peak_rss"] = (ratios["ours_gc_vs_trl_peak_rss_mb"], 1.0, "<")
    if "gen_batched_vs_single" in ratios:
        goals["gen_batched_vs_single"] = (ratios["gen_batched_vs_single"], GOALS["gen_speedup"], ">=")
    return {**res, "ratios": ratios}, goals


def judge(goals: dict[str, tuple[float, float, str]]) -> tuple[dict[str, bool], list[str]]:
    """({goal: met}, the missed ones as text); a NaN figure (a case that failed) misses its goal."""
    met = {name: bool(v >= t if op == ">=" else v < t) for name, (v, t, op) in goals.items()}
    return met, [f"{n} = {v:.2f}, goal {op} {t}" for n, (v, t, op) in goals.items() if not met[n]]


def report(res: dict, goals: dict, a) -> None:
    load = os.getloadavg()[0]
    print(f"\nmedians over {a.repeats} interleaved round(s); load average now {load:.1f} on {os.cpu_count()} "
          f"cores; threads={a.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"batch={a.batch}, timed steps={a.steps}")
    if load > (os.cpu_count() or 1) and a.threads > 1 and "OMP_WAIT_POLICY" not in os.environ:
        print("  (a loaded machine: spinning OpenMP threads lose their time slices; OMP_WAIT_POLICY=PASSIVE or "
              "--threads 1 measure the code rather than the contention)")
    print(f"{'case':<14}{'target tok/s':>13}{'peak RSS MB':>12}{'useful GF/s':>12}{'peak GF/s':>10}{'MFU':>6}"
          f"{'padding':>8}  what")
    for c, what in TRAIN.items():
        r = res.get(c)
        if r is None:
            continue
        if "error" in r:
            print(f"{c:<14} ERROR {r['error'][-300:]}")
            continue
        pad = f"{r['padding']:.1%}" if "padding" in r else "-"
        print(f"{c:<14}{r['target_tokens_per_s']:>13.1f}{r['peak_rss_mb']:>12.0f}{r['useful_gflop_per_s']:>12.1f}"
              f"{r['peak_gflop_per_s']:>10.1f}{r['mfu']:>6.2f}{pad:>8}  {what}")
    for c in ("gen_batched", "gen_single"):
        if c in res and "error" in res[c]:
            print(f"{c} ERROR {res[c]['error'][-300:]}")
    for name, value in res["ratios"].items():
        print(f"  {name}: {value:.2f}x")
    for name, (value, target, op) in goals.items():
        print(f"goal {name}: {value:.2f} (goal {op} {target})")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gen-prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--case", choices=sorted(CASES))
    p.add_argument("--cases", default="ours_gc,ours_gc_full,ours_no_gc,trl,gen_batched,gen_single")
    benchkit.json_option(p)
    a = p.parse_args()
    if a.case:
        print("RESULT " + json.dumps(CASES[a.case](a)))
        return 0
    cases = a.cases.split(",")
    args = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in ("steps", "batch", "threads", "gen_prompts",
                                                               "new_tokens")]
    rounds: list[dict] = []
    for k in range(a.repeats):
        rounds.append({})
        for case in cases:
            out = subprocess.run([sys.executable, __file__, "--case", case, *args], capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            rounds[-1][case] = json.loads(line[-1][7:]) if line else {"error": out.stderr[-1500:]}
            shown = {n: round(v, 3) for n, v in rounds[-1][case].items() if isinstance(v, int | float)}
            print(f"round {k + 1} {case}", shown or rounds[-1][case], flush=True)
    res, goals = summarize(rounds, cases)
    report(res, goals, a)
    met, missed = judge(goals)
    figures = {c: {n: v for n, v in r.items() if isinstance(v, int | float | str)} for c, r in res.items()}
    figures = {c: row for c, row in figures.items() if row}  # e.g. no ratios when a single case ran
    benchkit.write_json(a.json, {**figures, "goals_met": met} if met else figures)
    if missed:
        print("missed: " + "; ".join(missed))
    return benchkit.verdict(bool(met) and not missed,
                            "; ".join(f"{n} {op} {t}" for n, (_, t, op) in goals.items()) or "no goal measured")


if __name__ == "__main__":
    sys.exit(main())
