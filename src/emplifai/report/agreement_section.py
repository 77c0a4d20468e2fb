"""The report's judge–human agreement section, from reports/judge/agreement.json (read like every metrics file)
and the primary judge's tables under reports/judge/agreement/<judge>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from emplifai.core.metrics_file import read_metrics
from emplifai.report.metric_tables import cell, fmt, missing_table

Block = tuple[str, Any]


def alt_verdicts(path: Path) -> dict[str, dict[str, str]]:
    """criterion → alt-test verdict, ω (winning rate) and ρ (advantage probability) from alt_test.csv."""
    if not path.exists():
        return {}
    out = {}
    for row in pd.read_csv(path).to_dict(orient="records"):
        passed = str(row.get("passed")).strip().lower()
        verdict = {"true": "passed", "1.0": "passed", "false": "failed", "0.0": "failed"}.get(passed, "undecided")
        out[str(row["criterion"])] = {"alt-test": verdict, "ω": fmt(row.get("winning_rate")),
                                      "ρ": fmt(row.get("advantage_prob"))}
    return out


def agreement_section(reports: Path) -> list[Block]:
    """Per criterion first (with the alt-test verdict), then across criteria (macro, response level), then the
    systems. Nothing pooled over criteria: their means differ, and pooling would pass that off as agreement."""
    file = read_metrics(reports / "judge" / "agreement.json")
    if not file.metrics:
        return [("p", "No agreement results (no human ratings, or `agreement` has not run).")]
    metrics, primary = file.metrics, file.tags.get("primary_judge", "")
    folder = reports / "judge" / "agreement" / primary
    levels = ("macro", "response_level", "system_level")
    stats = ("spearman", "pearson", "kendall", "qwk", "alpha_humans", "alpha_with_judge", "ceiling_spearman",
             "judge_vs_others_spearman")
    criteria = [k.split("/")[1] for k in metrics
                if k.count("/") == 2 and k.endswith("/spearman") and k.split("/")[1] not in levels]
    alt = alt_verdicts(folder / "alt_test.csv")
    rows = [{"criterion": c, "n": fmt(metrics.get(f"agreement/{c}/n")),
             **{s: cell(metrics, f"agreement/{c}/{s}") for s in stats},
             **alt.get(c, {"alt-test": "not run", "ω": "—", "ρ": "—"})} for c in criteria]
    blocks: list[Block] = [
        ("p", f"Judge `{primary}` vs the mean human rating per criterion (95% CIs: responses resampled whole). "
              "`ceiling_spearman` is each held-out rater vs the mean of the other raters; "
              "`judge_vs_others_spearman` is the judge vs that same mean — compare these two. Alt-test: may the "
              "judge replace a rater (ω = winning rate, passed when ≥ 0.5; ρ = advantage probability)."),
        ("table", pd.DataFrame(rows)),
        ("h3", "Across criteria"),
        ("p", "`macro`: the mean of the per-criterion coefficients; `response_level`: each response's mean over "
              "the criteria, judge vs humans. No coefficient pools (response, criterion) pairs."),
        ("table", pd.DataFrame([{"level": lvl, "n": fmt(metrics.get(f"agreement/{lvl}/n")),
                                 **{s: cell(metrics, f"agreement/{lvl}/{s}") for s in stats}}
                                for lvl in levels[:2]])),
        ("h3", "System level"),
        ("p", "Do judge and humans rank the systems the same way? Kendall τ over system means: "
              f"{cell(metrics, 'agreement/system_level/kendall')} "
              f"({int(metrics.get('agreement/system_level/n_systems') or 0)} systems; CI from responses resampled "
              "within systems). A system is flagged where the CI of its judge − human gap excludes 0."),
    ]
    if (folder / "system_level.csv").exists():
        sl = pd.read_csv(folder / "system_level.csv")
        sl["gap (95% CI)"] = [f"{fmt(g)} [{fmt(lo)}, {fmt(hi)}]"
                              for g, lo, hi in zip(sl["gap"], sl["gap_ci_low"], sl["gap_ci_high"], strict=True)]
        sl[["judge_mean", "human_mean"]] = sl[["judge_mean", "human_mean"]].map(fmt)
        sl["flagged"] = sl["flagged"].map({1.0: "yes", 0.0: "no"}).fillna("—")
        blocks.append(("table", sl[["system", "n_responses", "judge_mean", "human_mean", "gap (95% CI)",
                                    "flagged"]]))
    if file.missing:
        blocks += [("p", "Missing values and why"), ("table", missing_table(file))]
    if (folder / "disagreements.csv").exists():
        blocks += [("h3", "Where the judge disagrees most with humans"),
                   ("table", pd.read_csv(folder / "disagreements.csv").head(10))]
    return blocks + [("img", p) for p in sorted(folder.glob("*.png"))]
