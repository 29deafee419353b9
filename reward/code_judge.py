"""The trusted side of `code_tests`: dataset tests run here, the completion's code elsewhere.

Runs in the reward worker. For assert-style tests, each test (dataset code, trusted) is run here
with `exec`, in a fresh namespace of the real builtins; a name the test does not bind itself and
the completion's code defines is fetched from the runner process (`code_runner.py`) at each
use. It arrives as plain data, or as a `Remote`: a proxy whose calls, attribute and item reads,
`len`, iteration, `in`, `str` and `repr` are requests to the runner. Answers are plain builtin
values (`reward.wire`) or more Remotes, so every comparison a test makes is between builtin
values, made here. A remote exception is raised here as the builtin exception of that name
(`ValueError`), else as `RemoteError`. This covers single asserts, several statements, loops
and HumanEval's `def check(candidate): ...` then `check(fn)`. The test's source never leaves
this process; only call arguments do.

Guaranteed: a test passes only if its code ran to the end here without an exception, before its
deadline, and none of its requests timed out, failed or got an invalid answer (fail closed);
a test that does not compile fails. Each wait for the runner ends by the test's deadline. A
Remote equals only itself (`==` falls back to identity), hashes by identity and has no truth
value (`bool()` raises), so no method of the code takes part in a comparison. The code's
definitions of builtin names are ignored (`abs` in a test is the builtin), and a global of the
code that is a module, or a name a test uses as `name.attr` that names a standard-library module,
is this process's own import of that module (`math.isclose` in a test is never the code's).

Not guaranteed:
- arguments are copies: in-place changes to list, dict and set arguments of a call come back
  (the whole argument is replaced by its final value), changes to anything else do not;
- only plain values and Remotes can be passed: a test that passes a function fails;
- Remotes compare by identity, so `Point(1, 2) == Point(1, 2)` is False even when the code's
  class defines `__eq__`; an exception class of the code cannot be caught by name;
- a test that hands its expected value to a function of the code (`assert same(f(x), 3)`, or a
  helper like `Counter` that the test takes from the code's imports) lets the code judge it;
- a class body in a test cannot read the code's globals (CPython looks them up without
  `__missing__` there), and globals the code creates after its top level are not seen;
- a test that loops without calling the code is bounded only by the sandbox's timeout.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import keyword
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from reward import wire

GRACE_S = 0.5
"""How long past a test's time the judge waits for the runner's own timeout answer before it
gives the runner up (a runner given up is killed and started again for the next test)."""
MAX_GLOBALS = 1000
"""Most globals of the code a test can use."""
TRUSTED_MODULES = frozenset(sys.stdlib_module_names) - {
    # Imports with side effects (a browser, a print, a window) or of no use to a test.
    *("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip"),
    *("lib2to3", "pydoc_data", "test", "__main__", "__hello__", "__phello__"),
}
"""Modules a test namespace may import here on the code's behalf."""


class RpcFailure(Exception):
    """The runner did not answer in time, died, or answered nonsense: the test fails."""


class RemoteError(Exception):
    """The code raised an exception that is not a builtin one: `"Name: message"`."""


class Channel(Protocol):
    """Line-based pipes to one runner process (`code_exec.RunnerProcess`)."""

    def send_line(self, line: str, deadline: float) -> None:
        """Write `line`; raises RpcFailure when not done by `deadline` (time.monotonic)."""

    def receive_line(self, deadline: float) -> bytes:
        """The next line; raises RpcFailure at `deadline`, at EOF, or when it is too long."""

    def close(self) -> None:
        """Kill the runner's process group and close the pipes."""


def judge_asserts(
    tests: list[str], launch: Callable[[], Channel], *, per_test_s: float, deadline: float
) -> list[bool]:
    """Whether each test passed. `launch()` starts a confined runner, which then runs the code's
    top level for at most `per_test_s`; a runner that failed a test by timing out or dying is
    replaced for the next one. If the code does not load, or `deadline` comes, the remaining
    tests fail. `launch()`'s RuntimeError (a runner that cannot start) is raised the first time
    only: later, what the code left running may be the cause, so the remaining tests fail."""
    results: list[bool] = []
    session = None
    try:
        for test in tests:
            if time.monotonic() >= deadline:
                break
            if session is None or session.broken:
                first = session is None
                if session is not None:
                    session.close()
                    session = None
                try:
                    session = Session(launch())
                except RuntimeError:
                    if first:
                        raise
                    break
                if not session.load(min(time.monotonic() + per_test_s + GRACE_S, deadline)):
                    break
            results.append(_run_test(test, session, per_test_s, deadline))
    finally:
        if session is not None:
            session.close()
    return results + [False] * (len(tests) - len(results))


