"""Epoch comparison: per-epoch val loss from train's metrics.json, judge means per epoch with bootstrap CIs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, compose_cfg
from emplifai.core import tracking
from emplifai.core.metrics_file import read_metrics, write_metrics
from emplifai.report import __main__ as report
from emplifai.report.epochs import system_epoch
from emplifai.train.runs import val_loss_per_epoch

SYSTEMS = ["gemma3-270m+base+default", "gemma3-270m+epochs=1+default", "gemma3-270m+epochs=2+default",
           "gemma3-270m+epochs=3+default", "human", "empathetic"]
LOSSES = {"epochs=1": [2.0], "epochs=2": [2.0, 1.8], "epochs=3": [2.0, 1.8, 1.7]}


def test_val_loss_maps_optimizer_steps_to_epochs():
    assert val_loss_per_epoch([(4, 2.0), (8, 1.5), (12, 1.2)], n_batches=4) == {
        "train/val_loss_epoch_1": 2.0, "train/val_loss_epoch_2": 1.5, "train/val_loss_epoch_3": 1.2}
    # 7 batches, accumulate 2 -> 4 optimizer steps per epoch; validation every 2 steps: the epoch's last wins
    mid = val_loss_per_epoch([(2, 3.0), (4, 2.5), (6, 2.2), (8, 2.0)], n_batches=7, accumulate=2)
    assert mid == {"train/val_loss_epoch_1": 2.5, "train/val_loss_epoch_2": 2.0}


def test_system_names_map_to_epochs():
    assert system_epoch("gemma3-270m+base+default", {}) == ("gemma3-270m+default", "base", 0.0)
    assert system_epoch("gemma3-270m+epochs=2+default", {}) == ("gemma3-270m+default", "epochs=2", 2.0)
    assert system_epoch("llm-jp+llm-jp_epochs=3+default", {})[2] == 3.0
    assert system_epoch("gemma3-270m+default+default", {"default": 1})[2] == 1.0   # epochs from its train run
    assert system_epoch("empathetic", {}) is None and system_epoch("human", {})[1] == "human"


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """reports/train/<run>/metrics.json for a 1-3 epoch sweep (+ one older run) and a judge's scores.parquet;
    epochs=3's `fluency` scores all failed to parse (NaN)."""
    reports, artifacts = tmp_path / "reports", tmp_path / "artifacts"
    for run, losses in LOSSES.items():
        (reports / "train" / run).mkdir(parents=True)
        metrics = {"train/epochs": len(losses), **{f"train/val_loss_epoch_{k}": v for k, v in enumerate(losses, 1)}}
        write_metrics(reports / "train" / run / "metrics.json", metrics)
    write_metrics(reports / "train" / "old" / "metrics.json", {"train/best_val_loss": 2.1})
    rng = np.random.default_rng(0)
    rows = []
    for i, system in enumerate(SYSTEMS):
        for d in range(12):
            for criterion in ("fluency", "empathy"):
                score = float(np.clip(round(1 + i * 0.5 + rng.normal(0, 0.8)), 1, 5))
                if system.startswith("gemma3-270m+epochs=3") and criterion == "fluency":
                    score = math.nan
                rows.append({"response_id": f"{system}:d{d}", "dialogue_id": f"d{d}", "system": system,
                             "source": "human" if system == "human" else "generate", "criterion": criterion,
                             "score": score, "parse_ok": not math.isnan(score)})
    scores = pd.DataFrame(rows)
    (artifacts / "judge" / "hf_local").mkdir(parents=True)
    scores.to_parquet(artifacts / "judge" / "hf_local" / "scores.parquet", index=False)
    return tmp_path, scores


