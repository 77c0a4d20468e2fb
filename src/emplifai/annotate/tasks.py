"""Which responses the raters get, under which ids: generated systems and/or the human supporter turns of a
split, filtered by system, a seeded sample, blind ids and order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from emplifai.core.errors import UserError
from emplifai.core.paths import read_artifact, resolve

SOURCES = ("generate", "human")
HUMAN_SYSTEM = "human_supporter"  # not "human": the judge names its own human items human:<dialogue_id>
COLUMNS = ["response_id", "dialogue_id", "system", "situation", "patient", "response"]


class AnnotateError(UserError):
    pass


def response_id(system: str, dialogue_id: str, blind: bool) -> str:
    """Stable and unique per (system, dialogue): `<system>:<dialogue_id>` (as generate names its responses),
    or, blind, an opaque `r-<hash>` of it that does not show the system."""
    name = f"{system}:{dialogue_id}"
    return "r-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12] if blind else name


def _dialogues(prepare_dir: Path) -> pd.DataFrame:
    cols = ["dialogue_id", "situation", "patient", "supporter"]
    return pd.concat([read_artifact(prepare_dir / f"{s}.parquet", cols, error=AnnotateError).assign(split=s)
                      for s in ("train", "val", "test")], ignore_index=True)


def collect(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """(one row per response to rate, in the order raters see them: COLUMNS; notes for the log)."""
    a = cfg.annotate
    sources = list(a.sources or [])
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise AnnotateError(f"annotate.sources: {unknown or 'empty'}; choose from {list(SOURCES)}")
    artifacts = resolve(cfg.paths.artifacts)
    dialogues = _dialogues(artifacts / "prepare")
    notes: list[str] = []
    parts = []
    if "generate" in sources:
        path = artifacts / "generate" / "responses.parquet"
        gen = read_artifact(path, ["dialogue_id", "system", "response"], error=AnnotateError,
                            hint="run `python -m emplifai.generate` (or `dvc repro generate`) first, or rate only "
                                 "the human supporter turns: annotate.sources=[human]")
        missing = sorted(set(gen["dialogue_id"]) - set(dialogues["dialogue_id"]))
        if missing:
            raise AnnotateError(f"{path}: dialogue_id {missing[:5]} not in {artifacts / 'prepare'} (rerun prepare "
                                f"and generate on the same data)")
        parts.append(gen[["dialogue_id", "system", "response"]])
    if "human" in sources:
        turns = dialogues[dialogues["split"] == str(a.split)]
        if turns.empty:
            raise AnnotateError(f"annotate.split={a.split!r}: no dialogues in that split (train, val or test)")
        parts.append(turns[["dialogue_id", "supporter"]].rename(columns={"supporter": "response"})
                     .assign(system=HUMAN_SYSTEM))
    frame = pd.concat(parts, ignore_index=True).astype({"dialogue_id": str, "system": str})
    if a.systems:
        wanted = [str(s) for s in a.systems]
        absent = sorted(set(wanted) - set(frame["system"]))
        if absent:
            raise AnnotateError(f"annotate.systems: no responses of {absent}; available: "
                                f"{sorted(set(frame['system']))} (sources {sources})")
        frame = frame[frame["system"].isin(wanted)]
    empty = frame["response"].isna() | (frame["response"].astype(str).str.strip() == "")
    if empty.any():
        notes.append(f"{int(empty.sum())} empty responses left out (nothing to rate): "
                     f"{(frame.loc[empty, 'system'] + ':' + frame.loc[empty, 'dialogue_id']).tolist()[:5]}")
        frame = frame[~empty]
    if a.sample_n is not None and int(a.sample_n) < len(frame):
        frame = frame.sample(n=int(a.sample_n), random_state=int(a.seed)).sort_index()
    frame = frame.merge(dialogues[["dialogue_id", "situation", "patient"]], on="dialogue_id", how="left")
    frame["response_id"] = [response_id(s, d, bool(a.blind)) for s, d in zip(frame["system"], frame["dialogue_id"],
                                                                              strict=True)]
    dup = frame["response_id"][frame["response_id"].duplicated()].tolist()
    if dup:
        raise AnnotateError(f"the same system answers a dialogue twice: {dup[:5]} (ids must be unique)")
    if bool(a.blind):  # systems interleaved, so the order gives nothing away either
        frame = frame.sample(frac=1.0, random_state=int(a.seed))
    else:
        frame = frame.sort_values(["system", "dialogue_id"], kind="stable")
    return frame[COLUMNS].reset_index(drop=True), notes
