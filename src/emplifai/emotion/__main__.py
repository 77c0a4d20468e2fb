"""Stage `emotion`: predict the patient's emotion on the test split, score it against the gold label.

    python -m emplifai.emotion                                    # emotion.predictors (fasttext_clf, hf_rank)
    python -m emplifai.emotion emotion.predictors=null predictor=hf_rank model=smollm2-135m emotion.first_n=5
    python -m emplifai.emotion 'emotion.predictors=[fasttext_clf,hf_generate]'   # one MLflow run per predictor
    python -m emplifai.emotion -m emotion.predictors=null predictor=fasttext_clf,hf_rank,hf_generate  # multirun
    dvc exp run -S predictor=hf_rank -S predictor.calibrate=false   # tune a listed predictor (see predictor_cfgs)

Per predictor: artifacts/emotion/<predictor>/{predictions.parquet,metrics.json} and
reports/emotion/<predictor>/{per_emotion.csv,confusion.csv,confusion.png}, the (gold, predicted) pairs in
reports/emotion/predictions/<predictor>.csv (DVC's confusion plot); reports/emotion/metrics.json
holds every predictor's metrics (DVC metrics; updated per predictor, so a multirun fills it too).
Invalid answers are kept with their raw text, scored NaN and excluded from label metrics.
Before any predictor runs, the taxonomy's names are scored against each other with both measures
(predict/separation.py → reports/emotion/label_separation.*): vectors that do not separate them give NaN
cosines with the reason, and each measure's mean over different names is the 0 of its `*_rescaled` score.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.config import compose_option, option_values
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import update_metrics, write_metrics
from emplifai.core.paths import atomic_path, read_artifact, resolve
from emplifai.data.taxonomy import Taxonomy
from emplifai.emotion import scoring, separation, wordvec
from emplifai.emotion.breakdown import write_reports
from emplifai.emotion.predictors import Context, Prediction, resolve_predictor
from emplifai.emotion.separation import LabelSeparation
from emplifai.lm import setup_torch
from emplifai.metrics.bertscore import BertScorer

log = logging.getLogger(__package__)

# The config it reads = its MLflow params (dvc.yaml params but paths, conf_dir); the key metric picks a sweep's best.
CONFIG = ("seed", "device", "threads", "taxonomy", "model", "encoder", "predictor", "emotion")
KEY_METRIC = ("emotion/bertscore_f1", "max")


def load_split(cfg: DictConfig, split: str) -> pd.DataFrame:
    return read_artifact(resolve(cfg.paths.artifacts) / "prepare" / f"{split}.parquet")


def predictor_cfgs(cfg: DictConfig) -> list[DictConfig]:
    """One full config per predictor to run, each with its own `predictor` node (its MLflow run logs it).

    `emotion.predictors: null` runs the `predictor` group's choice. A list runs those names: the one equal to
    `predictor.name` takes cfg.predictor as composed (so `predictor.<key>=…`, e.g. `dvc exp run -S`, reaches
    it), every other name is conf/predictor/<name>.yaml composed by Hydra. `emotion.overrides.<name>` (a
    mapping) is merged over that predictor last, so any listed predictor can be tuned, several at once.
    """
    chosen = str(cfg.predictor.name)
    names = [str(n) for n in cfg.emotion.get("predictors") or [chosen]]
    if chosen not in names and _tuned(cfg, chosen):
        raise UserError(f"predictor={chosen} has its own settings but is not in emotion.predictors={names}, so "
                        f"they would be ignored: add {chosen} to the list, or set emotion.predictors=null to "
                        f"run only it (to tune a listed predictor: predictor=<name> predictor.<key>=…, or "
                        f"++emotion.overrides.<name>.<key>=…)")
    extra = cfg.emotion.get("overrides") or {}
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise UserError(f"emotion.overrides names {unknown}, which are not in emotion.predictors={names}")
    out = []
    for name in dict.fromkeys(names):
        one = (OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)) if name == chosen
               else compose_option(cfg, "predictor", name))
        if extra.get(name):
            one.predictor = OmegaConf.merge(one.predictor, extra[name])
        if cfg.emotion.get("predictors") and not cfg.mlflow.get("run_name"):
            one.mlflow.run_name = f"emotion predictor={name}"
        out.append(one)
    return out


def _tuned(cfg: DictConfig, name: str) -> bool:
    """Does cfg.predictor differ from conf/predictor/<name>.yaml (or is there no such option)?"""
    try:
        conf = option_values(cfg, "predictor", name)
    except UserError:
        return True
    return conf != OmegaConf.to_container(cfg.predictor, resolve=True)


def to_frame(preds: list[Prediction], test: pd.DataFrame, taxonomy: Taxonomy, name: str) -> pd.DataFrame:
    if len(preds) != len(test):
        raise UserError(f"predictor {name} returned {len(preds)} predictions for {len(test)} dialogues")
    return pd.DataFrame({
        "dialogue_id": test["dialogue_id"].to_numpy(), "gold": test["emotion"].to_numpy(),
        "gold_ja": [taxonomy.ja(k) for k in test["emotion"]], "predictor": name,
        "raw": [p.raw for p in preds], "text": [p.text for p in preds], "label": [p.label for p in preds],
        "label_ja": [taxonomy.ja(p.label) if p.label else "" for p in preds],
        "method": [p.method for p in preds], "valid": [p.valid for p in preds],
        "reason": [p.reason for p in preds], "confidence": [p.confidence for p in preds]})


def add_scores(frame: pd.DataFrame, scorer: BertScorer, vectors: wordvec.WordVectors,
               vec_sep: LabelSeparation, bert_sep: LabelSeparation) -> pd.DataFrame:
    """BERTScore and word-vector cosine of the scored text vs the gold name, raw and rescaled to the taxonomy's
    baseline. NaN for invalid rows, and a cosine the separation check voids (why: `wordvec_note`), so a wrong
    label never scores like agreement."""
    frame = frame.copy()
    for col in scoring.EMOTION_SCORES:
        frame[col] = np.nan
    frame[scoring.NOTE] = ""
    ok = frame.index[frame["valid"]]
    if len(ok):
        texts, golds = frame.loc[ok, "text"].tolist(), frame.loc[ok, "gold_ja"].tolist()
        prf = scorer.score(texts, golds)
        frame.loc[ok, ["bertscore_p", "bertscore_r", "bertscore_f1"]] = prf
        frame.loc[ok, "bertscore_f1_rescaled"] = bert_sep.rescale(prf[:, 2])
        cos, notes = [], []
        for text, gold, label in zip(texts, golds, frame.loc[ok, "label_ja"], strict=True):
            note = vec_sep.pair_reason(label, gold) if label else vec_sep.reason
            value = vectors.cosine(text, gold)
            if not note and math.isnan(value):
                missing = text if vectors.how(text) == "none" else gold
                note = f"no {vectors.source} vector for {missing!r}"
            cos.append(float("nan") if note else value)
            notes.append(note)
        frame.loc[ok, "wordvec_cos"] = cos
        frame.loc[ok, "wordvec_cos_rescaled"] = vec_sep.rescale(cos)
        frame.loc[ok, scoring.NOTE] = notes
    return frame


class Labels(NamedTuple):
    """The label-separation results every predictor's scoring and MLflow run share."""

    vectors: LabelSeparation
    bertscore: LabelSeparation
    metrics: dict[str, float]
    files: list[Path]


