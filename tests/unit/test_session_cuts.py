"""A response cut short must not look complete to its client.

A body delimited by the close of the connection (an HTTP/1.0 client, a
response without a length) cannot show a cut: a plain close after part of
it reads as its end (RFC 9112 6.3 item 8, 9.6). So every path that ends the
connection while such a body is under way asks the adapter for a reset
(``Close.reset``), and a complete one keeps its graceful close. A chunked
body cut short has no last chunk, one with a Content-Length falls short of
it: those show the cut, and close as Condure closes them (no reset).

Each test drives one HTTP session through the fake adapter of
``session_helpers``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from condure.session import failure
from condure.session.actions import Close
from condure.session.peer import MISSED_IN_MOVE
from condure.zhttp.packets import (
    Cancel,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Ping,
)
from tests.unit.session_helpers import HANDLER, Driver
from tests.unit.test_handoff_inflight import move

GET10 = b"GET /s HTTP/1.0\r\nHost: e\r\n\r\n"
GET10_KEEP = b"GET /s HTTP/1.0\r\nHost: e\r\nConnection: keep-alive\r\n\r\n"
GET11 = b"GET /s HTTP/1.1\r\nHost: e\r\n\r\n"
LENGTH = ((b"Content-Length", b"100"),)

# framing name: (request, the handler's headers, whether a cut needs a reset)
FRAMINGS = {
    "close-delimited": (GET10, (), True),
    "close-delimited, keep-alive asked": (GET10_KEEP, (), True),
    "chunked": (GET11, (), False),
    "content-length": (GET11, LENGTH, False),
    "http/1.0 content-length": (GET10, LENGTH, False),
}


def streaming(request: bytes = GET10, headers=(), **kw) -> Driver:
    """A response under way: its head and a first part written and flushed."""
    d = Driver(**kw)
    d.client(request)
    d.respond(headers=headers, body=b"part", more=True)
    d.flush()
    d.new_packets()
    d.new_output()
    assert not d.closed
    return d


def shutdown(d: Driver) -> None:
    """The drain deadline, or a fast stop: the worker's stop (Conn.abort
    performs the Close that shutdown leaves)."""
    owed = Ident(d.session.rid, d.session.out_seq)
    assert d.session.shutdown() == (HANDLER, owed)  # (the worker sends the cancel)
    d.drain()


def gap_after_move(d: Driver) -> Driver:
    """Moved without the handler's handoff; its next packet skips a seq."""
    d2 = move(d, answer=False)
    d2.new_packets()
    d2.new_output()
    d2.handler_seq[d.session.rid] += 1
    d2.handler(Data, body=b"more", more=True)
    assert d2.close.reason.startswith(MISSED_IN_MOVE)
    return d2


def unknown_type(d: Driver) -> None:
    d.session.abort_unknown("unknown type 'x'")
    d.drain()


def handover_gives_up(d: Driver) -> None:
    """A handover whose drain time ran out after the request's handoff began."""
    d.session.begin_handoff()
    d.pump()
    d.handler(HandoffProceed)
    d.session.going_away(d.now)
    d.pump()


