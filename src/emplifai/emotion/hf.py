"""Local causal-LM predictors (`cfg.model`, default Gemma-3-270M): free-text generation and label ranking.

`hf_rank` scores log p(label name + suffix | prompt) for every taxonomy label with the prefix-KV machinery
of `emplifai.lm.prefix` (see `Ranker`): `predictor.batch_size` dialogues per forward, each with its 28
labels, on the shared instruction + few-shot prefix encoded once. `Ranker.scores` (one dialogue at a time)
and `Ranker(..., shared_cache=False)` (one full forward per label) are the references of the benchmark.
`predictor.score`: `mean` (default) averages the label's token log-probs, so names that happen to need
more tokens are not penalized; `sum` is the plain sequence log-likelihood.
Prompts go through `emplifai.lm.chat` (`model.chat_format`): with a chat model the label is scored right after
the assistant generation prompt and closed by the template's end-of-turn token instead of `answer_suffix`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emplifai.emotion.predictors import Context, Prediction, answer_cleaner, interpret
from emplifai.emotion.prompt import EmotionPrompt
from emplifai.lm import load_causal_lm
from emplifai.lm.budget import PromptBudget
from emplifai.lm.chat import ChatFormat
from emplifai.lm.prefix import PrefixKV, branch_forward, branch_supported, extend, head_logits, padded_batch


@functools.lru_cache(maxsize=1)
def _load(model_cfg_items: tuple, device: str) -> tuple[Any, Any]:
    return load_causal_lm(dict(model_cfg_items), device)


def load_model(ctx: Context) -> tuple[Any, Any]:
    items = tuple(sorted((k, v) for k, v in ctx.cfg.model.items() if not isinstance(v, (dict, list))
                         and k in ("name", "path", "hub_id", "allow_download", "compute_dtype")))
    return _load(items, ctx.device)


HEAD_ROWS = 128  # hidden states per LM-head call in `scores_batch`: 128 x 262k fp32 logits = 134 MB


class Ranker:
    """Scores candidate answers after prompts that share `prefix` (instruction + few-shot examples).

    The prefix is encoded once (`emplifai.lm.prefix`). `scores_batch` (what `hf_rank` runs) puts several
    prompts in one forward, each prompt's rest followed by its candidates side by side, every candidate
    seeing the prefix and its own prompt only. `scores` is the per-prompt reference: the rest on a copy of
    the prefix cache, then the candidates as one right-padded batch on that cache repeated per candidate;
    `shared_cache=False` makes it one full forward over prompt + candidate per candidate (same token ids).
    The 262k-wide head runs only at the positions whose next token is scored.
    """

    def __init__(self, model: Any, tok: Any, prefix: str, candidates: list[str], norm: str = "mean",
                 shared_cache: bool = True, add_special_tokens: bool = True, budget: PromptBudget | None = None
                 ) -> None:
        self.model, self.tok, self.norm, self.shared, self.budget = model, tok, norm, shared_cache, budget
        self.device = next(model.parameters()).device
        self.prefix = prefix  # plain models: BOS added here; chat templates spell their own
        self.prefix_ids = tok(prefix, add_special_tokens=add_special_tokens).input_ids
        self.cands = [tok(c, add_special_tokens=False).input_ids for c in candidates]
        if not all(self.cands):
            raise ValueError("a candidate is empty after tokenization")
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._lens = np.array([len(c) for c in self.cands])
        if budget is not None:  # before encoding a prefix that could not fit anyway
            budget.check(len(self.prefix_ids) + int(self._lens.max()), "emotion prompt")
        self.prefix_kv = PrefixKV.encode(model, self.prefix_ids) if shared_cache else None
        # scores_batch, per prompt: head rows = [end of the rest] + every candidate token but the last;
        # token log-probs in candidate order = (head row, token) pairs
        self._rows_per_prompt = 1 + int((self._lens - 1).sum())
        rows, toks, k = [], [], 1
        for c in self.cands:
            rows += [0, *range(k, k + len(c) - 1)]
            toks += c
            k += len(c) - 1
        self._pair_row, self._pair_tok = torch.tensor(rows), torch.tensor(toks)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        return torch.tensor([self.prefix_ids + self._rest(prompt)], device=self.device)

    def _rest(self, prompt: str) -> list[int]:
        if not prompt.startswith(self.prefix):
            raise ValueError("prompt does not start with the shared prefix")
        rest = self.tok(prompt[len(self.prefix):], add_special_tokens=False).input_ids
        if not rest:
            raise ValueError("prompt has nothing after the shared prefix")
        if self.budget is None:
            return rest
        return self.budget.fit(rest, len(self.prefix_ids) + int(self._lens.max()), what="emotion prompt")

    def _reduce(self, token_lp: list[torch.Tensor]) -> np.ndarray:
        return np.asarray([(t.mean() if self.norm == "mean" else t.sum()).item() for t in token_lp])

    @torch.no_grad()
    def scores(self, prompt: str) -> np.ndarray:
        """Per candidate: mean or sum of log p(candidate tokens | prompt), one prompt at a time."""
        if not self.shared:
            return self._reduce(self._full(self.prompt_ids(prompt)))
        cache = self.prefix_kv.cache()
        first = torch.log_softmax(head_logits(self.model, extend(self.model, cache, self._rest(prompt))[-1:]), -1)
        hidden = padded_batch(self.model, cache, self.cands, self.pad)
        rows = [i for i, c in enumerate(self.cands) for _ in range(len(c) - 1)]
        cols = [j for c in self.cands for j in range(len(c) - 1)]
        logp = torch.log_softmax(head_logits(self.model, hidden[rows, cols]), -1) if rows else None
        out, k = [], 0
        for c in self.cands:
            rest = logp[torch.arange(k, k + len(c) - 1), torch.tensor(c[1:], dtype=torch.long)] \
                if len(c) > 1 else torch.zeros(0)
            k += len(c) - 1
            out.append(torch.cat([first[0, c[0]].reshape(1), rest]))
        return self._reduce(out)

    def _full(self, ids: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for c in self.cands:
            full = torch.cat([ids, torch.tensor([c], device=self.device)], dim=1)
            logits = self.model(full, use_cache=False, logits_to_keep=len(c) + 1).logits[0, :-1]
            out.append(torch.log_softmax(logits.float(), -1)[torch.arange(len(c)), torch.tensor(c)])
        return out

    @torch.no_grad()
    def scores_batch(self, prompts: list[str], batch_size: int = 8, progress: bool = False) -> list[np.ndarray]:
        """`scores` of every prompt with `batch_size` prompts per forward (similar lengths together): the
        same numbers up to float rounding, whatever the batch size. Falls back to `scores` where the
        model's attention cannot take the packed mask (`emplifai.lm.prefix.branch_supported`)."""
        if not self.shared or not branch_supported(self.model):
            return [self.scores(p) for p in tqdm(prompts, desc="hf_rank", leave=False, disable=not progress)]
        rests = [self._rest(p) for p in prompts]
        order = sorted(range(len(rests)), key=lambda i: len(rests[i]))
        size = max(1, int(batch_size))
        out: list[np.ndarray] = [np.empty(0)] * len(rests)
        for start in tqdm(range(0, len(order), size), desc="hf_rank", leave=False, disable=not progress):
            idx = order[start: start + size]
            for i, res in zip(idx, self._packed([rests[i] for i in idx]), strict=True):
                out[i] = res
        return out

    def _packed(self, rests: list[list[int]]) -> list[np.ndarray]:
        """One forward for several prompts: row = rest + every candidate but its last token."""
        hidden, cols = branch_forward(self.model, self.prefix_kv, [[r] + [c[:-1] for c in self.cands]
                                                                     for r in rests])
        # per row: the rest's last position, then every candidate token's (candidate order)
        at = [[spans[0][-1]] + [t for span in spans[1:] for t in span] for spans in cols]
        states = torch.cat([hidden[r, cols_r] for r, cols_r in enumerate(at)])
        n = self._rows_per_prompt
        pair_row = (self._pair_row + n * torch.arange(len(rests))[:, None]).reshape(-1)
        pair_tok = self._pair_tok.repeat(len(rests))
        lp = torch.empty(len(pair_row))
        for s in range(0, len(states), HEAD_ROWS):
            logits = head_logits(self.model, states[s: s + HEAD_ROWS])
            lse = torch.logsumexp(logits, -1)
            sel = ((pair_row >= s) & (pair_row < s + HEAD_ROWS)).nonzero().squeeze(1)
            local = pair_row[sel] - s
            lp[sel] = (logits[local, pair_tok[sel].to(logits.device)] - lse[local]).cpu()
        token_lp = lp.numpy().reshape(len(rests), -1).astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(self._lens)[:-1]])
        sums = np.add.reduceat(token_lp, starts, axis=1)
        return list(sums / self._lens if self.norm == "mean" else sums)


