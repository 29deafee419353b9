"""Run checkpoints on disk: written atomically, validated on load, the last K kept.

Layout: `<run dir>/checkpoints/step_000012/` holds `learner/` (DeepSpeed model, optimizer and
scheduler states and every rank's RNG states, written by the learner ranks), `driver.json`
(step, data position, metric history length) and `MANIFEST.json` (every file with its size),
written last inside the folder. The folder is built as `.tmp-step_000012` and renamed, then
`checkpoints/latest` (the folder's name) is replaced atomically. Guaranteed: a crash, kill or
full disk at any moment leaves `latest` naming a complete checkpoint (or no `latest`); a
checkpoint whose manifest is missing or does not match its files is skipped with a message and
the next older one is tried. Not covered: object storage (checkpoints are plain files; on a
cluster `trainer.output_dir` must be a shared filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.config import ConfigError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "MANIFEST.json"
DRIVER_STATE = "driver.json"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def begin(run_dir: Path, step: int) -> Path:
    """A fresh temporary folder for step `step`'s checkpoint (a leftover one is removed)."""
    tmp = Path(run_dir) / CHECKPOINTS / f".tmp-{step_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(run_dir: Path, tmp: Path, step: int, driver_state: dict, keep: int) -> Path:
    """Finish a checkpoint whose learner state is already in `tmp`: write the driver state and
    the manifest, rename into place, point `latest` at it, and prune to the newest `keep`."""
    (tmp / DRIVER_STATE).write_text(json.dumps(driver_state, indent=1))
    files = {
        str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    _write_json_atomic(tmp / MANIFEST, {"step": step, "files": files})
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_name(step)
    if final.exists():  # a checkpoint of this step from before a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_json_atomic(root / LATEST, {"checkpoint": final.name})
    _prune(root, keep)
    return final


def abort(tmp: Path) -> None:
    """Remove a checkpoint that failed half-way (e.g. a full disk); `latest` is untouched."""
    shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be used, or None when it is complete."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the write did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{manifest} is unreadable ({e})"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size}"
    return None


def latest_valid(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run: the one `latest` names, or else (printing why)
    the next older complete one; None when the run has none."""
    root = Path(run_dir) / CHECKPOINTS
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    try:
        named = root / json.loads((root / LATEST).read_text())["checkpoint"]
        candidates = [named] + [p for p in candidates if p != named]
    except (OSError, ValueError, KeyError):
        pass
    for path in candidates:
        reason = problem(path)
        if reason is None:
            return path
        print(f"checkpoint {path} skipped: {reason}", flush=True)
    return None


def find_resume_point(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint `trainer.resume` asks for: `never` -> None; `auto` -> the newest complete
    checkpoint of the newest run under `output_dir` that has one (None: start afresh); a path
    -> that checkpoint folder, or the newest complete checkpoint of that run folder."""
    if resume == "never":
        return None
    if resume == "auto":
        runs = sorted(
            (p for p in Path(output_dir).glob("*") if (p / CHECKPOINTS).is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for run in runs:
            found = latest_valid(run)
            if found:
                return found
        return None
    path = Path(resume)
    if (path / MANIFEST).exists() or path.name.startswith("step_"):
        reason = problem(path)
        if reason:
            raise ConfigError(f"trainer.resume={resume}: cannot resume from it: {reason}")
        return path
    found = latest_valid(path)
    if found is None:
        raise ConfigError(
            f"trainer.resume={resume}: no complete checkpoint in {path}/{CHECKPOINTS}"
        )
    return found


def read_driver_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / DRIVER_STATE).read_text())


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows after `max_step` (written by the run after its last checkpoint; the resumed run
    writes them again)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= max_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
