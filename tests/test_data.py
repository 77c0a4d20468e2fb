"""The raw-data contract: formats, encodings, every validation rule (file + row + reason), splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose_cfg, write_csv
from emplifai.data.io import read_table
from emplifai.data.taxonomy import Taxonomy, TaxonomyError
from emplifai.prepare.splits import split_dialogues
from emplifai.prepare.validate import validate

TAX = Taxonomy.from_config(compose_cfg().taxonomy)
CRITERIA = list(compose_cfg().data.criteria)


def problems(raw: Path) -> list[str]:
    return [str(p) for p in validate(raw, TAX, CRITERIA).problems]


def test_shipped_taxonomy_has_28_emotions_with_japanese_names():
    assert len(TAX.keys) == 28 and "neutral" in TAX.keys
    assert TAX.lookup("悲しみ") == "sadness" and TAX.lookup(" Sadness ") == "sadness"
    assert TAX.lookup("unknown") is None


def test_tiny_raw_is_clean(tiny_raw):
    result = validate(tiny_raw, TAX, CRITERIA)
    assert result.problems == []
    assert len(result.tables["dialogues"]) == 24
    assert result.tables["human_ratings"]["score"].tolist() == [5, 4]  # full-width ４ accepted


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_encodings_keep_japanese_intact(tiny_raw, encoding):
    frame = pd.read_csv(tiny_raw / "situations.csv", dtype=str)
    frame.to_csv(tiny_raw / "situations.csv", index=False, encoding=encoding)
    table = read_table(tiny_raw / "situations.csv")
    assert table.frame["situation"].iloc[0] == "通院中の患者の状況その0。"
    assert list(table.frame.columns)[:3] == ["situation_id", "emotion", "situation"]  # no BOM in the name
    assert validate(tiny_raw, TAX, CRITERIA).problems == []


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "json", "parquet", "xlsx"])
def test_every_format_reads_the_same(tiny_raw, fmt):
    for stem in ("situations", "dialogues"):
        frame = pd.read_csv(tiny_raw / f"{stem}.csv", dtype=str)
        (tiny_raw / f"{stem}.csv").unlink()
        target = tiny_raw / f"{stem}.{fmt}"
        {"tsv": lambda f, t: f.to_csv(t, sep="\t", index=False),
         "jsonl": lambda f, t: f.to_json(t, orient="records", lines=True, force_ascii=False),
         "json": lambda f, t: f.to_json(t, orient="records", force_ascii=False, indent=1),
         "parquet": lambda f, t: f.to_parquet(t, index=False),
         "xlsx": lambda f, t: f.to_excel(t, index=False)}[fmt](frame, target)
    result = validate(tiny_raw, TAX, CRITERIA)
    assert result.problems == []
    assert result.tables["situations"]["situation"].iloc[3] == "通院中の患者の状況その3。"


# One bad file per rule: (table, header, rows, expected file, expected row, expected words)
SIT_H = ["situation_id", "emotion", "situation"]
DIA_H = ["dialogue_id", "situation_id", "patient", "supporter"]
RAT_H = ["response_id", "rater_id", "criterion", "score"]
RULES = {
    "missing column": ("situations.csv", ["situation_id", "situation"], [["s0", "x"]], 1, "missing required column"),
    "empty text": ("situations.csv", SIT_H, [["s0", "sadness", "a"], ["s1", "joy", "   "]], 3, "empty or whitespace-only"),
    "duplicate id": ("situations.csv", SIT_H, [["s0", "sadness", "a"], ["s0", "joy", "b"]], 3, "duplicate situation_id 's0' (first at row 2)"),
    "unknown emotion": ("situations.csv", SIT_H, [["s0", "hunger", "a"]], 2, "unknown emotion 'hunger'; valid"),
    "missing situation": ("dialogues.csv", DIA_H, [["dX", "s999", "p", "s"]], 2, "situation_id 's999' not found"),
    "rating for missing response": ("human_ratings.csv", RAT_H, [["r9", "a", "fluency", "3"]], 2, "rating for missing response 'r9'"),
    "score out of range": ("human_ratings.csv", RAT_H, [["r1", "a", "fluency", "6"]], 2, "score '6' is not an integer from 1 to 5"),
    "score not integer": ("human_ratings.csv", RAT_H, [["r1", "a", "fluency", "3.5"]], 2, "is not an integer from 1 to 5"),
    "unknown criterion": ("human_ratings.csv", RAT_H, [["r1", "a", "tastiness", "3"]], 2, "unknown criterion 'tastiness'"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_names_file_row_and_reason(tiny_raw, rule):
    name, header, rows, row, words = RULES[rule]
    if name == "dialogues.csv":  # keep the valid dialogues, add the bad one at the end
        good = pd.read_csv(tiny_raw / name, dtype=str).values.tolist()
        rows, row = good + rows, len(good) + 2
    write_csv(tiny_raw / name, header, rows)
    found = problems(tiny_raw)
    expected = f"{tiny_raw / name}: row {row}"
    assert any(p.startswith(expected) and words in p for p in found), found


def test_unknown_emotion_lists_valid_labels(tiny_raw):
    write_csv(tiny_raw / "situations.csv", SIT_H, [["s0", "hunger", "a"]])
    message = next(p for p in problems(tiny_raw) if "hunger" in p)
    assert "sadness(悲しみ)" in message and "neutral(中立)" in message


def test_dialogue_emotion_must_agree_with_situation(tiny_raw):
    frame = pd.read_csv(tiny_raw / "dialogues.csv", dtype=str)
    frame["emotion"] = "悲しみ"  # s0 is sadness; s1 is joy → every s1 dialogue disagrees
    frame.to_csv(tiny_raw / "dialogues.csv", index=False)
    found = problems(tiny_raw)
    assert any("row 5 [emotion]: emotion '悲しみ' disagrees with situation 's1' (joy)" in p for p in found), found


def test_undecodable_bytes_are_reported_at_their_line(tiny_raw):
    data = (tiny_raw / "situations.csv").read_bytes().replace("その2".encode(), b"\xff\xfe\xfa")
    (tiny_raw / "situations.csv").write_bytes(data)
    found = problems(tiny_raw)
    assert any("situations.csv: row 4" in p and "undecodable bytes" in p for p in found), found


def test_empty_file_is_reported(tiny_raw):
    (tiny_raw / "dialogues.csv").write_bytes(b"")
    assert any("dialogues.csv: file" in p and "empty file" in p for p in problems(tiny_raw))


def test_header_only_file_is_reported(tiny_raw):
    write_csv(tiny_raw / "situations.csv", SIT_H, [])
    assert any("situations.csv" in p and "empty file (no data rows)" in p for p in problems(tiny_raw))


def test_rejected_situation_cascades_with_its_reason(tiny_raw):
    frame = pd.read_csv(tiny_raw / "situations.csv", dtype=str)
    frame.loc[0, "emotion"] = "hunger"
    frame.to_csv(tiny_raw / "situations.csv", index=False)
    result = validate(tiny_raw, TAX, CRITERIA)
    assert any("situation 's0' was rejected (situations.csv row 2)" in str(p) for p in result.problems)
    assert "s0" not in set(result.tables["dialogues"]["situation_id"])
    assert len(result.rejected_frame()) == 1 + 3 + 2  # situation, its 3 dialogues, r1, r1's rating


def test_custom_taxonomy_from_file(tmp_path, tiny_raw):
    labels = tmp_path / "ed32.yaml"
    labels.write_text("name: custom\nemotions:\n  - {key: sadness, ja: 悲しみ}\n  - {key: joy, ja: 喜び}\n"
                      "  - {key: afraid, ja: 恐怖}\n  - {key: relief, ja: 安心}\n", encoding="utf-8")
    tax = Taxonomy.from_config(compose_cfg([f"taxonomy.file={labels}"]).taxonomy)
    assert tax.name == "custom" and len(tax.keys) == 4
    found = [str(p) for p in validate(tiny_raw, tax, CRITERIA).problems]
    unknown = [p for p in found if "unknown emotion 'fear'" in p]
    assert len(unknown) == 2 and len(found) == 2 + 6  # s2, s6 are "fear"; their 6 dialogues cascade


def test_malformed_taxonomy_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nemotions:\n  - {key: a}\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="emotion #1 needs `key` and `ja`"):
        Taxonomy.from_config(compose_cfg([f"taxonomy.file={bad}"]).taxonomy)


@pytest.mark.parametrize("seed", range(25))
def test_no_situation_leaks_across_splits(seed):
    rng = np.random.default_rng(seed)
    n_sit = int(rng.integers(3, 80))
    sits = pd.DataFrame({"situation_id": [f"s{i}" for i in range(n_sit)],
                         "emotion": rng.choice(["a", "b", "c", "d", "e"], n_sit)})
    frame = sits.loc[sits.index.repeat(rng.integers(1, 6, n_sit))].reset_index(drop=True)
    ratios = rng.dirichlet([2, 1, 1])
    split = split_dialogues(frame, *ratios, seed=seed)
    assert split.isin(["train", "val", "test"]).all()
    assert (frame.assign(split=split).groupby("situation_id")["split"].nunique() == 1).all()
    again = split_dialogues(frame, *ratios, seed=seed)
    assert split.equals(again)  # seeded


def test_splits_keep_every_emotion_in_train_and_are_near_the_ratios(tiny_raw):
    frame = pd.read_csv(tiny_raw / "dialogues.csv").merge(pd.read_csv(tiny_raw / "situations.csv"))
    frame = pd.concat([frame.assign(situation_id=frame["situation_id"] + f"_{k}") for k in range(5)])
    split = split_dialogues(frame, 0.7, 0.15, 0.15, seed=0)
    share = split.value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.1 and share["val"] > 0.05 and share["test"] > 0.05
    assert frame[split == "train"]["emotion"].nunique() == 4


def test_read_table_reports_ragged_rows(tmp_path):
    path = tmp_path / "situations.csv"
    path.write_text("situation_id,emotion,situation\ns0,joy,a,EXTRA\n", encoding="utf-8")
    with pytest.raises(Exception, match="row 2: 4 fields but the header has 3"):
        read_table(path)


def test_jsonl_invalid_line_is_named(tmp_path):
    path = tmp_path / "situations.jsonl"
    path.write_text(json.dumps({"situation_id": "s0"}) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(Exception, match="row 2: invalid JSON"):
        read_table(path)


def test_jsonl_text_with_unicode_line_separators_is_one_record(tmp_path):
    """json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw inside a string: still one line of JSONL."""
    path = tmp_path / "situations.jsonl"
    rows = [{"situation_id": "s0", "emotion": "joy", "situation": "一行目\u2028二行目\u2029三\x85四"},
            {"situation_id": "s1", "emotion": "fear", "situation": "ふつう"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    table = read_table(path)
    assert len(table.frame) == 2 and table.frame["situation"].iloc[0] == rows[0]["situation"]


@pytest.mark.parametrize("text, message", [
    ("name: t\nemotions:\n  - {key: joy, ja: 喜び\n", r"labels\.yaml: not valid YAML \(line \d+, column \d+"),
    ("name: t\nemotions:\n  - {key: joy, ja: 喜び, ja: うれしさ}\n", r"labels\.yaml: line 3: key 'ja' given twice"),
    ("name: t\nname: u\nemotions:\n  - {key: joy, ja: 喜び}\n", r"labels\.yaml: line 2: key 'name' given twice"),
    ("name: t\nemotions:\n  - {key: Joy, ja: 喜び}\n  - {key: joy, ja: うれしさ}\n",
     r"duplicate label 'joy' \(emotion 'joy'\) collides with 'Joy' \(emotion 'Joy'\)"),
    ("name: t\nemotions:\n  - {key: joy, ja: 喜び}\n  - {key: glee, ja: 喜び}\n", r"duplicate ja \['喜び'\]"),
])
def test_a_bad_taxonomy_file_is_one_clear_error(tmp_path, text, message):
    from omegaconf import OmegaConf

    from emplifai.data.taxonomy import Taxonomy, TaxonomyError

    path = tmp_path / "labels.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.from_config(OmegaConf.create({"file": str(path)}))
