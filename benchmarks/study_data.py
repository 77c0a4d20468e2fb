"""A synthetic data version at the EmplifAI study's scale, built from the shipped sample (seeded, offline).

    python benchmarks/study_data.py OUT [--dialogues 4125] [--situations 280] [--rated 240] [--seed 0]

The study has 280 situations and 4,125 dialogues over the 28 emotions; the sample has 56 situations (2 per
emotion), 168 dialogues and 48 rated responses. Each synthetic situation is a sample situation with a patient
profile in front ("70代・女性。"), each dialogue one of its base situation's sample dialogues with an opening
phrase on both turns, drawn without replacement, so no two dialogues share their texts. Rated responses (the 4
systems in turn) are the sample's responses of that system with an opening phrase, on distinct dialogues; their human
ratings are the base response's ratings, each moved by ±1 with probability 0.3 (clipped to 1–5), so systems
still differ and raters still disagree. It measures cost, not quality: every text is the sample's own words.
Same arguments → byte-identical files. Without --situations/--rated both scale with --dialogues like the
study's 280 / 240 per 4,125 (at least 56 situations and 48 rated responses).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from emplifai.sample import FILES, SAMPLE_DIR

STUDY_DIALOGUES, STUDY_SITUATIONS, STUDY_RATED = 4125, 280, 240

PROFILES = [f"{age}代・{sex}。" for age in (20, 30, 40, 50, 60, 70, 80) for sex in ("女性", "男性")]
PATIENT_OPENINGS = ["", "あの、", "実は、", "えっと、", "ちょっと聞いてもらえますか。", "最近のことなんですけど、",
                    "正直に言うと、", "看護師さん、", "話してもいいですか。", "ずっと考えていたんですが、",
                    "うまく言えないんですけど、", "聞いてください。"]
SUPPORTER_OPENINGS = ["", "そうなんですね。", "お話ししてくださってありがとうございます。", "なるほど。",
                      "教えてくださってありがとうございます。", "うんうん。", "そうでしたか。", "ゆっくりで大丈夫ですよ。"]


def _sizes(dialogues: int, situations: int | None, rated: int | None, sample_situations: int) -> tuple[int, int]:
    situations = situations or max(sample_situations, round(STUDY_SITUATIONS * dialogues / STUDY_DIALOGUES))
    rated = rated if rated is not None else max(48, round(STUDY_RATED * dialogues / STUDY_DIALOGUES))
    if situations > dialogues:
        raise ValueError(f"{situations} situations need at least as many dialogues, got {dialogues}")
    if situations > len(PROFILES) * sample_situations:
        raise ValueError(f"at most {len(PROFILES) * sample_situations} situations ({sample_situations} sample "
                         f"situations × {len(PROFILES)} profiles)")
    return situations, min(rated, dialogues)


def build(out: Path, dialogues: int = STUDY_DIALOGUES, situations: int | None = None, rated: int | None = None,
          seed: int = 0) -> dict[str, int]:
    """Write situations/dialogues/rated_responses/human_ratings.csv into `out`; returns the row counts."""
    sample = {Path(f).stem: pd.read_csv(SAMPLE_DIR / f, dtype=str) for f in FILES}
    n_sit, n_rated = _sizes(dialogues, situations, rated, len(sample["situations"]))
    rng = np.random.default_rng(seed)
    # emotions in turn, then each emotion's sample situations in turn: every emotion gets its share
    by_emotion = [g for _, g in sample["situations"].sort_values("situation_id").groupby("emotion")]
    n_emo = len(by_emotion)
    bases = [by_emotion[i % n_emo].iloc[(i // n_emo) % len(by_emotion[i % n_emo])] for i in range(n_sit)]
    used = {sid: iter(rng.permutation(len(PROFILES))) for sid in sample["situations"]["situation_id"]}
    situations_rows = [{"situation_id": f"s{i + 1:04d}", "emotion": b["emotion"],
                        "situation": PROFILES[next(used[b["situation_id"]])] + b["situation"]}
                       for i, b in enumerate(bases)]
    per_sit = [dialogues // n_sit + (i < dialogues % n_sit) for i in range(n_sit)]
    by_base = dict(iter(sample["dialogues"].groupby("situation_id")))
    combos = {sid: iter(rng.permutation(list(itertools.product(range(len(g)), range(len(PATIENT_OPENINGS)),
                                                               range(len(SUPPORTER_OPENINGS))))))
              for sid, g in by_base.items()}
    drawn = pd.Series(per_sit).groupby([b["situation_id"] for b in bases]).sum()
    if any(k > len(by_base[sid]) * len(PATIENT_OPENINGS) * len(SUPPORTER_OPENINGS) for sid, k in drawn.items()):
        raise ValueError(f"{dialogues} dialogues over {n_sit} situations: too many to keep every text distinct")
    dialogue_rows = []
    for sit, base, k in zip(situations_rows, bases, per_sit, strict=True):
        for _ in range(k):
            row, p, q = next(combos[base["situation_id"]])
            d = by_base[base["situation_id"]].iloc[row]
            dialogue_rows.append({"dialogue_id": f"d{len(dialogue_rows) + 1:05d}", "situation_id": sit["situation_id"],
                                  "patient": PATIENT_OPENINGS[p] + d["patient"],
                                  "supporter": SUPPORTER_OPENINGS[q] + d["supporter"]})
    rated_by_system = dict(iter(sample["rated_responses"].groupby("system")))
    ratings = dict(iter(sample["human_ratings"].groupby("response_id")))
    variants = {system: itertools.cycle(rng.permutation(list(itertools.product(range(len(g)),
                                                                              range(len(SUPPORTER_OPENINGS))))))
                for system, g in rated_by_system.items()}   # distinct texts up to 12 × 8 per system, then repeats
    on = np.sort(rng.choice(len(dialogue_rows), size=n_rated, replace=False))
    systems = sorted(rated_by_system)
    rated_rows, rating_rows = [], []
    for i, d in enumerate(on):
        system = systems[i % len(systems)]
        b, o = next(variants[system])
        base = rated_by_system[system].iloc[b]
        rid = f"r{i + 1:04d}"
        rated_rows.append({"response_id": rid, "dialogue_id": dialogue_rows[d]["dialogue_id"],
                           "system": system, "response": SUPPORTER_OPENINGS[o] + base["response"]})
        theirs = ratings[base["response_id"]]
        moved = rng.choice([-1, 0, 1], size=len(theirs), p=[0.15, 0.7, 0.15])
        for (_, r), m in zip(theirs.iterrows(), moved, strict=True):
            rating_rows.append({"response_id": rid, "rater_id": r["rater_id"], "criterion": r["criterion"],
                                "score": int(np.clip(int(r["score"]) + m, 1, 5))})
    tables = {"situations": situations_rows, "dialogues": dialogue_rows, "rated_responses": rated_rows,
              "human_ratings": rating_rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        pd.DataFrame(rows).to_csv(out / f"{name}.csv", index=False, encoding="utf-8")
    return {name: len(rows) for name, rows in tables.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dialogues", type=int, default=STUDY_DIALOGUES)
    ap.add_argument("--situations", type=int, default=None)
    ap.add_argument("--rated", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        counts = build(a.out, a.dialogues, a.situations, a.rated, a.seed)
    except ValueError as err:
        ap.error(str(err))
    print(f"{a.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
