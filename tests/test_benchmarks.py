"""The benchmarks' pieces, not their timings: the synthetic study-scale data version (prepare accepts it, a seed
fixes it), the `--json` figures file, the scaling fit (start-up apart from per-item cost) and the projection."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_scaling  # noqa: E402
import bench_study  # noqa: E402
import benchkit  # noqa: E402
import study_data  # noqa: E402
from emplifai.prepare import __main__ as prepare  # noqa: E402


def test_study_data_is_accepted_by_prepare_with_the_expected_counts(make_cfg, tmp_path):
    counts = study_data.build(tmp_path / "raw", dialogues=300, seed=0)
    assert counts == {"situations": 56, "dialogues": 300, "rated_responses": 48, "human_ratings": 48 * 3 * 7}
    metrics = prepare.run(make_cfg(f"data.raw_dir={tmp_path / 'raw'}"))   # strict: any bad row would raise
    assert metrics["prepare/rejected_rows"] == 0
    out = tmp_path / "artifacts" / "prepare"
    frame = pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "test")])
    assert len(frame) == 300 and frame["emotion"].nunique() == 28
    assert not frame.duplicated(["patient", "supporter"]).any()          # every dialogue's texts differ
    assert set(frame.groupby("emotion")["split"].agg(set).map(lambda s: "train" in s)) == {True}
    ratings = pd.read_parquet(out / "human_ratings.parquet")
    assert len(ratings) == 48 * 21 and ratings["score"].between(1, 5).all()
    counts_ = bench_study.study_counts(tmp_path)
    assert counts_["dialogues"] == 300 and counts_["rated"] == 48 and counts_["criteria"] == 7
    assert counts_["judged"] == counts_["test_dialogues"] * (1 + counts_["systems"]) + 48


def test_study_data_is_fixed_by_its_seed(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        study_data.build(tmp_path / name, dialogues=200, seed=seed)
    files = [f"{t}.csv" for t in ("situations", "dialogues", "rated_responses", "human_ratings")]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "dialogues.csv").read_bytes() != (tmp_path / "c" / "dialogues.csv").read_bytes()


def test_study_data_defaults_to_the_study_scale_and_keeps_systems_apart(tmp_path):
    counts = study_data.build(tmp_path, seed=0)
    assert counts["situations"] == 280 and counts["dialogues"] == 4125 and counts["rated_responses"] == 240
    sits = pd.read_csv(tmp_path / "situations.csv")
    assert set(sits["emotion"].value_counts()) == {10} and sits["situation"].is_unique
    rated = pd.read_csv(tmp_path / "rated_responses.csv")
    means = pd.read_csv(tmp_path / "human_ratings.csv").merge(rated).groupby("system")["score"].mean()
    assert means["empathetic"] > means["generic"] > means["inappropriate"]
    with pytest.raises(ValueError, match="situations"):
        study_data.build(tmp_path / "x", dialogues=100, situations=200)


def test_json_figures_are_case_figure_value(tmp_path):
    path = tmp_path / "out" / "fig.json"
    benchkit.write_json(path, {"emotion": {"seconds": np.float64(2.5), "n": np.int64(3), "ratio": math.nan,
                                           "ok": True, "note": "x"}})
    assert json.loads(path.read_text()) == {"emotion": {"seconds": 2.5, "n": 3, "ratio": None, "ok": True,
                                                        "note": "x"}}
    for bad in ({"emotion": 2.5}, {"emotion": {}}, {"emotion": {"seconds": [1, 2]}}):
        with pytest.raises(TypeError):
            benchkit.write_json(path, bad)
    benchkit.write_json(None, {"emotion": {"seconds": 1.0}})   # no --json: nothing written, no error


def test_verdict_prints_the_goal_and_sets_the_exit_status(capsys):
    assert benchkit.verdict(True, "speedup ≥ 3×") == 0 and benchkit.verdict(False, "speedup ≥ 3×") == 1
    assert capsys.readouterr().out.splitlines() == ["PASS: speedup ≥ 3×", "FAIL: speedup ≥ 3×"]


def test_scaling_fit_separates_startup_from_per_item_cost():
    n = np.array([250, 1000, 2000, 4125])
    linear = 20.0 + 0.003 * n
    startup, per_item = bench_scaling.fit_linear(n, linear)
    assert startup == pytest.approx(20.0) and per_item == pytest.approx(0.003)
    assert bench_scaling.fit_exponent(n, linear) == pytest.approx(1.0, abs=0.01)
    assert bench_scaling.line_check(n, linear)[2]
    noisy = linear + np.array([0.4, -0.3, 0.5, -0.2])                  # a shared machine's jitter passes
    assert bench_scaling.line_check(n, noisy)[2]
    quadratic = 20.0 + 1e-6 * n**2                                      # +17 s at 4,125: superlinear, caught
    assert bench_scaling.fit_exponent(n, quadratic) == pytest.approx(2.0, abs=0.05)
    predicted, allowed, within = bench_scaling.line_check(n, quadratic)
    assert not within and quadratic[-1] > allowed > predicted


def test_projection_is_startup_plus_per_item_cost_times_count():
    costs = {c: {"startup_s": 10.0, "seconds_per_item": 0.5}
             for c in ("emotion_hf_rank", "judge_hf_local", "generate_base")}
    counts = {"dialogues": 4125, "test_dialogues": 600, "systems": 4, "rated": 240, "criteria": 7,
              "judged": 600 * 5 + 240}
    rows = bench_study.projection(costs, counts)
    assert rows["emotion_hf_rank_all"][2:] == (4125, 10.0 + 0.5 * 4125)
    assert rows["generate"][2:] == (2400, 10.0 + 0.5 * 2400)
    assert rows["judge_hf_local"][2:] == (3240, 10.0 + 0.5 * 3240)
