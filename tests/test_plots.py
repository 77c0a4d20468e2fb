"""DVC plots as data: each writer on real small inputs, then `dvc plots show --json` on dvc.yaml as it stands.

The data files exist in reports/ only after a `dvc repro`, so the DVC test lays them out in a temp DVC repo
(this dvc.yaml and params.yaml, `dvc init --no-scm`) with the writers the stages call, and checks that every
declared data plot comes back rendered by its template with the rows written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg
from emplifai.agreement import __main__ as agreement
from emplifai.agreement.response_points import response_points
from emplifai.core.paths import write_plot_data
from emplifai.emotion import breakdown
from emplifai.judge.rubric import Rubric
from emplifai.judge.summary import means_table, summary, write_means
from emplifai.metrics import tables
from emplifai.train.loss_curve import loss_tables, write_loss_tables
from emplifai.train.runs import val_loss_per_epoch

PREPARE = ROOT / "artifacts" / "prepare"
DVC = Path(sys.executable).with_name("dvc")
needs_splits = pytest.mark.skipif(not (PREPARE / "test.parquet").exists(),
                                  reason="run `dvc repro prepare` first (the sample's splits)")

# A run of 3 epochs × 2 optimizer steps: a training loss per step (two accumulated batches at step 0) and a
# validation at each epoch's end — the shape SFTModule.history has.
HISTORY = {"train/loss": [(0, 4.25), (0, 4.05), (1, 3.98), (2, 3.91), (3, 3.80), (4, 3.77), (5, 3.70)],
           "val/loss": [(2, 3.8220098), (4, 3.7192612), (6, 3.6909811)]}


def params() -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "params.yaml"), resolve=True)


def majority_baseline() -> pd.DataFrame:
    """A real predictor's output on the real test split: every dialogue gets train's most frequent emotion,
    one answer unmapped (invalid) so the NO_LABEL column is exercised."""
    test, train = pd.read_parquet(PREPARE / "test.parquet"), pd.read_parquet(PREPARE / "train.parquet")
    top = train["emotion"].value_counts().sort_index().idxmax()
    valid = np.arange(len(test)) != 0
    return pd.DataFrame({"dialogue_id": test["dialogue_id"], "gold": test["emotion"],
                         "label": np.where(valid, top, ""), "valid": valid})


def rater_as_judge() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(judge scores, human ratings) from the sample's real ratings: the first rater plays the judge."""
    ratings = pd.read_parquet(PREPARE / "human_ratings.parquet")
    rated = pd.read_parquet(PREPARE / "rated_responses.parquet")
    first = ratings[ratings["rater_id"] == sorted(ratings["rater_id"].unique())[0]]
    scores = first.merge(rated[["response_id", "system"]], on="response_id")
    return scores.assign(score=scores["score"].astype(float), parse_ok=True), ratings


def rubric_keys() -> list[str]:
    return Rubric.from_config(compose_cfg().judge).keys


# ---- the writers ----------------------------------------------------------------------------------------

def test_loss_tables_one_row_per_measured_step(tmp_path):
    tables_ = loss_tables(HISTORY, n_batches=4, accumulate=2)   # 2 optimizer steps per epoch
    train, val = tables_["train_loss"], tables_["val_loss"]
    assert list(train.columns) == ["step", "epoch", "train_loss"] and list(val.columns) == ["step", "epoch", "val_loss"]
    assert train["step"].tolist() == list(range(6)) and train["epoch"].tolist() == [0, 0.5, 1, 1.5, 2, 2.5]
    assert train.loc[0, "train_loss"] == pytest.approx(4.15)            # the step's accumulated batches
    assert val["epoch"].tolist() == [1, 2, 3] and train.notna().all().all() and val.notna().all().all()
    # the validation losses at whole epochs are the ones train's metrics.json reports per epoch
    per_epoch = val_loss_per_epoch(HISTORY["val/loss"], 4, 2)
    assert {f"train/val_loss_epoch_{int(e)}": v for e, v in zip(val["epoch"], val["val_loss"], strict=True)} \
        == pytest.approx(per_epoch)
    first = [f.read_bytes() for f in write_loss_tables(HISTORY, 4, 2, tmp_path / "a")]
    assert first == [f.read_bytes() for f in write_loss_tables(HISTORY, 4, 2, tmp_path / "b")]
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == ["train_loss.csv", "val_loss.csv"]
    assert first[0].decode().splitlines()[:2] == ["step,epoch,train_loss", "0,0,4.15"]
    assert first[1].decode().splitlines()[-1] == "6,3,3.69098"
    assert all(t.empty for t in loss_tables({}, 4, 2).values())


