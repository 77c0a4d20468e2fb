"""Tool `annotate` (not a DVC stage): export rating tasks for human raters as a Label Studio import.

    python -m emplifai.annotate                                      # every generated system's responses
    python -m emplifai.annotate 'annotate.sources=[generate,human]' annotate.sample_n=20
    python -m emplifai.annotate 'annotate.systems=["gemma3-270m+epochs=3+default"]' annotate.blind=false

Writes to `annotate.out_dir` (default artifacts/annotate/):
- `labeling_config.xml`: the project's labeling interface (Settings → Labeling Interface → Code): situation,
  patient, response, then per criterion of `data.criteria` its Japanese name, definition and anchors from the
  judge rubric and a 1–5 Rating;
- `tasks.json`: the tasks to import (fields response_id, dialogue_id, situation, patient, response; system
  only with annotate.blind=false);
- `rated_responses.csv`: response_id → dialogue_id, system, response, for data/.
Once rated, export the project as JSON, save it as data/human_ratings.json, put rated_responses.csv in data/,
and prepare → judge → agreement read them like any other ratings.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from emplifai.annotate.tasks import AnnotateError, collect
from emplifai.core.app import stage_main
from emplifai.core.paths import atomic_path, resolve, write_text
from emplifai.data import labelstudio
from emplifai.data.schema import RATED_RESPONSES
from emplifai.judge.rubric import Criterion, Rubric

log = logging.getLogger(__package__)


def questions(cfg: DictConfig, rubric: Rubric) -> tuple[list[Criterion], list[str]]:
    """The criteria raters score (data.criteria: what prepare accepts), worded by the judge rubric."""
    by_key = {c.key: c for c in rubric.criteria}
    criteria = [str(k) for k in cfg.data.criteria]
    absent = [k for k in criteria if k not in by_key]
    notes = [f"no definition in the judge rubric {rubric.name!r} for {absent}: shown by key only"] if absent else []
    return [by_key.get(k) or Criterion(k, k, "", ()) for k in criteria], notes


def run(cfg: DictConfig) -> dict:
    a = cfg.annotate
    rubric = Rubric.from_config(cfg.judge)
    if rubric.lo != 1:
        raise AnnotateError(f"judge rubric {rubric.name!r} scale {rubric.lo}..{rubric.hi}: a Label Studio Rating "
                            f"runs 1..maxRating")
    criteria, notes = questions(cfg, rubric)
    responses, more = collect(cfg)
    notes += more
    visible = [c for c in responses.columns if c != "system" or not a.blind]
    out = resolve(a.out_dir)
    write_text(out / "labeling_config.xml", labelstudio.labeling_config(criteria, rubric.hi))
    with atomic_path(out / "tasks.json") as tmp:
        labelstudio.write_import(responses[visible].to_dict(orient="records"), tmp)
    with atomic_path(out / "rated_responses.csv") as tmp:  # with a BOM: Japanese Excel opens it intact
        responses[list(RATED_RESPONSES.required)].to_csv(tmp, index=False, encoding="utf-8-sig")
    for note in notes:
        log.warning(f"annotate: note: {note}")
    per_system = responses["system"].value_counts().sort_index()
    log.info(f"annotate: {len(responses)} responses ({', '.join(f'{s} {n}' for s, n in per_system.items())}) × "
          f"{len(criteria)} criteria{' (blind)' if a.blind else ''} → {out}/\n"
          f"  Label Studio: new project, labeling interface = labeling_config.xml, import tasks.json; when rated, "
          f"export JSON as data/human_ratings.json and copy rated_responses.csv to data/")
    return {"annotate/responses": len(responses), "annotate/systems": int(responses["system"].nunique()),
            "annotate/criteria": len(criteria)}


if __name__ == "__main__":
    stage_main("annotate", run)
