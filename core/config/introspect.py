"""Reading the schema back: each field's docstring, and a config as plain data or YAML.

`field_docs` reads the string literal under each dataclass field from the source, so the
docstrings in the section modules are the one documentation of every key (`cohort config` shows
them as comments, `cohort config --reference` as docs/config.md).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import Any, Literal

import yaml

from core.config.run import Config


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@cache
def field_types(cls: type) -> dict[str, str]:
    """Each field's type of dataclass `cls` as written in its source, with a `Literal`'s values
    spelled out (`Literal[KL_ESTIMATORS]` -> `Literal['k1', 'k2', 'k3']`)."""
    hints = typing.get_type_hints(cls)
    types = {}
    for f in dataclasses.fields(cls):
        values = typing.get_args(hints[f.name])
        literal = typing.get_origin(hints[f.name]) is Literal
        types[f.name] = f"Literal[{', '.join(map(repr, values))}]" if literal else str(f.type)
    return types


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def documented_yaml(cfg: Any, indent: int = 0) -> str:
    """The resolved config as YAML with each field's docstring as a comment above it."""
    lines = []
    docs = field_docs(type(cfg))
    pad = " " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for doc_line in textwrap.wrap(docs.get(f.name, ""), 96 - indent):
            lines.append(f"{pad}# {doc_line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(documented_yaml(value, indent + 2))
        else:
            dumped = yaml.safe_dump({f.name: _plain(value)}, sort_keys=False, width=1000)
            lines.extend(pad + line for line in dumped.rstrip("\n").split("\n"))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
