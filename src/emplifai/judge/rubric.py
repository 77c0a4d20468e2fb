"""Rubric and grading prompt as data: criteria with Japanese definitions and 1–5 anchors, templates in conf/judge/.

A prompt is split into a *head* (instructions + the whole rubric: identical for every response), a
*context* (situation + patient + response: identical for every criterion of one response) and a short
per-criterion *question*, so hf_local encodes each part once. The judge never
sees the system name; only criteria marked `with_emotion` see the gold emotion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from emplifai.core.errors import UserError
from emplifai.core.paths import resolve
from emplifai.llm.cache import stable_hash
from emplifai.lm.chat import ChatFormat


class RubricError(UserError):
    pass


@dataclass(frozen=True)
class Criterion:
    key: str
    ja: str
    definition: str
    anchors: tuple[tuple[int, str], ...]
    with_emotion: bool = False


@dataclass(frozen=True)
class Rubric:
    name: str
    lo: int
    hi: int
    criteria: tuple[Criterion, ...]

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.criteria]

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> Rubric:
        if not isinstance(data, Mapping) or not isinstance(data.get("criteria"), list) or not data["criteria"]:
            raise RubricError(f"{source}: a rubric needs `name` and a non-empty `criteria` list")
        lo, hi = (int(x) for x in data.get("scale") or (1, 5))
        if not 0 <= lo < hi <= 9:
            raise RubricError(f"{source}: scale must be two single digits lo < hi, got {data.get('scale')}")
        criteria = []
        for i, c in enumerate(data["criteria"], start=1):
            if not isinstance(c, Mapping) or not all(c.get(k) for k in ("key", "ja", "definition")):
                raise RubricError(f"{source}: criterion #{i} needs `key`, `ja` and `definition` (got {c!r})")
            anchors = {int(k): str(v).strip() for k, v in (c.get("anchors") or {}).items()}
            if anchors and set(anchors) != set(range(lo, hi + 1)):
                raise RubricError(f"{source}: criterion {c['key']!r} anchors must cover {lo}..{hi}, "
                                  f"got {sorted(anchors)}")
            criteria.append(Criterion(str(c["key"]), str(c["ja"]), str(c["definition"]).strip(),
                                      tuple(sorted(anchors.items())), bool(c.get("with_emotion", False))))
        keys = [c.key for c in criteria]
        if len(set(keys)) != len(keys):
            raise RubricError(f"{source}: duplicate criterion keys {sorted({k for k in keys if keys.count(k) > 1})}")
        return cls(str(data.get("name") or Path(source).stem), lo, hi, tuple(criteria))

    @classmethod
    def from_config(cls, judge_cfg: DictConfig) -> Rubric:
        """`judge.rubric_file` (any YAML) wins over the `judge/rubric` config group."""
        if judge_cfg.get("rubric_file"):
            path = resolve(judge_cfg.rubric_file)
            if not path.exists():
                raise RubricError(f"rubric file not found: {path} (judge.rubric_file)")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                raise RubricError(f"{path}: not valid YAML ({err})") from err
            return cls.from_mapping(data, str(path))
        if judge_cfg.get("rubric") is None:
            raise RubricError("no rubric: set judge/rubric=<name> (conf/judge/rubric/) or judge.rubric_file=PATH")
        return cls.from_mapping(OmegaConf.to_container(judge_cfg.rubric, resolve=True), "judge.rubric")


@dataclass(frozen=True)
class JudgeItem:
    """One response to judge, with its dialogue context; `system` is for reporting only, never prompted."""

    item_id: str
    dialogue_id: str
    system: str
    source: str
    situation: str
    patient: str
    response: str
    emotion_ja: str


class JudgePrompt:
    """Fills the Japanese templates of `judge.grading_prompt` for one rubric (conf/judge/grading_prompt/ja.yaml)."""

    FIELDS = ("instructions", "criterion_block", "context", "question", "emotion_line", "score_cue",
              "json_instruction")
    # chat models (hf_local with model.chat_format=chat_template): the digit is read right after the assistant
    # generation prompt, so the user turn ends by asking for the bare number
    ANSWER_INSTRUCTION = "{lo}〜{hi}の整数一つだけで答えてください。"

    def __init__(self, prompt_cfg: Mapping[str, Any] | DictConfig, rubric: Rubric) -> None:
        cfg = OmegaConf.to_container(prompt_cfg, resolve=True) if isinstance(prompt_cfg, DictConfig) else prompt_cfg
        missing = [f for f in self.FIELDS if f not in (cfg or {})]
        if missing:
            raise RubricError(f"judge.grading_prompt is missing {missing} (see conf/judge/grading_prompt/ja.yaml)")
        self.t = {f: str(cfg[f]) for f in self.FIELDS}
        self.t["answer_instruction"] = str(cfg.get("answer_instruction") or self.ANSWER_INSTRUCTION)
        self.rubric = rubric
        try:
            self.head = self._instructions()
        except (KeyError, IndexError, ValueError) as err:
            raise RubricError(f"judge.grading_prompt: bad placeholder in a template ({err!r})") from err

    @property
    def fingerprint(self) -> str:
        """Hash of templates + rubric: part of every cache key, so editing either re-judges."""
        return stable_hash({"prompt": self.t, "rubric": repr(self.rubric)})

    def _instructions(self) -> str:
        r = self.rubric
        blocks = "\n\n".join(
            self.t["criterion_block"].format(criterion=c.ja, definition=c.definition,
                                             anchors="\n".join(f"{s}: {text}" for s, text in c.anchors))
            for c in r.criteria)
        return self.t["instructions"].format(lo=r.lo, hi=r.hi, rubric=blocks)

    def context(self, item: JudgeItem) -> str:
        return self.t["context"].format(situation=item.situation, patient=item.patient, response=item.response)

    def question(self, item: JudgeItem, criterion: Criterion) -> str:
        emotion = self.t["emotion_line"].format(emotion=item.emotion_ja) if criterion.with_emotion else ""
        return self.t["question"].format(criterion=criterion.ja, emotion_line=emotion)

    def suffix(self, item: JudgeItem, criterion: Criterion) -> str:
        """hf_local: the question plus the cue after which the score digit is read."""
        return self.question(item, criterion) + self.t["score_cue"]

    def local_parts(self, item: JudgeItem, criteria: Sequence[Criterion], fmt: ChatFormat
                    ) -> tuple[str, str, list[str]]:
        """hf_local: (head, body, one suffix per criterion); head + body + suffix is the whole prompt.
        Plain: instructions | context | question + score cue. Chat: the template's system turn with the
        instructions and the user turn's start | context | question + answer instruction + the template up
        to the assistant's answer, where the digit is read. The head is the same for every response."""
        if not fmt.chat:
            return self.head, self.context(item), [self.suffix(item, c) for c in criteria]
        before, after = fmt.frame(self.head)
        ask = self.t["answer_instruction"].format(lo=self.rubric.lo, hi=self.rubric.hi)
        return before, self.context(item).lstrip("\n"), [
            self.question(item, c).rstrip() + "\n\n" + ask + after for c in criteria]

    def full_prompt(self, item: JudgeItem, criterion: Criterion) -> str:
        return self.head + self.context(item) + self.suffix(item, criterion)

    def chat_messages(self, item: JudgeItem, criterion: Criterion) -> list[dict[str, str]]:
        """openai: instructions + rubric as system message; context + question + JSON ask as user message."""
        r = self.rubric
        user = (self.context(item).strip() + "\n\n" + self.question(item, criterion).strip() + "\n\n"
                + self.t["json_instruction"].format(lo=r.lo, hi=r.hi))
        return [{"role": "system", "content": self.head}, {"role": "user", "content": user}]
