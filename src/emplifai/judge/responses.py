"""The judge's per-response table in MLflow: each response's score on each criterion next to the human ratings.

Aggregate metrics hide which responses the judge gets wrong; this table lets a researcher open one response
and read the judge's seven scores beside the raters' mean, spread and count. It is logged with MLflow's
`log_table` (JSON, orient="split") in pages small enough for the UI's table viewer:
`judge/<judge>/responses/page-001.json`, … (run tag `judge_response_pages` says how many).

Text that comes from models or servers (the judge's reply, the parse detail, the response) passes `scrub`
first, so no API key or Authorization header can reach the tracking server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from emplifai.core.paths import read_artifact
from emplifai.core.secrets import env_secrets, redact
from emplifai.core.tracking import StageRun
from emplifai.judge.rubric import JudgeItem

PAGE_ROWS = 2000  # rows per page: the UI renders a page at once
PAGE_BYTES = 2_000_000  # bytes per page as MLflow writes it (JSON with \u-escaped Japanese)
REPLY_CHARS = 300  # the judge's raw reply, trimmed: enough to read its reason
RATING_COLUMNS = ["response_id", "rater_id", "criterion", "score"]
TABLE_COLUMNS = ["response_id", "dialogue_id", "system", "source", "criterion", "judge_score", "judge_argmax",
                 "judge_std", "human_mean", "human_sd", "human_n", "parse_ok", "detail", "response", "judge_reply",
                 "judge"]
REDACTED = "[redacted]"
ENV_SECRET_CHARS = 6  # shorter env values are too likely to occur in ordinary text to be masked


def scrub(text: object, secrets: Iterable[str] = (), limit: int | None = None) -> object:
    """Known secret values and credential-shaped text → [redacted]; whitespace collapsed; trimmed to `limit`
    characters (after redaction, so a cut never leaves half a key). Non-text (NaN) is returned as is."""
    if not isinstance(text, str):
        return text
    text = " ".join(redact(text, list(secrets), REDACTED, fragments=False).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def read_ratings(path: Path) -> pd.DataFrame:
    """prepare's human ratings, or an empty table when the data has none (the columns are then NaN)."""
    if not path.exists():
        return pd.DataFrame(columns=RATING_COLUMNS)
    return read_artifact(path, RATING_COLUMNS)


def response_table(scores: pd.DataFrame, items: Iterable[JudgeItem], ratings: pd.DataFrame,
                   secrets: Iterable[str] = ()) -> pd.DataFrame:
    """One row per response × criterion (scores' order): the judge's score, argmax, spread and parse status,
    the human mean, sd (ddof=1) and n for that response × criterion (NaN mean/sd, n 0 where nobody rated
    it), the response text and the judge's reply trimmed to REPLY_CHARS, both scrubbed of secrets."""
    secrets = list(secrets)
    text = {it.item_id: it.response for it in items}
    missing = sorted(set(scores["response_id"]) - set(text))
    if missing:
        raise ValueError(f"judge scores name responses the judge's items lack: {missing[:5]}")
    g = ratings.groupby(["response_id", "criterion"])["score"]
    human = pd.DataFrame({"human_mean": g.mean(), "human_sd": g.std(ddof=1), "human_n": g.size()})
    human = human.astype({"human_mean": float, "human_sd": float}).reset_index()
    table = scores.rename(columns={"score": "judge_score", "score_argmax": "judge_argmax", "score_std": "judge_std"})
    table = table.merge(human, on=["response_id", "criterion"], how="left", validate="many_to_one")
    table["human_n"] = table["human_n"].fillna(0).astype(int)
    table["response"] = [scrub(text[r], secrets) for r in table["response_id"]]
    table["judge_reply"] = [scrub(r, secrets, REPLY_CHARS) for r in table["raw"]]
    table["detail"] = [scrub(d, secrets, REPLY_CHARS) for d in table["detail"]]
    return table[TABLE_COLUMNS].reset_index(drop=True)


def table_bytes(frame: pd.DataFrame) -> int:
    """Size of `frame` as MLflow's log_table writes it."""
    return len(frame.to_json(orient="split", index=False, date_format="iso").encode())


def paginate(table: pd.DataFrame, page_rows: int = PAGE_ROWS, page_bytes: int = PAGE_BYTES) -> list[pd.DataFrame]:
    """Consecutive pages of at most `page_rows` rows and (unless one row alone is larger) `page_bytes` bytes."""
    if page_rows < 1 or page_bytes < 1:
        raise ValueError(f"page_rows and page_bytes must be positive, got {page_rows}, {page_bytes}")
    pages: list[pd.DataFrame] = []
    start = 0
    while start < len(table):
        n = min(page_rows, len(table) - start)
        while n > 1 and (size := table_bytes(table.iloc[start:start + n])) > page_bytes:
            n = max(1, min(n - 1, int(n * page_bytes / size)))
        pages.append(table.iloc[start:start + n].reset_index(drop=True))
        start += n
    return pages


def page_file(folder: str, number: int) -> str:
    return f"{folder}/page-{number:03d}.json"


def log_response_table(run: StageRun, scores: pd.DataFrame, items: Iterable[JudgeItem], ratings_file: Path,
                       judge_cfg: Mapping, page_rows: int = PAGE_ROWS, page_bytes: int = PAGE_BYTES) -> int:
    """Build the table and log its pages to `run` (a tracking StageRun) under judge/<judge>/responses/;
    returns the number of pages."""
    secrets = env_secrets([judge_cfg.get("api_key_env")], ENV_SECRET_CHARS)
    table = response_table(scores, items, read_ratings(ratings_file), secrets)
    folder = f"judge/{judge_cfg['name']}/responses"
    pages = paginate(table, page_rows, page_bytes)
    for number, page in enumerate(pages, start=1):
        run.log_table(page, page_file(folder, number))
    run.set_tags({"judge_response_pages": len(pages), "judge_response_table":
                  f"{page_file(folder, 1)} … ({len(pages)} pages, {len(table)} rows: response × criterion)"})
    return len(pages)
