"""The MLflow spine: every stage logs through here, and nothing else imports mlflow.

One run per stage invocation, open for the whole of the stage's work (so its duration is the work's, and a
crash ends it FAILED, Ctrl-C or SIGTERM KILLED). A run logs the config it reads (the stage's DVC params), the
data splits it reads as MLflow dataset inputs (digest = the data version), MLflow's source tags and its
metrics in batches; its id goes into the stage's metrics file (`file_tags`), which is how the report names
the runs behind its numbers. Under a Hydra multirun all jobs of a sweep are children of one parent run,
created under a lock file in the sweep folder (shared by joblib/SLURM jobs), which also carries the sweep's
summary and best child.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from emplifai.core.errors import UserError
from emplifai.core.metrics_file import EXPERIMENT_ID_TAG, RUN_ID_TAG
from emplifai.core.paths import resolve
from emplifai.core.provenance import (  # noqa: F401 - also tracking's API
    MAX_PARAM_CHARS,
    config_params,
    data_version,
    flatten,
    git_commit,
    mask,
    mask_overrides,
    run_name,
    same_data,
    source_tags,
    sweep_lock,
    sweep_summary,
)
from emplifai.core.provenance import hydra_context as _hydra_context

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # the UI opens on the runs, not GenAI
CONTEXT_TAG = "mlflow.data.context"
SUMMARY_FILE = "sweep_summary.json"
DEFAULT_UI = "http://127.0.0.1:5000"  # what `make ui` serves

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def metric_name(text: str) -> str:
    """A system or judge name as an MLflow metric path component: MLflow allows unicode word characters
    (mlflow/utils/validation.py: `[/\\w.\\- :]`), so 共感型 stays 共感型; anything else becomes `_` (ASCII
    names map as they always did); a bare `.`/`..` (a path step) becomes `_`."""
    name = re.sub(r"[^\w.-]+", "_", str(text))
    return "_" if name in (".", "..") else name


def metric_names(names: Iterable[Any]) -> dict[Any, str]:
    """name → `metric_name`, unique: where two different names map to one component (`共感・型`, `共感（型`), each
    of them that is not already that component gets `_` + the first 6 hex of its sha1, so no metric
    overwrites another's; names without a collision map exactly as `metric_name`."""
    names = list(dict.fromkeys(names))
    plain = {n: metric_name(n) for n in names}
    taken: dict[str, list[Any]] = {}
    for n, m in plain.items():
        taken.setdefault(m, []).append(n)
    out = {}
    for n, m in plain.items():
        clash = len(taken[m]) > 1 and str(n) != m
        out[n] = f"{m}_{hashlib.sha1(str(n).encode()).hexdigest()[:6]}" if clash else m
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


class StageRun:
    """What a stage needs from MLflow: metrics (NaN allowed, with a reason), tags, inputs, artifacts. Without
    a run (mlflow.enabled=false) every call does nothing."""

    def __init__(self, client: Any, run_id: str | None, experiment_id: str | None = None,
                 digest: str | None = None) -> None:
        self.client, self.run_id, self.experiment_id, self.digest = client, run_id, experiment_id, digest
        self.metrics: dict[str, float] = {}

    def file_tags(self) -> dict[str, str]:
        """The tags that tie a metrics file to this run (none without a run): pass them to write_metrics."""
        return {RUN_ID_TAG: self.run_id, EXPERIMENT_ID_TAG: str(self.experiment_id)} if self.run_id else {}

    def log_metrics(self, metrics: Mapping[str, float | None], step: int | None = None,
                    reasons: Mapping[str, str] | None = None) -> None:
        """In batches; None/NaN values are logged as NaN and get a `missing.<name>` tag with the reason."""
        from mlflow.entities import Metric

        values = {name: float("nan") if value is None else float(value) for name, value in metrics.items()}
        self.metrics |= values
        self.set_tags({f"missing.{k}": (reasons or {}).get(k, "not computable") for k, v in values.items()
                       if math.isnan(v)})
        if self.run_id:
            now = int(time.time() * 1000)
            items = [Metric(k, v, now, step or 0) for k, v in values.items()]
            for batch in _batches(items, 1000):
                self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id and tags:
            from mlflow.entities import RunTag

            items = [RunTag(k, mask(v)[:5000]) for k, v in tags.items()]
            for batch in _batches(items, 100):
                self.client.log_batch(self.run_id, tags=batch)

    def log_split(self, name: str, path: str | os.PathLike, context: str | None = None) -> None:
        """A table the run reads (a split, the raw data folder, the ratings) as an MLflow dataset input: name,
        digest = the data version, source = the path, context tag = `context` (default: the name)."""
        path = resolve(path)
        if not self.run_id or not path.exists():
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = None
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            profile = json.dumps({"num_rows": pq.ParquetFile(path).metadata.num_rows})
        dataset = Dataset(name=name, digest=str(self.digest), source_type="local",
                          source=json.dumps({"uri": str(path)}), profile=profile)
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(CONTEXT_TAG, context or name)])])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id and Path(path).exists():
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, frame: Any, artifact_file: str) -> None:
        """A pandas DataFrame as an MLflow table (`<dir>/<name>.json`): the UI shows it as a table, in the run's
        Artifacts tab and the experiment's "Artifact evaluation" view; `mlflow.load_table` reads it back."""
        if self.run_id:
            self.client.log_table(self.run_id, data=frame, artifact_file=artifact_file)


