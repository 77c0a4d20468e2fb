"""What every benchmark shares: the `--json PATH` figures file, the printed goal and its exit status, and
stage runs timed as the user runs them (`python -m emplifai.<stage>` in a subprocess, peak RSS from wait4).

    ap = argparse.ArgumentParser(); benchkit.json_option(ap); args = ap.parse_args()
    ...
    benchkit.write_json(args.json, {"<case>": {"<figure>": value}})
    return benchkit.verdict(ok, "speedup >= 3x")
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from numbers import Integral, Real
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
Figures = dict[str, dict[str, float | int | bool | str | None]]


def json_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", type=Path, metavar="PATH", help='write the figures here: {"<case>": {"<figure>": value}}')


def write_json(path: Path | None, figures: Figures) -> None:
    """`figures` as {case: {figure: value}} (NaN, ±inf → null); no-op without a path. Raises on any other shape,
    so a benchmark cannot write something a reader of the file would have to guess at."""
    if path is None:
        return
    out: Figures = {}
    for case, row in figures.items():
        if not isinstance(case, str) or not isinstance(row, dict) or not row:
            raise TypeError(f"case {case!r}: expected a non-empty {{figure: value}} dict, got {row!r}")
        out[case] = {}
        for name, value in row.items():
            if not isinstance(name, str) or not (value is None or isinstance(value, Real | str)):
                raise TypeError(f"{case}.{name}: figures are scalars, got {value!r}")
            if isinstance(value, Integral) and not isinstance(value, bool):
                value = int(value)
            elif isinstance(value, Real) and not isinstance(value, bool):
                value = float(value) if math.isfinite(float(value)) else None
            out[case][name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"figures → {path}")


def verdict(ok: bool, goal: str) -> int:
    """Print the goal with PASS/FAIL; the exit status that goes with it."""
    print(f"{'PASS' if ok else 'FAIL'}: {goal}")
    return 0 if ok else 1


class StageRun(NamedTuple):
    seconds: float          # wall
    cpu_seconds: float      # user + system of the stage's process: what other load on the machine disturbs least
    peak_rss_gb: float


def run_stage(stage: str, overrides: list[str], cwd: Path) -> StageRun:
    """`python -m emplifai.<stage> overrides…` in `cwd`: wall seconds (process start to exit, imports and model
    loads included: what the user waits for), its CPU seconds and peak RSS (os.wait4's rusage of that process)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", f"emplifai.{stage}", *overrides], cwd=cwd, env=ENV,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{stage} {' '.join(overrides)} failed ({proc.returncode}):\n{out.read()[-1000:]}\n"
                             f"{err.read()[-3000:]}")
        return StageRun(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1e6)   # ru_maxrss: KB


def stage_overrides(work: Path, raw_dir: str = "data") -> list[str]:
    """Run a stage on the data version in `work`/`raw_dir` with all outputs under `work`; the repo's models
    and conf/, MLflow off (its server is not what is measured)."""
    return [f"paths.root={work}", f"paths.models={ROOT / 'models'}", f"conf_dir={ROOT / 'conf'}",
            "mlflow.enabled=false", f"data.raw_dir={raw_dir}"]


def scripted_judge(body: dict) -> str:
    """A judge reply for the scripted OpenAI-compatible server: a score 1–5 fixed by the request's text (so
    reruns agree and scores vary, giving the agreement stage something to compute, unlike a constant)."""
    text = json.dumps(body.get("messages", []), ensure_ascii=False).encode()
    return json.dumps({"score": 1 + int(hashlib.md5(text).hexdigest(), 16) % 5})


SCRIPTED_JUDGE_MODEL = "scripted-judge"


def openai_judge(base_url: str) -> list[str]:
    """Overrides for judge=openai against the scripted server (LLMTestServer(models=(SCRIPTED_JUDGE_MODEL,)))."""
    return ["judge=openai", f"judge.base_url={base_url}", f"judge.model={SCRIPTED_JUDGE_MODEL}",
            "judge.api_key_env=null", "judge.show_progress=false", "judge.concurrency=8"]


def study_stages(work: Path, server) -> tuple[dict[str, StageRun], int]:
    """The CPU stages on the data version in `work`/data, as a study-scale run would: prepare; emotion with
    fasttext_clf (scored by BERTScore and the wordvec_cos cosine); judge=openai on the scripted `server`
    (LLMTestServer) once to fill the cache (`judge_fill`), then the timed cached rerun (`judge_rerun`);
    agreement of that judge with the human ratings. Returns the runs and the requests the rerun sent."""
    base = stage_overrides(work)
    judge = base + openai_judge(server.base_url)
    runs = {"prepare": run_stage("prepare", base, work),
            "emotion": run_stage("emotion", [*base, "emotion.predictors=null", "predictor=fasttext_clf"], work),
            "judge_fill": run_stage("judge", judge, work)}
    before = server.request_count
    runs["judge_rerun"] = run_stage("judge", judge, work)
    rerun_requests = server.request_count - before
    runs["agreement"] = run_stage("agreement", [*base, "agreement.judges=[openai]"], work)
    return runs, rerun_requests
