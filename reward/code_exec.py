"""`code_tests`: run the Python code of a completion against the row's test cases.

The code runs in a fresh `python -I` subprocess of the sandbox worker, in its own session and an
empty temporary directory, with a clean environment, an address-space limit and a per-test time
limit (SIGALRM works there: the runner is its own main thread). A test that fails, raises, hangs
or exhausts memory scores as failed, never as a reward failure: broken generated code is a wrong
answer. Guaranteed: the subprocess and everything it started are SIGKILLed by the time the call
returns. Not guaranteed: a security boundary. The code can read files and use the network like
the worker can, and code written to attack the grader (forging result lines) is not stopped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile

_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.I)

# Reads {"code", "tests", "token", "per_test_s", "memory_mb"} from stdin; prints "<token> 1" or
# "<token> 0" per test on the original stdout, as soon as each test ends.
_RUNNER = r"""
import contextlib, io, json, os, resource, signal, sys
spec = json.loads(sys.stdin.read())
if spec["memory_mb"]:
    limit = spec["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out = os.fdopen(os.dup(1), "w")
token = spec.pop("token")
class TestTimeout(BaseException):
    pass
def on_alarm(*_):
    raise TestTimeout()
signal.signal(signal.SIGALRM, on_alarm)
def timed(fn):
    signal.setitimer(signal.ITIMER_REAL, spec["per_test_s"])
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
def report(ok):
    out.write(f"{token} {int(ok)}\n")
    out.flush()
code = compile(spec["code"], "<completion>", "exec")
tests = spec["tests"]
if tests and isinstance(tests[0], str):
    namespace = {"__name__": "__solution__"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            timed(lambda: exec(code, namespace))
        loaded = True
    except BaseException:
        loaded = False
    for test in tests:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                timed(lambda: exec(test, namespace))
            report(loaded)
        except BaseException:
            report(False)
else:
    for case in tests:
        stdout = io.StringIO()
        sys.stdin = io.StringIO(case["input"])
        try:
            with contextlib.redirect_stdout(stdout):
                timed(lambda: exec(code, {"__name__": "__main__"}))
            got = [line.rstrip() for line in stdout.getvalue().strip().splitlines()]
            want = [line.rstrip() for line in case["output"].strip().splitlines()]
            report(got == want)
        except BaseException:
            report(False)
"""


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
    **kwargs,
) -> float:
    """Fraction of the row's tests that the completion's code passes, in [0, 1].

    The code is `extract_code(completion)`. `row[tests_field]` (a list, or a JSON string of one)
    holds either assert statements run after the code in its namespace (MBPP/HumanEval style:
    `"assert add(1, 2) == 3"`), or `{"input": STDIN, "output": STDOUT}` cases for which the whole
    program runs with that standard input and its output must equal `output` line by line
    (trailing spaces and blank edges ignored). Each test (and the code's own top level) may run
    `per_test_s` seconds; the process may map `memory_mb` MiB. Raises ValueError when the row
    has no tests (a data problem, recorded as a reward failure).
    """
    tests = row.get(tests_field)
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not tests or not isinstance(tests, list):
        raise ValueError(f"row field {tests_field!r} holds no list of tests: {tests!r:.100} "
                         "(set kwargs.tests_field to the field with the tests)")  # fmt: skip
    token = secrets.token_hex(8)
    spec = {"code": extract_code(completion), "tests": tests, "token": token,
            "per_test_s": per_test_s, "memory_mb": memory_mb}  # fmt: skip
    stdout = _run_runner(json.dumps(spec), timeout_s=per_test_s * (len(tests) + 1) + 5)
    passed = sum(line == f"{token} 1" for line in stdout.splitlines())
    return passed / len(tests)


def _run_runner(spec_json: str, timeout_s: float) -> str:
    """Run the test runner on `spec_json`; its stdout so far, whatever happens to it."""
    with tempfile.TemporaryDirectory(prefix="cohort-code-") as cwd:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
            env={"PATH": os.defpath, "PYTHONHASHSEED": "0"}, text=True,
        )  # fmt: skip
        try:
            stdout, _ = process.communicate(spec_json, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, _ = process.communicate()
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # anything the code left running
            except ProcessLookupError:
                pass
    return stdout or ""
