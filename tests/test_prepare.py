"""The prepare stage end to end: outputs, MLflow run read back, strict/lenient modes, CLI, multirun, DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, compose_cfg, write_csv
from emplifai.core.params import write_params
from emplifai.prepare import __main__ as prepare

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # dvc stages call `python`


def runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("emplifai")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_prepare_writes_splits_stats_plots_and_logs_to_mlflow(make_cfg, tiny_raw, tmp_path):
    metrics = prepare.run(make_cfg(f"data.raw_dir={tiny_raw}"))
    out = tmp_path / "artifacts" / "prepare"
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "test")}
    assert sum(len(f) for f in frames.values()) == 24
    assert list(frames["train"].columns)[:7] == ["dialogue_id", "situation_id", "emotion", "situation",
                                                 "patient", "supporter", "split"]
    assert (out / "rated_responses.parquet").exists() and (out / "human_ratings.parquet").exists()
    assert metrics["prepare/dialogues_train"] == len(frames["train"])
    for name in ("stats.json", "rejected.csv", "emotion_distribution.png", "length_histograms.png"):
        assert (tmp_path / "reports" / "data" / name).stat().st_size > 0
    (run,) = runs(tmp_path / "mlflow.db")
    assert run.data.tags["stage"] == "prepare"
    assert run.data.tags["data_version"].startswith("content-")  # tiny_raw is not DVC-tracked
    assert run.data.metrics["prepare/dialogues_train"] == len(frames["train"])
    assert run.data.params["data.split.train"] == "0.7" and run.info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(run.info.run_id, "data")}
    assert "data/stats.json" in artifacts


def _break(raw: Path) -> None:
    frame = pd.read_csv(raw / "situations.csv", dtype=str)
    frame.loc[1, "emotion"] = "hunger"
    frame.to_csv(raw / "situations.csv", index=False)


def test_strict_mode_fails_writes_rejected_and_no_outputs(make_cfg, tiny_raw, tmp_path):
    _break(tiny_raw)
    with pytest.raises(prepare.DataError, match="data problem"):
        prepare.run(make_cfg(f"data.raw_dir={tiny_raw}"))
    rejected = pd.read_csv(tmp_path / "reports" / "data" / "rejected.csv")
    assert len(rejected) == 1 + 3 + 2 and rejected["row"].iloc[0] == 3  # s1, its dialogues, r2, r2's rating
    assert "dialogue 'd10' was rejected (dialogues.csv row 5)" in rejected["reason"].tolist()
    assert "response 'r2' was rejected (rated_responses.csv row 3)" in rejected["reason"].tolist()
    assert "hunger" in rejected["record"].iloc[0]  # the original row is kept for the user
    assert not (tmp_path / "artifacts" / "prepare").exists()


def test_lenient_mode_drops_bad_rows_and_logs_their_count(make_cfg, tiny_raw, tmp_path):
    _break(tiny_raw)
    metrics = prepare.run(make_cfg(f"data.raw_dir={tiny_raw}", "data.strict=false"))
    assert metrics["prepare/rejected_rows"] == 6
    assert runs(tmp_path / "mlflow.db")[0].data.metrics["prepare/rejected_rows"] == 6
    train = pd.read_parquet(tmp_path / "artifacts" / "prepare" / "train.parquet")
    assert "s1" not in set(train["situation_id"])


def test_cli_reports_user_errors_without_traceback(tiny_raw, tmp_path):
    write_csv(tiny_raw / "human_ratings.csv", ["response_id", "rater_id", "criterion", "score"],
              [["r1", "a", "fluency", "x"], ["r1", "b", "fluency", "9"]])
    proc = subprocess.run([sys.executable, "-m", "emplifai.prepare", f"data.raw_dir={tiny_raw}",
                           f"paths.root={tmp_path}", "mlflow.enabled=false"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr  # the problem list is logged (console + the run's log file)
    assert "human_ratings.csv: row 2 [score]: score 'x' is not an integer from 1 to 5" in out
    assert "human_ratings.csv: row 3 [score]: score '9'" in out  # every problem, not only the first
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")  # then one line saying why it stopped


def test_multirun_makes_one_parent_and_a_child_per_job(tiny_raw, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "emplifai.prepare", "-m", "data.split.seed=1,2",
                           f"data.raw_dir={tiny_raw}", f"paths.root={tmp_path}",
                           f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    all_runs = runs(tmp_path / "mlflow.db")
    parents = [r for r in all_runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["data.split.seed"] for c in children) == ["1", "2"]
    assert sorted(c.info.run_name for c in children) == ["prepare data.split.seed=1 data.raw_dir=raw",
                                                        "prepare data.split.seed=2 data.raw_dir=raw"]


def test_params_yaml_is_conf_composed(tmp_path):
    fresh = write_params(ROOT, [], tmp_path / "params.yaml")
    assert yaml.safe_load(fresh.read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text()), \
        "params.yaml is stale: run `make params`"


def test_dvc_repro_runs_prepare_in_a_temp_copy(tmp_path, tiny_raw):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "conf", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    shutil.copytree(tiny_raw, repo / "data")
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "config", "core.analytics", "false"],
                [*dvc, "add", "-q", "data"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    first = subprocess.run([*dvc, "repro", "prepare"], cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (repo / "artifacts" / "prepare" / "test.parquet").exists()
    run = runs(tmp_path / "mlflow.db")[0]
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert run.data.tags["data_version"] == md5
    second = subprocess.run([*dvc, "repro", "prepare"], cwd=repo, env=env, capture_output=True, text=True)
    assert "didn't change, skipping" in second.stdout and len(runs(tmp_path / "mlflow.db")) == 1
    metrics = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert '"dialogues"' in metrics.stdout


def test_compose_with_overrides():
    cfg = compose_cfg(["data.strict=false", "data.split.test=0.2"])
    assert cfg.data.strict is False and cfg.data.split.test == 0.2
