"""A WebSocket whose close is under way when a reload's handover reaches
it: it cannot move, so it stays in the old worker and ends there once both
close frames were exchanged (RFC 6455 7.1.1), and the handover does not
wait for it past that (docs/handover.md, "What cannot move"). Real
condure (one worker, reloaded with SIGHUP, a 20 s --handoff-timeout so that
a handover that waited for it would be plain to see), the scripted ZeroMQ
handler in its own process and a raw WebSocket client."""

from __future__ import annotations

import signal
import time

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.ws_scenarios import accept, close, recv
from tests.integration.test_handover import (
    Condure,
    assert_no_complaints,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
    has,
)

HANDOFF_TIMEOUT = 20.0


def reload_began(condure: Condure) -> tuple[float, int]:
    """SIGHUP; (when, the notification index of its RELOADING=1)."""
    seen = len(condure.notify.messages)
    t0 = time.monotonic()
    condure.proc.popen.send_signal(signal.SIGHUP)
    at = condure.notify.wait(lambda m: m.startswith("RELOADING=1"), after=seen)
    return t0, at


def reload_ended(condure: Condure, t0: float, at: int) -> float:
    """Wait for READY=1 and the old worker's handover line; seconds from
    the SIGHUP to that line."""
    condure.wait_log(lambda: condure.handovers(), timeout=HANDOFF_TIMEOUT + 10)
    took = time.monotonic() - t0
    condure.notify.wait(has("READY=1"), after=at + 1, timeout=30)
    return took


def next_packet(h):
    """The handler's next packet from condure (keep-alives skipped), or None."""
    while (pkt := h.recv_or_none(1.0)) is not None and pkt.type == "keep-alive":
        pass
    return pkt


def ended_in_place(condure: Condure, h, req, t0: float, at: int, line: str) -> None:
    """The session's close finished where it was, well within the handoff
    timeout: nothing moved, nothing closed by the handover, no ``cancel``
    to the handler; ``line`` is in the log."""
    took = reload_ended(condure, t0, at)
    assert took < HANDOFF_TIMEOUT / 2, took
    assert condure.handovers() == [(0, 0, 0)]  # nothing moved, nothing closed by it
    log = condure.log()
    assert line in log and "cannot move" not in log, log[-3000:]
    pkt = next_packet(h)
    assert pkt is None or pkt.id != req.id or pkt.type != "cancel", pkt


def test_handler_close_crossing_handoff_start_ends_at_once(start, tmp_path):
    """The handler answers ``handoff-start`` with a close (4001) and then
    ``handoff-proceed``, the order a close already on its way gives. The
    client answers the close at once; condure reads that answer (it used to
    read nothing while the handoff lasted), passes it to the handler, and
    ends the TCP connection; the handover is over without waiting for the
    handoff timeout (it used to close the session after it, logged as
    ``cannot move (not at a resumable point in time)``)."""
    condure = start("--handoff", "ask", "--handoff-timeout", str(int(HANDOFF_TIMEOUT)))
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with wc.WsConn.open(condure.port, "/ws") as ws:
            req, _ = accept(h, ws)
            t0, at = reload_began(condure)
            start_pkt = recv(h, timeout=15)
            assert (start_pkt.type, start_pkt.id) == ("handoff-start", req.id), start_pkt
            close(h, req, code=4001)
            h.send(req, type="handoff-proceed")
            assert ws.read_close(timeout=10) == (4001, b"")
            ws.send_close(4001)
            # the TCP connection ends after the exchange, long before the
            # handoff timeout
            assert ws.expect_closed(timeout=HANDOFF_TIMEOUT / 2) == "eof"
            relayed = recv(h, timeout=5)
            assert (relayed.type, relayed.id, relayed.get("code")) == ("close", req.id, 4001)
            assert relayed.seq == start_pkt.seq + 1, (start_pkt, relayed)
        ended_in_place(condure, h, req, t0, at,
                       "closing: closed by both sides")  # (a debug line)
    finally:
        h.close()
    assert_no_complaints(condure)


def test_client_close_before_the_handover_gets_the_handlers_answer(start, tmp_path):
    """The client's close was read and passed to the handler just before
    the reload: the session cannot move. The client gets the handler's own
    answer to its close, not condure's 1012, and the handler no ``cancel``
    (before, the handover closed it at once with 1012 and ``cancel``)."""
    condure = start("--handoff", "ask", "--handoff-timeout", str(int(HANDOFF_TIMEOUT)))
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with wc.WsConn.open(condure.port, "/ws") as ws:
            req, _ = accept(h, ws)
            ws.send_close(1000, b"bye")
            got = recv(h, timeout=5)
            assert (got.type, got.get("code"), got.body) == ("close", 1000, b"bye"), got
            t0, at = reload_began(condure)
            waiting = "closing, not moved (waiting for the handler's close frame)"
            condure.wait_log(lambda: waiting in condure.log() or bool(ws.buf)
                             or bool(condure.handovers()), timeout=10)
            close(h, req, code=1000, reason="bye")
            assert ws.read_close(timeout=10) == (1000, b"bye")
            assert ws.expect_closed(timeout=10) == "eof"
        ended_in_place(condure, h, req, t0, at, waiting)
    finally:
        h.close()
    assert_no_complaints(condure)


def test_a_close_the_client_never_answers_is_ended_at_the_handoff_timeout(start, tmp_path):
    """The handler closes while the handover asks; the client never answers
    the close. The handover waits for that answer for the handoff timeout
    (here 1 s), then ends the session, logging why."""
    condure = start("--handoff", "ask", "--handoff-timeout", "1")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with wc.WsConn.open(condure.port, "/ws") as ws:
            req, _ = accept(h, ws)
            t0, at = reload_began(condure)
            start_pkt = recv(h, timeout=15)
            assert start_pkt.type == "handoff-start", start_pkt
            close(h, req, code=4001)
            h.send(req, type="handoff-proceed")
            assert ws.read_close(timeout=10) == (4001, b"")
            assert ws.expect_closed(timeout=10) == "eof"  # no answer from us
            reload_ended(condure, t0, at)
        assert condure.handovers() == [(0, 1, 0)]
        log = condure.log()
        assert "cannot move (closing: the client's close frame did not come in time); " \
               "closing it" in log, log[-3000:]
    finally:
        h.close()
    assert_no_complaints(condure)
