"""`code_tests`: score a completion's Python code by the row's tests, which the code never sees.

The code runs in `code_runner.py`, a process of its own forked by a clean `python -I` zygote
(`code_zygote.py`: a fork takes ~1 ms where a fresh interpreter takes ~100) and adopted by the
sandbox worker, in its own session and an empty temporary directory, confined by
`reward.isolation.confine` with the policy of `set_policy` (default `Policy()`, level
`strict`), its level replaced by the `isolation` kwarg when given (`reward/actor.py` passes
`reward.isolation` that way) and its `memory_mb`, `cpu_s` and `write_dir` set per call. The
tests never enter that process, nor the zygote:
- assert tests (`"assert add(1, 2) == 3"`, HumanEval's `check(candidate)`) run here, in
  `code_judge.py`, calling the code through a pair of pipes: one runner per completion, and a
  new one after a test that hung or killed it;
- stdin/stdout cases run the whole program, one runner per case, with the case's input on stdin;
  its stdout (at most `MAX_OUTPUT_BYTES`) is read and compared here, and it must exit with 0.

`run_python` runs one program the same way for the multi-turn `python` tool (its stdout is the
tool's reply; `reward/python_tool.py` calls it from its own actor).

Guaranteed: the score is passed / total, in [0, 1] (with `all_or_nothing`, 1.0 only when all
pass, else 0.0). A test that fails, raises, hangs, exhausts memory, or whose runner dies or
answers nonsense counts as failed: broken or hostile code is a wrong answer, not a reward
failure. Every wait has a deadline (a grandchild holding a pipe open is not waited for), the
call returns within about `per_test_s * (tests + 1) + 5` seconds, and each runner's process group
is SIGKILLed by then. Reward failures (exceptions) are data or setup problems only: a row without
tests or with malformed cases, a runner that could not start or confine itself (such as
`isolation="strict"` on a kernel without what it needs); each is decided before the code runs.
Not guaranteed: what `code_judge.py` lists (arguments are copies, objects of the code compare by
identity, ...), and whatever `reward.isolation` leaves open: under `off` the code can read
files, use the network, and read this worker's memory (expected outputs included) through
/proc/<pid>/mem as the worker's user.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import tempfile
import time
from dataclasses import asdict, replace

from reward import code_zygote, wire
from reward.code_judge import RpcFailure, judge_asserts, same_output
from reward.isolation import LEVELS, Policy

MAX_OUTPUT_BYTES = 2**20
"""Most stdout a program may write for one stdin/stdout case (more fails the case)."""
STARTUP_S = 10.0
"""How long a runner may take to start and confine itself (longer is a reward failure)."""
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.I)

_policy = Policy()


def set_policy(policy: Policy) -> None:
    """Confine the runners of later `code_tests` calls in this process with `policy` (the sandbox
    worker sets it once; `memory_mb`, `cpu_s` and `write_dir` are replaced per call)."""
    global _policy
    _policy = policy


def extract_code(completion: str) -> str:
    """The last fenced code block (```python, ```py or plain ```), else the whole completion."""
    blocks = _FENCE_RE.findall(completion)
    return blocks[-1] if blocks else completion


def code_tests(
    completion: str,
    *,
    prompt: str,
    answer: str,
    row: dict,
    tests_field: str = "tests",
    per_test_s: float = 2.0,
    memory_mb: int = 1024,
    all_or_nothing: bool = False,
    isolation: str | None = None,
    **kwargs,
) -> float:
    """Fraction of the row's tests that the completion's code passes, in [0, 1].

    The code is `extract_code(completion)`. `row[tests_field]` (a list, or a JSON string of one)
    holds either assert-style tests, Python source run against the code's globals (MBPP /
    HumanEval: `"assert add(1, 2) == 3"`), or `{"input": STDIN, "output": STDOUT}` cases for
    which the whole program runs with that standard input and its output must equal `output`
    line by line (trailing spaces and blank edges ignored). Each test (and the code's top level)
    may run `per_test_s` seconds; each process may map `memory_mb` MiB. `all_or_nothing`: 1.0
    when every test passes, else 0.0 (partial credit is easier to game). `isolation`: the
    `reward.isolation` level (`strict`, `best_effort`, `off`) instead of `set_policy`'s.
    Raises ValueError when the row has no valid tests (a data problem, a reward failure).
    """
    tests = _load_tests(row, tests_field)
    if isolation is not None and isolation not in LEVELS:
        raise ValueError(f"kwargs.isolation is {isolation!r}; use one of {', '.join(LEVELS)}")
    code = extract_code(completion)
    deadline = time.monotonic() + per_test_s * (len(tests) + 1) + 5.0
    with tempfile.TemporaryDirectory(prefix="cohort-code-", ignore_cleanup_errors=True) as cwd:
        policy = replace(
            _policy,
            level=isolation or _policy.level,
            memory_mb=memory_mb,
            cpu_s=per_test_s * (len(tests) + 1) + 1.0,
            write_dir=cwd,
        )
        if isinstance(tests[0], str):
            spec = {"mode": "functions", "code": code, "load_s": per_test_s}
            launch = lambda: RunnerProcess.start(spec, policy, cwd)
            results = judge_asserts(tests, launch, per_test_s=per_test_s, deadline=deadline)
        else:
            results = []
            for case in tests:
                try:
                    results.append(_run_case(code, case, policy, cwd, per_test_s, deadline))
                except RuntimeError:
                    if not results:  # before any code ran: a setup problem
                        raise
                    results.append(False)  # what earlier runs left behind may be the cause
    passed = sum(ok is True for ok in results)
    if all_or_nothing:
        return 1.0 if passed == len(tests) else 0.0
    return min(passed, len(tests)) / len(tests)


def _load_tests(row: dict, tests_field: str) -> list:
    tests = row.get(tests_field)
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not tests or not isinstance(tests, list):
        raise ValueError(
            f"row field {tests_field!r} holds no list of tests: {tests!r:.100} "
            "(set kwargs.tests_field to the field with the tests)"
        )
    is_case = lambda t: (
        isinstance(t, dict) and all(isinstance(t.get(k), str) for k in ("input", "output"))
    )
    if not (all(isinstance(t, str) for t in tests) or all(is_case(t) for t in tests)):
        raise ValueError(
            f"row field {tests_field!r} must hold only strings (assert tests) or only "
            f'{{"input": str, "output": str}} cases: {tests!r:.100}'
        )
    return tests


def _run_case(
    code: str, case: dict, policy: Policy, cwd: str, per_test_s: float, deadline: float
) -> bool:
    """Whether the program, given the case's input, exits with 0 and prints its output."""
    if time.monotonic() >= deadline:
        return False
    with tempfile.TemporaryFile() as stdin:
        stdin.write(case["input"].encode("utf-8", "replace"))
        stdin.seek(0)
        spec = {"mode": "program", "code": code}
        runner = RunnerProcess.start(spec, policy, cwd, stdin=stdin.fileno())
        try:
            end = min(time.monotonic() + per_test_s, deadline)
            output = runner.read_output(MAX_OUTPUT_BYTES, end)
        finally:
            runner.close()
    return output is not None and same_output(output.decode("utf-8", "replace"), case["output"])


class RunnerProcess:
    """One `code_runner` process (a child of this one, from `code_zygote.spawn`) and its pipes;
    every read and write ends by a deadline.

    Its requests pipe carries the spec and then requests; its replies pipe carries the
    status line (before any code runs) and then replies. In mode `program` its stdout is a pipe
    read by `read_output`, else /dev/null; stderr is /dev/null.
    """

    def __init__(self, cwd: str, stdin: int | None, capture_stdout: bool, deadline: float):
        request_r, self.requests = os.pipe()
        self.replies, reply_w = os.pipe()
        self.stdout, stdout_w = os.pipe() if capture_stdout else (-1, -1)
        devnull = os.open(os.devnull, os.O_RDWR)
        theirs = (stdin if stdin is not None else devnull, stdout_w if capture_stdout else devnull)
        try:
            self.pid = code_zygote.spawn(cwd, (*theirs, request_r, reply_w), deadline)
        except BaseException:
            for fd in (self.requests, self.replies, self.stdout):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (request_r, reply_w, stdout_w, devnull):
                if fd >= 0:
                    os.close(fd)
        os.set_blocking(self.requests, False)
        self.buffer = bytearray()
        self.closed = False

    @classmethod
    def start(cls, spec: dict, policy: Policy, cwd: str, stdin: int | None = None):
        """A runner that has read `spec` and confined itself with `policy`, its stdin the file
        descriptor `stdin` (None: /dev/null); raises RuntimeError when it cannot start or
        reports that it cannot confine itself, or does not report within `STARTUP_S`."""
        deadline = time.monotonic() + STARTUP_S
        runner = cls(cwd, stdin, capture_stdout=spec["mode"] == "program", deadline=deadline)
        try:
            runner.send_line(wire.encode({**spec, "policy": asdict(policy)}), deadline)
            status = wire.decode(runner.receive_line(deadline))
        except (RpcFailure, wire.WireError) as e:
            runner.close()
            raise RuntimeError(
                f"the code runner did not start ({e}); run `{sys.executable} -I -c "
                f"'import reward.code_zygote, reward.code_runner'` in {code_zygote.ROOT} to see why"
            ) from None
        if type(status) is not dict or type(status.get("confined")) is not list:
            runner.close()
            why = status.get("fatal", status) if type(status) is dict else status
            raise RuntimeError(
                f"the code runner could not confine itself: {why!s:.300} "
                "(set kwargs.isolation to a level this machine supports, e.g. 'best_effort')"
            )
        return runner

    def send_line(self, line: str, deadline: float) -> None:
        data = memoryview(line.encode("ascii") + b"\n")
        poller = select.poll()
        poller.register(self.requests, select.POLLOUT)
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcFailure("timed out writing to the runner")
            poller.poll(_ms(remaining))
            try:
                data = data[os.write(self.requests, data) :]
            except BlockingIOError:
                continue
            except OSError as e:
                raise RpcFailure(f"the runner stopped reading: {e}") from None

    def receive_line(self, deadline: float) -> bytes:
        poller = select.poll()
        poller.register(self.replies, select.POLLIN)
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > wire.MAX_BYTES + 1024:
                raise RpcFailure("the runner's answer is too long")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcFailure("timed out waiting for the runner")
            if not poller.poll(_ms(remaining)):
                continue
            chunk = os.read(self.replies, 2**16)
            if not chunk:
                raise RpcFailure("the runner exited")
            self.buffer += chunk

    def read_output(self, limit: int, deadline: float) -> bytes | None:
        """The program's stdout once it has exited with status 0; None when it fails, writes
        more than `limit` bytes or has not exited by `deadline`."""
        output, failure = self.read(limit, deadline)
        return None if failure else output

    def read(self, limit: int, deadline: float) -> tuple[bytes, str]:
        """What the program wrote to stdout (at most `limit` bytes) and why it failed: "" when
        it exited with status 0, else `ended with exit status N`, `was killed by signal N`,
        `printed more than N bytes` or `was still running at its deadline`. After the runner
        exits, only what it wrote is read: a grandchild that keeps stdout open is not waited
        for."""
        stdout = self.stdout
        os.set_blocking(stdout, False)
        poller = select.poll()
        poller.register(stdout, select.POLLIN)
        chunks, size, eof = [], 0, False
        while True:
            status = self._exit_status()  # before reading: all it wrote is in the pipe now
            while not eof:
                try:
                    chunk = os.read(stdout, 2**16)
                except BlockingIOError:
                    break
                eof = not chunk
                size += len(chunk)
                chunks.append(chunk)
                if size > limit:
                    return b"".join(chunks)[:limit], f"printed more than {limit} bytes"
            if status is not None:
                output = b"".join(chunks)
                if status == 0:
                    return output, ""
                if status > 0:
                    return output, f"ended with exit status {status}"
                return output, f"was killed by signal {-status}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), "was still running at its deadline"
            if eof:  # stdout closed, exit status soon
                time.sleep(min(remaining, 0.002))
            else:  # wake now and then: a grandchild may hold stdout after the runner exits
                poller.poll(_ms(min(remaining, 0.02)))

    def _exit_status(self) -> int | None:
        """The runner's exit status (negative: killed by that signal), or None while it runs;
        it is not reaped, so its process group id cannot be reused before `close`."""
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            info = os.waitid(os.P_PID, self.pid, flags)
        except ChildProcessError:
            return -1
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def close(self) -> None:
        """SIGKILL the runner's process group, reap the runner and the rest of its group, close
        the pipes."""
        if self.closed:
            return
        self.closed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _unreaped.add(self.pid)
        _reap(time.monotonic() + 5.0)
        for fd in (self.requests, self.replies, self.stdout):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


