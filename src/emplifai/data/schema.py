"""The raw-data contract: which tables, which columns, which ids."""

from __future__ import annotations

from collections.abc import Sequence
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
# human_ratings.* may also be wide, as a spreadsheet is filled in: RATING_KEYS plus one column per criterion
# (data.criteria), an empty cell = not rated; it is melted to the long form above.
RATING_KEYS = ("response_id", "rater_id")


def ratings_are_wide(columns: Sequence[str], criteria: Sequence[str]) -> bool:
    """Told by the header: both keys, no `criterion`/`score` column, at least one criterion column."""
    cols = set(columns)
    return set(RATING_KEYS) <= cols and not {"criterion", "score"} & cols and any(c in cols for c in criteria)

SPLIT_COLUMNS = ["dialogue_id", "situation_id", "emotion", "situation", "patient", "supporter", "split"]
