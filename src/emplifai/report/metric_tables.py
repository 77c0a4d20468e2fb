"""The report's one reader of metrics files: any stage's `metrics.json` (core/metrics_file.py) as tables.

`<m>_ci_low` / `<m>_ci_high` fold into `<m>`'s cell; NaN prints "missing" and its reason comes from the file's
`missing` map. `metric_table` lists a file; `group_table` puts a file with several systems / predictors
(`<stage>/<group>/<metric>`) one group per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from emplifai.core.metrics_file import MetricsFile

CI_SUFFIXES = ("_ci_low", "_ci_high")


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def ci(metrics: Mapping[str, Any], key: str) -> str:
    """"[low, high]" of `key` ("[missing, missing]" where its CI failed); "" where it has none."""
    if f"{key}_ci_low" not in metrics and f"{key}_ci_high" not in metrics:
        return ""
    return f"[{fmt(metrics.get(f'{key}_ci_low'))}, {fmt(metrics.get(f'{key}_ci_high'))}]"


def cell(metrics: Mapping[str, Any], key: str, absent: str = "—") -> str:
    """value [CI]; `absent` where the file has no such metric (not defined there), "missing" where it is NaN."""
    if key not in metrics:
        return absent
    return " ".join(p for p in (fmt(metrics[key]), ci(metrics, key)) if p)


def why(file: MetricsFile, key: str) -> str:
    """The reason `key` (or its CI) is missing, "" when it is not."""
    return file.missing.get(key) or file.missing.get(f"{key}_ci_low") or ""


def metric_table(file: MetricsFile, strip: str = "") -> pd.DataFrame:
    """metric | value | 95% CI (| missing because, when anything is): one row per metric of the file."""
    rows = [{"metric": key.removeprefix(strip), "value": fmt(value), "95% CI": ci(file.metrics, key),
             "missing because": why(file, key)}
            for key, value in file.metrics.items() if not key.endswith(CI_SUFFIXES)]
    frame = pd.DataFrame(rows, columns=["metric", "value", "95% CI", "missing because"])
    return frame if frame["missing because"].astype(bool).any() else frame.drop(columns="missing because")


def groups(file: MetricsFile) -> list[str]:
    """The `<group>` parts of `<stage>/<group>/<metric>` keys, in file order."""
    return list(dict.fromkeys(k.split("/")[1] for k in file.metrics if k.count("/") >= 2))


def group_table(file: MetricsFile, label: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per group (`label` column), one column per metric (`columns`, else every metric in file
    order), cells "value [CI]"; "—" where a group has no such metric."""
    rows = []
    for group in groups(file):
        prefix = f"{file_stage(file)}/{group}/"
        own = {k.removeprefix(prefix): v for k, v in file.metrics.items() if k.startswith(prefix)}
        names = columns or [k for k in own if not k.endswith(CI_SUFFIXES)]
        rows.append({label: group, **{name: cell(own, name) for name in names}})
    return pd.DataFrame(rows).fillna("—")


def ungrouped(file: MetricsFile) -> MetricsFile:
    """The file's `<stage>/<metric>` keys only (those outside every group)."""
    keep = {k: v for k, v in file.metrics.items() if k.count("/") < 2}
    return MetricsFile(keep, {k: v for k, v in file.missing.items() if k in keep}, file.tags)


def missing_table(file: MetricsFile) -> pd.DataFrame:
    return pd.DataFrame([{"metric": k, "missing because": v} for k, v in file.missing.items()],
                        columns=["metric", "missing because"])


def file_stage(file: MetricsFile) -> str:
    return next(iter(file.metrics), "/").split("/")[0]
