"""The bad-input matrix: odd files a user really hands in, each with its expected outcome — it loads (rows kept,
rows rejected) or it fails with a problem naming file, row and reason (a UserError: no traceback).

Every case writes real files into tiny_raw (tests/conftest.py: 8 situations, 24 dialogues, 2 rated responses,
2 ratings) and runs the real validation; the last tests run the prepare stage itself, in process and as a CLI.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from conftest import compose_cfg, write_csv
from emplifai.core.errors import UserError
from emplifai.data.io import TableError, read_table
from emplifai.data.taxonomy import Taxonomy
from emplifai.prepare import __main__ as prepare
from emplifai.prepare.validate import Validated, validate
from test_prepare import ENV

CFG = compose_cfg()
TAX = Taxonomy.from_config(CFG.taxonomy)
CRITERIA = list(CFG.data.criteria)
TINY = {"situations": 8, "dialogues": 24, "rated_responses": 2, "human_ratings": 2}
SIT_H = ["situation_id", "emotion", "situation"]
RAT_H = ["response_id", "rater_id", "criterion", "score"]


# ---- writing odd files ------------------------------------------------------------------------------------

def table(raw: Path, stem: str) -> tuple[list[str], list[list[str]]]:
    """tiny_raw's csv as header + rows (to rewrite it in another shape)."""
    with open(raw / f"{stem}.csv", encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def write_xlsx(path: Path, sheets: dict[str, list[list]], merge: tuple[str, ...] = (), formats: dict | None = None
               ) -> None:
    """A workbook with these sheets (values as given: a datetime is a date cell); `merge` ranges on the first
    sheet; `formats` {cell: number format}."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        ws = book.create_sheet(name)
        for row in rows:
            ws.append(row)
    first = book.worksheets[0]
    for rng in merge:
        first.merge_cells(rng)
    for cell, fmt in (formats or {}).items():
        first[cell].number_format = fmt
    book.save(path)


def to_xlsx(raw: Path, stem: str, edit: Callable[[list, list[list]], object] = lambda h, rows: None, **kw) -> None:
    """tiny_raw's csv as an .xlsx, edited (header, rows) first."""
    header, rows = table(raw, stem)
    edit(header, rows)
    (raw / f"{stem}.csv").unlink()
    write_xlsx(raw / f"{stem}.xlsx", {"Sheet1": [header, *rows]}, **kw)


def edit_csv(raw: Path, stem: str, edit: Callable[[list[str], list[list[str]]], None], encoding="utf-8") -> None:
    header, rows = table(raw, stem)
    edit(header, rows)
    write_csv(raw / f"{stem}.csv", header, rows, encoding=encoding)


def rename_ids(raw: Path, old: str, new: str) -> None:
    """Situation `old` becomes `new` in situations.csv and dialogues.csv."""
    edit_csv(raw, "situations", lambda h, rows: [r.__setitem__(0, new) for r in rows if r[0] == old])
    edit_csv(raw, "dialogues", lambda h, rows: [r.__setitem__(1, new) for r in rows if r[1] == old])


def ratings(raw: Path, rows: list[list[str]]) -> None:
    write_csv(raw / "human_ratings.csv", RAT_H, rows)


def replace_bytes(raw: Path, name: str, old: bytes, new: bytes) -> None:
    data = (raw / name).read_bytes()
    assert old in data
    (raw / name).write_bytes(data.replace(old, new, 1))


def ls_export(raw: Path, annotations: list[dict]) -> None:
    (raw / "human_ratings.csv").unlink()
    (raw / "human_ratings.json").write_text(json.dumps([{"id": 101, "data": {"response_id": "r1"},
                                                         "annotations": annotations}]), encoding="utf-8")


# ---- expected outcomes ------------------------------------------------------------------------------------

@dataclass
class Loads:
    """Validation passes: `kept` rows per table (tiny_raw's counts unless given), `rejected` problems."""
    kept: dict[str, int] | None = None
    rejected: int = 0
    check: Callable[[Validated], object] | None = None


@dataclass
class Fails:
    """A problem at `file` `row` (None: the whole file) whose reason holds `words`; `fatal`: nothing runs (a
    whole-file problem) rather than the row rejected (strict: exit 2; data.strict=false: dropped and listed)."""
    file: str
    row: int | None
    words: str
    fatal: bool
    rejected: int | None = None  # all problems, cascades included


def _date_in_text(header: list, rows: list[list]) -> None:
    rows[1][2] = dt.datetime(2024, 1, 5)  # s1's situation: what Excel makes of 2024/1/5 typed in a cell


def _merged_dialogues(raw: Path) -> None:
    """dialogues.xlsx as filled in by hand: situation_id merged down over its 3 dialogues, a blank row."""
    header, rows = table(raw, "dialogues")
    for i, row in enumerate(rows):
        if i % 3:
            row[1] = None  # under the merge
    rows.insert(3, [None] * 4)
    (raw / "dialogues.csv").unlink()
    merges = ("B2:B4", *(f"B{3 + 3 * k}:B{5 + 3 * k}" for k in range(1, 8)))  # after the blank row 5: +1
    write_xlsx(raw / "dialogues.xlsx", {"dialogues": [header, *rows]}, merge=merges)


def _two_sheets(raw: Path, names: tuple[str, str], first: list[list]) -> None:
    header, rows = table(raw, "situations")
    (raw / "situations.csv").unlink()
    write_xlsx(raw / "situations.xlsx", {names[0]: first, names[1]: [header, *rows]})


MEMO = [["memo"], ["2026年1月の入力分"]]


def _check_multiline(result: Validated) -> None:
    assert result.tables["situations"]["situation"].iloc[1] == 'He said "痛い, とても"\n二行目'


def _jsonl(raw: Path, stem: str, edit: Callable[[list[dict]], None]) -> None:
    header, rows = table(raw, stem)
    records = [dict(zip(header, r, strict=True)) for r in rows]
    edit(records)
    (raw / f"{stem}.csv").unlink()
    (raw / f"{stem}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")


def _situations(result: Validated, column: str) -> list[str]:
    return result.tables["situations"][column].tolist()


def _mixed_encodings(raw: Path) -> None:
    for stem, encoding in (("situations", "cp932"), ("dialogues", "utf-8-sig"), ("rated_responses", "utf-8")):
        edit_csv(raw, stem, lambda h, rows: None, encoding=encoding)


CASES: dict[str, tuple[Callable[[Path], None], Loads | Fails]] = {
    # --- Excel ----------------------------------------------------------------------------------------------
    "xlsx: a date cell in a text column (s1's situation) is rejected, not turned into text":
        (lambda raw: to_xlsx(raw, "situations", _date_in_text),
         Fails("situations.xlsx", 3, "'situation' is an Excel date cell (2024-01-05)", fatal=False, rejected=6)),
    "xlsx: a date cell in an extra column is kept as ISO text":
        (lambda raw: to_xlsx(raw, "situations", lambda h, rows: (h.append("entered"), [
            r.append(dt.datetime(2024, 1, 5, 9, 30)) for r in rows])),
         Loads(check=lambda r: _situations(r, "entered")[0] == "2024-01-05 09:30:00")),
    "xlsx: a numeric id under a 000 number format reads as written (007)":
        (lambda raw: (rename_ids(raw, "s0", "007"), to_xlsx(raw, "situations", lambda h, rows: rows[0].__setitem__(0, 7),
                                                            formats={"A2": "000"})),
         Loads(check=lambda r: _situations(r, "situation_id")[0] == "007")),
    "xlsx: a text id 007 stays 007": (lambda raw: (rename_ids(raw, "s0", "007"), to_xlsx(raw, "situations")),
                                      Loads(check=lambda r: _situations(r, "situation_id")[0] == "007")),
    "xlsx: a plain number 7 (Excel dropped the zeros) does not match dialogues' 007":
        (lambda raw: (rename_ids(raw, "s0", "007"), to_xlsx(raw, "situations", lambda h, rows: rows[0].__setitem__(0, 7))),
         Fails("dialogues.csv", 2, "situation_id '007' not found in situations.xlsx", fatal=False, rejected=3 + 2)),
    "xlsx: the first sheet empty, the data on the second":
        (lambda raw: _two_sheets(raw, ("Sheet1", "Sheet2"), []), Loads()),
    "xlsx: several sheets with data, one named like the table": (lambda raw: _two_sheets(raw, ("memo", "situations"), MEMO),
                                                                 Loads()),
    "xlsx: several sheets with data, none named like the table": (lambda raw: _two_sheets(raw, ("memo", "Sheet2"), MEMO),
                                                                  Fails("situations.xlsx", None, "several sheets hold data "
                                                                        "('memo', 'Sheet2')", fatal=True)),
    "xlsx: every sheet empty": (lambda raw: ((raw / "situations.csv").unlink(), write_xlsx(
        raw / "situations.xlsx", {"Sheet1": [], "Sheet2": [[None, "  "]]})),
        Fails("situations.xlsx", None, "empty file (no sheet holds data; sheets: Sheet1, Sheet2)", fatal=True)),
    "xlsx: merged cells down a column and a blank row":
        (_merged_dialogues, Loads(check=lambda r: r.imports["dialogues"]["merged"][0] == "B2:B4")),
    "xlsx: cells merged across columns": (lambda raw: to_xlsx(raw, "situations", merge=("B3:C3",)),
                                          Fails("situations.xlsx", 3, "merged across columns", fatal=True)),
    "xlsx: an error cell (#N/A) is missing, not the text #N/A":
        (lambda raw: to_xlsx(raw, "situations", lambda h, rows: rows[2].__setitem__(2, "#N/A")),
         Fails("situations.xlsx", 4, "empty or whitespace-only 'situation'", fatal=False, rejected=1 + 3)),
    "xlsx: NA / null stay text (pandas would make them missing)":
        (lambda raw: to_xlsx(raw, "situations", lambda h, rows: rows[0].__setitem__(2, "NA")),
         Loads(check=lambda r: _situations(r, "situation")[0] == "NA")),
    "xlsx: a header duplicated once trimmed": (lambda raw: to_xlsx(raw, "situations", lambda h, rows: (
        h.append("emotion "), [r.append("x") for r in rows])),
        Fails("situations.xlsx", 1, "column 'emotion' is in the header twice (columns B and D", fatal=True)),
    # --- ids and text as written ------------------------------------------------------------------------------
    "csv: ids with leading zeros stay text": (lambda raw: rename_ids(raw, "s0", "007"),
                                              Loads(check=lambda r: r.tables["dialogues"]["situation_id"][0] == "007")),
    "jsonl: ids with leading zeros stay text": (lambda raw: (rename_ids(raw, "s0", "007"),
                                                             _jsonl(raw, "situations", lambda recs: None)),
                                                Loads(check=lambda r: _situations(r, "situation_id")[0] == "007")),
    "jsonl: a nested value is its JSON text": (lambda raw: _jsonl(raw, "situations", lambda recs: [
        rec.__setitem__("meta", {"来院": [1, 2]}) for rec in recs]),
        Loads(check=lambda r: _situations(r, "meta")[0] == '{"来院": [1, 2]}')),
    "jsonl: U+2028 inside a text is one record": (lambda raw: _jsonl(raw, "situations", lambda recs: recs[0].__setitem__(
        "situation", "一行目\u2028二行目")), Loads(check=lambda r: _situations(r, "situation")[0] == "一行目\u2028二行目")),
    "jsonl: a key given twice in one object": (lambda raw: (_jsonl(raw, "situations", lambda recs: None),
                                                            replace_bytes(raw, "situations.jsonl", b'"emotion"',
                                                                          b'"emotion ": "joy", "emotion"')),
                                               Fails("situations.jsonl", 1, "key 'emotion' given twice", fatal=True)),
    "jsonl: null in a required column": (lambda raw: _jsonl(raw, "situations", lambda recs: recs[7].__setitem__(
        "situation", None)), Fails("situations.jsonl", 8, "empty or whitespace-only 'situation'", fatal=False)),
    "csv: quotes, commas and newlines inside fields": (lambda raw: edit_csv(raw, "situations", lambda h, rows: rows[1].__setitem__(
        2, 'He said "痛い, とても"\n二行目')), Loads(check=_check_multiline)),
    "csv: a row after a multi-line field is named by its own line": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        rows[1].__setitem__(2, "一行目\n二行目"), rows[2].__setitem__(1, "hunger"))),
        Fails("situations.csv", 5, "unknown emotion 'hunger'", fatal=False)),
    "csv: a multi-line row is named by the line it starts on": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        rows[1].__setitem__(2, "一行目\n二行目"), rows[1].__setitem__(1, "hunger"))),
        Fails("situations.csv", 3, "unknown emotion 'hunger'", fatal=False)),
    "csv: trailing spaces in the header": (lambda raw: replace_bytes(raw, "situations.csv", b"situation_id,emotion,",
                                                                     b"situation_id ,emotion  , "), Loads()),
    "csv: a header duplicated once trimmed": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        h.append("emotion "), [r.append("joy") for r in rows])),
        Fails("situations.csv", 1, "column 'emotion' is in the header twice (columns 2 and 4: 'emotion' and "
                                   "'emotion '", fatal=True)),
    "csv: a trailing separator on every line (Excel's empty columns)": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        h.append(""), [r.append("") for r in rows])), Loads()),
    "csv: a column with values but no name": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        h.append(""), [r.append("memo") for r in rows])), Fails("situations.csv", 1, "column 4 has values but no name",
                                                                 fatal=True)),
    "csv: an extra unknown column is kept": (lambda raw: edit_csv(raw, "dialogues", lambda h, rows: (
        h.append("note"), [r.append("確認済み") for r in rows])),
        Loads(check=lambda r: set(r.tables["dialogues"]["note"]) == {"確認済み"})),
    "csv: a required column missing (named)": (lambda raw: edit_csv(raw, "situations", lambda h, rows: (
        h.__setitem__(1, "Emotion"))), Fails("situations.csv", 1, "missing required column(s) ['emotion']; found "
                                                                  "['situation_id', 'Emotion', 'situation']", fatal=True)),
    "csv: ragged: a row with too many fields": (lambda raw: edit_csv(raw, "situations", lambda h, rows: rows[3].append("x")),
                                                Fails("situations.csv", 5, "4 fields but the header has 3", fatal=True)),
    "csv: ragged: a row with too few fields": (lambda raw: edit_csv(raw, "situations", lambda h, rows: rows[3].pop()),
                                               Fails("situations.csv", 5, "empty or whitespace-only 'situation'",
                                                     fatal=False, rejected=1 + 3)),
    "csv: duplicate ids": (lambda raw: edit_csv(raw, "situations", lambda h, rows: rows[5].__setitem__(0, "s2")),
                           Fails("situations.csv", 7, "duplicate situation_id 's2' (first at row 4)", fatal=False)),
    "csv: an id with a trailing space still matches": (lambda raw: edit_csv(raw, "dialogues", lambda h, rows: rows[0]
                                                                            .__setitem__(1, "s0 ")), Loads()),
    "csv: emotion in full-width letters, with a trailing (full-width) space": (lambda raw: edit_csv(
        raw, "situations", lambda h, rows: (rows[0].__setitem__(1, "ｓａｄｎｅｓｓ "), rows[1].__setitem__(1, "喜び\u3000"))),
        Loads(check=lambda r: _situations(r, "emotion")[:2] == ["sadness", "joy"])),
    # --- bytes and encodings ----------------------------------------------------------------------------------
    "encodings: one cp932, one utf-8-sig, one utf-8": (_mixed_encodings, Loads(check=lambda r: r.encodings == {
        "situations": "cp932", "dialogues": "utf-8-sig", "rated_responses": "utf-8", "human_ratings": "utf-8"})),
    "encodings: UTF-16 with its byte-order mark (Excel's Unicode text)": (lambda raw: edit_csv(
        raw, "situations", lambda h, rows: None, encoding="utf-16"), Loads(check=lambda r: r.encodings["situations"] ==
                                                                           "utf-16")),
    "encodings: EUC-JP (neither UTF-8 nor cp932)": (lambda raw: edit_csv(raw, "situations", lambda h, rows: None,
                                                                         encoding="euc_jp"),
                                                    Fails("situations.csv", None, "reads as EUC-JP", fatal=True)),
    "encodings: Latin-1 (neither UTF-8 nor cp932)": (lambda raw: write_csv(raw / "rated_responses.csv", [
        "response_id", "dialogue_id", "system", "response"], [["r1", "d00", "café", "ok"], ["r2", "d10", "x", "ok"]],
        encoding="latin-1"),
                                                     Fails("rated_responses.csv", 2, "undecodable bytes", fatal=True)),
    "bytes: a byte-order mark in the middle (two files pasted together)": (lambda raw: replace_bytes(
        raw, "situations.csv", b"s3,", b"\xef\xbb\xbfs3,"), Fails("situations.csv", 5, "byte-order mark (U+FEFF)", fatal=True)),
    "bytes: a NUL byte": (lambda raw: replace_bytes(raw, "situations.csv", b"s2,", b"s2\x00,"),
                          Fails("situations.csv", 4, "NUL byte", fatal=True)),
    "bytes: an empty file": (lambda raw: (raw / "dialogues.csv").write_bytes(b""),
                             Fails("dialogues.csv", None, "empty file", fatal=True)),
    "bytes: a header only": (lambda raw: write_csv(raw / "situations.csv", SIT_H, []),
                             Fails("situations.csv", None, "empty file (no data rows)", fatal=True)),
    # --- the folder ---------------------------------------------------------------------------------------------
    "folder: unknown files are named, never read": (lambda raw: [(raw / n).write_text("x", "utf-8") for n in
                                                                ("human_ratings.txt", "notes.xlsx", "dialogue.csv")],
                                                    Loads(check=lambda r: "did you mean dialogues.csv?" in
                                                          r.unknown_files["dialogue.csv"])),
    "folder: situations.CSV (a suffix in capitals) is read": (lambda raw: (raw / "situations.csv").rename(
        raw / "situations.CSV"), Loads(check=lambda r: r.unknown_files == {})),
    "folder: situations.xls (old Excel) is no table": (lambda raw: (raw / "situations.csv").rename(raw / "situations.xls"),
                                                       Fails("situations.*", None, "required file missing", fatal=True)),
    "folder: two files for one table": (lambda raw: to_xlsx(raw, "situations") or write_csv(raw / "situations.csv", SIT_H,
                                                                                             [["s0", "joy", "x"]]),
                                        Fails("situations.xlsx", None, "several files for 'situations'", fatal=True)),
    # --- ratings --------------------------------------------------------------------------------------------------
    "ratings: a response of another data version": (lambda raw: ratings(raw, [["r1", "a", "fluency", "5"],
                                                                             ["r7", "a", "fluency", "4"]]),
                                                    Fails("human_ratings.csv", 3, "rating for missing response 'r7': no such "
                                                          "response_id in rated_responses.csv (a rating of another data "
                                                          "version?)", fatal=False, rejected=1)),
    "ratings: score 0": (lambda raw: ratings(raw, [["r1", "a", "fluency", "0"]]),
                         Fails("human_ratings.csv", 2, "score '0' is not an integer from 1 to 5", fatal=False)),
    "ratings: score 6": (lambda raw: ratings(raw, [["r1", "a", "fluency", "6"]]),
                         Fails("human_ratings.csv", 2, "score '6' is not an integer from 1 to 5", fatal=False)),
    "ratings: score 3.5": (lambda raw: ratings(raw, [["r1", "a", "fluency", "3.5"]]),
                           Fails("human_ratings.csv", 2, "score '3.5' is not an integer from 1 to 5", fatal=False)),
    "ratings: score ３ (full-width) is 3": (lambda raw: ratings(raw, [["r1", "a", "fluency", "３"]]),
                                            Loads(kept=TINY | {"human_ratings": 1}, check=lambda r: r.tables[
                                                "human_ratings"]["score"].tolist() == [3])),
    "ratings: a Label Studio export with a cancelled annotation only": (lambda raw: ls_export(raw, [
        {"id": 1, "completed_by": 7, "was_cancelled": True, "result": [
            {"type": "rating", "from_name": "fluency", "value": {"rating": 4}}]}]),
        Fails("human_ratings.json", None, "empty file (no ratings (Label Studio export: 1 tasks, 0 annotations (1 "
                                          "cancelled", fatal=True)),
}


