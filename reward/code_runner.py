"""The untrusted side of `code_tests`: a process that runs a completion's code and nothing else.

Forked by the zygote (`code_zygote.py`, a clean `python -I` that never holds a test) in its own
session and an empty directory, stderr on /dev/null, and adopted by the process that asked for
it. It reads one spec from the requests pipe (`{"mode", "code", "policy", "load_s"}`), confines
itself (`reward.isolation.confine`: the policy's layers and its resource limits, `memory_mb`
included), moves into the policy's `write_dir`, and answers `{"confined": [layers]}` or
`{"fatal": message}` on the replies pipe before any code of the completion runs. Then:

- mode `program`: closes both pipes and runs the code as `__main__` with the stdin, stdout and
  exit status the judge gave it (a stdin/stdout case; one process per case); with
  `stderr_to_stdout` (the `python` tool) its stderr, the traceback included, goes to stdout.
- mode `functions`: runs the code once as module `__solution__` (stdout/stderr are /dev/null),
  answers `{"loaded": true, "globals": [names], "modules": {name: module name}}` or
  `{"loaded": false}`, then answers requests, one wire line each, until the pipe closes. A
  request is `{"id", "op", "timeout_s", ...}`, with op `get` (`name`: the current value of
  that global), `call` (`target`, `args`, `kwargs`), `getattr` (`target`, `name`), `getitem`
  (`target`, `key`), `contains` (`target`, `item`), or `len`, `iter`, `next`, `str`, `repr`
  (`target`). A reply is `{"id", "value", "after"}` (`after`: `[[position, final value]]` of
  the list, dict and set arguments of a call, so that in-place changes reach the caller),
  `{"id", "error": exception name, "message"}` or `{"id", "timeout": true}`.

Values travel as `reward.wire` lines; an object that is not plain data stays here and travels as
a `Ref` (subclasses of plain types and numpy scalars are first converted to their plain value).
Each request runs under a SIGALRM timer of its `timeout_s`: a convenience only, since the code
can ignore the signal; the judge's own deadline and SIGKILL are the bound.

Holds no secret: no expected output, no test source, no token; only call arguments arrive.
Nothing here is trusted: the code it runs can replace any function of this module or write to
its pipes, so the judge takes nothing from it but plain values. Standard library only (the
zygote imports this module, and every runner is a fork of it).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import gc
import os
import signal
import sys
import types

from reward import wire
from reward.isolation import Policy, confine

MAX_NAMES = 1000
"""Most globals of the code reported to the judge."""
_PLAIN_BASES = (int, float, complex, str, bytes, tuple, list, frozenset, set, dict)
"""In the order a subclass is converted (a bool subclass cannot exist)."""


class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so that the code's `except Exception` lets it by."""


def main(requests_fd: int, replies_fd: int) -> None:
    """Entry point of the runner process (see the module docstring), given its pipes."""
    requests = os.fdopen(requests_fd, "rb")
    replies = replies_fd
    spec = wire.decode(requests.readline())
    policy = Policy(**spec["policy"])
    try:
        layers = confine(policy)
    except Exception as e:
        _send(replies, {"fatal": f"reward.isolation.confine failed: {type(e).__name__}: {e}"})
        raise SystemExit(3) from None
    if policy.write_dir:
        try:  # `confine` may have mounted a private tmpfs there since this process started
            os.chdir(policy.write_dir)
        except OSError:
            pass
    _send(replies, {"confined": list(layers)})
    if spec["mode"] == "program":
        requests.close()
        os.close(replies)
        if spec.get("stderr_to_stdout"):  # the python tool: the model reads its traceback
            os.dup2(1, 2)
            sys.stdout.reconfigure(line_buffering=True)  # lines in the order they were written
        _run_program(spec["code"])
    else:
        _serve(spec["code"], spec["load_s"], requests, replies)


def _run_program(source: str) -> None:
    """Run `source` as a script, then end this process with the exit status and output that
    `python script.py` would have, in CPython's order: non-daemon threads joined, `atexit`
    functions run, stdout and stderr flushed, the script's globals dropped (their `__del__`
    methods run), stdout and stderr flushed again (120 if a flush fails); an exception is
    shown by `sys.excepthook` and exits with 1, `sys.exit(code)` with `code`. Only the rest of
    the interpreter's teardown is skipped (`os._exit`): it writes to every object inherited
    from the zygote, which would copy each of their pages, ~10 ms."""
    sys.argv[:] = ["solution.py"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "<completion>", "exec"), namespace)
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException:
        status = 1
        kind, value, tb = sys.exc_info()
        with contextlib.suppress(BaseException):  # the traceback starts in the completion
            value = value.with_traceback(tb.tb_next if tb is not None else None)
            sys.excepthook(kind, value, value.__traceback__)
    with contextlib.suppress(BaseException):
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    flushed = _flush_std()
    del namespace
    with contextlib.suppress(BaseException):
        gc.collect()
    flushed = _flush_std() and flushed
    os._exit(status if flushed else 120)


