"""Resolving `reward.functions` config entries to callables: a built-in name or `file.py:name`.

Guaranteed: a bad entry fails at load time with a `ConfigError` naming the config key
(`reward.functions[i].name` / `.fn`), what was tried (the resolved file path, the function name)
and the names available. A user file is read once, when the run starts (`read_sources`); every
later load, in the actor and in each sandbox worker, including replacements, executes those
bytes and never the file on disk again, so code that rewrites the file mid-run changes nothing.
Each function has a declared score range (`range`): the built-in's own, the config's, or
`USER_RANGE`. Not guaranteed: that a user function has the right signature or returns numbers;
that is found when it is called and is a per-sample failure (see `scoring.py`).
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import ConfigError, RewardFunctionConfig, reward_function_name
from reward.builtin import BUILTIN, BUILTIN_RANGES

USER_RANGE_DEFAULT = (-1e6, 1e6)
"""Score range of a user function that declares none: wide, but a return of 1e308 is refused
before a weighted sum can overflow."""


@dataclass
class RewardFunction:
    """One resolved reward function with its weight and fixed keyword arguments."""

    name: str
    """Name used in metrics and errors (`core.config.reward_function_name`)."""
    weight: float
    kwargs: dict[str, Any]
    """Passed to `fn` on every call (`reward.functions[i].kwargs`)."""
    fn: Callable[..., Any]
    batched: bool = False
    """Called once per group with lists (`reward.functions[i].batched`, or `fn.batched = True`)."""
    inputs: tuple[str, ...] = field(init=False, default=())
    """The optional inputs (`OPTIONAL_INPUTS`) that `fn`'s signature names."""
    range: tuple[float, float] = USER_RANGE_DEFAULT
    """Scores outside [low, high] are `invalid` failures."""

    def __post_init__(self):
        self.batched = self.batched or bool(getattr(self.fn, "batched", False))
        self.inputs = optional_inputs(self.fn)


OPTIONAL_INPUTS = {
    "num_tokens": "num_tokens",
    "finish_reason": "finish_reasons",
    "messages": "conversations",
    "env_reward": "env_rewards",
}
"""Keyword arguments a function receives only when its signature names them, and the name a
batched function gets them under, as lists. `messages`: a multi-turn trajectory's conversation
after the prompt (`[{role, content}]`; empty for a single turn). `env_reward`: the sum of the
environment's step rewards (None for a single turn or an environment that gives none)."""


