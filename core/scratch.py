"""Temp dirs that outlive a killed owner only until the next one starts on the node.

Ray ends actors with `ray.kill` (and a killed run's actors die with it), so no exit handler of
theirs runs: a reward sandbox's per-worker scratch dir, with whatever the reward code wrote
there, and an engine's adapter dir would stay in the temp dir for good, one more per actor and
run. Each such dir is named after the process that owns it (`<prefix><pid>-<random>`), and
a new owner, once as it starts, removes the dirs of its prefix whose owner process is gone."""

from __future__ import annotations

import os
import shutil
import tempfile


def owned_temp_dir(prefix: str) -> str:
    """A new private dir `<temp dir>/<prefix><this pid>-<random>`."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def remove_orphans(prefix: str) -> list[str]:
    """Remove this user's dirs `<temp dir>/<prefix><pid>-*` whose process `pid` is gone; returns
    their paths. A dir with another name, another owner or a living (or reused) pid is left."""
    removed = []
    root = tempfile.gettempdir()
    with os.scandir(root) as entries:
        for entry in entries:
            pid = _owner_pid(entry.name, prefix)
            if pid is None or _alive(pid):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                    continue
            except OSError:  # removed meanwhile
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _owner_pid(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    pid, dash, _ = name[len(prefix) :].partition("-")
    return int(pid) if dash and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