_unreaped: set[int] = set()
"""Process groups of killed runners that still have processes to reap."""


def _reap(deadline: float) -> None:
    """Reap what is left of the killed runners' process groups, waiting until `deadline`; a
    group not done by then is tried again by the next call. This process is a child subreaper
    (`code_zygote.spawn`): when a runner dies before the program it forked (the pid namespace's
    first process, in the runner's group), that program becomes our child, to reap here."""
    while True:
        for group in tuple(_unreaped):
            try:
                while os.waitid(os.P_PGID, group, os.WEXITED | os.WNOHANG):
                    pass
            except ChildProcessError:  # no process of the group is left
                _unreaped.discard(group)
        if not _unreaped or time.monotonic() >= deadline:
            return
        time.sleep(0.0005)


def _ms(seconds: float) -> int:
    """poll()'s timeout, rounded up so that a wait never ends before its deadline."""
    return max(1, int(seconds * 1000) + 1)


MAX_TOOL_OUTPUT_BYTES = 16384
"""Most a `python` tool call may print (more is a failed call)."""
MAX_TOOL_ERROR_CHARS = 1000
"""How much of a failed call's output (its traceback) the model reads."""


def run_python(
    code: str, *, timeout_s: float, memory_mb: int = 512, isolation: str | None = None
) -> str:
    """Run `code` as a program in a confined runner, as a stdin/stdout case runs (empty stdin)
    but with stderr joined to stdout, and return what it printed. Raises RuntimeError, whose
    message says why and ends with the last `MAX_TOOL_ERROR_CHARS` it printed (the traceback),
    when it exits with an error or is killed, prints more than `MAX_TOOL_OUTPUT_BYTES`, runs
    past `timeout_s` (its process group is killed by then), or the runner cannot start or
    confine itself."""
    if isolation is not None and isolation not in LEVELS:
        raise ValueError(f"isolation is {isolation!r}; use one of {', '.join(LEVELS)}")
    with tempfile.TemporaryDirectory(prefix="cohort-tool-", ignore_cleanup_errors=True) as cwd:
        policy = replace(
            _policy,
            level=isolation or _policy.level,
            memory_mb=memory_mb,
            cpu_s=timeout_s + 1.0,
            write_dir=cwd,
        )
        spec = {"mode": "program", "code": code, "stderr_to_stdout": True}
        runner = RunnerProcess.start(spec, policy, cwd)
        try:
            output, failure = runner.read(MAX_TOOL_OUTPUT_BYTES, time.monotonic() + timeout_s)
        finally:
            runner.close()
    text = output.decode("utf-8", "replace")
    if failure:
        if failure.startswith("was still running"):
            failure = f"ran past {timeout_s:g} s"
        tail = "" if failure.startswith("printed") else text[-MAX_TOOL_ERROR_CHARS:].strip()
        raise RuntimeError(f"the program {failure}" + (f"; it printed:\n{tail}" if tail else ""))
    return text
