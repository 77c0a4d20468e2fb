"""Read one table in any supported format and encoding, remembering each row's line in the file."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".xlsx")
ROW_COLUMN = "_row"  # 1-based row number as the user sees it in the file (header = row 1 for csv/tsv/xlsx)


class TableError(Exception):
    """A whole-file problem (undecodable, empty, unreadable)."""

    def __init__(self, file: Path, row: int | None, reason: str) -> None:
        super().__init__(f"{file}: {'row ' + str(row) + ': ' if row else ''}{reason}")
        self.file, self.row, self.reason = file, row, reason


@dataclass
class Table:
    path: Path
    frame: pd.DataFrame  # all columns as str (NaN for missing), plus ROW_COLUMN
    encoding: str | None = None  # detected for csv/tsv/jsonl


def find_table(raw_dir: Path, stem: str) -> Path | None:
    """The one `stem.<suffix>` in raw_dir; two candidates are ambiguous and an error."""
    found = [raw_dir / f"{stem}{s}" for s in SUFFIXES if (raw_dir / f"{stem}{s}").exists()]
    if len(found) > 1:
        raise TableError(found[1], None, f"several files for '{stem}': {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def decode(path: Path, data: bytes) -> tuple[str, str]:
    """UTF-8 (with or without BOM) first, then cp932 (what Japanese Excel writes); never guess silently.

    A file that is clearly UTF-8 (multi-byte text decodes before the bad byte) but has a broken byte is
    reported at its line rather than re-read as cp932, which would turn it into mojibake.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
    except UnicodeDecodeError as err:
        utf8_err = err
    prefix = data[: utf8_err.start]
    clearly_utf8 = any(b >= 0x80 for b in prefix)
    if not clearly_utf8:
        try:
            return data.decode("cp932"), "cp932"
        except UnicodeDecodeError:
            pass
    line = data[: utf8_err.start].count(b"\n") + 1
    raise TableError(path, line, f"undecodable bytes (not UTF-8 or cp932) at byte {utf8_err.start}: "
                                 f"{data[utf8_err.start:utf8_err.start + 4]!r}; re-save the file as UTF-8")


def _delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        header = next(reader)
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line
            rows.append(record)
            lines.append(reader.line_num)
    except StopIteration:
        raise TableError(path, None, "empty file (no header row)") from None
    except csv.Error as err:
        raise TableError(path, reader.line_num, f"malformed {sep!r}-separated line: {err}") from None
    header = [h.strip() for h in header]
    width = len(header)
    for i, record in enumerate(rows):
        if len(record) > width:
            raise TableError(path, lines[i], f"{len(record)} fields but the header has {width}")
        record.extend([""] * (width - len(record)))
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame[ROW_COLUMN] = lines
    return frame


def read_table(path: Path) -> Table:
    path = Path(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise TableError(path, None, "empty file")
    encoding = None
    if suffix in (".csv", ".tsv"):
        text, encoding = decode(path, path.read_bytes())
        frame = _delimited(path, text, "," if suffix == ".csv" else "\t")
    elif suffix == ".jsonl":
        text, encoding = decode(path, path.read_bytes())
        records, lines = [], []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise TableError(path, n, f"invalid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise TableError(path, n, "each line must be a JSON object")
            records.append(obj)
            lines.append(n)
        frame = pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()
        frame[ROW_COLUMN] = lines
    elif suffix == ".parquet":
        frame = pd.read_parquet(path).astype(object)
        frame[ROW_COLUMN] = range(1, len(frame) + 1)
    elif suffix == ".xlsx":
        frame = pd.read_excel(path, dtype=object)
        frame[ROW_COLUMN] = range(2, len(frame) + 2)
    else:
        raise TableError(path, None, f"unsupported format '{suffix}'; use one of {', '.join(SUFFIXES)}")
    if len(frame) == 0:
        raise TableError(path, None, "empty file (no data rows)")
    frame.columns = [str(c).strip() for c in frame.columns]
    for col in frame.columns:
        if col != ROW_COLUMN:
            frame[col] = frame[col].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return Table(path=path, frame=frame, encoding=encoding)
