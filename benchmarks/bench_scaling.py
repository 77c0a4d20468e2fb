"""Scaling: does any CPU stage grow faster than linearly with the data? Start-up and per-dialogue cost apart.

    python benchmarks/bench_scaling.py [--sizes 250 1000 2000 4125] [--repeats 1] [--json PATH]   # ~5 min on 2 shared cores

For each size, benchmarks/study_data.py writes a synthetic data version (situations and rated responses grow
with it, as in the study's 280 / 240 per 4,125 dialogues) and the stages run as the user runs them
(benchkit.study_stages: prepare, emotion with fasttext_clf + BERTScore + wordvec_cos, the cached judge rerun,
agreement), each in its own process. The fit is on CPU seconds (user + system of that process; wall seconds
are written beside): on a shared machine they are what other load disturbs least. With --repeats R the sizes
run in R rounds and each stage's fastest run counts. Per stage it fits time = start-up + per_item · dialogues
(least squares over the sizes) and prints both, the per-item part's share at the largest size, and the
exponent b of the per-item part (time = start-up + c · dialogues^b) where that part is large enough to have a
shape.
Goal, per stage: the time at the largest size is at most what a straight line through the smaller sizes
predicts, +15% +2 s (noise of a shared machine). A quadratic step that matters at the study's scale breaks
it; one that costs less than the allowance at 4,125 dialogues does not matter yet. Exit 1 if any misses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import benchkit  # noqa: E402
import study_data  # noqa: E402

STAGES = ("prepare", "emotion", "judge_rerun", "agreement")
SLACK, SLACK_S = 0.15, 2.0          # the goal's allowance over the straight-line prediction
MIN_SHARE = 0.25                    # the per-item part's share of the time below which b is not reported


def fit_linear(n: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(start-up seconds, seconds per dialogue): least-squares line through (n, t)."""
    per_item, startup = np.polyfit(np.asarray(n, float), np.asarray(t, float), 1)
    return float(startup), float(per_item)


def fit_exponent(n: np.ndarray, t: np.ndarray) -> float:
    """b of time = start-up + c · n^b (start-up in [0, min t], b in [0.25, 4]); 1 = linear per-item cost."""
    from scipy.optimize import curve_fit

    n, t = np.asarray(n, float), np.asarray(t, float)
    startup, per_item = fit_linear(n, t)
    x0 = [min(max(startup, 0.0), t.min() * 0.99), max(per_item, 1e-9), 1.0]
    scale = n.max()
    (_, _, b), _ = curve_fit(lambda x, s, c, b: s + c * scale * (x / scale) ** b, n, t, p0=x0,
                             bounds=([0.0, 0.0, 0.25], [t.min(), np.inf, 4.0]), maxfev=20000)
    return float(b)


def line_check(n: np.ndarray, t: np.ndarray) -> tuple[float, float, bool]:
    """(prediction at the largest n from a line through the smaller ones, the allowed time, within it?)."""
    startup, per_item = fit_linear(n[:-1], t[:-1])
    predicted = startup + per_item * float(n[-1])
    allowed = predicted * (1 + SLACK) + SLACK_S
    return predicted, allowed, bool(t[-1] <= allowed)


def main() -> int:
    from llm_testserver import LLMTestServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 2000, 4125], help="dialogues per run")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all sizes; each stage's fastest counts")
    benchkit.json_option(ap)
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    if len(sizes) < 3:
        ap.error("--sizes needs at least 3 sizes (a line through the smaller ones, checked at the largest)")
    best: dict[tuple[int, str], benchkit.StageRun] = {}
    with LLMTestServer(reply_fn=benchkit.scripted_judge, models=(benchkit.SCRIPTED_JUDGE_MODEL,)) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            study_data.build(Path(tmp) / f"n{n}" / "data", n)
        for r in range(max(1, args.repeats)):   # rounds over the sizes: a drift in the machine's load hits all
            for n in sizes:
                runs, rerun_requests = benchkit.study_stages(Path(tmp) / f"n{n}", srv)
                if rerun_requests:
                    raise SystemExit(f"the cached judge rerun sent {rerun_requests} requests at {n} dialogues")
                for s in STAGES:
                    if (n, s) not in best or runs[s].cpu_seconds < best[n, s].cpu_seconds:
                        best[n, s] = runs[s]
                print(f"round {r + 1}, {n:5d} dialogues: " + "  ".join(
                    f"{s} {runs[s].cpu_seconds:5.1f} cpu-s {runs[s].seconds:5.1f} s {runs[s].peak_rss_gb:.2f} GB"
                    for s in STAGES), flush=True)
    n = np.array(sizes, float)
    figures: benchkit.Figures = {}
    ok = True
    print(f"\nCPU seconds (user + system of the stage's process)\n{'stage':12} {'start-up':>8} {'ms/dialogue':>11} "
          f"{'per-item share':>14} {'b':>5} {'line→' + str(sizes[-1]):>11} {'measured':>9} {'allowed':>8}")
    for s in STAGES:
        t = np.array([best[k, s].cpu_seconds for k in sizes])
        startup, per_item = fit_linear(n, t)
        share = per_item * n[-1] / t[-1]
        b = fit_exponent(n, t) if share >= MIN_SHARE else float("nan")
        predicted, allowed, within = line_check(n, t)
        ok &= within
        print(f"{s:12} {startup:8.1f} {per_item * 1e3:11.2f} {share:14.0%} "
              f"{'–' if np.isnan(b) else f'{b:.2f}':>5} {predicted:10.1f}s {t[-1]:8.1f}s {allowed:7.1f}s"
              + ("" if within else "  ← superlinear"))
        figures[s] = {"startup_cpu_s": startup, "per_dialogue_cpu_ms": per_item * 1e3, "per_item_share": share,
                      "exponent": b, "line_prediction_cpu_s": predicted, "allowed_cpu_s": allowed,
                      **{f"cpu_s_at_{k}": best[k, s].cpu_seconds for k in sizes},
                      **{f"wall_s_at_{k}": best[k, s].seconds for k in sizes},
                      "peak_rss_gb": max(best[k, s].peak_rss_gb for k in sizes), "within_goal": within}
    print("b: exponent of the per-item part (1 = linear), shown where that part is ≥ "
          f"{MIN_SHARE:.0%} of the time at {sizes[-1]} dialogues (below, start-up dominates and it has no shape)")
    benchkit.write_json(args.json, figures)
    return benchkit.verdict(ok, f"every stage's CPU time at {sizes[-1]} dialogues ≤ the straight line through the "
                                f"smaller sizes +{SLACK:.0%} +{SLACK_S:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
