"""Stage `generate`: base model and fine-tuned adapters answer the same test prompts, same seeded decoding.

    python -m emplifai.generate                                    # base + the train sweep's adapters (= dvc repro)
    python -m emplifai.generate 'generate.adapters=["models/sft/epochs=1","models/sft/epochs=3"]'
    python -m emplifai.generate 'generate.adapters=[sweep,"models/sft/sft_prompt=no_emotion"]'
    python -m emplifai.generate generate.include_base=false generate.do_sample=true

Adapter folders are named like Hydra overrides (`epochs=1`), and `=` only parses inside a quoted string
of a Hydra override, hence the double quotes within the single-quoted argument.

Output: ${paths.artifacts}/generate/responses.parquet (response_id, dialogue_id, system, response, n_tokens,
seconds), what the judge stage scores; per-system metrics (length vs the human supporter turns — the study
found model replies longer than crowdworkers', which biases judges —, distinct-1/2, BERTScore F1 against
the human turn) in reports/generate/metrics.json and MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import write_metrics
from emplifai.core.paths import atomic_path, resolve
from emplifai.data.taxonomy import Taxonomy
from emplifai.generate.generation import distinct_n, generate
from emplifai.lm import load_causal_lm, setup_torch
from emplifai.lm.budget import PromptBudget
from emplifai.metrics.bertscore import BertScorer
from emplifai.train.adapter import adapter_meta, load_adapter
from emplifai.train.datamodule import read_split
from emplifai.train.examples import SFTPrompt
from emplifai.train.runs import sweep_run_names

log = logging.getLogger(__package__)

COLUMNS = ["response_id", "dialogue_id", "system", "response", "n_tokens", "seconds"]
SWEEP = "sweep"  # generate.adapters entry: every adapter of the train sweep
# The config it reads = its MLflow params (dvc.yaml params but paths).
CONFIG = ("seed", "device", "threads", "taxonomy", "model", "encoder", "sft_prompt", "generate", "train.sweep",
          "train.run_name")


def adapter_dirs(cfg: DictConfig) -> list[Path]:
    """The adapter folders `generate.adapters` names, in order: `sweep` (alone, or as a list entry) expands
    to ${paths.models}/sft/<run name> of each run of train.sweep (named as train names them), any other entry
    is a folder. Resolved from the config, never by listing models/sft/, so an adapter left over from an
    older sweep or a hand run is never picked up."""
    spec = cfg.generate.get("adapters")
    entries = [spec] if isinstance(spec, str) else list(spec or [])
    dirs: list[Path] = []
    for entry in entries:
        dirs += ([resolve(cfg.paths.models) / "sft" / name for name in sweep_run_names(cfg)]
                 if str(entry) == SWEEP else [resolve(str(entry))])
    return list(dict.fromkeys(dirs))


def system_metrics(frame: pd.DataFrame, refs: pd.Series, scorer: BertScorer) -> dict[str, float | None]:
    """Metrics of one system's responses, aligned to the human supporter turns by dialogue_id."""
    human = refs.loc[frame["dialogue_id"]].tolist()
    f1 = scorer.score(frame["response"].tolist(), human)[:, 2].tolist()
    chars = frame["response"].str.len()
    human_chars = pd.Series(human).str.len()
    return {"mean_chars": float(chars.mean()), "human_mean_chars": float(human_chars.mean()),
            "length_ratio": float(chars.mean() / human_chars.mean()), "mean_new_tokens": float(frame["n_tokens"].mean()),
            "distinct_1": distinct_n(frame["response"].tolist(), 1),
            "distinct_2": distinct_n(frame["response"].tolist(), 2), "bertscore_f1": float(sum(f1) / len(f1)),
            "empty_responses": int((chars == 0).sum()), "seconds_per_response": float(frame["seconds"].mean())}


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "generate")
    with tracking.stage_run(cfg, "generate", config=CONFIG) as run_:  # spans the work: a crash ends it FAILED
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    device = setup_torch(cfg)
    g = cfg.generate
    prepare_dir = resolve(cfg.paths.artifacts) / "prepare"
    run_.log_split(str(g.split), prepare_dir / f"{g.split}.parquet")
    data = read_split(prepare_dir, str(g.split), g.get("sample_n"), int(cfg.seed))
    if data.empty:
        raise UserError(f"{prepare_dir / (str(g.split) + '.parquet')} has no rows to generate for")
    adapters = adapter_dirs(cfg)
    for a in adapters:
        adapter_meta(a)  # fail before loading the model when an adapter folder is missing
    if not adapters and not g.include_base:
        raise UserError("nothing to generate: generate.adapters is empty and generate.include_base=false")
    model, tok = load_causal_lm(cfg.model, device)
    tok.padding_side = "left"
    builder = SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok,
                                        Taxonomy.from_config(cfg.taxonomy))
    rows = data.to_dict("records")
    budget = PromptBudget.of(cfg.model, model)  # the same rows for every system: a cut prompt counts once
    frames, prompt_mismatch = [], {}
    systems: list[tuple[str, Path | None]] = [("base", None)] if g.include_base else []
    systems += [(a.name, a) for a in adapters]
    for adapter_id, path in systems:
        name = f"{cfg.model.name}+{adapter_id}+{cfg.sft_prompt.name}"
        current = model if path is None else load_adapter(model, path, str(cfg.model.name))
        if path is not None and adapter_meta(path).get("prompt") not in (None, cfg.sft_prompt.name):
            prompt_mismatch[name] = adapter_meta(path)["prompt"]
        out = generate(current, builder, rows, g, int(cfg.seed), desc=name, budget=budget)
        frame = pd.DataFrame(out).assign(dialogue_id=data["dialogue_id"].to_numpy(), system=name)
        frame["response_id"] = name + ":" + frame["dialogue_id"]
        frames.append(frame[COLUMNS])
        if path is not None:
            model = current.unload()  # back to the plain base model for the next adapter
    responses = pd.concat(frames, ignore_index=True)
    out_path = resolve(cfg.paths.artifacts) / "generate" / "responses.parquet"
    with atomic_path(out_path) as tmp:
        responses.to_parquet(tmp, index=False)
    refs = data.set_index("dialogue_id")["supporter"]
    scorer = BertScorer(cfg.encoder, device, int(cfg.generate.bertscore.batch_size))  # loaded once
    per_system = {s: system_metrics(f, refs, scorer) for s, f in responses.groupby("system", sort=False)}
    names = tracking.metric_names(per_system)  # unique per system, 日本語 names kept
    metrics = {f"generate/{names[s]}/{k}": v for s, m in per_system.items() for k, v in m.items()}
    metrics["generate/responses"] = len(responses)
    metrics |= budget.metrics("generate")
    budget.warn("generate")
    reasons = {k: "no word n-grams in the responses" for k in metrics if "distinct" in k}
    tags = {"model": cfg.model.name, "prompt": cfg.sft_prompt.name, "systems": " | ".join(per_system)}
    report = write_metrics(resolve(cfg.paths.reports) / "generate" / "metrics.json", metrics, reasons,
                           tags | run_.file_tags())
    run_.set_tags(tags)
    run_.log_metrics(metrics, reasons=reasons)
    if prompt_mismatch:
        run_.set_tags({"prompt_mismatch": json.dumps(prompt_mismatch, ensure_ascii=False)})
    run_.log_artifact(out_path, "generate")
    run_.log_artifact(report, "generate")
    for s, m in per_system.items():
        log.info(f"generate: {s}: {m['mean_chars']:.0f} chars (human {m['human_mean_chars']:.0f}), "
              f"BERTScore F1 {m['bertscore_f1']:.3f}, {m['seconds_per_response']:.1f} s/response")
    log.info(f"generate: {len(responses)} responses → {out_path}")
    return metrics


if __name__ == "__main__":
    stage_main("generate", run)
