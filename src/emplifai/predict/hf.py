"""Local causal-LM predictors (`cfg.model`, default Gemma-3-270M): free-text generation and label ranking.

`hf_rank` scores log p(label name + suffix | prompt) for every taxonomy label, reusing KV caches (see
`Ranker`); `Ranker(..., shared_cache=False)` is the one-forward-per-label reference of the benchmark.
`predictor.score`: `mean` (default) averages the label's token log-probs, so names that happen to need
more tokens are not penalized; `sum` is the plain sequence log-likelihood.
Prompts go through `emplifai.chat` (`model.chat_format`): with a chat model the label is scored right after
the assistant generation prompt and closed by the template's end-of-turn token instead of `answer_suffix`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emplifai.chat import ChatFormat
from emplifai.modelzoo import load_causal_lm
from emplifai.predict.predictors import Context, Prediction, answer_cleaner, interpret
from emplifai.predict.prompting import PromptBuilder


@functools.lru_cache(maxsize=1)
def _load(model_cfg_items: tuple, device: str) -> tuple[Any, Any]:
    return load_causal_lm(dict(model_cfg_items), device)


def load_model(ctx: Context) -> tuple[Any, Any]:
    items = tuple(sorted((k, v) for k, v in ctx.cfg.model.items() if not isinstance(v, (dict, list))
                         and k in ("name", "path", "hub_id", "allow_download", "compute_dtype")))
    return _load(items, ctx.device)


def _head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head (+ Gemma's final logit soft-capping) on selected hidden states only."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


class Ranker:
    """Scores candidate answers after prompts that share `prefix` (instruction + few-shot examples).

    The prefix is encoded once; per prompt only the rest is encoded on a copy of the prefix cache, then
    all candidates run in one batch on that cache repeated per candidate, and the 262k-vocab head is
    applied only at the positions whose next token is scored. `shared_cache=False` is the reference:
    one full forward over prompt + candidate per candidate, same token ids.
    """

    def __init__(self, model: Any, tok: Any, prefix: str, candidates: list[str], norm: str = "mean",
                 shared_cache: bool = True, add_special_tokens: bool = True) -> None:
        self.model, self.tok, self.norm, self.shared = model, tok, norm, shared_cache
        self.device = next(model.parameters()).device
        self.prefix = prefix  # plain models: BOS added here; chat templates spell their own
        self.prefix_ids = tok(prefix, return_tensors="pt", add_special_tokens=add_special_tokens).input_ids
        self.prefix_ids = self.prefix_ids.to(self.device)
        self.cands = [tok(c, add_special_tokens=False).input_ids for c in candidates]
        self.prefix_cache = None
        if shared_cache:
            with torch.no_grad():
                self.prefix_cache = model(self.prefix_ids, use_cache=True, logits_to_keep=1).cache

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        if not prompt.startswith(self.prefix):
            raise ValueError("prompt does not start with the shared prefix")
        rest = self.tok(prompt[len(self.prefix):], add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([self.prefix_ids, rest.to(self.device)], dim=1)

    @torch.no_grad()
    def scores(self, prompt: str) -> np.ndarray:
        """Per candidate: mean or sum of log p(candidate tokens | prompt)."""
        ids = self.prompt_ids(prompt)
        token_lp = self._cached(ids) if self.shared else self._full(ids)
        return np.asarray([(t.mean() if self.norm == "mean" else t.sum()).item() for t in token_lp])

    def _full(self, ids: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for c in self.cands:
            full = torch.cat([ids, torch.tensor([c], device=self.device)], dim=1)
            logits = self.model(full, use_cache=False, logits_to_keep=len(c) + 1).logits[0, :-1]
            out.append(torch.log_softmax(logits.float(), -1)[torch.arange(len(c)), torch.tensor(c)])
        return out

    def _cached(self, ids: torch.Tensor) -> list[torch.Tensor]:
        cache = copy.deepcopy(self.prefix_cache)
        rest = ids[:, self.prefix_ids.shape[1]:]
        out = self.model(rest, cache=cache, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        cache = out.cache
        n, width, plen = len(self.cands), max(len(c) for c in self.cands), ids.shape[1]
        cache.batch_repeat_interleave(n)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        batch = torch.tensor([c + [pad] * (width - len(c)) for c in self.cands], device=self.device)
        mask = torch.ones(n, plen + width, dtype=torch.long, device=self.device)
        for i, c in enumerate(self.cands):
            mask[i, plen + len(c):] = 0
        hidden = self.model.get_decoder()(batch, attention_mask=mask, cache=cache).last_hidden_state
        rows = [i for i, c in enumerate(self.cands) for _ in range(len(c) - 1)]
        cols = [j for c in self.cands for j in range(len(c) - 1)]
        logp = torch.log_softmax(_head(self.model, hidden[rows, cols]), -1) if rows else None
        out_lp, k = [], 0
        for c in self.cands:
            rest_lp = logp[torch.arange(k, k + len(c) - 1), torch.tensor(c[1:], dtype=torch.long)] \
                if len(c) > 1 else torch.zeros(0)
            k += len(c) - 1
            out_lp.append(torch.cat([first[c[0]].reshape(1), rest_lp]))
        return out_lp


def prompts(ctx: Context, tok: Any) -> tuple[PromptBuilder, ChatFormat, str]:
    """The emotion prompt, the model's chat format, and the prompt text every dialogue starts with."""
    build = PromptBuilder(ctx.pcfg.prompt, ctx.taxonomy, ctx.train, ctx.seed, ctx.pcfg.get("system"))
    fmt = ChatFormat.of(tok, str(ctx.cfg.model.get("chat_format", "plain")))
    return build, fmt, fmt.frame(build.system)[0] + build.shared_prefix


