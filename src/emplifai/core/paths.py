"""Path helpers: every user path resolves against the directory the user started from; outputs are written
atomically; a stage reads another stage's table with an error that names what makes it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emplifai.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


def project_root() -> Path:
    """The directory the command was started from (Hydra 1.3 does not chdir, but a sweep launcher may)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - outside a Hydra app there is no runtime.cwd
        pass
    return Path.cwd()


def resolve(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p).resolve()


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename onto it only if the block finishes.

    A crash or a validation error therefore never leaves a half-written output behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `target`; it replaces `target` only if the block finishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def save_figure(fig: Any, target: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out, write the PNG atomically, and close the figure (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(target)


PREPARE_HINT = "run `python -m emplifai.prepare` (or `dvc repro prepare`) first"


def read_artifact(path: Path, columns: Sequence[str] = (), hint: str = PREPARE_HINT,
               error: type[UserError] = UserError) -> pd.DataFrame:
    """A stage's parquet output read back by a later stage: a missing file names what makes it, a missing
    column names the file."""
    import pandas as pd

    if not path.exists():
        raise error(f"{path} not found: {hint}")
    frame = pd.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{path}: missing column(s) {missing}")
    return frame
