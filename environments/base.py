"""The environment interface: what answers the model between the turns of a trajectory.

An environment is a class; one instance serves one trajectory, built with
`rollout.environment.kwargs`. The shape is the one OpenEnv, SkyRL-gym and verifiers share:

    class MyEnvironment:
        def reset(self, prompt: str, row: dict) -> None:     # optional
            ...                       # the row the trajectory answers: its prompt text and
                                      # fields, `answer` included

        def step(self, action: str) -> Step | str | dict:
            ...                       # the model's turn (its text) -> the environment's reply

`step` returns a `Step`, or a string (one `user` message, not done), or a dict with the keys
of `Step`. The trajectory ends when a step is `done`, at `max_turns` or at
`max_total_tokens`. Rewards come from `reward.functions` as for single turns: they see the last
assistant message as `completion` and the whole conversation as `messages`.

Guarantees: `as_step` turns every allowed return value into a `Step` and names the
environment and what was wrong otherwise (an `EnvironmentError_`, counted as a `crash`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """The environment's reply to one model turn."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    """Messages added to the conversation, `{"role": "user" | "tool", "content": str}`."""
    done: bool = False
    """The trajectory ends here (its reply, if any, is not shown to the model)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Tool calls this step ran: `{"name", "outcome", "input", "error"}` (the `tools`
    environment fills them; counted in `tools/` metrics)."""


class EnvironmentError_(Exception):
    """An environment returned or raised something the rollout cannot use."""


def as_step(value: Any, where: str) -> Step:
    """`value` as a `Step`; `where` names the environment in the error."""
    if isinstance(value, Step):
        return value
    if isinstance(value, str):
        return Step([{"role": "user", "content": value}])
    if isinstance(value, dict) and set(value) <= {"messages", "done", "tool_calls"}:
        step = Step(**value)
        if all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in step.messages):
            return step
    raise EnvironmentError_(
        f"{where}.step returned {value!r:.200}; return a Step, a string (a user message) or "
        "a dict with `messages` ([{role, content}]), `done` and `tool_calls`"
    )
