"""Predictors: a test split in, one `Prediction` per dialogue out. Chosen by `predictor.type`
(default: `predictor.name`) from `REGISTRY`, or any `package.module:function` with the same signature.

Free-text answers (hf_generate, openai) keep their raw text; the cleaned text is what gets scored, and
the label is the exact taxonomy match or, with `mapping: nearest`, the name with the highest BERTScore.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from emplifai.core.errors import UserError
from emplifai.data.taxonomy import Taxonomy
from emplifai.emotion.prompt import Answer, EmotionPrompt, clean_answer

REGISTRY = {
    "fasttext_clf": "emplifai.emotion.predictors:fasttext_clf",
    "hf_generate": "emplifai.emotion.hf:hf_generate",
    "hf_rank": "emplifai.emotion.hf:hf_rank",
    "openai": "emplifai.emotion.predictors:openai",
}


@dataclass
class Prediction:
    raw: str | None          # what the predictor produced (None: nothing, e.g. an API error)
    text: str                # the text that is scored against the gold name ("" when invalid)
    label: str = ""          # taxonomy key, "" when not mapped
    method: str = ""         # classifier | rank | exact | nearest | unmapped | invalid
    reason: str = ""         # why the prediction is invalid ("" when valid)
    confidence: float = float("nan")

    @property
    def valid(self) -> bool:
        return not self.reason


@dataclass
class Context:
    cfg: DictConfig                      # full config; cfg.predictor is this predictor's
    taxonomy: Taxonomy
    train: pd.DataFrame
    val: pd.DataFrame
    scorer: Callable[[], Any]            # lazily built BertScorer (shared across predictors)
    device: str
    seed: int
    cache_dir: Path                      # artifacts/emotion/<predictor>
    metrics: dict[str, float] = field(default_factory=dict)  # extra metrics a predictor reports

    @property
    def pcfg(self) -> DictConfig:
        return self.cfg.predictor


PredictFn = Callable[[Context, pd.DataFrame], list[Prediction]]


def resolve_predictor(pcfg: DictConfig) -> PredictFn:
    kind = str(pcfg.get("type") or pcfg.get("name"))
    target = REGISTRY.get(kind, kind)
    if ":" not in target:
        raise UserError(f"predictor {kind!r} unknown: use one of {sorted(REGISTRY)} or `module:function`")
    module, _, fn = target.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as err:
        raise UserError(f"predictor {kind!r}: cannot import {target} ({err})") from err


def dialogue_text(frame: pd.DataFrame, fields: list[str]) -> list[str]:
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise UserError(f"predictor.text_fields: columns {missing} not in the prepared split")
    return frame[fields].fillna("").astype(str).agg("\n".join, axis=1).tolist()


def interpret(answers: list[Answer], ctx: Context) -> list[Prediction]:
    """Cleaned answers → predictions: exact taxonomy match, else nearest name by BERTScore (if enabled)."""
    out: list[Prediction] = []
    nearest_idx = []
    for a in answers:
        if not a.valid:
            out.append(Prediction(a.raw, "", "", "invalid", a.reason))
            continue
        key = ctx.taxonomy.lookup(a.text)
        out.append(Prediction(a.raw, a.text, key or "", "exact" if key else "unmapped"))
        if not key:
            nearest_idx.append(len(out) - 1)
    if nearest_idx and str(ctx.pcfg.get("mapping", "nearest")) == "nearest":
        names = ctx.taxonomy.ja_names
        best = ctx.scorer().nearest([out[i].text for i in nearest_idx], names)
        for i, (j, f1) in zip(nearest_idx, best, strict=True):
            out[i].label, out[i].method, out[i].confidence = ctx.taxonomy.keys[j], "nearest", f1
    return out


def answer_cleaner(pcfg: DictConfig) -> Callable[[str | None], Answer]:
    refusal = re.compile("|".join(pcfg.get("refusal_patterns") or ["(?!x)x"]), re.IGNORECASE)
    max_chars = int(pcfg.get("max_answer_chars", 40))
    return lambda raw: clean_answer(raw, refusal, max_chars)


def fasttext_clf(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Supervised fastText on the train split; train/val accuracy reported (`emotion/train_accuracy`, ...)."""
    from emplifai.emotion.fasttext_model import train_classifier

    fields = list(ctx.pcfg.text_fields)
    clf = train_classifier(dialogue_text(ctx.train, fields), ctx.train["emotion"].tolist(), ctx.pcfg,
                           ctx.seed, ctx.cache_dir)
    fit = [k for k, _ in clf.predict(dialogue_text(ctx.train, fields))]  # exposes a model that did not learn
    ctx.metrics["emotion/train_accuracy"] = float((pd.Series(fit) == ctx.train["emotion"].values).mean())
    if len(ctx.val):
        val_pred = [k for k, _ in clf.predict(dialogue_text(ctx.val, fields))]
        ctx.metrics["emotion/val_accuracy"] = float((pd.Series(val_pred) == ctx.val["emotion"].values).mean())
    out = []
    for key, prob in clf.predict(dialogue_text(test, fields)):
        if key not in ctx.taxonomy.keys:  # a label the taxonomy no longer has: invalid, not a crash
            out.append(Prediction(key, "", "", "invalid", f"label {key!r} not in the taxonomy", prob))
        else:
            out.append(Prediction(key, ctx.taxonomy.ja(key), key, "classifier", "", prob))
    return out


def openai(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Any OpenAI-compatible chat endpoint through the shared cached client; failed requests → invalid
    (more than `max_failure_rate` of them: the stage stops); `emotion/truncated` counts max_tokens cut-offs."""
    from emplifai.llm.cache import namespace
    from emplifai.llm.openai_compat import ChatRequest, OpenAICompatClient

    pcfg = ctx.pcfg
    build = EmotionPrompt.from_config(ctx.cfg, ctx.taxonomy, ctx.train, ctx.seed)
    from emplifai.core.paths import resolve

    cache = resolve(pcfg.cache) if pcfg.get("cache") else None
    decoding = {"temperature": float(pcfg.temperature), "max_tokens": int(pcfg.max_tokens), "seed": pcfg.get("seed"),
                "stop": ["\n"]}
    space = namespace(f"emotion/{pcfg.name}", str(pcfg.base_url), str(pcfg.model), build.fingerprint, decoding)
    client = OpenAICompatClient.from_config(pcfg, cache_path=cache, namespace=space)
    requests = []
    for _, row in test.iterrows():
        requests.append(ChatRequest(messages=build.messages(row), **decoding))
    results = client.chat_many(requests)
    client.check_failures(results)  # over max_failure_rate: UserError before anything is written
    clean = answer_cleaner(pcfg)
    answers = [Answer(None, "", f"API error: {r.error}") if r.error else clean(r.text) for r in results]
    ctx.metrics["emotion/api_errors"] = float(sum(bool(r.error) for r in results))
    ctx.metrics["emotion/truncated"] = float(sum((r.finish_reasons or [None])[0] == "length" for r in results))
    ctx.metrics["emotion/cache_hits"] = float(sum(bool(r.cached) for r in results))
    return interpret(answers, ctx)
