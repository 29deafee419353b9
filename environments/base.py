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
assistant message as `completion`, the whole conversation as `messages`, and the sum of the
steps' `reward`s as `env_reward` (None when no step gave one).

Guarantees: `as_step` turns every allowed return value into a `Step` and names the
environment and what was wrong otherwise (an `EnvironmentError_`, counted as a `crash`).
"""

from __future__ import annotations

import math
import numbers
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
    reward: float | None = None
    """This step's reward, if the environment gives one: a trajectory's `env_reward` is the sum
    over its steps (None when no step gave one), which reward functions may read."""


class EnvironmentError_(Exception):
    """An environment returned or raised something the rollout cannot use."""


def as_step(value: Any, where: str) -> Step:
    """`value` as a `Step`; `where` names the environment in the error."""
    step = None
    if isinstance(value, Step):
        step = value
    elif isinstance(value, str):
        step = Step([{"role": "user", "content": value}])
    elif isinstance(value, dict) and set(value) <= {"messages", "done", "tool_calls", "reward"}:
        step = Step(**value)
    reward_ok = step is not None and (
        step.reward is None
        or (isinstance(step.reward, numbers.Real) and math.isfinite(step.reward))
    )
    if reward_ok and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in step.messages
    ):
        return step
    raise EnvironmentError_(
        f"{where}.step returned {value!r:.200}; return a Step, a string (a user message) or "
        "a dict with `messages` ([{role, content}]), `done`, `tool_calls` and `reward` (a "
        "finite number or None)"
    )