def same_output(got: str, want: str) -> bool:
    """Equal line by line, ignoring trailing spaces and blank lines at either end."""
    return [line.rstrip() for line in got.strip().splitlines()] == [
        line.rstrip() for line in want.strip().splitlines()
    ]


def _run_test(test: str, session: Session, per_test_s: float, deadline: float) -> bool:
    try:
        tree = ast.parse(test, "<test>")
        code = compile(tree, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    end = min(time.monotonic() + per_test_s, deadline)
    session.begin(end, min(end + GRACE_S, deadline))
    try:
        namespace = _namespace(session, tree)
        with contextlib.redirect_stdout(_Discard()):
            exec(code, namespace)
    except (Exception, SystemExit):  # a test that calls exit() fails; it does not end the worker
        return False
    return not session.spoiled and time.monotonic() <= session.deadline


def _namespace(session: Session, tree: ast.AST) -> dict:
    """Builtins, this process's imports of the modules the code imported and of those the test
    names as `module.attr`, and the code's other globals, fetched at each use."""
    namespace = _Namespace(session, __name__="__test__", __builtins__=builtins)
    namespace.update(session.modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = _trusted_module(node.value.id)
            if module is not None:
                namespace[node.value.id] = module
    return namespace


class _Namespace(dict):
    """A test's globals: a name neither the test nor the judge bound is looked up in the code's
    globals at each use, so a test sees what the code's calls changed. CPython consults
    `__missing__` of a globals dict at module level and in functions, not in class bodies."""

    def __init__(self, session: Session, **names):
        super().__init__(**names)
        self.session = session

    def __missing__(self, name: str) -> object:
        if name not in self.session.globals:
            raise KeyError(name)
        return self.session.request("get", name=name)[0]


class Session:
    """The judge's end of one runner: requests, their deadlines, and whether the current test
    is spoiled (a request failed) or the runner broken (it must be replaced)."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.globals: set[str] = set()
        self.modules: dict[str, ModuleType] = {}
        self.end = self.deadline = 0.0
        self.spoiled = self.broken = False
        self.last_id = 0

    def load(self, deadline: float) -> bool:
        """Read the runner's report on the code's top level; False if it did not load."""
        try:
            report = wire.decode(self.channel.receive_line(deadline))
        except (RpcFailure, wire.WireError):
            return False
        if type(report) is not dict or report.get("loaded") is not True:
            return False
        names, modules = report.get("globals"), report.get("modules")
        if type(names) is not list or type(modules) is not dict:
            return False
        self.globals = {n for n in names[:MAX_GLOBALS] if _bindable(n)}
        for name, module_name in list(modules.items())[:MAX_GLOBALS]:
            module = _trusted_module(module_name) if _bindable(name) else None
            if module is not None:
                self.modules[name] = module
        return True

    def begin(self, end: float, deadline: float) -> None:
        """Start a test: the runner's timers end at `end`, the waits at `deadline`."""
        self.end, self.deadline, self.spoiled = end, deadline, False

    def request(self, op: str, **fields) -> tuple[object, object]:
        """(value, final values of the arguments) of one request; raises what the code raised,
        or RpcFailure (and spoils the test) when no valid answer comes in time."""
        if self.spoiled:
            raise RpcFailure("an earlier request of this test failed")
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            self.spoiled = True
            raise RpcFailure("the test's time is up")
        self.last_id += 1
        message = {"id": self.last_id, "op": op, "timeout_s": remaining, **fields}
        try:
            line = wire.encode(message, default=self._export)
        except wire.WireError as e:
            self.spoiled = True
            raise TypeError(f"cannot pass this to the code under test: {e}") from None
        try:
            self.channel.send_line(line, self.deadline)
            reply = wire.decode(self.channel.receive_line(self.deadline), ref=self._remote)
            if type(reply) is not dict or type(reply.get("id")) is not int:
                raise RpcFailure(f"answer to request {self.last_id} is not a message")
            if reply["id"] != self.last_id:
                raise RpcFailure(f"answer to request {self.last_id} has id {reply['id']}")
        except (RpcFailure, wire.WireError) as e:
            self.spoiled = self.broken = True
            raise RpcFailure(f"{op}: {e}") from None
        if reply.get("timeout") is True:
            self.spoiled = True
            raise RpcFailure(f"{op}: the code ran past the test's time")
        if "error" in reply:
            raise _exception(reply["error"], reply.get("message"))
        if "value" not in reply:
            self.spoiled = self.broken = True
            raise RpcFailure(f"{op}: the answer has no value")
        return reply["value"], reply.get("after")

    def ask(self, op: str, target: Remote, **fields) -> object:
        return self.request(op, target=target, **fields)[0]

    def call(self, target: Remote, args: tuple, kwargs: dict) -> object:
        value, after = self.request("call", target=target, args=args, kwargs=kwargs)
        _write_back(args, kwargs, after)
        return value

    def close(self) -> None:
        self.channel.close()

    def _export(self, obj: object) -> wire.Ref:
        if type(obj) is Remote and obj._Remote__session is self:
            return wire.Ref(obj._Remote__ref)
        raise wire.WireError(
            f"a {type(obj).__name__} is neither plain data nor an object the code returned"
        )

    def _remote(self, ref_id: int) -> Remote:
        return Remote(self, ref_id)


class Remote:
    """An object of the code under test, living in the runner; see the module docstring."""

    __slots__ = ("__session", "__ref")

    def __init__(self, session: Session, ref_id: int):
        self.__session = session
        self.__ref = ref_id

    def __call__(self, *args, **kwargs):
        return self.__session.call(self, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_Remote__") or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # probes of Python's machinery are not the code's
        return self.__session.ask("getattr", self, name=name)

    def __getitem__(self, key):
        return self.__session.ask("getitem", self, key=key)

    def __len__(self):
        return self.__session.ask("len", self)

    def __iter__(self):
        iterator = self.__session.ask("iter", self)
        if type(iterator) is not Remote:
            raise TypeError("the code's __iter__ returned plain data, not an iterator")
        return iterator

    def __next__(self):
        return self.__session.ask("next", self)

    def __contains__(self, item) -> bool:
        return self.__session.ask("contains", self, item=item)

    def __str__(self) -> str:
        return self.__text("str")

    def __repr__(self) -> str:
        return self.__text("repr")

    def __eq__(self, other):
        return NotImplemented

    def __ne__(self, other):
        return NotImplemented

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError(
            "an object of the code under test has no truth value in a test: compare plain values"
        )

    def __text(self, op: str) -> str:
        text = self.__session.ask(op, self)
        if type(text) is not str:
            raise TypeError(f"the code's {op}() returned a {type(text).__name__}")
        return text


def _write_back(args: tuple, kwargs: dict, after: object) -> None:
    """Replace the contents of list, dict and set arguments with their final values."""
    for item in after if type(after) is list else ():
        if type(item) is not list or len(item) != 2:
            continue
        position, new = item
        if type(position) is int and 0 <= position < len(args):
            old = args[position]
        elif type(position) is str and position in kwargs:
            old = kwargs[position]
        else:
            continue
        if type(old) is not type(new) or type(old) not in (list, dict, set) or old == new:
            continue
        if type(old) is list:
            old[:] = new
        else:
            old.clear()
            old.update(new)


def _exception(name: object, message: object) -> Exception:
    """The builtin exception `name` with `message`, else a RemoteError."""
    message = message if type(message) is str else ""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):
            return cls(message)
    return RemoteError(f"{name!s:.100}: {message}")


def _bindable(name: object) -> bool:
    """A name the code may bind in a test's namespace: an identifier, not a keyword, not a
    dunder, not a builtin."""
    return (
        type(name) is str
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not name.startswith("__")
        and name not in vars(builtins)
    )


def _trusted_module(name: object) -> ModuleType | None:
    """This process's import of the standard-library module `name`, or None."""
    if type(name) is not str or name.split(".")[0] not in TRUSTED_MODULES:
        return None
    if not all(part.isidentifier() for part in name.split(".")):
        return None
    try:
        return importlib.import_module(name)
    except Exception:
        return None


class _Discard:
    """A stdout that keeps nothing (what the tests print is not needed)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
