"""`rollout.environment` resolved: a factory of one environment per trajectory, and the tool
schemas the prompts show.

Guarantees: a bad entry fails when the run starts, with a `ConfigError` naming the key
(`rollout.environment.fn`, `.tools[i]`), the resolved path and what is available; a user file
is read once then (an OpenEnv entry: `environments/openenv_env.py`). Every environment the
factory makes answers `reset(prompt, row)`, `step(action) -> Step` (`environments/base.py`)
and `close()`, whatever its class returns or leaves out.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import ConfigError, EnvironmentConfig
from environments.base import Step, as_step
from environments.openenv_env import openenv_factory
from environments.tool_env import ToolEnvironment, tool_parser
from environments.tools import BUILTIN_TOOLS, schema


def _load(spec: str, key: str, base_dir: Path) -> Any:
    """The object `name` of `path.py:name`, the file resolved against `base_dir`."""
    file, _, name = spec.rpartition(":")
    path = (base_dir / file).resolve()
    if not path.is_file():
        raise ConfigError(f"{key}={spec!r}: no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"cohort_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(
            f"{key}={spec!r}: importing {path} failed: {type(e).__name__}: {e}"
        ) from None
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ConfigError(f"{key}={spec!r}: {path} has no {name!r}; it defines {public}")
    return getattr(module, name)


def load_tools(cfg: EnvironmentConfig, base_dir: Path) -> dict[str, Callable[..., Any]]:
    """Tool name -> function for `cfg.tools`."""
    tools: dict[str, Callable[..., Any]] = {}
    for i, entry in enumerate(cfg.tools):
        key = f"rollout.environment.tools[{i}]"
        if ":" in entry:
            fn = _load(entry, key, base_dir)
        elif entry in BUILTIN_TOOLS:
            fn = BUILTIN_TOOLS[entry]
        else:
            raise ConfigError(
                f"{key}={entry!r}: not a built-in tool ({sorted(BUILTIN_TOOLS)}) nor "
                "path/to/file.py:function"
            )
        try:
            schema(fn)
        except Exception as e:  # transformers' DocstringParsingException, TypeHintParsingException
            raise ConfigError(
                f"{key}={entry!r}: cannot describe it to the model ({e}); give every argument "
                "a type hint and the function a docstring with an Args: section"
            ) from None
        tools[fn.__name__] = fn
    return tools


class _Checked:
    """A user environment with the interface `rollout/turns.py` relies on."""

    def __init__(self, env: Any, name: str):
        self.env, self.name = env, name

    def reset(self, prompt: str, row: dict) -> None:
        if hasattr(self.env, "reset"):
            self.env.reset(prompt, row)

    def step(self, action: str) -> Step:
        return as_step(self.env.step(action), self.name)

    def close(self) -> None:
        if hasattr(self.env, "close"):
            self.env.close()


def environment_factory(cfg: EnvironmentConfig, tokenizer, base_dir: Path) -> Callable[[], Any]:
    """A function that makes one environment for a new trajectory."""
    if cfg.name == "tools":
        tools = load_tools(cfg, base_dir)
        try:
            parser = tool_parser(cfg.tool_parser, tokenizer)
        except KeyError as e:
            raise ConfigError(f"rollout.environment.tool_parser={cfg.tool_parser!r}: {e}") from None
        limits = (cfg.tool_timeout_s, cfg.max_tool_calls_per_turn)
        return lambda: _Checked(ToolEnvironment(tools, parser, *limits), "tools")
    if cfg.name == "openenv":
        make = openenv_factory(cfg.kwargs, cfg.tool_timeout_s, _load, base_dir)
        return lambda: _Checked(make(), "openenv")
    cls = _load(cfg.fn, "rollout.environment.fn", base_dir)
    if not inspect.isclass(cls) or not callable(getattr(cls, "step", None)):
        raise ConfigError(
            f"rollout.environment.fn={cfg.fn!r} is not a class with a `step(action)` method"
        )
    try:
        cls(**cfg.kwargs)
    except TypeError as e:
        raise ConfigError(
            f"rollout.environment.kwargs={cfg.kwargs!r}: {cls.__name__}: {e}"
        ) from None
    return lambda: _Checked(cls(**cfg.kwargs), cls.__name__)


def tool_schemas(cfg: EnvironmentConfig, base_dir: Path) -> list[dict[str, Any]]:
    """The JSON schemas the chat template shows the model (empty without tools)."""
    if cfg.name != "tools":
        return []
    return [schema(fn) for fn in load_tools(cfg, base_dir).values()]
