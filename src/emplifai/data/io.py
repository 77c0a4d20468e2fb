"""Read one table in any supported format and encoding, remembering each row's line in the file.

A `.json` file is a list of row objects, or a Label Studio JSON export (told apart by shape, read as long
rating rows by `data/labelstudio.py`); `.xlsx` is read by `data/xlsx.py`; `melt_wide` turns a wide ratings table
(one column per criterion) long. Every value is text as written (`007` stays `007`); nothing is guessed: a file
that cannot be read as it was written is a TableError naming file, row and reason.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emplifai.core.errors import UserError
from emplifai.data import labelstudio, xlsx

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".xlsx")
ROW_COLUMN = "_row"  # 1-based row number as the user sees it in the file (header = row 1 for csv/tsv/xlsx)
AT_COLUMN = "_at"  # where a row comes from beyond its number (a Label Studio task's and annotation's ids)


class TableError(UserError):
    """A whole-file problem (undecodable, empty, unreadable, a bad header)."""

    def __init__(self, file: Path, row: int | None, reason: str) -> None:
        super().__init__(f"{file}: {'row ' + str(row) + ': ' if row else ''}{reason}")
        self.file, self.row, self.reason = file, row, reason


@dataclass
class Table:
    path: Path
    frame: pd.DataFrame  # all columns as str (NaN for missing), plus ROW_COLUMN (and AT_COLUMN)
    encoding: str | None = None  # detected for csv/tsv/jsonl/json
    unit: str = "row"  # what ROW_COLUMN counts: "row" (line), "record" (.json list item), "task" (Label Studio)
    summary: dict | None = None  # how a converted file was read (Label Studio counts, the xlsx sheet)
    note: str = ""  # the same in words, for the log
    dates: set[tuple[int, str]] = field(default_factory=set)  # (row, column) of an Excel date/time cell


def _candidates(raw_dir: Path, stem: str) -> list[Path]:
    """`stem.<suffix>` files, the suffix in any case (`situations.CSV` from Windows is read too)."""
    files = [p for p in raw_dir.iterdir() if p.stem == stem and p.suffix.lower() in SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: SUFFIXES.index(p.suffix.lower()))


def find_table(raw_dir: Path, stem: str) -> Path | None:
    """The one `stem.<suffix>` in raw_dir; two candidates are ambiguous and an error."""
    found = _candidates(raw_dir, stem)
    if len(found) > 1:
        raise TableError(found[1], None, f"several files for '{stem}': {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def unknown_files(raw_dir: Path, stems: Sequence[str]) -> dict[str, str]:
    """Entries of raw_dir no table reads, each with why (hidden files and __pycache__ are not listed)."""
    out, read = {}, {p for stem in stems for p in _candidates(raw_dir, stem)}
    for p in sorted(raw_dir.iterdir()):
        if p.name.startswith(".") or p.name == "__pycache__" or p in read:
            continue
        if p.is_dir():
            out[p.name + "/"] = "a folder: tables are read from the top level only"
        elif p.stem in stems:
            out[p.name] = f"'{p.suffix}' is no table format read here (use {', '.join(SUFFIXES)})"
        elif close := difflib.get_close_matches(p.stem.lower(), stems, n=1, cutoff=0.75):
            out[p.name] = f"no table is named '{p.stem}'; did you mean {close[0]}{p.suffix}?"
        else:
            out[p.name] = f"no table is named '{p.stem}'; tables: {', '.join(stems)}"
    return out


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def decode(path: Path, data: bytes) -> tuple[str, str]:
    """UTF-8 (with or without BOM), UTF-16 with its BOM, then cp932 (what Japanese Excel writes); never guess
    silently.

    A file that is clearly UTF-8 (multi-byte text decodes before the bad byte) but has a broken byte is
    reported at its line rather than re-read as cp932, which would turn it into mojibake; so is an EUC-JP file,
    which cp932 would read without an error into half-width-katakana mojibake.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as err:
            raise TableError(path, None, f"undecodable UTF-16 at byte {err.start}; re-save the file as UTF-8") from None
    else:
        text, encoding = _decode_8bit(path, data)
    if (at := text.find("\x00")) >= 0:
        raise TableError(path, _line(text, at), "a NUL byte (\\x00) in the text: a binary file, or text saved as "
                                                "UTF-16 without its byte-order mark; re-save the file as UTF-8")
    if (at := text.find("\ufeff")) >= 0:
        raise TableError(path, _line(text, at), "a byte-order mark (U+FEFF) inside the file, not at its start: "
                                                "several files pasted together? delete it")
    return text, encoding


