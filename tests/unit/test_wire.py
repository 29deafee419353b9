"""`reward.wire`: typed JSON round trips exactly, refuses what is not plain, and fails only with
WireError on bad input."""

import collections
import enum
import math

import pytest

from reward.wire import Ref, WireError, decode, encode

VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**64,
    -(2**5000),  # past the decimal-digit limit of int(): travels as hex
    1.5,
    -0.0,
    1e308,
    math.inf,
    -math.inf,
    complex(1, -2),
    complex(math.inf, 0.5),
    "",
    'naïve \n "quoted" \ud800',  # a lone surrogate survives (ASCII JSON escapes it)
    b"",
    b"\x00\xff bytes",
    [],
    [1, [2, [3]]],
    (),
    (1,),
    (1, "a", (2.5, None)),
    {},
    {"a": 1, 2: "b", (1, 2): [3], None: {}, frozenset({1}): b"x", True: 0.5},
    set(),
    {1, "a", (2, 3)},
    frozenset({1, frozenset({2})}),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trips_keep_value_and_exact_types(value):
    text = encode(value)
    assert text.isascii() and "\n" not in text
    back = decode(text)
    assert back == value and same_types(back, value)
    assert decode(text.encode()) == value  # bytes in, same value out


def test_nan_round_trips():
    assert math.isnan(decode(encode(math.nan)))
    z = decode(encode(complex(math.nan, 1)))
    assert type(z) is complex and math.isnan(z.real) and z.imag == 1


def test_bool_stays_bool_and_int_float_stay_apart():
    assert [type(x) for x in decode(encode([True, 1, 1.0, 0, False]))] == [
        bool,
        int,
        float,
        int,
        bool,
    ]


class MyInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(
    "value",
    [
        MyInt(3),
        enum.IntEnum("E", "A").A,
        collections.OrderedDict(a=1),
        collections.defaultdict(int),
        collections.Counter("ab"),
        collections.namedtuple("P", "x y")(1, 2),
        [1, MyInt(2)],
        {"k": object()},
        bytearray(b"x"),
        print,
    ],
    ids=lambda v: type(v).__name__,
)
def test_subclasses_and_other_types_are_refused(value):
    with pytest.raises(WireError):
        encode(value)


def test_default_replaces_what_is_not_plain():
    refs = []

    def default(obj):
        refs.append(obj)
        return Ref(len(refs) - 1)

    marker = object()
    text = encode({"x": [marker, 1]}, default=default)
    assert refs == [marker]
    assert decode(text, ref=lambda n: ("handle", n)) == {"x": [("handle", 0), 1]}
    with pytest.raises(WireError, match="handle|tag"):
        decode(text)  # a handle without a ref callback
    with pytest.raises(WireError, match="replacement"):
        encode(marker, default=lambda obj: obj)  # a replacement must be plain itself


def test_depth_limit():
    deep = []
    for _ in range(10):
        deep = [deep]
    assert decode(encode(deep, max_depth=11), max_depth=11) == deep
    with pytest.raises(WireError, match="deep"):
        encode(deep, max_depth=10)
    with pytest.raises(WireError, match="deep"):
        decode(encode(deep), max_depth=10)
    looped = []
    looped.append(looped)
    with pytest.raises(WireError, match="deep"):
        encode(looped)


def test_size_limit():
    assert decode(encode("x" * 100, max_bytes=200)) == "x" * 100
    with pytest.raises(WireError, match="large|limit"):
        encode("x" * 1000, max_bytes=200)
    with pytest.raises(WireError, match="large|limit"):
        encode(list(range(10**6)), max_bytes=1000)  # refused before the list is walked
    with pytest.raises(WireError, match="limit"):
        decode(encode("x" * 1000), max_bytes=200)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"NaN",
        b"Infinity",
        b"[1, -Infinity]",
        b'{"a": 1, "b": 2}',
        b'{"nope": 1}',
        b'{"tuple": 1}',
        b'{"set": [[1]]}',  # unhashable element
        b'{"dict": [[[1], 2]]}',  # unhashable key
        b'{"dict": [[1]]}',
        b'{"bytes": "***"}',
        b'{"float": "1.5"}',
        b'{"float": [1]}',
        b'{"complex": [1, 2]}',  # parts must be floats
        b'{"int": "zz"}',
        b'{"ref": 1}',
        b"[" * 100000 + b"]" * 100000,
        b"1" * 5000,  # too many decimal digits for int()
    ],
)
def test_garbage_raises_only_wire_error(garbage):
    with pytest.raises(WireError):
        decode(garbage)


def test_bad_handles_are_refused():
    with pytest.raises(WireError):
        decode('{"ref": -1}', ref=lambda n: n)
    with pytest.raises(WireError):
        decode('{"ref": "1"}', ref=lambda n: n)
    with pytest.raises(WireError):
        encode(Ref(-1))


def same_types(a, b) -> bool:
    """Whether `a` and `b` have the same type all the way down."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return all(same_types(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return all(same_types(k, k2) and same_types(a[k], b[k2]) for k, k2 in zip(a, b))
    return True
