"""A driver for the sans-I/O HTTP session: the fake at the I/O seam.

It plays the adapter's part (condure/net/conn.py) without sockets or a
loop: client bytes wait in an inbound queue and reach the session only
while ``session.wants_read`` is true, in reads of at most ``read_size``
bytes; actions are drained after every call and collected (bytes written,
packets sent, closes); the clock is a number the test moves.

The handler side is played by :meth:`Driver.handler`, which addresses
packets to the session's current id with a per-id seq counter.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from condure.session import records
from condure.session.actions import Close, Send, Write
from condure.session.http import HttpSession
from condure.zhttp.codec import encode
from condure.zhttp.packets import Cancel, Credit, Data, Ident, Packet

INSTANCE = b"condure"


def encode_record(fields: dict[str, object]) -> str:
    """A record map as handover sends it (records.encode of the typed record)."""
    return records.encode(records.from_fields(fields))


def decode_record(text: object) -> dict[str, object]:
    """The map of a record as an adopting process reads it."""
    return records.to_fields(records.decode(text))


HANDLER = b"handler1"
START = 1000.0


def checked(send: Send) -> Send:
    """``send``, once its pre-encoded bytes (if any) are found to be what
    ``encode`` makes of its packet: every session test checks them."""
    if send.wire is not None:
        assert send.wire == encode(send.packet), (send.packet, send.wire)
    return send


class IdSource:
    """Session ids as Condure prints them: ``0-0-0``, ``0-0-1``, ..."""

    def __init__(self, prefix: bytes = b"0-0-") -> None:
        self.prefix = prefix
        self.count = 0

    def __call__(self) -> bytes:
        rid = self.prefix + b"%d" % self.count
        self.count += 1
        return rid


class SeamDriver:
    """What a session driver and a client-session driver share: the read
    rhythm (bytes queued in ``inbound``, handed over only while the session
    wants to read, at most ``read_size`` at a time), the clock and the
    collected sends and closes. Subclasses set those attributes and define
    ``drain``."""

    session: Any
    now: float
    read_size: int
    inbound: bytearray
    eof_pending: bool
    sends: list[Send]
    closes: list[Close]

    def drain(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return bool(self.closes)

    @property
    def packets(self) -> list[Packet]:
        return [s.packet for s in self.sends]

    def pump(self) -> None:
        """Read the peer while the session wants to, like the adapter."""
        self.drain()
        while not self.closed and self.session.wants_read:
            if self.inbound:
                n = min(self.read_size, len(self.inbound))
                data = bytes(self.inbound[:n])
                del self.inbound[:n]
                self.session.receive_data(data, self.now)
            elif self.eof_pending:
                self.eof_pending = False
                self.session.receive_data(b"", self.now)
            else:
                break
            self.drain()

    def queue(self, data: bytes, eof: bool) -> None:
        """The peer sends ``data`` (then closes its side if ``eof``)."""
        self.inbound += data
        self.eof_pending = self.eof_pending or eof
        self.pump()

    def flush(self) -> None:
        """Everything written so far reached the peer."""
        self.session.output_flushed(self.now)
        self.pump()

    def advance(self, seconds: float) -> None:
        """Move the clock; fire the session's timer if it is due."""
        self.now += seconds
        deadline = self.session.deadline
        if deadline is not None and deadline <= self.now:
            self.session.handle_timer(self.now)
        self.pump()