def test_epoch_section_tables_cis_and_missing(synthetic, make_cfg):
    tmp_path, scores = synthetic
    cfg = make_cfg()
    blocks = report.epoch_section(cfg, tmp_path / "reports", tracking.data_version(cfg.data.raw_dir))
    tables = [v for k, v in blocks if k == "table"]
    loss = tables[0].set_index("run")
    assert loss.loc["epochs=3", ["epoch_1", "epoch_2", "epoch_3"]].tolist() == ["2.0000", "1.8000", "1.7000"]
    assert loss.loc["epochs=1", "epoch_2"] == "missing" and loss.loc["epochs=2", "epochs"] == "2"
    assert "old" not in loss.index  # a folder the sweep config does not name is no DVC dep: never read
    judged = tables[1].set_index("criterion")
    assert list(judged.columns) == ["base", "epochs=1", "epochs=2", "epochs=3", "human"]  # rated systems left out
    assert judged.loc["fluency", "epochs=3"] == "missing: all 12 scores are NaN (unparseable judge replies)"
    base = scores[(scores["system"] == SYSTEMS[0]) & (scores["criterion"] == "empathy")]["score"]
    assert judged.loc["empathy", "base"].startswith(f"{base.mean():.2f} [")

    csv = pd.read_csv(tmp_path / "reports" / "epochs" / "epoch_comparison.csv")
    assert (tmp_path / "reports" / "epochs" / "epoch_comparison.png").stat().st_size > 0
    val = csv[csv["kind"] == "val_loss"].set_index(["series", "epoch"])["value"]
    assert val[("epochs=3", 3)] == 1.7 and len(val) == 6
    judge = csv[csv["kind"] == "judge"]
    assert set(judge["epoch"].dropna()) == {0, 1, 2, 3} and judge["epoch"].isna().sum() == 2   # human: no epoch
    ok = judge[judge["value"].notna()]
    assert len(ok) == 9 and (ok["ci_low"] <= ok["value"]).all() and (ok["value"] <= ok["ci_high"]).all()
    assert (ok["ci_low"] < ok["ci_high"]).all()
    means = scores.groupby(["system", "criterion"])["score"].mean()
    assert ok.apply(lambda r: means[(r["series"], r["criterion"])], axis=1).tolist() == pytest.approx(ok["value"])
    gone = judge[judge["value"].isna()]
    assert len(gone) == 1 and gone.iloc[0]["series"] == SYSTEMS[3] and gone.iloc[0]["n"] == 0
    assert "NaN" in gone.iloc[0]["reason"]
    again = report.epoch_section(cfg, tmp_path / "reports", tracking.data_version(cfg.data.raw_dir))  # seeded: the same CIs again
    assert again[3][1].equals(blocks[3][1])


def test_report_page_has_the_epoch_section(synthetic, make_cfg):
    tmp_path, _ = synthetic
    report.run(make_cfg(f"data.raw_dir={tmp_path}/raw"))
    page = (tmp_path / "reports" / "summary.md").read_text(encoding="utf-8")
    assert "## Epoch comparison" in page and "missing: all 12 scores are NaN" in page
    assert "epochs/epoch_comparison.png" in page and "validation loss per step" not in page


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models/base/smollm2-135m/config.json").exists()
                    or not (ROOT / "artifacts/prepare/train.parquet").exists(), reason="run `make fixtures` first")
def test_train_writes_val_loss_per_epoch_and_its_loss_curves_as_data(tmp_path):
    """A real 2-epoch LoRA run (SmolLM2, 2 examples, 2 steps per epoch): metrics.json holds train/epochs and
    one loss per epoch, and the curves written as plot data are the run's losses."""
    from emplifai.train import __main__ as train

    for link in ("models/base", "artifacts/prepare"):  # the real weights and the sample's splits
        (tmp_path / link).parent.mkdir(exist_ok=True)
        (tmp_path / link).symlink_to(ROOT / link)
    metrics = train.run(compose_cfg([
        f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports", f"paths.models={tmp_path}/models",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "model=smollm2-135m", "sft_prompt=patient_only", "threads=2", "train.epochs=2", "train.sample_n=2",
        "train.val_sample_n=1", "train.batch_size=1", "train.max_length=40", "train.run_name='epochs=2'"]))
    folder = tmp_path / "reports" / "train" / "epochs=2"
    saved = read_metrics(folder / "metrics.json").metrics
    assert saved["train/epochs"] == 2 and metrics["train/steps"] == 4
    losses = [saved["train/val_loss_epoch_1"], saved["train/val_loss_epoch_2"]]
    assert all(math.isfinite(v) for v in losses) and min(losses) == pytest.approx(saved["train/best_val_loss"])
    curve, val = pd.read_csv(folder / "train_loss.csv"), pd.read_csv(folder / "val_loss.csv")
    assert curve["step"].tolist() == [0, 1, 2, 3] and curve["epoch"].tolist() == [0, 0.5, 1, 1.5]
    assert curve["train_loss"].iloc[-1] == pytest.approx(saved["train/final_train_loss"], rel=1e-5)
    assert val["epoch"].tolist() == [1, 2] and val["val_loss"].tolist() == pytest.approx(losses, rel=1e-5)
