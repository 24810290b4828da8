"""Keep-alives to the handler and the 60 s session timeout, in real time.

These wait for condure's own clocks (the 45 s keep-alive sweep and the
60 s ZHTTP session timeout, reference 5.8), so they take about a minute
together; they share one condure and run their waits side by side. A
second condure with no handler at all waits beside them: its clients must
get a 504 and its log one warning naming the endpoint.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.harness import flows, http_client, procs
from tests.harness.flows import HOST
from tests.harness.http_client import request
from tests.harness.ws_client import WsConn

KEEP_ALIVE_INTERVAL = 45.0
SESSION_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("keepalive")) as server:
        server.handler.client.skip_keep_alives = False  # they are the subject here
        yield server.begin()
        server.end()


@pytest.fixture(scope="module", autouse=True)
def unanswered(tmp_path_factory):
    """A condure with no handler, and clients waiting on it from the start
    of this module: curl, a second HTTP request, a WebSocket upgrade."""
    condure = procs.start_condure("ours", tmp_path_factory.mktemp("nohandler"))
    url = f"http://127.0.0.1:{condure.port}/nobody-home"
    curl = subprocess.Popen(
        ["curl", "-s", "-i", "--max-time", str(SESSION_TIMEOUT + 20), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    other = http_client.connect(condure.port, timeout=SESSION_TIMEOUT + 20)
    other.send(request("POST", "/upload", [*HOST, ("Content-Length", "100")], b"x" * 100))
    ws = WsConn.open(condure.port, "/ws", timeout=SESSION_TIMEOUT + 20)
    try:
        yield condure, curl, other, ws, started
    finally:
        ws.close()
        other.close()
        if curl.poll() is None:
            curl.kill()
        curl.communicate()
        condure.stop()


SESSIONS = 30  # enough adjacent slots that one sweep step covers several


def test_keep_alives_batched_then_silent_handler_times_out(srv):
    h = srv.handler
    # Sessions whose handler is known (it sent a streamed response head),
    # then a handler that says nothing more.
    conns, ids, keep_alives = [], set(), []
    for n in range(SESSIONS):
        c = srv.conn()
        c.send(request("GET", f"/s{n}", HOST))
        # The sweep may reach earlier sessions meanwhile: set those aside.
        while (req := h.recv()).socket != "pull":
            keep_alives.append(req)
        h.reply(req, more=True)
        assert c.read_head().startswith(b"HTTP/1.1 200 OK\r\n")
        conns.append(c)
        ids.add(req.id)
    answered = time.monotonic()

    # Condure keeps sending keep-alives, but the handler's silence ends every
    # session 60 s after its last packet: the client is cut off (no final
    # chunk) and the handler gets no cancel (reference 5.8).
    for c in conns:
        data = c.read_until_close(timeout=SESSION_TIMEOUT + 10)
        assert b"0\r\n\r\n" not in data
    waited = time.monotonic() - answered
    assert SESSION_TIMEOUT - 1 <= waited <= SESSION_TIMEOUT + 5, waited

    seqs: dict[str, list[int]] = {sid: [] for sid in ids}
    batched = 0
    while (pkt := h.recv_or_none(1.0)) is not None:
        keep_alives.append(pkt)
    for pkt in keep_alives:
        assert pkt.type == "keep-alive", pkt
        assert pkt.socket == "router" and pkt["ext"].get("multi") is True, pkt
        if isinstance(pkt["id"], list):
            batched += 1
            assert 2 <= len(pkt["id"]) <= 128, pkt
            entries = [(e["id"].decode(), e["seq"]) for e in pkt["id"]]
        else:
            entries = [(pkt.id, pkt.seq)]
        for sid, seq in entries:
            seqs[sid].append(seq)
    # Every session is visited once per 45 s sweep: within 60 s one or two
    # keep-alives each, numbered on from the request packet (seq 0).
    for sid, got in seqs.items():
        assert got in ([1], [1, 2]), (sid, got)
    # Sessions in adjacent slots are visited in the same 100 ms step and
    # share one packet per handler.
    assert batched >= 1


def test_requests_no_handler_answers_get_504_and_one_warning(unanswered):
    condure, curl, other, ws, started = unanswered
    out, _ = curl.communicate(timeout=SESSION_TIMEOUT + 30)
    waited = time.monotonic() - started
    assert out.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), out
    assert b"\r\nConnection: close\r\n" in out
    assert SESSION_TIMEOUT - 1 <= waited <= SESSION_TIMEOUT + 5, waited
    assert other.read_response(timeout=10).code == 504
    assert ws.read_handshake(timeout=10).code == 504
    # The warning names the endpoint a handler must connect to, once for
    # all three requests (rate-limited), at the default log level.
    endpoint = condure.base + "-out"
    condure.stop()
    lines = [line for line in condure.output().splitlines() if "no handler answered" in line]
    assert len(lines) == 1, lines
    assert re.search(r"\[WARN\]", lines[0]) and endpoint in lines[0], lines
