"""Atomic outputs under faults: an exception, a SIGKILL mid-write, a kill between the swap's two renames."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from emplifai.core import paths
from emplifai.core.paths import atomic_dir, atomic_path


def _old(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "a.txt").write_text("old")


def test_atomic_dir_swaps_in_the_new_folder_and_drops_the_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _old(target)
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left beside it


def test_an_exception_inside_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _old(target)
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


WRITER = """
import sys, time
from pathlib import Path
from emplifai.core.paths import atomic_dir, atomic_path
target = Path(sys.argv[1])
with atomic_dir(target / "dir") as tmp, atomic_path(target / "file.txt") as f:
    (tmp / "b.txt").write_text("new")
    f.write_text("half")
    print("inside", flush=True)
    time.sleep(60)
"""


def test_sigkill_mid_write_leaves_the_old_outputs_whole(tmp_path: Path) -> None:
    _old(tmp_path / "dir")
    (tmp_path / "file.txt").write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "dir" / "a.txt").read_text() == "old" and not (tmp_path / "dir" / "b.txt").exists()
    assert (tmp_path / "file.txt").read_text() == "old"
    with atomic_dir(tmp_path / "dir") as tmp:  # the next run works normally
        (tmp / "c.txt").write_text("next")
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["c.txt"]


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_call(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the OS has no atomic exchange the old folder is renamed aside first; a kill right then (simulated:
    the second rename fails) leaves it aside, and the next call puts it back before doing anything."""
    target = tmp_path / "out"
    _old(target)
    monkeypatch.setattr(paths, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self: Path, dst: Path) -> Path:
        if Path(dst) == target:
            raise KeyboardInterrupt  # the process dies between the two renames
        return real_rename(self, dst)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert not target.exists()  # the window the exchange closes
    monkeypatch.setattr(Path, "rename", real_rename)
    with pytest.raises(RuntimeError), atomic_dir(target):
        raise RuntimeError("the next run fails too")
    assert (target / "a.txt").read_text() == "old"


def test_the_exchange_is_atomic_on_this_os(tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("renameat2 is Linux's")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").touch(), (b / "y").touch()
    assert paths._exchange(a, b)
    assert (a / "y").exists() and (b / "x").exists()


def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "f.txt") as f:
        f.write_text("x")
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").touch()
    mask = paths._umask()
    assert mask & 0o044 == 0, "run under a usual umask (022/002): 0600 files would then be wrong"
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
