"""OpenEnv environments as Cohort environments (`rollout.environment.name: openenv`).

OpenEnv (the `openenv-core` package, `pip install -e ".[openenv]"`) defines an environment as
`reset(**kwargs) -> Observation`, `step(Action) -> Observation`, where the observation carries
`done` and `reward`, and serves it over HTTP/WebSocket. Two ways to reach one:

- `env: path/to/file.py:ClassName`: an `openenv.core.Environment` subclass, one instance per
  trajectory in the driver's process (`env_kwargs` go to its constructor);
- `base_url: http://host:port`: a running OpenEnv server; each trajectory opens its own session
  (OpenEnv's `GenericEnvClient`) and closes it when the trajectory ends.

The model's turn becomes the action `{action_field: text}`; the observation's `observation_field`
(default: its only field besides `done`, `reward` and `metadata`, else all of them as JSON) is
the `user` message the model reads next; `done` ends the trajectory; each step's `reward` is
added to the trajectory's `env_reward`, which reward functions receive (`env_reward`, or the
built-in `environment_reward`). `reset` gets the row's `reset_fields` as keyword arguments; its
observation is not shown (the prompt comes from the dataset row).

Guarantees: a bad entry fails when the run starts with a `ConfigError` naming the key; an action
the environment's Action class refuses, or an observation without `observation_field`, fails
that step (a `crash` of `environment`), never the run.
Not covered: MCP tools (OpenEnv's `CallToolAction`) parsed from the model's tool calls.
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import ConfigError
from environments.base import EnvironmentError_, Step

KEY = "rollout.environment.kwargs"
_BASE_FIELDS = ("done", "reward", "metadata")
_OPTIONS = {"env", "env_kwargs", "base_url", "action_field", "observation_field", "reset_fields"}


def _openenv():
    try:
        import openenv.core as core
    except ImportError:
        raise ConfigError(
            "rollout.environment.name=openenv needs OpenEnv: pip install -e '.[openenv]' "
            "(the openenv-core package)"
        ) from None
    return core


def action_class(env_cls: type) -> type | None:
    """The Action type an `Environment[ActT, ObsT, StateT]` subclass declares, if any."""
    for klass in env_cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and inspect.isclass(args[0]):
                return args[0]
    return None


def _only_text_field(action_cls: type) -> str | None:
    """The one required field of `action_cls` besides `metadata`, if there is exactly one."""
    required = [
        name
        for name, f in action_cls.model_fields.items()
        if name not in _BASE_FIELDS and f.is_required()
    ]
    return required[0] if len(required) == 1 else None


class OpenEnvEnvironment:
    """One trajectory on an OpenEnv environment: `make()` builds it (an `Environment`, or a
    connected session of a server's client), `action(text)` the action for a model turn."""

    def __init__(
        self,
        make: Callable[[], Any],
        action: Callable[[str], Any],
        observation_field: str,
        reset_fields: list[str],
        remote: bool,
    ):
        self.make, self.action = make, action
        self.observation_field, self.reset_fields = observation_field, reset_fields
        self.remote = remote
        self.env: Any = None

    def reset(self, prompt: str, row: dict) -> None:
        missing = [k for k in self.reset_fields if k not in row]
        if missing:
            raise EnvironmentError_(
                f"reset_fields {missing} are not in the row (it has {sorted(row)})"
            )
        self.env = self.make()
        self.env.reset(**{k: row[k] for k in self.reset_fields})

    def step(self, action: str) -> Step:
        out = self.env.step(self.action(action))
        if self.remote:  # a StepResult: a dict observation, reward, done
            observation, reward, done = out.observation, out.reward, out.done
        else:  # an Observation (pydantic): done and reward are its fields
            observation, reward, done = out.model_dump(), out.reward, out.done
        return Step(
            [{"role": "user", "content": self._text(observation)}],
            done=bool(done),
            reward=_reward(reward),
        )

    def _text(self, observation: dict) -> str:
        if self.observation_field:
            if self.observation_field not in observation:
                raise EnvironmentError_(
                    f"the observation has no field {self.observation_field!r} (it has "
                    f"{sorted(observation)}); set {KEY}.observation_field"
                )
            value = observation[self.observation_field]
        else:
            rest = {k: v for k, v in observation.items() if k not in _BASE_FIELDS}
            value = next(iter(rest.values())) if len(rest) == 1 else rest
        return value if isinstance(value, str) else json.dumps(value, default=str)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def _reward(value: Any) -> float | None:
    if value is None:
        return None
    reward = float(value)
    if not math.isfinite(reward):
        raise EnvironmentError_(f"the environment returned the reward {reward}")
    return reward


def openenv_factory(kwargs: dict[str, Any], timeout_s: float, load, base_dir: Path):
    """A function that makes one `OpenEnvEnvironment` per trajectory, from the entry's kwargs;
    `load(spec, key, base_dir)` imports a user class."""
    unknown = set(kwargs) - _OPTIONS
    if unknown:
        raise ConfigError(f"{KEY}: unknown keys {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    if bool(kwargs.get("env")) == bool(kwargs.get("base_url")):
        raise ConfigError(
            f"{KEY}: give exactly one of `env` (path/to/file.py:ClassName, an OpenEnv "
            "Environment run in this process) or `base_url` (a running OpenEnv server)"
        )
    for name in ("env", "base_url", "action_field", "observation_field"):
        if not isinstance(kwargs.get(name, ""), str):
            raise ConfigError(f"{KEY}.{name}={kwargs[name]!r}: must be a string")
    reset_fields = kwargs.get("reset_fields", [])
    if not (isinstance(reset_fields, list) and all(isinstance(k, str) for k in reset_fields)):
        raise ConfigError(f"{KEY}.reset_fields={reset_fields!r}: must be a list of row fields")
    if not isinstance(kwargs.get("env_kwargs", {}), dict):
        raise ConfigError(f"{KEY}.env_kwargs={kwargs['env_kwargs']!r}: must be a mapping")
    core = _openenv()
    observation_field = kwargs.get("observation_field", "")
    field = kwargs.get("action_field", "")
    if kwargs.get("base_url"):
        if kwargs.get("env_kwargs"):
            raise ConfigError(
                f"{KEY}.env_kwargs: the server builds its environments; env_kwargs go to an "
                "in-process `env` class"
            )
        if not field:
            raise ConfigError(
                f"{KEY}.action_field: name the field of the server's action that the model's "
                "text goes into (its /schema lists them)"
            )
        url = kwargs["base_url"]

        def connect():
            client = core.GenericEnvClient(base_url=url, message_timeout_s=timeout_s).sync()
            client.connect()
            return client

        return lambda: OpenEnvEnvironment(
            connect, lambda text: {field: text}, observation_field, reset_fields, remote=True
        )

    cls = load(kwargs["env"], f"{KEY}.env", base_dir)
    if not (inspect.isclass(cls) and issubclass(cls, core.Environment)):
        raise ConfigError(f"{KEY}.env={kwargs['env']!r} is not an openenv.core.Environment class")
    action_cls = action_class(cls)
    if action_cls is None or not issubclass(action_cls, core.Action):
        raise ConfigError(
            f"{KEY}.env={kwargs['env']!r}: {cls.__name__} does not declare its Action type "
            "(class MyEnv(Environment[MyAction, MyObservation, State]))"
        )
    field = field or _only_text_field(action_cls)
    if field not in action_cls.model_fields:
        raise ConfigError(
            f"{KEY}.action_field={field!r}: {action_cls.__name__} has the fields "
            f"{sorted(action_cls.model_fields)}; name the one the model's text goes into"
        )
    env_kwargs = dict(kwargs.get("env_kwargs", {}))
    try:
        cls(**env_kwargs).close()
    except TypeError as e:
        raise ConfigError(f"{KEY}.env_kwargs={env_kwargs!r}: {cls.__name__}: {e}") from None
    return lambda: OpenEnvEnvironment(
        lambda: cls(**env_kwargs),
        lambda text: action_cls(**{field: text}),
        observation_field,
        reset_fields,
        remote=False,
    )
