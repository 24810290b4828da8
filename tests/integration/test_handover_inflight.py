"""HTTP requests in flight across a reload (SIGHUP): a held long-poll and a
streamed response move to the new worker with their ZHTTP session instead
of holding the old worker for --drain-timeout (docs/handover.md). Real
condure processes and the scripted handler, which plays the handler's part
of the handoff step by step (or ignores it, as Pushpin 1.36 does)."""

from __future__ import annotations

import re
import signal
import time

from tests.harness import procs
from tests.harness.http_client import Conn
from tests.harness.ws_scenarios import recv
from tests.integration.test_handover import (
    Condure,
    assert_no_complaints,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

POLL = b"GET /poll HTTP/1.1\r\nHost: example.com\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"


def _held(condure: Condure, h, conn: Conn, path: bytes = b"/poll"):
    """A request the handler answered with a keep-alive only (a held
    long-poll); its request packet."""
    conn.send(POLL.replace(b"/poll", path))
    req = recv(h, timeout=10)
    assert req.socket == "pull" and req["uri"].endswith(path), req
    h.keep_alive(req)
    time.sleep(0.3)  # (the keep-alive reaches condure: the request is answered)
    conn.expect_silence(0.1)
    return req


def _resumed(h, req) -> None:
    """The adopting worker resumed the request: a keep-alive for its id
    (the scripted handler records keep-alives without returning them)."""
    deadline = time.monotonic() + 10
    while not any(p.type == "keep-alive" and p.id == req.id for p in h.received):
        assert time.monotonic() < deadline, h.received[-5:]
        h.recv_or_none(0.1)


def _next_request_is_the_new_workers(h, conn: Conn, req) -> None:
    conn.send(NEXT)
    while (nxt := recv(h, timeout=10)).id == req.id:
        assert nxt.type == "credit", nxt  # returned for the last parts the client took
    assert nxt["uri"].endswith(b"/next") and nxt.id != req.id, nxt
    h.reply(nxt, body=b"next answer")
    resp = conn.read_response(timeout=5)
    assert (resp.code, resp.body) == (200, b"next answer")


def test_a_long_poll_in_flight_moves_on_reload(start, tmp_path):
    """The handler answered handoff-start; the request moved at once (not
    after --drain-timeout, 5 s here), resumed with a keep-alive from the new
    worker, and the answer sent after the reload reaches the client; the
    connection's next request works."""
    condure = start("--handoff", "ask")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with Conn(condure.port) as conn:
            req = _held(condure, h, conn)
            t0 = time.monotonic()
            condure.proc.popen.send_signal(signal.SIGHUP)
            ask = recv(h, timeout=15)
            assert (ask.type, ask.id) == ("handoff-start", req.id), ask
            h.send(req, type="handoff-proceed")
            condure.wait_log(lambda: condure.handovers() == [(1, 0, 0)])
            assert time.monotonic() - t0 < 4.0  # not --drain-timeout
            _resumed(h, req)
            h.reply(req, body=b"news")  # to the same from, after the reload
            resp = conn.read_response(timeout=5)
            assert (resp.code, resp.body) == (200, b"news")
            _next_request_is_the_new_workers(h, conn, req)
        log = condure.log()
        assert "cannot move" not in log and "without their handler" not in log, log[-3000:]
    finally:
        h.close()
    assert_no_complaints(condure)


def _stream_parts(h, req, conn: Conn, first: int, count: int) -> bytes:
    """The handler sends parts ``first``..``first+count-1`` of a chunked
    response; the client reads each; their bytes."""
    got = b""
    for i in range(first, first + count):
        part = b"part %d\n" % i
        h.body(req, part, more=True)
        size = conn.read_until(b"\r\n", timeout=5)
        assert int(size.strip(), 16) == len(part), size
        chunk = conn.read_exact(len(part) + 2, timeout=5)
        got += chunk[:-2]
    return got


def test_a_streamed_response_continues_across_a_reload(start, tmp_path):
    condure = start("--handoff", "ask")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with Conn(condure.port) as conn:
            conn.send(POLL.replace(b"/poll", b"/stream"))
            req = recv(h, timeout=10)
            h.reply(req, body=b"", more=True)
            head = conn.read_until(b"\r\n\r\n", timeout=5)
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
            got = _stream_parts(h, req, conn, 0, 10)
            condure.proc.popen.send_signal(signal.SIGHUP)
            while (ask := recv(h, timeout=15)).type == "credit":
                pass  # returned for the parts the client took
            assert (ask.type, ask.id) == ("handoff-start", req.id), ask
            h.send(req, type="handoff-proceed")
            condure.wait_log(lambda: condure.handovers() == [(1, 0, 0)])
            _resumed(h, req)
            got += _stream_parts(h, req, conn, 10, 10)
            h.body(req, b"end\n")
            rest = conn.read_until(b"0\r\n\r\n", timeout=5)
            assert rest == b"4\r\nend\n\r\n0\r\n\r\n", rest
            assert got == b"".join(b"part %d\n" % i for i in range(20))
            _next_request_is_the_new_workers(h, conn, req)
    finally:
        h.close()
    assert_no_complaints(condure)


def test_a_handler_that_ignores_handoff_start_streams_through_the_move(start, tmp_path):
    """A handler that ignores handoff-start (Pushpin 1.36) and keeps
    streaming: after --handoff-timeout the request moves without the
    answer, and what the handler sent meanwhile and during the move (kept
    by the new worker, which shares the address, until the request
    arrives) reaches the client once and in order."""
    condure = start("--handoff", "ask", "--handoff-timeout", "1")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with Conn(condure.port) as conn:
            conn.send(POLL.replace(b"/poll", b"/stream"))
            req = recv(h, timeout=10)
            h.reply(req, headers=[("Content-Type", "text/plain")], body=b"", more=True)
            conn.read_until(b"\r\n\r\n", timeout=5)
            t0 = time.monotonic()
            condure.proc.popen.send_signal(signal.SIGHUP)
            sent, after, got = 0, 0, b""
            while after < 5:
                assert time.monotonic() - t0 < 20, condure.proc.pump.tail()
                got += _stream_parts(h, req, conn, sent, 5)
                sent += 5
                if condure.handovers():
                    after += 1
            assert condure.handovers() == [(1, 0, 0)]
            assert time.monotonic() - t0 >= 1.0
            h.body(req, b"")
            assert conn.read_until(b"0\r\n\r\n", timeout=5) == b"0\r\n\r\n"
            assert got == b"".join(b"part %d\n" % i for i in range(sent))
            while h.recv_or_none(0.3) is not None:  # (what condure sent meanwhile)
                pass
            assert [p.type for p in h.received if p.id == req.id].count("handoff-start") == 1
            _next_request_is_the_new_workers(h, conn, req)
        log = condure.log()
        assert "handover: 1 HTTP requests in flight moved without their handler's " \
               "handoff-proceed (it did not answer in time)" in log, log[-3000:]
        assert "cannot move" not in log
    finally:
        h.close()
    assert_no_complaints(condure)


def test_handoff_skip_moves_long_polls_at_once(start, tmp_path):
    """``--handoff skip``: no handoff-start; held long-polls move at once.
    The handler answers them one by one from the signal on, so answers
    reach the old worker before the export, or the new one before the
    request arrives there (kept until the adoption, net/parked.py), or
    after: each reaches its client once."""
    condure = start("--handoff", "skip")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    conns = [Conn(condure.port) for _ in range(8)]
    try:
        reqs = [_held(condure, h, conn, b"/poll/%d" % i) for i, conn in enumerate(conns)]
        t0 = time.monotonic()
        condure.proc.popen.send_signal(signal.SIGHUP)
        for i, req in enumerate(reqs):
            time.sleep(0.1)
            h.reply(req, body=b"news %d" % i)
        for i, conn in enumerate(conns):
            resp = conn.read_response(timeout=5)
            assert (resp.code, resp.body) == (200, b"news %d" % i)
        condure.wait_log(lambda: len(condure.handovers()) == 1)
        [(moved, closed, lost)] = condure.handovers()
        assert (moved, closed, lost) == (8, 0, 0)  # (in flight, or between requests)
        assert time.monotonic() - t0 < 4.0
        assert "handoff-start" not in [p.type for p in h.received]
        for conn, req in zip(conns, reqs, strict=True):
            _next_request_is_the_new_workers(h, conn, req)
    finally:
        for conn in conns:
            conn.close()
        h.close()
    log = condure.log()
    assert "cannot move" not in log, log[-3000:]
    in_flight = re.search(r"handover: (\d+) HTTP requests in flight moved without their "
                          r"handler's handoff-proceed \(not asked\)", log)
    assert in_flight and int(in_flight.group(1)) >= 1, log[-3000:]  # (the others had ended)
    assert_no_complaints(condure)
