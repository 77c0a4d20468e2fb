"""The one place that turns (system, user) text into what a local causal LM reads: `model.chat_format`.

Every local LM use (emotion `hf_rank`/`hf_generate`, the `hf_local` judge, `train`, `generate`) builds its
prompt here, so an instruct model gets its chat template everywhere, and a base model (`plain`) the raw text.
OpenAI-compatible servers apply the template themselves: they get the same (system, user) as messages.

Scoring with a chat model (ranking labels, reading a score digit) scores the tokens right after the
assistant generation prompt. KV-cache sharing still works because a template wraps the user text verbatim:
`frame(system)` splits the rendered conversation around the user content into (before, after), so a
prompt is `before + user + after` and every prompt with the same system and user head shares `before + head`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emplifai.core.errors import UserError

FORMATS = ("plain", "chat_template")
_SLOT = "\u2063EMPLIFAI_SLOT\u2063"  # invisible separator: no template or tokenizer treats it specially
_PROBE = "状況：テスト\n患者：はい"


class ChatFormatError(UserError):
    pass


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer wraps a prompt. `chat`: the template spells BOS and turns, so encode without
    special tokens; plain: the tokenizer adds its BOS and the system text is a paragraph before the user's."""

    tokenizer: Any
    chat: bool
    _frames: dict[str, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, tokenizer: Any, chat_format: str) -> ChatFormat:
        if chat_format not in FORMATS:
            raise ChatFormatError(f"model.chat_format must be one of {FORMATS}, got {chat_format!r}")
        chat = chat_format == "chat_template"
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ChatFormatError("model.chat_format=chat_template but the tokenizer has no chat template; "
                                  "set model.chat_format=plain")
        return cls(tokenizer, chat)

    @property
    def add_special_tokens(self) -> bool:
        return not self.chat

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole prompt (or its first part): BOS added for plain models only."""
        return list(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])

    def _apply(self, system: str, user: str, assistant: str | None = None) -> str:
        """apply_chat_template; a template without a system role (it raises) gets system merged into user."""
        tail = [{"role": "assistant", "content": assistant}] if assistant is not None else []
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        try:
            return self.tokenizer.apply_chat_template(msgs + tail, add_generation_prompt=assistant is None,
                                                      tokenize=False)
        except Exception:  # noqa: BLE001 - e.g. "System role not supported": merge it into the user turn
            merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
            return self.tokenizer.apply_chat_template(merged + tail, add_generation_prompt=assistant is None,
                                                      tokenize=False)

    def frame(self, system: str) -> tuple[str, str]:
        """(text before the user content, text after it up to where the answer starts)."""
        if not self.chat:
            return (f"{system}\n\n" if system else ""), ""
        if system not in self._frames:
            self._frames[system] = self._split(system)
        return self._frames[system]

    def _split(self, system: str) -> tuple[str, str]:
        before, sep, after = self._apply(system, _SLOT).partition(_SLOT)
        if not sep or _SLOT in after:
            raise ChatFormatError("the chat template does not place the user text verbatim; "
                                  "cannot build prompts for it (set model.chat_format=plain)")
        if before + _PROBE + after != self._apply(system, _PROBE):
            raise ChatFormatError("the chat template changes the user text (e.g. trims it); "
                                  "prompts would not match it (set model.chat_format=plain)")
        return before, after

    def render(self, system: str, user: str) -> str:
        """The full prompt text, ending where the model's answer starts."""
        before, after = self.frame(system)
        return before + user + after

    def end_of_turn(self, plain: str = "\n") -> str:
        """What closes an answer: the template's end-of-turn text (e.g. ChatML `<|im_end|>`), stripped of
        trailing whitespace; `plain` for base models. Scored after a label so the label is the whole answer."""
        if not self.chat:
            return plain
        _, sep, after = self._apply("", "x", assistant=_SLOT).partition(_SLOT)
        end = after.rstrip()
        if not sep or not end:
            eos = getattr(self.tokenizer, "eos_token", None)
            if not eos:
                raise ChatFormatError("the chat template closes no assistant turn and the tokenizer has no EOS")
            return str(eos)
        return end
