"""The sans-I/O WebSocket session (reference 5.7, 10), driven like the adapter."""

from __future__ import annotations

import struct
import zlib

import pytest

from condure.session.actions import Close, Send, SwitchSession, Write
from condure.session.snapshot import SnapshotError
from condure.session.websocket import WebSocketSession
from condure.session.ws_frames import frame
from condure.session.ws_handshake import Deflate
from condure.session.ws_snapshot import export_ws, restore_ws
from condure.zhttp import encode, tnetstring
from condure.zhttp.packets import (
    Cancel,
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
from tests.unit.session_helpers import INSTANCE, Driver, checked

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /ws?q=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n"
           b"Origin: http://example.com\r\n\r\n")
SIMPLE = (b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
MASK = b"\x01\x02\x03\x04"


class WsDriver(Driver):
    """The HTTP driver, also obeying SwitchSession."""

    def __init__(self, *, compression: bool = False, messages_max: int = 100, **kw) -> None:
        super().__init__(**kw)
        self.session.compression = compression
        self.session.messages_max = messages_max

    def drain(self) -> None:
        while True:
            actions = self.session.take_actions()
            if not actions:
                return
            wrote = False
            for action in actions:
                if isinstance(action, SwitchSession):
                    self.session = action.session
                elif isinstance(action, Write):
                    if not self.closed:
                        self.output += action.data
                        wrote = True
                elif isinstance(action, Send):
                    self.sends.append(checked(action))
                else:
                    assert isinstance(action, Close)
                    self.closes.append(action)
            if wrote and self.auto_flush and not self.closed:
                self.session.output_flushed(self.now)


def cframe(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
           masked: bool = True, length: int | None = None) -> bytes:
    """A client frame."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def opened(*, credits: int = 0, headers: bytes = b"", extra: bytes = b"", **kw) -> WsDriver:
    """A driver whose session is an accepted WebSocket, output marks reset."""
    d = WsDriver(**kw)
    d.client(SIMPLE + headers + b"\r\n" + extra)
    d.respond(101, b"Switching Protocols", credits=credits)
    assert isinstance(d.session, WebSocketSession), d.new_output()
    d.new_output()
    d.new_sends()
    return d


# -- handshake through the HTTP session ------------------------------------------

def test_upgrade_request_packet_golden():  # reference 5.7.2
    d = WsDriver(peer_port=58808)
    d.client(UPGRADE)
    assert isinstance(d.session, WebSocketSession)
    assert encode(d.packets[0]) == (
        b"T432:4:from,7:condure,2:id,5:0-0-0,3:seq,1:0#3:ext,15:5:multi,4:true!}6:method,"
        b"3:GET,3:uri,23:ws://example.com/ws?q=1,7:headers,239:22:4:Host,11:example.com,]"
        b"22:7:Upgrade,9:websocket,]24:10:Connection,7:Upgrade,]49:17:Sec-WebSocket-Key,"
        b"24:dGhlIHNhbXBsZSBub25jZQ==,]30:21:Sec-WebSocket-Version,2:13,]"
        b"33:22:Sec-WebSocket-Protocol,4:chat,]31:6:Origin,18:http://example.com,]]"
        b"7:credits,4:8192#12:peer-address,9:127.0.0.1,9:peer-port,5:58808#}")
    assert not d.output


def test_upgrade_byte_by_byte_and_wss():
    d = WsDriver(read_size=1, scheme=b"https")
    d.client(SIMPLE + b"\r\n")
    assert d.packets[0].uri == b"wss://e/ws" and not d.packets[0].stream


def test_acceptance_golden():  # reference 5.7.3
    d = WsDriver()
    d.client(UPGRADE)
    d.new_sends()
    headers = ((b"Sec-WebSocket-Protocol", b"chat"), (b"Upgrade", b"bogus"),
               (b"Connection", b"bogus"), (b"Sec-WebSocket-Accept", b"bogus"))
    d.respond(101, b"Switching Protocols", headers=headers, credits=1024)
    assert d.new_output() == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: chat\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    assert d.session.input.credits == 1024 and not d.new_sends() and not d.closed


def test_acceptance_without_credits_means_buffer_size():
    assert opened().session.input.credits == 8192
    assert opened(buffer_size=1000).session.input.credits == 1000


@pytest.mark.parametrize("request_, status", [
    (SIMPLE.replace(b"13", b"8") + b"\r\n", 426),
    (SIMPLE.replace(b"GET", b"POST") + b"\r\n", 400),
    (SIMPLE + b"Content-Length: 3\r\n\r\nabc", 400),
    (SIMPLE + b"Sec-WebSocket-Extensions: foo, , bar\r\n\r\n", 400),
])
def test_bad_upgrade_is_refused(request_, status):
    d = WsDriver()
    d.client(request_)
    assert d.output.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close\r\n" in d.output
    assert not d.packets and d.close.graceful


def test_mixed_case_upgrade_value_is_a_handshake():  # unlike Condure; test_upgrade_tokens.py
    d = WsDriver()
    d.client(SIMPLE.replace(b"websocket", b"WebSocket") + b"\r\n")
    assert d.packets[0].uri == b"ws://e/ws" and not d.packets[0].stream


def test_rejection_golden():  # reference 5.7.7
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    d.handler(Error, condition=b"rejected", code=403, reason=b"Forbidden",
              headers=((b"Content-Type", b"text/plain"), (b"Connection", b"x")),
              body=b"go away\n")
    assert bytes(d.output) == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: 8\r\n\r\ngo away\n")
    assert d.close.graceful and not d.new_sends()


@pytest.mark.parametrize("body", [b"", b"not allowed"])
def test_non_101_answer_is_a_rejection_and_cancel(body):
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    d.respond(403, b"Forbidden", body=body)
    assert bytes(d.output) == (b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.close.graceful


@pytest.mark.parametrize("code, reason, headers", [
    (101, b"Switching Protocols", ((b"Sec-WebSocket-Protocol", b"chat\r\nSet-Cookie: a=b"),)),
    (101, b"Switching\r\nX: y", ()),
    (101, b"Switching Protocols", ((b"X A", b"1"),)),
    (403, b"Forbidden", ((b"X-A", b"a\nb"),)),
    (99, b"Odd", ()),
])
def test_faulty_answer_to_an_upgrade_is_not_written(code, reason, headers):
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    d.respond(code, reason, headers=headers)
    assert not d.output
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.closed and d.close.handler_fault
    # the same head in a rejection (an error packet): closed, nothing written
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    d.handler(Error, condition=b"rejected", code=403 if code == 101 else code, reason=reason,
              headers=headers, body=b"no")
    assert not d.output and not d.new_sends() and d.closed and d.close.handler_fault


@pytest.mark.parametrize("packet", [Cancel(), Error(condition=b"bad-request")])
def test_cancel_or_error_before_acceptance_closes_silently(packet):
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    fields = {"condition": packet.condition} if isinstance(packet, Error) else {}
    d.handler(type(packet), **fields)
    assert not d.output and not d.new_sends() and not d.close.graceful


def test_client_gone_before_acceptance_gets_cancel():
    d = WsDriver()
    d.client(SIMPLE + b"\r\n", eof=True)
    assert not d.closed
    d.new_sends()
    d.respond(101, b"Switching Protocols")
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.closed and not d.output


def test_upgrade_nobody_accepts_is_a_504():
    d = WsDriver()
    d.client(SIMPLE + b"\r\n")
    d.new_sends()
    d.advance(60)
    assert d.new_output().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert d.closed and d.closes[-1].graceful and d.closes[-1].unanswered
    assert d.new_packets() == []


def test_frames_sent_with_the_request_wait_for_acceptance():
    d = WsDriver()
    d.client(SIMPLE + b"\r\n" + cframe(1, b"early"))
    assert len(d.packets) == 1
    d.respond(101, b"Switching Protocols")
    assert d.packets[1].body == b"early" and d.packets[1].content_type == b"text"


# -- client to handler (reference 5.7.4) ------------------------------------------------

GOLDEN_IN = [
    b"T103:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#3:ext,15:5:multi,4:true!}12:content-type,"
    b"4:text,4:body,5:hello,}",
    b"T103:4:from,7:condure,2:id,5:0-0-0,3:seq,1:2#3:ext,15:5:multi,4:true!}12:content-type,"
    b"6:binary,4:body,3:\x00\x01\x02,}",
    b"T116:4:from,7:condure,2:id,5:0-0-0,3:seq,1:3#3:ext,15:5:multi,4:true!}12:content-type,"
    b"4:text,4:body,4:frag,4:more,4:true!}",
    b"T102:4:from,7:condure,2:id,5:0-0-0,3:seq,1:4#3:ext,15:5:multi,4:true!}12:content-type,"
    b"4:text,4:body,4:ment,}",
    b"T88:4:from,7:condure,2:id,5:0-0-0,3:seq,1:5#3:ext,15:5:multi,4:true!}12:content-type,"
    b"4:text,}",
    b"T91:4:from,7:condure,2:id,5:0-0-0,3:seq,1:6#3:ext,15:5:multi,4:true!}4:type,4:ping,"
    b"4:body,2:pp,}",
    b"T91:4:from,7:condure,2:id,5:0-0-0,3:seq,1:7#3:ext,15:5:multi,4:true!}4:type,4:pong,"
    b"4:body,2:qq,}",
    b"T107:4:from,7:condure,2:id,5:0-0-0,3:seq,1:8#3:ext,15:5:multi,4:true!}4:type,5:close,"
    b"4:code,4:1001#4:body,3:bye,}",
]
CLIENT_FRAMES = (cframe(1, b"hello") + cframe(2, b"\x00\x01\x02") + cframe(1, b"frag", fin=False)
                 + cframe(0, b"ment") + cframe(1) + cframe(9, b"pp") + cframe(10, b"qq")
                 + cframe(8, b"\x03\xe9bye"))


def test_client_messages_golden():
    d = opened()
    d.client(CLIENT_FRAMES)
    assert [encode(p) for p in d.new_packets()] == GOLDEN_IN
    assert d.session.input.closed and not d.session.wants_read and not d.closed
    assert d.session.input.credits == 8192 - 5 - 3 - 8 - 2 - 2 - 5


def _messages(d: WsDriver) -> list[tuple]:
    """Packets to the handler with the data messages joined."""
    out, cur = [], None
    for p in d.packets[1:]:
        if isinstance(p, Data):
            cur = (cur or b"") + p.body
            if not p.more:
                out.append((p.content_type, cur))
                cur = None
        else:
            out.append((type(p).__name__, p.body, getattr(p, "code", None)))
    return out


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 100])
def test_split_reads_give_the_same_messages(read_size):
    whole = opened()
    whole.client(CLIENT_FRAMES)
    split = opened(read_size=read_size)
    split.client(CLIENT_FRAMES)
    assert _messages(split) == _messages(whole)
    assert all(p.body for p in split.packets[1:] if isinstance(p, Data) and p.more)


def test_partial_frames_under_small_credits():  # reference 5.7.4, 10-credit trace
    d = opened(credits=10)
    d.client(cframe(1, b"0123456789abcdefghij"))
    (p,) = d.new_packets()
    assert (p.body, p.more) == (b"0123456789", True)
    assert not d.session.wants_read
    d.credit(15)
    (p,) = d.new_packets()
    assert (p.body, p.more, p.content_type) == (b"abcdefghij", False, b"text")
    assert d.session.input.credits == 5


def test_packet_size_is_bounded_by_buffer_size():
    d = opened(buffer_size=200, credits=1000)
    d.client(cframe(2, bytes(500)))  # 8-byte header, read 200 bytes at a time
    assert [(len(p.body), p.more) for p in d.new_packets()] == [
        (192, True), (200, True), (108, False)]


def test_zero_credits_reads_nothing_even_control_frames():
    d = opened(credits=4)
    d.client(cframe(1, b"abcd") + cframe(9, b"pp"))
    assert [p.body for p in d.new_packets()] == [b"abcd"]
    assert not d.session.wants_read
    d.credit(1)  # not enough for the ping
    assert not d.new_packets()
    d.credit(1)
    assert [type(p) for p in d.new_packets()] == [Ping]


def test_empty_non_final_fragments_are_not_forwarded():
    d = opened()
    d.client(cframe(2, b"", fin=False) + cframe(0, b"ab", fin=False) + cframe(0, b"", fin=False)
             + cframe(0, b""))
    assert [(p.body, p.more) for p in d.new_packets()] == [(b"ab", True), (b"", False)]


def test_control_frames_inside_a_fragmented_message():
    d = opened()
    d.client(cframe(1, b"ab", fin=False) + cframe(9, b"x") + cframe(0, b"cd"))
    assert [(type(p).__name__, p.body) for p in d.new_packets()] == [
        ("Data", b"ab"), ("Ping", b"x"), ("Data", b"cd")]


def test_close_frame_without_payload():  # reference 5.7.6
    d = opened()
    d.client(cframe(8))
    (p,) = d.new_packets()
    assert encode(p) == (b"T80:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#3:ext,15:5:multi,"
                         b"4:true!}4:type,5:close,}")


def test_client_disconnect_without_close_is_cancel():
    d = opened()
    d.client(cframe(1, b"x", fin=False), eof=True)
    assert [type(p) for p in d.new_packets()] == [Data, Cancel]
    assert not d.close.graceful


@pytest.mark.parametrize("frames, code", [
    (cframe(1, b"hi", masked=False), 1002),
    (cframe(1, b"hi", rsv=0x40), 1002),  # RSV1 without compression
    (cframe(1, b"hi", rsv=0x20), 1002),
    (cframe(1, b"hi", rsv=0x10), 1002),
    (cframe(3, b"hi"), 1002),
    (cframe(11), 1002),
    (cframe(9, b"x" * 126), 1002),
    (cframe(9, b"x", fin=False), 1002),
    (cframe(0, b"x"), 1002),
    (cframe(1, b"a", fin=False) + cframe(2, b"b"), 1002),
    (cframe(2, b"", length=1 << 63), 1002),
    (cframe(8, b"\x03"), 1002),
    (cframe(8, b"\x03\xed"), 1002),  # 1005 may not be sent
    (cframe(8, b"\x03\xe8\xff"), 1007),
    (cframe(1, b"\xff"), 1007),
    (cframe(1, b"\xe2\x82", fin=False) + cframe(0, b"\xac") + cframe(1, b"ok\xe2\x82"), 1007),
    (cframe(1, b"\xe2\x82", fin=False) + cframe(0, b"\x41"), 1007),
])
def test_protocol_errors_close_with_a_code_and_cancel(frames, code):
    for read_size in (1, 8192):
        d = opened(read_size=read_size)
        d.client(frames)
        out = d.new_output()
        assert out.endswith(b"\x88\x02" + struct.pack("!H", code)), out
        assert type(d.packets[-1]) is Cancel
        assert d.close.graceful
        assert not any(isinstance(p, Data) and p.body == b"\xff" for p in d.packets)


def test_utf8_split_across_fragments_is_valid():
    d = opened(read_size=1)
    d.client(cframe(1, b"\xe2\x82", fin=False) + cframe(0, b"\xac!"))
    assert b"".join(p.body for p in d.new_packets()) == "€!".encode()
    assert not d.closed


def test_binary_messages_are_not_utf8_checked():
    d = opened()
    d.client(cframe(2, b"\xff\xfe"))
    assert d.new_packets()[0].body == b"\xff\xfe" and not d.closed


# -- handler to client (reference 5.7.5) ------------------------------------------------

def test_handler_messages_golden():
    d = opened()
    d.handler(Data, body=b"hi there")
    assert d.new_output() == b"\x81\x08hi there"
    d.flush()
    d.handler(Data, content_type=b"binary", body=b"\xff\x00")
    assert d.new_output() == b"\x82\x02\xff\x00"
    d.flush()
    d.handler(Ping, body=b"hp")
    d.flush()
    d.handler(Pong, body=b"hq")
    d.flush()
    assert d.new_output() == b"\x89\x02hp\x8a\x02hq"
    assert [encode(p) for p in d.new_packets()][:2] == [
        b"T95:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#3:ext,15:5:multi,4:true!}4:type,6:credit,"
        b"7:credits,1:8#}",
        b"T95:4:from,7:condure,2:id,5:0-0-0,3:seq,1:2#3:ext,15:5:multi,4:true!}4:type,6:credit,"
        b"7:credits,1:2#}"]
    assert [p.credits for p in d.packets[-2:]] == [2, 2]


def test_fragmented_handler_message_and_frame_lengths():
    d = opened()
    d.handler(Data, body=b"part1-", more=True)
    d.handler(Data, body=b"", more=True)
    d.handler(Data, body=b"part2")
    d.handler(Data, body=b"x" * 200)
    d.handler(Data, content_type=b"binary", body=b"y" * 7000, more=True)
    out = d.new_output()
    assert out.startswith(b"\x01\x06part1-\x80\x05part2\x81\x7e\x00\xc8" + b"x" * 200)
    assert out[219:223] == b"\x02\x7e" + struct.pack("!H", 7000)
    assert frame(2, bytes(70000))[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)


def test_handler_beyond_credits_is_cancelled():
    d = opened(buffer_size=300)
    d.handler(Data, body=b"x" * 200)
    d.handler(Data, body=b"y" * 101)
    assert type(d.packets[-1]) is Cancel and not d.close.graceful


def test_credits_come_back_after_flush():
    d = opened(buffer_size=300)
    d.handler(Data, body=b"x" * 200)
    d.flush()
    d.handler(Data, body=b"y" * 300)
    assert not d.closed


def test_messages_max():
    d = opened(messages_max=2)
    d.handler(Data, body=b"a")
    d.handler(Data, body=b"b", more=True)  # parts of a message do not count
    d.handler(Data, body=b"b")
    assert not d.closed
    d.handler(Data, body=b"c")
    assert type(d.packets[-1]) is Cancel and d.closed


def test_ping_packet_credits_are_added():
    d = opened(credits=1)
    d.handler(Ping, credits=5)
    assert d.session.input.credits == 6


def test_client_closes_first():  # reference 5.7.6
    d = opened()
    d.client(cframe(8, b"\x03\xe9bye"))
    assert d.new_packets()[0].code == 1001
    d.handler(Data, body=b"late")
    assert d.new_output() == b"\x81\x04late"
    d.handler(ClosePacket, code=1001, body=b"ok")
    assert d.new_output() == b"\x88\x04\x03\xe9ok"
    assert d.close.graceful and not d.new_packets()


def test_handler_closes_first():  # reference 5.7.6
    d = opened()
    d.handler(ClosePacket, code=4000, body=b"going")
    assert d.new_output() == b"\x88\x07\x0f\xa0going"
    d.handler(Data, body=b"dropped")
    assert not d.new_output()
    d.client(cframe(1, b"still") + cframe(8, b"\x0f\xa0"))
    assert [encode(p) for p in d.new_packets()][-1] == (
        b"T94:4:from,7:condure,2:id,5:0-0-0,3:seq,1:2#3:ext,15:5:multi,4:true!}4:type,5:close,"
        b"4:code,4:4000#}")
    assert d.packets[-2].body == b"still" and d.close.graceful


def test_close_packet_without_code():
    d = opened()
    d.handler(ClosePacket)
    assert d.new_output() == b"\x88\x02\x03\xe8"


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_code_no_endpoint_may_send_becomes_no_status(code):
    # RFC 6455 7.4.1: 1005, 1006 and 1015 must not be sent, and a client
    # fails the connection on any code outside 7.4.2's ranges (Condure
    # wrote them as given): the close frame carries no status instead.
    d = opened()
    d.handler(ClosePacket, code=code, body=b"why")
    assert d.new_output() == b"\x88\x00"
    assert not d.closed  # waits for the client's close, as after any close frame


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1012, 1014, 3000, 4999])
def test_close_code_a_server_may_send_is_kept(code):
    d = opened()
    d.handler(ClosePacket, code=code)
    assert d.new_output() == b"\x88\x02" + struct.pack("!H", code)


@pytest.mark.parametrize("kind", [Cancel, Error])
def test_handler_cancel_after_acceptance(kind):
    d = opened()
    d.handler(kind)
    assert not d.new_output() and not d.new_packets() and not d.close.graceful


def test_bad_seq_aborts_without_cancel():
    d = opened()
    d.handler(Data, seq=7, body=b"x")
    assert d.closed and not d.new_packets() and not d.new_output()


# -- compression (reference 10) --------------------------------------------------------

PMD = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
PMD_NCT = (b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
           b"server_no_context_takeover\r\n")
# RFC 7692 7.1.2.1: the answer to an offer of server_max_window_bits carries it
PMD_NCT_BITS = (b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15; "
                b"client_no_context_takeover; server_no_context_takeover\r\n")


def deflate(data: bytes) -> bytes:
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def test_compression_negotiated_request_and_acceptance():
    d = WsDriver(compression=True)
    d.client(SIMPLE + PMD + b"\r\n")
    assert d.packets[0].credits == 6144
    assert (b"Sec-WebSocket-Extensions", b"permessage-deflate") in d.packets[0].headers
    d.respond(101, b"Switching Protocols",
              headers=((b"Sec-WebSocket-Extensions", b"bogus"),))
    assert d.output.endswith(b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    assert d.output.count(b"Sec-WebSocket-Extensions") == 1


def test_server_max_window_bits_is_echoed():
    d = WsDriver(compression=True)
    d.client(SIMPLE + b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15"
             b"\r\n\r\n")
    d.respond(101, b"Switching Protocols")
    assert d.new_output().endswith(b"\r\nSec-WebSocket-Extensions: permessage-deflate; "
                                   b"server_max_window_bits=15\r\n\r\n")
    d.handler(Data, body=b"compress me compress me")  # deflated as without the parameter
    assert d.new_output() == bytes.fromhex(
        "c1 11 4a ce cf 2d 28 4a 2d 2e 56 c8 4d 55 48 46 b0 01 00")


def test_no_compression_without_the_option():
    d = WsDriver()
    d.client(SIMPLE + PMD + b"\r\n")
    assert d.packets[0].credits == 8192
    d.respond(101, b"Switching Protocols")
    assert b"Extensions" not in d.output


def test_compressed_output_golden():  # reference 10.2
    d = opened(compression=True, headers=PMD)
    d.handler(Data, body=b"compress me compress me")
    assert d.new_output() == bytes.fromhex(
        "c1 11 4a ce cf 2d 28 4a 2d 2e 56 c8 4d 55 48 46 b0 01 00")
    d.flush()
    assert d.new_packets()[-1].credits == 23
    d.handler(Ping, body=b"p")
    assert d.new_output() == b"\x89\x01p"


def test_compressed_output_context_takeover_and_reset():
    for headers, same in ((PMD, False), (PMD_NCT, True)):
        d = opened(compression=True, headers=headers)
        d.handler(Data, body=b"hello hello hello")
        first = d.new_output()
        d.handler(Data, body=b"hello hello hello")
        assert (d.new_output() == first) is same


def test_compressed_fragmented_output_inflates_back():
    d = opened(compression=True, headers=PMD)
    d.handler(Data, body=b"abc" * 10, more=True)
    d.handler(Data, body=b"def" * 10)
    out = d.new_output()
    assert out[0] == 0x41  # text, RSV1, no FIN
    first_len = out[1]
    second = out[2 + first_len:]
    assert second[0] == 0x80  # continuation, FIN, no RSV1
    z = zlib.decompressobj(-15)
    text = z.decompress(out[2:2 + first_len] + second[2:] + b"\x00\x00\xff\xff")
    assert text == b"abc" * 10 + b"def" * 10


def test_compressed_input_whole_split_and_plain():
    message = b"compressible " * 50
    payload = deflate(message)
    frames = (cframe(1, payload, rsv=0x40) + cframe(1, b"plain")
              + cframe(2, payload[:5], rsv=0x40, fin=False) + cframe(0, payload[5:]))
    for read_size in (1, 8192):
        d = opened(compression=True, headers=PMD, read_size=read_size)
        d.client(frames)
        assert [m[1] for m in _messages(d)] == [message, b"plain", message]
        assert not d.closed


def test_compressed_input_under_small_credits_and_buffer():
    message = bytes(5000)  # inflates far beyond its compressed size
    d = opened(compression=True, headers=PMD, buffer_size=256, credits=300)
    d.client(cframe(2, deflate(message), rsv=0x40))
    assert sum(len(p.body) for p in d.new_packets()) == 300
    d.credit(10000)
    assert sum(len(p.body) for p in d.packets[1:]) == 5000
    assert max(len(p.body) for p in d.packets[1:]) <= 256
    assert not d.packets[-1].more


def test_rsv1_on_continuation_and_bad_deflate_data():
    for frames, code in ((cframe(1, b"a", fin=False) + cframe(0, b"b", rsv=0x40), 1002),
                         (cframe(1, b"\xff\xff\xff", rsv=0x40), 1007)):
        d = opened(compression=True, headers=PMD)
        d.client(frames)
        assert d.new_output().endswith(b"\x88\x02" + struct.pack("!H", code))
        assert d.closed


# -- timers, keep-alives, handoff ---------------------------------------------------

def test_keep_alive_session_and_stream_timeouts():
    d = opened(stream_timeout=1000.0)
    assert d.session.keep_alive() == (b"handler1", Ident(b"0-0-0", 1))
    d.advance(59)
    d.handler(KeepAlive)
    d.advance(59)
    assert not d.closed
    d.advance(2)  # no handler packet for 61 s
    assert d.closed and not d.new_packets()
    d = opened(stream_timeout=30.0)
    d.advance(31)
    assert type(d.packets[-1]) is Cancel and d.closed


def test_handoff_pauses_until_next_packet():
    d = opened()
    d.handler(HandoffStart)
    assert type(d.new_packets()[0]) is HandoffProceed
    d.client(cframe(1, b"wait"))
    assert not d.new_packets()
    d.handler(KeepAlive, from_=b"handler2")
    (p,) = d.new_packets()
    assert p.body == b"wait" and d.sends[-1].to == b"handler2"


def test_shutdown_owes_a_cancel():
    d = opened()
    assert d.session.shutdown() == (b"handler1", Ident(b"0-0-0", 1))


# -- snapshot --------------------------------------------------------------------------

def _moved(d: WsDriver) -> WsDriver:
    record = export_ws(d.session, d.now)
    record = {k.decode(): v for k, v in tnetstring.loads(tnetstring.dumps(record)).items()}
    session = restore_ws(record, instance_id=INSTANCE, now=d.now, buffer_size=8192,
                         stream_timeout=1800.0, messages_max=100)
    d2 = WsDriver(session=session, now=d.now)
    d2.handler_seq = dict(d.handler_seq)
    d2.pump()
    return d2


REST = cframe(0, b"\xac tail")


def _continue(d: WsDriver) -> tuple:
    d.client(REST[1:] + cframe(9, b"p"))
    d.handler(Data, body=b"end")
    d.flush()
    d.handler(ClosePacket, code=1000)
    d.client(cframe(8, b"\x03\xe8"))
    return [encode(p) for p in d.new_packets()], d.new_output(), [c.graceful for c in d.closes]


@pytest.mark.parametrize("headers", [b"", PMD_NCT])
def test_export_restore_continue_equals_continue(headers):
    kw = {"compression": True, "headers": headers, "credits": 100} if headers else {"credits": 100}
    runs = []
    for move in (False, True):
        d = opened(**kw)
        d.client(cframe(1, b"plain \xe2\x82", fin=False))  # a text message under way
        d.handler(Data, body=b"first", more=not headers)  # a message under way
        d.flush()
        d.client(REST[:1])  # a partial header is only leftover
        d.new_packets()
        d.new_output()
        assert d.session.resumable
        if move:
            d = _moved(d)
        runs.append(_continue(d))
    assert runs[0] == runs[1]
    assert runs[0][1].startswith(b"\xc1" if headers else b"\x80\x03end")
    assert runs[0][0][0].endswith(b"4:body,6:\xac tail,}")


def test_session_with_server_max_window_bits_moves():
    d = opened(compression=True, headers=PMD_NCT_BITS)
    header = (b"permessage-deflate; client_no_context_takeover; server_no_context_takeover; "
              b"server_max_window_bits=15")
    assert d.session.deflate.header == header
    assert export_ws(d.session, d.now)["deflate"] == header
    d = _moved(d)
    assert d.session.deflate == Deflate(True, True, 15)
    d.handler(Data, body=b"compress me compress me")
    assert d.new_output()[:1] == b"\xc1"  # still compressed
    d = opened(compression=True, headers=b"Sec-WebSocket-Extensions: permessage-deflate; "
               b"server_max_window_bits=15\r\n")
    with pytest.raises(SnapshotError, match="context takeover"):
        export_ws(d.session, d.now)


def test_export_refusals():
    d = opened()
    d.client(cframe(1, b"abcdef")[:9])  # inside a frame
    with pytest.raises(SnapshotError):
        export_ws(d.session, d.now)
    d = opened()
    d.handler(Data, body=b"unflushed")
    assert not d.session.resumable
    with pytest.raises(SnapshotError):
        export_ws(d.session, d.now)
    d = opened(compression=True, headers=PMD)
    assert not d.session.resumable
    with pytest.raises(SnapshotError, match="context takeover"):
        export_ws(d.session, d.now)


def test_restore_rejects_bad_records():
    d = opened()
    record = export_ws(d.session, d.now)
    with pytest.raises(SnapshotError):
        restore_ws({**record, "v": 2}, instance_id=INSTANCE, now=0.0, buffer_size=8192,
                   stream_timeout=1.0, messages_max=1)
    with pytest.raises(SnapshotError):
        restore_ws({**record, "in_seq": b"1"}, instance_id=INSTANCE, now=0.0, buffer_size=8192,
                   stream_timeout=1.0, messages_max=1)


# -- --max-message-size (condure's own option; Condure has no limit) ---------


def _limited_session(limit):
    from condure.session.http import HttpSession

    http = HttpSession(instance_id=b"condure", new_id=lambda: b"0-0-0", now=0.0,
                       max_message_size=limit)
    http.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0)
    ws = None
    for action in http.take_actions():
        if type(action).__name__ == "SwitchSession":
            ws = action.session
    assert ws is not None
    ws.take_actions()
    ws.receive_packet(Data(from_=b"h", ids=(Ident(b"0-0-0", 0),), code=101,
                           reason=b"Switching Protocols", credits=100000),
                      Ident(b"0-0-0", 0), 0.0)
    ws.take_actions()
    return ws


def _masked(opcode_byte, payload):
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([opcode_byte]) + (bytes([0x80 | n]) if n < 126
                                   else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("limit, size, fails", [(0, 5000, False), (1000, 1000, False),
                                                (1000, 1001, True)])
def test_max_message_size(limit, size, fails):
    ws = _limited_session(limit)
    # Sent in two fragments: the limit counts the whole message.
    half = size // 2
    ws.receive_data(_masked(0x02, b"a" * half) + _masked(0x80, b"a" * (size - half)), 0.0)
    actions = ws.take_actions()
    writes = b"".join(a.data for a in actions if type(a).__name__ == "Write")
    sent = [a.packet for a in actions if type(a).__name__ == "Send"]
    if fails:
        assert writes.startswith(b"\x88\x02\x03\xf1")  # close frame, code 1009
        assert type(sent[-1]).__name__ == "Cancel"
    else:
        assert not writes
        assert sum(len(p.body) for p in sent if type(p).__name__ == "Data") == size
