"""Stage `prepare`: validate the raw data, normalize it, split it, describe it.

    python -m emplifai.prepare                      # strict: any bad row → list of problems, exit 2
    python -m emplifai.prepare data.strict=false    # drop bad rows (kept in reports/data/rejected.csv)
    python -m emplifai.prepare data.raw_dir=/path/to/emplifai taxonomy.file=/path/to/labels.yaml
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib
import pandas as pd
from omegaconf import DictConfig

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import write_metrics
from emplifai.core.paths import atomic_dir, atomic_path, resolve, save_figure
from emplifai.data.schema import SPLIT_COLUMNS
from emplifai.data.taxonomy import Taxonomy
from emplifai.prepare.splits import split_dialogues
from emplifai.prepare.validate import Validated, validate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__package__)

SPLITS = ("train", "val", "test")
CONFIG = ("data", "taxonomy")  # the config it reads = its MLflow params (dvc.yaml params but paths)


class DataError(UserError):
    pass


def write_rejected(result: Validated, reports: Path) -> Path:
    path = reports / "rejected.csv"
    with atomic_path(path) as tmp:
        result.rejected_frame().to_csv(tmp, index=False, encoding="utf-8")
    return path


def build_splits(result: Validated, cfg: DictConfig) -> pd.DataFrame:
    sit = result.tables["situations"][["situation_id", "emotion", "situation"]]
    dia = result.tables["dialogues"].drop(columns=["emotion"], errors="ignore")
    frame = dia.merge(sit, on="situation_id", how="left", validate="many_to_one")
    s = cfg.data.split
    frame["split"] = split_dialogues(frame, s.train, s.val, s.test, int(s.seed))
    extra = [c for c in frame.columns if c not in SPLIT_COLUMNS]
    return frame[SPLIT_COLUMNS + extra]


def describe(frame: pd.DataFrame, result: Validated, taxonomy: Taxonomy) -> dict:
    counts = frame.pivot_table(index="emotion", columns="split", values="dialogue_id", aggfunc="count",
                               fill_value=0).reindex(index=taxonomy.keys, columns=list(SPLITS), fill_value=0)
    lengths = {col: frame[col].str.len().describe()[["mean", "50%", "min", "max"]].round(1)
               .rename({"50%": "median"}).to_dict() for col in ("situation", "patient", "supporter")}
    stats = {
        "dialogues": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "situations": {s: int(frame.loc[frame["split"] == s, "situation_id"].nunique()) for s in SPLITS},
        "emotions_present": {s: int((counts[s] > 0).sum()) for s in SPLITS},
        "rejected_rows": len([p for p in result.problems if p.row]),
        "text_length_chars": lengths,
        "per_emotion": counts.to_dict(orient="index"),
    }
    if "rated_responses" in result.tables:
        stats["rated_responses"] = len(result.tables["rated_responses"])
    if "human_ratings" in result.tables:
        r = result.tables["human_ratings"]
        stats["human_ratings"] = {"rows": len(r), "raters": int(r["rater_id"].nunique()),
                                  "criteria": int(r["criterion"].nunique())}
    return stats


def plot(frame: pd.DataFrame, taxonomy: Taxonomy, reports: Path) -> list[Path]:
    counts = frame.pivot_table(index="emotion", columns="split", values="dialogue_id", aggfunc="count",
                               fill_value=0).reindex(index=taxonomy.keys, columns=list(SPLITS), fill_value=0)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    counts.plot.bar(stacked=True, ax=ax, color=["#4C72B0", "#DD8452", "#55A868"])
    ax.set(title="Dialogues per emotion and split", xlabel="", ylabel="dialogues")
    out = [save_figure(fig, reports / "emotion_distribution.png")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, col in zip(axes, ("situation", "patient", "supporter"), strict=True):
        ax.hist(frame[col].str.len(), bins=20, color="#4C72B0")
        ax.set(title=f"{col} length (chars)", xlabel="characters", ylabel="count")
    out.append(save_figure(fig, reports / "length_histograms.png"))
    return out


def write_outputs(frame: pd.DataFrame, result: Validated, out_dir: Path) -> None:
    """Build the whole output folder beside the target, then swap it in: never half-written."""
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            frame[frame["split"] == split].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        for name in ("rated_responses", "human_ratings"):
            if name in result.tables:
                result.tables[name].to_parquet(tmp / f"{name}.parquet", index=False)

def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "prepare")
    with tracking.stage_run(cfg, "prepare", config=CONFIG) as run_:  # spans the work: a crash ends it FAILED
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    raw_dir = resolve(cfg.data.raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw data directory not found: {raw_dir} (set data.raw_dir=PATH, or run "
                        f"`python -m emplifai.sample {cfg.data.raw_dir}` for the shipped sample)")
    run_.log_split("raw", raw_dir)
    reports = resolve(cfg.paths.reports) / "data"
    reports.mkdir(parents=True, exist_ok=True)
    result = validate(raw_dir, taxonomy, list(cfg.data.criteria), nfkc=bool(cfg.data.nfkc))
    for name, why in result.unknown_files.items():  # a misspelled or unsupported file is named, never dropped quietly
        log.warning(f"prepare: not read: {raw_dir / name} ({why})")
    for note in result.notes:  # ratings read from a wide table or a Label Studio export: what was counted
        log.info(f"prepare: {note}")
    rejected = write_rejected(result, reports)
    if result.problems:
        log.error(f"{len(result.problems)} problem(s) in {raw_dir}:")
        for problem in result.problems:
            log.error(f"  {problem}")
        log.error(f"(all listed in {rejected})")
        if result.fatal or cfg.data.strict:
            hint = "" if result.fatal else "; fix them or rerun with data.strict=false to drop those rows"
            raise DataError(f"{len(result.problems)} data problem(s){hint}")
    frame = build_splits(result, cfg)
    stats = describe(frame, result, taxonomy)
    stats["taxonomy"] = taxonomy.name
    stats["encodings"] = result.encodings  # what was detected per text file (utf-8, utf-8-sig, cp932)
    stats["unknown_files"] = list(result.unknown_files)  # files in raw_dir that no table reads
    if result.imports:
        stats["imports"] = result.imports  # e.g. human_ratings: Label Studio export counts
    with atomic_path(reports / "stats.json") as tmp:
        tmp.write_text(json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8")
    plots = plot(frame, taxonomy, reports)
    write_outputs(frame, result, resolve(cfg.paths.artifacts) / "prepare")
    metrics = {f"prepare/dialogues_{s}": stats["dialogues"][s] for s in SPLITS}
    metrics |= {"prepare/rejected_rows": stats["rejected_rows"], "prepare/situations": frame["situation_id"].nunique()}
    write_metrics(reports / "metrics.json", metrics, tags={"taxonomy": taxonomy.name} | run_.file_tags())
    run_.set_tags({"taxonomy": taxonomy.name})
    run_.log_metrics(metrics)
    for path in (reports / "metrics.json", reports / "stats.json", rejected, *plots):
        run_.log_artifact(path, "data")
    log.info(f"prepare: {len(frame)} dialogues → {resolve(cfg.paths.artifacts) / 'prepare'}; "
          f"rejected rows: {stats['rejected_rows']}; stats in {reports / 'stats.json'}")
    return metrics


if __name__ == "__main__":
    stage_main("prepare", run)
