"""Scaling: wall time and peak memory of prepare, emotion (fastText + BERTScore) and a cached judge rerun
on the shipped sample replicated 1×, 4× and 16× (16× ≈ 2,700 dialogues, near the study's 4,125).

    python benchmarks/bench_scaling.py [--sizes 1 4 16]

Each stage runs as the user runs it (`python -m emplifai.<stage>`, in a subprocess under /usr/bin/time) on
a temp copy. The judge rerun uses judge=openai against a local OpenAI-compatible test server: the first run
fills the cache, the timed rerun must send 0 requests. Prints the fitted exponent b of time ∝ size^b
(b ≤ 1 means no worse than linear) and exits 1 if any b > 1.15 (measurement noise allowance).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def replicate(sample: Path, out: Path, k: int) -> int:
    """k copies of the sample with suffixed ids (each copy its own situations: no split leakage)."""
    out.mkdir(parents=True)
    ids = {"situations": ["situation_id"], "dialogues": ["dialogue_id", "situation_id"],
           "rated_responses": ["response_id", "dialogue_id"], "human_ratings": ["response_id"]}
    for stem, cols in ids.items():
        frame = pd.read_csv(sample / f"{stem}.csv", dtype=str)
        copies = [frame.assign(**{c: frame[c] + f"_{i}" for c in cols}) for i in range(k)]
        pd.concat(copies).to_csv(out / f"{stem}.csv", index=False)
    return len(pd.read_csv(out / "dialogues.csv"))


def timed(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GB) of one stage run."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / 1e6


def main() -> int:
    from llm_testserver import LLMTestServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    sizes = ap.parse_args().sizes
    rows = []
    with LLMTestServer(reply_fn=lambda body: '{"score": 4}') as srv, tempfile.TemporaryDirectory() as tmp:
        for k in sizes:
            work = Path(tmp) / f"x{k}"
            n = replicate(ROOT / "src/emplifai/sample", work / "data", k)
            common = [f"paths.root={work}", f"paths.models={ROOT / 'models'}", "mlflow.enabled=false",
                      "data.raw_dir=data"]
            t_prep, m_prep = timed(["emplifai.prepare", *common], work)
            t_emo, m_emo = timed(["emplifai.emotion", *common, "emotion.predictors=null", "predictor=fasttext_clf"], work)
            judge = ["emplifai.judge", *common, "judge=openai", f"judge.base_url={srv.base_url}",
                     "judge.api_key_env=null", "judge.show_progress=false", "judge.concurrency=8"]
            timed(judge, work)  # fills the cache
            before = srv.request_count
            t_judge, m_judge = timed(judge, work)
            assert srv.request_count == before, "the cached judge rerun sent requests"
            rows.append({"size": k, "dialogues": n, "prepare_s": t_prep, "prepare_gb": m_prep,
                         "emotion_s": t_emo, "emotion_gb": m_emo, "judge_rerun_s": t_judge, "judge_rerun_gb": m_judge})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    worst = 0.0
    for stage in ("prepare", "emotion", "judge_rerun"):
        b = float(np.polyfit(np.log(table["dialogues"]), np.log(table[f"{stage}_s"]), 1)[0])
        ratio = table[f"{stage}_s"].iloc[-1] / table[f"{stage}_s"].iloc[0]
        print(f"{stage}: time ∝ size^{b:.2f}  ({sizes[-1] // sizes[0]}× data → {ratio:.1f}× time)")
        worst = max(worst, b)
    return 0 if worst <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
