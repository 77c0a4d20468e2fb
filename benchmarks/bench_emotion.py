"""Emotion-stage speed claims, each measured side by side against its named baseline in this one run.

    python benchmarks/bench_emotion.py                       # both; needs models/base (dvc repro models)
    python benchmarks/bench_emotion.py --pairs 4200 --dialogues 3 --threads 2 --device cpu

1. BERTScore over >= 4,000 predictions (the shipped sample replicated to the study's size), the work the
   emotion stage does: P/R/F1 of every prediction vs its gold name, and the nearest taxonomy name (by F1)
   for every answer that is not a name. Our `BertScorer` (loaded once, each distinct string embedded
   once, each distinct pair matched once) vs `bert_score.score` called on all those pairs directly (one
   call per task). Both timings include loading the encoder, after an untimed warm-up load so that
   imports and the page cache favour neither. Asserts identical numbers (max |diff| <= 1e-6) and prints
   each part's ratio and the total; target >= 5x on the total.
2. `hf_rank` on the default LM (Gemma-3-270M): the shared prompt KV cache (`Ranker`) vs one full forward
   over prompt + label per label, same token ids. Asserts identical choices; target >= 3x.
Exit status 1 when a target is missed or the results differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sample_frame() -> pd.DataFrame:
    prepared = ROOT / "artifacts" / "prepare"
    if not (prepared / "test.parquet").exists():
        sys.exit("run `python -m emplifai.prepare` first (artifacts/prepare is missing)")
    return pd.concat([pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val", "test")])


def predictions(frame: pd.DataFrame, taxonomy, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Replicate the sample's gold names to n pairs; candidates are what predictors answer: mostly a
    taxonomy name (right or confused), sometimes a short free-text phrase as generative models write."""
    rng = np.random.default_rng(seed)
    gold = frame["emotion"].to_numpy()[rng.integers(0, len(frame), n)]
    names = taxonomy.ja_names
    forms = ["{}", "{}", "{}", "{}を感じている", "少し{}", "強い{}"]
    cands = []
    for key in gold:
        name = taxonomy.ja(key) if rng.random() < 0.4 else names[rng.integers(len(names))]
        cands.append(forms[rng.integers(len(forms))].format(name))
    return cands, [taxonomy.ja(k) for k in gold]


def bench_bertscore(cfg, cands: list[str], refs: list[str], names: list[str], device: str
                    ) -> tuple[float, bool]:
    from bert_score import score
    from bert_score.utils import get_model

    from emplifai.modelzoo import encoder_dir
    from emplifai.predict.scoring import BertScorer

    model_type, layers = str(encoder_dir(cfg.encoder)), int(cfg.encoder.num_layers)
    get_model(model_type, layers)  # untimed warm-up: imports and page cache are then equal for both sides
    free = [c for c in cands if c not in set(names)]  # answers that are not a taxonomy name: mapped to the nearest
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    base = torch.stack(score(cands, refs, model_type=model_type, num_layers=layers, idf=False, device=device,
                             batch_size=64), -1).numpy()
    times["base_gold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = score([t for t in free for _ in names], [n for _ in free for n in names], model_type=model_type,
              num_layers=layers, idf=False, device=device, batch_size=64)[2].numpy().reshape(len(free), len(names))
    base_near = f.max(axis=1)
    times["base_near"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scorer = BertScorer(cfg.encoder, device, 64)
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = scorer.score(cands, refs)
    times["ours_gold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = scorer.nearest(free, names)
    times["ours_near"] = time.perf_counter() - t0

    diff = max(float(np.abs(ours - base).max()),
               float(np.abs(np.array([b for _, b in best]) - base_near).max()))
    base_s, ours_s = times["base_gold"] + times["base_near"], times["load"] + times["ours_gold"] + times["ours_near"]
    ratio = base_s / ours_s
    print(f"BERTScore  {len(cands)} predictions vs gold ({len(set(cands) | set(refs))} distinct strings, "
          f"{len(set(zip(cands, refs, strict=True)))} distinct pairs) + nearest of {len(names)} names for the "
          f"{len(free)} free-text answers ({len(free) * len(names)} pairs), as the emotion stage does")
    print(f"  vs gold:   bert_score.score {times['base_gold']:6.2f} s   BertScorer load {times['load']:5.2f} s + "
          f"{times['ours_gold']:5.2f} s   ratio {times['base_gold'] / (times['load'] + times['ours_gold']):5.1f}x")
    print(f"  nearest:   bert_score.score {times['base_near']:6.2f} s   BertScorer (loaded) {times['ours_near']:5.2f} s"
          f"   ratio {times['base_near'] / times['ours_near']:5.1f}x")
    print(f"  total:     bert_score.score {base_s:6.2f} s   BertScorer {ours_s:5.2f} s   ratio {ratio:5.1f}x   "
          f"max |diff| {diff:.2e} (P/R/F1 and nearest F1)")
    return ratio, diff <= 1e-6


def bench_rank(cfg, frame: pd.DataFrame, taxonomy, dialogues: int, device: str) -> tuple[float, bool]:
    from emplifai.modelzoo import load_causal_lm
    from emplifai.predict.hf import Ranker
    from emplifai.predict.prompting import PromptBuilder

    model, tok = load_causal_lm(cfg.model, device)
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"].head(dialogues)
    build = PromptBuilder(cfg.predictor.prompt, taxonomy, train, int(cfg.seed))
    names = [n + str(cfg.predictor.answer_suffix) for n in taxonomy.ja_names]
    prompts = [build(row) for _, row in test.iterrows()]
    out = {}
    for shared in (False, True):
        t0 = time.perf_counter()
        ranker = Ranker(model, tok, build.shared_prefix, names, str(cfg.predictor.score), shared_cache=shared)
        scores = [ranker.scores(p) for p in prompts]
        out[shared] = (time.perf_counter() - t0, scores)
    (base_s, base), (ours_s, ours) = out[False], out[True]
    same = all(a.argmax() == b.argmax() for a, b in zip(base, ours, strict=True))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(base, ours, strict=True))
    ratio = base_s / ours_s
    ntok = len(tok(prompts[0]).input_ids)
    print(f"hf_rank    {cfg.model.name}, {len(prompts)} dialogues x {len(names)} labels, prompt ~{ntok} tokens")
    print(f"  full forward per label: {base_s:8.2f} s   shared KV cache: {ours_s:8.2f} s   ratio {ratio:6.1f}x   "
          f"same choices: {same}   max |score diff| {diff:.1e}")
    return ratio, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4200)
    ap.add_argument("--dialogues", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["bertscore", "rank"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hydra import compose, initialize_config_dir

    from emplifai.data.taxonomy import Taxonomy

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root={ROOT}", "predictor=hf_rank"])
    OmegaConf.resolve(cfg)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    frame = sample_frame()
    ok = True
    if args.only in (None, "bertscore"):
        cands, refs = predictions(frame, taxonomy, args.pairs, int(cfg.seed))
        ratio, same = bench_bertscore(cfg, cands, refs, list(taxonomy.ja_names), args.device)
        ok &= ratio >= 5 and same
    if args.only in (None, "rank"):
        ratio, same = bench_rank(cfg, frame, taxonomy, args.dialogues, args.device)
        ok &= ratio >= 3 and same
    print("OK" if ok else "FAILED: a target ratio was missed or results differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
