"""`Sandbox`: a pool of worker processes that run reward calls under a hard wall-clock limit.

Workers come from a `forkserver` (never `fork` of the threaded Ray actor) that has imported the
built-ins once, so a replacement starts in milliseconds; each worker loads the reward functions
itself (`worker.py`). Tasks are handed out in small chunks; a worker answers each task as it
finishes, so the parent knows which task a worker is on and since when.

Guaranteed: `run(tasks)` returns one list of outcomes per task, in task order, and returns: a
task running longer than `timeout_s` is a `timeout` failure, and a worker that dies during a
task (`os._exit`, a signal, the OOM killer, RLIMIT_CPU) makes it a `crash` failure (`timeout`
for RLIMIT_CPU); either way the worker's whole process group is SIGKILLed and a fresh worker
replaces it, and the tasks it had not started yet go to other workers. `run` takes at most about
`timeout_s` longer per hung task than the work itself (hung tasks on different workers overlap).
A worker's messages are JSON checked against a schema (`worker.decode_reply`), read with a size
limit: a message that is not JSON, answers another task than the one the worker is on, or breaks
the schema makes that task a `crash`, and the worker is replaced, so every later call is
unaffected (the bookkeeping never depends on what a worker says, only on what it was sent).
Not guaranteed: that a task which fails the worker is retried (it is not: a crash or hang is the
task's outcome), or fairness between tasks of different cost.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import wait

from core.scratch import owned_temp_dir, remove_orphans
from reward.isolation import Policy
from reward.scoring import Outcome
from reward.worker import (
    MAX_REPLY_BYTES,
    SAFE_ENVIRONMENT,
    Limits,
    MalformedReply,
    Task,
    decode_reply,
    worker_main,
)

START_TIMEOUT_S = 120.0
"""How long a new worker may take to load the reward functions."""
MAX_CHUNK = 32
"""Most tasks handed to a worker at once (fewer when there are few tasks per worker)."""
SCRATCH_PREFIX = "cohort-reward-"
"""Name prefix of the workers' private temp dirs (`core/scratch.py`: `<prefix><pid>-...`)."""


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: mp.connection.Connection
    started: float
    ready: bool = False
    inflight: deque[int] = field(default_factory=deque)
    """Ids of the tasks sent and not yet answered; the first is running."""
    since: float = 0.0
    """When the running task started (its dispatch, or the previous task's answer)."""
    malformed: str = ""
    """Why its last message was refused (it is then replaced)."""
    scratch: str = ""
    """Its private temp dir, deleted when it is killed."""


