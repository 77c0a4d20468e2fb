"""Stage `report`: every result of the pipeline in one readable page, with the MLflow run ids behind it.

    python -m emplifai.report          # reports/summary.md and reports/summary.html (plots inline)

It only reads what the other stages wrote under reports/ (its DVC deps), plus MLflow for run ids, so
it is regenerated exactly when one of those inputs changes. Of the judges it shows only the configured one
(`judge.name`, and the agreement's primary judge), and it leaves out (with the reason, on the page and in the
log) judge or agreement results whose metrics file records another data version than the current data's.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.metrics_file import read_metrics, run_ids
from emplifai.core.paths import resolve, write_text
from emplifai.report.agreement_section import agreement_section
from emplifai.report.metric_tables import group_table, groups, metric_table, missing_table, ungrouped
from emplifai.train.runs import sweep_run_names

log = logging.getLogger(__package__)

Block = tuple[str, Any]  # ("h2"|"h3"|"p", str) | ("table", DataFrame) | ("img", Path)
# The config it reads = its MLflow params (dvc.yaml params but paths, mlflow).
CONFIG = ("data.raw_dir", "agreement.bootstrap", "train.sweep", "train.run_name", "judge.name")


def metrics_blocks(path: Path, group: str | None = None) -> list[Block]:
    """Any stage's metrics file (core/metrics_file.py, the one shape) as tables: with `group`, a file of several
    systems / predictors (`<stage>/<group>/<metric>`) one group per row, its other keys listed below, then the
    missing values with their reasons; else one row per metric."""
    file = read_metrics(path)
    if not file.metrics:
        return []
    if not group or not groups(file):
        return [("table", metric_table(file))]
    blocks: list[Block] = [("table", group_table(file, group))]
    if ungrouped(file).metrics:
        blocks.append(("table", metric_table(ungrouped(file))))
    if file.missing:
        blocks += [("p", "Missing values and why"), ("table", missing_table(file))]
    return blocks


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def dataset_section(reports: Path) -> list[Block]:
    stats = read_json(reports / "data" / "stats.json")
    if not stats:
        return [("p", "No dataset statistics (run `prepare`).")]
    splits = pd.DataFrame({k: stats[k] for k in ("dialogues", "situations", "emotions_present")}).T
    blocks: list[Block] = [("table", splits.reset_index(names="count")),
                           ("p", f"Rejected rows: {stats.get('rejected_rows', 0)}; rated responses: "
                                 f"{stats.get('rated_responses', 0)}; ratings: {stats.get('human_ratings', {})}")]
    return blocks + [("img", reports / "data" / "emotion_distribution.png")]


def emotion_section(reports: Path) -> list[Block]:
    """Scores raw and rescaled, the vector source and the label-separation figures (report/emotion_section.py)."""
    from emplifai.report.emotion_section import emotion_section as section

    return section(reports)


def folder_sections(base: Path, title: str, tables: tuple[str, ...], images: tuple[str, ...],
                    names: list[str] | None = None, group: str | None = None) -> list[Block]:
    """One sub-section per folder under reports/<stage>/ (one per adapter, judge, ...): the named ones only
    where a stage has several runs, so a stale folder that is no DVC dep never reaches the report."""
    if names is not None:
        folders = [base / n for n in names if (base / n / "metrics.json").exists()]
    else:  # the stage's own file only: a subfolder is no DVC dep
        folders = [base] if (base / "metrics.json").exists() else []
    if not folders:
        return [("p", f"No {title} results.")]
    blocks: list[Block] = []
    for folder in folders:
        if folder != base:
            blocks.append(("h3", f"{title}: {folder.name}"))
        blocks += metrics_blocks(folder / "metrics.json", group)
        for name in tables:
            if (folder / name).exists():
                blocks += [("p", name), ("table", pd.read_csv(folder / name).head(12))]
        blocks += [("img", folder / name) for name in images if (folder / name).exists()]
    return blocks


def other_data(cfg: DictConfig, path: Path, what: str, current: str) -> str | None:
    """Why `what` is left out of the page: its metrics file records another data version than the current
    data's, `current` (None: the same, or none recorded — files written before stages recorded it)."""
    recorded = read_metrics(path).tags.get("data_version")
    if recorded is None or tracking.same_data(recorded, current):
        return None
    note = (f"{what} left out: {path.relative_to(resolve(cfg.paths.reports)).as_posix()} was computed on data "
            f"version {recorded}, the data is now version {current} (rerun it: dvc repro)")
    log.warning(f"report: {note}")
    return note


def epoch_section(cfg: DictConfig, reports: Path, version: str) -> list[Block]:
    """The study's 1–3 epoch design: val loss per epoch and judge score per epoch, base and human beside."""
    from emplifai.report import epochs

    boot = OmegaConf.to_container(cfg.agreement.bootstrap, resolve=True)
    judge = str(cfg.judge.name)
    note = other_data(cfg, reports / "judge" / judge / "metrics.json", f"judge {judge}'s scores", version)
    blocks = epochs.section(resolve(cfg.paths.artifacts), reports, boot, sweep_run_names(cfg), [] if note else [judge])
    return blocks + ([("p", note)] if note else [])


def metrics_files(cfg: DictConfig, reports: Path) -> list[Path]:
    """The metrics file of every stage result this page shows (each one a DVC dep of the report)."""
    return [reports / "data" / "metrics.json", reports / "emotion" / "metrics.json",
            *(reports / "train" / name / "metrics.json" for name in sweep_run_names(cfg)),
            reports / "generate" / "metrics.json", reports / "judge" / str(cfg.judge.name) / "metrics.json",
            reports / "judge" / "agreement.json"]


