"""Human ratings from annotation tools: Label Studio exports and wide tables read and validated like any input;
`python -m emplifai.annotate` exports rating tasks; the round trip (export → rated in Label Studio's shape →
prepare → agreement) gives the same ratings and the same agreement numbers as the long CSV."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SAMPLE, compose_cfg, write_csv
from emplifai.agreement import __main__ as agreement
from emplifai.annotate import __main__ as annotate
from emplifai.annotate.tasks import HUMAN_SYSTEM, AnnotateError
from emplifai.data.io import read_table
from emplifai.data.taxonomy import Taxonomy
from emplifai.judge.items import collect
from emplifai.prepare import __main__ as prepare
from emplifai.prepare.validate import validate
from test_prepare import ENV

CFG = compose_cfg()
TAX = Taxonomy.from_config(CFG.taxonomy)
CRITERIA = list(CFG.data.criteria)
LONG = ["response_id", "rater_id", "criterion", "score"]


def rating(criterion: str, score, rid: str = "x") -> dict:
    return {"value": {"rating": score}, "id": rid, "from_name": criterion, "to_name": "response", "type": "rating",
            "origin": "manual"}


def annotation(aid: int, rater, results: list[dict], task: int, cancelled: bool = False) -> dict:
    """One annotation as Label Studio exports it."""
    return {"id": aid, "completed_by": rater, "result": results, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-01-10T09:00:00.000000Z", "updated_at": "2026-01-10T09:01:00.000000Z",
            "draft_created_at": None, "lead_time": 31.4, "prediction": {}, "result_count": 0, "unique_id": f"u{aid}",
            "import_id": None, "last_action": None, "task": task, "project": 3, "updated_by": None,
            "parent_prediction": None, "parent_annotation": None, "last_created_by": None}


def task(tid: int, data: dict, annotations: list[dict], **extra) -> dict:
    return {"id": tid, "annotations": annotations, "file_upload": "tasks.json", "drafts": [], "predictions": [],
            "data": data, "meta": {}, "created_at": "2026-01-09T08:00:00.000000Z",
            "updated_at": "2026-01-10T09:01:00.000000Z", "inner_id": tid, "total_annotations": len(annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations), "total_predictions": 0,
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 3,
            "updated_by": 7, "comment_authors": [], **extra}


COMMENT = {"value": {"text": ["丁寧な応答"]}, "id": "c1", "from_name": "comment", "to_name": "response",
           "type": "textarea", "origin": "manual"}


def realistic_export() -> list[dict]:
    """Rater 7 (numeric id) rates both responses; rater 9 (object form) skips general_empathy; rater 11's
    annotation was cancelled; a comment, a choice and a model prediction are no ratings; task 103 is unrated."""
    r9 = {"id": 9, "first_name": "", "last_name": "", "email": "b@example.org", "avatar": None}
    prediction = {"model_version": "judge", "score": None, "result": [rating("fluency", 1)]}
    return [
        task(101, {"response_id": "r1", "dialogue_id": "d00", "response": "それはお辛いですね。"}, [
            annotation(1, 7, [rating("fluency", 5), rating("general_empathy", 4), COMMENT], 101),
            annotation(2, r9, [rating("fluency", 3)], 101),
            annotation(3, 11, [rating("fluency", 1), rating("general_empathy", 1)], 101, cancelled=True)]),
        task(102, {"response_id": "r2", "dialogue_id": "d10"}, [
            annotation(4, 7, [rating("fluency", 4), {"value": {"choices": ["ok"]}, "from_name": "flag",
                                                      "to_name": "response", "type": "choices"}], 102)],
             predictions=[prediction]),
        task(103, {"response_id": "r1"}, []),
    ]


def write_export(raw: Path, tasks: list[dict]) -> Path:
    (raw / "human_ratings.csv").unlink(missing_ok=True)
    path = raw / "human_ratings.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def test_label_studio_export_becomes_long_ratings(tiny_raw):
    write_export(tiny_raw, realistic_export())
    result = validate(tiny_raw, TAX, CRITERIA)
    assert result.problems == []
    ratings = result.tables["human_ratings"]
    assert ratings[LONG].values.tolist() == [["r1", "7", "fluency", 5], ["r1", "7", "general_empathy", 4],
                                             ["r1", "9", "fluency", 3], ["r2", "7", "fluency", 4]]
    assert list(ratings.columns) == LONG  # data fields and Label Studio ids stay out of the table
    assert result.imports["human_ratings"] == {"format": "labelstudio", "tasks": 3, "annotations": 3, "cancelled": 1,
                                               "tasks_without_annotations": 1, "other_results": 2, "ratings": 4}
    assert "3 tasks, 3 annotations (1 cancelled, skipped" in result.notes[0]


def test_rater_falls_back_to_email_when_the_object_has_no_id(tiny_raw):
    tasks = realistic_export()
    tasks[0]["annotations"][1]["completed_by"] = {"email": "b@example.org"}
    write_export(tiny_raw, tasks)
    ratings = validate(tiny_raw, TAX, CRITERIA).tables["human_ratings"]
    assert "b@example.org" in set(ratings["rater_id"])


def test_bad_ratings_in_an_export_name_the_task(tiny_raw):
    tasks = realistic_export()
    tasks[1]["annotations"][0]["result"][0]["value"]["rating"] = 7
    tasks[0]["annotations"][0]["result"].append(rating("tastiness", 3))
    tasks[0]["annotations"][1]["completed_by"] = None
    write_export(tiny_raw, tasks)
    found = [str(p) for p in validate(tiny_raw, TAX, CRITERIA).problems]
    path = tiny_raw / "human_ratings.json"
    assert f"{path}: task 2 [score]: score '7' is not an integer from 1 to 5 (task id 102, annotation id 4, " \
           f"rater 7)" in found
    assert any(p.startswith(f"{path}: task 1 [criterion]: unknown criterion 'tastiness'") for p in found)
    assert f"{path}: task 1 [rater_id]: empty or whitespace-only 'rater_id' (task id 101, annotation id 2, " \
           f"rater None)" in found


def test_bad_export_rows_are_kept_in_rejected_csv(make_cfg, tiny_raw, tmp_path):
    tasks = realistic_export()
    tasks[1]["annotations"][0]["result"][0]["value"]["rating"] = "x"
    write_export(tiny_raw, tasks)
    prepare.run(make_cfg(f"data.raw_dir={tiny_raw}", "data.strict=false", "mlflow.enabled=false"))
    rejected = pd.read_csv(tmp_path / "reports" / "data" / "rejected.csv")
    (bad,) = rejected.to_dict(orient="records")
    assert bad["row"] == 2 and bad["column"] == "score" and "task id 102" in bad["reason"]
    assert json.loads(bad["record"]) == {"response_id": "r2", "rater_id": "7", "criterion": "fluency", "score": "x"}
    kept = pd.read_parquet(tmp_path / "artifacts" / "prepare" / "human_ratings.parquet")
    assert len(kept) == 3
    stats = json.loads((tmp_path / "reports" / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["imports"]["human_ratings"]["cancelled"] == 1


@pytest.mark.parametrize("content, message", [
    ([{"id": 1, "data": {}, "annotations": {"oops": 1}}], "task 1: `annotations` is not a list"),
    ([{"id": 1, "data": {}, "annotations": []}, "text"], "task 2: not an object"),
    ([{"id": 1, "data": {"response_id": "r1"}, "annotations": []}], "empty file (no ratings (Label Studio export"),
    ({"tasks": []}, "a .json table must be a list of row objects"),
])
def test_malformed_json_is_one_clear_file_error(tiny_raw, content, message):
    write_export(tiny_raw, content)
    (problem,) = validate(tiny_raw, TAX, CRITERIA).problems
    assert problem.file.endswith("human_ratings.json") and message in problem.reason


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_wide_table_is_melted_to_long(tiny_raw, fmt):
    (tiny_raw / "human_ratings.csv").unlink()
    wide = pd.DataFrame([["r1", "a", "5", "４", "丁寧"], ["r2", "a", "", "3", ""], ["r1", "b", "4", " ", None]],
                        columns=["response_id", "rater_id", "fluency", "general_empathy", "comment"])
    path = tiny_raw / f"human_ratings.{fmt}"
    wide.to_csv(path, index=False) if fmt == "csv" else wide.to_excel(path, index=False)
    result = validate(tiny_raw, TAX, CRITERIA)
    assert result.problems == []
    assert result.tables["human_ratings"][LONG].values.tolist() == [  # criteria in data.criteria order
        ["r1", "a", "general_empathy", 4], ["r1", "a", "fluency", 5], ["r2", "a", "general_empathy", 3],
        ["r1", "b", "fluency", 4]]  # empty cells are no rating
    assert result.imports["human_ratings"]["criteria"] == ["general_empathy", "fluency"]
    assert "no column for ['content_comprehensibility'" in result.notes[0]


def test_wide_table_problem_names_row_and_criterion_column(tiny_raw):
    write_csv(tiny_raw / "human_ratings.csv", ["response_id", "rater_id", "fluency", "consistency"],
              [["r1", "a", "5", "3"], ["r2", "a", "x", "2"], ["r1", "a", "4", ""]])
    found = [str(p) for p in validate(tiny_raw, TAX, CRITERIA).problems]
    path = tiny_raw / "human_ratings.csv"
    assert found == [f"{path}: row 3 [fluency]: score 'x' is not an integer from 1 to 5",
                     f"{path}: row 4 [fluency]: duplicate rating for ('r1', 'a', 'fluency') (first at row 2)"]


def test_neither_long_nor_wide_says_both_shapes(tiny_raw):
    write_csv(tiny_raw / "human_ratings.csv", ["response_id", "rater_id", "fluidity"], [["r1", "a", "5"]])
    (problem,) = validate(tiny_raw, TAX, CRITERIA).problems
    assert "missing required column(s) ['criterion', 'score']" in problem.reason
    assert "or a wide table: response_id, rater_id and one column per criterion" in problem.reason
    (tiny_raw / "human_ratings.csv").unlink()
    minimal = [{"id": 101, "response_id": "r1", "annotator": "b@example.org", "annotation_id": 2, "fluency": 3}]
    write_export(tiny_raw, minimal)
    (problem,) = validate(tiny_raw, TAX, CRITERIA).problems
    assert "Label Studio's JSON-MIN export: export as JSON" in problem.reason


# ---- the export tool and the round trip --------------------------------------------------------------------

@pytest.fixture
def annotate_root(make_cfg, tmp_path) -> Path:
    """The sample prepared under tmp_path, with generated responses: the last `dvc repro`'s when there, else
    two systems written here in generate's format."""
    prepare.run(make_cfg(f"data.raw_dir={SAMPLE}", "mlflow.enabled=false"))
    target = tmp_path / "artifacts" / "generate" / "responses.parquet"
    target.parent.mkdir(parents=True)
    real = ROOT / "artifacts" / "generate" / "responses.parquet"
    if real.exists():
        shutil.copy(real, target)
    else:
        test = pd.read_parquet(tmp_path / "artifacts" / "prepare" / "test.parquet")
        gen = pd.concat([test.assign(system="echo", response=test["patient"]),
                         test.assign(system="short", response="お大事にしてください。")])
        gen["response_id"] = gen["system"] + ":" + gen["dialogue_id"]
        gen[["response_id", "dialogue_id", "system", "response"]].to_parquet(target)
    return tmp_path


