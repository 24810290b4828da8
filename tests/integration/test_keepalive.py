"""Keep-alives to the handler and the 60 s session timeout, in real time.

These wait for condure's own clocks (the 45 s keep-alive sweep and the
60 s ZHTTP session timeout, reference 5.8), so they take about a minute
together; they share one condure and run their waits side by side.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import flows
from tests.harness.flows import HOST
from tests.harness.http_client import request

KEEP_ALIVE_INTERVAL = 45.0
SESSION_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("keepalive")) as server:
        server.handler.client.skip_keep_alives = False  # they are the subject here
        yield server.begin()
        server.end()


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
