"""Prompt building and loss masking: one dialogue row -> (prompt ids, target ids).

The prompt comes from a `conf/sft_prompt/*` template (Japanese), wrapped by `emplifai.lm.chat` (the model's chat
template when `model.chat_format=chat_template`, one text for plain base models). The target is the human
supporter turn followed by EOS. Prompt and target are tokenized separately and concatenated, so the mask is
exact: every prompt position is -100 and every target position carries its own token id.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emplifai.core.errors import UserError
from emplifai.data.taxonomy import Taxonomy
from emplifai.lm.budget import cut_left
from emplifai.lm.chat import ChatFormat

IGNORE = -100
FIELDS = {"situation", "emotion", "patient"}


class PromptError(UserError):
    pass


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.n_prompt


@dataclass(frozen=True)
class SFTPrompt:
    """Renders `conf/sft_prompt/*` for one tokenizer; `encode` for training, `prompt_ids` for generation."""

    name: str
    system: str
    template: str
    response_prefix: str
    fmt: ChatFormat
    taxonomy: Taxonomy

    @property
    def tokenizer(self) -> Any:
        return self.fmt.tokenizer

    @classmethod
    def from_config(cls, prompt_cfg: Mapping[str, Any], chat_format: str, tokenizer: Any,
                    taxonomy: Taxonomy) -> SFTPrompt:
        template = str(prompt_cfg.get("template") or "")
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if not used or used - FIELDS:
            raise PromptError(f"prompt {prompt_cfg.get('name')!r}: template placeholders must be a non-empty "
                              f"subset of {sorted(FIELDS)}, got {sorted(used)} (conf/sft_prompt/)")
        if "patient" not in used:
            raise PromptError(f"prompt {prompt_cfg.get('name')!r}: template must contain {{patient}}")
        fmt = ChatFormat.of(tokenizer, chat_format)
        if tokenizer.eos_token_id is None:
            raise PromptError("the tokenizer has no EOS token; the target needs one to learn when to stop")
        return cls(str(prompt_cfg.get("name") or "prompt"), str(prompt_cfg.get("system") or ""), template,
                   str(prompt_cfg.get("response_prefix") or ""), fmt, taxonomy)

    def user_text(self, row: Mapping[str, Any]) -> str:
        emotion = row.get("emotion")
        ja = self.taxonomy.ja(emotion) if emotion in self.taxonomy.keys else str(emotion or "")
        return self.template.format(situation=row.get("situation", ""), emotion=ja, patient=row["patient"])

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        text = self.fmt.render(self.system, self.user_text(row))
        # a base model continues after "医療スタッフ:"; a chat model answers in its own assistant turn
        return text if self.fmt.chat else f"{text}\n{self.response_prefix}"

    def prompt_ids(self, row: Mapping[str, Any]) -> list[int]:
        return self.fmt.encode(self.prompt_text(row))

    def target_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id]

    def encode(self, row: Mapping[str, Any], max_length: int) -> Encoded:
        """Prompt + target within max_length: the prompt is cut from the left after its first token (the BOS
        for plain models; `emplifai.lm.budget`, as generation cuts it) and the target kept whole when it fits
        in half the budget, else cut at the end."""
        prompt, target = self.prompt_ids(row), self.target_ids(row["supporter"])
        if len(prompt) + len(target) > max_length:
            target = target[: max(max_length // 2, max_length - len(prompt))]
            prompt = cut_left(prompt, max_length - len(target), keep_first=1)
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, len(prompt))
