"""Path helpers: every user path resolves against the directory the user started from; outputs are written
atomically; a stage reads another stage's table with an error that names what makes it."""

from __future__ import annotations

import functools
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


@functools.cache
def _umask() -> int:
    """Read once: os.umask can only be read by setting it, which must not race with other threads' writes."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename onto it only if the block finishes.

    A crash or a validation error therefore never leaves a half-written output behind. The file gets the
    permissions a plain `open()` would give it (mkstemp's are 0600 whatever the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `target`; it replaces `target` only if the block finishes.

    The swap is one atomic exchange where the OS has it, so a kill at any moment leaves the old folder or the
    new one under `target`, never neither. Elsewhere the old folder is renamed aside first and restored by the
    next call if a kill came between the two renames.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.parent / f".{target.name}.old"
    if aside.exists() and not target.exists():  # a kill between the two renames below: put the old one back
        aside.rename(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if target.exists() and _exchange(tmp, target):
            pass  # tmp now holds the old folder, removed below
        else:
            if target.exists():
                shutil.rmtree(aside, ignore_errors=True)
                target.rename(aside)
            tmp.rename(target)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_plot_data(frame: Any, target: str | os.PathLike) -> Path:
    """A plot's data file (a pandas frame as CSV, 6 significant digits, `\\n` line ends): identical runs write
    identical bytes, so `dvc plots diff` shows only real changes."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", float_format="%.6g", lineterminator="\n")
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
