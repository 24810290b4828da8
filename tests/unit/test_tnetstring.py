"""tnetstring codec: exact encodings, strict decoding, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.zhttp.tnetstring import TnetstringError, dumps, loads, parse_at, pop

ENCODINGS = [
    (b"", b"0:,"),
    (b"hello", b"5:hello,"),
    (0, b"1:0#"),
    (-12, b"3:-12#"),
    (2**70, b"22:1180591620717411303424#"),
    (True, b"4:true!"),
    (False, b"5:false!"),
    (None, b"0:~"),
    (1.5, b"3:1.5^"),
    ([], b"0:]"),
    ({}, b"0:}"),
    ([b"a", 1, [None]], b"14:1:a,1:1#3:0:~]]"),
    ({b"multi": True}, b"15:5:multi,4:true!}"),
    ({b"b": 1, b"a": 2}, b"16:1:b,1:1#1:a,1:2#}"),  # insertion order kept
    (b"x" * 100, b"100:" + b"x" * 100 + b","),
]


@pytest.mark.parametrize(("value", "raw"), ENCODINGS)
def test_dumps_and_loads(value, raw):
    assert dumps(value) == raw
    assert loads(raw) == value


def test_dumps_accepts_text_and_tuples():
    assert dumps("é") == b"2:\xc3\xa9,"
    assert dumps(("a", b"b")) == b"8:1:a,1:b,]"
    assert dumps({"k": (1,)}) == b"11:1:k,4:1:1#]}"
    assert dumps(bytearray(b"ab")) == b"2:ab,"


@pytest.mark.parametrize("value", [object(), {1: 2}, {None: 1}, float("inf"), float("nan"),
                                   {b"k": {1.5: 1}}])
def test_dumps_rejects(value):
    with pytest.raises(TnetstringError):
        dumps(value)


def test_pop_returns_rest():
    assert pop(b"1:a,2:bc,") == (b"a", b"2:bc,")
    assert pop(b"0:~") == (None, b"")
    assert parse_at(b"T1:a,xyz", 1) == (b"a", 5)


def test_loads_accepts_signed_and_padded_numbers():
    # as Condure's reader does
    assert loads(b"2:+1#") == 1
    assert loads(b"02:ab,") == b"ab"
    assert loads(b"4:-1e3^") == -1000.0


MALFORMED = {
    "empty": b"",
    "no-colon": b"5",
    "no-length": b":a,",
    "negative-length": b"-1:a,",
    "signed-length": b"+1:a,",
    "space-in-length": b" 1:a,",
    "hex-length": b"0x1:a,",
    "length-beyond-data": b"10:abc,",
    "missing-tag": b"3:abc",
    "unknown-tag": b"3:abc$",
    "trailing-data": b"1:a,x",
    "int-not-digits": b"1:a#",
    "int-empty": b"0:#",
    "int-sign-only": b"1:-#",
    "int-space": b"2: 1#",
    "int-underscore": b"3:1_0#",
    "int-unicode-digit": b"2:\xd9\xa1#",
    "int-huge": b"5000:" + b"9" * 5000 + b"#",
    "float-empty": b"0:^",
    "float-inf": b"3:inf^",
    "float-nan": b"3:nan^",
    "float-junk": b"2:1x^",
    "float-underscore": b"3:1_0^",
    "bool-capital": b"4:True!",
    "bool-other": b"3:yes!",
    "null-with-payload": b"1:x~",
    "list-item-overflows": b"4:3:ab,]",
    "list-trailing-junk": b"5:1:a,x]",
    "map-odd-items": b"4:1:a,}",
    "map-int-key": b"8:1:1#1:a,}",
    "map-list-key": b"7:0:]1:a,}",
    "map-key-overflows": b"6:5:a,1:b,}",
    "nested-bad": b"9:6:1:a,x]]",
    "huge-length": b"9999999999999:x,",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_loads_rejects(raw):
    with pytest.raises(TnetstringError):
        loads(raw)


def test_deep_nesting_is_an_error_not_a_crash():
    raw = b"0:]"
    for _ in range(5000):
        raw = b"%d:%b]" % (len(raw), raw)
    with pytest.raises(TnetstringError):
        loads(raw)


def test_loads_requires_bytes():
    with pytest.raises(TypeError):
        loads("1:a,")  # type: ignore[arg-type]
    assert loads(memoryview(b"1:a,")) == b"a"


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.binary(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_round_trip(value):
    raw = dumps(value)
    assert loads(raw) == value
    assert pop(raw + b"rest") == (value, b"rest")


@settings(max_examples=1000)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_tnetstring_error(data):
    try:
        loads(data)
    except TnetstringError:
        pass


@settings(max_examples=500)
@given(values, st.integers(0, 1000), st.integers(0, 255))
def test_corrupted_encodings_raise_only_tnetstring_error(value, where, byte):
    raw = bytearray(dumps(value))
    raw[where % len(raw)] = byte
    for candidate in (bytes(raw), bytes(raw[: where % len(raw)])):
        try:
            loads(candidate)
        except TnetstringError:
            pass
