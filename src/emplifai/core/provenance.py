"""Where a run comes from, for its MLflow tags: the code (git), the user, the data version, the Hydra job and
its sweep (the lock file its jobs share, the summary of its children), and the config it reads as params —
all of it text that must never carry a credential (`mask`).

No mlflow here (core/tracking.py is its only importer); tracking turns these into MLflow's standard
`mlflow.source.*` / `mlflow.user` tags, the `data_version` tag, each input dataset's digest, the run's params
and name and the sweep's parent run.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import hashlib
import json
import math
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from emplifai.core.paths import project_root, resolve
from emplifai.core.secrets import env_secrets, redact

LOCK_FILE = ".mlflow.lock"
DIGEST_CHARS = 36  # MLflow's limit on a dataset digest: a DVC md5 (32, or 36 with ".dir") fits as it is
CONTENT = "content-"  # prefix of a data version that is no DVC-recorded md5
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
SECRET_KEY = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)
USERINFO = re.compile(r"(?<=://)[^/\s@]+@")  # a URL's user (a token alone, as git remotes carry it)


# ---- text a run records: never a credential ------------------------------------------------------------------

def mask(text: Any) -> str:
    """What tracking writes (params, tags, run names): without the values of secret-looking environment
    variables, credential-shaped text (`core.secrets.redact`: Bearer tokens, `sk-` keys, `user:pass@` in
    URLs, `?api_key=`, `password: …`) and a URL's bare `token@`, so a key inside a `base_url` never reaches
    MLflow."""
    return USERINFO.sub("***@", redact(str(text), env_secrets(), fragments=False))


def mask_overrides(overrides: Sequence[str]) -> list[str]:
    """Hydra overrides as a run may record them: a secret-looking key's value (`+judge.api_key=...`) is ***,
    and every value is `mask`ed (`judge.base_url=https://user:pass@host/v1`)."""
    out = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        secret = sep and SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1])
        out.append(f"{key}=***" if secret else mask(item))
    return out


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key → string value, `mask`ed and cut to MLflow's param limit; secret-looking keys are ***
    (keys belong in env vars anyway)."""
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
        text = mask(text)
        out[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 15] + "...[truncated]"
    return out


def config_params(cfg: DictConfig, keys: Sequence[str]) -> dict[str, str]:
    """The params of a run: only the config keys (groups or dotted keys) its stage reads, flattened."""
    out: dict[str, str] = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        out |= flatten(value, f"{key}.") if isinstance(value, DictConfig) else flatten({key: value})
    return out


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def git_info() -> dict[str, str]:
    """commit, branch, repo_url (any user:password@ stripped) and dirty ("true"/"false"), "" when unknown;
    asked once per process."""
    url = USERINFO.sub("", _git("config", "--get", "remote.origin.url"))
    status = _git("status", "--porcelain", "--untracked-files=no")
    commit = _git("rev-parse", "HEAD")
    return {"commit": commit, "branch": _git("rev-parse", "--abbrev-ref", "HEAD"), "repo_url": url,
            "dirty": ("true" if status else "false") if commit else ""}


def source_tags(stage: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source and User columns)."""
    git = git_info()
    tags = {"mlflow.source.name": f"emplifai.{stage}", "mlflow.user": user(),
            "mlflow.source.type": "JOB" if os.environ.get("SLURM_JOB_ID") else "LOCAL",
            "mlflow.source.git.commit": git["commit"], "mlflow.source.git.branch": git["branch"],
            "mlflow.source.git.repoURL": git["repo_url"], "mlflow.source.git.dirty": git["dirty"]}
    return {k: v for k, v in tags.items() if v}


def git_commit() -> str:
    return git_info()["commit"] or "unknown"


def user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a passwd entry
        return os.environ.get("USER", "unknown")


def _tree_md5(raw: Path) -> str:
    """DVC 3's md5 of a folder (md5 of the sorted JSON list of each file's md5 and relative path)."""
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    entries = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(raw).as_posix()}
               for f in files]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def data_version(raw_dir: str | os.PathLike) -> str:
    """The md5 DVC recorded for data/ when raw_dir is the tracked folder AND its content still has that md5;
    else `content-` + the content's md5 (cut to MLflow's dataset digest limit): data edited after `dvc add`
    is not the version data.dvc names, so its runs must not carry that name."""
    raw = resolve(raw_dir)
    if not raw.is_dir():
        return "missing"
    content = _tree_md5(raw)
    dvc_file = raw.parent / f"{raw.name}.dvc"
    if dvc_file.exists():
        outs = yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("outs", [])
        recorded = str(outs[0].get("md5") or "") if outs else ""
        if recorded.removesuffix(".dir") == content:
            return recorded
    return f"{CONTENT}{content}"[:DIGEST_CHARS]


def same_data(a: str, b: str) -> bool:
    """Do two data versions name the same content? The DVC md5 (`<md5>.dir`) of a folder and the content hash
    (`content-<md5>`, cut) of the same files are one version spelled two ways (a copy without data.dvc)."""
    def core(version: str) -> str:
        return version.removesuffix(".dir").removeprefix(CONTENT)[: DIGEST_CHARS - len(CONTENT)]

    return a == b or ("missing" not in (a, b) and core(a) == core(b))


def hydra_context() -> tuple[str | None, list[str], int | None]:
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
def sweep_lock(sweep_dir: str | None) -> Iterator[None]:
    """An exclusive lock on <sweep dir>/.mlflow.lock, which every job of a sweep shares (joblib processes,
    SLURM jobs on a shared file system); nothing to lock outside a sweep."""
    if not sweep_dir:
        yield
        return
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep_dir) / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_summary(children: list[dict[str, Any]], key_metric: tuple[str, str] | None
                  ) -> tuple[dict[str, Any], dict[str, str], str, int | None]:
    """(summary, parent tags, parent status, parent end time) of a sweep's children (dicts: run_name, run_id,
    status, overrides, end_time, metrics). The summary lists the FINISHED ones; the best is the one with the
    lowest/highest finite `key_metric` ((name, "min"|"max")); the status is FAILED/KILLED if a child was."""
    done = [c for c in children if c["status"] == "FINISHED"]
    summary: dict[str, Any] = {"children": [{k: c[k] for k in ("run_name", "run_id", "overrides", "metrics")}
                                            for c in done], "key_metric": None, "best": None}
    tags = {"sweep_children": str(len(children)), "sweep_children_finished": str(len(done))}
    if key_metric:
        name, goal = key_metric
        summary["key_metric"] = {"name": name, "goal": goal}
        tags["best_metric"] = f"{name} ({goal})"
        scored = [c for c in done if math.isfinite(c["metrics"].get(name, math.nan))]
        if scored:
            best = (min if goal == "min" else max)(scored, key=lambda c: c["metrics"][name])
            summary["best"] = {"run_name": best["run_name"], "run_id": best["run_id"], name: best["metrics"][name]}
            tags |= {"best_run": best["run_name"], "best_run_id": best["run_id"],
                     "best_value": repr(best["metrics"][name])}
    statuses = {c["status"] for c in children}
    status = next((s for s in ("FAILED", "KILLED") if s in statuses), "FINISHED")
    return summary, tags, status, max((c["end_time"] or 0) for c in children) or None
