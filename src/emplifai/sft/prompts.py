"""Prompt building and loss masking: one dialogue row -> (prompt ids, target ids).

The prompt comes from a `conf/prompt/*` template (Japanese), wrapped in the model's chat template when
`model.chat_format=chat_template`, or joined into one text for plain base models. The target is the human
supporter turn followed by EOS. Prompt and target are tokenized separately and concatenated, so the mask is
exact: every prompt position is -100 and every target position carries its own token id.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emplifai.data.taxonomy import Taxonomy
from emplifai.errors import UserError

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
class PromptBuilder:
    """Renders `conf/prompt/*` for one tokenizer; `encode` for training, `prompt_ids` for generation."""

    name: str
    system: str
    template: str
    response_prefix: str
    chat: bool
    tokenizer: Any
    taxonomy: Taxonomy

    @classmethod
    def from_config(cls, prompt_cfg: Mapping[str, Any], chat_format: str, tokenizer: Any,
                    taxonomy: Taxonomy) -> PromptBuilder:
        template = str(prompt_cfg.get("template") or "")
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if not used or used - FIELDS:
            raise PromptError(f"prompt {prompt_cfg.get('name')!r}: template placeholders must be a non-empty "
                              f"subset of {sorted(FIELDS)}, got {sorted(used)} (conf/prompt/)")
        if "patient" not in used:
            raise PromptError(f"prompt {prompt_cfg.get('name')!r}: template must contain {{patient}}")
        if chat_format not in ("plain", "chat_template"):
            raise PromptError(f"model.chat_format must be plain or chat_template, got {chat_format!r}")
        chat = chat_format == "chat_template"
        if chat and not getattr(tokenizer, "chat_template", None):
            raise PromptError("model.chat_format=chat_template but the tokenizer has no chat template; "
                              "set model.chat_format=plain")
        if tokenizer.eos_token_id is None:
            raise PromptError("the tokenizer has no EOS token; the target needs one to learn when to stop")
        return cls(str(prompt_cfg.get("name") or "prompt"), str(prompt_cfg.get("system") or ""), template,
                   str(prompt_cfg.get("response_prefix") or ""), chat, tokenizer, taxonomy)

    def user_text(self, row: Mapping[str, Any]) -> str:
        emotion = row.get("emotion")
        ja = self.taxonomy.ja(emotion) if emotion in self.taxonomy.keys else str(emotion or "")
        return self.template.format(situation=row.get("situation", ""), emotion=ja, patient=row["patient"])

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        user = self.user_text(row)
        if not self.chat:
            head = f"{self.system}\n\n" if self.system else ""
            return f"{head}{user}\n{self.response_prefix}"
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": user})
        try:
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - templates without a system role (e.g. Gemma) raise; merge it
            merged = [{"role": "user", "content": f"{self.system}\n\n{user}" if self.system else user}]
            return self.tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, row: Mapping[str, Any]) -> list[int]:
        # plain: the tokenizer adds its BOS; chat templates already spell BOS (if any) in the text
        return list(self.tokenizer(self.prompt_text(row), add_special_tokens=not self.chat)["input_ids"])

    def target_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id]

    def encode(self, row: Mapping[str, Any], max_length: int) -> Encoded:
        """Prompt + target within max_length: the prompt is cut from the left (after its first token, the
        BOS for plain models) and the target kept whole when it fits in half the budget, else cut at the end."""
        prompt, target = self.prompt_ids(row), self.target_ids(row["supporter"])
        if len(prompt) + len(target) > max_length:
            target = target[: max(max_length // 2, max_length - len(prompt))]
            keep = max_length - len(target)
            if len(prompt) > keep:
                prompt = prompt[:1] + prompt[len(prompt) - keep + 1:] if keep > 1 else prompt[:keep]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, len(prompt))
