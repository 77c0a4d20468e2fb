"""Alt-test (Calderon, Reichart & Dror, ACL 2025) vs a hand-worked case and the reference procedure.

`reference` re-does, loop by loop on dicts, what the authors' public code (nitaytech/AltTest, `alt_test` in
alt_test_example.ipynb) does: drop instances with < 2 humans or no LLM label; skip humans with < min_items
instances; per instance score the LLM and the excluded human against the remaining humans' list
(neg_rmse = −sqrt(mean((pred − a)²)), accuracy = mean(pred == a)); indicators `llm ≥ human` and
`human ≥ llm` (a tie is 1 for both); t-test of (human − llm indicators) against ε, alternative 'less';
BY step-up with the harmonic sum H_m over the tested humans; ω = rejected / tested humans; ρ = mean over
humans of mean(llm indicator). The t-test and BY are written out here (t formula, explicit thresholds)
rather than calling the scipy functions the module uses.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emplifai.metrics.alt_test import alt_test, alt_test_one, as_metrics, by_reject, rater_tests

N = np.nan


def frame(judge, raters: dict[str, list], criterion: str = "c") -> pd.DataFrame:
    """A `tables.merge`-shaped frame: one row per response, `judge`, one `rater:<id>` column each."""
    f = pd.DataFrame({"response_id": [f"r{i}" for i in range(len(judge))], "criterion": criterion,
                      "judge": np.asarray(judge, dtype=float)})
    for name, col in raters.items():
        f[f"rater:{name}"] = np.asarray(col, dtype=float)
    return f


def reference(f: pd.DataFrame, metric: str, eps: float, q: float, min_items: int) -> tuple[float, float, dict]:
    humans = {c: {r: v for r, v in zip(f["response_id"], f[c], strict=True) if not math.isnan(v)}
              for c in f.columns if c.startswith("rater:")}
    llm = {r: v for r, v in zip(f["response_id"], f["judge"], strict=True) if not math.isnan(v)}
    score = {"neg_rmse": lambda p, anns: -math.sqrt(sum((p - a) ** 2 for a in anns) / len(anns)),
             "accuracy": lambda p, anns: sum(p == a for a in anns) / len(anns)}[metric]
    keep = {i for i in llm if sum(i in anns for anns in humans.values()) >= 2}
    p_values, advantages = {}, {}
    for h, anns in humans.items():
        items = [i for i in anns if i in keep]
        if len(items) < min_items:
            continue
        llm_ind, h_ind = [], []
        for i in items:
            remaining = [humans[o][i] for o in humans if o != h and i in humans[o]]
            s_llm, s_h = score(llm[i], remaining), score(anns[i], remaining)
            llm_ind.append(1 if s_llm >= s_h else 0)
            h_ind.append(1 if s_h >= s_llm else 0)
        d = np.array(h_ind, dtype=float) - np.array(llm_ind, dtype=float)
        sd = d.std(ddof=1)
        if sd == 0:
            p = 0.0 if d.mean() < eps else 1.0 if d.mean() > eps else math.nan
        else:
            p = float(stats.t.cdf((d.mean() - eps) / (sd / math.sqrt(len(d))), len(d) - 1))
        p_values[h], advantages[h] = p, float(np.mean(llm_ind))
    m = len(p_values)
    if not m:
        return math.nan, math.nan, {}
    ordered = sorted(p_values.values(), key=lambda p: (math.isnan(p), p))
    thresholds = [(k / m) * q / sum(1 / j for j in range(1, m + 1)) for k in range(1, m + 1)]
    n_rejected = max((k for k in range(1, m + 1) if ordered[k - 1] <= thresholds[k - 1]), default=0)
    return n_rejected / m, float(np.mean(list(advantages.values()))), p_values


# One block of 7 responses (judge, raters a, b, c); repeated 8× below. Per left-out rater, each response gives
# the diff (rater ≥ judge) − (judge ≥ rater) against the others (neg_rmse):
#   a out: r1 tie 0 | r2 judge 2 = others, a 1: −1 | r3 −1 | r4 (others: b=2) both 2 away: 0 | r5 a closer: +1
#   b out: r1 −1 | r2 tie (both 1 off a, 0 off c) 0 | r3 0 | r4 −1 | r5 b=1 closer to (2, 1) than 3: +1
#   c out (r4 unrated): r1 0 | r2 0 | r3 0 | r5 +1;   r6 has one rater, r7 no judge score: dropped.
BLOCK_J = [3, 2, 5, 4, 3, 3, N]
BLOCK = {"a": [3, 1, 4, 4, 2, N, 2], "b": [4, 2, 5, 2, 1, 3, 2], "c": [3, 2, 5, N, 1, N, 2]}


def hand_example() -> pd.DataFrame:
    return frame(BLOCK_J * 8, {k: v * 8 for k, v in BLOCK.items()})


def test_hand_worked_example():
    f = hand_example()
    # a, b: 40 diffs, 8×(0,−1,−1,0,+1): mean −0.2, Σ(d−d̄)² = 8·2.8 → sd² = 22.4/39; judge ≥ rater 32/40 = 0.8
    t_ab = (-0.2 - 0.2) / math.sqrt(22.4 / 39 / 40)
    p_ab = stats.t.cdf(t_ab, 39)
    assert p_ab == pytest.approx(9.3e-4, rel=0.05)
    # c: 32 diffs 8×(0,0,0,+1): mean 0.25 > ε → p > 0.5; judge ≥ c 24/32 = 0.75
    tests = rater_tests(f["judge"].to_numpy(), f[["rater:a", "rater:b", "rater:c"]].to_numpy(), 0.2, "neg_rmse", 30)
    assert tests["n"].tolist() == [40, 40, 32]
    assert tests["p_value"].iloc[:2].tolist() == pytest.approx([p_ab, p_ab], rel=1e-9)
    assert tests["p_value"].iloc[2] > 0.5
    assert tests["advantage_prob"].tolist() == pytest.approx([0.8, 0.8, 0.75])
    # BY, m = 3, H_3 = 11/6: thresholds k/3·0.05/H_3 = .0091, .0182, .0273 → a and b rejected, c not → ω = 2/3
    row = alt_test(f, ["c"], epsilon=0.2, q=0.05, metric="neg_rmse", min_items=30).iloc[0]
    assert row["winning_rate"] == pytest.approx(2 / 3) and row["advantage_prob"] == pytest.approx((0.8 + 0.8 + 0.75) / 3)
    assert bool(row["passed"]) and row["n_responses"] == 40 and row["n_raters"] == 3 and row["reason"] == ""
    # c (32 responses) skipped below min_items = 35, as the reference does: m = 2, both rejected → ω = 1
    row = alt_test(f, ["c"], min_items=35).iloc[0]
    assert (row["winning_rate"], row["n_raters"]) == (1.0, 2) and row["advantage_prob"] == pytest.approx(0.8)
    for min_items in (30, 35):
        omega, rho, _ = reference(f, "neg_rmse", 0.2, 0.05, min_items)
        got = alt_test(f, ["c"], min_items=min_items).iloc[0]
        assert (got["winning_rate"], got["advantage_prob"]) == pytest.approx((omega, rho))


def noisy(rng: np.random.Generator, n: int, k: int, noise: float, levels: int = 5, lo: int = 1) -> tuple:
    truth = rng.integers(lo, lo + levels, size=n)
    raters = np.clip(np.rint(truth[:, None] + rng.normal(scale=noise, size=(n, k))), lo, lo + levels - 1)
    return truth.astype(float), raters


@pytest.mark.parametrize("metric", ["neg_rmse", "accuracy"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_procedure_on_random_data(metric, seed):
    """Missing ratings, missing judge scores, single-rater responses, skipped raters, ties; both metrics."""
    rng = np.random.default_rng(seed)
    truth, raters = noisy(rng, 80, 4, 0.9)
    judge = np.clip(truth + rng.choice([-1, 0, 0, 0, 1], size=80), 1, 5)
    judge[rng.random(80) < 0.1] = np.nan
    raters[rng.random(raters.shape) < 0.25] = np.nan
    raters[rng.random(80) < 0.4, 3] = np.nan  # rater d: often below min_items
    f = frame(judge, {name: raters[:, i] for i, name in enumerate("abcd")})
    for eps, min_items in ((0.2, 30), (0.1, 40), (0.0, 30)):
        omega, rho, ps = reference(f, metric, eps, 0.05, min_items)
        row = alt_test(f, ["c"], epsilon=eps, q=0.05, metric=metric, min_items=min_items).iloc[0]
        assert row["winning_rate"] == pytest.approx(omega, nan_ok=True)
        assert row["advantage_prob"] == pytest.approx(rho, nan_ok=True)
        assert row["n_raters"] == len(ps)
        tests = rater_tests(judge, raters, eps, metric, min_items)
        assert tests["p_value"].tolist() == pytest.approx(list(ps.values()), rel=1e-9, abs=1e-300, nan_ok=True)


def test_consensus_judge_wins_random_judge_loses():
    rng = np.random.default_rng(3)
    truth, raters = noisy(rng, 200, 5, 1.0)
    f = frame(truth, {str(i): raters[:, i] for i in range(5)})
    consensus = f.assign(judge=raters.mean(axis=1))
    random_judge = f.assign(judge=rng.integers(1, 6, size=200).astype(float))
    for judge, omega in ((f, 1.0), (consensus, 1.0), (random_judge, 0.0)):
        row = alt_test(judge, ["c"]).iloc[0]
        assert row["winning_rate"] == omega and bool(row["passed"]) is (omega == 1.0)
    assert alt_test(random_judge, ["c"]).iloc[0]["advantage_prob"] < 0.5 < alt_test(f, ["c"]).iloc[0]["advantage_prob"]
    for h in range(5):  # literally the others' mean when h is left out: never farther from them than h (ρ_h = 1)
        others_mean = np.delete(raters, h, axis=1).mean(axis=1)
        row = rater_tests(others_mean, raters, 0.2, "neg_rmse", 30).iloc[h]
        assert row["advantage_prob"] == 1.0 and row["p_value"] < 1e-6


def test_accuracy_on_categorical_labels():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 4, size=120).astype(float)  # 4 categories, coded 0..3
    raters = np.where(rng.random((120, 3)) < 0.65, truth[:, None], rng.integers(0, 4, size=(120, 3)))
    f = frame(truth, {str(i): raters[:, i] for i in range(3)})
    assert alt_test(f, ["c"], metric="accuracy", epsilon=0.1).iloc[0]["winning_rate"] == 1.0
    wrong = f.assign(judge=(truth + rng.integers(1, 4, size=120)) % 4)  # never the true label
    row = alt_test(wrong, ["c"], metric="accuracy").iloc[0]
    assert row["winning_rate"] == 0.0 and not row["passed"]
    omega, rho, _ = reference(f, "accuracy", 0.1, 0.05, 30)
    assert alt_test(f, ["c"], metric="accuracy", epsilon=0.1).iloc[0][["winning_rate", "advantage_prob"]].tolist() \
        == pytest.approx([omega, rho])
    with pytest.raises(ValueError, match="metric"):
        alt_test(f, ["c"], metric="kappa")


def test_minimums_give_nan_with_reason_never_a_verdict():
    rng = np.random.default_rng(0)
    truth, raters = noisy(rng, 20, 3, 0.5)
    few = frame(truth, {str(i): raters[:, i] for i in range(3)})
    one_each = frame(truth, {"a": np.where(np.arange(20) % 2, raters[:, 0], N),
                             "b": np.where(np.arange(20) % 2, N, raters[:, 1])})
    table = pd.concat([alt_test(few, ["c"]), alt_test(one_each, ["c"]), alt_test(few, ["missing"])])
    assert table["winning_rate"].isna().all() and table["advantage_prob"].isna().all()
    assert table["passed"].isna().all() and table["n_raters"].tolist() == [0, 0, 0]
    reasons = table["reason"].tolist()
    assert "fewer than 30 responses" in reasons[0] and "most: 20" in reasons[0]
    assert "≥ 2 human raters" in reasons[1] and "≥ 2 human raters" in reasons[2]
    assert alt_test(few, ["c"], min_items=20).iloc[0]["reason"] == ""  # configurable


def test_benjamini_yekutieli_changes_a_borderline_verdict():
    # 2 raters on 30 responses; per response both left-out tests get the same diff: judge between the raters
    # (−1 each), raters agree and the judge is off (+1), all equal (0). 8 × −1, 7 × +1, 15 × 0:
    # p ≈ 0.043 for both. Uncorrected (p < 0.05) or BH (k/m·q = .025, .05) → both rejected, ω = 1;
    # BY (thresholds k/2 · 0.05/1.5 = .0167, .0333) → none, ω = 0.
    a = [1] * 8 + [3] * 7 + [3] * 15
    b = [3] * 8 + [3] * 7 + [3] * 15
    judge = [2] * 8 + [5] * 7 + [3] * 15
    f = frame(judge, {"a": a, "b": b})
    tests = rater_tests(f["judge"].to_numpy(), f[["rater:a", "rater:b"]].to_numpy(), 0.2, "neg_rmse", 30)
    assert ((0.0334 < tests["p_value"]) & (tests["p_value"] < 0.05)).all()
    assert (tests["p_value"] < 0.05).mean() == 1.0
    row = alt_test(f, ["c"]).iloc[0]
    assert row["winning_rate"] == 0.0 and not row["passed"]
    assert by_reject([0.03, 0.04, 0.2], 0.05).tolist() == [False, False, False]
    assert by_reject([0.005, 0.04, 0.2], 0.05).tolist() == [True, False, False]
    assert by_reject([0.001, 0.01, float("nan")], 0.05).tolist() == [True, True, False]  # NaN: counted, kept


def test_alt_test_one_matches_table_and_columns():
    f = hand_example()
    table = alt_test(pd.concat([f, f.assign(criterion="d")]), ["c", "d"])
    assert table.columns.tolist() == ["criterion", "winning_rate", "advantage_prob", "passed", "n_responses",
                                      "n_raters", "epsilon", "reason"]
    assert table["criterion"].tolist() == ["c", "d"] and str(table["passed"].dtype) == "boolean"
    one = alt_test_one(f["judge"].to_numpy(), f.filter(like="rater:").to_numpy())
    assert one["winning_rate"] == table.iloc[0]["winning_rate"]


def test_metrics_for_the_stage():
    f = hand_example()
    table = pd.concat([alt_test(f, ["c"]), alt_test(f.head(10), ["c"])]).assign(criterion=["ok", "few"])
    metrics, reasons = as_metrics(table, "agreement")
    assert metrics["agreement/ok/alt_test/winning_rate"] == pytest.approx(2 / 3)
    assert metrics["agreement/ok/alt_test/passed"] == 1.0 and "agreement/ok/alt_test/passed" not in reasons
    assert all(math.isnan(metrics[f"agreement/few/alt_test/{s}"]) for s in ("winning_rate", "advantage_prob", "passed"))
    assert "fewer than 30" in reasons["agreement/few/alt_test/passed"]
