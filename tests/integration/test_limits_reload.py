"""--max-conns-per-ip across reloads (docs/operations.md): connections a
worker adopts from its predecessor count against the limit of their
address, so a client that holds its connections does not get ``limit``
more at each reload. None of the adopted ones is closed for it. Real
condure (one worker, SIGHUP reloads), examples/handoffhandler.py, and raw
TCP clients from their own 127.0.0.x addresses."""

from __future__ import annotations

import time

from tests.harness.http_client import Conn
from tests.integration.test_handover import (
    assert_no_complaints,
    fixture_handoff_handler,  # noqa: F401 - the fixture 'handoff_handler': pytest finds it here
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

LIMIT = 3
CLIENT, OTHER = "127.0.0.2", "127.0.0.3"


def served(conn: Conn, path: str) -> None:
    conn.send(b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % path.encode())
    resp = conn.read_response()
    assert (resp.code, resp.body) == (200, b"ok %s\n" % path.encode()), resp


def refused(port: int, source: str) -> None:
    """A new connection from ``source`` is closed at once, unanswered."""
    with Conn(port, source=source) as conn:
        try:
            conn.send(b"GET /over HTTP/1.1\r\nHost: example.com\r\n\r\n")
        except OSError:  # closed before the request went out
            return
        try:
            data = conn.read_until_close(timeout=5)
        except AssertionError as e:
            raise AssertionError(f"a connection over the limit stayed open: {e}") from None
        assert data == b"", f"a connection over the limit was answered: {data!r}"


def test_adopted_connections_keep_counting_after_reloads(start, handoff_handler):
    condure = start("--max-conns-per-ip", str(LIMIT), workers=1)
    handler = handoff_handler(condure.base)
    held = [Conn(condure.port, source=CLIENT) for _ in range(LIMIT)]
    try:
        for n, conn in enumerate(held):
            served(conn, f"/held-{n}")
        refused(condure.port, CLIENT)
        for reload in range(2):
            assert condure.reload() == [(LIMIT, 0, 0)]  # all moved, none closed
            for n, conn in enumerate(held):  # each works from the new worker
                served(conn, f"/held-{n}-after-{reload}")
            # the new worker counts them: the address is still at its limit
            refused(condure.port, CLIENT)
            with Conn(condure.port, source=OTHER) as other:  # others are served
                served(other, f"/other-{reload}")
            # one of them closes: the next new one is taken (once the
            # worker has seen the close), then the address is full again
            held.pop(0).close()
            deadline = time.monotonic() + 5
            while True:
                again = Conn(condure.port, source=CLIENT)
                try:
                    served(again, f"/again-{reload}")
                    break
                except (AssertionError, OSError):
                    again.close()  # refused: the close is not seen yet
                    assert time.monotonic() < deadline, "the freed place was not given back"
            held.append(again)
            refused(condure.port, CLIENT)
    finally:
        for conn in held:
            conn.close()
    assert_no_complaints(condure, handler)