def export(make_cfg, root: Path, *overrides: str) -> tuple[list[dict], pd.DataFrame]:
    annotate.run(make_cfg(f"annotate.out_dir={root}/out", *overrides))
    tasks = json.loads((root / "out" / "tasks.json").read_text(encoding="utf-8"))
    return tasks, read_table(root / "out" / "rated_responses.csv").frame


def test_export_is_blind_stable_and_maps_ids_to_systems(make_cfg, annotate_root):
    tasks, rated = export(make_cfg, annotate_root, "annotate.sources=[generate,human]")
    gen = pd.read_parquet(annotate_root / "artifacts" / "generate" / "responses.parquet")
    test = pd.read_parquet(annotate_root / "artifacts" / "prepare" / "test.parquet")
    assert len(tasks) == len(rated) == len(gen) + len(test)
    assert set(tasks[0]) == {"data"}
    assert list(tasks[0]["data"]) == ["response_id", "dialogue_id", "situation", "patient", "response"]  # no system
    ids = [t["data"]["response_id"] for t in tasks]
    assert len(set(ids)) == len(ids) and all(i.startswith("r-") for i in ids)
    assert not any(s in i for i in ids for s in set(rated["system"]))
    assert list(rated.columns[:4]) == ["response_id", "dialogue_id", "system", "response"]
    assert set(rated["system"]) == set(gen["system"]) | {HUMAN_SYSTEM}
    by_id = rated.set_index("response_id")
    first = tasks[0]["data"]
    assert by_id.loc[first["response_id"], "response"] == first["response"]
    assert tasks == export(make_cfg, annotate_root, "annotate.sources=[generate,human]")[0]  # stable

    system = sorted(gen["system"])[0]
    tasks, rated = export(make_cfg, annotate_root, f'annotate.systems=["{system}"]', "annotate.blind=false",
                          "annotate.sample_n=5")
    assert len(tasks) == 5 and set(rated["system"]) == {system}
    assert [t["data"]["system"] for t in tasks] == [system] * 5
    assert all(t["data"]["response_id"] == f"{system}:{t['data']['dialogue_id']}" for t in tasks)
    with pytest.raises(AnnotateError, match="no responses of \\['nobody'\\]; available"):
        export(make_cfg, annotate_root, "annotate.systems=[nobody]")


