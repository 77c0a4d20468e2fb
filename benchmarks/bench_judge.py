"""Judge speed claims, each measured side by side with its baseline in this one run.

    python benchmarks/bench_judge.py                  # both parts (prepare the sample first)
    python benchmarks/bench_judge.py --responses 3 --delay 0.2

1. hf_local (Gemma-3-270M, the seven-criterion rubric, real sample responses): shared-prefix scoring (rubric
   head encoded once, each response's context once, 7 short criterion suffixes as one batch) vs 7
   independent full forwards per response. Scores must agree (|Δ| < 1e-4, same argmax); target ≥ 3×.
2. openai backend through the judge (OpenAIJudge + the shared client) against a real local HTTP server with a
   fixed per-request delay: concurrency 8 vs sequential (concurrency 1); target ≥ 6×. Then a second run on
   the same cache must send 0 requests.
Exit status 1 if a target is missed.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hcompose("config", overrides=overrides)


def load_items(n: int):
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.judging import items

    cfg = compose([])
    found, _ = items.collect(ROOT / "artifacts" / "prepare", ROOT / "missing.parquet", Taxonomy.from_config(cfg.taxonomy),
                             ["rated"])
    return cfg, items.limit(found, n, 0)


def bench_hf_local(n: int) -> float:
    import torch

    from emplifai.judge import judge_model_cfg
    from emplifai.judging.rubric import PromptBuilder, Rubric
    from emplifai.judging.scorer import DigitScorer
    from emplifai.modelzoo import load_causal_lm

    torch.set_num_threads(1)
    cfg, its = load_items(n)
    rubric = Rubric.from_config(cfg.judge)
    b = PromptBuilder(cfg.judge.prompt, rubric)
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
          f"{times[False]:.2f}s vs shared-prefix {times[True]:.2f}s → {ratio:.1f}× (max |Δscore| {diff:.2e}, "
          f"argmax identical: {same_argmax})")
    if diff >= 1e-4 or not same_argmax:
        print("  FAIL: shared-prefix scores differ from independent forwards")
        return 0.0
    return ratio


def bench_openai(n: int, delay: float) -> tuple[float, int]:
    from emplifai.judging.engine import OpenAIJudge
    from emplifai.judging.rubric import PromptBuilder, Rubric
    from llm_testserver import LLMTestServer

    _, its = load_items(n)
    times, second = {}, -1
    with LLMTestServer(delay_s=delay, reply_fn=lambda body: '{"score": 4}') as srv, \
            tempfile.TemporaryDirectory() as tmp:
        for conc in (1, 8):
            cfg = compose(["judge=openai", f"judge.base_url={srv.base_url}", "judge.api_key_env=null",
                           f"judge.concurrency={conc}", "judge.show_progress=false", f"judge.model=bench-{conc}"])
            j = OpenAIJudge(cfg.judge, PromptBuilder(cfg.judge.prompt, Rubric.from_config(cfg.judge)),
                            Path(tmp) / "cache.sqlite")
            t = time.perf_counter()
            grades = j.grade(its)
            times[conc] = time.perf_counter() - t
            assert all(g.parse_ok for g in grades)
        before = srv.request_count
        OpenAIJudge(cfg.judge, PromptBuilder(cfg.judge.prompt, Rubric.from_config(cfg.judge)),
                    Path(tmp) / "cache.sqlite").grade(its)
        second = srv.request_count - before
    calls = len(its) * 7
    ratio = times[1] / times[8]
    print(f"openai via judge, {calls} requests at {delay:.2f}s each: sequential {times[1]:.2f}s vs concurrency 8 "
          f"{times[8]:.2f}s → {ratio:.1f}×; second run: {second} requests")
    return ratio, second


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=2, help="hf_local: responses to score (7 criteria each)")
    ap.add_argument("--api-responses", type=int, default=8, help="openai: responses (×7 requests)")
    ap.add_argument("--delay", type=float, default=0.2, help="openai: server delay per request (s)")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    ok = True
    if not args.skip_hf:
        ok &= bench_hf_local(args.responses) >= 3.0
    ratio, second = bench_openai(args.api_responses, args.delay)
    ok &= ratio >= 6.0 and second == 0
    print("PASS" if ok else "FAIL: a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
