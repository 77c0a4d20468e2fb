"""Validate a raw data directory: every problem named by file, row and reason; nothing silently lost.

Rows are checked table by table in dependency order (situations → dialogues → rated responses →
ratings), so a dialogue whose situation was rejected is itself rejected with that reason. Human ratings in a
wide table or a Label Studio export are turned long first (data/io.py) and checked row by row like any other.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emplifai.data.io import (
    AT_COLUMN,
    ROW_COLUMN,
    TableError,
    find_table,
    melt_wide,
    read_table,
    unknown_files,
)
from emplifai.data.schema import (
    DIALOGUES,
    HUMAN_RATINGS,
    RATED_RESPONSES,
    RATING_KEYS,
    SITUATIONS,
    TABLES,
    TableSpec,
    ratings_are_wide,
)
from emplifai.data.taxonomy import Taxonomy

REJECTED_COLUMNS = ["file", "row", "column", "reason", "record"]


@dataclass
class Problem:
    file: str
    row: int | None
    column: str
    reason: str
    record: str = ""
    unit: str = "row"  # what `row` counts: a line, a .json record, a Label Studio task

    def __str__(self) -> str:
        where = f"{self.unit} {self.row}" if self.row else "file"
        col = f" [{self.column}]" if self.column else ""
        return f"{self.file}: {where}{col}: {self.reason}"


@dataclass
class Validated:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # clean rows, no ROW_COLUMN
    problems: list[Problem] = field(default_factory=list)
    fatal: bool = False  # a required file/column is missing: nothing can run, strict or not
    encodings: dict[str, str] = field(default_factory=dict)
    imports: dict[str, dict] = field(default_factory=dict)  # how a converted file was read (wide, Label Studio)
    notes: list[str] = field(default_factory=list)  # the same in words, for the log
    unknown_files: dict[str, str] = field(default_factory=dict)  # entries of raw_dir no table reads → why

    def rejected_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.problems], columns=REJECTED_COLUMNS)


def _text(value: str | None, nfkc: bool) -> str:
    if value is None:
        return ""
    value = unicodedata.normalize("NFKC", value) if nfkc else value
    return value.strip()


INTERNAL = (ROW_COLUMN, AT_COLUMN)


def _record(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k not in INTERNAL}, ensure_ascii=False)


def rating_value(value: str) -> int | None:
    """'4', '４', '4.0' → 4; anything else → None."""
    text = unicodedata.normalize("NFKC", value or "").strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


class _Checker:
    def __init__(self, raw_dir: Path, taxonomy: Taxonomy, criteria: list[str], nfkc: bool) -> None:
        self.raw_dir, self.taxonomy, self.criteria, self.nfkc = raw_dir, taxonomy, criteria, nfkc
        self.out = Validated()

    def load(self, spec: TableSpec) -> pd.DataFrame | None:
        try:
            path = find_table(self.raw_dir, spec.stem)
            if path is None:
                if not spec.optional_file:
                    self.fail(f"{self.raw_dir / spec.stem}.*", None, "",
                              "required file missing (situations.* and dialogues.* are required; "
                              ".csv .tsv .jsonl .parquet .xlsx)")
                return None
            table = read_table(path)
        except TableError as err:
            self.fail(str(err.file), err.row, "", err.reason)
            return None
        if table.encoding:
            self.out.encodings[spec.stem] = table.encoding
        frame = table.frame
        if table.summary:
            self.imported(spec.stem, table.summary, f"{path}: {table.note}")
        if spec is HUMAN_RATINGS and ratings_are_wide(frame.columns, self.criteria):
            frame = self.melt(path, frame)
        missing = [c for c in spec.required if c not in frame.columns]
        if missing:
            hint = (f"; or a wide table: {', '.join(RATING_KEYS)} and one column per criterion "
                    f"({', '.join(self.criteria)})" if spec is HUMAN_RATINGS else "")
            if spec is HUMAN_RATINGS and {"annotator", "annotation_id"} <= set(frame.columns):
                hint += "; this looks like Label Studio's JSON-MIN export: export as JSON (the full format)"
            self.fail(str(path), 1, ",".join(missing), f"missing required column(s) {missing}; "
                      f"found {[c for c in frame.columns if c not in INTERNAL]}{hint}")
            return None
        frame.attrs["file"] = str(path)
        frame.attrs["unit"] = table.unit
        frame.attrs["dates"] = table.dates
        return frame

    def melt(self, path: Path, frame: pd.DataFrame) -> pd.DataFrame:
        """A wide ratings table, long: one row per filled criterion cell; a bad score names that column."""
        present = [c for c in self.criteria if c in frame.columns]
        long = melt_wide(frame, RATING_KEYS, present, "criterion", "score")
        long.attrs["wide"] = True
        absent = [c for c in self.criteria if c not in present]
        self.imported("human_ratings", {"format": "wide", "rows": len(frame), "criteria": present,
                                        "ratings": len(long)},
                      f"{path}: wide table: {len(frame)} rows × {len(present)} criterion columns → {len(long)} "
                      f"ratings (empty cells are not rated)" + (f"; no column for {absent}" if absent else ""))
        return long

    def imported(self, stem: str, summary: dict, note: str) -> None:
        self.out.imports[stem] = summary
        self.out.notes.append(note)

    def fail(self, file: str, row: int | None, column: str, reason: str) -> None:
        self.out.fatal = True
        self.out.problems.append(Problem(file, row, column, reason))

    def check_rows(self, frame: pd.DataFrame, spec: TableSpec, extra) -> pd.DataFrame:
        """Common checks (empty text, duplicate ids) + table-specific `extra(row) -> reason | None`."""
        file, unit, kept, first_seen = frame.attrs["file"], frame.attrs.get("unit", "row"), [], {}
        dates, wide = frame.attrs.get("dates") or set(), bool(frame.attrs.get("wide"))
        columns = [c for c in frame.columns if c not in INTERNAL]
        for row in frame.to_dict("records"):
            for col in columns:
                row[col] = _text(row[col], self.nfkc) if row[col] is not None else None
            reasons: list[tuple[str, str]] = []
            for col in spec.required:
                if not row[col]:
                    reasons.append((col, f"empty or whitespace-only '{col}'"))
                source = row["criterion"] if wide and col == "score" else col  # wide: the criterion's column
                if (row[ROW_COLUMN], source) in dates:
                    reasons.append((source, f"'{source}' is an Excel date cell ({row[col]}): Excel turns what is "
                                            f"typed like 1-2 or 2024/1/5 into a date; format the column as Text "
                                            f"and retype it"))
            if spec.id_column and row[spec.id_column]:
                rid = row[spec.id_column]
                if rid in first_seen:
                    reasons.append((spec.id_column,
                                    f"duplicate {spec.id_column} '{rid}' (first at {unit} {first_seen[rid]})"))
                else:
                    first_seen[rid] = row[ROW_COLUMN]
            if not reasons:
                reasons = extra(row)  # may normalize values in place (emotion name → key)
            at = f" ({row[AT_COLUMN]})" if row.get(AT_COLUMN) else ""
            for col, reason in reasons:
                self.out.problems.append(Problem(file, int(row[ROW_COLUMN]), col, reason + at, _record(row), unit))
            if not reasons:
                kept.append({c: row[c] for c in columns})
        return pd.DataFrame(kept, columns=columns, dtype=object)

    def unknown_emotion(self, value: str) -> str:
        valid = ", ".join(f"{e.key}({e.ja})" for e in self.taxonomy.emotions)
        return f"unknown emotion '{value}'; valid ({self.taxonomy.name}): {valid}"


def validate(raw_dir: Path, taxonomy: Taxonomy, criteria: list[str], nfkc: bool = True) -> Validated:
    chk = _Checker(Path(raw_dir), taxonomy, list(criteria), nfkc)
    if not chk.raw_dir.is_dir():
        chk.fail(str(raw_dir), None, "", "raw data directory not found")
        return chk.out
    chk.out.unknown_files = unknown_files(chk.raw_dir, [spec.stem for spec in TABLES])
    frames = {spec.stem: chk.load(spec) for spec in TABLES}
    if chk.out.fatal or frames["situations"] is None or frames["dialogues"] is None:
        chk.out.fatal = True
        return chk.out
    def raw_rows(stem: str, column: str) -> tuple[str, dict[str, int]]:
        frame = frames[stem]
        return Path(frame.attrs["file"]).name, dict(zip(frame[column], frame[ROW_COLUMN], strict=True))

    def missing(column: str, value: str, stem: str, valid: set[str]) -> list[tuple[str, str]]:
        """Reason a foreign key fails: the parent row was rejected, or never existed."""
        if value in valid:
            return []
        file, rows = raw_rows(stem, column)
        if value in rows:
            return [(column, f"{column.removesuffix('_id')} '{value}' was rejected ({file} row {rows[value]})")]
        return [(column, f"{column} '{value}' not found in {file}")]


    def situation(row):
        key = taxonomy.lookup(row["emotion"])
        if key is None:
            return [("emotion", chk.unknown_emotion(row["emotion"]))]
        row["emotion"] = key
        return []

    situations = chk.check_rows(frames["situations"], SITUATIONS, situation)
    emotion_of = dict(zip(situations["situation_id"], situations["emotion"], strict=True))

    def dialogue(row):
        sid = row["situation_id"]
        if reason := missing("situation_id", sid, "situations", set(emotion_of)):
            return reason
        if "emotion" in row and row["emotion"]:
            key = taxonomy.lookup(row["emotion"])
            if key is None:
                return [("emotion", chk.unknown_emotion(row["emotion"]))]
            if key != emotion_of[sid]:
                return [("emotion", f"emotion '{row['emotion']}' disagrees with situation '{sid}' ({emotion_of[sid]})")]
            row["emotion"] = key
        return []

    dialogues = chk.check_rows(frames["dialogues"], DIALOGUES, dialogue)
    chk.out.tables = {"situations": situations, "dialogues": dialogues}
    dialogue_ids = set(dialogues["dialogue_id"])

    if frames["rated_responses"] is not None:
        def response(row):
            return missing("dialogue_id", row["dialogue_id"], "dialogues", dialogue_ids)

        chk.out.tables["rated_responses"] = chk.check_rows(frames["rated_responses"], RATED_RESPONSES, response)
    if frames["human_ratings"] is not None:
        response_ids = set(chk.out.tables.get("rated_responses", pd.DataFrame(columns=["response_id"]))["response_id"])
        seen: dict[tuple, int] = {}
        wide = bool(frames["human_ratings"].attrs.get("wide"))
        unit = frames["human_ratings"].attrs.get("unit", "row")

        def rating(row):
            if row["response_id"] not in response_ids:
                if frames["rated_responses"] is not None and row["response_id"] in set(frames["rated_responses"]["response_id"]):
                    return missing("response_id", row["response_id"], "rated_responses", response_ids)
                where = (f"no such response_id in {Path(frames['rated_responses'].attrs['file']).name} (a rating "
                         f"of another data version?)" if frames["rated_responses"] is not None
                         else "there is no rated_responses.* file")
                return [("response_id", f"rating for missing response '{row['response_id']}': {where}")]
            if row["criterion"] not in chk.criteria:
                return [("criterion", f"unknown criterion '{row['criterion']}'; valid: {', '.join(chk.criteria)}")]
            score = rating_value(row["score"])
            column = row["criterion"] if wide else "score"  # wide: the score sits in the criterion's column
            if score is None or not 1 <= score <= 5:
                return [(column, f"score '{row['score']}' is not an integer from 1 to 5")]
            key = (row["response_id"], row["rater_id"], row["criterion"])
            if key in seen:
                return [(column, f"duplicate rating for {key} (first at {unit} {seen[key]})")]
            seen[key] = row[ROW_COLUMN]
            row["score"] = str(score)
            return []

        ratings = chk.check_rows(frames["human_ratings"], HUMAN_RATINGS, rating)
        ratings["score"] = ratings["score"].astype(int)
        chk.out.tables["human_ratings"] = ratings
    return chk.out
