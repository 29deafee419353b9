"""The built-in `tools` environment: the model calls tools in its chat format; each call's result
comes back as a `tool` message, and the trajectory ends at a turn without a tool call.

Calls are read by one of vLLM's tool parsers (`rollout.environment.tool_parser`, `hermes` by
default: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), the same code that serves
tool calls from `vllm serve`, so training and serving read calls alike. Guarantees: the first
`max_tool_calls_per_turn` calls of a turn run, in order, each with its own outcome and within
`tool_timeout_s` (`environments/tools.py`), and every later one is answered as `over_limit`, so
a step is bounded; text that opens a call the parser cannot read is one `malformed` call whose
error is the reply, and the trajectory goes on, so the model can learn to write calls. Not
covered: parallel execution of several calls of one turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from environments.base import Step
from environments.tools import call_tool, schema

_REQUEST = None


def tool_parser(name: str, tokenizer) -> Any:
    """vLLM's tool parser `name` for `tokenizer`; its own log of unreadable calls is silenced
    (they are counted as `malformed` here)."""
    from vllm.tool_parsers import ToolParserManager

    logging.getLogger("vllm.tool_parsers").setLevel(logging.CRITICAL)
    return ToolParserManager.get_tool_parser(name)(tokenizer)


def _request():
    """The chat request vLLM's parsers take (they read only its tool settings)."""
    global _REQUEST
    if _REQUEST is None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        _REQUEST = ChatCompletionRequest(messages=[], model="cohort")
    return _REQUEST


class ToolEnvironment:
    """One trajectory's tools (see the module docstring)."""

    def __init__(
        self, tools: dict[str, Callable[..., Any]], parser: Any, timeout_s: float, max_calls: int
    ):
        self.tools, self.parser = tools, parser
        self.timeout_s, self.max_calls = timeout_s, max_calls

    def schemas(self) -> list[dict[str, Any]]:
        return [schema(fn) for fn in self.tools.values()]

    def step(self, action: str) -> Step:
        parsed = self.parser.extract_tool_calls(action, _request())
        opener = getattr(self.parser, "tool_call_start_token", None)
        if not parsed.tools_called:
            if opener and opener in action:  # a call the parser could not read
                reply = "error: the tool call is not valid JSON with `name` and `arguments`"
                record = {"name": "", "outcome": "malformed", "input": action, "error": reply}
                return Step([{"role": "tool", "content": reply}], tool_calls=[record])
            return Step(done=True)
        messages, records = [], []
        for i, call in enumerate(parsed.tool_calls):
            name, arguments = call.function.name, call.function.arguments
            if i < self.max_calls:
                reply, record = call_tool(self.tools, name, arguments, self.timeout_s)
            else:
                error = f"at most {self.max_calls} tool calls run per turn; this one did not run"
                reply = "error: " + error
                record = {"name": name, "outcome": "over_limit", "input": arguments, "error": error}
            messages.append({"role": "tool", "content": reply})
            records.append(record)
        return Step(messages, tool_calls=records)


def describe_tools(schemas: list[dict[str, Any]]) -> str:
    """The tools in the hermes format, for a system message when the model's chat template does
    not show tools itself."""
    listed = "\n".join(json.dumps(s) for s in schemas)
    return (
        'You can call tools. To call one, write <tool_call>{"name": <tool name>, '
        '"arguments": <arguments as JSON>}</tool_call> and stop; its result comes back in '
        "the next message. The tools:\n<tools>\n" + listed + "\n</tools>"
    )
