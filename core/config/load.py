"""Loading a config: YAML -> dict -> `key.sub=value` overrides -> typed dataclasses -> resolve ->
validate.

Guarantees: unknown keys (with a "did you mean" hint), wrong types and values outside a fixed set
raise a `ConfigError` naming the dotted key and the value; a section given in part keeps the
defaults of the section it overrides (`data.eval: {size: 8}` keeps eval's seed 1). `resolve` is
the one step that fills values in: what the YAML leaves to be derived from other values. Not
covered: `trainer.steps` from `data.epochs`, which needs the dataset's size; the driver sets it
once the prompts are loaded, before it saves the run's config.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from core.choices import NOT_BUILT
from core.config.run import Config, validate
from core.errors import ConfigError
from core.hardware import cpu_has_native_bf16


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment, apply `key.sub=value` overrides, build, resolve and validate a
    Config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(Config, raw, prefix="")
    resolve(cfg, raw)
    validate(cfg)
    return cfg


def resolve(cfg: Config, raw: dict[str, Any]) -> None:
    """Fill in the values that follow from others, given `raw`, what the user wrote:
    `trainer.output_dir` empty -> `runs/<experiment>`; a data source that names a `path` and
    no `generator` reads that path (`generator` defaults to `arithmetic` only without one);
    `model.rollout_dtype: auto` -> bfloat16 on GPUs and CPUs with native bfloat16, else
    float32."""
    if cfg.model.rollout_dtype == "auto":
        native = cfg.cluster.use_gpu or cpu_has_native_bf16()
        cfg.model.rollout_dtype = "bfloat16" if native else "float32"
    if not cfg.trainer.output_dir:
        cfg.trainer.output_dir = f"runs/{cfg.experiment}"
    for name in ("train", "eval"):
        given = raw.get("data", {}).get(name, {})
        if given.get("path") and "generator" not in given:
            getattr(cfg.data, name).generator = ""


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`4`, `true`, `[1, 2]`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e


def from_dict(cls: type, raw: Any, prefix: str, base: Any = None) -> Any:
    """Build dataclass `cls` from `raw`, checking keys and types; errors name the dotted key.
    Keys missing from `raw` keep their value in `base` (default `cls()`), so a nested section
    starts from its parent's default for it (`Config().data.eval`, not `DataSourceConfig()`)."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(
                f"unknown config key {prefix}{key}{hint}; "
                f"known keys in {where}: {', '.join(fields)}"
            )
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(hints[name], raw[name], prefix + name, getattr(base, name))
        for name in fields
        if name in raw
    }
    return dataclasses.replace(base, **values)


def _convert(tp: Any, value: Any, key: str, default: Any = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".", default)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            # YAML 1.1 reads off/no/false (on/yes/true) as booleans: take the option's word.
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((w for w in words if w in args), value)
        if value not in args:
            why = NOT_BUILT.get((key, value))
            raise ConfigError(
                f"{key}={value!r} is not one of {', '.join(map(repr, args))}"
                + (f": {why}" if why else "")
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {tp.__name__}")
    return value
