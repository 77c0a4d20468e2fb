"""Agreement coefficients vs hand-worked values and the libraries directly; NaN+reason; the stage end to end."""

from __future__ import annotations

import json
import math
import shutil

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from conftest import ROOT, SAMPLE, compose_cfg
from emplifai.agreement import __main__ as agreement
from emplifai.metrics.bootstrap import paired_ci
from emplifai.metrics.coefficients import kendall, kripp_alpha, pearson, qwk, spearman
from emplifai.prepare import __main__ as prepare

X, Y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]


def test_correlations_match_hand_worked_example_and_scipy():
    # ranks = values; d = (-1, 1, -1, 1, 0), Σd² = 4 → ρ = 1 − 6·4 / (5·24) = 0.8
    assert spearman(X, Y).value == pytest.approx(0.8)
    # mean 3 each; Σ(x−3)(y−3) = 8, Σ(x−3)² = 10 → r = 0.8
    assert pearson(X, Y).value == pytest.approx(0.8)
    # 10 pairs, 2 discordant ((1,2), (3,4)) → τ = (8 − 2) / 10 = 0.6
    assert kendall(X, Y).value == pytest.approx(0.6)
    a, b = [1, 2, 2, 3, 5, 4, 4], [1, 3, 2, 2, 5, 5, 3]  # with ties: τ-b
    assert spearman(a, b).value == pytest.approx(stats.spearmanr(a, b).statistic)
    assert pearson(a, b).value == pytest.approx(stats.pearsonr(a, b).statistic)
    assert kendall(a, b).value == pytest.approx(stats.kendalltau(a, b, variant="b").statistic)


def test_qwk_hand_worked_and_sklearn():
    # O: four cells off by one (weight 1/16 each, p = 1/4) → Σw·O = 1/16; E from uniform marginals over 1..4:
    # Σ(i−j)²/16 · 1/16 = 40/256 → κ = 1 − (1/16)/(40/256) = 0.6
    assert qwk([1, 2, 3, 4], [2, 1, 4, 3]).value == pytest.approx(0.6)
    a, b = [1, 2, 3, 4, 5, 3, 2], [1, 3, 3, 5, 4, 2, 2]
    assert qwk(a, b).value == pytest.approx(cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    assert qwk([1.4, 2.6, 3.5], [1, 3, 4]).value == pytest.approx(1.0)  # judge scores are rounded


def test_krippendorff_alpha_hand_worked_and_library():
    # units (1,1), (2,2), (1,2): with two values every ordinal distance is equal, so α = nominal α
    # = 1 − (n−1)·Σ o_ck / Σ n_c·n_k = 1 − 5·2 / (3·3·2) = 4/9
    data = np.array([[1, 2, 1], [1, 2, 2]], dtype=float)
    assert kripp_alpha(data).value == pytest.approx(4 / 9)
    rng = np.random.default_rng(0)
    data = rng.integers(1, 6, size=(3, 20)).astype(float)
    data[0, 3] = np.nan
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5])
    assert kripp_alpha(data).value == pytest.approx(expected)


@pytest.mark.parametrize("x, y, why", [
    ([1, 2], [2, 3], "fewer than 3"),
    ([3, 3, 3, 3], [1, 2, 3, 4], "constant"),
    ([1, np.nan, 3, np.nan], [1, 2, 3, 4], "fewer than 3"),  # NaN pairs dropped first
])
def test_degenerate_inputs_are_nan_with_reason(x, y, why):
    for fn in (spearman, pearson, kendall, qwk):
        c = fn(x, y)
        assert math.isnan(c.value) and why in c.reason
    assert "need at least 2 raters" in kripp_alpha(np.array([[1, 2, 3]])).reason
    assert "same value" in kripp_alpha(np.array([[2, 2, 2], [2, 2, 2]])).reason


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.8, size=40)
    low, high, why = paired_ci(spearman, x, y, n_resamples=1000, seed=7)
    assert why is None and low < spearman(x, y).value < high
    assert paired_ci(spearman, x, y, n_resamples=1000, seed=7)[:2] == (low, high)
    assert paired_ci(spearman, x, y, n_resamples=1000, seed=8)[:2] != (low, high)
    assert math.isnan(paired_ci(spearman, [1, 2], [1, 2])[0])


