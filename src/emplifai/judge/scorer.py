"""hf_local judge: G-Eval probability-weighted scores from a local causal LM, with a shared-prefix KV cache.

A prompt is `head` (instructions + rubric: the same for every response) + `body` (situation, patient,
response) + one of k criterion `suffixes` ending in the score cue ("点数:"). Instead of k full forwards we
encode the head once per run (`emplifai.lm.prefix.PrefixKV`: kept, copied per response), the body once per
response, and the k short suffixes as one right-padded batch on that cache repeated k times (`padded_batch`);
the LM head runs only at each suffix's last token. Past `model.max_length` the body loses its start
(`emplifai.lm.budget`). The next-token distribution over the digits lo..hi gives
Σ s·p(s) (renormalized) and the argmax.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emplifai.core.errors import UserError
from emplifai.judge.parse import weighted_score
from emplifai.lm.budget import PromptBudget
from emplifai.lm.prefix import PrefixKV, extend, head_logits, padded_batch


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
                 add_special_tokens: bool = True, budget: PromptBudget | None = None) -> None:
        self.model, self.tok, self.device, self.budget = model, tokenizer, device, budget
        self.add_special_tokens = add_special_tokens  # BOS before the head: plain models; templates spell it
        self.digits = digit_token_ids(tokenizer, lo, hi)
        self._digit_index = torch.tensor(list(self.digits.values()))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.forwards = 0  # model forward calls made (benchmark/tests read this)
        self._head: PrefixKV | None = None

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

    def _head_kv(self, head_ids: list[int]) -> PrefixKV:
        """KV of the head, computed once and handed out as a fresh cache per response."""
        if self._head is None or list(self._head.ids) != head_ids:
            self._head = PrefixKV.encode(self.model, head_ids)
            self.forwards += 1
        return self._head

    @torch.inference_mode()
    def score(self, head: str, body: str, suffixes: Sequence[str], shared: bool = True) -> list[DigitScore]:
        head_ids, body_ids, sufs = self.encode(head, body, suffixes)
        if not sufs:
            return []
        if any(not s for s in sufs) or not body_ids:
            raise UserError("judge prompt: the context or a criterion question is empty after tokenization")
        if self.budget is not None:  # model.max_length: the context loses its start, head and questions stay
            body_ids = self.budget.fit(body_ids, len(head_ids) + max(map(len, sufs)), what="judge prompt")
        if not shared:
            rows = []
            for s in sufs:
                ids = torch.tensor([head_ids + body_ids + s], device=self.device)
                rows.append(self.model(input_ids=ids, logits_to_keep=1).logits[:, -1])
                self.forwards += 1
            return self._to_scores(torch.cat(rows))
        cache = self._head_kv(head_ids).cache()
        extend(self.model, cache, body_ids)
        hidden = padded_batch(self.model, cache, sufs, self.pad_id)
        self.forwards += 2
        return self._to_scores(head_logits(self.model, hidden[torch.arange(len(sufs)), [len(s) - 1 for s in sufs]]))
