"""Resolving `reward.functions` config entries to callables: a built-in name or `file.py:name`.

Guaranteed: a bad entry fails at load time with a `ConfigError` naming the config key
(`reward.functions[i].name` / `.fn`), what was tried (the resolved file path, the function name)
and the names available. A user file is imported once per call under a module name unique to its
resolved path, so two files with the same name do not clash. Not guaranteed: that a user
function has the right signature or returns numbers; that is found when it is called and is a
per-sample failure (see `scoring.py`). User code runs in this process, unsandboxed (issue 4).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
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


def load_reward_function(
    cfg: RewardFunctionConfig, base_dir: Path | None = None, key: str = "reward.functions[i]"
) -> Callable[..., Any]:
    """The callable `cfg` names: `cfg.name` from `BUILTIN`, or `cfg.fn` = `path.py:function`.

    A relative `path.py` is taken from `base_dir` (default: the current directory). `key` is the
    config key of this entry, used in error messages.
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
        path = (base_dir or Path.cwd()) / path
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
