"""Agreement across criteria and systems: nothing pooled, responses resampled whole, the ceiling like for like."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from emplifai.metrics import systems, tables
from emplifai.metrics.bootstrap import draws_within, paired_ci
from emplifai.metrics.coefficients import spearman

BOOT = {"n_resamples": 300, "seed": 0, "level": 0.95}


def long(judge: dict[str, np.ndarray], raters: dict[str, dict[str, np.ndarray]], system: list[str] | None = None
         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, ratings) long frames from {criterion: judge scores} and {rater: {criterion: scores}}."""
    n = len(next(iter(judge.values())))
    ids = [f"r{i:03d}" for i in range(n)]
    system = system or ["s"] * n
    scores = pd.DataFrame([{"response_id": ids[i], "system": system[i], "criterion": c, "score": float(v[i])}
                           for c, v in judge.items() for i in range(n)])
    ratings = pd.DataFrame([{"response_id": ids[i], "rater_id": r, "criterion": c, "score": float(v[i])}
                            for r, by in raters.items() for c, v in by.items() for i in range(n)])
    return scores, ratings


def table(scores: pd.DataFrame, ratings: pd.DataFrame, boot: dict | None = BOOT):
    criteria = list(dict.fromkeys(scores["criterion"]))
    frame, why, ceil = tables.coefficient_table(tables.merge(scores, ratings), criteria, 1, 5, boot)
    return frame.set_index("criterion"), why, ceil


def test_differing_criterion_means_are_not_agreement():
    """Within every criterion judge and humans are uncorrelated; only the criteria's means are shared."""
    a = np.array([1, 1, -1, -1] * 4)  # humans' deviation from the criterion mean
    b = np.array([1, -1, 1, -1] * 4)  # the judge's: orthogonal to a, both mean 0
    means = {"c_low": 2, "c_mid": 3, "c_high": 4}
    judge = {c: m + b for c, m in means.items()}
    human = {c: m + a for c, m in means.items()}
    scores, ratings = long(judge, {k: human for k in ("x", "y", "z")})
    t, why, _ = table(scores, ratings)
    for crit in means:
        assert t.loc[crit, "spearman"] == pytest.approx(0, abs=1e-12)
    for level in ("macro", "response_level"):
        for stat in ("spearman", "pearson", "kendall"):
            assert t.loc[level, stat] == pytest.approx(0, abs=1e-12), (level, stat)
        assert t.loc[level, "spearman_ci_low"] < 0 < t.loc[level, "spearman_ci_high"]
    pooled = spearman(np.concatenate(list(judge.values())), np.concatenate(list(human.values()))).value
    assert pooled > 0.3  # the pooled number this replaces reports the shared criterion means as agreement
    assert "overall" not in t.index


def test_macro_and_response_level_hand_worked():
    x, y = np.array([1, 2, 3, 4, 5]), np.array([2, 1, 4, 3, 5])
    scores, ratings = long({"a": x, "b": x}, {k: {"a": y, "b": x} for k in ("p", "q")})
    t, _, _ = table(scores, ratings, boot=None)
    # per criterion: a is (ρ, r, τ) = (0.8, 0.8, 0.6) (see test_agreement), b is identical → 1
    assert t.loc["macro", "spearman"] == pytest.approx(0.9)
    assert t.loc["macro", "pearson"] == pytest.approx(0.9)
    assert t.loc["macro", "kendall"] == pytest.approx(0.8)
    # response means: judge 1..5, humans (y + x)/2 = 1.5 1.5 3.5 3.5 5 (their own ranks). Deviations
    # (−2 −1 0 1 2)·(−1.5 −1.5 .5 .5 2) = 9, Σx² = 10, Σy² = 9 → ρ = r = 9/√90 = 3/√10;
    # τ-b: 8 concordant, 0 discordant, 2 pairs tied in y → 8/√(10·8) = 2/√5
    assert t.loc["response_level", "spearman"] == pytest.approx(3 / math.sqrt(10))
    assert t.loc["response_level", "pearson"] == pytest.approx(3 / math.sqrt(10))
    assert t.loc["response_level", "kendall"] == pytest.approx(2 / math.sqrt(5))
    assert t.loc["response_level", "n"] == 5 and math.isnan(t.loc["response_level", "qwk"])