def _flush_std() -> bool:
    """Flush sys.stdout and sys.stderr; False if one of them fails."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException:
            ok = False
    return ok


def _exit_status(code: object) -> int:
    """The exit status of `python` after `sys.exit(code)`."""
    if code is None:
        return 0
    if not isinstance(code, int):
        with contextlib.suppress(BaseException):
            print(code, file=sys.stderr)
        return 1
    return int(code) & 0xFF if -(2**63) <= code < 2**63 else 255


def _serve(source: str, load_s: float, requests, replies: int) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    namespace = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        code = compile(source, "<completion>", "exec")
        _timed(load_s, lambda: exec(code, namespace))
    except BaseException:
        _send(replies, {"loaded": False})
        return
    names, modules = [], {}
    for name, value in list(namespace.items())[: MAX_NAMES + 2]:
        if type(name) is str and not name.startswith("__"):
            if isinstance(value, types.ModuleType):
                modules[name] = str(value.__name__)
            else:
                names.append(name)
    _send(replies, {"loaded": True, "globals": names, "modules": modules})
    handles = _Handles()
    for line in requests:
        _write(replies, _answer(line, namespace, handles))


def _answer(line: bytes, namespace: dict, handles: _Handles) -> str:
    """The encoded reply to one request line."""
    request_id = None
    try:
        request = wire.decode(line, ref=handles.get)
        request_id = request["id"]

        def perform() -> str:
            value, after = _perform(request, namespace)
            return _encode({"id": request_id, "value": value, "after": after}, handles)

        return _timed(request["timeout_s"], perform)
    except _Timeout:
        return _encode({"id": request_id, "timeout": True}, handles)
    except BaseException as e:
        error = e
        message = _timed(1.0, lambda: str(error)[:1000], fallback="")
        return _encode({"id": request_id, "error": type(e).__name__, "message": message}, handles)


def _perform(request: dict, namespace: dict) -> tuple[object, list]:
    """(the value asked for, [[argument position, final value], ...] for a call)."""
    op = request["op"]
    if op == "get":
        return namespace[request["name"]], []
    target = request["target"]
    if op == "call":
        args, kwargs = request["args"], request["kwargs"]
        value = target(*args, **kwargs)
        positions = [*enumerate(args), *kwargs.items()]
        return value, [[k, v] for k, v in positions if type(v) in (list, dict, set)]
    if op == "getattr":
        return getattr(target, request["name"]), []
    if op == "getitem":
        return target[request["key"]], []
    if op == "contains":
        return request["item"] in target, []
    operations = {"len": len, "iter": iter, "next": next, "str": str, "repr": repr}
    return operations[op](target), []


def _encode(reply: dict, handles: _Handles) -> str:
    """`reply` as a wire line. When it is too large or deep, the arguments' final values are
    left out, and then the value travels as a Ref."""
    try:
        return wire.encode(reply, default=handles.export)
    except wire.WireError:
        if "value" not in reply:
            raise
    try:
        return wire.encode({**reply, "after": []}, default=handles.export)
    except wire.WireError:
        reply = {**reply, "value": handles.ref(reply["value"]), "after": []}
        return wire.encode(reply, default=handles.export)


class _Handles:
    """The objects sent to the judge as `Ref`s, kept alive and found again by id."""

    def __init__(self):
        self.objects: dict[int, object] = {}
        self.ids: dict[int, int] = {}

    def ref(self, obj: object) -> wire.Ref:
        if id(obj) not in self.ids:
            self.ids[id(obj)] = len(self.objects)
            self.objects[len(self.objects)] = obj
        return wire.Ref(self.ids[id(obj)])

    def get(self, ref_id: int) -> object:
        if ref_id not in self.objects:
            raise wire.WireError(f"no object with handle {ref_id}")
        return self.objects[ref_id]

    def export(self, obj: object) -> object:
        """`wire.encode`'s default: the plain value of a subclass of a plain type or of a
        numpy scalar (what an equality test against a plain value means), else a Ref."""
        try:
            for base in _PLAIN_BASES:
                if isinstance(obj, base):
                    return base(obj)
            if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
                return obj.item()
        except Exception:
            pass
        return self.ref(obj)


def _on_alarm(*_) -> None:
    raise _Timeout()


def _timed(seconds: float, fn, fallback=None):
    """`fn()` under a SIGALRM timer of `seconds`; `fallback` (when given) if it raises."""
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        return fn()
    except BaseException:
        if fallback is None:
            raise
        return fallback
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _send(fd: int, message: dict) -> None:
    _write(fd, wire.encode(message))


def _write(fd: int, line: str) -> None:
    data = memoryview(line.encode("ascii") + b"\n")
    while data:
        data = data[os.write(fd, data) :]
