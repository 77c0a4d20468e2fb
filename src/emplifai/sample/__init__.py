"""The shipped demonstration data (written by the emplifai project, not EmplifAI; see README.md here).

`python -m emplifai.sample data` copies it into data/ on a fresh clone, byte for byte, so that the
md5 recorded in data.dvc matches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent
FILES = ("situations.csv", "dialogues.csv", "rated_responses.csv", "human_ratings.csv")


def write_sample(dest: Path, force: bool = False) -> bool:
    """Copy the sample into `dest` unless it already holds data; True if copied."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(SAMPLE_DIR / name, dest / name)
    return True
