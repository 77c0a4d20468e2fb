"""The one shape of a stage's metrics file (`metrics.json`, DVC metrics): what its MLflow run logs, on disk.

    {"metrics": {"<stage>/<...>": number | null},   # NaN/inf -> null: JSON has no NaN
     "missing": {"<stage>/<...>": "why it is null"},   # one entry per null, never for a number
     "tags":    {"<name>": "text"}}                  # the run's context (judges, systems, ...); may be empty

Every stage writes it with `write_metrics` (atomically) and every reader (the report, tests) reads it back with
`read_metrics`, which turns null into NaN again, so a metric that could not be computed stays NaN + reason.
The tags `mlflow_run_id` / `mlflow_experiment_id` name the MLflow run that wrote the file (tracking's
`StageRun.file_tags()`; absent with mlflow.enabled=false); a file shared by several runs (`update_metrics`)
holds them under each run's prefix (`emotion/hf_rank/mlflow_run_id`). `run_ids` reads them back.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from emplifai.core.errors import UserError
from emplifai.core.paths import atomic_path

NOT_COMPUTABLE = "not computable"  # the reason of a null nobody explained (as tracking.log_metrics tags it)
RUN_ID_TAG, EXPERIMENT_ID_TAG = "mlflow_run_id", "mlflow_experiment_id"


class MetricsFile(NamedTuple):
    metrics: dict[str, float]   # NaN where the file holds null
    missing: dict[str, str]
    tags: dict[str, str]


def _number(key: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric {key!r} is {value!r}: a metrics file holds numbers (or NaN/None) only")
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any], missing: Mapping[str, str] | None = None,
                  tags: Mapping[str, Any] | None = None) -> Path:
    """Write `metrics` (keys `<stage>/<...>`) to `path` atomically; NaN/None/inf → null with its reason from
    `missing` (else "not computable"). Reasons for keys that hold a number are not written."""
    bad = [k for k in metrics if "/" not in k.strip("/")]
    if bad:
        raise ValueError(f"metric keys must read <stage>/<name>: {bad}")
    values = {k: _number(k, v) for k, v in metrics.items()}
    reasons = {k: str((missing or {}).get(k) or NOT_COMPUTABLE) for k, v in values.items() if v is None}
    doc = {"metrics": values, "missing": reasons, "tags": {str(k): str(v) for k, v in (tags or {}).items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return Path(path)


def read_metrics(path: str | os.PathLike) -> MetricsFile:
    """The file at `path` (empty when it does not exist); null → NaN. A file of another shape is an error
    naming it: it was written by an older version of the stage, which must rerun."""
    path = Path(path)
    if not path.exists():
        return MetricsFile({}, {}, {})
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc == {}:
        return MetricsFile({}, {}, {})
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict) or set(doc) - {"metrics", "missing",
                                                                                          "tags"}:
        raise UserError(f"{path} is not a metrics file of this version ({{metrics, missing, tags}}): rerun the "
                        "stage that writes it (dvc repro)")
    metrics = {k: math.nan if v is None else v for k, v in doc["metrics"].items()}
    return MetricsFile(metrics, dict(doc.get("missing") or {}), dict(doc.get("tags") or {}))


def update_metrics(path: str | os.PathLike, prefix: str, metrics: Mapping[str, Any],
                   missing: Mapping[str, str] | None = None, tags: Mapping[str, Any] | None = None) -> Path:
    """One file shared by several runs of a stage, each under its own `<stage>/<run>/` `prefix` (the emotion
    stage's predictors): replace that run's keys and tags (stored as `<prefix><tag>`), keep the others; runs in
    name order. A file of an older shape is started over (its stage is rerunning). The read-modify-write holds
    an exclusive lock on the file's folder, so predictors run in parallel (a sweep) all end up in the file."""
    with _folder_lock(Path(path).parent):
        return _update(path, prefix, metrics, missing, tags)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """flock on the folder itself: the file is replaced on every write (a lock on it would lock a dead inode),
    and a lock file would be one more file in a DVC output."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _update(path: str | os.PathLike, prefix: str, metrics: Mapping[str, Any], missing: Mapping[str, str] | None,
            tags: Mapping[str, Any] | None) -> Path:
    try:
        old = read_metrics(path)
    except UserError:
        old = MetricsFile({}, {}, {})
    if not prefix.endswith("/") or any(not k.startswith(prefix) for k in metrics):
        raise ValueError(f"every key must start with the run's prefix {prefix!r} (ending in '/')")
    kept = {k: v for k, v in old.metrics.items() if not k.startswith(prefix)}
    merged = sorted((kept | dict(metrics)).items(), key=lambda kv: kv[0].split("/")[:2])  # stable within a run
    reasons = {k: v for k, v in old.missing.items() if k in kept} | dict(missing or {})
    own_tags = {f"{prefix}{k}": v for k, v in (tags or {}).items()}
    return write_metrics(path, dict(merged), reasons,
                         {k: v for k, v in old.tags.items() if not k.startswith(prefix)} | own_tags)


def run_ids(file: MetricsFile) -> list[tuple[str, str]]:
    """(run id, experiment id) of every MLflow run that wrote into `file`, in file order."""
    out = []
    for key, value in file.tags.items():
        if key == RUN_ID_TAG or key.endswith(f"/{RUN_ID_TAG}"):
            exp_key = key.removesuffix(RUN_ID_TAG) + EXPERIMENT_ID_TAG
            out.append((str(value), str(file.tags.get(exp_key, ""))))
    return out
