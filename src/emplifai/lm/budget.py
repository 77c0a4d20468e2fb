"""`model.max_length`: how a prompt longer than the model may read is cut, one way for every local LM.

A prompt is parts kept whole (the shared prefix: instruction, few-shot examples or rubric; after the item,
the answer cue and the label or criterion question; the tokens still to be generated) and the item's own
text (situation, dialogue, response). When the whole exceeds `model.max_length`, the item's text loses its
*first* tokens: what sits next to the answer cue (the patient's and supporter's turns, the judged response)
stays. Training cuts its prompts the same way within `train.max_length` (`train/examples.py`). hf_rank,
hf_generate, the hf_local judge and generate count the distinct prompts they cut (`<stage>/truncated_prompts`)
and the longest prompt they met (`<stage>/longest_prompt_tokens`), and warn; parts kept whole that alone
fill the budget are a `UserError`, never a silent cut of the instructions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emplifai.core.errors import UserError

log = logging.getLogger(__name__)


def cut_left(ids: Sequence[int], length: int, keep_first: int = 0) -> list[int]:
    """`ids` within `length` tokens: its first `keep_first` (a BOS) kept, then its last ones."""
    ids = list(ids)
    if len(ids) <= length:
        return ids
    if length <= keep_first:
        return ids[:length]
    return ids[:keep_first] + ids[len(ids) - (length - keep_first):]


@dataclass
class PromptBudget:
    """`fit` cuts one prompt's item text and remembers it; `metrics`/`warn` report the run's cuts."""

    max_length: int
    setting: str = "model.max_length"
    longest: int = 0
    _cut: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, model_cfg: Mapping[str, Any], model: Any = None) -> PromptBudget:
        """From `model.max_length`; checked against the model's own context window when `model` is given."""
        value = model_cfg.get("max_length")
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise UserError(f"model.max_length must be an integer >= 2 (the longest prompt + new tokens the "
                            f"model reads), got {value!r} for model {model_cfg.get('name')!r}")
        config = getattr(model, "config", None)
        window = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None) if config else None
        if isinstance(window, int) and value > window:
            raise UserError(f"model.max_length={value} exceeds the context window of {model_cfg.get('name')!r} "
                            f"({window} positions, its config.json): set model.max_length<={window}")
        return cls(value)

    @property
    def truncated(self) -> int:
        return len(self._cut)

    def check(self, reserved: int, what: str = "prompt") -> int:
        """Room left for the item text beside `reserved` tokens kept whole; a UserError when there is none."""
        if reserved >= self.max_length:
            raise UserError(f"{self.setting}={self.max_length} leaves no room for the item text of the {what}: "
                            f"the parts kept whole (shared prefix, answer cue or question, new tokens) already "
                            f"take {reserved} tokens; raise {self.setting} or shorten the prompt")
        return self.max_length - reserved

    def fit(self, ids: Sequence[int], reserved: int, keep_first: int = 0, what: str = "prompt") -> list[int]:
        """`ids` (the item's text, after `keep_first` tokens kept whole) so that it and `reserved` tokens
        (the parts kept whole around it) fit in max_length."""
        room = self.check(reserved + keep_first, what) + keep_first
        self.longest = max(self.longest, len(ids) + reserved)
        if len(ids) <= room:
            return list(ids)
        self._cut.add(hash(tuple(ids)))
        return cut_left(ids, room, keep_first)

    def metrics(self, stage: str) -> dict[str, int]:
        return {f"{stage}/truncated_prompts": self.truncated, f"{stage}/longest_prompt_tokens": self.longest}

    def warn(self, stage: str) -> None:
        if self.truncated:
            log.warning(f"{stage}: {self.truncated} prompt(s) exceeded {self.setting}={self.max_length} (longest "
                        f"{self.longest} tokens) and lost the start of their item text (emplifai.lm.budget)")
