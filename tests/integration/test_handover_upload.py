"""A request whose body is still being read (a slow upload) moves on a
reload (SIGHUP) instead of holding the old worker until it ends or until
--drain-timeout (docs/handover.md): real condure processes, a real handler
process that grants credits and takes the body (the scripted handler, or
examples/handoffhandler.py), and a client that uploads slowly over a raw
socket, with a Content-Length or chunked. The handler gets the whole body,
in order and under consecutive seqs, and the client its answer."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import threading
import time

from tests.harness import procs
from tests.harness.http_client import Conn
from tests.harness.ws_scenarios import recv
from tests.integration.test_handover import (
    REPO,
    assert_no_complaints,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

BODY = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(3200))  # 100 KiB
PIECE = 2048
PAUSE = 0.08  # 50 pieces: the upload takes about 4 s, within --drain-timeout 5


class Uploader(threading.Thread):
    """Sends ``data`` to ``conn`` in ``PIECE`` bytes every ``PAUSE`` s."""

    def __init__(self, conn: Conn, data: bytes, pieces: list[bytes] | None = None) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.pieces = pieces or [data[i:i + PIECE] for i in range(0, len(data), PIECE)]
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for piece in self.pieces:
                self.conn.send(piece)
                time.sleep(PAUSE)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.ended_at = time.monotonic()


def _chunked_pieces(data: bytes) -> list[bytes]:
    """The chunked framing of ``data`` (chunks of 3000 bytes), cut in
    PIECE-byte writes that fall anywhere in it."""
    wire = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 3000]), data[i:i + 3000])
                    for i in range(0, len(data), 3000)) + b"0\r\n\r\n"
    return [wire[i:i + PIECE] for i in range(0, len(wire), PIECE)]


def test_an_upload_moves_on_reload_with_its_body(start, tmp_path):
    """--handoff ask: the old worker asks handoff-start in the middle of the
    body; the handler answers; the new worker resumes (a keep-alive) and
    goes on reading the body under the same id, with the next seqs; the
    move happens while the client is still sending, not after."""
    condure = start("--handoff", "ask")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        with Conn(condure.port, timeout=20) as conn:
            conn.send(b"POST /upload HTTP/1.1\r\nHost: example.com\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(BODY))
            req = recv(h, timeout=10)
            assert req.socket == "pull" and req["more"] is True, req
            h.credit(req, 16384)
            uploader = Uploader(conn, BODY)
            uploader.start()
            got = bytearray()
            seqs = [req.seq]
            asked = signalled = None
            while True:
                p = recv(h, timeout=10)
                assert p.id == req.id, p
                seqs.append(p.seq)
                if p.type == "handoff-start":
                    asked = time.monotonic()
                    h.send(req, type="handoff-proceed")
                    continue
                assert p.type == "", p  # (data)
                got += p.body
                if not p.get("more"):
                    break
                h.credit(req, len(p.body))
                if signalled is None and len(got) >= 20000:
                    signalled = time.monotonic()
                    condure.proc.popen.send_signal(signal.SIGHUP)
            condure.wait_log(lambda: condure.handovers() == [(1, 0, 0)])
            h.reply(req, body=hashlib.sha256(got).hexdigest().encode())
            resp = conn.read_response(timeout=10)
            uploader.join(10)
            assert uploader.error is None, uploader.error
        assert bytes(got) == BODY
        assert (resp.code, resp.body) == (200, hashlib.sha256(BODY).hexdigest().encode())
        assert seqs == list(range(len(seqs))), seqs  # (the keep-alive of the resume aside)
        assert asked is not None and signalled is not None
        # it moved while the client was still sending
        assert asked < uploader.ended_at - 1.0, (asked - signalled, uploader.ended_at - signalled)
        resumes = [p for p in h.received if p.type == "keep-alive" and p.id == req.id]
        assert resumes, h.received[-5:]
        log = condure.log()
        assert "cannot move" not in log and "without their handler" not in log, log[-3000:]
    finally:
        h.close()
    assert_no_complaints(condure)


def test_a_chunked_upload_moves_on_reload_unasked(start, tmp_path):
    """--handoff skip, examples/handoffhandler.py (which returns credits as
    the body comes and answers with its digest): a chunked body cut
    anywhere by the client's writes moves at once, and the handler's
    answer reaches the client."""
    condure = start("--handoff", "skip")
    err = tmp_path / "handoffhandler.stderr"
    with open(err, "wb") as out:
        handler = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "handoffhandler.py"), "--base",
             condure.base, "--verbose"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=out, env=procs.python_env(), cwd=str(REPO))
    try:
        with Conn(condure.port, timeout=20) as conn:
            conn.send(b"POST /chunked HTTP/1.1\r\nHost: example.com\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            uploader = Uploader(conn, BODY, _chunked_pieces(BODY))
            uploader.start()
            _wait_for(err, rb"IN b'[^']+' seq 3: .*body")  # the handler is taking the body
            signalled = time.monotonic()
            condure.proc.popen.send_signal(signal.SIGHUP)
            condure.wait_log(lambda: condure.handovers() == [(1, 0, 0)])
            moved = time.monotonic()
            resp = conn.read_response(timeout=15)
            uploader.join(10)
            assert uploader.error is None, uploader.error
        assert resp.code == 200 and resp.body == b"ok /chunked\n", resp
        assert resp.header("Body-Sha256") == hashlib.sha256(BODY).hexdigest().encode(), resp.headers
        assert moved < uploader.ended_at - 1.0, (moved - signalled,
                                                 uploader.ended_at - signalled)
        log = condure.log()
        assert "cannot move" not in log, log[-3000:]
        assert re.search(r"handover: 1 HTTP requests in flight moved without their handler's "
                         r"handoff-proceed \(not asked\)", log), log[-3000:]
        assert b"expected" not in err.read_bytes()  # no seq out of order
    finally:
        handler.terminate()
        handler.wait(5)
    assert_no_complaints(condure)


def _wait_for(path, pattern: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, path.read_bytes()):
        assert time.monotonic() < deadline, path.read_bytes()[-2000:]
        time.sleep(0.02)
