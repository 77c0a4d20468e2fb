"""Label Studio, both ways: its JSON export read as long rating rows, and rating tasks + labeling config
written for an import. The one place that knows Label Studio's shapes (prepare reads, `annotate` writes).

Export (Project → Export → JSON): a list of tasks, each `{"id", "data": {...}, "annotations": [...]}`; an
annotation has `completed_by` (a user id, or `{"id", "email", ...}`), `was_cancelled` and `result`, whose
items of `type: "rating"` carry the criterion as `from_name` and the score as `value.rating`. Cancelled
annotations, drafts, predictions (model pre-annotations, not raters) and other result types are not ratings.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

RATING = "rating"
TEXT_FIELDS = (("situation", "状況"), ("patient", "患者の発話"), ("response", "支援者の応答（評価の対象）"))


class ExportError(Exception):
    """A task that is not shaped like Label Studio's export; `task` is its 1-based position in the file."""

    def __init__(self, task: int, reason: str) -> None:
        super().__init__(f"task {task}: {reason}")
        self.task, self.reason = task, reason


@dataclass
class ExportSummary:
    tasks: int = 0
    annotations: int = 0  # submitted (not cancelled) annotations read
    cancelled: int = 0  # skipped
    tasks_without_annotations: int = 0
    other_results: int = 0  # result items that are not ratings (comments, choices...): ignored
    ratings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"format": "labelstudio", **asdict(self)}

    def __str__(self) -> str:
        return (f"Label Studio export: {self.tasks} tasks, {self.annotations} annotations "
                f"({self.cancelled} cancelled, skipped; {self.tasks_without_annotations} tasks unannotated), "
                f"{self.ratings} ratings; {self.other_results} non-rating results ignored")


def is_export(data: Any) -> bool:
    """A JSON list of objects having `annotations`: Label Studio's JSON export (not a list of table rows)."""
    return isinstance(data, list) and any(isinstance(t, Mapping) and "annotations" in t for t in data)


def rater_of(completed_by: Any) -> str | None:
    """The rater id: the user id (numeric or `{"id": ...}` alike, so both export forms agree), else the email."""
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id") if completed_by.get("id") is not None else completed_by.get("email")
    return None if completed_by is None or completed_by == "" else str(completed_by)


def rating_rows(tasks: list[Any]) -> tuple[list[dict[str, Any]], list[int], list[str], ExportSummary]:
    """(rows of response_id/rater_id/criterion/score, the task position of each row, where each row comes
    from in Label Studio's ids, counts). A missing id or score stays None, for validation to name."""
    rows: list[dict[str, Any]] = []
    positions: list[int] = []
    where: list[str] = []
    summary = ExportSummary(tasks=len(tasks))
    for n, task in enumerate(tasks, start=1):
        if not isinstance(task, Mapping):
            raise ExportError(n, f"not an object but {type(task).__name__}")
        data, annotations = task.get("data") or {}, task.get("annotations") or []
        if not isinstance(data, Mapping):
            raise ExportError(n, "`data` is not an object")
        if not isinstance(annotations, list):
            raise ExportError(n, "`annotations` is not a list")
        summary.tasks_without_annotations += not annotations
        for annotation in annotations:
            if not isinstance(annotation, Mapping):
                raise ExportError(n, "an annotation is not an object")
            if annotation.get("was_cancelled"):
                summary.cancelled += 1
                continue
            summary.annotations += 1
            rater = rater_of(annotation.get("completed_by"))
            for item in annotation.get("result") or []:
                if not isinstance(item, Mapping) or item.get("type") != RATING:
                    summary.other_results += 1
                    continue
                value = item.get("value")
                score = value.get("rating") if isinstance(value, Mapping) else None
                rows.append({"response_id": data.get("response_id"), "rater_id": rater,
                             "criterion": item.get("from_name"), "score": score})
                positions.append(n)
                where.append(f"task id {task.get('id')}, annotation id {annotation.get('id')}, rater {rater}")
    summary.ratings = len(rows)
    return rows, positions, where, summary


class CriterionText(Protocol):
    """What a rating question shows (the judge rubric's `Criterion` has these)."""

    key: str
    ja: str
    definition: str
    anchors: tuple[tuple[int, str], ...]


def labeling_config(criteria: Sequence[CriterionText], max_rating: int) -> str:
    """The labeling interface: situation, patient, response, then per criterion its Japanese name, definition
    and anchors as headers and one `<Rating name="<criterion>" toName="response">` (not required: a criterion
    a rater leaves unrated simply has no rating)."""
    view = ET.Element("View")
    for field, title in TEXT_FIELDS:
        ET.SubElement(view, "Header", value=title, size="5")
        ET.SubElement(view, "Text", name=field, value=f"${field}")
    for c in criteria:
        box = ET.SubElement(view, "View", style="margin-top: 1em")
        ET.SubElement(box, "Header", value=f"{c.ja}（{c.key}）" if c.ja != c.key else c.key, size="4")
        if c.definition:
            ET.SubElement(box, "Header", value=c.definition, size="6")
        if c.anchors:
            ET.SubElement(box, "Header", value=" ／ ".join(f"{s}: {t}" for s, t in c.anchors), size="6")
        ET.SubElement(box, "Rating", name=c.key, toName="response", maxRating=str(max_rating))
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def write_import(tasks: list[dict[str, Any]], path: Path) -> None:
    """Label Studio's import format: one `{"data": {...}}` per task."""
    path.write_text(json.dumps([{"data": t} for t in tasks], ensure_ascii=False, indent=1), encoding="utf-8")