def hf_rank(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Always a valid label: the taxonomy name the LM finds most likely as the answer."""
    model, tok = load_model(ctx)
    build, fmt, prefix = prompts(ctx, tok)
    suffix = fmt.end_of_turn(str(ctx.pcfg.get("answer_suffix", "\n")))
    norm = str(ctx.pcfg.get("score", "mean"))
    if norm not in ("mean", "sum"):
        from emplifai.errors import UserError

        raise UserError(f"predictor.score must be mean or sum, got {norm!r}")
    ranker = Ranker(model, tok, prefix, [n + suffix for n in ctx.taxonomy.ja_names], norm,
                    add_special_tokens=fmt.add_special_tokens)
    # Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): a small LM favours some names
    # (e.g. the last few-shot answer) whatever the dialogue; subtracting the scores it gives a
    # content-free dialogue removes that prior.
    prior = 0.0
    if ctx.pcfg.get("calibrate", True):
        blank = {"situation": "N/A", "patient": "N/A", "supporter": "N/A"}
        prior = ranker.scores(fmt.render(build.system, build(blank)))
    out = []
    for _, row in tqdm(test.iterrows(), total=len(test), desc="hf_rank", leave=False):
        scores = ranker.scores(fmt.render(build.system, build(row))) - prior
        best = int(scores.argmax())
        key = ctx.taxonomy.keys[best]
        out.append(Prediction(ctx.taxonomy.ja(key), ctx.taxonomy.ja(key), key, "rank", "", float(scores[best])))
    return out


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
             add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations (new tokens only, special tokens dropped), batched with left padding."""
    device = next(model.parameters()).device
    tok.padding_side = "left"
    texts: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="hf_generate", leave=False):
        enc = tok(prompts[i: i + batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=add_special_tokens).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        texts += tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return texts


def hf_generate(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Few-shot free-text answer; raw text kept; cleaned text scored; label exact or nearest."""
    model, tok = load_model(ctx)
    build, fmt, _ = prompts(ctx, tok)
    raws = generate(model, tok, [fmt.render(build.system, build(r)) for _, r in test.iterrows()],
                    int(ctx.pcfg.max_new_tokens), int(ctx.pcfg.get("batch_size", 4)), fmt.add_special_tokens)
    clean = answer_cleaner(ctx.pcfg)
    return interpret([clean(r) for r in raws], ctx)
