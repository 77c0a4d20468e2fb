"""Stage `report`: every result of the pipeline in one readable page, with the MLflow run ids behind it.

    python -m emplifai.report          # reports/summary.md and reports/summary.html (plots inline)

It only reads what the other stages wrote under reports/ (its DVC deps), plus MLflow for run ids, so
it is regenerated exactly when one of those inputs changes.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight, tracking
from emplifai.errors import reported
from emplifai.paths import resolve, write_text
from emplifai.sft.runs import sweep_run_names

Block = tuple[str, Any]  # ("h2"|"h3"|"p", str) | ("table", DataFrame) | ("img", Path)
STAGES = ("prepare", "models", "emotion", "train", "generate", "judge", "agreement")


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        out.update(flat(value, f"{name}/") if isinstance(value, dict) else {name: value})
    return out


def metric_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """metric | value | 95% CI, folding `<m>_ci_low`/`<m>_ci_high` siblings into their metric's row."""
    rows = []
    for key, value in metrics.items():
        if key.endswith(("_ci_low", "_ci_high")) or isinstance(value, list | str) and key.endswith("missing"):
            continue
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        ci = f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None or hi is not None else ""
        rows.append({"metric": key, "value": fmt(value), "95% CI": ci})
    return pd.DataFrame(rows)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def dataset_section(reports: Path) -> list[Block]:
    stats = read_json(reports / "data" / "stats.json")
    if not stats:
        return [("p", "No dataset statistics (run `prepare`).")]
    splits = pd.DataFrame({k: stats[k] for k in ("dialogues", "situations", "emotions_present")}).T
    blocks: list[Block] = [("table", splits.reset_index(names="count")),
                           ("p", f"Rejected rows: {stats.get('rejected_rows', 0)}; rated responses: "
                                 f"{stats.get('rated_responses', 0)}; ratings: {stats.get('human_ratings', {})}")]
    return blocks + [("img", reports / "data" / "emotion_distribution.png")]


def emotion_section(reports: Path) -> list[Block]:
    """Scores raw and rescaled, the vector source and the label-separation figures (predict/summary.py)."""
    from emplifai.predict.summary import emotion_section as section

    return section(reports, fmt)


def folder_sections(base: Path, title: str, tables: tuple[str, ...], images: tuple[str, ...],
                    names: list[str] | None = None) -> list[Block]:
    """One sub-section per folder under reports/<stage>/ (one per adapter, judge, ...): the named ones only
    where a stage has several runs, so a stale folder that is no DVC dep never reaches the report."""
    if names is not None:
        folders = [base / n for n in names if (base / n / "metrics.json").exists()]
    else:
        folders = sorted({p.parent for pattern in ("*/metrics.json", "metrics.json") for p in base.glob(pattern)})
    if not folders:
        return [("p", f"No {title} results.")]
    blocks: list[Block] = []
    for folder in folders:
        if folder != base:
            blocks.append(("h3", f"{title}: {folder.name}"))
        metrics = flat(read_json(folder / "metrics.json"))
        if metrics:
            blocks.append(("table", metric_table(metrics)))
        for name in tables:
            if (folder / name).exists():
                blocks += [("p", name), ("table", pd.read_csv(folder / name).head(12))]
        blocks += [("img", folder / name) for name in images if (folder / name).exists()]
    return blocks


def epoch_section(cfg: DictConfig, reports: Path) -> list[Block]:
    """The study's 1–3 epoch design: val loss per epoch and judge score per epoch, base and human beside."""
    from emplifai import epochs

    boot = OmegaConf.to_container(cfg.agreement.bootstrap, resolve=True)
    return epochs.section(resolve(cfg.paths.artifacts), reports, boot, sweep_run_names(cfg), [str(cfg.judge.name)])


def runs_section(cfg: DictConfig, version: str) -> list[Block]:
    rows = [{"stage": s, "run": r["run_name"], "run_id": r["run_id"]}
            for s in STAGES for r in tracking.find_runs(cfg, s, version, limit=20)[:6]]
    return [("table", pd.DataFrame(rows))] if rows else [("p", "MLflow has no runs for this data version.")]


