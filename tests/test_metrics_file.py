"""The one metrics-file shape (core/metrics_file.py): keys, NaN → null + reason, atomic writes, shared files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from emplifai.core.errors import UserError
from emplifai.core.metrics_file import NOT_COMPUTABLE, read_metrics, update_metrics, write_metrics


def test_shape_null_with_reason_and_round_trip(tmp_path):
    path = write_metrics(tmp_path / "m" / "metrics.json",
                         {"judge/n": np.int64(48), "judge/mean": np.float64(2.5), "judge/rho": math.nan,
                          "judge/tau": None, "judge/inf": math.inf, "judge/ok": 0.25},
                         {"judge/rho": "constant scores", "judge/ok": "a reason for a number is not kept"},
                         {"judge": "hf_local"})
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert set(doc) == {"metrics", "missing", "tags"}
    assert doc["metrics"] == {"judge/n": 48, "judge/mean": 2.5, "judge/rho": None, "judge/tau": None,
                              "judge/inf": None, "judge/ok": 0.25}
    assert isinstance(doc["metrics"]["judge/n"], int)
    assert doc["missing"] == {"judge/rho": "constant scores", "judge/tau": NOT_COMPUTABLE, "judge/inf": NOT_COMPUTABLE}
    assert doc["tags"] == {"judge": "hf_local"}
    back = read_metrics(path)
    assert math.isnan(back.metrics["judge/rho"]) and back.metrics["judge/mean"] == 2.5
    assert back.missing["judge/rho"] == "constant scores" and back.tags == {"judge": "hf_local"}
    assert list(back.metrics) == ["judge/n", "judge/mean", "judge/rho", "judge/tau", "judge/inf", "judge/ok"]


def test_keys_and_values_are_checked(tmp_path):
    with pytest.raises(ValueError, match="<stage>/<name>"):
        write_metrics(tmp_path / "a.json", {"gemma3-270m.total_s": 1.0})     # the old `models` key style
    with pytest.raises(TypeError, match="numbers"):
        write_metrics(tmp_path / "a.json", {"judge/name": "hf_local"})
    assert not (tmp_path / "a.json").exists()


def test_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous file whole and no temp file behind."""
    path = write_metrics(tmp_path / "metrics.json", {"train/loss": 1.5})
    real = os.replace

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_metrics(path, {"train/loss": 9.9})
    monkeypatch.setattr(os, "replace", real)
    assert read_metrics(path).metrics == {"train/loss": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_reading_absent_empty_and_foreign_files(tmp_path):
    assert read_metrics(tmp_path / "none.json").metrics == {}
    (tmp_path / "empty.json").write_text("{}")
    assert read_metrics(tmp_path / "empty.json") == ({}, {}, {})
    (tmp_path / "old.json").write_text(json.dumps({"train/loss": 1.0}))   # a flat file of the old layout
    with pytest.raises(UserError, match="rerun the stage"):
        read_metrics(tmp_path / "old.json")


def test_update_replaces_one_run_and_keeps_the_others(tmp_path):
    """The emotion stage's reports/emotion/metrics.json: one prefix per predictor, runs in name order."""
    path = tmp_path / "metrics.json"
    update_metrics(path, "emotion/hf_rank/", {"emotion/hf_rank/n": 18.0, "emotion/hf_rank/cos": math.nan},
                   {"emotion/hf_rank/cos": "vectors do not separate the names"})
    update_metrics(path, "emotion/fasttext_clf/", {"emotion/fasttext_clf/n": 18.0, "emotion/fasttext_clf/acc": 0.5})
    update_metrics(path, "emotion/hf_rank/", {"emotion/hf_rank/n": 2.0, "emotion/hf_rank/acc": 1.0})  # a rerun
    back = read_metrics(path)
    assert back.metrics == {"emotion/fasttext_clf/n": 18.0, "emotion/fasttext_clf/acc": 0.5,
                            "emotion/hf_rank/n": 2.0, "emotion/hf_rank/acc": 1.0}
    assert list(back.metrics)[:2] == ["emotion/fasttext_clf/n", "emotion/fasttext_clf/acc"]
    assert back.missing == {}                       # the rerun's cosine is gone, and its reason with it
    with pytest.raises(ValueError, match="prefix"):
        update_metrics(path, "emotion/hf_rank/", {"emotion/other/n": 1.0})
    (tmp_path / "old.json").write_text(json.dumps({"hf_rank": {"n": 18.0}}))  # the old {predictor: {...}} file
    update_metrics(tmp_path / "old.json", "emotion/a/", {"emotion/a/n": 1.0})
    assert read_metrics(tmp_path / "old.json").metrics == {"emotion/a/n": 1.0}


UPDATER = """
import sys
from emplifai.core.metrics_file import update_metrics
path, name = sys.argv[1], sys.argv[2]
for i in range(40):
    update_metrics(path, f"emotion/{name}{i}/", {f"emotion/{name}{i}/n": i})
"""


def test_parallel_predictors_all_end_up_in_the_shared_file(tmp_path):
    """Two predictors of a sweep updating reports/emotion/metrics.json at once (real processes): no lost update."""
    import subprocess
    import sys

    path = tmp_path / "emotion" / "metrics.json"
    procs = [subprocess.Popen([sys.executable, "-c", UPDATER, str(path), name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    keys = set(read_metrics(path).metrics)
    assert keys == {f"emotion/{n}{i}/n" for n in ("a", "b") for i in range(40)}
