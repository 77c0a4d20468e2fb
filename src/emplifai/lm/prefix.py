"""Prefix-KV scoring: the one implementation behind `hf_rank` (emotion) and the `hf_local` judge.

Both score short continuations after prompts that start with a long shared prefix (instruction + few-shot
examples / the rubric). The prefix is encoded once (`PrefixKV`); each prompt only encodes its own rest on a
fresh copy of that cache (`extend`), and the continuations then run in one batch on it: either the cache
repeated along a right-padded batch (`padded_batch`, one prompt at a time), or several prompts at once,
each row holding a prompt's rest followed by its continuations packed side by side (`branch_forward`: a
custom attention mask lets every continuation see the prefix and its own prompt but not its siblings, and
position ids restart where the prompt ends), so there is neither a cache copy per continuation nor padding
per continuation. The LM head (262k wide for Gemma) runs only on the hidden states whose next token is
scored (`head_logits`), with the model's final-logit soft-capping (`softcap`: its only copy in the project).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_LAYERS = {"full_attention", "sliding_attention"}


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's final-logit soft-capping, `cap * tanh(logits / cap)`; identity when `cap` is unset."""
    return torch.tanh(logits / cap) * cap if cap else logits


def softcap_slope(capped: torch.Tensor, cap: float | None) -> torch.Tensor | float:
    """d softcap(z) / dz from the capped logits: 1 - tanh(z / cap)^2 (1 when uncapped)."""
    return 1.0 - (capped / cap) ** 2 if cap else 1.0


def logit_cap(model: Any) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of the LM head (+ soft-capping) on the given hidden states only."""
    return softcap(model.get_output_embeddings()(hidden).float(), logit_cap(model))


def decoder(model: Any) -> Any:
    return model.get_decoder()


@dataclass(frozen=True)
class PrefixKV:
    """The KV cache of a shared prefix, computed once; `cache(n)` hands out fresh copies repeated n times.

    Stored as plain per-layer tensors of full length (no sliding-window truncation), so the prefix stays
    addressable by any later layout; a forward only extends the copy it was given."""

    ids: tuple[int, ...]
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @classmethod
    @torch.no_grad()
    def encode(cls, model: Any, ids: Sequence[int]) -> PrefixKV:
        from transformers import DynamicCache

        if not ids:
            raise ValueError("the shared prefix is empty after tokenization")
        device = next(model.parameters()).device
        cache = DynamicCache()  # full layers only: a sliding layer would drop keys a later mask addresses
        decoder(model)(input_ids=torch.tensor([list(ids)], device=device), cache=cache, use_cache=True)
        return cls(tuple(ids), tuple((layer.keys, layer.values) for layer in cache.layers))

    def __len__(self) -> int:
        return len(self.ids)

    def cache(self, batch: int = 1) -> Any:
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in self.kv])


def extend(model: Any, cache: Any, ids: Sequence[int]) -> torch.Tensor:
    """Encode `ids` (one row) after what `cache` holds, extending it; (len(ids), hidden) states."""
    device = next(model.parameters()).device
    out = decoder(model)(input_ids=torch.tensor([list(ids)], device=device), cache=cache, use_cache=True)
    return out.last_hidden_state[0]


def padded_batch(model: Any, cache: Any, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Run `seqs` as one right-padded batch on a one-row `cache` (repeated per sequence, in place);
    (len(seqs), width, hidden) states, valid up to each sequence's length."""
    device = next(model.parameters()).device
    past, width = cache.get_seq_length(), max(map(len, seqs))
    cache.batch_repeat_interleave(len(seqs))
    batch = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.ones(len(seqs), past + width, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, past + len(s):] = 0
    out = decoder(model)(input_ids=batch.to(device), attention_mask=mask.to(device), cache=cache, use_cache=True)
    return out.last_hidden_state


def branch_supported(model: Any) -> bool:
    """Whether `branch_forward` can express its mask for this model (sdpa/eager attention; full and/or
    sliding-window layers). Otherwise callers score one prompt at a time with `padded_batch`."""
    config = model.config.get_text_config(decoder=True)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return (getattr(config, "_attn_implementation", None) in ("sdpa", "eager") and types <= SUPPORTED_LAYERS
            and ("sliding_attention" not in types or bool(getattr(config, "sliding_window", None)))
            and not getattr(config, "use_bidirectional_attention", False))


def branch_forward(model: Any, prefix: PrefixKV, rows: Sequence[Sequence[Sequence[int]]]
                   ) -> tuple[torch.Tensor, list[list[list[int]]]]:
    """Several prompts in one forward on the prefix. Row = [context, branch_1, ..., branch_k] token lists:
    the context continues the prefix; each branch continues the context, blind to its siblings (and the
    rows to each other). Returns (rows, width, hidden) states and, per row and segment, the columns of its
    tokens; hidden states equal those of prefix + context + branch run alone, up to float rounding."""
    config = model.config.get_text_config(decoder=True)
    device = next(model.parameters()).device
    n, start = len(rows), len(prefix)
    width = max(1, max(sum(map(len, row)) for row in rows))
    ids = torch.full((n, width), 0, dtype=torch.long)
    pos = torch.full((n, width), start, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)  # -1: padding, 0: context, j: branch j
    cols: list[list[list[int]]] = []
    for r, row in enumerate(rows):
        t, at, spans = 0, start, []
        for s, toks in enumerate(row):
            ids[r, t: t + len(toks)] = torch.tensor(list(toks), dtype=torch.long)
            seg[r, t: t + len(toks)] = s
            pos[r, t: t + len(toks)] = torch.arange(at, at + len(toks))
            spans.append(list(range(t, t + len(toks))))
            t, at = t + len(toks), start + len(row[0])  # every branch starts where the context ends
        cols.append(spans)
    sq, sk = seg[:, :, None], seg[:, None, :]
    pq, pk = pos[:, :, None], pos[:, None, :]
    own = (sq >= 0) & (sk >= 0) & ((sk == 0) | (sk == sq)) & (pk <= pq)
    own |= torch.eye(width, dtype=torch.bool) & (sq < 0)  # padding sees itself only: no empty softmax row
    seen = torch.cat([torch.ones(n, width, start, dtype=torch.bool), own], dim=2)
    kpos = torch.cat([torch.arange(start).expand(n, start), pos], dim=1)[:, None, :]
    window = getattr(config, "sliding_window", None)

    def as_mask(m: torch.Tensor) -> torch.Tensor:
        m = m[:, None].to(device)
        if config._attn_implementation == "sdpa":
            return m
        dtype = next(model.parameters()).dtype
        return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill_(~m, torch.finfo(dtype).min)

    types = set(getattr(config, "layer_types", None) or [])
    if types - {"full_attention"}:
        local = seen & (pq - kpos < window)
        mask: Any = {t: as_mask(local if t == "sliding_attention" else seen) for t in types}
    else:
        mask = as_mask(seen & (pq - kpos < window) if window and not types else seen)
    out = decoder(model)(input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device),
                         cache=prefix.cache(n), use_cache=True)
    return out.last_hidden_state, cols
