"""A WebSocket client in the middle of sending a message larger than the
buffer when a reload starts: the session moves in the middle of the frame
(its parsing state travels in the record) instead of being closed with
1012 after the handoff timeout, and the reload does not wait for it
(docs/handover.md). Real condure, examples/handoffhandler.py (an echo
handler honouring the handoff) and a real client sending slowly."""

from __future__ import annotations

import os
import threading
import time

from tests.harness import ws_client as wc
from tests.integration.test_handover import (
    assert_no_complaints,
    echo,
    fixture_handoff_handler,  # noqa: F401 - the fixture 'handoff_handler': pytest finds it here
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

HANDOFF_TIMEOUT = 5.0  # condure's default --handoff-timeout


def sliced(ws: wc.WsConn, frame: bytes, size: int, gap: float, sent: threading.Event) -> None:
    for at in range(0, len(frame), size):
        ws.sock.sendall(frame[at:at + size])
        time.sleep(gap)
    sent.set()


def test_a_large_frame_half_sent_moves_and_the_reload_does_not_wait(start, handoff_handler):
    condure = start(workers=1)  # --buffer-size 8192 (the default)
    handler = handoff_handler(condure.base)
    message = os.urandom(200 * 1024)
    frame = wc.build_frame(wc.OP_BINARY, message)
    with wc.WsConn.open(condure.port) as slow, wc.WsConn.open(condure.port) as other:
        assert slow.read_handshake().code == 101
        assert other.read_handshake().code == 101
        echo(slow, b"before")
        echo(other, b"before")
        sent = threading.Event()
        # 10 KiB every 0.2 s: about 4 s for the whole frame
        sender = threading.Thread(target=sliced, args=(slow, frame, 10 * 1024, 0.2, sent))
        sender.start()
        try:
            time.sleep(1.0)  # well into the frame
            began = time.monotonic()
            lines = condure.reload()
            took = time.monotonic() - began
            assert lines == [(2, 0, 0)], lines
            assert took < HANDOFF_TIMEOUT - 1.0, took  # it did not wait for the slow one
            assert not sent.is_set(), "the frame was over before the reload"
            echo(other, b"during")  # the other client goes on at once
        finally:
            sender.join()
        opcode, payload, _ = slow.read_message(timeout=10)
        assert opcode == wc.OP_BINARY and payload == message  # whole, once
        echo(slow, b"after")
        assert not [f for f in slow.frames if f.opcode == wc.OP_CLOSE]
    log = condure.log()
    assert "cannot move" not in log, log[-3000:]
    assert_no_complaints(condure, handler)


def exchange_large(ws: wc.WsConn, size: int, stop: threading.Event, result: dict) -> None:
    """Send ``size``-byte binary messages back to back, each after the echo
    of the one before, until ``stop``; count the echoes that match."""
    try:
        while not stop.is_set():
            message = os.urandom(size)
            ws.send_binary(message)
            opcode, payload, _ = ws.read_message(timeout=15)
            assert (opcode, payload == message) == (wc.OP_BINARY, True)
            result["echoed"] += 1
    except BaseException as e:  # noqa: BLE001 - reported by the test
        result["error"] = repr(e)


def test_clients_exchanging_large_messages_back_to_back_move(start, handoff_handler):
    condure = start(workers=1)
    handler = handoff_handler(condure.base)
    clients = [wc.WsConn.open(condure.port) for _ in range(6)]
    stop = threading.Event()
    results = [{"echoed": 0} for _ in clients]
    threads = [threading.Thread(target=exchange_large, args=(ws, 128 * 1024, stop, r))
               for ws, r in zip(clients, results, strict=True)]
    try:
        for ws in clients:
            assert ws.read_handshake().code == 101
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = [r["echoed"] for r in results]
        began = time.monotonic()
        lines = condure.reload()
        took = time.monotonic() - began
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(20)
        assert lines == [(6, 0, 0)], lines
        assert took < HANDOFF_TIMEOUT - 1.0, took
        assert all("error" not in r for r in results), results
        assert all(r["echoed"] > b > 0 for r, b in zip(results, before, strict=True)), (
            before, results)
        for ws in clients:
            assert not [f for f in ws.frames if f.opcode == wc.OP_CLOSE]
    finally:
        stop.set()
        for ws in clients:
            ws.close()
    log = condure.log()
    assert "cannot move" not in log, log[-3000:]
    assert_no_complaints(condure, handler)
