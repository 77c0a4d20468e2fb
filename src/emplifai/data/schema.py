"""The raw-data contract: which tables, which columns, which ids."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableSpec:
    stem: str
    required: tuple[str, ...]
    id_column: str | None
    text_columns: tuple[str, ...]
    optional_file: bool


SITUATIONS = TableSpec("situations", ("situation_id", "emotion", "situation"), "situation_id",
                       ("situation",), optional_file=False)
DIALOGUES = TableSpec("dialogues", ("dialogue_id", "situation_id", "patient", "supporter"), "dialogue_id",
                      ("patient", "supporter"), optional_file=False)
RATED_RESPONSES = TableSpec("rated_responses", ("response_id", "dialogue_id", "system", "response"),
                            "response_id", ("system", "response"), optional_file=True)
HUMAN_RATINGS = TableSpec("human_ratings", ("response_id", "rater_id", "criterion", "score"), None,
                          ("rater_id", "criterion"), optional_file=True)
TABLES = (SITUATIONS, DIALOGUES, RATED_RESPONSES, HUMAN_RATINGS)

SPLIT_COLUMNS = ["dialogue_id", "situation_id", "emotion", "situation", "patient", "supporter", "split"]