def prompts(ctx: Context, tok: Any) -> tuple[EmotionPrompt, ChatFormat, str]:
    """The emotion prompt, the model's chat format, and the prompt text every dialogue starts with."""
    build = EmotionPrompt.from_config(ctx.cfg, ctx.taxonomy, ctx.train, ctx.seed)
    fmt = ChatFormat.of(tok, str(ctx.cfg.model.get("chat_format", "plain")))
    return build, fmt, fmt.frame(build.system)[0] + build.shared_prefix


def hf_rank(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Always a valid label: the taxonomy name the LM finds most likely as the answer."""
    model, tok = load_model(ctx)
    build, fmt, prefix = prompts(ctx, tok)
    suffix = fmt.end_of_turn(str(ctx.pcfg.get("answer_suffix", "\n")))
    norm, batch_size = str(ctx.pcfg.get("score", "mean")), ctx.pcfg.get("batch_size", 8)
    if norm not in ("mean", "sum") or not isinstance(batch_size, int) or batch_size < 1:
        from emplifai.core.errors import UserError

        raise UserError(f"predictor.score must be mean or sum (got {norm!r}) and predictor.batch_size an "
                        f"integer >= 1 (got {batch_size!r})")
    budget = PromptBudget.of(ctx.cfg.model, model)
    ranker = Ranker(model, tok, prefix, [n + suffix for n in ctx.taxonomy.ja_names], norm,
                    add_special_tokens=fmt.add_special_tokens, budget=budget)
    texts = [fmt.render(build.system, build(row)) for _, row in test.iterrows()]
    # Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): a small LM favours some names
    # (e.g. the last few-shot answer) whatever the dialogue; subtracting the scores it gives a
    # content-free dialogue removes that prior.
    calibrate = bool(ctx.pcfg.get("calibrate", True))
    if calibrate:
        blank = {"situation": "N/A", "patient": "N/A", "supporter": "N/A"}
        texts.insert(0, fmt.render(build.system, build(blank)))
    scored = ranker.scores_batch(texts, batch_size, progress=True)
    ctx.metrics |= budget.metrics("emotion")
    budget.warn("emotion")
    prior = scored.pop(0) if calibrate else 0.0
    out = []
    for raw in scored:
        scores = raw - prior
        best = int(scores.argmax())
        key = ctx.taxonomy.keys[best]
        out.append(Prediction(ctx.taxonomy.ja(key), ctx.taxonomy.ja(key), key, "rank", "", float(scores[best])))
    return out


@torch.no_grad()
def greedy_continuations(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
                         add_special_tokens: bool = True, budget: PromptBudget | None = None) -> list[str]:
    """Greedy continuations (new tokens only, special tokens dropped), batched with left padding; with a
    `budget`, each prompt cut to leave room for the new tokens (its first token, the BOS, kept)."""
    device = next(model.parameters()).device
    tok.padding_side = "left"
    ids = [tok(p, add_special_tokens=add_special_tokens).input_ids for p in prompts]
    if budget is not None:
        ids = [budget.fit(i, max_new_tokens, keep_first=1, what="emotion prompt") for i in ids]
    texts: list[str] = []
    for i in tqdm(range(0, len(ids), batch_size), desc="hf_generate", leave=False):
        enc = tok.pad({"input_ids": ids[i: i + batch_size]}, padding=True, return_tensors="pt").to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        texts += tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return texts


def hf_generate(ctx: Context, test: pd.DataFrame) -> list[Prediction]:
    """Few-shot free-text answer; raw text kept; cleaned text scored; label exact or nearest."""
    model, tok = load_model(ctx)
    build, fmt, _ = prompts(ctx, tok)
    texts = [fmt.render(build.system, build(r)) for _, r in test.iterrows()]
    budget = PromptBudget.of(ctx.cfg.model, model)
    raws = greedy_continuations(model, tok, texts, int(ctx.pcfg.max_new_tokens), int(ctx.pcfg.get("batch_size", 4)),
                                fmt.add_special_tokens, budget)
    ctx.metrics |= budget.metrics("emotion")
    budget.warn("emotion")
    clean = answer_cleaner(ctx.pcfg)
    return interpret([clean(r) for r in raws], ctx)