def agreement_cfg(tmp_path, *extra):
    base = [f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    defaults = (ROOT / "conf" / "config.yaml").read_text(encoding="utf-8")
    group = [] if "agreement:" in defaults else ["+agreement=default"]  # until the lead adds the default
    return compose_cfg([*group, *base, *extra])


def test_agreement_stage_end_to_end(tmp_path):
    """Real human ratings of the sample; two synthetic judge outputs (stand-ins for the judge stage's file)."""
    prepare.run(agreement_cfg(tmp_path, f"data.raw_dir={SAMPLE}", "mlflow.enabled=false"))
    prep = tmp_path / "artifacts" / "prepare"
    ratings = pd.read_parquet(prep / "human_ratings.parquet")
    rated = pd.read_parquet(prep / "rated_responses.parquet")
    human = ratings.groupby(["response_id", "criterion"], as_index=False)["score"].mean()
    rng = np.random.default_rng(0)
    for name, noise in (("good", 0.3), ("noisy", 2.0)):
        s = human.merge(rated[["response_id", "system"]], on="response_id")
        s["score"] = np.clip(s["score"] + rng.normal(scale=noise, size=len(s)), 1, 5)
        s.loc[s["criterion"] == "fluency", "score"] = 3.0  # a constant judge → NaN with reason, not a crash
        (tmp_path / "artifacts" / "judge" / name).mkdir(parents=True)
        s.to_parquet(tmp_path / "artifacts" / "judge" / name / "scores.parquet")
    m = agreement.run(agreement_cfg(tmp_path, "agreement.judges=[good,noisy]", "agreement.primary=good",
                                    "agreement.bootstrap.n_resamples=200"))
    for stat in ("spearman", "spearman_ci_low", "spearman_ci_high", "pearson", "kendall", "qwk", "alpha_humans",
                 "alpha_humans_ci_low", "alpha_with_judge", "ceiling_spearman", "judge_vs_others_spearman"):
        assert math.isfinite(m[f"agreement/general_empathy/{stat}"]), stat
    assert m["agreement/general_empathy/spearman_ci_low"] <= m["agreement/general_empathy/spearman"] \
        <= m["agreement/general_empathy/spearman_ci_high"]
    assert m["agreement/general_empathy/spearman"] > m["agreement/noisy/general_empathy/spearman"]
    assert m["agreement/general_empathy/n"] == 48 and math.isnan(m["agreement/fluency/spearman"])
    # across criteria and systems: the new names, never a pooled "overall"
    assert not [k for k in m if "overall" in k]
    for level in ("response_level", "system_level"):
        for stat in ("spearman" if level == "response_level" else "kendall",):
            for key in (f"{level}/{stat}", f"{level}/{stat}_ci_low", f"{level}/{stat}_ci_high"):
                assert math.isfinite(m[f"agreement/{key}"]) and f"agreement/jury/{key}" in m, key
    assert m["agreement/response_level/spearman"] > m["agreement/noisy/response_level/spearman"]
    assert m["agreement/system_level/n_systems"] == len(set(rated["system"]))
    assert math.isfinite(m["agreement/macro/alpha_humans"])  # the humans' α needs no judge
    assert math.isnan(m["agreement/macro/spearman"])  # fluency's judge is constant: a mean of 6 of 7 is no macro
    out = json.loads((tmp_path / "reports" / "judge" / "agreement.json").read_text())
    assert "constant" in out["missing"]["agreement/fluency/spearman"] and out["metrics"]["agreement/fluency/spearman"] is None
    assert "fluency" in out["missing"]["agreement/macro/spearman"] and "overall" not in json.dumps(out)
    assert "agreement/response_level/qwk" not in m  # not defined on response means: absent, not a NaN
    d = tmp_path / "reports" / "judge" / "agreement" / "good"
    for name in ("coefficients.csv", "human_ceiling.csv", "per_system.csv", "system_level.csv", "disagreements.csv",
                 "scatter.png", "spearman_per_system.png", "system_gaps.png"):
        assert (d / name).stat().st_size > 0, name
    coefs = pd.read_csv(d / "coefficients.csv")
    assert coefs["criterion"].tolist()[-2:] == ["macro", "response_level"] and "overall" not in set(coefs["criterion"])
    gaps = pd.read_csv(d / "disagreements.csv")
    assert {"response", "patient", "gap"} <= set(gaps.columns) and gaps["gap"].abs().is_monotonic_decreasing
    assert set(pd.read_csv(d / "per_system.csv")["system"]) == set(rated["system"])
    assert set(pd.read_csv(d / "system_level.csv")["system"]) == set(rated["system"])
    check_report_section(tmp_path / "reports", d)
    shutil.rmtree(tmp_path / "artifacts" / "judge")
    with pytest.raises(Exception, match="no judge scores"):
        agreement.run(agreement_cfg(tmp_path))


def check_report_section(reports, folder):
    """The report leads with criteria + alt-test verdicts, then macro/response level, then systems."""
    from emplifai.report.__main__ import agreement_section, to_markdown

    text = to_markdown(agreement_section(reports), reports)
    assert "overall" not in text
    order = [text.index(s) for s in ("| criterion", "Across criteria", "| macro", "| response_level",
                                     "System level", "gap (95% CI)")]
    assert order == sorted(order)
    (folder / "alt_test.csv").unlink(missing_ok=True)
    assert "not run" in to_markdown(agreement_section(reports), reports)
    row = {"n_responses": 48, "n_raters": 3, "epsilon": 0.2}
    pd.DataFrame([{"criterion": "general_empathy", "winning_rate": 0.75, "advantage_prob": 0.6, "passed": True,
                   "reason": "", **row},
                  {"criterion": "fluency", "winning_rate": None, "advantage_prob": None, "passed": None,
                   "reason": "too few", **row}]).to_csv(folder / "alt_test.csv", index=False)
    rows = [r for r in to_markdown(agreement_section(reports), reports).splitlines() if r.startswith("| ")]
    assert any("general_empathy" in r and "passed" in r and "0.750" in r for r in rows)
    assert any("fluency" in r and "undecided" in r for r in rows)


def test_means_equal_up_to_float_rounding_tie_in_rank_correlations():
    """A mean of per-criterion means summed in another order differs in the last bit (1.8333333333333333 vs
    1.8333333333333335): a rank correlation must see one tie, not two ranks."""
    from emplifai.metrics.coefficients import kendall, spearman

    crit = [4 / 3, 2.0, 7 / 3, 5 / 3]
    one, other = sum(crit) / 4, sum(sorted(crit)) / 4
    assert one != other  # the float artefact is real
    human = np.array([one, 3.0, 2.0, one, 4.0])
    reordered = np.array([one, 3.0, 2.0, other, 4.0])
    judge = np.array([4.0, 5.0, 3.0, 1.0, 2.0])
    assert spearman(judge, human).value == spearman(judge, reordered).value
    assert kendall(judge, human).value == kendall(judge, reordered).value
