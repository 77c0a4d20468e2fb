"""Judge speed claims, each measured side by side with its baseline in this one run.

    python benchmarks/bench_judge.py                  # both parts (prepare the sample first)
    python benchmarks/bench_judge.py --responses 3 --delay 0.2 --json reports/bench/bench_judge.json

1. hf_local (Gemma-3-270M, the seven-criterion rubric, real sample responses): shared-prefix scoring (rubric
   head encoded once, each response's context once, 7 short criterion suffixes as one batch) vs 7
   independent full forwards per response. Scores must agree (|Δ| < 1e-4, same argmax); target ≥ 3×.
2. openai backend through the judge (OpenAIJudge + the shared client) against a real local HTTP server with a
   fixed per-request delay: concurrency 8 vs sequential (concurrency 1); target ≥ 6×. Then a second run on
   the same cache must send 0 requests.
Exit status 1 if a target is missed. `--json PATH`: the figures of both parts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import benchkit  # noqa: E402
from conftest import compose_cfg  # noqa: E402

HF_TARGET, OPENAI_TARGET = 3.0, 6.0


def load_items(n: int):
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.judge import items

    cfg = compose_cfg()
    found, _ = items.collect(ROOT / "artifacts" / "prepare", ROOT / "missing.parquet", Taxonomy.from_config(cfg.taxonomy),
                             ["rated"])
    return cfg, items.limit(found, n, 0)


def bench_hf_local(n: int) -> dict:
    import torch

    from emplifai.judge.__main__ import judge_model_cfg
    from emplifai.judge.rubric import JudgePrompt, Rubric
    from emplifai.judge.scorer import DigitScorer
    from emplifai.lm import load_causal_lm

    torch.set_num_threads(1)
    cfg, its = load_items(n)
    rubric = Rubric.from_config(cfg.judge)
    b = JudgePrompt(cfg.judge.grading_prompt, rubric)
    model, tok = load_causal_lm(judge_model_cfg(cfg))
    scorer = DigitScorer(model, tok, rubric.lo, rubric.hi)
    scorer.score(b.head, b.context(its[0]), [b.suffix(its[0], rubric.criteria[0])])  # warm-up (+ head cache)
    times, results = {}, {}
    for shared in (False, True):
        t = time.perf_counter()
        results[shared] = [s for it in its for s in scorer.score(
            b.head, b.context(it), [b.suffix(it, c) for c in rubric.criteria], shared=shared)]
        times[shared] = time.perf_counter() - t
    diff = max(abs(a.score - c.score) for a, c in zip(results[True], results[False], strict=True))
    same_argmax = all(a.argmax == c.argmax for a, c in zip(results[True], results[False], strict=True))
    ratio = times[False] / times[True]
    print(f"hf_local {cfg.judge.model}, {len(its)} responses × {len(rubric.criteria)} criteria: independent "
          f"{times[False]:.2f}s vs shared-prefix {times[True]:.2f}s → {ratio:.1f}× (goal ≥ {HF_TARGET:.0f}×; max "
          f"|Δscore| {diff:.2e}, goal < 1e-4; argmax identical: {same_argmax})")
    return {"responses": len(its), "independent_s": times[False], "shared_prefix_s": times[True], "speedup": ratio,
            "max_abs_score_diff": diff, "argmax_identical": same_argmax,
            "ok": ratio >= HF_TARGET and diff < 1e-4 and same_argmax}


def bench_openai(n: int, delay: float) -> dict:
    from emplifai.judge.engine import OpenAIJudge
    from emplifai.judge.rubric import JudgePrompt, Rubric
    from llm_testserver import LLMTestServer

    _, its = load_items(n)
    times, second = {}, -1
    with LLMTestServer(delay_s=delay, reply_fn=lambda body: '{"score": 4}') as srv, \
            tempfile.TemporaryDirectory() as tmp:
        for conc in (1, 8):
            cfg = compose_cfg(["judge=openai", f"judge.base_url={srv.base_url}", "judge.api_key_env=null",
                           f"judge.concurrency={conc}", "judge.show_progress=false", f"judge.model=bench-{conc}"])
            j = OpenAIJudge(cfg.judge, JudgePrompt(cfg.judge.grading_prompt, Rubric.from_config(cfg.judge)),
                            Path(tmp) / "cache.sqlite")
            t = time.perf_counter()
            grades = j.grade(its)
            times[conc] = time.perf_counter() - t
            assert all(g.parse_ok for g in grades)
        before = srv.request_count
        OpenAIJudge(cfg.judge, JudgePrompt(cfg.judge.grading_prompt, Rubric.from_config(cfg.judge)),
                    Path(tmp) / "cache.sqlite").grade(its)
        second = srv.request_count - before
    calls = len(its) * 7
    ratio = times[1] / times[8]
    print(f"openai via judge, {calls} requests at {delay:.2f}s each: sequential {times[1]:.2f}s vs concurrency 8 "
          f"{times[8]:.2f}s → {ratio:.1f}× (goal ≥ {OPENAI_TARGET:.0f}×); second run: {second} requests (goal 0)")
    return {"requests": calls, "delay_s": delay, "sequential_s": times[1], "concurrency_8_s": times[8],
            "speedup": ratio, "cached_rerun_requests": second, "ok": ratio >= OPENAI_TARGET and second == 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=2, help="hf_local: responses to score (7 criteria each)")
    ap.add_argument("--api-responses", type=int, default=8, help="openai: responses (×7 requests)")
    ap.add_argument("--delay", type=float, default=0.2, help="openai: server delay per request (s)")
    ap.add_argument("--skip-hf", action="store_true")
    benchkit.json_option(ap)
    args = ap.parse_args()
    figures = {} if args.skip_hf else {"hf_local_shared_prefix": bench_hf_local(args.responses)}
    figures["openai_concurrency"] = bench_openai(args.api_responses, args.delay)
    benchkit.write_json(args.json, figures)
    goals = [] if args.skip_hf else [f"hf_local shared prefix ≥ {HF_TARGET:.0f}× with the same scores"]
    goals.append(f"openai concurrency 8 ≥ {OPENAI_TARGET:.0f}× sequential, cached rerun 0 requests")
    missed = [case for case, f in figures.items() if not f["ok"]]
    return benchkit.verdict(not missed, "; ".join(goals) + (f" (missed: {', '.join(missed)})" if missed else ""))


if __name__ == "__main__":
    sys.exit(main())