def test_ceiling_is_like_for_like():
    """Raters A = B = 1..5, C = 2 1 4 3 5; judge 1..5."""
    j = np.array([1, 2, 3, 4, 5])
    raters = {"A": {"c": j}, "B": {"c": j}, "C": {"c": np.array([2, 1, 4, 3, 5])}}
    t, _, ceil = table(*long({"c": j}, raters), boot=None)
    # vs the mean of ALL raters (4/3 5/3 10/3 11/3 5, increasing) the judge looks perfect ...
    assert t.loc["c", "spearman"] == pytest.approx(1.0)
    # ... but held-out A or B face (B or A + C)/2 = 1.5 1.5 3.5 3.5 5 → ρ = 3/√10 (above); held-out C faces
    # (A + B)/2 = 1..5 → ρ = 0.8. The judge against those same means: 3/√10, 3/√10 and 1.
    r = 3 / math.sqrt(10)
    per = ceil[ceil["criterion"] == "c"].set_index("rater")
    assert per.loc["A", "ceiling_spearman"] == pytest.approx(r) and per.loc["C", "ceiling_spearman"] == pytest.approx(0.8)
    assert per.loc["C", "judge_vs_others_spearman"] == pytest.approx(1.0)
    assert t.loc["c", "ceiling_spearman"] == pytest.approx((2 * r + 0.8) / 3)
    assert t.loc["c", "judge_vs_others_spearman"] == pytest.approx((2 * r + 1) / 3)
    assert t.loc["c", "judge_vs_others_spearman"] < t.loc["c", "spearman"]


def random_study(n: int = 30, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n)
    crits = {"c1": 0.0, "c2": 0.7, "c3": -0.5}
    human = {k: {c: np.clip(np.rint(3 + m + quality + rng.normal(scale=0.7, size=n)), 1, 5) for c, m in
                 crits.items()} for k in ("x", "y", "z")}
    judge = {c: np.clip(3 + m + 0.6 * quality + rng.normal(scale=0.8, size=n), 1, 5) for c, m in crits.items()}
    return long(judge, human)


def test_duplicated_criteria_or_rows_do_not_narrow_cis():
    scores, ratings = random_study()
    base, _, _ = table(scores, ratings)

    def again(f: pd.DataFrame) -> pd.DataFrame:  # every criterion a second time under a new name
        return pd.concat([f, f.assign(criterion=f["criterion"] + "_again")], ignore_index=True)

    doubled, _, _ = table(again(scores), again(ratings))
    cols = ["spearman", "spearman_ci_low", "spearman_ci_high", "kendall_ci_low", "kendall_ci_high"]
    for level in ("response_level", "macro"):
        assert doubled.loc[level, cols].to_numpy() == pytest.approx(base.loc[level, cols].to_numpy())
    twice, _, _ = table(pd.concat([scores, scores]), pd.concat([ratings, ratings]))
    assert twice.loc[["response_level", "macro"], cols].to_numpy() == pytest.approx(
        base.loc[["response_level", "macro"], cols].to_numpy())
    # teeth: resampling (response, criterion) cells as independent pairs narrows with every duplicate
    m = tables.merge(scores, ratings)
    lo1, hi1, _ = paired_ci(spearman, m["judge"], m["human_mean"], 300, 0)
    lo2, hi2, _ = paired_ci(spearman, pd.concat([m["judge"]] * 2), pd.concat([m["human_mean"]] * 2), 300, 0)
    assert hi2 - lo2 < 0.85 * (hi1 - lo1)


def test_cis_are_seeded():
    scores, ratings = random_study()
    a, _, _ = table(scores, ratings)
    b, _, _ = table(scores, ratings)
    c, _, _ = table(scores, ratings, boot={**BOOT, "seed": 1})
    assert a.equals(b) and not a.equals(c)


def systems_study(offset: dict[str, float] | None = None, reverse: bool = False):
    names = ["s1", "s2", "s3", "s4"]
    system = [s for s in names for _ in range(6)]
    human = np.array([1 + i + (r % 2) for i in range(4) for r in range(6)], dtype=float)
    judge = 6 - human if reverse else human + np.array([(offset or {}).get(s, 0.0) for s in system])
    scores, ratings = long({"c1": judge, "c2": judge}, {k: {"c1": human, "c2": human} for k in ("x", "y")},
                           system)
    cube = tables.Cube.from_merged(tables.merge(scores, ratings), ["c1", "c2"])
    return systems.system_level(cube, BOOT)