def to_markdown(blocks: list[Block], root: Path) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "table":
            out.append(value.to_markdown(index=False) + "\n" if len(value) else "(empty)\n")
        elif kind == "img" and Path(value).exists():
            out.append(f"![{Path(value).stem}]({Path(value).relative_to(root).as_posix()})\n")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "table":
            body.append(value.to_html(index=False, border=0, classes="t") if len(value) else "<p>(empty)</p>")
        elif kind == "img" and Path(value).exists():
            data = base64.b64encode(Path(value).read_bytes()).decode()
            body.append(f'<img alt="{Path(value).stem}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table.t{border-collapse:collapse;margin:.5em 0}.t td,.t th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html lang='en'><meta charset='utf-8'><title>emplifai summary</title>"
            f"<style>{style}</style><body>{''.join(body)}</body></html>")


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "report")
    reports = resolve(cfg.paths.reports)
    version = tracking.data_version(cfg.data.raw_dir)
    blocks: list[Block] = [
        ("h1", "emplifai summary"),
        ("p", f"Data version {version}. Every number below comes from the files under reports/ and the "
              "MLflow runs listed at the end."),
        ("h2", "Dataset"), *dataset_section(reports),
        ("h2", "Emotion prediction (reverse engineering)"), *emotion_section(reports),
        ("h2", "SFT adapters"), *folder_sections(reports / "train", "adapter", (), ("loss.png",),
                                                 sweep_run_names(cfg)),
        ("h2", "Generated responses"), *folder_sections(reports / "generate", "generate", (), ()),
        ("h2", "LLM-as-a-judge"), *judge_section(reports, str(cfg.judge.name)),
        ("h2", "Epoch comparison"), *epoch_section(cfg, reports),
        ("h2", "Judge–human agreement"), *agreement_section(reports),
        ("h2", "MLflow runs behind these numbers"), *runs_section(cfg, version),
    ]
    write_text(reports / "summary.md", to_markdown(blocks, reports))
    write_text(reports / "summary.html", to_html(blocks))
    with tracking.stage_run(cfg, "report") as run_:
        run_.log_artifact(reports / "summary.md", "report")
        run_.log_artifact(reports / "summary.html", "report")
        if (reports / "epochs").is_dir():
            run_.log_artifact(reports / "epochs", "report/epochs")
    print(f"report: {reports / 'summary.md'} and {reports / 'summary.html'}")
    return {"report/sections": float(sum(1 for k, _ in blocks if k == "h2"))}


def _cell(metrics: dict[str, Any], key: str) -> str:
    """value [CI]; "—" where the statistic is not defined at that level (absent), "missing" where it failed."""
    if key not in metrics:
        return "—"
    lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if f"{key}_ci_low" in metrics else ""
    return fmt(metrics[key]) + ci


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
    path = reports / "judge" / "agreement.json"
    if not path.exists():
        return [("p", "No agreement results (no human ratings, or `agreement` has not run).")]
    data = read_json(path)
    metrics, primary = data.get("metrics", {}), data.get("primary", "")
    folder = reports / "judge" / "agreement" / primary
    levels = ("macro", "response_level", "system_level")
    stats = ("spearman", "pearson", "kendall", "qwk", "alpha_humans", "alpha_with_judge", "ceiling_spearman",
             "judge_vs_others_spearman")
    criteria = [k.split("/")[1] for k in metrics
                if k.count("/") == 2 and k.endswith("/spearman") and k.split("/")[1] not in levels]
    alt = alt_verdicts(folder / "alt_test.csv")
    rows = [{"criterion": c, "n": fmt(metrics.get(f"agreement/{c}/n")),
             **{s: _cell(metrics, f"agreement/{c}/{s}") for s in stats},
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
                                 **{s: _cell(metrics, f"agreement/{lvl}/{s}") for s in stats}}
                                for lvl in levels[:2]])),
        ("h3", "System level"),
        ("p", "Do judge and humans rank the systems the same way? Kendall τ over system means: "
              f"{_cell(metrics, 'agreement/system_level/kendall')} "
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
    missing = data.get("missing", {})
    if missing:
        blocks += [("p", "Missing values and why"),
                   ("table", pd.DataFrame([{"metric": k, "missing because": v} for k, v in missing.items()]))]
    if (folder / "disagreements.csv").exists():
        blocks += [("h3", "Where the judge disagrees most with humans"),
                   ("table", pd.read_csv(folder / "disagreements.csv").head(10))]
    return blocks + [("img", p) for p in sorted(folder.glob("*.png"))]


def judge_section(reports: Path, judge: str) -> list[Block]:
    """The configured judge: criterion × system mean with a t-interval 95% CI over responses, then length bias."""
    from scipy import stats

    blocks: list[Block] = []
    for summary in [p for p in [reports / "judge" / judge / "summary.csv"] if p.exists()]:
        frame = pd.read_csv(summary)
        half = frame.apply(lambda r: stats.t.ppf(0.975, r["n"] - 1) * r["std"] / math.sqrt(r["n"])
                           if r["n"] > 1 else float("nan"), axis=1)
        frame["cell"] = [f"{m:.2f} [{m - h:.2f}, {m + h:.2f}]" for m, h in zip(frame["mean"], half, strict=True)]
        table = frame.pivot(index="criterion", columns="system", values="cell").reset_index()
        blocks += [("h3", f"judge: {summary.parent.name} — mean score (95% CI) per criterion and system"),
                   ("table", table)]
        if (summary.parent / "length_bias.csv").exists():
            blocks += [("p", "Length bias: Spearman of score vs response length"),
                       ("table", pd.read_csv(summary.parent / "length_bias.csv").head(12))]
        blocks.append(("img", summary.parent / "scores_heatmap.png"))
    return blocks or [("p", "No judge results.")]


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
@reported
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    main()