def test_labeling_config_has_one_rating_per_criterion(make_cfg, annotate_root):
    export(make_cfg, annotate_root, "annotate.sources=[human]")
    view = ET.parse(annotate_root / "out" / "labeling_config.xml").getroot()
    ratings = view.findall(".//Rating")
    assert [r.get("name") for r in ratings] == CRITERIA
    assert {(r.get("toName"), r.get("maxRating")) for r in ratings} == {("response", "5")}
    assert [t.get("value") for t in view.findall("Text")] == ["$situation", "$patient", "$response"]
    headers = [h.get("value") for h in view.iter("Header")]
    assert "共感性（general_empathy）" in headers and "患者の気持ちや立場に寄り添い、理解を示しているか。" in headers


def rated_like_label_studio(tasks: list[dict]) -> tuple[list[dict], pd.DataFrame]:
    """The export Label Studio gives after raters 1, 2, 3 rated every task (rater 3 exported in object form,
    rater 2 skipping fluency on every third task, a cancelled annotation, comments), and the same ratings as
    a long table. Scores are seeded."""
    rng = np.random.default_rng(0)
    exported, rows, aid = [], [], 0
    for n, t in enumerate(tasks):
        tid, rid = 500 + n, t["data"]["response_id"]
        annotations = []
        if n == 0:
            aid += 1
            annotations.append(annotation(aid, 4, [rating(c, 1) for c in CRITERIA], tid, cancelled=True))
        base = rng.integers(1, 6)
        for rater in (1, 2, 3):
            aid += 1
            results = []
            for c in CRITERIA:
                if rater == 2 and c == "fluency" and n % 3 == 0:
                    continue
                score = int(np.clip(base + rng.integers(-1, 2), 1, 5))
                results.append(rating(c, score, f"{aid}-{c}"))
                rows.append([rid, str(rater), c, score])
            if rater == 1:
                results.append(COMMENT)
            who = {"id": 3, "email": "rater3@example.org", "first_name": "", "last_name": ""} if rater == 3 else rater
            annotations.append(annotation(aid, who, results, tid))
        exported.append(task(tid, t["data"], annotations))
    return exported, pd.DataFrame(rows, columns=LONG)


