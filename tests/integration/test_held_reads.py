"""Reads held back by backpressure do not count against a client: a real
condure, the scripted handler in its own process, a raw HTTP upload and a
raw WebSocket client.

An upload is under way (the handler granted credits, so condure wants its
body and ``--body-min-rate``'s clock runs). The handler is then stopped
(SIGSTOP) and a WebSocket client floods condure with messages: packets for
the handler pile up past the backpressure mark and the worker stops reading
from every client (docs/handover.md, "Bounded backlog"). For longer than a
10 s body window the upload gets nothing from condure: the worker holds
its reads, and the clock stands still (condure/session/limits.py). Before,
the clock ran on and the upload was cut with 408 at the end of the window.
"""

from __future__ import annotations

import os
import signal

from tests.harness import ws_client as wc
from tests.harness.flows import running
from tests.harness.ws_scenarios import accept
from tests.integration.test_backpressure import settled_unread

UPLOAD = b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100000\r\n\r\n"
FLOOD = 20000  # 96-byte messages: far more than the kernel and ZeroMQ buffer


def test_an_upload_is_not_cut_while_the_worker_holds_reads(tmp_path):
    extra = ["--stream-maxconn", "100", "--body-min-rate", "1024", "--head-timeout", "10"]
    with running(tmp_path, extra) as server:
        server.begin()
        h = server.handler
        upload = server.conn()
        upload.send(UPLOAD + b"x" * 100)
        req = h.recv(5.0)
        assert req["uri"] == b"http://example.com/up"
        h.credit(req, 50000)  # condure wants the body now: its clock runs
        ws = wc.WsConn.open(server.port)
        while True:  # the upload's first body bytes come too (more to follow)
            pkt = h.recv(5.0)
            if pkt.socket == "pull":
                break
            assert pkt.id == req.id and pkt.get("more"), pkt
        accept(h, ws, req=pkt, credits=10_000_000)
        pid = h.client.popen.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            ws.send(b"".join(wc.build_frame(wc.OP_TEXT, b"%096d" % i, mask=True)
                             for i in range(FLOOD)))
            # condure reads until packets pile up, then holds: most of the
            # flood stays in the kernel, unread
            assert settled_unread(server.port) > 0, "condure read the whole flood: nothing held"
            # past a whole body window: no 408, the connection stays open
            upload.expect_silence(11.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        ws.close()
