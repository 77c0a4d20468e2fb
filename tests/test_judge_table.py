"""The judge's per-response table (judge/responses.py) on the REAL output of the last `dvc repro`: one row per
response × criterion, human mean/sd/n beside the judge's score (NaN where nobody rated), pages that concatenate
back to the whole, no secret inside, and a real sqlite MLflow store that gives the same rows back."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, compose_cfg
from emplifai.core import tracking
from emplifai.data.taxonomy import Taxonomy
from emplifai.judge.items import collect
from emplifai.judge.responses import (
    REDACTED,
    REPLY_CHARS,
    log_response_table,
    page_file,
    paginate,
    read_ratings,
    response_table,
    table_bytes,
)

ARTIFACTS = ROOT / "artifacts"
RATINGS = ARTIFACTS / "prepare" / "human_ratings.parquet"
SCORES = sorted(ARTIFACTS.glob("judge/*/scores.parquet"))


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """(scores, items) of the last dvc repro's first judge, else of a real judge run made here (SmolLM2 on a
    stratified 8 of the sample's responses: CI runs these tests before `make all`); the items rebuilt as the
    judge stage collects them."""
    if not RATINGS.exists():
        pytest.skip("run `dvc repro prepare` first (needs the sample's human ratings)")
    root = ARTIFACTS
    if SCORES:
        scores = pd.read_parquet(SCORES[0])
    else:
        import shutil

        from emplifai.judge import __main__ as judge

        tmp = tmp_path_factory.mktemp("judge")
        root = tmp / "artifacts"
        shutil.copytree(ARTIFACTS / "prepare", root / "prepare")
        cfg = compose_cfg([f"paths.artifacts={root}", f"paths.reports={tmp}/reports", f"paths.log_dir={tmp}/logs",
                           "mlflow.enabled=false", "judge.model=smollm2-135m", "judge.stratified_n=8",
                           f"judge.cache={tmp}/judge.sqlite"])
        judge.run(cfg)
        scores = pd.read_parquet(root / "judge" / str(cfg.judge.name) / "scores.parquet")
    items, _ = collect(root / "prepare", root / "generate" / "responses.parquet",
                       Taxonomy.from_config(compose_cfg().taxonomy), sorted(set(scores["source"])))
    return scores, items


@pytest.fixture(scope="module")
def table(judged) -> pd.DataFrame:
    scores, items = judged
    return response_table(scores, items, read_ratings(RATINGS))


def test_one_row_per_response_and_criterion_with_its_text(judged, table):
    scores, items = judged
    n_responses, n_criteria = scores["response_id"].nunique(), scores["criterion"].nunique()
    assert n_criteria == 7 and len(table) == n_responses * n_criteria
    assert not table.duplicated(["response_id", "criterion"]).any()
    pd.testing.assert_series_equal(table["judge_score"], scores["score"].reset_index(drop=True), check_names=False)
    text = {it.item_id: it.response for it in items}
    assert (table["response"] == table["response_id"].map(text)).all()  # the sample holds nothing secret-shaped
    assert table["judge_reply"].str.len().max() <= REPLY_CHARS


def test_human_mean_sd_n_match_a_direct_groupby_and_are_nan_where_nobody_rated(table):
    ratings = pd.read_parquet(RATINGS)
    rated = ratings.loc[ratings["response_id"].isin(table["response_id"]), "response_id"].iloc[0]
    direct = ratings[ratings["response_id"] == rated].groupby("criterion")["score"].agg(["mean", "std", "size"])
    mine = table[table["response_id"] == rated].set_index("criterion")
    assert len(mine) == 7 and direct["size"].min() >= 2
    for criterion, row in direct.iterrows():
        got = mine.loc[criterion]
        assert got["human_mean"] == pytest.approx(row["mean"]) and got["human_sd"] == pytest.approx(row["std"])
        assert got["human_n"] == row["size"]
    unrated = table[~table["response_id"].isin(ratings["response_id"])]
    assert len(unrated) and unrated["human_mean"].isna().all() and unrated["human_sd"].isna().all()
    assert (unrated["human_n"] == 0).all() and not (table["human_mean"] == 0).any()
    assert table.loc[table["response_id"].isin(ratings["response_id"]), "human_mean"].notna().all()


def test_pages_split_at_the_configured_size_and_concatenate_back(table):
    by_rows = paginate(table, page_rows=100)
    assert [len(p) for p in by_rows] == [100] * (len(table) // 100) + ([len(table) % 100] if len(table) % 100 else [])
    pd.testing.assert_frame_equal(pd.concat(by_rows, ignore_index=True), table)
    limit = table_bytes(table) // 5
    by_bytes = paginate(table, page_bytes=limit)
    assert len(by_bytes) >= 5 and all(table_bytes(p) <= limit for p in by_bytes)
    pd.testing.assert_frame_equal(pd.concat(by_bytes, ignore_index=True), table)
    assert len(paginate(table)) == 1  # the sample's table fits one page of the defaults
    with pytest.raises(ValueError, match="positive"):
        paginate(table, page_rows=0)


def test_no_api_key_or_authorization_text_gets_in(judged, monkeypatch):
    scores, items = judged
    key = "sk-proj-Zq8VtN3rXb7LmK2pQw9YhE4dFg6JsA1uC5oI0"
    plain = "Zq8VtN3rXb7LmK2pQw9Y"  # a key of no known shape: caught because the named env var holds it
    monkeypatch.setenv("EMPLIFAI_JUDGE_API_KEY", plain)
    leaky = scores.head(14).copy()
    leaky["raw"] = [f"error 401 echo: Authorization: Bearer {key} " + "x" * 500, f'{{"api_key": "{plain}"}}'] * 7
    leaky["detail"] = f"error: HTTP 401 (Authorization: Basic dXNlcjpwYXNz; key {plain})"
    leaky["parse_ok"] = False
    from emplifai.core.secrets import env_secrets
    from emplifai.judge.responses import ENV_SECRET_CHARS

    out = response_table(leaky, items, read_ratings(RATINGS), env_secrets(["EMPLIFAI_JUDGE_API_KEY"], ENV_SECRET_CHARS))
    text = out.to_json(orient="split", force_ascii=False)
    assert key not in text and plain not in text and "dXNlcjpwYXNz" not in text and "hE4dFg6J" not in text
    assert "Authorization: Bearer [redacted]" in out["judge_reply"].iloc[0]  # what was there stays readable
    assert REDACTED in out["judge_reply"].iloc[0] and out["judge_reply"].str.len().max() <= REPLY_CHARS


def test_logged_to_a_real_mlflow_store_and_read_back(judged, table, make_cfg, tmp_path):
    scores, items = judged
    cfg = make_cfg(f"mlflow.artifact_location={tmp_path}/mlartifacts")
    name = str(scores["judge"].iloc[0])
    with tracking.stage_run(cfg, "judge", {"judge": name}) as run_:
        pages = log_response_table(run_, scores, items, RATINGS, {"name": name, "api_key_env": None}, page_rows=300)
    assert pages == math.ceil(len(table) / 300)
    client = MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(run_.run_id)
    assert run.data.tags["judge_response_pages"] == str(pages)
    folder = f"judge/{name}/responses"
    files = [page_file(folder, i) for i in range(1, pages + 1)]
    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])  # what the UI's table views list
    assert logged == [{"path": f, "type": "table"} for f in files]
    back = pd.concat([client.load_table(run.info.experiment_id, f, run_ids=[run_.run_id]) for f in files],
                     ignore_index=True)
    pd.testing.assert_frame_equal(back[table.columns], table, check_dtype=False)
    assert back["human_mean"].isna().sum() == table["human_mean"].isna().sum() > 0  # null in JSON, NaN again


def test_no_run_no_table(judged):
    scores, items = judged
    off = tracking.StageRun(None, None)
    off.log_table(pd.DataFrame({"a": [1]}), "x/page-001.json")  # mlflow.enabled=false: nothing, no error
    assert log_response_table(off, scores, items, RATINGS, {"name": "hf_local"}) == 1