def _decode_8bit(path: Path, data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
    except UnicodeDecodeError as err:
        utf8_err = err
    prefix = data[: utf8_err.start]
    clearly_utf8 = any(b >= 0x80 for b in prefix)
    if not clearly_utf8:
        try:
            text = data.decode("cp932")
        except UnicodeDecodeError:
            pass
        else:
            if not _looks_euc_jp(data, text):
                return text, "cp932"
            raise TableError(path, None, "not UTF-8, and it reads as EUC-JP (as cp932 it would be half-width-"
                                         "katakana mojibake); re-save the file as UTF-8")
    line = data[: utf8_err.start].count(b"\n") + 1
    raise TableError(path, line, f"undecodable bytes (not UTF-8 or cp932) at byte {utf8_err.start}: "
                                 f"{data[utf8_err.start:utf8_err.start + 4]!r}; re-save the file as UTF-8")


def _looks_euc_jp(data: bytes, cp932_text: str) -> bool:
    """EUC-JP bytes are valid cp932 (as half-width katakana and odd kanji); real cp932 text is rarely valid EUC-JP."""
    if not any("\uff61" <= ch <= "\uff9f" for ch in cp932_text):
        return False
    try:
        data.decode("euc_jp")
    except UnicodeDecodeError:
        return False
    return True


def _header(path: Path, header: list[str], rows: list[list], row: int | None, name=lambda i: str(i + 1)) -> list[int]:
    """Which columns to keep: a nameless column with no values is dropped (a trailing separator); a nameless
    column with values, or a name twice (after trimming spaces), is an error at the header row."""
    names, keep, seen = [str(h).strip() for h in header], [], {}
    for i, col in enumerate(names):
        if not col:
            if any(i < len(r) and r[i] is not None and str(r[i]).strip() for r in rows):
                raise TableError(path, row, f"column {name(i)} has values but no name in the header")
            continue
        if col in seen:
            j = seen[col]
            raise TableError(path, row, f"column '{col}' is in the header twice (columns {name(j)} and {name(i)}: "
                                        f"{header[j]!r} and {header[i]!r}, the same name once spaces are trimmed)")
        seen[col] = i
        keep.append(i)
    return keep


def _frame(path: Path, header: list[str], rows: list[list], numbers: list[int], header_row: int,
           name=lambda i: str(i + 1)) -> pd.DataFrame:
    keep = _header(path, header, rows, header_row, name)
    frame = pd.DataFrame([[r[i] if i < len(r) else "" for i in keep] for r in rows],
                         columns=[str(header[i]).strip() for i in keep], dtype=object)
    frame[ROW_COLUMN] = numbers
    return frame


def _delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    rows: list[list[str]] = []
    lines: list[int] = []
    header, header_line, end = None, 0, 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines: the row is where it starts
            if not any(cell.strip() for cell in record):
                continue  # blank line
            if header is None:
                header, header_line = record, start
                continue
            rows.append(record)
            lines.append(start)
    except csv.Error as err:
        raise TableError(path, reader.line_num, f"malformed {sep!r}-separated line: {err}") from None
    if header is None:
        raise TableError(path, None, "empty file (no header row)")
    width = len(header)
    for i, record in enumerate(rows):
        if len(record) > width and any(cell.strip() for cell in record[width:]):
            raise TableError(path, lines[i], f"{len(record)} fields but the header has {width}")
        del record[width:]  # empty trailing fields (a trailing separator) are no values
    return _frame(path, header, rows, lines, header_line)


class _KeyTwice(Exception):
    pass


def _object_pairs(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, its keys trimmed; a key given twice (or twice once trimmed) is an error, not the last wins."""
    obj: dict = {}
    for key, value in pairs:
        if key.strip() in obj:
            raise _KeyTwice(f"key {key.strip()!r} given twice in one object (once spaces are trimmed)")
        obj[key.strip()] = value
    return obj


def _loads(path: Path, text: str, row: int | None) -> object:
    try:
        return json.loads(text, object_pairs_hook=_object_pairs)
    except _KeyTwice as err:
        raise TableError(path, row, str(err)) from None


def _json(path: Path, text: str) -> tuple[pd.DataFrame, str, labelstudio.ExportSummary | None]:
    """A list of row objects (row = its position), or a Label Studio export (row = the task's position)."""
    try:
        data = _loads(path, text, None)
    except json.JSONDecodeError as err:
        raise TableError(path, None, f"invalid JSON at line {err.lineno}: {err.msg}") from None
    if labelstudio.is_export(data):
        try:
            rows, positions, where, summary = labelstudio.rating_rows(data)
        except labelstudio.ExportError as err:
            raise TableError(path, None, f"Label Studio export, {err}") from None
        frame = pd.DataFrame(rows, columns=["response_id", "rater_id", "criterion", "score"], dtype=object)
        frame[ROW_COLUMN] = positions
        frame[AT_COLUMN] = where
        return frame, "task", summary
    if not isinstance(data, list):
        raise TableError(path, None, "a .json table must be a list of row objects (or a Label Studio JSON export)")
    bad = next((n for n, obj in enumerate(data, start=1) if not isinstance(obj, dict)), None)
    if bad:
        raise TableError(path, None, f"record {bad} is not a JSON object; a .json table is a list of row objects")
    frame = pd.DataFrame.from_records(data).astype(object) if data else pd.DataFrame()
    frame[ROW_COLUMN] = range(1, len(data) + 1)
    return frame, "record", None


def _jsonl(path: Path, text: str) -> pd.DataFrame:
    records, lines = [], []
    # JSON Lines ends a record at \n only: str.splitlines() would also split at U+2028/U+2029/\x85, which
    # json.dumps(ensure_ascii=False) writes raw inside strings
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = _loads(path, line, n)
        except json.JSONDecodeError as err:
            raise TableError(path, n, f"invalid JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise TableError(path, n, "each line must be a JSON object")
        records.append(obj)
        lines.append(n)
    frame = pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()
    frame[ROW_COLUMN] = lines
    return frame


def _xlsx(path: Path) -> tuple[pd.DataFrame, set[tuple[int, str]], dict | None, str]:
    try:
        sheet = xlsx.read_sheet(path, path.stem)
    except xlsx.SheetError as err:
        raise TableError(path, err.row, err.reason) from None
    frame = _frame(path, sheet.header, sheet.rows, sheet.row_numbers, sheet.header_row, xlsx.column_name)
    names = {i: str(h).strip() for i, h in enumerate(sheet.header)}
    dates = {(r, names[c]) for r, c in sheet.dates if names.get(c) in frame.columns}
    if sheet.sheets == 1 and not sheet.merged and sheet.header_row == 1:
        return frame, dates, None, ""
    summary = {"format": "xlsx", "sheet": sheet.name, "header_row": sheet.header_row, "merged": sheet.merged}
    note = (f"xlsx: sheet '{sheet.name}' of {sheet.sheets}, header at row {sheet.header_row}"
            + (f"; merged cells read as their value on every row they cover: {', '.join(sheet.merged)}"
               if sheet.merged else ""))
    return frame, dates, summary, note


def melt_wide(frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], var: str, value: str
              ) -> pd.DataFrame:
    """Wide → long: one row per non-empty cell of `columns` (an empty cell is no value), named by `var`, its
    cell in `value`; `keys`, the other columns and ROW_COLUMN kept, so a problem still names its row."""
    rest = [c for c in frame.columns if c not in (*keys, *columns)]
    rows = [{**{k: rec[k] for k in keys}, var: col, value: rec[col], **{k: rec[k] for k in rest}}
            for rec in frame.to_dict("records") for col in columns
            if rec[col] is not None and str(rec[col]).strip()]
    return pd.DataFrame(rows, columns=[*keys, var, value, *rest], dtype=object)


def _cell(v: object) -> str | None:
    """A value as text: missing stays None, a nested JSON value is its JSON (not Python's repr)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    return json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v)


def read_table(path: Path) -> Table:
    path = Path(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise TableError(path, None, "empty file")
    encoding, unit, summary, note, dates = None, "row", None, "", set()
    if suffix in (".csv", ".tsv"):
        text, encoding = decode(path, path.read_bytes())
        frame = _delimited(path, text, "," if suffix == ".csv" else "\t")
    elif suffix == ".jsonl":
        text, encoding = decode(path, path.read_bytes())
        frame = _jsonl(path, text)
    elif suffix == ".json":
        text, encoding = decode(path, path.read_bytes())
        frame, unit, export = _json(path, text)
        summary, note = (export.as_dict(), str(export)) if export else (None, "")
    elif suffix == ".parquet":
        frame = pd.read_parquet(path).astype(object)
        frame[ROW_COLUMN] = range(1, len(frame) + 1)
    elif suffix == ".xlsx":
        frame, dates, summary, note = _xlsx(path)
    else:
        raise TableError(path, None, f"unsupported format '{suffix}'; use one of {', '.join(SUFFIXES)}")
    if len(frame) == 0:
        what = f"no ratings ({note})" if unit == "task" else "no data rows"
        raise TableError(path, None, f"empty file ({what})")
    _header(path, list(frame.columns), [], None)  # parquet names too: none twice once trimmed
    frame.columns = [str(c).strip() for c in frame.columns]
    for col in frame.columns:
        if col != ROW_COLUMN:
            # object dtype kept explicitly: pandas 3 would infer `str` and turn None (a missing value) into NaN
            frame[col] = pd.Series([_cell(v) for v in frame[col]], index=frame.index, dtype=object)
    return Table(path=path, frame=frame, encoding=encoding, unit=unit, summary=summary, note=note, dates=dates)