def judge_scores(rated: pd.DataFrame) -> pd.DataFrame:
    """What the judge writes for these responses: the last `dvc repro`'s hf_local scores of the same texts
    (generated: gen:<system>:<dialogue_id>, human turns: human:<dialogue_id>) when they cover every response;
    else seeded stand-in scores."""
    real = ROOT / "artifacts" / "judge" / "hf_local" / "scores.parquet"
    key = rated["system"] + ":" + rated["dialogue_id"]
    if real.exists():
        scores = pd.read_parquet(real)
        item = np.where(scores["source"] == "human", HUMAN_SYSTEM + ":" + scores["dialogue_id"],
                        scores["response_id"].str.removeprefix("gen:"))
        ids = dict(zip(key, rated["response_id"], strict=True))
        scores = scores.assign(response_id=[ids.get(i) for i in item]).dropna(subset=["response_id"])
        if scores["response_id"].nunique() == len(rated):
            return scores.drop(columns="system").merge(rated[["response_id", "system"]], on="response_id")
    rng = np.random.default_rng(1)
    grid = rated[["response_id", "system"]].merge(pd.DataFrame({"criterion": CRITERIA}), how="cross")
    return grid.assign(score=rng.uniform(1, 5, len(grid)))


def test_round_trip_label_studio_equals_long_csv(make_cfg, annotate_root, tmp_path):
    tasks, _ = export(make_cfg, annotate_root, "annotate.sources=[generate,human]")
    rated_csv = annotate_root / "out" / "rated_responses.csv"
    ls_export, long = rated_like_label_studio(tasks)
    results, metrics = {}, {}
    for name in ("labelstudio", "long"):
        raw, root = tmp_path / name / "data", tmp_path / name
        raw.mkdir(parents=True)
        for stem in ("situations", "dialogues"):
            shutil.copy(SAMPLE / f"{stem}.csv", raw)
        shutil.copy(rated_csv, raw)
        if name == "long":
            long.to_csv(raw / "human_ratings.csv", index=False)
        else:
            write_export(raw, ls_export)
        cfg = make_cfg(f"data.raw_dir={raw}", f"paths.artifacts={root}/artifacts", f"paths.reports={root}/reports",
                       "mlflow.enabled=false", "agreement.bootstrap.n_resamples=200")
        prepare.run(cfg)
        prep = root / "artifacts" / "prepare"
        results[name] = pd.read_parquet(prep / "human_ratings.parquet")
        # the judge takes the exported responses as its `rated` source, beside its own (no id clashes)
        items, _ = collect(prep, annotate_root / "artifacts" / "generate" / "responses.parquet", TAX,
                           ["human", "generate", "rated"])
        rated = pd.read_parquet(prep / "rated_responses.parquet")
        assert {i.item_id for i in items if i.source == "rated"} == set(rated["response_id"])
        (root / "artifacts" / "judge" / "hf_local").mkdir(parents=True)
        judge_scores(rated).to_parquet(root / "artifacts" / "judge" / "hf_local" / "scores.parquet")
        metrics[name] = agreement.run(cfg)
    pd.testing.assert_frame_equal(results["labelstudio"], results["long"])
    assert len(results["long"]) == len(long) and results["long"]["rater_id"].nunique() == 3
    ls, lg = metrics["labelstudio"], metrics["long"]
    assert ls.keys() == lg.keys() and ls["agreement/general_empathy/n"] == len(tasks)
    assert all(ls[k] == lg[k] or (math.isnan(ls[k]) and math.isnan(lg[k])) for k in ls)
    assert math.isfinite(ls["agreement/response_level/spearman"])


def test_cli_runs_as_the_readme_types_it(annotate_root):
    proc = subprocess.run([sys.executable, "-m", "emplifai.annotate", "annotate.sources=[generate,human]",
                           "annotate.sample_n=20"], capture_output=True, text=True, env=ENV, cwd=annotate_root)
    assert proc.returncode == 0, proc.stderr
    assert "annotate: 20 responses" in proc.stdout
    assert len(json.loads((annotate_root / "artifacts" / "annotate" / "tasks.json").read_text("utf-8"))) == 20
    bad = subprocess.run([sys.executable, "-m", "emplifai.annotate", "annotate.sources=[rated]"],
                         capture_output=True, text=True, env=ENV, cwd=annotate_root)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "annotate.sources" in bad.stderr
