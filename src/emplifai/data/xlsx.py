"""One sheet of an .xlsx workbook as header + rows of text, read with openpyxl so that nothing is guessed.

Why not `pandas.read_excel`: it reads only the first sheet (an empty one hides the data), turns the text
`NA`/`null`/`None` into missing values, drops Excel's row numbers when blank rows are skipped and cannot say a
cell held a date. Here: the sheet named like the table, else the only sheet with data (several are an error);
row numbers are Excel's; a merge down one column is its value on every row it covers (as it reads on screen);
a date/time cell becomes ISO text and is reported back (Excel turns `1-2` typed as an id into a date); a whole
number is its digits (`7`, or `007` under a `000` number format); an error cell (`#N/A`) is missing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import openpyxl
from openpyxl.cell.cell import Cell
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

DATE_TYPES = (dt.datetime, dt.date, dt.time, dt.timedelta)
ZEROS = re.compile(r"0+")  # a number format that pads with zeros (`000` shows 7 as 007)


class SheetError(Exception):
    """A problem at `row` (Excel's row number; None: the whole workbook)."""

    def __init__(self, row: int | None, reason: str) -> None:
        super().__init__(reason)
        self.row, self.reason = row, reason


@dataclass
class Sheet:
    name: str
    header_row: int
    header: list[str]
    rows: list[list[str | None]] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    dates: set[tuple[int, int]] = field(default_factory=set)  # (Excel row, 0-based column) of date/time cells
    merged: list[str] = field(default_factory=list)  # ranges filled down ("A2:A4")
    sheets: int = 1  # sheets in the workbook


def _text(cell: Cell) -> tuple[str | None, bool]:
    """(cell as text, it was a date/time)."""
    v = cell.value
    if v is None or cell.data_type == "e":
        return None, False
    if isinstance(v, bool):
        return ("TRUE" if v else "FALSE"), False
    if isinstance(v, DATE_TYPES):
        if isinstance(v, dt.datetime) and v.time() == dt.time(0):
            return v.date().isoformat(), True
        return (v.isoformat(sep=" ") if isinstance(v, dt.datetime) else str(v)), True
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        fmt = str(cell.number_format or "")
        return (str(v).zfill(len(fmt)) if ZEROS.fullmatch(fmt) and v >= 0 else str(v)), False
    return str(v), False


def _has_data(ws: Worksheet) -> bool:
    return any(v is not None and str(v).strip() for row in ws.iter_rows(values_only=True) for v in row)


def _pick(book: openpyxl.Workbook, stem: str) -> Worksheet:
    filled = [ws for ws in book.worksheets if _has_data(ws)]
    if not filled:
        raise SheetError(None, f"empty file (no sheet holds data; sheets: {', '.join(book.sheetnames)})")
    named = [ws for ws in filled if ws.title.strip().lower() == stem.lower()]
    if named:
        return named[0]
    if len(filled) > 1:
        raise SheetError(None, f"several sheets hold data ({', '.join(repr(ws.title) for ws in filled)}); keep "
                               f"one, or name the sheet to read '{stem}'")
    return filled[0]


def read_sheet(path: Path, stem: str) -> Sheet:
    try:
        book = openpyxl.load_workbook(path, data_only=True)  # data_only: a formula's last computed value
    except Exception as err:  # a zip that is no workbook raises zipfile/KeyError/InvalidFileException alike
        raise SheetError(None, f"not a readable .xlsx workbook ({type(err).__name__}: {err})") from None
    ws = _pick(book, stem)
    fill: dict[tuple[int, int], Cell] = {}
    merged = []
    for rng in sorted(ws.merged_cells.ranges, key=lambda m: (m.min_col, m.min_row)):
        if rng.min_col != rng.max_col:
            raise SheetError(rng.min_row, f"cells {rng.coord} are merged across columns; unmerge them (a merge "
                                          f"down one column is read as its value on every row)")
        top = ws.cell(rng.min_row, rng.min_col)
        merged.append(rng.coord)
        fill |= {(r, rng.min_col): top for r in range(rng.min_row + 1, rng.max_row + 1)}
    sheet: Sheet | None = None
    for r, cells in enumerate(ws.iter_rows(min_row=1, max_row=ws.max_row, max_col=ws.max_column), start=1):
        own = [_text(c) for c in cells]
        if not any(v is not None and v.strip() for v, _ in own):
            continue  # a blank row (a merge reaching into it does not make it a row)
        if sheet is None:
            sheet = Sheet(ws.title, r, [v or "" for v, _ in own], sheets=len(book.worksheets), merged=merged)
            continue
        values = [_text(fill[(r, c)]) if (r, c) in fill else own[c - 1] for c in range(1, len(own) + 1)]
        sheet.rows.append([v for v, _ in values])
        sheet.row_numbers.append(r)
        sheet.dates |= {(r, c) for c, (_, is_date) in enumerate(values) if is_date}
    assert sheet is not None  # _pick chose a sheet with data
    return sheet


def column_name(index: int) -> str:
    """0-based column index → Excel's letter."""
    return get_column_letter(index + 1)