@needs_splits
def test_prediction_pairs_are_the_confusion_table(tmp_path):
    pred = majority_baseline()
    tax = breakdown.Taxonomy.from_config(compose_cfg().taxonomy)
    files = breakdown.write_reports(pred, tax, "majority", tmp_path / "emotion" / "majority", (50, 0.95, 0))
    assert files[-1] == tmp_path / "emotion" / "predictions" / "majority.csv"   # beside the predictors' folders
    pairs = pd.read_csv(files[-1], keep_default_na=False)
    assert list(pairs.columns) == ["dialogue_id", "gold", "predicted"] and len(pairs) == len(pred) == 18
    assert pairs["dialogue_id"].tolist() == pred["dialogue_id"].tolist()
    assert pairs.loc[0, "predicted"] == breakdown.NO_LABEL
    counts = pd.crosstab(pairs["gold"], pairs["predicted"])
    table = breakdown.confusion(pred, tax)
    assert (table.loc[counts.index, counts.columns] == counts).all().all() and table.to_numpy().sum() == 18


def test_judge_means_from_the_last_runs_summary(tmp_path):
    """reports/judge/<judge>/summary.csv (committed by the last `dvc repro`): one bar per criterion × system."""
    judge = params()["judge"]["name"]
    summ = pd.read_csv(ROOT / "reports" / "judge" / judge / "summary.csv")
    keys = rubric_keys()
    means = means_table(summ, keys)
    assert len(means) == len(summ) and means["criterion_system"].is_unique
    assert list(dict.fromkeys(means["criterion"])) == [k for k in keys if k in set(summ["criterion"])]
    row = means.iloc[0]
    assert row["criterion_system"] == f"{row['criterion']} | {row['system']}"
    expect = summ.set_index(["criterion", "system"])["mean"]
    assert means.set_index(["criterion", "system"])["mean"].to_dict() == pytest.approx(expect.to_dict())
    text = write_means(summ, keys, tmp_path / "means.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "criterion_system,criterion,system,mean,n"
    assert write_means(summ, keys, tmp_path / "again.csv").read_text(encoding="utf-8") == text


@needs_splits
def test_response_points_are_the_response_level_pairs():
    scores, ratings = rater_as_judge()
    keys = rubric_keys()
    merged = tables.merge(scores, ratings)
    points = response_points(merged, keys)
    assert len(points) == merged["response_id"].nunique() == 48 and points["response_id"].is_unique
    assert points["human_mean"].between(1, 5).all() and points["judge"].between(1, 5).all()
    one = merged[merged["response_id"] == points.loc[0, "response_id"]]
    assert points.loc[0, "judge"] == pytest.approx(one["judge"].mean())
    assert points.loc[0, "human_mean"] == pytest.approx(one["human_mean"].mean())   # same raters on every criterion
    # the coefficient the scatter illustrates: response_level Spearman on exactly these pairs
    table, _, _ = tables.coefficient_table(merged, keys, 1, 5, None)
    rho = table.set_index("criterion").loc[tables.RESPONSE_LEVEL, "spearman"]
    from emplifai.metrics.coefficients import TIE_DECIMALS as tie  # means equal to 9 decimals are one tie

    assert rho == pytest.approx(points["judge"].round(tie).corr(points["human_mean"].round(tie), method="spearman"))
    # a response the judge did not score on every criterion has no mean, so no point (nor a pair in the ρ)
    partial = response_points(merged.drop(one.index[:1]), keys)
    assert len(partial) == 47 and points.loc[0, "response_id"] not in set(partial["response_id"])


@needs_splits
def test_agreement_stage_writes_the_scatter_of_its_response_level_coefficient(make_cfg, tmp_path):
    shutil.copytree(PREPARE, tmp_path / "artifacts" / "prepare")
    scores, _ = rater_as_judge()
    (tmp_path / "artifacts" / "judge" / "rater").mkdir(parents=True)
    scores.to_parquet(tmp_path / "artifacts" / "judge" / "rater" / "scores.parquet")
    cfg = make_cfg("mlflow.enabled=false", "agreement.primary=rater", "agreement.judges=[rater]",
                   "agreement.bootstrap.n_resamples=20")
    metrics = agreement.run(cfg)
    path = tmp_path / "reports" / "judge" / "agreement" / "rater" / "scatter.csv"
    first = path.read_bytes()
    points = pd.read_csv(path)
    assert list(points.columns) == ["response_id", "system", "human_mean", "judge"] and len(points) == 48
    ratings = pd.read_parquet(PREPARE / "human_ratings.parquet")
    exact = response_points(tables.merge(scores, ratings), rubric_keys())
    assert points["response_id"].tolist() == exact["response_id"].tolist()
    assert np.allclose(points[["human_mean", "judge"]], exact[["human_mean", "judge"]], rtol=1e-5, atol=0)
    from emplifai.metrics.coefficients import TIE_DECIMALS as tie

    assert metrics["agreement/response_level/spearman"] == pytest.approx(
        exact["judge"].round(tie).corr(exact["human_mean"].round(tie), method="spearman"))
    agreement.run(cfg)
    assert path.read_bytes() == first                                          # a rerun writes the same bytes


# ---- dvc plots show on dvc.yaml -------------------------------------------------------------------------

@pytest.fixture
def plot_repo(tmp_path: Path) -> Path:
    """This dvc.yaml + params.yaml in a fresh DVC repo, with every data plot file written by its writer."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=repo, check=True)
    p = params()
    pred = majority_baseline()
    for predictor in p["emotion"]["predictors"]:
        breakdown.write_pairs(pred, repo / "reports/emotion" / breakdown.PAIRS_DIR / f"{predictor}.csv")
    for k in p["train"]["sweep"]["epochs"]:  # the run of k epochs: the first k epochs of HISTORY
        history = {key: [(s, v + 0.01 * k) for s, v in points if s <= 2 * k] for key, points in HISTORY.items()}
        write_loss_tables(history, 4, 2, repo / f"reports/train/epochs={k}")
    scores, ratings = rater_as_judge()
    keys = rubric_keys()
    judge = p["judge"]["name"]
    write_means(summary(scores), keys, repo / f"reports/judge/{judge}/means.csv")
    write_plot_data(response_points(tables.merge(scores, ratings), keys),
                    repo / f"reports/judge/agreement/{judge}/scatter.csv")
    return repo


@needs_splits
def test_dvc_plots_show_renders_every_data_plot(plot_repo, tmp_path):
    out = subprocess.run([str(DVC), "plots", "show", "--json", "-o", str(tmp_path / "dvc_plots")], cwd=plot_repo,
                         capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    p = params()
    judge, sweep = p["judge"]["name"], p["train"]["sweep"]["epochs"]
    def rows(path: str) -> int:
        return len(pd.read_csv(plot_repo / path))

    losses = {f"reports/train/epochs={k}/{y}.csv": y for k in sweep for y in ("train_loss", "val_loss")}
    expected = {  # plot id -> (template's mark, x field, y field, data rows)
        **{f"reports/emotion/predictions/{n}.csv": ("rect", "predicted", "gold", 18)
           for n in p["emotion"]["predictors"]},
        "loss": ("line", "epoch", "dvc_inferred_y_value", sum(rows(f) for f in losses)),
        **{f: ("line", "epoch", y, rows(f)) for f, y in losses.items()},
        f"reports/judge/{judge}/means.csv": ("bar", "mean", "criterion_system", 4 * len(rubric_keys())),
        f"reports/judge/agreement/{judge}/scatter.csv": ("point", "human_mean", "judge", 48),
    }
    errors = [e for e in shown.get("errors", []) if e["name"] in expected]
    assert not errors, errors
    for plot_id, (mark, x, y, n) in expected.items():
        (rendered,) = shown["data"][plot_id]
        assert rendered["type"] == "vega" and rendered["revisions"] == ["workspace"], plot_id
        spec = rendered["content"]
        values = spec["data"]["values"]
        assert len(values) == n and all(v["rev"] == "workspace" for v in values), plot_id
        layer = spec["spec"] if "spec" in spec else spec                        # confusion: a faceted spec
        marks = json.dumps(layer.get("layer", [layer]))
        assert f'"{mark}"' in marks, (plot_id, marks[:300])
        encoding = json.dumps(layer)
        assert f'"field": "{x}"' in encoding and f'"field": "{y}"' in encoding, plot_id
        assert all(v[x] != "" and v[y] != "" for v in values), plot_id    # Vega would draw "" as 0
    # the overlay: every run of the sweep, train and validation loss, in one chart (one series each)
    series = {v["filename::field"] for v in shown["data"]["loss"][0]["content"]["data"]["values"]}
    assert series == {f"epochs={k}/{y}.csv::{y}" for k in sweep for y in ("train_loss", "val_loss")}
