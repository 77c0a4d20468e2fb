"""What the judge scores: test-split human supporter turns, every generated system, all rated responses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emplifai.core.errors import UserError
from emplifai.core.paths import read_artifact
from emplifai.data.taxonomy import Taxonomy
from emplifai.judge.rubric import JudgeItem

SOURCES = ("human", "generate", "rated")


class ItemsError(UserError):
    pass


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    return read_artifact(path, columns, error=ItemsError)


def collect(prepare_dir: Path, generate_file: Path, taxonomy: Taxonomy, sources: list[str]
            ) -> tuple[list[JudgeItem], list[str]]:
    """(items in a stable order, notes for the log, e.g. a skipped source)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ItemsError(f"judge.sources: unknown {unknown}; choose from {list(SOURCES)}")
    cols = ["dialogue_id", "emotion", "situation", "patient", "supporter"]
    dialogues = pd.concat([_read(prepare_dir / f"{s}.parquet", cols).assign(split=s)
                           for s in ("train", "val", "test")], ignore_index=True).set_index("dialogue_id")
    notes: list[str] = []
    items: list[JudgeItem] = []

    def add(item_id: str, dialogue_id: str, system: str, source: str, response: str, where: str) -> None:
        if dialogue_id not in dialogues.index:
            raise ItemsError(f"{where}: dialogue_id {dialogue_id!r} is not in {prepare_dir} (train/val/test)")
        if not isinstance(response, str) or not response.strip():
            raise ItemsError(f"{where}: empty response for dialogue {dialogue_id!r}")
        d = dialogues.loc[dialogue_id]
        items.append(JudgeItem(item_id, dialogue_id, str(system), source, str(d["situation"]), str(d["patient"]),
                               response.strip(), taxonomy.ja(d["emotion"])))

    if "human" in sources:
        test = dialogues[dialogues["split"] == "test"]
        for did, row in test.iterrows():
            add(f"human:{did}", str(did), "human", "human", row["supporter"], f"{prepare_dir}/test.parquet")
    if "generate" in sources:
        if generate_file.exists():
            gen = _read(generate_file, ["dialogue_id", "system", "response"])
            for i, row in enumerate(gen.itertuples(index=False), start=1):
                rid = getattr(row, "response_id", None) or f"{row.system}:{row.dialogue_id}"
                add(f"gen:{rid}", str(row.dialogue_id), str(row.system), "generate",
                    row.response, f"{generate_file} row {i}")
        else:
            notes.append(f"no generated responses at {generate_file} (run the generate stage); judged without them")
    if "rated" in sources:
        path = prepare_dir / "rated_responses.parquet"
        if path.exists():
            rated = _read(path, ["response_id", "dialogue_id", "system", "response"])
            for i, row in enumerate(rated.itertuples(index=False), start=1):
                add(str(row.response_id), str(row.dialogue_id), str(row.system), "rated", row.response,
                    f"{path} row {i}")
        else:
            notes.append(f"no rated responses at {path}; judged without them")
    ids = [it.item_id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ItemsError(f"duplicate response ids {dup[:5]} (a generated system judged twice per dialogue?)")
    return items, notes


def limit(items: list[JudgeItem], max_items: int | None, seed: int) -> list[JudgeItem]:
    """At most `max_items`, stratified by (source, system): each group is shuffled with `seed` and items are
    taken in order of their relative rank in the group, so every group keeps its share; order kept."""
    if not max_items or len(items) <= max_items:
        return items
    frame = pd.DataFrame({"i": range(len(items)), "g": [f"{it.source}/{it.system}" for it in items]})
    frame = frame.sample(frac=1.0, random_state=seed)
    size = frame.groupby("g")["i"].transform("size")
    frame["rank"] = (frame.groupby("g").cumcount() + 0.5) / size
    keep = frame.sort_values(["rank", "g"], kind="stable")["i"].head(int(max_items))
    return [items[i] for i in sorted(keep)]
