"""The req-mode session's one-step simple request (``ReqSession._simple_request``,
through ``http_simple.simple_head``) against its general path as the oracle.

As for stream mode (test_http_simple.py): the same bytes in one read and
in two (a first byte, then the rest: a partial read always takes the
general path) must give the same actions, the same state and the same
answer to the handler's response; a pre-encoded request packet must be
what ``encode`` makes of its packet.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.actions import Send
from condure.session.req import ReqSession
from condure.zhttp.packets import Data, Ident
from tests.unit.test_http_simple import (
    compare_actions,
    read_once_and_twice,
    requests,
    sent_after_a_partial_read,
)


def session(buffer_size: int) -> ReqSession:
    counter = iter(range(1_000_000))
    return ReqSession(instance_id=b"condure", new_id=lambda: b"0-0-%d" % next(counter), now=0.0,
                      buffer_size=buffer_size, body_buffer_size=1000, scheme=b"https",
                      peer_address=b"127.0.0.1", peer_port=40000)


def state(s: ReqSession) -> tuple:
    return (s.state, s.rid, s.http11, s.is_head, s.keep_alive_asked, s.cut_short,
            s.req_deadline, bytes(s.body), s.request, bytes(s.reader.inbuf),
            s.reader.parser is None, s.wants_read, s.deadline, s.persistent, s.mid_request)


@settings(max_examples=400, deadline=None)
@given(data=requests(), buffer_size=st.sampled_from([64, 512, 8192]),
       code=st.sampled_from([200, 204, 304]), leaving=st.sampled_from([False, False, True]))
def test_one_read_acts_as_two(data: bytes, buffer_size: int, code: int, leaving: bool) -> None:
    fast, general = session(buffer_size), session(buffer_size)
    read_once_and_twice(fast, general, data)
    assert state(fast) == state(general)
    if fast.awaiting_handler:
        answer = Data(from_=b"handler", ids=(Ident(fast.rid),), code=code, reason=b"OK",
                      headers=((b"Content-Type", b"text/plain"),), body=b"hello")
        for s in (fast, general):
            if leaving:
                s.going_away(2.0)
            s.receive_packet(answer, answer.ids[0], 2.0)
        compare_actions(fast.take_actions(), general.take_actions())
        assert state(fast) == state(general)


def test_a_simple_read_takes_the_one_step_path() -> None:
    """(So that the test above compares two paths, not one with itself.)"""
    s = session(8192)
    s.receive_data(b"HEAD /x HTTP/1.0\r\nHost: example.com\r\n\r\n", 1.0)
    (send,) = s.take_actions()
    assert isinstance(send, Send) and send.wire is not None
    assert send.packet.uri == b"https://example.com/x"
    assert send.packet.ids == (Ident(send.packet.ids[0].id),)  # (no seq in req mode)
    assert s.is_head and not s.http11 and not s.keep_alive_asked
    assert sent_after_a_partial_read(session(8192)).wire is None
