"""Stage `report` on the real outputs of the last `dvc repro` (the repo's reports/ and the judge's scores, copied
into tmp_path): every section appears, and its numbers are the numbers in those files."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, compose_cfg
from emplifai.core import tracking
from emplifai.core.metrics_file import read_metrics, write_metrics
from emplifai.metrics.bootstrap import mean_ci
from emplifai.report import __main__ as report

JUDGE = str(compose_cfg().judge.name)
SCORES = ROOT / "artifacts" / "judge" / JUDGE / "scores.parquet"
SECTIONS = ["Dataset", "Emotion prediction (reverse engineering)", "SFT adapters", "Generated responses",
            "LLM-as-a-judge", "Epoch comparison", "Judge–human agreement", "MLflow runs behind these numbers"]


@pytest.fixture
def outputs(tmp_path: Path, make_cfg):
    """reports/ of the last `dvc repro` (+ the judge's scores.parquet when present) under tmp_path, and a config
    whose paths point there."""
    if not (ROOT / "reports" / "generate" / "metrics.json").exists():
        pytest.skip("no stage outputs in reports/ (run `make all`)")
    shutil.copytree(ROOT / "reports", tmp_path / "reports", ignore=shutil.ignore_patterns("summary.*", "epochs"))
    if SCORES.exists():
        (tmp_path / "artifacts" / "judge" / JUDGE).mkdir(parents=True)
        shutil.copy(SCORES, tmp_path / "artifacts" / "judge" / JUDGE / "scores.parquet")
    return tmp_path / "reports", make_cfg(f"data.raw_dir={ROOT / 'data'}")


def same(shown: str, expected: str) -> bool:
    """A cell as the page shows it (tabulate prints "18.000" as 18) vs the expected text."""
    try:
        return float(shown) == float(expected)
    except ValueError:
        return shown == expected


def row(page: str, *cells: str) -> list[str]:
    """The one markdown table row holding every one of `cells` as a whole cell."""
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in page.splitlines() if r.startswith("|")]
    found = [r for r in rows if all(any(same(c, want) for c in r) for want in cells)]
    assert len(found) == 1, (cells, found)
    return found[0]


def ci(m: dict, key: str) -> str:
    return f"{m[key]:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}]"


def test_report_page_sections_and_numbers_come_from_the_files(outputs):
    reports, cfg = outputs
    assert report.run(cfg) == {"report/sections": float(len(SECTIONS))}
    page = (reports / "summary.md").read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", page, flags=re.M) == SECTIONS

    emotion = read_metrics(reports / "emotion" / "metrics.json").metrics
    for predictor in {k.split("/")[1] for k in emotion}:
        m = {k.removeprefix(f"emotion/{predictor}/"): v for k, v in emotion.items() if f"/{predictor}/" in k}
        row(page, predictor, f"{m['accuracy']:.3f}", ci(m, "bertscore_f1"), ci(m, "bertscore_f1_rescaled"))
        assert f"![confusion](emotion/{predictor}/confusion.png)" in page

    for run in ("epochs=1", "epochs=2", "epochs=3"):
        m = read_metrics(reports / "train" / run / "metrics.json").metrics
        assert f"### adapter: {run}" in page and f"![loss](train/{run}/loss.png)" in page
        row(page, "train/best_val_loss", f"{m['train/best_val_loss']:.3f}")
        row(page, run, str(int(m["train/epochs"])), *(f"{m[f'train/val_loss_epoch_{k}']:.4f}"
                                                      for k in range(1, int(m["train/epochs"]) + 1)))

    generate = read_metrics(reports / "generate" / "metrics.json")
    for system in {k.split("/")[1] for k in generate.metrics if k.count("/") == 2}:
        m = {k.split("/")[2]: v for k, v in generate.metrics.items() if f"/{system}/" in k}
        row(page, system, f"{m['bertscore_f1']:.3f}", f"{m['distinct_2']:.3f}", f"{m['mean_chars']:.3f}")
    row(page, "generate/responses", str(generate.metrics["generate/responses"]))

    agreement = read_metrics(reports / "judge" / "agreement.json")
    assert f"Judge `{agreement.tags['primary_judge']}`" in page
    m = agreement.metrics
    for criterion in ("general_empathy", "harmlessness"):
        row(page, criterion, str(int(m[f"agreement/{criterion}/n"])), ci(m, f"agreement/{criterion}/spearman"))
    for key, why in agreement.missing.items():
        row(page, key, why)

    assert "![epoch_comparison](epochs/epoch_comparison.png)" in page
    html = (reports / "summary.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == page.count("![")     # every figure embedded
    assert html.count("<h2>") == len(SECTIONS)


def test_a_number_changed_in_a_metrics_file_changes_the_page(outputs):
    """The generic reader: whatever a stage's metrics file says (a NaN with its reason included) is what shows."""
    reports, _ = outputs
    file = read_metrics(reports / "generate" / "metrics.json")
    first = next(k for k in file.metrics if k.endswith("/bertscore_f1"))
    distinct = first.replace("bertscore_f1", "distinct_2")
    write_metrics(reports / "generate" / "metrics.json", file.metrics | {first: 0.123456, distinct: math.nan},
                  {distinct: "no word n-grams in the responses"}, file.tags)
    page = report.to_markdown(report.folder_sections(reports / "generate", "generate", (), (), group="system"),
                              reports)
    row(page, first.split("/")[1], "0.123", "missing")
    row(page, distinct, "no word n-grams in the responses")


@pytest.mark.skipif(not SCORES.exists(), reason=f"no {SCORES.relative_to(ROOT)} (run `dvc repro judge`)")
def test_judge_section_cis_are_the_project_bootstrap_over_responses(outputs):
    """Judge means with metrics/bootstrap.py's seeded CI, each response resampled whole (was a t-interval)."""
    reports, cfg = outputs
    blocks = report.judge_section(cfg, reports, tracking.data_version(cfg.data.raw_dir))
    table = next(v for k, v in blocks if k == "table").set_index("criterion")
    scores = pd.read_parquet(SCORES)
    boot = cfg.agreement.bootstrap
    assert set(table.columns) == set(scores["system"]) and set(table.index) == set(scores["criterion"])
    for (system, criterion), f in list(scores.groupby(["system", "criterion"]))[::7]:
        x = f.groupby("response_id")["score"].mean().to_numpy(dtype=float)
        x = x[np.isfinite(x)]
        low, high, _ = mean_ci(x, int(boot.n_resamples), int(boot.seed), float(boot.level))
        assert table.loc[criterion, system] == f"{x.mean():.2f} [{low:.2f}, {high:.2f}]"
    assert any(k == "img" and Path(v).name == "scores_heatmap.png" for k, v in blocks)
