"""ClientInput's one-step path for whole small frames (``_whole``) against
the general frame-by-frame path as the oracle: for the same client bytes,
credits, buffer size and message size limit, the handler gets the same
packets, the client the same bytes, and the session ends the same way."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.ws_input import ClientInput
from condure.zhttp import encode
from tests.unit.test_websocket_session import cframe, opened


class _StepByStep(ClientInput):
    """The general path alone."""

    __slots__ = ()

    def _whole(self, s):  # type: ignore[no-untyped-def]
        return False


_text = st.text(max_size=40).map(lambda t: cframe(1, t.encode()))
_any_text = st.binary(max_size=40).map(lambda b: cframe(1, b))  # often not UTF-8
_binary = st.binary(max_size=300).map(lambda b: cframe(2, b))
_sized = st.integers(0, 300).map(lambda n: cframe(2, bytes(n)))  # around every limit
_ping = st.binary(max_size=8).map(lambda b: cframe(9, b))
_fragments = st.binary(max_size=20).map(lambda b: cframe(2, b[:5], fin=False) + cframe(0, b[5:]))
_rsv = st.binary(max_size=10).map(lambda b: cframe(1, b, rsv=0x40))  # no extension: an error
_unmasked = st.binary(max_size=10).map(lambda b: cframe(2, b, masked=False))
_frame = st.one_of(_text, _text, _binary, _sized, _any_text, _ping, _fragments, _rsv, _unmasked)


def _run(frames: list[bytes], credits: int, buffer_size: int, limit: int, read_size: int,
         general: bool):
    d = opened(credits=credits, buffer_size=buffer_size, read_size=read_size)
    d.session.input.max_message_size = limit
    if general:
        d.session.input.__class__ = _StepByStep
    d.client(b"".join(frames))
    for _ in range(4):
        if d.closed:
            break
        d.credit(150)
    return ([encode(p) for p in d.packets], bytes(d.output),
            [(c.graceful, c.reason) for c in d.closes])


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frame, max_size=6), credits=st.sampled_from([1, 7, 64, 8192]),
       buffer_size=st.sampled_from([200, 8192]), limit=st.sampled_from([0, 30]),
       read_size=st.sampled_from([7, 65536]))  # (a read larger than the buffer: bytes held back)
def test_one_step_path_equals_the_general_path(frames, credits, buffer_size, limit, read_size):
    args = (frames, credits, buffer_size, limit, read_size)
    assert _run(*args, general=False) == _run(*args, general=True)


def test_one_step_path_is_taken_for_a_small_text_frame():
    d = opened(credits=8192)
    d.client(cframe(1, "héllo".encode()) + cframe(2, bytes(200)))
    packets = d.new_packets()
    assert [(p.content_type, p.body, p.more) for p in packets] == [
        (b"text", "héllo".encode(), False), (b"binary", bytes(200), False)]
    assert d.session.input.credits == 8192 - 6 - 200
    assert not d.session.input.inbuf and d.session.input.frame is None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 199, 200, 201, 300, 1000])
@pytest.mark.parametrize("opcode", [1, 2])
def test_sizes_around_every_limit_equal_the_general_path(size, opcode):
    frames = [cframe(opcode, b"a" * size), cframe(opcode, b"b" * size)]
    for credits in (max(size - 1, 1), size or 1, 8192):
        for buffer_size in (200, 8192):
            for limit in (0, 200):
                for read_size in (7, 65536):
                    args = (frames, credits, buffer_size, limit, read_size)
                    assert _run(*args, general=False) == _run(*args, general=True), args
