"""Arbitrary handler packets fed to live session objects (hypothesis).

Every packet a handler can get past the decoder (any type, any field in
the ranges the decoder lets through, right or wrong seqs, any ``from``)
is fed to HTTP, WebSocket and req-mode sessions in each phase of their
life, mixed with client bytes, flush notices, timers, keep-alive sweeps,
a graceful stop and handover steps. The sessions must never raise: an
exception here is a bug in condure (in a worker it would end the
connection with a 500/1011, see condure/net/conn.py ``Conn.fail``). What
they emit must be well-formed too: every packet encodes to bytes the
strict decoder reads back, and every action is one the adapter knows.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condure.session import snapshot, ws_snapshot
from condure.session.actions import Close, Send, SwitchSession, Write
from condure.session.http import HttpSession
from condure.session.req import ReqSession
from condure.session.snapshot import SnapshotError
from condure.session.websocket import WebSocketSession
from condure.zhttp import decode, encode
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Ping,
    Pong,
)
from condure.zhttp.packets import Close as ClosePacket
from tests.unit.session_helpers import HANDLER, INSTANCE, START, Driver, IdSource

MASK = b"\x0a\x0b\x0c\x0d"
U32 = 2**32 - 1

# -- strategies: what the decoder lets through ---------------------------------

text = st.text(max_size=12).map(str.encode)  # UTF-8 fields
small_or_any = st.one_of(st.integers(0, 70000), st.integers(0, U32))
headers = st.one_of(st.none(), st.lists(
    st.tuples(st.one_of(st.sampled_from([b"Content-Length", b"content-length",
                                         b"Transfer-Encoding", b"Connection", b"Upgrade",
                                         b"Sec-WebSocket-Extensions", b"X-A"]), text),
              st.one_of(st.sampled_from([b"0", b"5", b" 12 ", b"-1", b"chunked", b"close",
                                         b"permessage-deflate", b"x" * 70]),
                        st.binary(max_size=20))),
    max_size=6).map(tuple))
body = st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=3000),
                 st.sampled_from([b"", b"x" * 9000, b"\xff\xfe", "é".encode()]))
from_ = st.sampled_from([HANDLER, HANDLER, HANDLER, b"other", b"", b"h" * 64, b"h" * 65])
code16 = st.one_of(st.none(), st.integers(0, 0xFFFF), st.sampled_from([1000, 1001, 1011, 3000]))
code32 = st.one_of(st.none(), st.sampled_from([101, 200, 204, 304, 100, 404, 500]),
                   st.integers(0, U32))

common = {"from_": from_}
DATA = st.builds(Data, code=code32, reason=st.one_of(st.none(), text), headers=headers,
                 content_type=st.sampled_from([None, b"binary", b"text", b""]), body=body,
                 credits=small_or_any, more=st.booleans(), **common)
CREDIT = st.builds(Credit, credits=small_or_any, **common)
PACKETS = st.one_of(
    DATA, DATA, DATA, DATA, CREDIT, CREDIT,
    st.builds(Error, condition=st.sampled_from([b"", b"rejected", b"bad-request", b"x"]),
              code=code32, reason=st.one_of(st.none(), text), headers=headers, body=body,
              **common),
    st.builds(KeepAlive, **common),
    st.builds(Cancel, **common),
    st.builds(HandoffStart, **common),
    st.builds(HandoffProceed, **common),
    st.builds(ClosePacket, code=code16, body=st.one_of(text, st.binary(max_size=130)),
              **common),
    st.builds(Ping, body=st.binary(max_size=130), credits=small_or_any, **common),
    st.builds(Pong, body=st.binary(max_size=130), credits=small_or_any, **common),
)
# "auto": the seq the session expects (most packets), else none, a wrong one
# or anything the decoder allows.
SEQS = st.one_of(st.just("auto"), st.just("auto"), st.just("auto"), st.none(),
                 st.integers(0, 5), st.integers(0, U32))


def cframe(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


client_bytes = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([
        cframe(0x1, b"hello"), cframe(0x2, b"\x01\x02"), cframe(0x1, "é".encode()),
        cframe(0x1, b"x" * 200), cframe(0x2, b"y" * 70000), cframe(0x9, b"p"),
        cframe(0x8, b""), cframe(0x8, b"\x03"), cframe(0x8, b"\x03\xe8\xff"),
        cframe(0x8, b"\x00\x01"), cframe(0x1, b"x", rsv1=True)[:3],
        cframe(0x1, bytes.fromhex("f248cdc9c90700"), rsv1=True),  # "Hello" deflated
        cframe(0x1, b"\x00\x01", rsv1=True), bytes((0x81, 5)) + b"plain",
        bytes((0x83, 0x80)) + MASK, bytes((0x09, 0x80)) + MASK,
    ]),
    st.sampled_from([
        b"GET /next HTTP/1.1\r\nHost: e\r\n\r\n", b"body", b"5\r\nhello\r\n0\r\n\r\n",
        cframe(0x1, b"hi"), cframe(0x2, b"\x00" * 300), cframe(0x1, b"part", fin=False),
        cframe(0x0, b"end"), cframe(0x9, b"ping"), cframe(0x8, b"\x03\xe8bye"),
        cframe(0x1, b"\xc3"), cframe(0x1, b"x", rsv1=True), cframe(0xA, b""),
    ]))

EVENTS = st.one_of(
    st.tuples(st.just("packet"), PACKETS, SEQS),
    st.tuples(st.just("packet"), PACKETS, SEQS),
    st.tuples(st.just("packet"), PACKETS, SEQS),
    st.tuples(st.just("client"), client_bytes),
    st.tuples(st.just("client"), client_bytes),
    st.tuples(st.just("client"), client_bytes),
    st.tuples(st.just("eof")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("time"), st.sampled_from([0.5, 30.0, 61.0, 2000.0])),
    st.tuples(st.just("keep-alive")),
    st.tuples(st.just("going-away")),
    st.tuples(st.just("handoff")),
    st.tuples(st.just("export")),
)

POST = b"POST /up HTTP/1.1\r\nHost: e\r\nContent-Length: 10\r\n\r\n"
OPENINGS = {
    "get": b"GET / HTTP/1.1\r\nHost: e\r\n\r\n",
    "get10": b"GET / HTTP/1.0\r\nHost: e\r\nConnection: keep-alive\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\nHost: e\r\n\r\n",
    "post": POST + b"0123",
    "chunked": b"POST /c HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n",
    "ws": b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "ws-deflate": b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    "idle": b"",
}


class FuzzDriver(Driver):
    """The session driver, obeying SwitchSession and checking every action."""

    def drain(self) -> None:
        while True:
            actions = self.session.take_actions()
            assert isinstance(actions, list)
            if not actions:
                return
            for action in actions:
                if isinstance(action, SwitchSession):
                    assert isinstance(action.session, WebSocketSession)
                    self.session = action.session
                elif isinstance(action, Write):
                    assert isinstance(action.data, bytes | bytearray)
                    if not self.closed:
                        self.output += action.data
                elif isinstance(action, Send):
                    check_packet(action.packet)
                    self.sends.append(action)
                else:
                    assert isinstance(action, Close), action
                    self.closes.append(action)


def check_packet(packet) -> None:
    """What condure sends, a strict handler can read."""
    payload = encode(packet)
    again = decode(payload)
    assert type(again) is type(packet), (packet, payload)


def run_events(d: FuzzDriver, events) -> None:
    for event in events:
        kind = event[0]
        s = d.session
        if kind == "packet":
            packet, seq = event[1], event[2]
            rid = getattr(s, "rid", b"0-0-0")
            if seq == "auto":
                seq = d.handler_seq.get(rid, 0)
                d.handler_seq[rid] = seq + 1
            ident = Ident(rid, seq)
            packet.ids = (ident,)
            d.send_raw(packet, ident)
        elif kind == "client":
            d.feed(event[1]) if not d.closed else None
        elif kind == "eof":
            if not d.closed:
                d.client(eof=True)
                d.feed(b"")
        elif kind == "flush":
            d.flush()
        elif kind == "time":
            d.advance(event[1])
        elif kind == "keep-alive":
            owed = s.keep_alive()
            if owed is not None:
                address, ident = owed
                assert isinstance(address, bytes) and isinstance(ident, Ident)
                check_packet(KeepAlive(from_=s.instance_id, ids=(ident,)))
            d.pump()
        elif kind == "going-away":
            s.going_away(d.now)
            d.pump()
        elif kind == "handoff":
            if isinstance(s, HttpSession | WebSocketSession) and not isinstance(s, ReqSession):
                s.begin_handoff()
            d.pump()
        elif kind == "export":
            export(d)
        assert isinstance(d.session.wants_read, bool)
        deadline = d.session.deadline
        assert deadline is None or isinstance(deadline, float | int)
    # And it can always be stopped.
    owed = d.session.shutdown()
    assert owed is None or isinstance(owed[1], Ident)


def export(d: FuzzDriver) -> None:
    """A snapshot of a session at a resumable point rebuilds into a session
    that behaves (fed a little more afterwards)."""
    s = d.session
    try:
        if isinstance(s, WebSocketSession):
            if not s.resumable and not s.ready_to_export:
                return
            record = snapshot.unpack(snapshot.pack(ws_snapshot.export_ws(s, d.now)))
            d.session = ws_snapshot.restore_ws(
                record, instance_id=INSTANCE, now=d.now, buffer_size=s.buffer_size,
                stream_timeout=s.stream_timeout, messages_max=s.messages_max,
                max_message_size=s.max_message_size)
            d.session.resume()
        elif isinstance(s, HttpSession) and not isinstance(s, ReqSession):
            if not s.resumable:
                return
            record = snapshot.unpack(snapshot.pack(snapshot.export_http(s, d.now)))
            d.session = snapshot.restore_http(
                record, instance_id=INSTANCE, new_id=IdSource(b"1-0-"), now=d.now,
                buffer_size=s.buffer_size, stream_timeout=s.stream_timeout,
                compression=s.compression, messages_max=s.messages_max,
                max_message_size=s.max_message_size)
        else:
            return
    except SnapshotError:
        return
    d.pump()


def make_driver(opening: str, mode: str, buffer_size: int, limits=(100, 0, 1800.0)
                ) -> FuzzDriver:
    if mode == "req":
        session = ReqSession(instance_id=INSTANCE, new_id=IdSource(), now=START,
                             buffer_size=buffer_size, body_buffer_size=2000, req_timeout=30.0)
        d = FuzzDriver(session=session, buffer_size=buffer_size)
    else:
        messages_max, max_message_size, stream_timeout = limits
        d = FuzzDriver(buffer_size=buffer_size, stream_timeout=stream_timeout)
        d.session.compression = True
        d.session.messages_max = messages_max
        d.session.max_message_size = max_message_size
    d.client(OPENINGS[opening])
    return d


# --messages-max, --max-message-size, --stream-timeout: defaults and extremes
LIMITS = st.sampled_from([(100, 0, 1800.0), (100, 0, 1800.0), (1, 10, 1.0), (0, 1, 0.0)])
BUFFER_SIZES = st.sampled_from([8192, 300, 64, 1, 0])


# FUZZ_EXAMPLES=n in the environment runs a longer campaign.
SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(opening=st.sampled_from(sorted(OPENINGS)), buffer_size=BUFFER_SIZES, limits=LIMITS,
       answer=st.sampled_from([True, True, True, False]), events=st.lists(EVENTS, max_size=25))
def test_stream_sessions_take_any_handler_packet(opening, buffer_size, limits, answer, events):
    d = make_driver(opening, "stream", buffer_size, limits)
    if answer and d.sends:
        # The handler's usual first answer, so the later events meet an
        # accepted WebSocket or a response under way.
        ws = isinstance(d.session, WebSocketSession)
        d.handler(Data, code=101 if ws else 200, reason=b"OK", credits=1000, more=not ws,
                  body=b"" if ws else b"head")
    run_events(d, events)


@SETTINGS
@given(opening=st.sampled_from(["get", "get10", "post", "chunked", "ws", "idle"]),
       buffer_size=BUFFER_SIZES, events=st.lists(EVENTS, max_size=10))
def test_req_sessions_take_any_handler_packet(opening, buffer_size, events):
    d = make_driver(opening, "req", buffer_size)
    run_events(d, events)
