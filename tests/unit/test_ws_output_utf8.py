"""A handler's WebSocket text must be UTF-8 (RFC 6455 5.6, 8.1; Condure
writes it unchecked). Text that is not, whole or in packets with ``more``,
is never written: the peer gets close 1011, the handler ``cancel``, and the
end is a handler fault (logged by the adapter). Valid text split at any
byte passes unchanged, compressed or not, moved between processes or not.
Also the shared check (condure/session/utf8.py) on the input side: a
fragment that ends inside a UTF-16 surrogate fails at once."""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest

from condure.session import utf8
from condure.session.client_ws import ClientWsSession
from condure.session.records import RecordError, from_fields
from condure.session.snapshot import SnapshotError
from condure.session.ws_frames import CLOSE, CONT, TEXT, parse_header, parse_origin_header, unmask
from condure.session.ws_handshake import accept_value
from condure.session.ws_snapshot import export_ws, restore_ws
from condure.zhttp.packets import Cancel, Data
from condure.zhttp.packets import Close as ClosePacket
from tests.unit.client_helpers import INSTANCE as CLIENT_INSTANCE
from tests.unit.client_helpers import START, ClientDriver, first
from tests.unit.session_helpers import INSTANCE, decode_record, encode_record
from tests.unit.test_websocket_session import PMD_NCT, WsDriver, cframe, opened

TEXT_ = "café ☃ 𝄞 ü".encode()  # 2-, 3- and 4-byte characters

