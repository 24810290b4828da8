"""The one-step reader of a plain data packet (condure/zhttp/plain.py)
against the general reader, ``codec.decode``, as the oracle: for any bytes,
``decode_data`` gives what ``codec.decode`` gives, or None (then the
general reader decides, and words any refusal)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.zhttp import PacketError, codec, plain, tnetstring
from condure.zhttp.packets import Credit, Data, Ident

# Values of every tnetstring type, and the edges of each field's kind.
VALUES = st.one_of(
    st.binary(max_size=12), st.sampled_from([b"", b"OK", b"\xff", b"\xc3\xa9", b"x" * 100]),
    st.integers(-2, 3), st.sampled_from([200, 2**32 - 1, 2**32, -1, 65536]), st.booleans(),
    st.none(), st.just(1.5), st.just({}), st.just([]),
    st.lists(st.lists(st.sampled_from([b"Content-Type", b"text/plain", b"\xff", 3]),
                      min_size=1, max_size=3), max_size=3),
)
KEYS = [b"from", b"id", b"seq", b"code", b"reason", b"headers", b"content-type", b"body",
        b"credits", b"more", b"type", b"ext", b"method", b"stream", b"x-other", b"\xff"]


@st.composite
def packets(draw) -> bytes:
    top: dict = {b"from": b"handler", b"id": b"0-0-1", b"seq": 0}
    if draw(st.booleans()):
        top.update({b"code": 200, b"reason": b"OK", b"body": b"hello",
                    b"headers": [[b"Content-Type", b"text/plain"]]})
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        if draw(st.integers(0, 4)) == 0:
            top.pop(key, None)
        else:
            top[key] = draw(VALUES)
    if draw(st.integers(0, 6)) == 0:
        top[b"id"] = [{b"id": b"0-0-1", b"seq": 0}]
    payload = b"T" + tnetstring.dumps(top)
    return payload + draw(st.sampled_from([b"", b"", b"trailing"]))


def general(payload: bytes):
    try:
        return codec.decode(payload)
    except PacketError as e:
        return type(e), str(e)


@settings(max_examples=1500, deadline=None)
@given(payload=packets())
def test_decode_data_is_the_general_reader(payload: bytes) -> None:
    fast = plain.decode_data(payload)
    expected = general(payload)
    if fast is not None:
        assert fast == expected
    try:
        got = plain.decode(payload)
    except PacketError as e:
        got = type(e), str(e)
    assert got == expected


@pytest.mark.parametrize("top", [
    {b"from": b"h", b"id": b"1", b"seq": 0, b"code": 200, b"reason": b"OK",
     b"headers": [[b"A", b"b"]], b"body": b"x"},
    {b"from": b"h", b"id": b"1", b"seq": 3, b"body": b"x", b"more": True, b"credits": 5},
    {b"id": b"1", b"seq": 0, b"content-type": b"text", b"body": b"hi"},
    {b"from": b"h", b"id": b"1", b"seq": 1, b"credits": 0, b"reason": b"\xc3\xa9"},
    {b"from": b"h", b"id": b"1", b"code": 200},  # (no seq)
])
def test_plain_packets_take_the_one_step_path(top: dict) -> None:
    """(So that the test above compares two readers, not one with itself.)"""
    payload = b"T" + tnetstring.dumps(top)
    packet = plain.decode_data(payload)
    assert isinstance(packet, Data) and packet == codec.decode(payload)
    assert packet.ids == (Ident(b"1", top.get(b"seq")),)


@pytest.mark.parametrize("top", [
    {b"from": b"h", b"id": b"1", b"seq": 0, b"type": b"credit", b"credits": 5},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"code": 2**32},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"reason": b"\xff"},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"headers": [[b"\xff", b"v"]]},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"more": 1},
    {b"from": b"h", b"id": b"1", b"seq": 2**32},
    {b"from": b"h", b"id": b"1", b"seq": -1},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"credits": 2**32},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"code": -1},
    {b"from": b"h", b"id": b"1", b"seq": True},
    {b"from": b"h", b"id": b"1", b"seq": 0, b"body": None},
])
def test_anything_else_goes_to_the_general_reader(top: dict) -> None:
    assert plain.decode_data(b"T" + tnetstring.dumps(top)) is None


IDS = st.binary(max_size=24)
SEQS = st.integers(0, 2**32 - 1)


@settings(max_examples=400, deadline=None)
@given(from_=st.binary(max_size=12), rid=IDS, seq=SEQS,
       content_type=st.sampled_from([None, b"", b"text", b"binary"]), body=st.binary(max_size=40))
def test_encode_message_is_encode(from_, rid, seq, content_type, body) -> None:
    packet = Data(from_=from_, ids=(Ident(rid, seq),), content_type=content_type, body=body)
    assert plain.encode_message(from_, rid, seq, content_type, body) == codec.encode(packet)


@settings(max_examples=300, deadline=None)
@given(from_=st.binary(max_size=12), rid=IDS, seq=SEQS, credits=st.integers(0, 2**32 - 1))
def test_encode_credit_is_encode(from_, rid, seq, credits) -> None:
    packet = Credit(from_=from_, ids=(Ident(rid, seq),), credits=credits)
    assert plain.encode_credit(from_, rid, seq, credits) == codec.encode(packet)
