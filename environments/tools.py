"""Tools a model can call: the built-in `calculator`, user functions, and one call's outcome.

A tool is a Python function with type hints and a Google-style docstring; its JSON schema (what
the chat template shows the model) is made by transformers' `get_json_schema`. A call runs with
`rollout.environment.tool_timeout_s`; its result, or the failure, goes back to the model as the
tool's reply, and the outcome is recorded.

`python` sends the program to the executor the driver set (`set_python_runner`): a Ray actor
that runs it in a confined runner process as `code_tests` runs generated code
(`reward/python_tool.py`), never in the driver. Guarantees: `call_tool` never raises for
anything the model wrote. Every outcome is `ok` or one
of `FAILURE_KINDS`: `unknown` (no tool of that name), `malformed` (arguments that are not a JSON
object or do not fit the signature), `timeout`, `crash` (the tool raised), `over_limit` (a
call past `max_tool_calls_per_turn`, not run; `tool_env.py`). `calculator`
evaluates arithmetic only (numbers, + - * / // % **, parentheses) by walking Python's parse
tree, with bounded exponents and result sizes, so no expression runs code or takes long.
Not guaranteed: a user tool that ignores its timeout keeps its thread busy (the call is still
reported as a `timeout` and the trajectory goes on); user tools run in the driver process like
environments (trusted code that the model's arguments reach), not in the reward sandbox.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

FAILURE_KINDS = ("unknown", "malformed", "timeout", "crash", "over_limit")

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
MAX_EXPONENT = 64
MAX_DIGITS = 100


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "(12 + 7) * 31".
    """
    if len(expression) > 500:
        raise ValueError("expression longer than 500 characters")
    value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is above {MAX_EXPONENT}")
        value = _OPERATORS[type(node.op)](left, right)
        if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3.33:
            raise ValueError(f"result has more than {MAX_DIGITS} digits")
        return value
    raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")


_python_runner: Callable[[str], str] | None = None


def set_python_runner(runner: Callable[[str], str] | None) -> None:
    """Where `python` sends programs (the driver starts a sandboxed executor and sets it)."""
    global _python_runner
    _python_runner = runner


def python(code: str) -> str:
    """Run a Python program and return what it prints (print the values you need).

    Args:
        code: A complete Python program, e.g. "print(sum(range(10)))".
    """
    if _python_runner is None:
        raise RuntimeError("the python tool has no executor in this process")
    return _python_runner(code)


BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {"calculator": calculator, "python": python}


def schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI-style tool schema of `fn` (from its type hints and docstring)."""
    from transformers.utils import get_json_schema

    return get_json_schema(fn)


_pool = ThreadPoolExecutor(8, thread_name_prefix="cohort-tool")


def call_tool(
    tools: dict[str, Callable[..., Any]], name: str, arguments: Any, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """Run tool `name` with `arguments` (a JSON string or a dict); returns what the model reads
    as the tool's reply and the call's record `{"name", "outcome", "input", "error"}`."""
    record = {"name": name, "outcome": "ok", "input": arguments, "error": ""}

    def failed(kind: str, error: str) -> tuple[str, dict[str, Any]]:
        record.update(outcome=kind, error=error)
        return f"error: {error}", record

    if name not in tools:
        return failed("unknown", f"no tool named {name!r}; tools: {sorted(tools)}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return failed("malformed", f"arguments are not JSON ({e})")
    if not isinstance(arguments, dict):
        return failed("malformed", f"arguments must be a JSON object, got {arguments!r:.100}")
    try:
        inspect.signature(tools[name]).bind(**arguments)
    except TypeError as e:
        return failed("malformed", f"{name}: {e}")
    future = _pool.submit(tools[name], **arguments)
    try:
        result = future.result(timeout=timeout_s)
    except FutureTimeout:
        return failed("timeout", f"{name} took longer than {timeout_s:g} s")
    except Exception as e:  # the tool's own error is its reply to the model
        return failed("crash", f"{type(e).__name__}: {e}")
    return result if isinstance(result, str) else json.dumps(result), record