# (name, packet bodies of one text message): none of these may reach the
# client as a text message (each is invalid, or cut short at its end).
INVALID = {
    "whole-bad-byte": [b"ok \xff\xfe"],
    "whole-bad-continuation": [b"\xc3("],
    "whole-cut-at-the-end": [b"caf\xc3"],
    "whole-overlong": [b"\xc0\xaf"],
    "whole-surrogate": [b"\xed\xa0\x80"],
    "whole-beyond-u10ffff": [b"\xf4\x90\x80\x80"],
    "bad-byte-in-a-later-packet": [b"hello ", b"wor\xffld"],
    "invalid-only-together": [b"caf\xc3", b"("],
    "cut-at-the-end": [b"caf\xc3", b""],
    "cut-in-the-last-packet": [b"one ", b"two \xe2\x82"],
    "surrogate-at-a-packet-end": [b"ab\xed\xa0", b"\x80"],
    "surrogate-across-packets": [b"ab\xed", b"\xa0\x80"],
}


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, payload) of the frames condure wrote to a client."""
    out, buf = [], bytearray(data)
    while buf:
        hdr = parse_origin_header(buf, rsv1_allowed=True)
        assert hdr is not None and len(buf) >= hdr.size + hdr.length, buf
        out.append((hdr.opcode, hdr.fin, bytes(buf[hdr.size:hdr.size + hdr.length])))
        del buf[:hdr.size + hdr.length]
    return out


def send_message(d: WsDriver, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        d.handler(Data, body=body, more=i < len(bodies) - 1)


def text_written(frames: list[tuple[int, bool, bytes]]) -> bytes:
    return b"".join(payload for opcode, _, payload in frames if opcode in (TEXT, CONT))


def can_continue(data: bytes) -> bool:
    """``data`` is the beginning of some UTF-8 text (checked without
    condure's code: continuation bytes at the edges of every range that
    RFC 3629 allows after a lead byte)."""
    edges = (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)
    for n in range(4):
        for tail in itertools.product(edges, repeat=n):
            try:
                (data + bytes(tail)).decode("utf-8")
            except UnicodeDecodeError:
                continue
            return True
    return False


def assert_no_invalid_text(frames: list[tuple[int, bool, bytes]]) -> None:
    """What the client got of the message is a beginning of a UTF-8 text
    (which a client checking each fragment at once takes), and it never
    got its end."""
    written = text_written(frames)
    assert can_continue(written), written
    assert not any(fin for opcode, fin, _ in frames if opcode in (TEXT, CONT)), frames


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_text_from_the_handler_fails_with_1011(name):
    d = opened()
    send_message(d, INVALID[name])
    frames = server_frames(d.new_output())
    assert_no_invalid_text(frames)
    assert frames[-1] == (CLOSE, True, struct.pack("!H", 1011)), frames
    assert [type(p) for p in d.new_packets()] == [Cancel]
    close = d.close
    assert close.graceful and close.handler_fault and "not UTF-8" in close.reason
    d.handler(Data, body=b"after")  # a late packet changes nothing
    assert not d.new_output() and not d.new_packets()


@pytest.mark.parametrize("name", ["whole-bad-byte", "invalid-only-together", "cut-at-the-end"])
def test_invalid_text_in_a_compressed_session(name):
    d = opened(compression=True, headers=PMD_NCT)
    send_message(d, INVALID[name])
    frames = server_frames(d.new_output())
    assert frames[-1] == (CLOSE, True, struct.pack("!H", 1011)), frames
    written = zlib.decompressobj(-15).decompress(b"".join(p for _, _, p in frames[:-1]))
    assert can_continue(written) and not any(f[1] for f in frames[:-1])
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.close.handler_fault


def test_a_partly_written_message_ends_with_the_close_only():
    d = opened()
    d.handler(Data, body=b"caf\xc3", more=True)
    assert d.new_output() == b"\x01\x04caf\xc3"  # a valid beginning goes out at once
    d.handler(Data, body=b"(")
    assert d.new_output() == b"\x88\x02\x03\xf3"


@pytest.mark.parametrize("compression", [False, True])
def test_valid_text_split_at_every_byte_passes_unchanged(compression):
    kw = {"compression": True, "headers": PMD_NCT} if compression else {}
    splits = [[TEXT_[:i], TEXT_[i:]] for i in range(len(TEXT_) + 1)]
    splits += [[TEXT_[i:i + 1] for i in range(len(TEXT_))],
               [TEXT_[:3], TEXT_[3:9], b"", TEXT_[9:]]]
    for bodies in splits:
        d = opened(credits=0, **kw)
        send_message(d, bodies)
        frames = server_frames(d.new_output())
        assert frames[-1][1] and not d.closed and not d.new_packets()
        if compression:
            got = zlib.decompressobj(-15).decompress(
                b"".join(p for _, _, p in frames) + b"\x00\x00\xff\xff")
        else:
            got = text_written(frames)
        assert got == TEXT_, bodies
        d.handler(Data, body=TEXT_)  # and the next message too
        assert not d.closed


def test_binary_is_not_checked_and_text_after_a_checked_message_is():
    d = opened()
    d.handler(Data, content_type=b"binary", body=b"\xff\xfe")
    d.handler(Data, content_type=b"binary", body=b"\xc3", more=True)
    d.handler(Data, content_type=b"text", body=b"(")  # a continuation keeps the type
    assert server_frames(d.new_output()) == [(2, True, b"\xff\xfe"), (2, False, b"\xc3"),
                                             (CONT, True, b"(")]
    d.handler(Data, body=b"\xe2\x82", more=True)
    d.handler(Data, body=b"\xac")
    d.handler(Data, body=b"\xac")  # a new message cannot start inside a character
    assert server_frames(d.new_output())[-1] == (CLOSE, True, struct.pack("!H", 1011))


def test_a_close_reason_cannot_carry_invalid_text():
    # The codec refuses a close packet whose body is not UTF-8 (as Condure
    # does: the packet is not valid ZHTTP; tests/unit/test_zhttp_codec.py);
    # a reason cut to fit a control frame is cut at a character boundary.
    d = opened()
    d.handler(ClosePacket, code=4000, body="é".encode() * 62)
    (frame_,) = server_frames(d.new_output())
    assert frame_[2][2:] == "é".encode() * 61 and utf8.valid(frame_[2][2:])


# -- moving to another process in the middle of a text message -------------------------

def _move(d: WsDriver, change=None) -> WsDriver:
    record = decode_record(encode_record(export_ws(d.session, d.now)))
    if change is not None:
        record = change(record)
    session = restore_ws(record, instance_id=INSTANCE, now=d.now, buffer_size=8192,
                         stream_timeout=1800.0, messages_max=100)
    d2 = WsDriver(session=session, now=d.now)
    d2.handler_seq = dict(d.handler_seq)
    d2.pump()
    return d2


def _under_way() -> WsDriver:
    d = opened()
    d.handler(Data, body=b"caf\xe2\x82", more=True)  # ends inside a character
    d.flush()
    d.new_output()
    d.new_packets()
    return d


def test_the_unfinished_character_travels_in_the_record():
    d = _under_way()
    assert export_ws(d.session, d.now)["out_utf8"] == b"\xe2\x82"
    d2 = _move(d)
    d2.handler(Data, body=b"\xac!")
    assert d2.new_output() == b"\x80\x02\xac!" and not d2.closed
    d2 = _move(_under_way())
    d2.handler(Data, body=b"!")  # not the character's end
    assert server_frames(d2.new_output()) == [(CLOSE, True, struct.pack("!H", 1011))]
    assert d2.close.handler_fault


def test_a_record_without_out_utf8_leaves_the_message_unchecked():
    # Written by earlier condure, which checked none of the message: its
    # rest is not checked either (it may end a character begun there).
    d2 = _move(_under_way(), lambda r: {k: v for k, v in r.items() if k != "out_utf8"})
    d2.handler(Data, body=b"\xac!")
    assert d2.new_output() == b"\x80\x02\xac!" and not d2.closed
    d2.handler(Data, body=b"\xff")  # the next message is checked again
    assert d2.closed and d2.close.handler_fault


def test_out_utf8_is_only_written_for_a_text_message_in_packets():
    d = opened()
    assert "out_utf8" not in export_ws(d.session, d.now)
    d.handler(Data, content_type=b"binary", body=b"\xe2", more=True)
    d.flush()
    assert "out_utf8" not in export_ws(d.session, d.now)


@pytest.mark.parametrize("change", [
    {"out_utf8": b"\xff"}, {"out_utf8": b"\xed\xa0"}, {"out_utf8": b"\xe2\x82\xe2\x82"},
    {"out_type": 2}, {"out_type": 0, "out_framed": 0}])
def test_bad_out_utf8_is_refused(change):
    record = decode_record(encode_record(export_ws(_under_way().session, 0.0)))
    from_fields(record)
    with pytest.raises(RecordError):
        from_fields({**record, **change})
    with pytest.raises(SnapshotError):
        restore_ws({**record, **change}, instance_id=INSTANCE, now=0.0, buffer_size=8192,
                   stream_timeout=1.0, messages_max=1)


# -- the client role: a handler's text for an origin -------------------------------------

def test_client_role_invalid_text_closes_the_origin_with_1011():
    s = ClientWsSession(first(b"ws://example.com/", method=None, credits=1000),
                        instance_id=CLIENT_INSTANCE, now=START, random=lambda n: bytes(n))
    d = ClientDriver(s)
    d.connect()
    d.origin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
             b"Upgrade\r\nSec-WebSocket-Accept: " + accept_value(s.key) + b"\r\n\r\n")
    d.new_packets()
    d.new_written()
    d.handler(Data, body=b"caf\xc3", more=True)
    d.handler(Data, body=b"(")
    written = bytearray(d.new_written())
    frames = []
    while written:
        hdr = parse_header(written, rsv1_allowed=False)
        assert hdr is not None
        frames.append((hdr.opcode, hdr.fin, unmask(bytes(
            written[hdr.size:hdr.size + hdr.length]), hdr.mask, 0)))
        del written[:hdr.size + hdr.length]
    assert frames == [(TEXT, False, b"caf\xc3"), (CLOSE, True, struct.pack("!H", 1011))]
    assert [type(p) for p in d.new_packets()] == [Cancel]
    assert d.closed and d.closes[0].handler_fault and d.closes[0].graceful


# -- the input side: the same check, failing fast ------------------------------------------

def test_a_client_fragment_ending_inside_a_surrogate_fails_at_once():
    # Before the shared check, ED A0 was held as an unfinished character and
    # forwarded to the handler; the failure came with the next fragment.
    d = opened(credits=100)
    d.client(cframe(1, b"ab\xed\xa0", fin=False))
    assert server_frames(d.new_output()) == [(CLOSE, True, struct.pack("!H", 1007))]
    assert [type(p) for p in d.new_packets()] == [Cancel]


@pytest.mark.parametrize("cut", range(len(TEXT_) + 1))
def test_valid_client_text_split_anywhere_still_passes(cut):
    d = opened(credits=100)
    d.client(cframe(1, TEXT_[:cut], fin=False) + cframe(0, TEXT_[cut:]))
    assert b"".join(p.body for p in d.new_packets() if isinstance(p, Data)) == TEXT_
    assert not d.closed


def test_the_check_helpers():
    assert utf8.valid(b"") and utf8.valid(TEXT_) and not utf8.valid(b"\xc3")
    state = utf8.decoder()
    assert utf8.feed(state, b"\xf0\x9d") and utf8.feed(state, b"\x84")
    assert not utf8.feed(utf8.decoder(), b"\xf0\x9d", final=True)
    assert utf8.feed(state, b"\x9e", final=True)
    # Every unfinished sequence of two bytes feed accepts can be completed.
    for lead in range(0xE0, 0xF5):
        tail = b"" if lead < 0xF0 else b"\x80"
        for second in range(0x80, 0xC0):
            if utf8.feed(utf8.decoder(), bytes((lead, second))):
                assert any(utf8.valid(bytes((lead, second, c)) + tail)
                           for c in range(0x80, 0xC0)), (lead, second)
            else:
                assert not any(utf8.valid(bytes((lead, second, c)) + tail)
                               for c in range(0x80, 0xC0)), (lead, second)
