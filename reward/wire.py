"""Typed JSON: plain Python values as one line of ASCII JSON, decoded back to the same types.

Encodable: `None`, `bool`, `int`, `float` (nan and the infinities included), `complex`, `str`,
`bytes`, `list`, `tuple`, `dict` (any encodable hashable keys), `set` and `frozenset`, nested
at most `max_depth` levels and `max_bytes` long once encoded, and `Ref(n)`, a handle to an
object that stays on the other side. Exact types only: `type(x) is int`, never a subclass (an
`IntEnum`, a `defaultdict`, a namedtuple, a class with its own `__eq__`), whose methods would be
the sender's code; such a value goes to the caller's `default`, which returns a plain
replacement or a `Ref`, or the value is unencodable (`WireError`).

Forms: `None`, booleans, strings, finite floats and ints shorter than `_NATIVE_INT_BITS` bits are
JSON's own; a list is a JSON array; everything else is an object with one key: `{"tuple": [..]}`,
`{"set": [..]}`, `{"frozenset": [..]}`, `{"dict": [[k, v], ..]}`, `{"bytes": base64}`,
`{"complex": [re, im]}`, `{"float": "nan" | "inf" | "-inf"}`, `{"int": hex}`, `{"ref": n}`.

Guaranteed: `decode` returns only values built from the types above (and what its `ref` callback
returns for a handle), or raises `WireError`, whatever bytes it is given; no other exception and
no object with methods of the sender's. Not guaranteed: identity or sharing (a list that appears
twice decodes as two lists; a list that contains itself is too deep), NaN payloads, set order.
Standard library only: the untrusted runner imports this module on every start.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

MAX_DEPTH = 100
"""Most nesting levels of containers (a scalar at the top is depth 0)."""
MAX_BYTES = 16 * 2**20
"""Longest encoding, in bytes."""
_NATIVE_INT_BITS = 4000
"""Longer ints travel as hex: Python refuses to parse decimal ints of over 4300 digits."""
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_PLAIN = frozenset(
    {type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset}
)


class WireError(ValueError):
    """A value that cannot be encoded, or bytes that are not a valid encoding."""


@dataclass(frozen=True)
class Ref:
    """A handle to an object kept by the side that sent it, known there by `id`."""

    id: int


def is_plain(value: object) -> bool:
    """Whether `value`'s own type is one of the encodable types (its contents are not checked)."""
    return type(value) in _PLAIN


def encode(
    value: object,
    *,
    default: Callable[[object], object] | None = None,
    max_depth: int = MAX_DEPTH,
    max_bytes: int = MAX_BYTES,
) -> str:
    """`value` as one line of ASCII JSON. A part whose type is not plain is replaced by
    `default(part)` (a plain value or a `Ref`; it may raise `WireError`); without `default`,
    or when the replacement is not plain either, raises `WireError`."""
    budget = [max_bytes]
    try:
        tree = _to_tree(value, default, max_depth, budget)
        text = json.dumps(tree, separators=(",", ":"), allow_nan=False)
    except RecursionError as e:
        raise WireError("value nested too deeply to encode") from e
    except (ValueError, TypeError, OverflowError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"cannot encode: {type(e).__name__}: {e}") from e
    if len(text) > max_bytes:
        raise WireError(f"encoding is {len(text)} bytes, over the limit of {max_bytes}")
    return text


def decode(
    data: str | bytes,
    *,
    ref: Callable[[int], object] | None = None,
    max_depth: int = MAX_DEPTH,
    max_bytes: int = MAX_BYTES,
) -> object:
    """The value `data` encodes; a handle `{"ref": n}` becomes `ref(n)` (without `ref`, a
    handle is an error). Raises `WireError`, and only that, on anything else."""
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes is over the limit of {max_bytes}")
    try:
        tree = json.loads(data, parse_constant=_refuse_constant)
        return _from_tree(tree, ref, max_depth)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, binascii.Error) as e:
        # Unhashable set elements or dict keys, malformed JSON or base64, undecodable UTF-8.
        raise WireError(f"not a valid encoding: {type(e).__name__}: {e}") from e