class Driver(SeamDriver):
    def __init__(
        self,
        *,
        buffer_size: int = 8192,
        stream_timeout: float = 1800.0,
        scheme: bytes = b"http",
        peer_address: bytes | None = b"127.0.0.1",
        peer_port: int | None = 52996,
        now: float = START,
        auto_flush: bool = False,
        read_size: int | None = None,
        session: HttpSession | None = None,
        ids: IdSource | None = None,
    ) -> None:
        self.now = now
        self.ids = ids or IdSource()
        self.auto_flush = auto_flush
        self.read_size = read_size or max(buffer_size, 1)
        self.session = session or HttpSession(
            instance_id=INSTANCE,
            new_id=self.ids,
            now=now,
            buffer_size=buffer_size,
            stream_timeout=stream_timeout,
            scheme=scheme,
            peer_address=peer_address,
            peer_port=peer_port,
        )
        self.output = bytearray()  # every byte written to the client
        self.sends: list[Send] = []  # every packet for the handler
        self.closes: list[Close] = []
        self.inbound = bytearray()  # sent by the client, not read yet
        self.eof_pending = False
        self.handler_seq: dict[bytes, int] = {}
        self._out_mark = 0
        self._send_mark = 0

    # -- what happened --------------------------------------------------

    @property
    def close(self) -> Close:
        assert len(self.closes) == 1, self.closes
        return self.closes[0]

    def new_output(self) -> bytes:
        """Client output since the previous call."""
        out = bytes(self.output[self._out_mark:])
        self._out_mark = len(self.output)
        return out

    def new_sends(self) -> list[Send]:
        """Sends since the previous call."""
        sends = self.sends[self._send_mark:]
        self._send_mark = len(self.sends)
        return sends

    def new_packets(self) -> list[Packet]:
        return [s.packet for s in self.new_sends()]

    # -- the adapter's rhythm -------------------------------------------

    def drain(self) -> None:
        while True:
            actions = self.session.take_actions()
            if not actions:
                return
            wrote = False
            for action in actions:
                if isinstance(action, Write):
                    if not self.closed:
                        self.output += action.data
                        wrote = True
                elif isinstance(action, Send):
                    self.sends.append(checked(action))
                elif isinstance(action, Close):
                    self.closes.append(action)
                else:  # pragma: no cover
                    raise AssertionError(f"unknown action {action!r}")
            if wrote and self.auto_flush and not self.closed:
                self.session.output_flushed(self.now)

    # -- inputs ------------------------------------------------------------

    def client(self, data: bytes = b"", *, eof: bool = False) -> None:
        """The client sends ``data`` (then closes its side if ``eof``)."""
        self.queue(data, eof)

    def feed(self, data: bytes) -> None:
        """Hand bytes straight to the session, ignoring ``wants_read``."""
        self.session.receive_data(data, self.now)
        self.pump()

    def send_raw(self, packet: Packet, ident: Ident) -> None:
        self.session.receive_packet(packet, ident, self.now)
        self.pump()

    def handler(self, kind: type = Data, *, seq: int | str | None = "auto",
                rid: bytes | None = None, from_: bytes = HANDLER, **fields: object) -> None:
        """The handler sends a packet of ``kind`` to the session's current
        id (or ``rid``); ``seq`` counts per id unless given (None: no seq)."""
        rid = self.session.rid if rid is None else rid
        if seq == "auto":
            seq = self.handler_seq.get(rid, 0)
            self.handler_seq[rid] = seq + 1
        ident = Ident(rid, seq)  # type: ignore[arg-type]
        self.send_raw(kind(from_=from_, ids=(ident,), **fields), ident)

    def respond(self, code: int = 200, reason: bytes = b"OK", **fields: object) -> None:
        self.handler(Data, code=code, reason=reason, **fields)

    def credit(self, credits: int) -> None:
        self.handler(Credit, credits=credits)


def body_of(packets: list[Packet]) -> bytes:
    """The request body carried by data packets after the request packet."""
    return b"".join(p.body for p in packets if isinstance(p, Data) and p.method is None)


def strip_ids(packet: Packet) -> Packet:
    """``packet`` with its ids replaced by bare seqs, to compare sessions
    whose ids differ."""
    return replace(packet, ids=tuple(Ident(b"", i.seq) for i in packet.ids))


class EchoHandler:
    """A handler that grants credits for every request body and answers
    each complete request with ``<uri> <body length>``; :meth:`react`
    handles whatever the session sent since the last call."""

    def __init__(self, driver: Driver, credits: int = 1 << 20) -> None:
        self.d = driver
        self.credits = credits
        self.seen = 0
        self.requests: dict[bytes, Data] = {}
        self.bodies: dict[bytes, bytearray] = {}

    def react(self) -> None:
        d = self.d
        while self.seen < len(d.sends):
            packet = d.sends[self.seen].packet
            self.seen += 1
            if not isinstance(packet, Data) or d.closed:
                continue
            rid = packet.ids[0].id
            if packet.method is not None:
                self.requests[rid] = packet
                self.bodies[rid] = bytearray()
                framed = any(k.lower() in (b"content-length", b"transfer-encoding")
                             for k, _ in packet.headers or ())
                if framed:
                    # Even an empty body is read before answering, or the
                    # connection would not persist (reference 5.4).
                    d.handler(Credit, rid=rid, credits=self.credits)
                    continue
            else:
                self.bodies[rid] += packet.body
                if packet.more:
                    continue
            answer = b"%s %d" % (self.requests[rid].uri, len(self.bodies[rid]))
            d.handler(Data, rid=rid, code=200, reason=b"OK", body=answer)


def run_split(data: bytes, cuts: list[int], *, eof: bool = True, **kw: object) -> tuple:
    """Serve ``data`` sent by the client in pieces cut at ``cuts`` with an
    :class:`EchoHandler`; return what the split must not change."""
    d = Driver(**kw)  # type: ignore[arg-type]
    h = EchoHandler(d)
    bounds = [0, *cuts, len(data)]
    for start, stop in itertools.pairwise(bounds):
        d.client(data[start:stop])
        h.react()
    if eof:
        d.client(eof=True)
        h.react()
    return transcript(d, h)


def transcript(d: Driver, h: EchoHandler) -> tuple:
    """Request packets (seq 0), each request's whole body, the client's
    output and how the connection closed: everything that does not depend
    on how the client's bytes were split into reads."""
    requests = [(rid, strip_ids(p)) for rid, p in h.requests.items()]
    bodies = {rid: bytes(b) for rid, b in h.bodies.items()}
    cancels = [p.ids[0].id for p in d.packets if isinstance(p, Cancel)]
    closes = [c.graceful for c in d.closes]
    return requests, bodies, cancels, bytes(d.output), closes