def optional_inputs(fn: Any) -> tuple[str, ...]:
    """The `OPTIONAL_INPUTS` that `fn`'s signature names explicitly (plural for batched)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(n for n, plural in OPTIONAL_INPUTS.items() if n in params or plural in params)


def user_file(cfg: RewardFunctionConfig, base_dir: Path | None, key: str) -> Path:
    """The resolved file of a user function `cfg.fn` = `path.py:function`: a relative path is
    taken from `base_dir` (default: the current directory), or from the current directory when
    it is only there (a Ray job's working directory on a worker node)."""
    if ":" not in cfg.fn:
        raise ConfigError(f"{key}.fn={cfg.fn!r} must look like path/to/file.py:function_name")
    path = Path(cfg.fn.rpartition(":")[0]).expanduser()
    if not path.is_absolute():
        # On another node of a Ray job the driver's directory does not exist, but the job's
        # working directory (with the file) is this process's current directory.
        here = (base_dir or Path.cwd()) / path
        path = here if here.is_file() or not (Path.cwd() / path).is_file() else Path.cwd() / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{key}.fn={cfg.fn!r}: file {path} does not exist")
    return path


def read_sources(cfgs: list[RewardFunctionConfig], base_dir: Path | None = None) -> dict[str, str]:
    """`{cfg.fn: source text}` of every user function, read now and once for the whole run."""
    sources = {}
    for i, cfg in enumerate(cfgs):
        if cfg.fn:
            key = f"reward.functions[{i}]"
            path = user_file(cfg, base_dir, key)
            try:
                sources[cfg.fn] = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{key}.fn={cfg.fn!r}: {path} is not UTF-8 text: {e}") from e
    return sources


def source_hashes(sources: dict[str, str]) -> dict[str, str]:
    """SHA-256 of each user file as read, for the run directory."""
    return {fn: hashlib.sha256(text.encode()).hexdigest() for fn, text in sources.items()}


def load_reward_function(
    cfg: RewardFunctionConfig,
    base_dir: Path | None = None,
    key: str = "reward.functions[i]",
    sources: dict[str, str] | None = None,
) -> Callable[..., Any]:
    """The callable `cfg` names: `cfg.name` from `BUILTIN`, or `cfg.fn` = `path.py:function`
    executed from `sources[cfg.fn]` (read from the file when `sources` lacks it). `key` is the
    config key of this entry, used in error messages."""
    if cfg.name:
        if cfg.name not in BUILTIN:
            raise ConfigError(
                f"{key}.name={cfg.name!r} is not a built-in reward function; "
                f"available: {', '.join(sorted(BUILTIN))} (or give `fn: file.py:function`)"
            )
        return BUILTIN[cfg.name]
    fn_name = cfg.fn.rpartition(":")[2]
    if sources is not None and cfg.fn in sources:
        path, text = Path(cfg.fn.rpartition(":")[0]), sources[cfg.fn]
    else:
        path = user_file(cfg, base_dir, key)
        text = path.read_text()
    module = _import_source(text, path, key, cfg.fn)
    fn = getattr(module, fn_name, None)
    if fn is None:
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ConfigError(
            f"{key}.fn={cfg.fn!r}: {path} defines no `{fn_name}`; "
            f"its callables: {', '.join(defined) or 'none'}"
        )
    if not callable(fn):
        raise ConfigError(
            f"{key}.fn={cfg.fn!r}: `{fn_name}` in {path} is a {type(fn).__name__}, not a function"
        )
    return fn


def load_reward_functions(
    cfgs: list[RewardFunctionConfig],
    base_dir: Path | None = None,
    sources: dict[str, str] | None = None,
) -> list[RewardFunction]:
    """All `reward.functions` entries resolved, in config order (user files from `sources`)."""
    return [
        RewardFunction(
            name=reward_function_name(cfg),
            weight=cfg.weight,
            fn=load_reward_function(cfg, base_dir, f"reward.functions[{i}]", sources),
            kwargs=dict(cfg.kwargs),
            batched=cfg.batched,
            range=declared_range(cfg),
        )
        for i, cfg in enumerate(cfgs)
    ]


def declared_range(cfg: RewardFunctionConfig) -> tuple[float, float]:
    """[low, high] of `cfg`'s scores: the config's `range`, else the built-in's, else
    `USER_RANGE_DEFAULT`."""
    if cfg.range:
        return float(cfg.range[0]), float(cfg.range[1])
    if cfg.name in BUILTIN_RANGES:
        return BUILTIN_RANGES[cfg.name]
    return USER_RANGE_DEFAULT


def _import_source(text: str, path: Path, key: str, spec_text: str) -> Any:
    """Execute `text` (the file at `path`, as read at start) as a fresh module; errors in it
    name `key` and the file."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"cohort_user_reward_{path.stem}_{digest}"
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    # Registered so that pickling and dataclasses defined in the file can find the module.
    sys.modules[module_name] = module
    # Tracebacks show the lines that ran, not the file on disk (which may be unreadable here).
    linecache.cache[str(path)] = (len(text), None, text.splitlines(True), str(path))
    try:
        exec(compile(text, str(path), "exec"), module.__dict__)
    except Exception as e:
        del sys.modules[module_name]
        raise ConfigError(
            f"{key}.fn={spec_text!r}: importing {path} failed: {type(e).__name__}: {e}"
        ) from e
    return module
