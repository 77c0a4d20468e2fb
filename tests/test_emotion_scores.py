"""Stage `emotion`'s scores must discriminate: the label-separation check (constructed vectors), chiVe from the
installed ja-ginza package, scores rescaled to the taxonomy's own baseline, and — end to end on the sample —
no wrong label scoring like agreement on the vector cosine."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, compose_cfg
from emplifai.core.metrics_file import read_metrics
from emplifai.data.taxonomy import Taxonomy
from emplifai.emotion import __main__ as emotion
from emplifai.emotion import scoring, separation, wordvec
from emplifai.metrics.bertscore import BertScorer

torch.set_num_threads(2)
ENCODER = {"name": "e5-small", "path": str(ROOT / "models/base/e5-small"), "num_layers": 9}
needs_e5 = pytest.mark.skipif(not (ROOT / "models/base/e5-small/config.json").exists(),
                              reason="run `dvc repro models` first")
TAXONOMY = Taxonomy.from_config(compose_cfg().taxonomy)
NAMES = TAXONOMY.ja_names
CHECK = {"pair": 0.9, "max_mean": 0.8, "max_share": 0.5}


class Constructed(wordvec.WordVectors):
    """Vectors given by hand, name → vector (unknown text: no vector)."""

    source = "constructed"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def lookup(self, text: str) -> tuple[np.ndarray, str]:
        vec = self.table.get(text)
        return (vec, "word") if vec is not None else (np.zeros(3), "none")


class StubScorer:
    """BERTScore stand-in: these tests are about the vector cosine only."""

    def score(self, cands: list[str], refs: list[str]) -> np.ndarray:
        return np.array([[1.0, 1.0, 1.0] if c == r else [0.5, 0.5, 0.5] for c, r in zip(cands, refs, strict=True)])


def _frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """(gold key, predicted key) rows as emotion.to_frame makes them."""
    return pd.DataFrame({"gold": [g for g, _ in rows], "gold_ja": [TAXONOMY.ja(g) for g, _ in rows],
                         "label": [p for _, p in rows], "label_ja": [TAXONOMY.ja(p) for _, p in rows],
                         "text": [TAXONOMY.ja(p) for _, p in rows], "valid": True})


def _scored(vectors: wordvec.WordVectors, rows: list[tuple[str, str]]) -> tuple[pd.DataFrame, separation.LabelSeparation]:
    cos = separation.similarity_matrix(NAMES, vectors.cosines)
    vec_sep = separation.check("wordvec_cos", NAMES, cos, CHECK, TAXONOMY.keys)
    bert_sep = separation.check("bertscore_f1", NAMES, separation.similarity_matrix(
        NAMES, lambda a, b: StubScorer().score(a, b)[:, 2]), CHECK, TAXONOMY.keys)
    return emotion.add_scores(_frame(rows), StubScorer(), vectors, vec_sep, bert_sep), vec_sep


def test_separation_check_collapsed_vectors_give_nan_with_reason():
    rng = np.random.default_rng(0)
    base = rng.normal(size=50)
    collapsed = Constructed({n: base + 1e-3 * rng.normal(size=50) for n in NAMES})   # every name ≈ one vector
    frame, sep = _scored(collapsed, [("joy", "sadness"), ("joy", "joy"), ("fear", "relief")])
    assert sep.reason and "does not separate" in sep.reason and sep.baseline > 0.99
    assert frame["wordvec_cos"].isna().all() and frame["wordvec_cos_rescaled"].isna().all()
    assert (frame["wordvec_note"] == sep.reason).all()
    metrics, reasons = scoring.metrics(frame.assign(bertscore_p=0.5, bertscore_r=0.5), 50, 0.95, 0)
    assert math.isnan(metrics["emotion/wordvec_cos"]) and reasons["emotion/wordvec_cos"] == sep.reason
    assert metrics["emotion/wordvec_cos_n"] == 0 and not math.isnan(metrics["emotion/bertscore_f1"])


def test_separation_check_separated_vectors_give_numbers_and_void_only_unseparated_pairs():
    table = {n: np.eye(len(NAMES))[i] for i, n in enumerate(NAMES)}
    table["苛立ち"] = table["怒り"] + 1e-3 * np.eye(len(NAMES))[0]       # one synonym pair shares a vector
    frame, sep = _scored(Constructed(table), [("joy", "sadness"), ("joy", "joy"), ("anger", "annoyance")])
    assert not sep.reason and sep.unseparated.keys() == {frozenset(("怒り", "苛立ち"))}
    assert frame["wordvec_cos"].tolist()[:2] == pytest.approx([0.0, 1.0])
    assert math.isnan(frame["wordvec_cos"].iloc[2]) and "怒り" in frame["wordvec_note"].iloc[2]
    assert frame["wordvec_note"].iloc[:2].tolist() == ["", ""]
    assert frame["wordvec_cos_rescaled"].iloc[1] == pytest.approx(1.0)


def test_chive_loaded_from_the_package_covers_the_taxonomy_and_ranks_synonyms_first():
    vec = wordvec.ChiveVectors()
    assert vec.table.shape == (20000, 300) and len(vec.key2row) > 400_000
    how = {n: vec.how(n) for n in NAMES}
    assert all(h != "none" for h in how.values()), how                    # all 28 names have a vector
    assert sum(h == "word" for h in how.values()) >= 24                   # most are one chiVe word
    assert vec.how("気づき") == "tokens"                                   # Sudachi normalizes it to 気付き
    # synonyms closer than antonyms: taxonomy names, and everyday words for the same feelings
    assert vec.cosine("悲しみ", "悲嘆") > vec.cosine("悲しみ", "喜び")
    assert vec.cosine("喜び", "嬉しさ") > vec.cosine("喜び", "悲しみ")
    assert vec.cosine("不安", "心配") > vec.cosine("不安", "安心")
    cos = separation.similarity_matrix(NAMES, vec.cosines)
    sep = separation.check("wordvec_cos", NAMES, cos, CHECK, TAXONOMY.keys)
    assert not sep.reason and sep.baseline < 0.5                          # the names are told apart
    assert vec.how("") == "none" and math.isnan(vec.cosine("", "不安"))
    assert vec.cosine("とても不安です", "不安") == pytest.approx(vec.cosine("とても不安", "不安"))  # です dropped


@needs_e5
def test_rescaled_scores_are_one_on_identity_and_zero_on_the_taxonomy_baseline():
    scorer = BertScorer(ENCODER)
    vec = wordvec.ChiveVectors()
    for measure, fn in [("bertscore_f1", lambda a, b: scorer.score(a, b)[:, 2]), ("wordvec_cos", vec.cosines)]:
        m = separation.similarity_matrix(NAMES, fn)
        sep = separation.check(measure, NAMES, m, CHECK, TAXONOMY.keys)
        assert sep.rescale(np.diag(m)) == pytest.approx(np.ones(len(NAMES)), abs=1e-5), measure
        assert sep.rescale([sep.baseline])[0] == pytest.approx(0.0, abs=1e-12)
        assert sep.rescale(sep.offdiag).mean() == pytest.approx(0.0, abs=1e-9)
        assert 0.0 < sep.baseline < 0.9, measure                           # a wrong label reads ≈ 0, not ≈ 0.7


@needs_e5
@pytest.mark.parametrize("source", ["chive", "trained"])
def test_wrong_label_never_scores_like_agreement_end_to_end(make_cfg, tmp_path, source):
    """fasttext_clf on the shipped sample: a wrong label's cosine is < 0.9, or NaN with the reason."""
    from emplifai.prepare import __main__ as prepare

    cfg = make_cfg(f"data.raw_dir={ROOT / 'src/emplifai/sample'}", "emotion.predictors=null",
                   "predictor=fasttext_clf", f"emotion.vectors.source={source}", "mlflow.enabled=false",
                   "emotion.bootstrap.n_resamples=100")
    prepare.run(cfg)
    emotion.run(cfg)
    pred = pd.read_parquet(tmp_path / "artifacts/emotion/fasttext_clf/predictions.parquet")
    wrong = pred[pred["valid"] & (pred["label"] != pred["gold"])]
    assert len(wrong)
    assert ((wrong["wordvec_cos"] < 0.9) | (wrong["wordvec_note"] != "")).all(), wrong
    assert (wrong["wordvec_cos"].isna() == (wrong["wordvec_note"] != "")).all()
    assert (wrong["bertscore_f1_rescaled"] < wrong["bertscore_f1"]).all()
    labels = json.loads((tmp_path / "reports/emotion/label_separation.json").read_text())
    assert labels["vectors"]["source"] == source and labels["vectors"]["covered"] == 28
    metrics = read_metrics(tmp_path / "artifacts/emotion/fasttext_clf/metrics.json")
    if math.isnan(metrics.metrics["emotion/wordvec_cos"]):              # NaN (null) always comes with its reason
        assert metrics.missing["emotion/wordvec_cos"] == wrong["wordvec_note"].mode().iloc[0]
