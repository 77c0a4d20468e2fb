"""hf_local judge: G-Eval probability-weighted scores from a local causal LM, with a shared-prefix KV cache.

A prompt is `head` (instructions + rubric: the same for every response) + `body` (situation, patient,
response) + one of k criterion `suffixes` ending in the score cue ("点数:"). Instead of k full forwards we
encode the head once per run (its KV cache is kept and copied), the body once per response, repeat that
KV cache k times along the batch and run the k short suffixes as one right-padded batch: causal attention
means padding *after* a row's last real token cannot change that token's logits, so no mask is needed. The next-token distribution over the digits lo..hi gives Σ s·p(s) (renormalized) and the argmax.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emplifai.errors import UserError
from emplifai.judging.parse import weighted_score


@dataclass(frozen=True)
class DigitScore:
    score: float  # Σ s·p(s), p renormalized over lo..hi
    argmax: int | None
    mass: float  # p(lo..hi) before renormalizing: how much the model "meant" to answer with a digit
    probs: dict[int, float]

    @property
    def raw(self) -> str:
        return json.dumps({"p": {str(k): round(v, 6) for k, v in self.probs.items()}, "mass": round(self.mass, 6)})


def digit_token_ids(tokenizer, lo: int, hi: int) -> dict[int, int]:
    """score → the single token id of its digit; raises if a digit is not one token (then G-Eval can't work)."""
    ids = {}
    for s in range(lo, hi + 1):
        toks = tokenizer.encode(str(s), add_special_tokens=False)
        if len(toks) != 1:
            raise UserError(f"judge model tokenizer splits the digit {s!r} into {toks}; hf_local needs "
                            "single-token digits (choose another judge.model)")
        ids[s] = toks[0]
    return ids


class DigitScorer:
    """Scores prompts sharing one prefix; `shared=False` runs one full forward per suffix (the baseline)."""

    def __init__(self, model, tokenizer, lo: int = 1, hi: int = 5, device: str = "cpu",
                 add_special_tokens: bool = True) -> None:
        self.model, self.tok, self.device = model, tokenizer, device
        self.add_special_tokens = add_special_tokens  # BOS before the head: plain models; templates spell it
        self.digits = digit_token_ids(tokenizer, lo, hi)
        self._digit_index = torch.tensor(list(self.digits.values()))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.forwards = 0  # model forward calls made (benchmark/tests read this)
        self._head: tuple[list[int], object] | None = None

    def encode(self, head: str, body: str, suffixes: Sequence[str]) -> tuple[list[int], list[int], list[list[int]]]:
        """Prompt ids = head ids (with BOS) + body ids + suffix ids: the same ids for both code paths."""
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in (body, *suffixes)]
        return self.tok(head, add_special_tokens=self.add_special_tokens)["input_ids"], ids[0], ids[1:]

    def _to_scores(self, last_logits: torch.Tensor) -> list[DigitScore]:
        probs = torch.softmax(last_logits.float(), dim=-1)[:, self._digit_index.to(last_logits.device)]
        out = []
        for row in probs.cpu().tolist():
            p = dict(zip(self.digits, row, strict=True))
            weighted, argmax, mass = weighted_score(p)
            out.append(DigitScore(weighted, argmax, mass, p))
        return out

    def _head_cache(self, head_ids: list[int]):
        """KV cache of the head, computed once and copied for each response (forward mutates the cache)."""
        if self._head is None or self._head[0] != head_ids:
            out = self.model(input_ids=torch.tensor([head_ids], device=self.device), use_cache=True,
                             logits_to_keep=1)
            self.forwards += 1
            self._head = (head_ids, out.cache)
        return copy.deepcopy(self._head[1])

    @torch.inference_mode()
    def score(self, head: str, body: str, suffixes: Sequence[str], shared: bool = True) -> list[DigitScore]:
        head_ids, body_ids, sufs = self.encode(head, body, suffixes)
        if not sufs:
            return []
        if any(not s for s in sufs) or not body_ids:
            raise UserError("judge prompt: the context or a criterion question is empty after tokenization")
        if not shared:
            rows = []
            for s in sufs:
                ids = torch.tensor([head_ids + body_ids + s], device=self.device)
                rows.append(self.model(input_ids=ids, logits_to_keep=1).logits[:, -1])
                self.forwards += 1
            return self._to_scores(torch.cat(rows))
        cache = self._head_cache(head_ids)
        self.model(input_ids=torch.tensor([body_ids], device=self.device), cache=cache, use_cache=True,
                   logits_to_keep=1)
        cache.batch_repeat_interleave(len(sufs))
        width = max(map(len, sufs))
        batch = torch.full((len(sufs), width), self.pad_id, dtype=torch.long)
        for i, s in enumerate(sufs):
            batch[i, : len(s)] = torch.tensor(s)
        last = torch.tensor([len(s) - 1 for s in sufs])
        keep = torch.unique(last)  # only these positions go through the (262k-wide) LM head
        logits = self.model(input_ids=batch.to(self.device), cache=cache, use_cache=True,
                            logits_to_keep=keep.to(self.device)).logits
        self.forwards += 2
        pos = torch.searchsorted(keep, last)
        return self._to_scores(logits[torch.arange(len(sufs)), pos.to(logits.device)])