def tracking_uri(cfg: DictConfig) -> str:
    return str(cfg.mlflow.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")


def _client(cfg: DictConfig) -> tuple[Any, str]:
    """(client, experiment id); the experiment is created if missing (a process that loses the race to
    create it reads the winner's) and tagged as model development, so the UI opens on its runs."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    name = str(cfg.mlflow.experiment)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client, client.create_experiment(name, artifact_location=cfg.mlflow.get("artifact_location"),
                                                    tags={KIND_TAG: KIND})
        except MlflowException:  # created by another process since the lookup
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} is deleted in {uri}: restore it (`mlflow experiments "
                        f"restore --experiment-id {exp.experiment_id}`) or set mlflow.experiment=<another name>")
    if exp.tags.get(KIND_TAG, "_inferred").endswith("_inferred"):  # unset, or only guessed by the UI
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return client, exp.experiment_id


def _parent_run(client: Any, exp_id: str, sweep_dir: str, stage: str, tags: dict[str, str]) -> str:
    """The sweep's parent run: found by its sweep tag, else created (call under `sweep_lock(sweep_dir)`)."""
    found = client.search_runs([exp_id], f"tags.sweep_dir = '{sweep_dir}' and tags.sweep_parent = 'true'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    name = f"{stage} sweep {Path(sweep_dir).name}"
    run = client.create_run(exp_id, run_name=name, tags={**tags, "sweep_dir": sweep_dir, "sweep_parent": "true"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _summarize_sweep(client: Any, exp_id: str, parent: str, key_metric: tuple[str, str] | None) -> None:
    """Recompute the parent's sweep_summary.json, best-child tags, status and end from all its children."""
    from mlflow.entities import RunTag

    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000,
                              order_by=["attributes.start_time ASC"])
    children = [{"run_name": r.info.run_name, "run_id": r.info.run_id, "status": r.info.status,
                 "overrides": r.data.tags.get("overrides", ""), "end_time": r.info.end_time,
                 "metrics": dict(sorted(r.data.metrics.items()))} for r in runs]
    summary, tags, status, end_time = sweep_summary(children, key_metric)
    client.log_dict(parent, summary, SUMMARY_FILE)
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(parent, status, end_time=end_time)


@contextmanager
def _interrupts() -> Iterator[list[str]]:
    """SIGTERM (where nobody handles it) and SIGINT raise KeyboardInterrupt inside the run and are recorded,
    so the run ends KILLED even when a library turns the interrupt into SystemExit (Lightning does)."""
    seen: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def interrupt(signum: int, _frame: Any) -> None:
        seen.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(seen[-1])

    old = {sig: signal.signal(sig, interrupt) for sig, default in ((signal.SIGTERM, signal.SIG_DFL),
                                                                  (signal.SIGINT, signal.default_int_handler))
           if signal.getsignal(sig) is default}
    try:
        yield seen
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def stage_run(cfg: DictConfig, stage: str, extra_tags: Mapping[str, Any] | None = None, *,
              config: Sequence[str] = (), key_metric: tuple[str, str] | None = None) -> Iterator[StageRun]:
    """Open the stage's MLflow run; do the stage's work inside. `config`: the config keys the stage reads (its
    DVC params: the run's params); `key_metric`: (metric, "min"|"max") that picks a sweep's best child."""
    if not cfg.mlflow.get("enabled", True):
        yield StageRun(None, None)
        return
    sweep_dir, overrides, job_num = _hydra_context()
    overrides = mask_overrides(overrides)  # tags and run names never carry a credential
    version = data_version(cfg.data.raw_dir)
    extra = {k: mask(v) for k, v in (extra_tags or {}).items()}
    tags = {"stage": stage, "data_version": version, "git_commit": git_commit(),
            "overrides": " ".join(overrides) or "(none)", **source_tags(stage), **extra}
    with sweep_lock(sweep_dir):  # also serializes a fresh store's creation across the sweep's jobs
        client, exp_id = _client(cfg)
        if sweep_dir:
            parent = _parent_run(client, exp_id, sweep_dir, stage, tags)
            tags |= {"mlflow.parentRunId": parent, "sweep_dir": sweep_dir, "sweep_job": str(job_num)}
    # "emotion predictor=hf_rank ...": the stage, what this run is among its siblings, then the overrides
    who = [f"{k}={v}" for k, v in extra.items() if k in ("predictor", "judge", "system")]
    name = mask(cfg.mlflow.get("run_name") or run_name(stage, who + overrides))
    run = client.create_run(exp_id, run_name=name, tags={k: mask(v) for k, v in tags.items()})
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in config_params(cfg, config).items()]
    for batch in _batches(params, 100):
        client.log_batch(run.info.run_id, params=batch)
    run_ = StageRun(client, run.info.run_id, exp_id, version)

    def end(status: str) -> None:
        with sweep_lock(sweep_dir):
            client.set_terminated(run.info.run_id, status=status)
            if sweep_dir:
                _summarize_sweep(client, exp_id, tags["mlflow.parentRunId"], key_metric)

    with _interrupts() as signals:
        try:
            yield run_
        except BaseException as err:
            if isinstance(err, SystemExit) and err.code in (0, None):
                status = "FINISHED"
            elif signals or isinstance(err, KeyboardInterrupt):
                status = "KILLED"
            else:
                status = "FAILED"
                first = (str(err).splitlines() or [""])[0]
                run_.set_tags({"failure": mask(f"{type(err).__name__}: {first}")[:300]})
            end(status)
            raise
        end("FINISHED")


def describe_runs(cfg: DictConfig, ids: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """One row per (run id, experiment id): stage, run name, status, start (UTC), duration and the UI link;
    a run this tracking store does not have says so."""
    uri = tracking_uri(cfg)
    ui = mask(uri if uri.startswith(("http://", "https://")) else cfg.mlflow.get("ui_url") or DEFAULT_UI).rstrip("/")
    client = None
    if cfg.mlflow.get("enabled", True):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    rows = []
    for run_id, exp_id in ids:
        row = {"stage": "", "run": "", "status": "not looked up (mlflow.enabled=false)", "start (UTC)": "",
               "duration": "", "run_id": run_id, "link": f"{ui}/#/experiments/{exp_id}/runs/{run_id}"}
        if client is not None:
            row |= _describe(client, run_id, ui)
        rows.append(row)
    return rows


def _describe(client: Any, run_id: str, ui: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {"status": "not in this tracking store"}
    info = run.info
    seconds = ((info.end_time or int(time.time() * 1000)) - info.start_time) / 1000
    return {"stage": run.data.tags.get("stage", ""), "run": info.run_name,
            "status": info.status + (" (deleted)" if info.lifecycle_stage == "deleted" else ""),
            "start (UTC)": datetime.fromtimestamp(info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "duration": f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min",
            "link": f"{ui}/#/experiments/{info.experiment_id}/runs/{run_id}"}
