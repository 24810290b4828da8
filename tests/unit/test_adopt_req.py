"""A req-mode connection adopted by a real :class:`condure.worker.Worker`
(condure/handover.py): it takes a req slot (counted against req mode's
limit, not stream mode's), and a request that travelled whole goes out on
the req-mode socket; a worker without req mode (a restart whose req
listeners went away) refuses it and closes the connection. Real socket
pairs; the ZeroMQ side is the I/O seam, a recorder."""

from __future__ import annotations

import asyncio
import logging
import socket

from condure import handover
from condure.config import Config
from condure.session import records
from condure.session.req_record import ReqRecord
from condure.worker import Worker
from condure.zhttp import decode

NEXT = b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"


class ReqRecorder:
    """Stands in for the req-mode DEALER socket: the requests sent."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, payload: bytes) -> None:
        self.sent.append(decode(payload))

    def close(self) -> None:
        pass


def record(leftover: bytes = b"") -> str:
    return records.encode(ReqRecord(scheme=b"http", peer_address=b"127.0.0.1",
                                    peer_port=41000, leftover=leftover, req_left=20.0))


def test_a_req_connection_takes_a_req_slot_and_its_request_goes_out():
    loop = asyncio.new_event_loop()
    worker = Worker(Config(workers=1), loop)
    worker.req = ReqRecorder()  # type: ignore[assignment]
    ours, client = socket.socketpair()
    try:
        assert handover.adopt(worker, [record(NEXT)], [ours.detach()]) == (1, 0)
        assert worker.counts == {"stream": 0, "req": 1}
        [conn] = worker.live_connections()
        assert worker.slot_modes[conn.slot] == "req"
        [request] = worker.req.sent
        assert (request.uri, request.peer_port) == (b"http://example.com/next", 41000)
        assert request.ids[0].id == conn.session.rid
    finally:
        for conn in worker.live_connections():
            conn.abort()
        client.close()
        worker.close()
        loop.close()


def test_a_worker_without_req_mode_refuses_a_req_connection(caplog):
    loop = asyncio.new_event_loop()
    worker = Worker(Config(workers=1), loop)
    ours, client = socket.socketpair()
    try:
        with caplog.at_level(logging.WARNING, logger="condure"):
            assert handover.adopt(worker, [record()], [ours.detach()]) == (0, 1)
        assert "req mode is not in use here" in caplog.text
        assert worker.counts == {"stream": 0, "req": 0} and not worker.live_connections()
        client.settimeout(2.0)
        assert client.recv(1) == b""  # closed
    finally:
        client.close()
        worker.close()
        loop.close()