class Sandbox:
    """`workers` worker processes that have loaded `function_configs` (plain dicts of
    `RewardFunctionConfig`; user files from `sources`, else relative to `base_dir`) and confined
    themselves under `policy`."""

    def __init__(
        self,
        function_configs: list[dict],
        base_dir: str,
        workers: int = 2,
        timeout_s: float = 30.0,
        limits: Limits | None = None,
        sources: dict[str, str] | None = None,
        policy: Policy | None = None,
    ):
        granted = {name for d in function_configs for name in d.get("env") or ()}
        granted_env = {k: v for k, v in os.environ.items() if k in granted}
        self.args = (
            function_configs,
            str(base_dir),
            limits or Limits(),
            sources or {},
            policy or Policy(untrusted_code=False),
            granted_env,
        )
        self.layers: list[str] = []
        """The isolation layers the workers reported active."""
        self.timeout_s = timeout_s
        self.ctx = mp.get_context("forkserver")
        # Workers fork from a server that has imported the main module (in a Ray actor, Ray's
        # worker script) and, where `math_answer` is used, math-verify and sympy once: else
        # each new worker imports them.
        preload = ["__main__", "reward.worker", "reward.builtin"]
        if any(d.get("name") == "math_answer" for d in function_configs):
            preload.append("math_verify")
        self.ctx.set_forkserver_preload(preload)
        self.replaced = 0
        """Workers killed or found dead and replaced, over the sandbox's life."""
        self.workers: list[_Worker] = []
        # Scratch dirs of sandboxes whose actor was killed (no exit handler ran) go now.
        remove_orphans(SCRATCH_PREFIX)
        try:
            self.workers = [self._start() for _ in range(workers)]
            deadline = time.monotonic() + START_TIMEOUT_S
            while not all(w.ready for w in self.workers):
                wait([w.conn for w in self.workers if not w.ready], timeout=1.0)
                for w in self.workers:
                    if not w.ready and not self._drain(w, []):
                        why = w.malformed or _describe_exit(w.process.exitcode)
                        raise RuntimeError(f"a reward worker died while starting ({why})")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"reward workers did not load the reward functions "
                        f"within {START_TIMEOUT_S:.0f} s"
                    )
        except BaseException:
            self.close()
            raise

    def run(self, tasks: list[Task]) -> list[list[Outcome]]:
        """Outcomes of every task, in order; see the module docstring for failures."""
        if not self.workers:
            raise RuntimeError("Sandbox.run called after close(); build a new sandbox")
        results: list[list[Outcome] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        chunk = max(1, min(MAX_CHUNK, math.ceil(len(tasks) / (4 * len(self.workers)))))
        while pending or any(w.inflight for w in self.workers):
            for w in self.workers:
                if w.ready and not w.inflight and pending:
                    ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    self._send(w, ids, tasks, pending)
            waiting = [w for w in self.workers if w.inflight or not w.ready]
            deadlines = [
                w.since + self.timeout_s if w.inflight else w.started + START_TIMEOUT_S
                for w in waiting
            ]
            wait(
                [w.conn for w in waiting] + [w.process.sentinel for w in waiting],
                timeout=max(0.0, min(deadlines, default=0.0) - time.monotonic()),
            )
            for i, w in enumerate(self.workers):
                self.workers[i] = self._check(w, tasks, results, pending)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Kill every worker; the sandbox cannot run afterwards."""
        for w in self.workers:
            _kill(w)
        self.workers = []

    def __del__(self):
        self.close()

    def _start(self) -> _Worker:
        _forkserver_without_secrets()
        parent, child = self.ctx.Pipe()
        scratch = owned_temp_dir(SCRATCH_PREFIX)
        process = self.ctx.Process(
            target=worker_main, args=(child, *self.args, scratch), daemon=True
        )
        try:
            process.start()
        except OSError:  # the forkserver died under us: start a new one and try once more
            _forkserver_without_secrets()
            process.start()
        child.close()  # the parent keeps only its end, so a dead worker reads as EOF
        return _Worker(process, parent, started=time.monotonic(), scratch=scratch)

    def _send(self, w: _Worker, ids: list[int], tasks: list[Task], pending: deque[int]) -> None:
        try:
            w.conn.send([tasks[i] for i in ids])
        except OSError:  # died while idle: nobody to blame, its tasks go back to the queue
            pending.extendleft(reversed(ids))
            return
        w.inflight.extend(ids)
        w.since = time.monotonic()

    def _drain(self, w: _Worker, results: list, tasks: list[Task] | None = None) -> bool:
        """Read every message `w` has sent; False once its pipe is closed or it sent something
        malformed (`w.malformed` says what)."""
        try:
            while w.conn.poll():
                data = w.conn.recv_bytes(MAX_REPLY_BYTES)
                if not w.ready:
                    self._hello(w, data)
                    continue
                if not w.inflight or tasks is None:
                    raise MalformedReply("a message while no task was running")
                task_id = w.inflight[0]
                results[task_id] = decode_reply(data, task_id, len(tasks[task_id][2]))
                w.inflight.popleft()
                w.since = time.monotonic()
        except (EOFError, OSError):
            return False
        except MalformedReply as e:
            w.malformed = str(e)
            return False
        return True

    def _hello(self, w: _Worker, data: bytes) -> None:
        """Handle a worker's first message: ready (with its isolation layers) or a load error."""
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if isinstance(message, dict) and isinstance(message.get("load_error"), str):
            raise RuntimeError(f"a reward worker could not start: {message['load_error']}")
        if not isinstance(message, dict) or not isinstance(message.get("ready"), list):
            raise MalformedReply("the first message is not a ready message")
        w.ready, w.since = True, time.monotonic()
        self.layers = [str(x) for x in message["ready"]]

    def _check(self, w: _Worker, tasks, results, pending: deque[int]) -> _Worker:
        """`w`, or its replacement if it died or overran its running task."""
        alive = self._drain(w, results, tasks) and w.process.is_alive()
        overdue = bool(w.inflight) and time.monotonic() > w.since + self.timeout_s
        if alive and not overdue:
            if not w.ready and time.monotonic() > w.started + START_TIMEOUT_S:
                raise RuntimeError(
                    f"a reward worker did not load the reward functions within "
                    f"{START_TIMEOUT_S:.0f} s"
                )
            return w
        _kill(w)
        if not w.ready:
            raise RuntimeError(
                f"a reward worker died while loading the reward functions "
                f"({_describe_exit(w.process.exitcode)})"
            )
        if w.inflight:
            task_id = w.inflight.popleft()
            n = len(tasks[task_id][2])
            seconds = 0.0
            if w.malformed:
                kind = "crash"
                error = f"WorkerCrashed: the worker sent a malformed reply ({w.malformed})"
            elif alive:  # overdue
                kind, seconds = "timeout", self.timeout_s / n
                error = (
                    f"TimeoutError: no result within reward.timeout_s={self.timeout_s:g} s; "
                    "the worker was killed"
                )
            else:
                kind, error = _crash(w.process.exitcode)
            results[task_id] = [Outcome.failure(kind, error, seconds=seconds)] * n
            pending.extendleft(reversed(w.inflight))
        self.replaced += 1
        return self._start()


def _forkserver_without_secrets() -> None:
    """Start this process's forkserver (and resource tracker), if not running, with only
    `SAFE_ENVIRONMENT`: the environment a process starts with stays readable in
    /proc/<pid>/environ whatever it deletes later, and every worker is forked from this one.
    The temp dir is resolved first: `tempfile` caches it on first use, and resolved without
    TMPDIR it would be /tmp for the rest of the process (the workers' scratch dirs included)."""
    tempfile.gettempdir()
    saved = dict(os.environ)
    try:
        for name in saved:
            if name not in SAFE_ENVIRONMENT:
                del os.environ[name]
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _kill(w: _Worker) -> None:
    """SIGKILL the worker's process group (its children too), reap it, close the pipe."""
    try:
        os.killpg(w.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, TypeError):
        pass
    try:
        w.process.kill()
    except (OSError, ValueError, AttributeError):
        pass
    w.process.join(timeout=5)
    w.conn.close()
    shutil.rmtree(w.scratch, ignore_errors=True)


def _crash(exitcode: int | None) -> tuple[str, str]:
    """(kind, error) for a worker that died with `exitcode` during a call."""
    if exitcode == -signal.SIGXCPU:
        return "timeout", "TimeoutError: the call used more CPU time than reward.cpu_limit_s"
    return "crash", f"WorkerCrashed: the worker process {_describe_exit(exitcode)} during the call"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "closed its pipe"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if exitcode == -signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode} (os._exit or sys.exit in the reward code?)"