def runs_section(cfg: DictConfig, reports: Path) -> list[Block]:
    """Exactly the MLflow runs that wrote the metrics files behind this page (their `mlflow_run_id` tags), not
    every run of the data version: stage, run name, status, start, duration and a link into the UI."""
    found: dict[str, tuple[str, str]] = {}  # run id -> (experiment id, metrics file)
    for path in metrics_files(cfg, reports):
        for run_id, exp_id in run_ids(read_metrics(path)):
            found.setdefault(run_id, (exp_id, path.relative_to(reports).as_posix()))
    if not found:
        return [("p", "No metrics file names an MLflow run (were the stages run with mlflow.enabled=false?).")]
    rows = tracking.describe_runs(cfg, [(run_id, exp_id) for run_id, (exp_id, _) in found.items()])
    for row, (_, path) in zip(rows, found.values(), strict=True):
        row["metrics file"] = path
    return [("table", pd.DataFrame(rows))]


def to_markdown(blocks: list[Block], root: Path) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "table":
            out.append(value.to_markdown(index=False) + "\n" if len(value) else "(empty)\n")
        elif kind == "img" and Path(value).exists():
            out.append(f"![{Path(value).stem}]({Path(value).relative_to(root).as_posix()})\n")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "table":
            body.append(value.to_html(index=False, border=0, classes="t", render_links=True) if len(value)
                        else "<p>(empty)</p>")
        elif kind == "img" and Path(value).exists():
            data = base64.b64encode(Path(value).read_bytes()).decode()
            body.append(f'<img alt="{Path(value).stem}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table.t{border-collapse:collapse;margin:.5em 0}.t td,.t th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html lang='en'><meta charset='utf-8'><title>emplifai summary</title>"
            f"<style>{style}</style><body>{''.join(body)}</body></html>")


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "report")
    with tracking.stage_run(cfg, "report", config=CONFIG) as run_:  # spans the work: a crash ends it FAILED
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    reports = resolve(cfg.paths.reports)
    version = tracking.data_version(cfg.data.raw_dir)
    blocks: list[Block] = [
        ("h1", "emplifai summary"),
        ("p", f"Data version {version}. Every number below comes from the files under reports/ and the "
              "MLflow runs listed at the end."),
        ("h2", "Dataset"), *dataset_section(reports),
        ("h2", "Emotion prediction (reverse engineering)"), *emotion_section(reports),
        ("h2", "SFT adapters"), *folder_sections(reports / "train", "adapter", (), ("loss.png",),
                                                 sweep_run_names(cfg)),
        ("h2", "Generated responses"), *folder_sections(reports / "generate", "generate", (), (), group="system"),
        ("h2", "LLM-as-a-judge"), *judge_section(cfg, reports, version),
        ("h2", "Epoch comparison"), *epoch_section(cfg, reports, version),
        ("h2", "Judge–human agreement"), *agreement_blocks(cfg, reports, version),
        ("h2", "MLflow runs behind these numbers"), *runs_section(cfg, reports),
    ]
    write_text(reports / "summary.md", to_markdown(blocks, reports))
    write_text(reports / "summary.html", to_html(blocks))
    run_.log_artifact(reports / "summary.md", "report")
    run_.log_artifact(reports / "summary.html", "report")
    if (reports / "epochs").is_dir():
        run_.log_artifact(reports / "epochs", "report/epochs")
    log.info(f"report: {reports / 'summary.md'} and {reports / 'summary.html'}")
    return {"report/sections": float(sum(1 for k, _ in blocks if k == "h2"))}


def agreement_blocks(cfg: DictConfig, reports: Path, version: str) -> list[Block]:
    note = other_data(cfg, reports / "judge" / "agreement.json", "the judge–human agreement", version)
    return [("p", note)] if note else agreement_section(reports)


def judge_section(cfg: DictConfig, reports: Path, version: str) -> list[Block]:
    """The configured judge: criterion × system mean with the project's bootstrap 95% CI (responses resampled,
    `agreement.bootstrap`, as in the epoch comparison and the agreement), then length bias."""
    from emplifai.report import epochs

    judge, folder = str(cfg.judge.name), reports / "judge" / str(cfg.judge.name)
    note = other_data(cfg, folder / "metrics.json", f"judge {judge}'s results", version)
    if note:
        return [("p", note)]
    scores = epochs.read_scores(resolve(cfg.paths.artifacts), judge)
    if scores is None:
        return [("p", "No judge results.")]
    boot = OmegaConf.to_container(cfg.agreement.bootstrap, resolve=True)
    means = epochs.judge_means(scores, boot)
    means["cell"] = [epochs.cell(r) for r in means.to_dict("records")]
    table = means.pivot(index="criterion", columns="system", values="cell").reset_index()
    blocks: list[Block] = [("h3", f"judge: {judge} — mean score per criterion and system (95% bootstrap CI over "
                                  f"responses, {boot['n_resamples']} resamples, seed {boot['seed']})"),
                           ("table", table)]
    if (folder / "length_bias.csv").exists():
        blocks += [("p", "Length bias: Spearman of score vs response length"),
                   ("table", pd.read_csv(folder / "length_bias.csv").head(12))]
    return blocks + [("img", folder / "scores_heatmap.png")]


if __name__ == "__main__":
    stage_main("report", run)