def label_separation(cfg: DictConfig, taxonomy: Taxonomy, vectors: wordvec.WordVectors,
                     scorer: BertScorer) -> Labels:
    """Both measures on every pair of taxonomy names, before scoring; coverage = how each name got its vector
    (wordvec.HOW)."""
    names, keys, sep_cfg = taxonomy.ja_names, taxonomy.keys, cfg.emotion.separation
    cos = separation.similarity_matrix(names, vectors.cosines)
    vec_sep = separation.check("wordvec_cos", names, cos, sep_cfg, keys)
    f1 = separation.similarity_matrix(names, lambda a, b: scorer.score(a, b)[:, 2])
    bert_sep = separation.check("bertscore_f1", names, f1, sep_cfg, keys)
    how = {n: vectors.how(n) for n in names}
    covered = [n for n in names if how[n] != "none"]
    info = {"source": vectors.source, "description": vectors.description, "names": len(names),
            "covered": len(covered), "coverage": len(covered) / len(names),
            "how": {h: sum(v == h for v in how.values()) for h in wordvec.HOW if h in how.values()},
            "not_one_word": {n: h for n, h in how.items() if h != "word"}}
    files = separation.write([vec_sep, bert_sep], info, resolve(cfg.paths.reports) / "emotion")
    metrics = vec_sep.metrics() | bert_sep.metrics() | {"emotion/labels/wordvec_coverage": info["coverage"]}
    log.info(f"emotion: vectors={vectors.source} ({vectors.description}), {len(covered)}/{len(names)} names covered "
          f"{info['how']}; different names: wordvec_cos mean {vec_sep.baseline:.3f} max "
          f"{metrics['emotion/labels/wordvec_cos_offdiag_max']:.3f}, bertscore_f1 mean {bert_sep.baseline:.3f}"
          + (f" — {vec_sep.reason}: wordvec_cos is NaN" if vec_sep.reason else ""))
    return Labels(vec_sep, bert_sep, metrics, files)


