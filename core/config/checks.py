"""How a config section checks itself.

Each section dataclass has a `check` method, next to its fields, that raises through `require`:
`key=value: why`, naming the dotted key, the value and the fix (users and tests grep these
messages, so they stay as they are). A rule spanning sections lives in the section whose key it
names and reads the others from the whole config; `run.validate` calls every section's check.
Checks only read: what follows from other values is filled in before, by `load.resolve`.
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError


def require(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise `ConfigError("key=value: why")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def require_file_spec(key: str, value: str, name: str) -> None:
    """`value` must look like `path/to/file.py:<name>` (a user function or class)."""
    require(
        ":" in value and value.split(":")[0].endswith(".py"),
        key,
        value,
        f"must look like path/to/file.py:{name}",
    )