# cut name: (driver options, the cut, the packets for the handler it sends)
Cut = Callable[[Driver], "Driver | None"]
CUTS: dict[str, tuple[dict, Cut, list[type]]] = {
    "handler cancel": ({}, lambda d: d.handler(Cancel), []),
    "handler error": ({}, lambda d: d.handler(Error, condition=b"x"), []),
    "bad seq": ({}, lambda d: d.handler(Data, seq=7, body=b"x", more=True), []),
    "unexpected packet": ({}, lambda d: d.handler(Ping), []),
    "unknown packet type": ({}, unknown_type, []),
    "from too long": ({}, lambda d: d.handler(Data, from_=b"h" * 65, body=b"x", more=True), []),
    "beyond its credits": ({}, lambda d: d.handler(Data, body=b"x" * 9000, more=True), [Cancel]),
    "silent handler (session timeout)": ({}, lambda d: d.advance(60), []),
    "stream timeout": ({"stream_timeout": 30.0}, lambda d: d.advance(30), [Cancel]),
    "client closed": ({}, lambda d: d.client(eof=True), [Cancel]),
    "drain deadline (shutdown)": ({}, shutdown, []),
    "seq gap after a move": ({}, gap_after_move, [Cancel]),
    "handover gives up": ({}, handover_gives_up, [Cancel]),
}


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_cut_resets_only_when_the_framing_cannot_show_it(framing, cut):
    request, headers, needs_reset = FRAMINGS[framing]
    options, do_cut, sent = CUTS[cut]
    d = streaming(request, headers, **options)
    d = do_cut(d) or d
    assert [type(p) for p in d.new_packets()
            if type(p) not in (KeepAlive, HandoffStart)] == sent
    close = d.close
    assert close.reset is needs_reset, close
    assert not close.graceful
    # Nothing more for the client: no last chunk, nothing that completes it.
    assert d.new_output() == b""


@pytest.mark.parametrize("request_bytes", [GET10, GET10_KEEP])
def test_a_complete_close_delimited_response_closes_gracefully(request_bytes):
    d = streaming(request_bytes)
    d.handler(Data, body=b" and the end")
    assert d.new_output() == b" and the end"
    assert d.closes == [Close(graceful=True, reason="response complete")]


def test_a_complete_response_then_a_drain_closes_gracefully():
    d = streaming(GET11)
    d.handler(Data, body=b"end")
    assert d.new_output() == b"3\r\nend\r\n0\r\n\r\n" and not d.closed
    d.session.going_away(d.now)
    d.drain()
    assert d.closes == [Close(graceful=True, reason="going away")]
    assert d.session.shutdown() is None and d.session.take_actions() == []


def test_a_refusal_of_condure_closes_gracefully():
    d = Driver()
    d.client(b"GET /s HTTP/1.0\r\nHost: a b\r\n\r\n")
    assert d.new_output().startswith(b"HTTP/1.1 400 ")
    assert d.close.graceful and not d.close.reset


def test_a_gateway_timeout_closes_gracefully():
    d = Driver()
    d.client(GET10)
    d.advance(60)
    assert d.new_output().startswith(b"HTTP/1.1 504 ")
    assert d.close.graceful and not d.close.reset


@pytest.mark.parametrize("cut", ["handler cancel", "client closed", "drain deadline (shutdown)"])
def test_a_cut_before_the_response_started_is_no_reset(cut):
    """Nothing of the response was written: the client sees no response
    at all, which no client takes for a complete one; or, when condure
    itself gives up on the request because it stops, a 503 of its own."""
    d = Driver()
    d.client(GET10)
    d.handler(KeepAlive)
    do_cut = CUTS[cut][1]
    do_cut(d)
    if cut == "drain deadline (shutdown)":
        assert d.output.startswith(b"HTTP/1.1 503 ") and d.close.graceful
    else:
        assert d.output == b""
    assert not d.close.reset


def test_a_head_refused_before_it_was_written_is_no_reset():
    """The handler's head is too large for the buffer: nothing written."""
    d = Driver(buffer_size=256)
    d.client(GET10)
    d.respond(headers=((b"X-Big", b"x" * 300),), more=True)
    assert d.output == b"" and d.close.handler_fault and not d.close.reset


def test_the_adapter_learns_of_a_cut_from_a_failed_session():
    """A session that raised (a bug) is not asked again; the adapter reads
    whether its response was cut where it cannot show (failure.cut_unmarked)."""
    for request, headers, needs_reset in FRAMINGS.values():
        d = streaming(request, headers)
        assert failure.cut_unmarked(d.session) is needs_reset
        d.handler(Cancel)
        assert failure.cut_unmarked(d.session) is False  # closed: nothing left to cut
    d = Driver()
    d.client(GET10)
    assert failure.cut_unmarked(d.session) is False  # nothing of it written yet
    assert failure.cut_unmarked(object()) is False
