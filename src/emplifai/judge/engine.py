"""Judge backends behind one interface: `grade(items) -> list[Grade]`, one Grade per (item, criterion).

Caching: every backend writes to one persistent sqlite file (emplifai.llm.cache.ResponseCache). The
namespace holds backend, model id + weights hash (hf_local) or server URL (openai), the rubric+prompt hash
and decoding params, so a rerun makes zero model calls, another judge never sees these grades, and a run
killed halfway resumes: hf_local commits after each response, the openai client after each reply.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from emplifai.judge.parse import Sample, score_reply
from emplifai.judge.rubric import JudgeItem, JudgePrompt
from emplifai.llm.cache import ResponseCache, cache_key, namespace


@dataclass
class Grade:
    item_id: str
    criterion: str
    score: float  # weighted score (hf_local; openai with logprobs) or mean of parsed samples; NaN = failure
    score_argmax: float  # most likely / parsed integer score; NaN = failure
    score_std: float  # spread over n samples (openai n>1), else NaN
    raw: str  # the reply (or the digit probabilities) kept for inspection
    parse_ok: bool
    detail: str  # "json[; …]" | "regex" | "probs" | "failed: <why>" | "truncated: <why>" | "error: <why>"
    digit_mass: float  # hf_local: p(digits) before renormalizing; openai logprobs: same; else NaN
    cached: bool


def model_fingerprint(model_dir: Path) -> str:
    """Weights identity by content: config.json and every weight file hashed (sizes alone would let a
    re-quantised model of the same shape hit the old model's cache). ~1 s per GB, only for a real model load."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


class HFLocalJudge:
    """G-Eval with a local causal LM; the model is loaded only if something is not cached yet."""

    def __init__(self, jcfg: DictConfig, model_cfg: Mapping[str, Any], builder: JudgePrompt,
                 cache: ResponseCache | None, device: str = "cpu", shared: bool = True) -> None:
        from emplifai.lm import model_dir

        self.jcfg, self.model_cfg, self.builder, self.cache, self.device = jcfg, model_cfg, builder, cache, device
        self.shared = shared
        weights = model_fingerprint(model_dir(model_cfg))
        self.model_id = f"{model_cfg['name']}@{weights}"
        self.chat_format = str(model_cfg.get("chat_format", "plain"))
        self.namespace = namespace("judge/hf_local", weights, str(model_cfg["name"]), builder.fingerprint,
                                   {"shared": shared, "chat_format": self.chat_format,
                                    "max_length": model_cfg.get("max_length")},
                                   str(model_cfg.get("compute_dtype", "float32")), str(device))
        self.scorer = None
        self.fmt = None
        self.budget = None  # model.max_length, once the model is loaded
        self.stats = {"model_calls": 0, "cache_hits": 0, "forwards": 0}

    def _load(self):
        if self.scorer is None:
            from emplifai.judge.scorer import DigitScorer
            from emplifai.lm import load_causal_lm
            from emplifai.lm.budget import PromptBudget
            from emplifai.lm.chat import ChatFormat

            model, tok = load_causal_lm(self.model_cfg, self.device)
            self.fmt = ChatFormat.of(tok, self.chat_format)
            r = self.builder.rubric
            self.budget = PromptBudget.of(self.model_cfg, model)
            self.scorer = DigitScorer(model, tok, r.lo, r.hi, self.device, self.fmt.add_special_tokens,
                                      self.budget)
        return self.scorer

    def grade(self, items: list[JudgeItem]) -> list[Grade]:
        out: list[Grade] = []
        rubric = self.builder.rubric
        for item in tqdm(items, desc=f"judge {self.jcfg.name}", unit="response"):
            keys = {c.key: cache_key(self.namespace, self.model_id,
                                     {"prompt": self.builder.full_prompt(item, c), "scale": [rubric.lo, rubric.hi]})
                    for c in rubric.criteria}
            hits = {k: self.cache.get(v) for k, v in keys.items()} if self.cache else {}
            todo = [c for c in rubric.criteria if hits.get(c.key) is None]
            fresh: dict[str, dict] = {}
            if todo:
                scorer = self._load()
                before = scorer.forwards
                scores = scorer.score(*self.builder.local_parts(item, todo, self.fmt), shared=self.shared)
                self.stats["forwards"] += scorer.forwards - before
                self.stats["model_calls"] += len(todo)
                for c, s in zip(todo, scores, strict=True):
                    fresh[c.key] = {"score": s.score, "argmax": s.argmax, "raw": s.raw, "mass": s.mass}
                    if self.cache and math.isfinite(s.score):
                        self.cache.put(keys[c.key], fresh[c.key], namespace=self.namespace, model=self.model_id)
            for c in rubric.criteria:
                v, cached = (hits[c.key], True) if hits.get(c.key) is not None else (fresh[c.key], False)
                self.stats["cache_hits"] += int(cached)
                ok = v["score"] is not None and math.isfinite(v["score"])
                out.append(Grade(item.item_id, c.key, v["score"] if ok else math.nan,
                                 float(v["argmax"]) if v["argmax"] is not None else math.nan, math.nan, v["raw"],
                                 ok, "probs" if ok else "failed: no probability on any digit", v["mass"], cached))
        return out


class OpenAIJudge:
    """Any OpenAI-compatible server through the shared client (bounded concurrency, retries, cache)."""

    def __init__(self, jcfg: DictConfig, builder: JudgePrompt, cache_path: Path | None) -> None:
        from emplifai.llm import OpenAICompatClient

        self.jcfg, self.builder = jcfg, builder
        decoding = {k: jcfg.get(k) for k in ("temperature", "seed", "max_tokens", "n", "json_mode", "logprobs",
                                             "top_logprobs")}
        self.namespace = namespace("judge/openai", str(jcfg.base_url), str(jcfg.model), builder.fingerprint,
                                   decoding)
        cfg = OmegaConf.to_container(jcfg, resolve=True)
        self.client = OpenAICompatClient.from_config(cfg, cache_path=cache_path, namespace=self.namespace)
        self.stats = self.client.stats

    def _request(self, item: JudgeItem, criterion):
        from emplifai.llm import ChatRequest

        j = self.jcfg
        return ChatRequest(self.builder.chat_messages(item, criterion), temperature=float(j.temperature),
                           max_tokens=int(j.max_tokens), seed=j.get("seed"), logprobs=bool(j.logprobs),
                           top_logprobs=int(j.top_logprobs) if j.logprobs else None,
                           response_format={"type": "json_object"} if j.json_mode else None, n=int(j.n))

    def grade(self, items: list[JudgeItem]) -> list[Grade]:
        """One Grade per (item, criterion). Raises UserError (nothing written) when more requests failed
        after retries than `max_failure_rate` allows; the answers received are cached for the rerun."""
        rubric = self.builder.rubric
        pairs = [(it, c) for it in items for c in rubric.criteria]
        results = self.client.chat_many([self._request(it, c) for it, c in pairs], desc=f"judge {self.jcfg.name}")
        self.client.check_failures(results)
        out = []
        for (item, c), res in zip(pairs, results, strict=True):
            if res.error is not None:
                out.append(Grade(item.item_id, c.key, math.nan, math.nan, math.nan, "", False,
                                 f"error: {res.error}", math.nan, res.cached))
                continue
            samples = [score_reply(text, _nth(res.finish_reasons, k), _nth(res.tokens, k),
                                   _nth(res.top_logprobs, k), rubric.lo, rubric.hi, c.key)
                       for k, text in enumerate(res.texts)]
            raw = res.texts[0] if len(res.texts) == 1 else json.dumps(res.texts, ensure_ascii=False)
            out.append(self.combine(item.item_id, c.key, samples, raw, res.cached))
        return out

    @staticmethod
    def combine(item_id: str, criterion: str, samples: list[Sample], raw: str, cached: bool) -> Grade:
        """n samples → one Grade: the mean over the samples that parsed (truncated ones are failures), their
        spread, the median parsed score; the detail says how many of n parsed. None parsed: NaN + why."""
        n, good = len(samples), [s for s in samples if s.ok]
        cut = sum(s.truncated for s in samples)
        counts = f"; {len(good)}/{n} parsed" + (f", {cut} truncated" if cut else "") if n > 1 else ""
        if not good:
            lead = next((s for s in samples if s.truncated), samples[0])
            return Grade(item_id, criterion, math.nan, math.nan, math.nan, raw, False, lead.detail + counts,
                         math.nan, cached)
        scores = [s.score for s in good]
        masses = [s.mass for s in good if math.isfinite(s.mass)]
        return Grade(item_id, criterion, statistics.fmean(scores),
                     float(round(statistics.median(s.parsed for s in good))),
                     statistics.pstdev(scores) if len(good) > 1 else math.nan, raw, True,
                     good[0].detail + counts, statistics.fmean(masses) if masses else math.nan, cached)


def _nth(per_choice: list | None, k: int) -> Any:
    """Choice k's entry of a per-choice list the server may have left out."""
    return per_choice[k] if per_choice is not None and k < len(per_choice) else None
