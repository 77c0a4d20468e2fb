"""BERTScore, the one place that imports bert_score: `BertScorer` for the emotion scores (prediction vs gold
name, taxonomy names vs each other) and generate's BERTScore F1 (response vs the human supporter turn).

`bert_score.score` re-loads tokenizer and model per call and runs greedy matching for every pair;
predictions repeat heavily and gold names are only 28 strings, so `BertScorer` loads once, embeds each
distinct string once (kept across calls), matches each distinct (candidate, reference) pair once, and
gives the same numbers (same tokenizer file, same truncated model, same `greedy_cos_idf`, idf=False, no
baseline rescaling).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from emplifai.lm import encoder_dir

PAIR_BATCH = 1024
FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def fast_tokenizer(folder: str):
    """The folder's tokenizer.json built once. `AutoTokenizer` (what bert_score calls) also parses that
    file in Python first: for e5's 250k-piece vocabulary that doubles a 1.3 s load. Other tokenizer
    classes go through bert_score's own loader."""
    from bert_score.utils import get_tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(folder)
    conf_file = path / "tokenizer_config.json"
    conf = json.loads(conf_file.read_text(encoding="utf-8")) if conf_file.exists() else {}
    if not (path / "tokenizer.json").exists() or conf.pop("tokenizer_class", None) not in FAST_CLASSES:
        return get_tokenizer(folder, False)
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), name_or_path=folder, **conf)


class BertScorer:
    """BERTScore P/R/F1 with `idf=False`, the encoder folder and layer from `cfg.encoder`."""

    def __init__(self, encoder_cfg: Mapping[str, Any], device: str = "cpu", batch_size: int = 64) -> None:
        from bert_score.utils import get_model

        self.model_type = str(encoder_dir(encoder_cfg))
        self.num_layers = int(encoder_cfg["num_layers"])
        self.tokenizer = fast_tokenizer(self.model_type)
        self.model = get_model(self.model_type, self.num_layers).to(device)
        self.device, self.batch_size = device, int(batch_size)
        self.idf_dict: defaultdict = defaultdict(lambda: 1.0)
        self.idf_dict[self.tokenizer.sep_token_id] = 0
        self.idf_dict[self.tokenizer.cls_token_id] = 0
        self._emb: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _embed(self, texts: Sequence[str]) -> None:
        from bert_score.utils import get_bert_embedding, sent_encode

        todo = sorted({t for t in texts if t not in self._emb},
                      key=lambda t: len(sent_encode(self.tokenizer, t)), reverse=True)
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i: i + self.batch_size]
            emb, mask, idf = get_bert_embedding(batch, self.model, self.tokenizer, self.idf_dict,
                                                device=self.device)
            for j, text in enumerate(batch):
                n = int(mask[j].sum())
                self._emb[text] = (emb[j, :n].cpu(), idf[j, :n].cpu())

    def _stats(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embs = [self._emb[t][0] for t in texts]
        idfs = [self._emb[t][1] for t in texts]
        lens = torch.tensor([e.size(0) for e in embs])
        mask = torch.arange(int(lens.max())).expand(len(texts), -1) < lens.unsqueeze(1)
        return pad_sequence(embs, batch_first=True, padding_value=2.0), mask, pad_sequence(idfs, batch_first=True)

    def score(self, cands: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """(N, 3) array of P, R, F1 per pair — what `bert_score.score(cands, refs, ...)` returns."""
        from bert_score.utils import greedy_cos_idf

        if len(cands) != len(refs):
            raise ValueError("cands and refs differ in length")
        if not cands:
            return np.zeros((0, 3))
        self._embed(list(cands) + list(refs))
        pairs = list(dict.fromkeys(zip(cands, refs, strict=True)))
        out: dict[tuple[str, str], np.ndarray] = {}
        with torch.no_grad():
            for i in range(0, len(pairs), PAIR_BATCH):  # matching is cheap: large batches
                batch = pairs[i: i + PAIR_BATCH]
                ref_stats = self._stats([r for _, r in batch])
                hyp_stats = self._stats([c for c, _ in batch])
                p, r, f = greedy_cos_idf(*ref_stats, *hyp_stats)
                for pair, row in zip(batch, torch.stack((p, r, f), dim=-1).numpy(), strict=True):
                    out[pair] = row
        return np.stack([out[pair] for pair in zip(cands, refs, strict=True)]).astype(np.float64)

    def nearest(self, texts: Sequence[str], names: Sequence[str]) -> list[tuple[int, float]]:
        """For each text: (index of the name with the highest BERTScore F1, that F1)."""
        if not texts:
            return []
        distinct = list(dict.fromkeys(texts))
        flat = self.score([t for t in distinct for _ in names], [n for _ in distinct for n in names])
        f1 = flat[:, 2].reshape(len(distinct), len(names))
        best = {t: (int(i), float(row[i])) for t, row, i in zip(distinct, f1, f1.argmax(axis=1), strict=True)}
        return [best[t] for t in texts]
