"""The few-shot Japanese prompt shared by `hf_generate`, `hf_rank` and `openai`, and answer cleaning.

Template (`emotion.prompt`, written once for every predictor; a predictor's own `prompt:` keys win, e.g.
`++emotion.overrides.hf_rank.prompt.few_shot=0`): `instruction` (may use {labels}), `example` (uses
{situation}, {patient}, {supporter} and ends with {answer}), `few_shot` examples drawn from the train split
(seeded, distinct emotions). The query is the example template cut just before {answer}: the model continues
from there. This is the user turn; `predictor.system` the system turn. A server gets them as chat messages, a
local model through `emplifai.lm.chat` (its chat template, or plain text for a base model).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai.core.errors import UserError
from emplifai.data.taxonomy import Taxonomy

STRIP = " \t\r\n　「」『』\"'“”‘’()（）[]［］【】。、．，.,:：;；!！?？・*#-—"
PREFIX = re.compile(r"^(感情|答え|回答|emotion|answer)\s*[:：は]\s*", re.IGNORECASE)


class PromptError(UserError):
    pass


@dataclass(frozen=True)
class Answer:
    """A cleaned free-text answer: `text` is what gets scored, `reason` is set when it is invalid."""

    raw: str | None
    text: str
    reason: str = ""

    @property
    def valid(self) -> bool:
        return not self.reason


def few_shot_examples(train: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """k train dialogues with distinct gold emotions, chosen reproducibly."""
    if k <= 0 or train.empty:
        return train.iloc[:0]
    order = np.random.default_rng(seed).permutation(len(train))
    picked = train.iloc[order].drop_duplicates("emotion").head(k)
    return picked.reset_index(drop=True)


def prompt_config(cfg: DictConfig) -> dict[str, Any]:
    """The prompt of the predictor `cfg.predictor`: `emotion.prompt` under that predictor's own `prompt` keys."""
    own = cfg.predictor.get("prompt") or {}
    return OmegaConf.to_container(OmegaConf.merge(cfg.emotion.prompt, own), resolve=True)


class EmotionPrompt:
    @classmethod
    def from_config(cls, cfg: DictConfig, taxonomy: Taxonomy, train: pd.DataFrame, seed: int) -> EmotionPrompt:
        """The prompt of the predictor `cfg.predictor` (full config: emotion.prompt + the predictor's system)."""
        return cls(prompt_config(cfg), taxonomy, train, seed, cfg.predictor.get("system"))

    def __init__(self, prompt_cfg: Mapping[str, Any], taxonomy: Taxonomy, train: pd.DataFrame, seed: int,
                 system: str = "") -> None:
        self.system = str(system or "")
        example = str(prompt_cfg["example"]).rstrip("\n")
        if not example.endswith("{answer}"):
            raise PromptError("emotion.prompt.example must end with {answer} (the model continues there)")
        self.example, self.taxonomy = example, taxonomy
        self.instruction = str(prompt_cfg.get("instruction") or "").format(labels="、".join(taxonomy.ja_names))
        shots = few_shot_examples(train, int(prompt_cfg.get("few_shot", 0)), seed)
        self.prefix = "".join(self._fill(r, taxonomy.ja(r["emotion"])) + "\n\n" for _, r in shots.iterrows())

    def _fill(self, row: Mapping[str, Any], answer: str) -> str:
        try:
            return self.example.format(situation=row["situation"], patient=row["patient"],
                                       supporter=row["supporter"], answer=answer)
        except KeyError as err:
            raise PromptError(f"emotion.prompt.example uses an unknown field {err}") from err

    @property
    def fingerprint(self) -> str:
        """Hash of system + instruction + shots + example: part of the API cache namespace."""
        from emplifai.llm.cache import stable_hash

        return stable_hash({"system": self.system, "head": self.shared_prefix, "example": self.example})

    @property
    def shared_prefix(self) -> str:
        """Instruction + few-shot examples: the same for every dialogue (its KV cache is reusable)."""
        head = f"{self.instruction.rstrip()}\n\n" if self.instruction else ""
        return head + self.prefix

    def __call__(self, row: Mapping[str, Any]) -> str:
        """The user turn for one dialogue, ending where the answer goes."""
        return self.shared_prefix + self._fill(row, "")

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """The same prompt as chat messages, for an OpenAI-compatible server."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self(row)}]


def clean_answer(raw: str | None, refusal: re.Pattern[str], max_chars: int) -> Answer:
    """First non-empty line, NFKC, without a leading "感情：" or quotes/punctuation; invalid if empty,
    a refusal, garbled (no letters, or U+FFFD) or too long to be an emotion name."""
    if raw is None:
        return Answer(None, "", "no answer")
    text = unicodedata.normalize("NFKC", raw)
    line = next((ln for ln in text.splitlines() if ln.strip(STRIP)), "")
    line = PREFIX.sub("", line.strip(STRIP)).strip(STRIP)
    if not line:
        return Answer(raw, "", "empty answer")
    if refusal.search(line):
        return Answer(raw, line, "refusal")
    if "\ufffd" in line or not any(unicodedata.category(ch).startswith("L") for ch in line):
        return Answer(raw, line, "garbled answer")
    if len(line) > max_chars:
        return Answer(raw, line, f"answer longer than {max_chars} characters")
    return Answer(raw, line)
