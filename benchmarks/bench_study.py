"""Study scale: the pipeline on a synthetic 4,125-dialogue data version (time and peak memory per stage), and
the projected cost of its LM stages at that scale, from per-item costs measured here.

    python benchmarks/bench_study.py [--dialogues 4125] [--lm-slice 4 12] [--lm-threads 1] [--skip-lm]
                                     [--json PATH]   # 6 min measured on 2 shared cores
    python benchmarks/bench_study.py --dialogues 500 --lm-slice 2 4   # 4.5 min; coarser per-item costs

1. Data: benchmarks/study_data.py (seeded, offline) builds the version from the shipped sample's situations:
   280 situations, 4,125 dialogues, 240 rated responses × 3 raters × 7 criteria, the same 28 emotions.
2. CPU stages, each `python -m emplifai.<stage>` in its own process (benchkit.study_stages): prepare; emotion
   with fasttext_clf scored by BERTScore and wordvec_cos; judge=openai against the scripted local server
   (tests/llm_testserver.py: its first run fills the cache and is not the figure); the cached judge rerun;
   agreement. Wall time (start-up included), CPU time and peak RSS of each.
3. LM stages on this machine's models (conf: model, judge.model): emotion predictor=hf_rank (per dialogue),
   judge=hf_local (per response, all criteria), generate with the base model (per response, in batches of A),
   each run on two slices of the same data (--lm-slice A B items) with one torch thread (--lm-threads; two
   threads on a 2-core box that also runs other jobs spin-wait: measured 4× slower than one); per item =
   Δtime / Δitems, start-up = the rest. The PROJECTION multiplies these by the study's counts: hf_rank on the
   test split and on every dialogue; generate: (base + the train sweep's adapters) × the whole test split;
   judge: test-split supporter turns + generated + rated responses. A projection, not a measurement: another
   model or a GPU changes every per-item cost (run it there, with --lm-overrides device=cuda model=…, to plan
   a run there), and generate's batches of 32 are cheaper per response than batches of A.
Goal: the cached judge rerun sends 0 requests, every CPU stage peaks ≤ 4 GB and the CPU stages take ≤ 5 min
together. Exit 1 if one is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import benchkit  # noqa: E402
import study_data  # noqa: E402

CPU_STAGES = ("prepare", "emotion", "judge_fill", "judge_rerun", "agreement")
TIMED = ("prepare", "emotion", "judge_rerun", "agreement")   # judge_fill stands in for a real judge: not counted
MAX_PEAK_GB, MAX_CPU_S = 4.0, 300.0
# case: (stage, overrides, the override that sets the slice size, what one item is)
LM_STAGES = {
    "emotion_hf_rank": ("emotion", ["emotion.predictors=null", "predictor=hf_rank"], "emotion.first_n", "dialogue"),
    "judge_hf_local": ("judge", ["judge=hf_local", "judge.cache=null", "judge.sources=[human,rated]"],
                       "judge.stratified_n", "response"),
    # in batches of the smaller slice ({a}): that run is one batch, the larger one several, so Δt/Δn is the
    # cost of whole batches (one batch's time is set by its longest answer, not by how many rows it has)
    "generate_base": ("generate", ["generate.adapters=[]", "generate.include_base=true", "generate.batch_size={a}"],
                      "generate.sample_n", "response"),
}


def per_item(stage: str, overrides: list[str], size_key: str, sizes: tuple[int, int], extra: list[str],
             work: Path) -> dict[str, float]:
    """Two runs of an LM stage on `sizes` items: seconds per item (Δt/Δn; NaN when noise made Δt ≤ 0),
    start-up, peak RSS."""
    overrides = [*(o.format(a=sizes[0]) for o in overrides), *extra]
    runs = [benchkit.run_stage(stage, [*benchkit.stage_overrides(work), *overrides, f"{size_key}={k}"], work)
            for k in sizes]
    slope = (runs[1].seconds - runs[0].seconds) / (sizes[1] - sizes[0])
    slope = slope if slope > 0 else float("nan")
    return {"seconds_per_item": slope, "startup_s": runs[0].seconds - slope * sizes[0],
            f"seconds_at_{sizes[0]}": runs[0].seconds, f"seconds_at_{sizes[1]}": runs[1].seconds,
            "peak_rss_gb": max(r.peak_rss_gb for r in runs)}


def study_counts(work: Path) -> dict[str, int]:
    """What a study-scale run of the LM stages would process, from this data version and conf/."""
    from conftest import compose_cfg

    cfg = compose_cfg()
    prep = work / "artifacts" / "prepare"
    split = {s: len(pd.read_parquet(prep / f"{s}.parquet", columns=["dialogue_id"])) for s in ("train", "val", "test")}
    systems = int(bool(cfg.generate.include_base)) + len(cfg.train.sweep.epochs)
    rated = len(pd.read_parquet(prep / "rated_responses.parquet", columns=["response_id"]))
    return {"dialogues": sum(split.values()), "test_dialogues": split["test"], "systems": systems,
            "rated": rated, "criteria": len(cfg.data.criteria),
            "judged": split["test"] * (1 + systems) + rated}


def projection(costs: dict[str, dict[str, float]], c: dict[str, int]) -> dict[str, tuple[str, str, int, float]]:
    """{case: (what, LM stage case, items, projected seconds incl. one start-up)} of a study-scale run."""
    rows = {"emotion_hf_rank_test": ("emotion hf_rank, test split", "emotion_hf_rank", c["test_dialogues"]),
            "emotion_hf_rank_all": ("emotion hf_rank, every dialogue", "emotion_hf_rank", c["dialogues"]),
            "generate": (f"generate, {c['systems']} systems × test split", "generate_base",
                         c["systems"] * c["test_dialogues"]),
            "judge_hf_local": (f"judge hf_local, {c['criteria']} criteria, test + generated + rated",
                               "judge_hf_local", c["judged"])}
    return {key: (what, case, n, costs[case]["startup_s"] + costs[case]["seconds_per_item"] * n)
            for key, (what, case, n) in rows.items()}


def lm_stages(args: argparse.Namespace, work: Path) -> benchkit.Figures:
    """Per-item costs of the LM stages on the data version in `work`, and the projection they give."""
    figures: benchkit.Figures = {}
    sizes = tuple(args.lm_slice)
    print(f"\nLM stages, per-item cost from {sizes[0]} vs {sizes[1]} items, {args.lm_threads} torch thread(s):")
    costs = {}
    for case, (stage, overrides, size_key, item) in LM_STAGES.items():
        cost = costs[case] = per_item(stage, overrides, size_key, sizes,
                                      [f"threads={args.lm_threads}", *args.lm_overrides], work)
        print(f"  {case:16} " + (f"{cost['seconds_per_item']:6.2f} s/{item}, start-up {cost['startup_s']:5.1f} s"
                                 if cost["seconds_per_item"] > 0 else
                                 f"not measurable: the {sizes[1]}-item run was not slower than the "
                                 f"{sizes[0]}-item run (noise; try a larger --lm-slice)")
              + f", peak {cost['peak_rss_gb']:.2f} GB", flush=True)
        figures[case] = cost
    c = study_counts(work)
    print(f"\nPROJECTION (not measured): the LM stages at this scale on this machine "
          f"({c['dialogues']} dialogues, {c['test_dialogues']} in the test split, {c['rated']} rated):")
    rows = projection(costs, c)
    for key, (what, case, n, seconds) in rows.items():
        print(f"  {what:56} {n:6d} items → {seconds / 3600:6.2f} h")
        figures[f"projected_{key}"] = {"items": n, "seconds_per_item": costs[case]["seconds_per_item"],
                                       "hours": seconds / 3600}
    total = sum(rows[k][3] for k in ("emotion_hf_rank_test", "generate", "judge_hf_local"))
    print(f"  {'the pipeline: emotion (test split) + generate + judge':56} {'':12}  {total / 3600:6.2f} h"
          "   (+ training: benchmarks/bench_sft.py)")
    figures["projected_pipeline"] = {"hours": total / 3600}
    return figures


def main() -> int:
    from llm_testserver import LLMTestServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=study_data.STUDY_DIALOGUES)
    ap.add_argument("--lm-slice", type=int, nargs=2, default=[4, 12], metavar=("A", "B"),
                    help="items of the two LM-stage runs whose difference gives the per-item cost")
    ap.add_argument("--lm-threads", type=int, default=1,
                    help="torch threads of the LM-stage runs (1: the per-core cost, steady on a shared machine)")
    ap.add_argument("--lm-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="for the LM-stage runs, e.g. device=cuda model=llm-jp-3.1-13b-instruct4 judge.model=…")
    ap.add_argument("--skip-lm", action="store_true", help="CPU stages only (no per-item costs, no projection)")
    benchkit.json_option(ap)
    args = ap.parse_args()
    if not args.skip_lm and not 0 < args.lm_slice[0] < args.lm_slice[1]:
        ap.error("--lm-slice A B needs 0 < A < B")
    t0 = time.perf_counter()
    figures: benchkit.Figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        counts = study_data.build(work / "data", args.dialogues)
        print("data version: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
        with LLMTestServer(reply_fn=benchkit.scripted_judge, models=(benchkit.SCRIPTED_JUDGE_MODEL,)) as srv:
            runs, rerun_requests = benchkit.study_stages(work, srv)
        print(f"\n{'stage':12} {'wall s':>7} {'CPU s':>7} {'peak RSS GB':>11}")
        for s in CPU_STAGES:
            print(f"{s:12} {runs[s].seconds:7.1f} {runs[s].cpu_seconds:7.1f} {runs[s].peak_rss_gb:11.2f}"
                  + ("   (stand-in judge: not counted)" if s not in TIMED else ""))
            figures[s] = {"seconds": runs[s].seconds, "cpu_seconds": runs[s].cpu_seconds,
                          "peak_rss_gb": runs[s].peak_rss_gb}
        stages_s = sum(runs[s].seconds for s in TIMED)
        peak = max(runs[s].peak_rss_gb for s in TIMED)
        print(f"CPU stages together: {stages_s:.1f} s, peak {peak:.2f} GB; cached judge rerun: {rerun_requests} requests")
        figures["judge_rerun"]["requests"] = rerun_requests
        figures["cpu_stages"] = {"dialogues": args.dialogues, "seconds": stages_s, "peak_rss_gb": peak}
        if not args.skip_lm:
            figures |= lm_stages(args, work)
    elapsed = time.perf_counter() - t0
    print(f"\nbenchmark wall time {elapsed / 60:.1f} min")
    figures["benchmark"] = {"seconds": elapsed}
    benchkit.write_json(args.json, figures)
    ok = rerun_requests == 0 and peak <= MAX_PEAK_GB and stages_s <= MAX_CPU_S
    return benchkit.verdict(ok, f"cached judge rerun sends 0 requests, every CPU stage peaks ≤ {MAX_PEAK_GB:.0f} GB, "
                                f"CPU stages ≤ {MAX_CPU_S / 60:.0f} min together")


if __name__ == "__main__":
    sys.exit(main())
