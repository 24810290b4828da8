"""Handover in the middle of a client frame larger than the buffer: the
session is exportable there (the frame's parsing state travels in the
record's ``frame_*`` fields, its unread bytes as ``leftover`` or in the
kernel), and the adopting session goes on parsing it. Whatever byte the
client had got to when the handover started, the handler receives the same
messages as without the move (docs/handover.md)."""

from __future__ import annotations

import pytest

from condure.session import records
from condure.session.records import RecordError
from condure.session.ws_snapshot import restore_ws
from condure.zhttp.packets import Credit, Data, HandoffProceed, HandoffStart, KeepAlive, Ping
from tests.unit.session_helpers import decode_record, encode_record
from tests.unit.test_handoff_session import carry
from tests.unit.test_websocket_session import PMD_NCT, WsDriver, cframe, opened

BUF = 512  # --buffer-size: the messages and most frames are larger
READ = 7  # bytes per read: reads end anywhere
TEXT_MSG = ("añ€😀|" * 64).encode()  # 1- to 4-byte UTF-8 characters, 704 bytes
BIN_MSG = bytes(range(200)) * 3


def client_stream() -> bytes:
    """A text message in three frames with a ping between them, then a
    binary one in one frame, then a small text one."""
    t = TEXT_MSG
    return (cframe(1, t[:600], fin=False) + cframe(9, b"hi") + cframe(0, t[600:601], fin=False)
            + cframe(0, t[601:]) + cframe(2, BIN_MSG) + cframe(1, b"end"))


EXPECTED = [("ping", b"hi"), ("text", TEXT_MSG), ("binary", BIN_MSG), ("text", b"end")]
STREAM = client_stream()


def events(packets) -> list[tuple[str, bytes]]:
    """What the handler makes of the packets: whole messages and pings."""
    out: list[tuple[str, bytes]] = []
    body = b""
    for p in packets:
        if isinstance(p, Ping):
            out.append(("ping", p.body))
        elif isinstance(p, Data):
            body += p.body or b""
            if not p.more:
                out.append((p.content_type.decode(), body))
                body = b""
    assert body == b"", "a message left unfinished"
    return out


def serve(d: WsDriver, seen: list) -> None:
    """The handler: takes every packet, and grants back the credits of what
    it took, as a handler that keeps up does."""
    while True:
        packets = d.new_packets()
        if not packets:
            return
        seen.extend(packets)
        spent = sum(len(p.body or b"") for p in packets if isinstance(p, (Data, Ping)))
        if spent and d.session.handoff == 0:
            d.handler(Credit, credits=spent)


def driver(credits: int, deflate: bool) -> WsDriver:
    kw = {"compression": True, "headers": PMD_NCT} if deflate else {}
    d = opened(credits=credits, buffer_size=BUF, read_size=READ, **kw)
    return d


def moved_at(cut: int, *, credits: int, deflate: bool = False) -> tuple[list, dict]:
    """The client has sent ``cut`` bytes of STREAM when the handover starts;
    the handler's packets of both processes, and the record."""
    d = driver(credits, deflate)
    seen: list = []
    d.client(STREAM[:cut])
    serve(d, seen)
    assert d.session.begin_handoff()
    d.drain()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]
    d.handler(HandoffProceed)
    d.client(STREAM[cut:])  # (stays in the kernel)
    assert not d.new_sends()
    assert d.session.ready_to_export, (cut, d.session)
    record = carry(d)
    assert len(record["pending"]) <= BUF and len(record["leftover"]) <= BUF + READ
    session = restore_ws(record, instance_id=b"condure.7", now=d.now, buffer_size=BUF,
                         stream_timeout=1800.0, messages_max=100)
    d2 = WsDriver(session=session, now=d.now, buffer_size=BUF, read_size=READ)
    d2.handler_seq = dict(d.handler_seq)
    d2.inbound = bytearray(d.inbound)
    session.resume()
    d2.pump()
    got = d2.new_packets()
    assert type(got[0]) is KeepAlive
    seen.extend(got[1:])
    d2.handler(Credit, credits=sum(len(p.body or b"") for p in got if isinstance(p, Data)))
    serve(d2, seen)
    assert not d2.closed and not d2.output  # the client notices nothing
    return seen, record


