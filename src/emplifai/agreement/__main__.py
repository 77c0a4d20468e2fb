"""Stage `agreement`: how far to trust the judge — judge vs human ratings, with the human ceiling beside it.

    python -m emplifai.agreement                                   # the configured judge (judge.name)
    python -m emplifai.agreement 'agreement.judges=[hf_local,vllm]'   # several judges (and their jury)
    python -m emplifai.agreement agreement.bootstrap.n_resamples=5000

Per criterion (the primary table): Spearman ρ, Pearson r, Kendall τ-b (judge vs mean human), Krippendorff's α
(ordinal) among humans and with the judge as one more rater, quadratic-weighted κ (rounded judge vs human
median), and the human ceiling like for like (each held-out rater vs the others' mean, beside the judge vs that
same mean). Nothing is pooled over criteria (their means differ, which would pass for agreement): across
criteria only `macro` (mean of the per-criterion coefficients) and `response_level` (each response's mean over
criteria). `system_level`: Kendall τ between judge and human system means, and the judge − human gap per
system, flagged where its CI excludes 0. Every CI is a seeded cluster bootstrap over responses (within systems
for the system level). The alt-test per criterion; the largest judge−human gaps with texts. <3 items or
constant scores → NaN with a reason.
With 2+ judges a "jury" (their mean score) is scored too. Output: reports/judge/agreement.json (DVC
metrics) + tables and plots in reports/judge/agreement/.

Provenance: only the judges the config names are read (never whatever else sits in artifacts/judge/), and a
judge whose metrics file records another data version than the current data's is refused with an error (its
scores belong to other responses or ratings); one that records none (written before judges recorded it) is
used with a warning. `n` counts only responses with both a judge score and human ratings: a failed judge
reply (NaN) is no item, and every CI resamples those responses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.agreement.response_points import response_points
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import read_metrics, write_metrics
from emplifai.core.paths import read_artifact, resolve, save_figure, write_plot_data
from emplifai.judge.summary import heatmap, write_csv
from emplifai.metrics import alt_test, systems, tables

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__package__)

# The config it reads = its MLflow params (dvc.yaml params but paths): judge.name and data.raw_dir pick the
# judge and the data version its scores must come from.
CONFIG = ("agreement", "judge.name", "data.raw_dir")


def judge_names(cfg: DictConfig) -> list[str]:
    """`agreement.judges`, else the configured judge (`judge.name`): never a listing of artifacts/judge/."""
    return [str(n) for n in dict.fromkeys(cfg.agreement.get("judges") or [cfg.judge.name])]


def check_data_version(cfg: DictConfig, name: str, current: str) -> None:
    """Refuse a judge that scored another data version (its metrics file's `data_version` tag)."""
    path = resolve(cfg.paths.reports) / "judge" / name / "metrics.json"
    recorded = read_metrics(path).tags.get("data_version")
    if recorded is None:
        log.warning(f"agreement: judge {name}: {path} records no data version (written before judges recorded "
                    f"it): its scores are used unchecked against data version {current}")
    elif not tracking.same_data(recorded, current):
        raise UserError(f"judge {name!r} scored data version {recorded} ({path}), but {cfg.data.raw_dir} is data "
                        f"version {current}: rerun that judge on this data (`dvc repro judge`, or python -m "
                        f"emplifai.judge judge.name={name} ...) before comparing it with these human ratings")


def load_judges(cfg: DictConfig, current: str) -> dict[str, pd.DataFrame]:
    """The configured judges' scores, each checked to be of data version `current`."""
    root = resolve(cfg.paths.artifacts) / "judge"
    judges = {}
    for name in judge_names(cfg):
        path = root / name / "scores.parquet"
        if not path.exists():
            raise UserError(f"no judge scores for {name!r}: {path} does not exist (run `python -m emplifai.judge "
                            f"judge.name={name}` first, or name the judges in agreement.judges)")
        check_data_version(cfg, name, current)
        judges[name] = pd.read_parquet(path)
    if cfg.agreement.get("jury") and len(judges) > 1:
        pooled = pd.concat(judges.values(), ignore_index=True)
        jury = pooled.groupby(["response_id", "system", "criterion"], as_index=False)["score"].mean()
        judges["jury"] = jury
    return judges


def texts(cfg: DictConfig) -> pd.DataFrame:
    prep = resolve(cfg.paths.artifacts) / "prepare"
    rated = pd.read_parquet(prep / "rated_responses.parquet")
    dia = pd.concat([pd.read_parquet(prep / f"{s}.parquet") for s in ("train", "val", "test")])
    return rated.merge(dia[["dialogue_id", "patient"]], on="dialogue_id", how="left")[
        ["response_id", "patient", "response"]]


def scatter(merged: pd.DataFrame, criteria: list[str], title: str, path: Path) -> Path:
    cols = min(4, len(criteria))
    rows = math.ceil(len(criteria) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    systems = sorted(merged["system"].unique())
    for ax, crit in zip(axes.flat, criteria, strict=False):
        f = merged[merged["criterion"] == crit]
        for i, system in enumerate(systems):
            s = f[f["system"] == system]
            ax.scatter(s["human_mean"], s["judge"], s=14, alpha=0.75, color=plt.cm.tab10(i), label=system)
        ax.plot([1, 5], [1, 5], color="grey", lw=0.8, ls="--")
        ax.set(title=crit, xlabel="human mean", ylabel="judge", xlim=(0.8, 5.2), ylim=(0.8, 5.2))
    for ax in list(axes.flat)[len(criteria):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def gap_plot(ranks: pd.DataFrame, title: str, path: Path) -> Path:
    """Judge − human mean per system with its CI; red where the CI excludes 0 (the judge shifts that system)."""
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(ranks) + 1.2))
    for y, row in enumerate(ranks.to_dict(orient="records")):
        err = [[max(row["gap"] - row["gap_ci_low"], 0)], [max(row["gap_ci_high"] - row["gap"], 0)]]
        ax.errorbar([row["gap"]], [y], xerr=None if math.isnan(row["gap_ci_low"]) else err, fmt="o", capsize=3,
                    color="tab:red" if row["flagged"] == 1 else "tab:blue")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set(yticks=list(range(len(ranks))), yticklabels=ranks["system"], xlabel="judge − human mean (95% CI)",
           title=title)
    return save_figure(fig, path, dpi=100)


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "agreement")
    with tracking.stage_run(cfg, "agreement", config=CONFIG) as run_:  # spans the work: a crash ends it FAILED
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    a = cfg.agreement
    for table in ("human_ratings", "rated_responses"):
        run_.log_split(table, resolve(cfg.paths.artifacts) / "prepare" / f"{table}.parquet")
    ratings = read_artifact(resolve(cfg.paths.artifacts) / "prepare" / "human_ratings.parquet",
                         hint="agreement needs human ratings (human_ratings.* in data/)")
    version = tracking.data_version(cfg.data.raw_dir)
    judges = load_judges(cfg, version)
    boot = OmegaConf.to_container(a.bootstrap, resolve=True)
    if int(boot["n_resamples"]) < 1000:
        log.warning(f"agreement: note: bootstrap.n_resamples={boot['n_resamples']} (< 1000: CIs are rough)")
    out = resolve(cfg.paths.reports) / "judge" / "agreement"
    primary = str(a.get("primary") or "")
    primary = primary if primary in judges else next(iter(judges))
    metrics: dict[str, float] = {}
    reasons: dict[str, str] = {}
    files: list[Path] = []
    text = texts(cfg)
    safe = tracking.metric_names(judges)  # unique metric path components, 日本語 names kept
    for name, scores in judges.items():
        criteria = [c for c in dict.fromkeys(scores["criterion"]) if c in set(ratings["criterion"])]
        merged = tables.merge(scores, ratings)
        table, why, ceil = tables.coefficient_table(merged, criteria, 1, 5, boot)
        ranks, sys_metrics, sys_why = systems.system_level(tables.Cube.from_merged(merged, criteria), boot)
        prefix = "agreement" if name == primary else f"agreement/{safe[name]}"
        for row in table.to_dict(orient="records"):
            for stat, value in row.items():
                if stat == "criterion" or (pd.isna(value) and f"{row['criterion']}/{stat}" not in why):
                    continue  # not defined for this row (qwk, α at response level): no metric, not a NaN
                key = f"{prefix}/{row['criterion']}/{stat}"
                metrics[key] = value
                if f"{row['criterion']}/{stat}" in why:
                    reasons[key] = why[f"{row['criterion']}/{stat}"]
        for stat, value in sys_metrics.items():
            metrics[f"{prefix}/system_level/{stat}"] = value
            if stat in sys_why:
                reasons[f"{prefix}/system_level/{stat}"] = sys_why[stat]
        d = out / name
        alt = alt_test.alt_test(merged, criteria, **dict(a.get("alt_test") or {}))  # may the judge replace a rater?
        files.append(write_csv(alt, d / "alt_test.csv"))
        alt_metrics, alt_reasons = alt_test.as_metrics(alt, prefix)
        metrics.update(alt_metrics)
        reasons.update(alt_reasons)
        system = tables.per_system(merged, 1, 5)
        files += [write_csv(table, d / "coefficients.csv"), write_csv(ceil, d / "human_ceiling.csv"),
                  write_csv(system, d / "per_system.csv"), write_csv(ranks, d / "system_level.csv"),
                  write_csv(tables.disagreements(merged, text, int(a.disagreements)), d / "disagreements.csv")]
        if len(merged):
            files.append(scatter(merged, criteria, f"judge {name} vs human mean", d / "scatter.png"))
            files.append(write_plot_data(response_points(merged, criteria), d / "scatter.csv"))  # DVC's scatter
            heat = system.pivot(index="system", columns="criterion", values="spearman").reindex(columns=criteria)
            files.append(heatmap(heat, f"judge {name}: Spearman ρ per system", d / "spearman_per_system.png",
                                 -1, 1, "coolwarm"))
            files.append(gap_plot(ranks, f"judge {name}: judge − human mean per system", d / "system_gaps.png"))
        rows = table.set_index("criterion").reindex(columns=["spearman", "spearman_ci_low", "spearman_ci_high"])
        levels = "; ".join(f"{lvl} {r.iloc[0]:.3f} [{r.iloc[1]:.3f}, {r.iloc[2]:.3f}]"
                           for lvl, r in rows.loc[[tables.MACRO, tables.RESPONSE_LEVEL]].iterrows())
        unscored = scores[scores["score"].isna() & scores["response_id"].isin(ratings["response_id"])]
        log.info(f"agreement {name}: {merged['response_id'].nunique()} responses with a judge score and human "
                 f"ratings ({len(unscored)} rated (response, criterion) pairs without a judge score left out); "
                 f"spearman {levels}; system-level kendall {sys_metrics['kendall']:.3f}")
    tags = {"judges": ",".join(judges), "primary_judge": primary, "data_version": version}
    files.append(write_metrics(resolve(cfg.paths.reports) / "judge" / "agreement.json", metrics, reasons,
                               tags | run_.file_tags()))
    run_.set_tags(tags)
    run_.log_metrics(metrics, reasons=reasons)
    for path in files:
        run_.log_artifact(path, "agreement" + ("/" + path.parent.name if path.parent != out.parent else ""))
    return metrics


if __name__ == "__main__":
    stage_main("agreement", run)
