"""The one-frame packing of whole messages for the req hop of bind mode."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from condure.net.zmqclient import pack_frames, unpack_frames


def test_layout_is_length_prefixed():
    assert pack_frames([b"ab", b"", b"T1:x,"]) == (
        b"\x00\x00\x00\x02ab" b"\x00\x00\x00\x00" b"\x00\x00\x00\x05T1:x,")


def test_round_trip_of_an_envelope():
    frames = [b"handler-1", b"hop-2", b"", b"T3:abc,"]
    assert unpack_frames(pack_frames(frames)) == frames


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_round_trip(frames):
    assert unpack_frames(pack_frames(frames)) == frames


@given(st.binary(max_size=64))
def test_arbitrary_input_never_raises(data):
    out = unpack_frames(data)
    assert out is None or pack_frames(out) == data


def test_malformed_input_is_none():
    assert unpack_frames(b"") is None
    assert unpack_frames(b"\x00\x00\x00") is None  # short length
    assert unpack_frames(b"\x00\x00\x00\x05abc") is None  # truncated frame
    assert unpack_frames(b"\x00\x00\x00\x01a\x00") is None  # trailing bytes
