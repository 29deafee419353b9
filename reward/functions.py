"""Resolving `reward.functions` config entries to callables: a built-in name or `file.py:name`.

Guaranteed: a bad entry fails at load time with a `ConfigError` naming the config key
(`reward.functions[i].name` / `.fn`), what was tried (the resolved file path, the function name)
and the names available. A user file is imported once per call under a module name unique to its
resolved path, so two files with the same name do not clash. Not guaranteed: that a user
function has the right signature or returns numbers; that is found when it is called and is a
per-sample failure (see `scoring.py`). Loading imports user code in this process; calls run in
the sandbox's workers (`sandbox.py`), which load the functions again themselves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cluster.config import ConfigError, RewardFunctionConfig, reward_function_name
from reward.builtin import BUILTIN


class RewardFn(Protocol):
    """What a reward function is: a completion and its prompt's data in, a number out."""

    def __call__(
        self, completion: str, *, prompt: str, answer: str, row: dict, **kwargs
    ) -> float: ...


@dataclass
class RewardFunction:
    """One resolved reward function with its weight and fixed keyword arguments."""

    name: str
    """Name used in metrics and errors (`cluster.config.reward_function_name`)."""
    weight: float
    kwargs: dict[str, Any]
    """Passed to `fn` on every call (`reward.functions[i].kwargs`)."""
    fn: Callable[..., Any]
    batched: bool = False
    """Called once per group with lists (`reward.functions[i].batched`, or `fn.batched = True`)."""
    inputs: tuple[str, ...] = field(init=False, default=())
    """The optional inputs (`OPTIONAL_INPUTS`) that `fn`'s signature names."""

    def __post_init__(self):
        self.batched = self.batched or bool(getattr(self.fn, "batched", False))
        self.inputs = optional_inputs(self.fn)


OPTIONAL_INPUTS = ("num_tokens", "finish_reason")
"""Keyword arguments a function receives only when its signature names them (a batched function:
`num_tokens` / `finish_reasons`, as lists)."""


def optional_inputs(fn: Any) -> tuple[str, ...]:
    """The `OPTIONAL_INPUTS` that `fn`'s signature names explicitly (plural for batched)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(n for n in OPTIONAL_INPUTS if n in params or n + "s" in params)


def load_reward_function(
    cfg: RewardFunctionConfig, base_dir: Path | None = None, key: str = "reward.functions[i]"
) -> Callable[..., Any]:
    """The callable `cfg` names: `cfg.name` from `BUILTIN`, or `cfg.fn` = `path.py:function`.

    A relative `path.py` is taken from `base_dir` (default: the current directory), or from the
    current directory when it is only there (a Ray job's working directory on a worker node).
    `key` is the config key of this entry, used in error messages.
    """
    if cfg.name:
        if cfg.name not in BUILTIN:
            raise ConfigError(
                f"{key}.name={cfg.name!r} is not a built-in reward function; "
                f"available: {', '.join(sorted(BUILTIN))} (or give `fn: file.py:function`)"
            )
        return BUILTIN[cfg.name]
    if ":" not in cfg.fn:
        raise ConfigError(f"{key}.fn={cfg.fn!r} must look like path/to/file.py:function_name")
    file_text, _, fn_name = cfg.fn.rpartition(":")
    path = Path(file_text).expanduser()
    if not path.is_absolute():
        # On another node of a Ray job the driver's directory does not exist, but the job's
        # working directory (with the file) is this process's current directory.
        here = (base_dir or Path.cwd()) / path
        path = here if here.is_file() or not (Path.cwd() / path).is_file() else Path.cwd() / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{key}.fn={cfg.fn!r}: file {path} does not exist")
    module = _import_file(path, key, cfg.fn)
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
    cfgs: list[RewardFunctionConfig], base_dir: Path | None = None
) -> list[RewardFunction]:
    """All `reward.functions` entries resolved, in config order."""
    return [
        RewardFunction(
            name=reward_function_name(cfg),
            weight=cfg.weight,
            fn=load_reward_function(cfg, base_dir, key=f"reward.functions[{i}]"),
            kwargs=dict(cfg.kwargs),
            batched=cfg.batched,
        )
        for i, cfg in enumerate(cfgs)
    ]


def _import_file(path: Path, key: str, spec_text: str) -> Any:
    """Import the Python file at `path` as a fresh module; errors in it name `key` and the file."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"cohort_user_reward_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}.fn={spec_text!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered so that pickling and dataclasses defined in the file can find the module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ConfigError(
            f"{key}.fn={spec_text!r}: importing {path} failed: {type(e).__name__}: {e}"
        ) from e
    return module
