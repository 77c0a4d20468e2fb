"""Batched, seeded response generation (left padding) and distinct-n; BERTScore is metrics/bertscore.py's."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from emplifai.data.words import words
from emplifai.lm.budget import PromptBudget
from emplifai.train.examples import SFTPrompt


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(list(s)), 1
    return ids, mask


def decode_kwargs(gen_cfg: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {"max_new_tokens": int(gen_cfg["max_new_tokens"]), "do_sample": bool(gen_cfg["do_sample"]),
                          "repetition_penalty": float(gen_cfg["repetition_penalty"]),
                          "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kw["do_sample"]:
        kw |= {"temperature": float(gen_cfg["temperature"]), "top_p": float(gen_cfg["top_p"])}
    else:  # greedy: make sure no sampling knob from the model's generation_config leaks in
        kw |= {"temperature": None, "top_p": None, "top_k": None}
    return kw


class NewlineStop(StoppingCriteria):
    """A row is done once its new text has a newline after some content. (transformers' `stop_strings`
    first scans the whole vocabulary: minutes with a 262k-token vocabulary on CPU.)"""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:].tolist(), skip_special_tokens=True)
        return torch.tensor(["\n" in t.strip() for t in texts], device=input_ids.device)


def clean(text: str, stop_at_newline: bool) -> str:
    text = text.strip()
    return text.split("\n", 1)[0].strip() if stop_at_newline else text


@torch.no_grad()
def generate(model: Any, builder: SFTPrompt, rows: Sequence[Mapping[str, Any]], gen_cfg: Mapping[str, Any],
             seed: int, desc: str = "generate", budget: PromptBudget | None = None) -> list[dict[str, Any]]:
    """One response per row, in row order: {response, n_tokens, seconds}. Batches of similar prompt length;
    seconds = the batch's wall time shared equally by its rows. The RNG is reseeded per call, so every
    system decodes under the same seed. With a `budget` (model.max_length) a prompt is cut as in training,
    from the left after its first token, to leave room for max_new_tokens."""
    tok = builder.tokenizer
    prompts = [builder.prompt_ids(r) for r in rows]
    if budget is not None:
        prompts = [budget.fit(p, int(gen_cfg["max_new_tokens"]), keep_first=1, what="generate prompt")
                   for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    bs, kw = max(1, int(gen_cfg["batch_size"])), decode_kwargs(gen_cfg, tok)
    device = next(model.parameters()).device
    out: list[dict[str, Any]] = [{} for _ in rows]
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(order), bs), desc=desc, unit="batch"):
        idx = order[start: start + bs]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id)
        t0 = time.perf_counter()
        stop = StoppingCriteriaList([NewlineStop(tok, ids.shape[1])] if gen_cfg.get("stop_at_newline") else [])
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), stopping_criteria=stop,
                             **kw)
        dt = (time.perf_counter() - t0) / len(idx)
        for i, seq in zip(idx, gen[:, ids.shape[1]:].tolist(), strict=True):
            text = clean(tok.decode(seq, skip_special_tokens=True), bool(gen_cfg.get("stop_at_newline")))
            out[i] = {"response": text, "n_tokens": len(tok(text, add_special_tokens=False)["input_ids"]),
                      "seconds": dt}
    return out


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique word n-grams / all word n-grams over a system's responses (words: emotion/tokenize.py, the
    project's one word splitter); None when there are none."""
    grams = [tuple(ws[i: i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None