def test_system_level_ranking_and_flags():
    frame, m, why = systems_study()
    assert m["kendall"] == pytest.approx(1.0) and m["n_systems"] == 4 and m["n_flagged"] == 0
    assert m["kendall_ci_low"] <= 1.0 <= m["kendall_ci_high"]
    assert systems_study(reverse=True)[1]["kendall"] == pytest.approx(-1.0)
    frame, m, why = systems_study(offset={"s2": 1.0})
    flagged = frame.set_index("system")["flagged"]
    assert flagged["s2"] == 1.0 and flagged.drop("s2").eq(0.0).all() and m["n_flagged"] == 1
    assert m["s2/gap"] == pytest.approx(1.0) and m["s2/gap_ci_low"] == pytest.approx(1.0)


def test_system_level_degenerate_is_nan_with_reason():
    scores, ratings = long({"c": np.array([3.0, 3, 3, 3])}, {k: {"c": np.array([1, 2, 3, 4])} for k in "xy"},
                           ["a", "a", "b", "c"])
    frame, m, why = systems.system_level(tables.Cube.from_merged(tables.merge(scores, ratings), ["c"]), BOOT)
    assert math.isnan(m["kendall"]) and "constant" in why["kendall"]
    assert math.isnan(m["a/gap_ci_low"]) and "fewer than 3" in why["a/gap_ci_low"]


def test_draws_within_keep_each_group():
    groups = np.array(["a", "a", "b", "b", "b"])
    idx = draws_within(groups, 50, 0)
    assert (groups[idx] == groups).all()


# ---- n counts scored pairs only: a failed judge reply (NaN) is no item ---------------------------------------------

def test_failed_judge_scores_are_no_items_for_n_or_the_cis():
    """Judge replies that failed (score NaN) count nowhere: a response the judge failed on entirely gives the
    very table (n, coefficients, CIs) of the scores without it, so its CIs resample only scored responses; a
    criterion's n counts its scored pairs."""
    scores, ratings = random_study(n=33)
    failed = scores["response_id"].isin(["r030", "r031", "r032"])  # rated by humans, every judge reply failed
    with_nan = scores.assign(score=scores["score"].mask(failed))
    clean, _, _ = table(scores[~failed], ratings)
    nan, _, _ = table(with_nan, ratings)
    assert nan.loc[["c1", "macro", "response_level"], "n"].tolist() == [30, 30, 30]
    pd.testing.assert_frame_equal(nan, clean)  # n and every CI from the 30 scored responses
    before = tables.merge(scores, ratings)  # what the old merge kept: the failed responses as NaN judge rows
    assert tables.merge(with_nan, ratings)["judge"].notna().all() and len(before) == 99
    # some criteria failed on some responses: their n counts the scored pairs, per system too
    partial = with_nan.copy()
    partial.loc[partial["response_id"].isin(["r000", "r001"]) & (partial["criterion"] == "c2"), "score"] = np.nan
    t, _, _ = table(partial, ratings)
    assert (t.loc["c1", "n"], t.loc["c2", "n"], t.loc["c3", "n"]) == (30, 28, 30)
    assert t.loc["response_level", "n"] == 28   # a response mean needs every criterion
    assert t.loc["c2", "spearman_ci_low"] <= t.loc["c2", "spearman"] <= t.loc["c2", "spearman_ci_high"]
    per = tables.per_system(tables.merge(partial, ratings), 1, 5).set_index("criterion")
    assert per.loc["c2", "n"] == 28 and per.loc["c1", "n"] == 30


# ---- provenance: only the configured judge, of the current data version ---------------------------------------------