def summary_key(predictor: str, key: str) -> str:
    """A predictor run's `emotion/<metric>` as reports/emotion/metrics.json (all predictors) keys it."""
    return f"emotion/{predictor}/{key.removeprefix('emotion/')}"


def run_predictor(cfg: DictConfig, test: pd.DataFrame, train: pd.DataFrame, val: pd.DataFrame,
                  taxonomy: Taxonomy, scorer, vectors: wordvec.WordVectors, labels: Labels, device: str
                  ) -> dict[str, float]:
    name = str(cfg.predictor.name)
    out_dir = resolve(cfg.paths.artifacts) / "emotion" / name
    rep_dir = resolve(cfg.paths.reports) / "emotion" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, taxonomy, train, val, scorer, device, int(cfg.seed), out_dir)
    with tracking.stage_run(cfg, "emotion", {"predictor": name}, config=CONFIG, key_metric=KEY_METRIC) as run_:
        for split in dict.fromkeys(("train", "val", str(cfg.emotion.split))):
            run_.log_split(split, resolve(cfg.paths.artifacts) / "prepare" / f"{split}.parquet")
        preds = resolve_predictor(cfg.predictor)(ctx, test)
        frame = add_scores(to_frame(preds, test, taxonomy, name), scorer(), vectors, labels.vectors, labels.bertscore)
        b = cfg.emotion.bootstrap
        metrics, reasons = scoring.metrics(frame, int(b.n_resamples), float(b.level), int(cfg.seed))
        metrics |= ctx.metrics | labels.metrics
        reasons |= {k: labels.vectors.reason or "no pair of taxonomy names to compare"
                    for k, v in labels.metrics.items() if math.isnan(v)}
        with atomic_path(out_dir / "predictions.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        tags = {"predictor": name, "vectors": vectors.source, "vectors.description": vectors.description}
        write_metrics(out_dir / "metrics.json", metrics, reasons, tags | run_.file_tags())
        reports = write_reports(frame, taxonomy, name, rep_dir, (int(b.n_resamples), float(b.level),
                                                                 int(cfg.seed)))
        run_.log_metrics(metrics, reasons=reasons)
        run_.set_tags(tags)
        for path in (out_dir / "predictions.parquet", out_dir / "metrics.json", *reports, *labels.files):
            run_.log_artifact(path, f"emotion/{name}")
        update_metrics(resolve(cfg.paths.reports) / "emotion" / "metrics.json", summary_key(name, ""),
                       {summary_key(name, k): v for k, v in metrics.items()},
                       {summary_key(name, k): v for k, v in reasons.items()}, tags | run_.file_tags())
    log.info(f"emotion[{name}]: n={int(metrics['emotion/n'])} invalid={metrics['emotion/invalid_rate']:.2f} "
          f"acc={metrics['emotion/accuracy']:.3f} bertscore_f1={metrics['emotion/bertscore_f1']:.3f} "
          f"(rescaled {metrics['emotion/bertscore_f1_rescaled']:.3f}) wordvec_cos[{vectors.source}]="
          f"{metrics['emotion/wordvec_cos']:.3f} (rescaled {metrics['emotion/wordvec_cos_rescaled']:.3f}) → {rep_dir}")
    return metrics


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "emotion")
    device = setup_torch(cfg)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    test = load_split(cfg, str(cfg.emotion.split))
    if cfg.emotion.get("first_n"):
        test = test.head(int(cfg.emotion.first_n))
    unknown = sorted(set(test["emotion"]) - set(taxonomy.keys))
    if unknown:
        raise UserError(f"{cfg.emotion.split} split has emotions {unknown} not in taxonomy {taxonomy.name}")
    # source=trained: train-split text plus each emotion's "name：description", so every gold name is in the corpus.
    corpus = [*(f"{e.ja}：{e.description}" for e in taxonomy.emotions),
              *train[["situation", "patient", "supporter"]].to_numpy().ravel().tolist()]
    vectors = wordvec.load(cfg.emotion, corpus, int(cfg.seed))
    scorer = functools.cache(lambda: BertScorer(cfg.encoder, device, int(cfg.emotion.bertscore.batch_size)))
    labels = label_separation(cfg, taxonomy, vectors, scorer())
    results = {}
    for one in predictor_cfgs(cfg):
        metrics = run_predictor(one, test, train, val, taxonomy, scorer, vectors, labels, device)
        results |= {summary_key(str(one.predictor.name), k): v for k, v in metrics.items()}
    return results


if __name__ == "__main__":
    stage_main("emotion", run)
