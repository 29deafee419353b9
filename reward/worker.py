"""The sandbox worker process: loads the reward functions once, applies OS limits, runs calls.

Runs as the target of a forkserver process started by `sandbox.py`. Guaranteed: the worker leads
its own session and process group (so the parent's `os.killpg` also kills whatever it started),
is killed when the process that owns it dies (Linux `PR_SET_PDEATHSIG`), and answers each task
with a list of `Outcome`s, one per input, in the order the tasks came. Limits, where the OS has
them: RLIMIT_AS (address space beyond what the worker holds after loading), RLIMIT_CPU (per
call), RLIMIT_NPROC (relative to the user's process count; not enforced for root). Not
guaranteed: isolation of the file system or network, or that a child that starts its own
session is killed with the worker.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.config import RewardFunctionConfig, from_dict
from reward.functions import load_reward_functions
from reward.scoring import CallInput, call_batched, call_function

Task = tuple[int, int, list[CallInput]]
"""(task id, function index, inputs): a per-sample function gets one input per task."""


@dataclass
class Limits:
    """OS limits of one worker (see `RewardConfig` for each key)."""

    memory_limit_mb: int = 0
    cpu_limit_s: float = 0.0
    max_processes: int = 0


def worker_main(conn, function_configs: list[dict], base_dir: str, limits: Limits) -> None:
    """Serve tasks from `conn` until it closes: receive a list of `Task`s, send back
    `(task id, outcomes)` after each one. First sends `("ready", pid)`, or `("load_error",
    message)` if the functions cannot be loaded."""
    os.setsid()
    _die_with_parent()
    try:
        cfgs = [from_dict(RewardFunctionConfig, d, prefix=f"reward.functions[{i}].")
                for i, d in enumerate(function_configs)]  # fmt: skip
        functions = load_reward_functions(cfgs, Path(base_dir))
    except Exception as e:
        conn.send(("load_error", f"{type(e).__name__}: {e}"))
        return
    _limit_memory(limits.memory_limit_mb)
    _limit_processes(limits.max_processes)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            tasks: list[Task] = conn.recv()
        except (EOFError, OSError):
            return
        for task_id, index, inputs in tasks:
            f = functions[index]
            _arm_cpu_limit(limits.cpu_limit_s)
            if f.batched:
                outcomes = call_batched(f, inputs)
            else:
                outcomes = [call_function(f, x) for x in inputs]
            conn.send((task_id, outcomes))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent (the forkserver, which exits with the
    reward actor) dies; a no-op elsewhere."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _limit_memory(mb: int) -> None:
    if mb <= 0:
        return
    held = _vm_size_bytes()
    soft = held + mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _vm_size_bytes() -> int:
    """This process's virtual memory size (Linux /proc), or 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _limit_processes(extra: int) -> None:
    if extra <= 0 or not hasattr(resource, "RLIMIT_NPROC"):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    soft = _user_tasks() + extra
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))


def _user_tasks() -> int:
    """Processes and threads of this user (what RLIMIT_NPROC counts on Linux)."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(entry / "task"))
            except OSError:
                continue
    return count


def _arm_cpu_limit(seconds: float) -> None:
    """Let the coming call use `seconds` of CPU: RLIMIT_CPU counts the process's whole life, so
    the soft limit is moved to what is used so far plus `seconds` (SIGXCPU kills past it)."""
    if seconds <= 0:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
