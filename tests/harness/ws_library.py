"""The `websockets` package's sans-I/O client protocol on a blocking socket:
a second, independent WebSocket client for tests, keeping the raw bytes
each way."""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from tests.harness.http_client import connect


class LibraryClient:
    def __init__(self, port: int, path: str = "/lib", extensions=None) -> None:
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"),
                                       extensions=extensions)
        self.conn = connect(port)
        self.events: list = []
        self.raw = bytearray()  # what condure wrote
        self.sent = bytearray()  # what the library wrote

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sent += data
                self.conn.send(data)
            else:
                self.conn.shutdown_write()

    def next_event(self):
        while not self.events:
            data = self.conn.read_some()
            self.raw += data
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.flush()
            self.events += self.protocol.events_received()
            if not data and not self.events:
                raise AssertionError("connection closed without an event")
        return self.events.pop(0)
