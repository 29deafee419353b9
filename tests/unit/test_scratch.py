"""Temp dirs named after their owner process, and the orphans of killed owners removed when
the next one is made (core/scratch.py)."""

import os
import subprocess
import sys
import tempfile

import pytest

from core.scratch import owned_temp_dir, remove_orphans

PREFIX = "cohort-test-"


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_dirs_of_owners_that_are_gone_are_removed_and_only_those(temp_root):
    orphan = temp_root / f"{PREFIX}{dead_pid()}-abc"
    (orphan / "deep").mkdir(parents=True)
    (orphan / "deep" / "written by reward code.txt").write_text("x" * 1000)
    living = temp_root / f"{PREFIX}{os.getppid()}-def"  # the parent: alive while this runs
    living.mkdir()
    other_names = [temp_root / f"{PREFIX}abc", temp_root / f"{PREFIX}12a-x", temp_root / "other"]
    for path in other_names:
        path.mkdir()
    outside = temp_root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("kept")
    link = temp_root / f"{PREFIX}{dead_pid()}-link"
    link.symlink_to(outside, target_is_directory=True)

    assert remove_orphans(PREFIX) == [str(orphan)]
    made = owned_temp_dir(PREFIX)

    assert not orphan.exists()
    assert living.is_dir() and all(p.is_dir() for p in other_names)
    assert link.is_symlink() and (outside / "keep.txt").read_text() == "kept"
    assert os.path.dirname(made) == str(temp_root) and os.path.isdir(made)
    assert os.path.basename(made).startswith(f"{PREFIX}{os.getpid()}-")
    # This process owns the new dir, so it is not an orphan.
    assert remove_orphans(PREFIX) == []
    assert os.path.isdir(made)