def test_the_matrix_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tiny_raw, case):
    setup, expected = CASES[case]
    setup(tiny_raw)
    result = validate(tiny_raw, TAX, CRITERIA)
    found = [str(p) for p in result.problems]
    if isinstance(expected, Loads):
        assert not result.fatal and len(result.problems) == expected.rejected, found
        kept = {name: len(frame) for name, frame in result.tables.items()}
        assert kept == (expected.kept or TINY)
    else:
        where = f"row {expected.row}" if expected.row else "file"
        hits = [p for p in result.problems if Path(p.file).name == expected.file and p.row == expected.row
                and expected.words in p.reason]
        assert hits, found
        assert f"{expected.file}: " in str(hits[0]) and where in str(hits[0])  # what the user reads
        assert result.fatal == expected.fatal, found
        if expected.rejected is not None:
            assert len(result.problems) == expected.rejected, found
    if isinstance(expected, Loads) and expected.check:
        assert expected.check(result) is not False


def test_a_whole_file_problem_is_a_user_error(tmp_path):
    """read_table on its own (no prepare around it) raises a UserError: `reported` prints it, no traceback."""
    path = tmp_path / "situations.csv"
    path.write_text("situation_id,emotion,situation,emotion \ns0,joy,a,joy\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"situations\.csv: row 1: column 'emotion' is in the header twice"):
        read_table(path)
    assert issubclass(TableError, UserError)


def test_xlsx_rows_are_excel_row_numbers(tiny_raw):
    """After a blank row and merged cells, a problem still names the row Excel shows."""
    _merged_dialogues(tiny_raw)
    book = openpyxl.load_workbook(tiny_raw / "dialogues.xlsx")
    ws = book.active
    ws["C10"] = "  "  # d21's patient, below the blank row 5: Excel row 10
    book.save(tiny_raw / "dialogues.xlsx")
    found = [str(p) for p in validate(tiny_raw, TAX, CRITERIA).problems]
    assert any("dialogues.xlsx: row 10 [patient]: empty or whitespace-only 'patient'" in p for p in found), found
    frame = read_table(tiny_raw / "dialogues.xlsx").frame
    assert frame.loc[frame["dialogue_id"] == "d21", "situation_id"].item() == "s2"  # filled down the merge


def test_prepare_lists_unknown_files_and_encodings_in_stats(make_cfg, tiny_raw, tmp_path, caplog):
    _mixed_encodings(tiny_raw)
    for name in ("human_ratings.txt", "notes.xlsx", "dialogue.csv"):
        (tiny_raw / name).write_text("x", encoding="utf-8")
    (tiny_raw / ".DS_Store").write_bytes(b"\x00")  # hidden files are not listed
    with caplog.at_level("WARNING"):
        prepare.run(make_cfg(f"data.raw_dir={tiny_raw}", "mlflow.enabled=false"))
    stats = json.loads((tmp_path / "reports" / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["unknown_files"] == ["dialogue.csv", "human_ratings.txt", "notes.xlsx"]
    assert stats["encodings"]["situations"] == "cp932" and stats["encodings"]["dialogues"] == "utf-8-sig"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("dialogue.csv" in w and "did you mean dialogues.csv?" in w for w in warned), warned
    assert any("human_ratings.txt" in w and "'.txt' is no table format" in w for w in warned), warned


def test_lenient_prepare_drops_an_excel_date_row_and_lists_it(make_cfg, tiny_raw, tmp_path):
    to_xlsx(tiny_raw, "situations", _date_in_text)
    metrics = prepare.run(make_cfg(f"data.raw_dir={tiny_raw}", "data.strict=false", "mlflow.enabled=false"))
    assert metrics["prepare/rejected_rows"] == 6
    rejected = pd.read_csv(tmp_path / "reports" / "data" / "rejected.csv")
    first = rejected.iloc[0]
    assert first["file"].endswith("situations.xlsx") and first["row"] == 3 and first["column"] == "situation"
    train = pd.read_parquet(tmp_path / "artifacts" / "prepare" / "train.parquet")
    assert "s1" not in set(train["situation_id"])


@pytest.mark.parametrize("break_it, message", [
    (lambda raw: edit_csv(raw, "situations", lambda h, rows: (h.append("emotion "), [r.append("joy") for r in rows])),
     "situations.csv: row 1: column 'emotion' is in the header twice"),
    (lambda raw: replace_bytes(raw, "situations.csv", b"s2,", b"s2\x00,"), "situations.csv: row 4: a NUL byte"),
])
def test_cli_exits_2_without_traceback(tiny_raw, tmp_path, break_it, message):
    break_it(tiny_raw)
    proc = subprocess.run([sys.executable, "-m", "emplifai.prepare", f"data.raw_dir={tiny_raw}",
                           f"paths.root={tmp_path}", "mlflow.enabled=false"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert message in out, out
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
