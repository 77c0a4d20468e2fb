"""Parallel sweep jobs through Hydra's joblib launcher (`-m hydra/launcher=joblib hydra.launcher.n_jobs=2`): real
`python -m emplifai.<stage>` processes against a fresh MLflow sqlite store in tmp_path. The jobs race to
create the store, the experiment and the sweep's parent run; exactly one of each must come out, with every job
a FINISHED child and the parent's sweep_summary.json listing them all; jobs that share one metrics file
(the emotion stage's predictors) must all end up in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from emplifai.core.metrics_file import read_metrics, run_ids

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[dev]' (hydra-joblib-launcher)")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def sweep(stage: str, tmp_path: Path, *overrides: str) -> MlflowClient:
    """Run `python -m emplifai.<stage> -m` on the joblib launcher, 2 jobs at once; the store it wrote."""
    db = tmp_path / "mlflow.db"
    assert not db.exists()  # a fresh store: the jobs race to create it
    cmd = [sys.executable, "-m", f"emplifai.{stage}", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"paths.reports={tmp_path}/reports", f"paths.log_dir={tmp_path}/logs",
           f"mlflow.tracking_uri=sqlite:///{db}", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return MlflowClient(f"sqlite:///{db}")


def one_parent_two_finished_children(client: MlflowClient, tmp_path: Path) -> list:
    """The store holds one `emplifai` experiment, one parent and its two FINISHED children; the parent's
    summary lists both. Returns the children."""
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]  # sqlite's own experiment 0
    assert exp.name == "emplifai"
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"] and parent.info.status == "FINISHED"
    assert sorted(c.data.tags["sweep_job"] for c in children) == ["0", "1"]
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep_summary.json",
                                                        str(tmp_path))).read_text(encoding="utf-8"))
    assert {c["run_id"] for c in summary["children"]} == {c.info.run_id for c in children}
    assert parent.data.tags["sweep_children_finished"] == "2"
    return children


@pytest.mark.slow  # ~30 s: two processes importing the stack on 2 cores
def test_prepare_sweep_on_joblib_one_parent_two_finished_children(tiny_raw, tmp_path):
    client = sweep("prepare", tmp_path, "data.split.seed=1,2", f"data.raw_dir={tiny_raw}",
                   # each job its own splits: the two seeds' outputs side by side
                   f"paths.artifacts={tmp_path}/artifacts/seed_${{data.split.seed}}")
    children = one_parent_two_finished_children(client, tmp_path)
    assert sorted(c.data.params["data.split.seed"] for c in children) == ["1", "2"]
    assert sorted(c.info.run_name for c in children) == [f"prepare data.split.seed={k} data.raw_dir=raw" for k in (1, 2)]
    for seed in (1, 2):
        assert (tmp_path / "artifacts" / f"seed_{seed}" / "prepare" / "test.parquet").exists()


@pytest.mark.slow
def test_two_emotion_predictors_in_parallel_both_reach_the_shared_metrics_file(tmp_path):
    """fasttext_clf and hf_rank (Gemma-3-270M) as two parallel jobs, each updating reports/emotion/metrics.json
    (under the folder lock): both predictors' metrics and run ids are in it."""
    if not (ROOT / "models/base/gemma3-270m/config.json").exists() or \
            not (ROOT / "artifacts/prepare/test.parquet").exists():
        pytest.skip("run `dvc repro models prepare` first")
    shutil.copytree(ROOT / "artifacts" / "prepare", tmp_path / "artifacts" / "prepare")
    client = sweep("emotion", tmp_path, "emotion.predictors=null", "predictor=fasttext_clf,hf_rank",
                   "emotion.first_n=3", "emotion.bootstrap.n_resamples=50", f"paths.artifacts={tmp_path}/artifacts")
    children = one_parent_two_finished_children(client, tmp_path)
    assert sorted(c.data.tags["predictor"] for c in children) == ["fasttext_clf", "hf_rank"]
    shared = read_metrics(tmp_path / "reports" / "emotion" / "metrics.json")
    for name in ("fasttext_clf", "hf_rank"):
        assert shared.metrics[f"emotion/{name}/n"] == 3
    assert sorted(run_ids(shared)) == sorted((c.info.run_id, c.info.experiment_id) for c in children)
