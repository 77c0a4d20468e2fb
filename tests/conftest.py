"""Shared fixtures: Hydra-composed configs pointing every path and MLflow at a temp dir."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SAMPLE = ROOT / "src" / "emplifai" / "sample"


MODELS = ("gemma3-270m", "smollm2-135m", "e5-small")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Real-model tests skip on a dev box without models; under CI a missing model is an error, not a skip."""
    missing = [m for m in MODELS if not (ROOT / "models" / "base" / m / "config.json").exists()]
    if not (ROOT / "artifacts" / "prepare" / "train.parquet").exists():
        missing.append("artifacts/prepare (the sample's splits)")
    if os.environ.get("CI") and missing:
        raise pytest.UsageError(f"CI needs {missing}: run `make fixtures` (dvc repro models prepare) first")


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides or [])


@pytest.fixture(scope="session")
def real_llm_server():
    """`transformers serve` on SmolLM2-135M (it has a chat template), started once for the slow tests."""
    from llm_realserver import TransformersServe

    if not (ROOT / "models/base/smollm2-135m/config.json").exists():
        pytest.skip("run `dvc repro models` first")
    with TransformersServe(ROOT / "models/base/smollm2-135m") as srv:
        yield srv


@pytest.fixture
def make_cfg(tmp_path: Path):
    """compose(overrides) with artifacts/reports/logs and a sqlite MLflow under tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        base = [f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports",
                f"paths.log_dir={tmp_path}/logs", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
        return compose_cfg(base + list(overrides))

    return _make


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    """A small valid raw directory: 2 situations per emotion for 4 emotions, 3 dialogues each, ratings."""
    raw = tmp_path / "raw"
    emotions = ["sadness", "joy", "fear", "relief"]
    sits = [[f"s{i}", emotions[i % 4], f"通院中の患者の状況その{i}。"] for i in range(8)]
    dias = [[f"d{i}{j}", f"s{i}", f"患者の言葉{i}-{j}です。", f"支援者の返事{i}-{j}です。"]
            for i in range(8) for j in range(3)]
    write_csv(raw / "situations.csv", ["situation_id", "emotion", "situation"], sits)
    write_csv(raw / "dialogues.csv", ["dialogue_id", "situation_id", "patient", "supporter"], dias)
    write_csv(raw / "rated_responses.csv", ["response_id", "dialogue_id", "system", "response"],
              [["r1", "d00", "empathetic", "それはお辛いですね。"], ["r2", "d10", "generic", "頑張ってください。"]])
    write_csv(raw / "human_ratings.csv", ["response_id", "rater_id", "criterion", "score"],
              [["r1", "a", "fluency", "5"], ["r2", "a", "fluency", "４"]])
    return raw
