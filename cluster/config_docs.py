"""The Markdown config reference (`cohort config --reference > docs/config.md`).

Generated from the config dataclasses: every key with its type, its default and its docstring
(`field_docs`), one table per section. A test checks that the committed docs/config.md equals
this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses

import yaml

from core.config import Config, field_docs, field_types

HEADER = """# Config reference

Generated from the docstrings in `core/config/` by `cohort config --reference > docs/config.md`
(do not edit by hand; `tests/unit/test_cli_commands.py` checks it is up to date). Any key can be set
in the YAML file or overridden on the command line: `cohort train CONFIG section.key=value`.
`cohort config CONFIG` prints a config resolved with these defaults.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value) -> str:
    if isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000)
        .strip()
        .removesuffix("\n...")
        .removesuffix("...")
        .strip()
    )


def config_reference() -> str:
    """Every section and key of `Config` as Markdown tables."""
    top = field_docs(Config)
    defaults = Config()
    scalars = [
        f
        for f in dataclasses.fields(Config)
        if not dataclasses.is_dataclass(getattr(defaults, f.name))
    ]
    parts = [HEADER, "\n## Top level\n\n", _table(defaults, "", scalars)]
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        if f in scalars:
            continue
        parts.append(f"\n## `{f.name}`: {top.get(f.name, '')}\n\n")
        parts.append(_table(section, f"{f.name}."))
        for g in dataclasses.fields(section):
            value = getattr(section, g.name)
            if dataclasses.is_dataclass(value):
                parts.append(f"\n### `{f.name}.{g.name}`\n\n")
                parts.append(_table(value, f"{f.name}.{g.name}."))
            elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
                parts.append(f"\n### `{f.name}.{g.name}[i]`: each entry\n\n")
                parts.append(_table(type(value[0])(), f"{f.name}.{g.name}[i]."))
    return "".join(parts)


def _table(obj, prefix: str, fields: list | None = None) -> str:
    """One row per field of dataclass instance `obj`, with its value there as the default."""
    docs, types = field_docs(type(obj)), field_types(type(obj))
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in fields or dataclasses.fields(obj):
        value = getattr(obj, f.name)
        shown = "(see below)" if dataclasses.is_dataclass(value) else _value(value)
        doc = _cell(docs.get(f.name, ""))
        lines.append(
            f"| `{prefix}{f.name}` | `{_cell(types[f.name])}` | `{_cell(shown)}` | {doc} |"
        )
    return "\n".join(lines) + "\n"
