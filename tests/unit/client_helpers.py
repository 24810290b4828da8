"""A driver for the sans-I/O client sessions: the fake at the I/O seam.

It plays the outbound adapter's part: the origin's bytes wait in a queue
and reach the session only while ``session.wants_read`` is true, in reads
of at most ``read_size`` bytes; actions are drained after every call and
collected (bytes for the origin, packets, connects, releases, replies,
closes); the clock is a number the test moves. The handler side is played
by :meth:`ClientDriver.handler` (seq counted from 1, as after the first
packet).
"""

from __future__ import annotations

from condure.session.client_contract import ClientSession, Connect, Release, Reply
from condure.session.client_http import ClientHttpSession
from condure.session.client_req import ClientReqSession
from condure.session.contract import Close, Send, Write
from condure.session.outbound import Condition
from condure.zhttp.packets import Credit, Data, Ident, Packet
from tests.unit.session_helpers import SeamDriver

INSTANCE = b"condure"
HANDLER = b"handler1"
RID = b"req-1"
START = 1000.0


def first(uri: bytes = b"http://example.com/path?x=1", method: bytes | None = b"GET",
          **fields: object) -> Data:
    """A handler's first packet."""
    fields.setdefault("from_", HANDLER)
    fields.setdefault("ids", (Ident(RID, 0),))
    return Data(method=method, uri=uri, **fields)  # type: ignore[arg-type]


class ClientDriver(SeamDriver):
    def __init__(self, session: ClientSession, *, now: float = START,
                 read_size: int = 65536) -> None:
        self.session = session
        self.now = now
        self.read_size = read_size
        self.written = bytearray()  # every byte for the origin
        self.sends: list[Send] = []
        self.connects: list[Connect] = []
        self.releases: list[Release] = []
        self.replies: list[Reply] = []
        self.closes: list[Close] = []
        self.inbound = bytearray()
        self.eof_pending = False
        self.seq = 1
        self._send_mark = 0
        self._write_mark = 0
        self.drain()

    @classmethod
    def stream(cls, packet: Data | None = None, *, buffer_size: int = 8192,
               stream_timeout: float = 1800.0, **kw: object) -> ClientDriver:
        session = ClientHttpSession(packet or first(), instance_id=INSTANCE, now=START,
                                    buffer_size=buffer_size, stream_timeout=stream_timeout)
        return cls(session, **kw)  # type: ignore[arg-type]

    @classmethod
    def req(cls, packet: Data | None = None, **kw: object) -> ClientDriver:
        session = ClientReqSession(packet or first(from_=b""), now=START,
                                   **kw)  # type: ignore[arg-type]
        return cls(session)

    # -- what happened --------------------------------------------------

    def new_packets(self) -> list[Packet]:
        sends = self.sends[self._send_mark:]
        self._send_mark = len(self.sends)
        return [s.packet for s in sends]

    def new_written(self) -> bytes:
        out = bytes(self.written[self._write_mark:])
        self._write_mark = len(self.written)
        return out

    # -- the adapter's rhythm -------------------------------------------

    def drain(self) -> None:
        for action in self.session.take_actions():
            if isinstance(action, Write):
                assert not self.closed
                self.written += action.data
            elif isinstance(action, Send):
                self.sends.append(action)
            elif isinstance(action, Connect):
                self.connects.append(action)
            elif isinstance(action, Release):
                self.releases.append(action)
            elif isinstance(action, Reply):
                self.replies.append(action)
            elif isinstance(action, Close):
                self.closes.append(action)
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {action!r}")

    # -- inputs ------------------------------------------------------------

    def connect(self) -> None:
        self.session.connected(self.now)
        self.pump()

    def connect_failed(self, condition: Condition) -> None:
        self.session.connect_failed(condition, self.now)
        self.pump()

    def origin(self, data: bytes = b"", *, eof: bool = False) -> None:
        self.queue(data, eof)

    def handler(self, kind: type = Data, *, seq: int | str | None = "auto",
                from_: bytes = HANDLER, **fields: object) -> None:
        if seq == "auto":
            seq = self.seq
            self.seq += 1
        ident = Ident(RID, seq)  # type: ignore[arg-type]
        self.session.receive_packet(kind(from_=from_, ids=(ident,), **fields), ident, self.now)
        self.pump()

    def credit(self, credits: int) -> None:
        self.handler(Credit, credits=credits)
