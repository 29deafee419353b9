"""Fault injection for the reliability tests, from `trainer.fault_injection`.

A spec is `KIND@STEP` or `KIND@PHASE:STEP`, several separated by commas:
`kill@generate:3` SIGKILLs the driver inside step 3's generate phase (also `train`, `push`,
`checkpoint`: mid-write, after the learner state is on disk); `disk_full@checkpoint:2` raises
ENOSPC while step 2's checkpoint is written; `nan_loss@2` makes the learner's loss NaN in step
2 and `inf_grad@2` keeps it finite but makes its gradient infinite, on every learner rank
(`nan_loss@rank1:2`, `inf_grad@rank1:2`: on rank 1 only); `kill_rollout@3` / `kill_reward@3` /
`kill_learner@3` kill rollout engine 0 / reward actor 0 / learner rank 0 in step 3;
`hang_rollout@2` makes rollout engine 0 stop answering in the middle of step 2's weight push
(it receives the first bucket, then sleeps an hour), which `cluster.push_timeout_s` catches.
Guaranteed: an empty spec does nothing, and every fault fires at most once per process (or
since `rearm`). Not covered: faults outside these points.
"""

from __future__ import annotations

import errno
import os
import signal

_fired: set[tuple[str, int]] = set()


def parse(spec: str) -> dict[str, set[int]]:
    """`"kill@train:3,nan_loss@2,nan_loss@3"` -> {"kill@train": {3}, "nan_loss": {2, 3}}."""
    faults: dict[str, set[int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, where = item.partition("@")
        phase, _, step = where.rpartition(":")
        if not step.isdigit():
            raise ValueError(f"trainer.fault_injection: {item!r} is not KIND@[PHASE:]STEP")
        faults.setdefault(f"{kind}@{phase}" if phase else kind, set()).add(int(step))
    return faults


def due(spec: str, name: str, step: int) -> bool:
    """True once, when fault `name` (e.g. `kill@train`, `nan_loss`) is configured for `step`."""
    if not spec or step not in parse(spec).get(name, ()) or (name, step) in _fired:
        return False
    _fired.add((name, step))
    return True


def rearm() -> None:
    """Let every fault fire again in this process, as in a new one (a learner rebuilt in place,
    `LearnerActor.rebuild`)."""
    _fired.clear()


def at(spec: str, phase: str, step: int) -> None:
    """Driver hook: kill the process or fail the disk write if configured for this point."""
    if due(spec, f"kill@{phase}", step):
        print(f"fault injection: SIGKILL to the driver during {phase} of step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if due(spec, f"disk_full@{phase}", step):
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {phase} {step})")
