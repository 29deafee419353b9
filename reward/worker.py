"""The sandbox worker process: loads the reward functions once, confines itself, runs calls.

Runs as the target of a forkserver process started by `sandbox.py`. Guaranteed: the worker leads
its own session and process group (so the parent's `os.killpg` also kills whatever it started),
is killed when the process that owns it dies (Linux `PR_SET_PDEATHSIG`), and answers each task
with the outcomes of its inputs, in the order the tasks came, as JSON (`encode_reply`): never a
pickle, so nothing the worker sends can run code in the parent. User files are executed from
the text the run read at start, never from disk. Before the first call the worker confines
itself (`reward/isolation.py`): reward functions get Landlock (read-only interpreter, libraries
and import path plus their `read_paths`, a private writable temp dir, no TCP unless `network`),
seccomp and resource limits; a worker that hosts the code-execution harness (`code_tests`)
gets resource limits only, since it runs no untrusted code itself and confines each program it
starts more tightly. Limits: RLIMIT_AS (address space beyond what the worker holds after
loading), RLIMIT_CPU (per call), RLIMIT_NPROC (relative to the user's process count; not
enforced for root). Not guaranteed: that a child that starts its own session is killed with the
worker (generated code gets that guarantee from its pid namespace).
"""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from core.config import RewardFunctionConfig, from_dict
from reward.functions import load_reward_functions
from reward.isolation import Policy, confine, die_with_parent, user_tasks
from reward.scoring import KINDS, MAX_PARTS, CallInput, Outcome, call_batched, call_function

Task = tuple[int, int, list[CallInput]]
"""(task id, function index, inputs): a per-sample function gets one input per task."""


@dataclass
class Limits:
    """OS limits of one worker (see `RewardConfig` for each key)."""

    memory_limit_mb: int = 0
    cpu_limit_s: float = 0.0
    max_processes: int = 0


MAX_REPLY_BYTES = 8 * 2**20
"""Largest message a worker may send; a longer one is that task's `crash`."""
_MAX_TEXT = 4000


def worker_main(
    conn,
    function_configs: list[dict],
    base_dir: str,
    limits: Limits,
    sources: dict[str, str],
    policy: Policy,
    granted_env: dict[str, str],
    scratch: str,
) -> None:
    """Serve tasks from `conn` until it closes: receive a list of `Task`s, send back one JSON
    reply per task. First sends `{"ready": [active isolation layers]}`, or `{"load_error":
    message}` if the functions cannot be loaded or the isolation `policy` cannot be applied.
    `granted_env`: the variables the functions are granted (`env`), with their values;
    `scratch`: the worker's private writable temp dir (its owner deletes it)."""
    os.setsid()
    die_with_parent()
    # Descriptors inherited from the forkserver (its liveness pipe, the resource tracker's
    # pipe) would let reward code stop the forkserver or make the tracker unlink files.
    os.closerange(3, conn.fileno())
    os.closerange(conn.fileno() + 1, _max_fd())
    try:
        cfgs = [
            from_dict(RewardFunctionConfig, d, prefix=f"reward.functions[{i}].")
            for i, d in enumerate(function_configs)
        ]
        functions = load_reward_functions(cfgs, Path(base_dir), sources)
        _limit_memory(limits.memory_limit_mb)
        _limit_processes(limits.max_processes)
        _keep_environment(granted_env)
        os.environ["TMPDIR"] = tempfile.tempdir = scratch
        layers = confine(replace(policy, write_dir=scratch))
    except Exception as e:
        conn.send_bytes(json.dumps({"load_error": f"{type(e).__name__}: {e}"}).encode())
        return
    conn.send_bytes(json.dumps({"ready": layers}).encode())
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
            conn.send_bytes(encode_reply(task_id, outcomes))


SAFE_ENVIRONMENT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HOME",
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)
"""Variables a worker keeps besides those its functions list in `env`: none holds a secret."""


def _keep_environment(granted: dict[str, str]) -> None:
    """Remove every environment variable but `SAFE_ENVIRONMENT`, then set `granted` (tokens,
    keys and cluster addresses of the run stay out of reach of reward code; the forkserver
    itself starts with a clean environment, so /proc/self/environ holds none either)."""
    for name in list(os.environ):
        if name not in SAFE_ENVIRONMENT:
            del os.environ[name]
    os.environ.update(granted)


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


def encode_reply(task_id: int, outcomes: list[Outcome]) -> bytes:
    """The JSON reply for one task (non-finite numbers as null; long texts cut)."""
    return json.dumps(
        {
            "task": task_id,
            "outcomes": [
                {
                    "value": o.value if math.isfinite(o.value) else None,
                    "components": o.components,
                    "seconds": o.seconds,
                    "kind": o.kind,
                    "error": o.error[:_MAX_TEXT],
                    "traceback": o.traceback[-4 * _MAX_TEXT :],
                }
                for o in outcomes
            ],
        },
        allow_nan=False,
    ).encode()


class MalformedReply(ValueError):
    """A worker's message does not follow the reply schema."""


def decode_reply(data: bytes, expected_task: int, n_outcomes: int) -> list[Outcome]:
    """The outcomes in a worker's reply, checked against the schema: the task it must answer
    next, one outcome per input, numbers finite, kinds known, parts bounded. Raises
    `MalformedReply` for anything else."""
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedReply(f"not JSON: {e}") from None
    if not isinstance(message, dict) or message.get("task") != expected_task:
        raise MalformedReply(f"expected the reply to task {expected_task}")
    items = message.get("outcomes")
    if not isinstance(items, list) or len(items) != n_outcomes:
        raise MalformedReply(f"expected {n_outcomes} outcomes")
    return [_outcome(item) for item in items]


def _outcome(item: object) -> Outcome:
    if not isinstance(item, dict):
        raise MalformedReply("an outcome is not an object")
    value, parts, seconds = item.get("value"), item.get("components"), item.get("seconds")
    kind, error, tb = item.get("kind"), item.get("error"), item.get("traceback")
    if kind not in ("", *KINDS) or not isinstance(error, str) or not isinstance(tb, str):
        raise MalformedReply("bad kind, error or traceback")
    if not _number(seconds) or not isinstance(parts, dict) or len(parts) > MAX_PARTS:
        raise MalformedReply("bad seconds or components")
    if not all(isinstance(k, str) and _number(v) for k, v in parts.items()):
        raise MalformedReply("bad components")
    if kind:
        return Outcome.failure(kind, error[:_MAX_TEXT], tb[-4 * _MAX_TEXT :], float(seconds))
    if not _number(value):
        raise MalformedReply("a success without a finite value")
    return Outcome(float(value), {k: float(v) for k, v in parts.items()}, float(seconds))


def _number(x: object) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


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
    soft = user_tasks(os.getuid()) + extra
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))


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
