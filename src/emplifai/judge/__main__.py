"""Stage `judge`: LLM-as-a-judge on the rubric's criteria (default: the seven EmplifAI criteria, 1–5).

    python -m emplifai.judge                                   # hf_local, Gemma-3-270M, G-Eval weighted scores
    python -m emplifai.judge judge.model=smollm2-135m          # another conf/model/*.yaml as local judge
    python -m emplifai.judge judge=openai judge.base_url=http://127.0.0.1:8000/v1 judge.model=NAME
    python -m emplifai.judge -m judge=hf_local,openai          # several judges; the agreement stage adds a jury
    python -m emplifai.judge judge.stratified_n=40             # a seeded sample stratified by source (quick runs)

Scores: human supporter turns of the test split (system "human"), every system of the generate stage's
output (when it exists) and all rated responses. Output: ${paths.artifacts}/judge/<judge.name>/scores.parquet
(long: one row per response × criterion; unparseable → score NaN, raw kept, parse_ok false) and
reports/judge/<judge.name>/ (summary, length-bias table, heatmap, metrics.json).
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import write_metrics
from emplifai.core.paths import atomic_path, resolve
from emplifai.data.taxonomy import Taxonomy
from emplifai.judge import items as items_mod
from emplifai.judge.responses import log_response_table
from emplifai.judge.rubric import JudgePrompt, Rubric
from emplifai.judge.summary import JUDGE_COLUMNS, heatmap, length_bias, summary, write_csv, write_means

log = logging.getLogger(__package__)

# The config it reads = its MLflow params (dvc.yaml params but paths, conf_dir).
CONFIG = ("seed", "device", "threads", "taxonomy", "model", "judge", "data.raw_dir")


def judge_model_cfg(cfg: DictConfig) -> dict:
    """hf_local's `judge.model`: the root `model` config if it has that name (so `model.<key>=…` overrides
    reach the judge too), else the `model` group option of that name, composed by Hydra from conf/."""
    from emplifai.core.config import option_values

    name = str(cfg.judge.model)
    if name == cfg.model.get("name"):
        return OmegaConf.to_container(cfg.model, resolve=True)
    return option_values(cfg, "model", name)


def make_backend(cfg: DictConfig, builder: JudgePrompt):
    from emplifai.judge.engine import HFLocalJudge, OpenAIJudge

    j = cfg.judge
    cache_path = resolve(j.cache) if j.get("cache") else None
    if j.backend == "hf_local":
        from emplifai.llm.cache import ResponseCache
        from emplifai.lm import setup_torch

        device = setup_torch(cfg)
        if j.get("threads"):
            import torch

            torch.set_num_threads(int(j.threads))
        return HFLocalJudge(j, judge_model_cfg(cfg), builder, ResponseCache(cache_path) if cache_path else None,
                            device, shared=bool(j.get("batch_criteria", True)))
    if j.backend == "openai":
        return OpenAIJudge(j, builder, cache_path)
    raise UserError(f"judge.backend must be hf_local or openai, got {j.backend!r}")


def build_frame(items: list, grades: list, judge_name: str) -> pd.DataFrame:
    by_id = {it.item_id: it for it in items}
    rows = []
    for g in grades:
        it = by_id[g.item_id]
        rows.append({"response_id": g.item_id, "dialogue_id": it.dialogue_id, "system": it.system,
                     "source": it.source, "criterion": g.criterion, "score": g.score, "score_argmax": g.score_argmax,
                     "score_std": g.score_std, "raw": g.raw, "parse_ok": g.parse_ok, "detail": g.detail,
                     "digit_mass": g.digit_mass, "judge": judge_name, "response_chars": len(it.response)})
    return pd.DataFrame(rows, columns=JUDGE_COLUMNS)


def metrics_of(scores: pd.DataFrame, rubric: Rubric) -> tuple[dict, dict]:
    """Means per system × criterion and failure accounting. `parse_failure_rate`: any grade without a score;
    the counts split it by cause (detail prefix): `api_errors` (request failed after retries), `truncated`
    (cut off at max_tokens / never left <think>), `parse_failures` (complete reply, no valid score)."""
    metrics: dict[str, float] = {}
    reasons: dict[str, str] = {}
    detail = scores["detail"].astype(str)
    failures = ~scores["parse_ok"]
    metrics["judge/parse_failure_rate"] = float(failures.mean()) if len(scores) else math.nan
    metrics["judge/api_errors"] = int(detail.str.startswith("error:").sum())
    metrics["judge/truncated"] = int((failures & detail.str.startswith("truncated")).sum())
    names = tracking.metric_names(scores["system"].unique())  # unique per system, 日本語 names kept
    for c in rubric.keys:
        f = scores[scores["criterion"] == c]
        metrics[f"judge/{c}/parse_failure_rate"] = float((~f["parse_ok"]).mean()) if len(f) else math.nan
        fd = f["detail"].astype(str)
        metrics[f"judge/{c}/parse_failures"] = int((~f["parse_ok"] & fd.str.startswith("failed:")).sum())
        metrics[f"judge/{c}/truncated"] = int((~f["parse_ok"] & fd.str.startswith("truncated")).sum())
        for system, s in f.groupby("system"):
            name = f"judge/{c}/mean_{names[system]}"
            metrics[name] = float(s["score"].mean())
            if math.isnan(metrics[name]):
                reasons[name] = "every score of this system failed to parse"
    mass = scores["digit_mass"].dropna()
    if len(mass):
        metrics["judge/digit_mass_mean"] = float(mass.mean())
    return metrics, reasons


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "judge")
    j = cfg.judge
    who = {"judge": str(j.name), "judge_backend": str(j.backend), "judge_model": str(j.model)}
    with tracking.stage_run(cfg, "judge", who, config=CONFIG) as run_:  # spans the work: a crash ends it FAILED
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    j = cfg.judge
    rubric = Rubric.from_config(j)
    builder = JudgePrompt(j.grading_prompt, rubric)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    artifacts = resolve(cfg.paths.artifacts)
    for table in ("test", "rated_responses", "human_ratings"):  # the human turns, the rated responses, ratings
        run_.log_split(table, artifacts / "prepare" / f"{table}.parquet")
    items, notes = items_mod.collect(artifacts / "prepare", artifacts / "generate" / "responses.parquet",
                                     taxonomy, list(j.sources))
    total = len(items)
    items = items_mod.limit(items, j.get("stratified_n"), int(cfg.seed))
    if len(items) < total:
        notes.append(f"judge.stratified_n={j.stratified_n}: judging {len(items)} of {total} responses (stratified)")
    for note in notes:
        log.warning(f"judge: note: {note}")
    backend = make_backend(cfg, builder)
    start = time.perf_counter()
    grades = backend.grade(items)
    seconds = time.perf_counter() - start
    scores = build_frame(items, grades, str(j.name))
    out = artifacts / "judge" / str(j.name) / "scores.parquet"
    with atomic_path(out) as tmp:
        scores.to_parquet(tmp, index=False)
    reports = resolve(cfg.paths.reports) / "judge" / str(j.name)
    summ = summary(scores)
    bias = length_bias(scores)
    files = [write_csv(summ, reports / "summary.csv"), write_csv(bias, reports / "length_bias.csv"),
             write_csv(scores[~scores["parse_ok"]], reports / "parse_failures.csv"),
             write_means(summ, rubric.keys, reports / "means.csv")]  # plot data: DVC's bars
    table = summ.pivot(index="system", columns="criterion", values="mean").reindex(columns=rubric.keys)
    files.append(heatmap(table, f"judge {j.name}: mean score per system × criterion", reports / "scores_heatmap.png",
                         rubric.lo, rubric.hi))
    btable = bias[bias["system"] != "(all)"].pivot(index="system", columns="criterion", values="spearman_length")
    files.append(heatmap(btable.reindex(columns=rubric.keys), f"judge {j.name}: Spearman(score, length)",
                         reports / "length_bias.png", -1, 1, "coolwarm"))
    metrics, reasons = metrics_of(scores, rubric)
    for row in bias[bias["system"] == "(all)"].itertuples():
        name = f"judge/{row.criterion}/length_spearman"
        metrics[name] = row.spearman_length
        if row.reason:
            reasons[name] = row.reason
    stats = dict(backend.stats)
    metrics |= {"judge/responses": len(items), "judge/seconds": round(seconds, 2),
                "judge/model_calls": stats.get("model_calls", stats.get("requests_sent", 0)),
                "judge/cache_hits": stats.get("cache_hits", 0)}
    if j.backend == "hf_local":  # model.max_length cuts (emplifai.lm.budget); known only when the model ran
        if backend.budget is None:
            cut = {"judge/truncated_prompts": math.nan, "judge/longest_prompt_tokens": math.nan}
            metrics |= cut
            reasons |= dict.fromkeys(cut, "every grade came from the cache: the model was not loaded")
        else:
            metrics |= backend.budget.metrics("judge")
            backend.budget.warn("judge")
    tags = {"judge": str(j.name), "judge_backend": str(j.backend), "judge_model": str(j.model),
            "rubric": rubric.name, "prompt_hash": builder.fingerprint, "judge_notes": " | ".join(notes) or "(none)",
            "data_version": tracking.data_version(cfg.data.raw_dir)}  # agreement/report refuse another version
    files.append(write_metrics(reports / "metrics.json", metrics, reasons, tags | run_.file_tags()))
    run_.set_tags(tags)
    run_.log_metrics(metrics, reasons=reasons)
    for path in files:
        run_.log_artifact(path, f"judge/{j.name}")
    log_response_table(run_, scores, items, artifacts / "prepare" / "human_ratings.parquet", j)
    log.info(f"judge {j.name}: {len(items)} responses × {len(rubric.keys)} criteria in {seconds:.1f}s "
          f"({metrics['judge/model_calls']} model calls, {metrics['judge/cache_hits']} cached); no score "
          f"{metrics['judge/parse_failure_rate']:.1%} ({metrics['judge/api_errors']} API errors, "
          f"{metrics['judge/truncated']} truncated) → {out}")
    return metrics


if __name__ == "__main__":
    stage_main("judge", run)