@pytest.fixture
def judged(make_cfg, tmp_path):
    """The sample prepared under tmp_path, and `judge(name, version)`: a judge output (scores + metrics file
    with its data version) as the judge stage writes them."""
    import shutil

    from conftest import SAMPLE
    from emplifai.core import tracking
    from emplifai.core.metrics_file import write_metrics
    from emplifai.prepare import __main__ as prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    for table_file in SAMPLE.glob("*.csv"):
        shutil.copy(table_file, raw / table_file.name)
    cfg = make_cfg(f"data.raw_dir={raw}", "mlflow.enabled=false", "agreement.bootstrap.n_resamples=50")
    prepare.run(cfg)
    prep = tmp_path / "artifacts" / "prepare"
    human = pd.read_parquet(prep / "human_ratings.parquet").groupby(["response_id", "criterion"], as_index=False)[
        "score"].mean()
    systems_of = pd.read_parquet(prep / "rated_responses.parquet")[["response_id", "system"]]

    def judge(name: str, version: str, shift: float = 0.0) -> None:
        s = human.merge(systems_of, on="response_id")
        s["score"] = np.clip(s["score"] + shift + np.random.default_rng(0).normal(scale=0.5, size=len(s)), 1, 5)
        (tmp_path / "artifacts" / "judge" / name).mkdir(parents=True, exist_ok=True)
        s.to_parquet(tmp_path / "artifacts" / "judge" / name / "scores.parquet")
        write_metrics(tmp_path / "reports" / "judge" / name / "metrics.json", {"judge/responses": len(s)},
                      tags={"judge": name, "data_version": version})

    return cfg, tracking.data_version(raw), judge


def test_agreement_reads_only_the_configured_judge_and_refuses_another_data_version(judged, make_cfg, tmp_path):
    from emplifai.agreement import __main__ as agreement
    from emplifai.core.errors import UserError
    from emplifai.core.metrics_file import read_metrics

    cfg, current, judge = judged
    name = str(cfg.judge.name)
    judge(name, current)
    judge("old_judge", "content-0123456789abcdef0123456789ab", shift=1.5)  # stale: other name, other data
    m = agreement.run(cfg)
    out = read_metrics(tmp_path / "reports" / "judge" / "agreement.json")
    assert out.tags["judges"] == name and out.tags["data_version"] == current
    assert not [k for k in m if "old_judge" in k or "jury" in k]
    assert not (tmp_path / "reports" / "judge" / "agreement" / "old_judge").exists()
    named = OmegaConf.merge(cfg, {"agreement": {"judges": [name, "old_judge"]}})
    with pytest.raises(UserError, match="'old_judge' scored data version content-0123456789abcdef"):
        agreement.run(named)                                     # named explicitly: refused, not mixed in
    judge(name, "content-ffffffffffffffffffffffffffff")          # the configured judge on other data
    with pytest.raises(UserError, match=f"is data version {current}: rerun that judge"):
        agreement.run(cfg)


def test_report_leaves_out_judge_results_of_another_data_version(judged, tmp_path):
    from emplifai.agreement import __main__ as agreement
    from emplifai.core.metrics_file import read_metrics, write_metrics
    from emplifai.report import __main__ as report

    cfg, current, judge = judged
    name, reports = str(cfg.judge.name), tmp_path / "reports"
    judge(name, current)
    agreement.run(cfg)
    shown = report.to_markdown(report.judge_section(cfg, reports, current) + report.agreement_blocks(cfg, reports, current),
                               reports)
    assert "left out" not in shown and f"judge: {name}" in shown and "| criterion" in shown
    judge(name, "content-ffffffffffffffffffffffffffff")  # the judge, and the agreement too, from other data
    file = read_metrics(reports / "judge" / "agreement.json")
    write_metrics(reports / "judge" / "agreement.json", file.metrics, file.missing,
                  file.tags | {"data_version": "content-ffffffffffffffffffffffffffff"})
    judge_blocks = report.judge_section(cfg, reports, current)
    agreement_blocks = report.agreement_blocks(cfg, reports, current)
    epoch_blocks = report.epoch_section(cfg, reports, current)
    assert [k for k, _ in judge_blocks] == ["p"] and [k for k, _ in agreement_blocks] == ["p"]  # a note, no table
    assert not [t for k, t in epoch_blocks if k == "h3" and t.startswith("judge ")]              # no judge scores
    notes = [t for k, t in judge_blocks + agreement_blocks + epoch_blocks if k == "p" and "left out" in t]
    assert len(notes) == 3 and all(f"the data is now version {current}" in n for n in notes)
