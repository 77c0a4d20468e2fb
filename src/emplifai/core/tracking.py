"""The MLflow spine: every stage logs through here, and nothing else imports mlflow.

One run per stage invocation. Under a Hydra multirun, all jobs of one sweep become children of one
parent run (found by a sweep tag, so it also works when a launcher runs jobs in other processes).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from emplifai.core.paths import project_root, resolve

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
SECRET_KEY = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def metric_name(text: str) -> str:
    """An MLflow-safe metric path component (a system or judge name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key → string value; secret-looking keys are redacted (keys belong in env vars anyway)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
            continue
        text = "***" if SECRET_KEY.search(str(key)) and value else json.dumps(value, ensure_ascii=False)
        if text.startswith('"') and text.endswith('"'):
            text = text[1:-1]
        out[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 15] + "...[truncated]"
    return out


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def data_version(raw_dir: str | os.PathLike) -> str:
    """The md5 DVC recorded for data/ when raw_dir is the tracked folder, else a content hash."""
    raw = resolve(raw_dir)
    dvc_file = raw.parent / f"{raw.name}.dvc"
    if dvc_file.exists():
        outs = yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("outs", [])
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    if not raw.is_dir():
        return "missing"
    import hashlib

    h = hashlib.md5()
    for f in sorted(p for p in raw.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(raw)).encode())
        h.update(hashlib.md5(f.read_bytes()).digest())
    return f"content-{h.hexdigest()}"


def _hydra_context() -> tuple[str | None, list[str], int | None]:
    """(sweep dir if multirun, task overrides, job number)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, [], None
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if hc.mode == RunMode.MULTIRUN:
            return str(Path(hc.sweep.dir).resolve()), overrides, hc.job.num
        return None, overrides, None
    except Exception:  # noqa: BLE001 - compose-API callers (tests) have no Hydra runtime
        return None, [], None


class StageRun:
    """What a stage needs from MLflow: metrics (NaN allowed, with a reason), params, tags, artifacts."""

    def __init__(self, client: Any, run_id: str | None) -> None:
        self.client, self.run_id = client, run_id
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics: Mapping[str, float | None], step: int | None = None,
                    reasons: Mapping[str, str] | None = None) -> None:
        """None/NaN values are logged as NaN and get a `missing.<name>` tag with the reason."""
        for name, value in metrics.items():
            v = float("nan") if value is None else float(value)
            self.metrics[name] = v
            if self.run_id:
                self.client.log_metric(self.run_id, name, v, step=step or 0)
            if math.isnan(v):
                self.set_tags({f"missing.{name}": (reasons or {}).get(name, "not computable")})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v)[:5000])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id and Path(path).exists():
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)


def tracking_uri(cfg: DictConfig) -> str:
    return str(cfg.mlflow.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")


def _client(cfg: DictConfig):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        cfg.mlflow.experiment, artifact_location=cfg.mlflow.get("artifact_location"))
    return client, exp_id


def _parent_run(client: Any, exp_id: str, sweep_dir: str, stage: str, tags: dict[str, str]) -> str:
    found = client.search_runs([exp_id], f"tags.sweep_dir = '{sweep_dir}' and tags.sweep_parent = 'true'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    name = f"{stage} sweep {Path(sweep_dir).name}"
    run = client.create_run(exp_id, run_name=name, tags={**tags, "sweep_dir": sweep_dir, "sweep_parent": "true"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_name(stage: str, overrides: list[str]) -> str:
    """'<stage> key=value ...' so a sweep lines up in the UI; paths shortened to their last part."""
    keys = []
    for o in overrides:
        if o.lstrip("+~").startswith(("hydra.", "mlflow.", "paths.")):
            continue
        key, _, value = o.partition("=")
        keys.append(f"{key}={Path(value).name}" if "/" in value else o)
    return " ".join([stage, *keys])[:250]


@contextmanager
def stage_run(cfg: DictConfig, stage: str, extra_tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """Open the stage's MLflow run; it ends FAILED if the stage raises."""
    if not cfg.mlflow.get("enabled", True):
        yield StageRun(None, None)
        return
    client, exp_id = _client(cfg)
    sweep_dir, overrides, job_num = _hydra_context()
    tags = {"stage": stage, "data_version": data_version(cfg.data.raw_dir), "git_commit": git_commit(),
            "overrides": " ".join(overrides) or "(none)", **(extra_tags or {})}
    if sweep_dir:
        parent = _parent_run(client, exp_id, sweep_dir, stage, tags)
        tags |= {"mlflow.parentRunId": parent, "sweep_dir": sweep_dir, "sweep_job": str(job_num)}
    # "emotion predictor=hf_rank ...": the stage, what this run is among its siblings, then the overrides
    who = [f"{k}={v}" for k, v in (extra_tags or {}).items() if k in ("predictor", "judge", "system")]
    name = cfg.mlflow.get("run_name") or run_name(stage, who + overrides)
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = flatten(cfg)
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i: i + 100])
    stage_run_ = StageRun(client, run_id)
    try:
        yield stage_run_
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def find_runs(cfg: DictConfig, stage: str, data_version_: str | None = None, limit: int = 200) -> list[dict]:
    """Finished runs of a stage (newest first) as plain dicts, for reports that cite their run ids."""
    if not cfg.mlflow.get("enabled", True):
        return []
    client, exp_id = _client(cfg)
    query = f"tags.stage = '{stage}' and attributes.status = 'FINISHED'"
    if data_version_:
        query += f" and tags.data_version = '{data_version_}'"
    runs = client.search_runs([exp_id], query, max_results=limit, order_by=["attributes.start_time DESC"])
    return [{"run_id": r.info.run_id, "run_name": r.info.run_name, "tags": dict(r.data.tags),
             "metrics": dict(r.data.metrics), "params": dict(r.data.params)}
            for r in runs if r.data.tags.get("sweep_parent") != "true"]


def metric_history(cfg: DictConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    client, _ = _client(cfg)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