@pytest.mark.parametrize(("credits", "deflate"), [(BUF * 100, False), (10, False), (10, True)],
                         ids=["credits", "few-credits", "few-credits-deflate-nct"])
def test_move_at_every_byte_of_the_client_stream(credits, deflate):
    """Every cut, inside frame headers, payloads, UTF-8 characters, the
    ping: the handler gets the same messages as without a move, and the
    moves in the middle of a frame carry its state."""
    d = driver(credits, deflate)
    unmoved: list = []
    d.client(STREAM)
    serve(d, unmoved)
    assert events(unmoved) == EXPECTED
    mid_frame = 0
    for cut in range(len(STREAM) + 1):
        seen, record = moved_at(cut, credits=credits, deflate=deflate)
        assert events(seen) == EXPECTED, cut
        mid_frame += bool(record.get("frame_left"))
    assert mid_frame > len(STREAM) // 2  # (most cuts fall inside a frame)


def test_record_of_a_frame_under_way():
    seen, record = moved_at(40, credits=BUF * 100)
    # 40 bytes sent: the header (4 bytes with the 16-bit length), the mask,
    # 32 payload bytes; all of them read and forwarded (plenty of credits).
    assert (record["frame_left"], record["frame_offset"], record["frame_mask"],
            record["frame_fin"], record["msg_opcode"], record["msg_size"]) == (
        600 - 32, 32, b"\x01\x02\x03\x04", 0, 1, 32)
    assert record["leftover"] == b"" and record["pending"] == b""
    assert events(seen)[1] == ("text", TEXT_MSG)
    typed = records.decode(records.encode(records.from_fields(record)))
    assert (typed.frame_left, typed.frame_offset, typed.frame_fin) == (568, 32, False)


def test_a_record_without_a_frame_under_way_leaves_the_frame_keys_out():
    """What earlier condure wrote, and still reads (unknown keys are refused)."""
    _, record = moved_at(0, credits=BUF * 100)
    assert not any(key.startswith("frame_") for key in record)
    assert records.from_fields(record).frame_left == 0
    restored = restore_ws(record, instance_id=b"c", now=0.0, buffer_size=BUF,
                          stream_timeout=1.0, messages_max=1)
    assert restored.input.frame is None


@pytest.mark.parametrize("change", [
    {"frame_left": 5, "msg_opcode": 0},
    {"frame_left": 5, "frame_mask": b"\x01\x02\x03"},
    {"frame_left": 5, "msg_done": 1},
    {"frame_left": 5, "frame_fin": 2},
    {"frame_left": 5, "frame_fin": -1},
    {"frame_left": -1},
    {"frame_left": 5, "frame_offset": -1},
    {"frame_mask": b"\x01\x02\x03\x04"},
    {"frame_fin": 1},
    {"frame_offset": 3},
    {"frame_left": "5"},
], ids=repr)
def test_bad_frame_fields_are_refused(change):
    _, record = moved_at(40, credits=BUF * 100)
    record = {**decode_record(encode_record(record)), **change}
    if "frame_left" not in change:
        del record["frame_left"]
    with pytest.raises(RecordError):
        records.from_fields(record)


def test_what_a_handover_waits_for_in_words():
    """The log line of a session a handover gives up on says why."""
    d = opened(credits=100)
    d.client(cframe(1, TEXT_MSG)[:50])
    d.handler(Data, body=b"12345")  # written, not yet taken by the kernel
    assert d.session.begin_handoff()
    d.drain()
    assert d.session.handoff_wait == "no handoff-proceed in time"
    d.handler(HandoffProceed)
    assert not d.session.ready_to_export
    assert d.session.handoff_wait == "the client does not take what was written to it"
    d.flush()
    assert d.session.ready_to_export  # (in the middle of the frame)