def _refuse_constant(name: str) -> object:
    raise WireError(f"bare {name} is not part of the format (floats use {{'float': ...}})")


def _to_tree(value: object, default, depth: int, budget: list[int]) -> object:
    kind = type(value)
    if kind not in _PLAIN and kind is not Ref:
        if default is None:
            raise WireError(f"a {kind.__name__} is not a plain value")
        value = default(value)
        kind = type(value)
        if kind not in _PLAIN and kind is not Ref:
            raise WireError(f"the replacement of a non-plain value is a {kind.__name__}")
    budget[0] -= 8
    if kind in (list, tuple, set, frozenset, dict):
        if depth <= 0:
            raise WireError("value nested too deeply to encode")
        budget[0] -= 2 * len(value)
    elif kind is str:
        budget[0] -= len(value)
    elif kind is bytes:
        budget[0] -= len(value) * 4 // 3
    elif kind is int:
        budget[0] -= value.bit_length() // 3
    if budget[0] < 0:
        raise WireError("value too large to encode")
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if value.bit_length() < _NATIVE_INT_BITS else {"int": hex(value)}
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is complex:
        return {
            "complex": [
                _to_tree(value.real, None, 0, budget),
                _to_tree(value.imag, None, 0, budget),
            ]
        }
    if kind is bytes:
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if kind is Ref:
        if type(value.id) is not int or value.id < 0:
            raise WireError(f"a Ref's id must be an int >= 0, not {value.id!r:.40}")
        return {"ref": value.id}
    if kind is dict:
        return {
            "dict": [
                [_to_tree(k, default, depth - 1, budget), _to_tree(v, default, depth - 1, budget)]
                for k, v in value.items()
            ]
        }
    items = [_to_tree(x, default, depth - 1, budget) for x in value]
    return items if kind is list else {kind.__name__: items}


def _from_tree(tree: object, ref, depth: int) -> object:
    kind = type(tree)
    if tree is None or kind in (bool, int, float, str):
        return tree
    if kind is list:
        _check_depth(depth)
        return [_from_tree(x, ref, depth - 1) for x in tree]
    if kind is not dict or len(tree) != 1:
        raise WireError(f"expected a value, found {str(tree)[:60]!r}")
    ((tag, body),) = tree.items()
    if tag in ("tuple", "set", "frozenset", "dict"):
        _check_depth(depth)
    if tag in ("tuple", "set", "frozenset"):
        items = [_from_tree(x, ref, depth - 1) for x in _expect(body, list, tag)]
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict":
        pairs = _expect(body, list, tag)
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise WireError("a dict's items must be [key, value] pairs")
        return {_from_tree(k, ref, depth - 1): _from_tree(v, ref, depth - 1) for k, v in pairs}
    if tag == "bytes":
        return base64.b64decode(_expect(body, str, tag), validate=True)
    if tag == "float" and body in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[body]
    if tag == "int":
        return int(_expect(body, str, tag), 16)
    if tag == "complex":
        parts = [_from_tree(x, ref, 0) for x in _expect(body, list, tag)]
        if len(parts) != 2 or not all(type(x) is float for x in parts):
            raise WireError("a complex is [real, imag], two floats")
        return complex(*parts)
    if tag == "ref" and ref is not None:
        if type(body) is not int or body < 0:
            raise WireError(f"a handle's id must be an int >= 0, not {body!r:.40}")
        return ref(body)
    raise WireError(f"unknown or unexpected tag {tag!r:.40}")


def _check_depth(depth: int) -> None:
    if depth <= 0:
        raise WireError("value nested too deeply to decode")


def _expect(body: object, kind: type, tag: str):
    if type(body) is not kind:
        raise WireError(f"the body of {tag!r} must be a {kind.__name__}")
    return body
