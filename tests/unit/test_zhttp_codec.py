"""ZHTTP codec: golden bytes captured from Condure, rejection rules, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.zhttp import (
    Cancel,
    Close,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    PacketError,
    Ping,
    Pong,
    UnknownType,
    codec,
    decode,
    encode,
    split_address,
)

C = b"condure"
H1 = b"handler1"
EXT = b"3:ext,15:5:multi,4:true!}"


def ids(id_: bytes, seq: int | None = None) -> tuple[Ident, ...]:
    return (Ident(id_, seq),)


# Packets condure sends, as captured from a real Condure (packet, exact bytes).
CONDURE_SENT = [
    pytest.param(
        Cancel(b"cid9", (Ident(b"0-0-5", 1), Ident(b"0-1-6", 1))),
        b"T118:4:from,4:cid9,2:id,54:23:2:id,5:0-0-5,3:seq,1:1#}23:2:id,5:0-1-6,3:seq,1:1#}]"
        + EXT + b"4:type,6:cancel,}",
        id="shutdown-cancel-list",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 0), method=b"GET", uri=b"http://example.com/path?x=1",
             headers=((b"Host", b"example.com"), (b"User-Agent", b"t"), (b"Accept", b"*/*")),
             credits=8192, stream=True, peer_address=b"127.0.0.1", peer_port=52996),
        b"T279:4:from,7:condure,2:id,5:0-0-0,3:seq,1:0#" + EXT + b"6:method,3:GET,"
        b"3:uri,27:http://example.com/path?x=1,7:headers,67:22:4:Host,11:example.com,]"
        b"18:10:User-Agent,1:t,]15:6:Accept,3:*/*,]]7:credits,4:8192#6:stream,4:true!"
        b"12:peer-address,9:127.0.0.1,9:peer-port,5:52996#}",
        id="request-get",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 0), method=b"POST", uri=b"http://example.com/upload",
             headers=((b"Host", b"example.com"), (b"Content-Type", b"application/octet-stream"),
                      (b"Content-Length", b"20000")),
             credits=8192, more=True, stream=True, peer_address=b"127.0.0.1", peer_port=34288),
        b"T330:4:from,7:condure,2:id,5:0-0-0,3:seq,1:0#" + EXT + b"6:method,4:POST,"
        b"3:uri,25:http://example.com/upload,7:headers,104:22:4:Host,11:example.com,]"
        b"44:12:Content-Type,24:application/octet-stream,]26:14:Content-Length,5:20000,]]"
        b"7:credits,4:8192#4:more,4:true!6:stream,4:true!12:peer-address,9:127.0.0.1,"
        b"9:peer-port,5:34288#}",
        id="request-post",
    ),
    pytest.param(
        Data(C, ids(b"1-0-0", 1), body=b"hello", more=True),
        b"T94:4:from,7:condure,2:id,5:1-0-0,3:seq,1:1#" + EXT + b"4:body,5:hello,4:more,4:true!}",
        id="body-chunk-1",
    ),
    pytest.param(
        Data(C, ids(b"1-0-0", 2), body=b" world", more=True),
        b"T95:4:from,7:condure,2:id,5:1-0-0,3:seq,1:2#" + EXT + b"4:body,6: world,4:more,4:true!}",
        id="body-chunk-2",
    ),
    pytest.param(
        Data(C, ids(b"1-0-0", 3)),
        b"T65:4:from,7:condure,2:id,5:1-0-0,3:seq,1:3#" + EXT + b"}",
        id="body-empty-final",
    ),
    pytest.param(
        Credit(C, ids(b"1-0-0", 1), credits=9),
        b"T95:4:from,7:condure,2:id,5:1-0-0,3:seq,1:1#" + EXT + b"4:type,6:credit,7:credits,1:9#}",
        id="credit-9",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 0), method=b"GET", uri=b"ws://example.com/ws?q=1",
             headers=((b"Host", b"example.com"), (b"Upgrade", b"websocket"),
                      (b"Connection", b"Upgrade"),
                      (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                      (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Protocol", b"chat"),
                      (b"Origin", b"http://example.com")),
             credits=8192, peer_address=b"127.0.0.1", peer_port=58808),
        b"T432:4:from,7:condure,2:id,5:0-0-0,3:seq,1:0#" + EXT + b"6:method,3:GET,"
        b"3:uri,23:ws://example.com/ws?q=1,7:headers,239:22:4:Host,11:example.com,]"
        b"22:7:Upgrade,9:websocket,]24:10:Connection,7:Upgrade,]"
        b"49:17:Sec-WebSocket-Key,24:dGhlIHNhbXBsZSBub25jZQ==,]30:21:Sec-WebSocket-Version,2:13,]"
        b"33:22:Sec-WebSocket-Protocol,4:chat,]31:6:Origin,18:http://example.com,]]"
        b"7:credits,4:8192#12:peer-address,9:127.0.0.1,9:peer-port,5:58808#}",
        id="request-websocket",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 1), content_type=b"text", body=b"hello"),
        b"T103:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#" + EXT
        + b"12:content-type,4:text,4:body,5:hello,}",
        id="ws-text",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 2), content_type=b"binary", body=b"\x00\x01\x02"),
        b"T103:4:from,7:condure,2:id,5:0-0-0,3:seq,1:2#" + EXT
        + b"12:content-type,6:binary,4:body,3:\x00\x01\x02,}",
        id="ws-binary",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 3), content_type=b"text", body=b"frag", more=True),
        b"T116:4:from,7:condure,2:id,5:0-0-0,3:seq,1:3#" + EXT
        + b"12:content-type,4:text,4:body,4:frag,4:more,4:true!}",
        id="ws-fragment",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 4), content_type=b"text", body=b"ment"),
        b"T102:4:from,7:condure,2:id,5:0-0-0,3:seq,1:4#" + EXT
        + b"12:content-type,4:text,4:body,4:ment,}",
        id="ws-fragment-end",
    ),
    pytest.param(
        Data(C, ids(b"0-0-0", 5), content_type=b"text"),
        b"T88:4:from,7:condure,2:id,5:0-0-0,3:seq,1:5#" + EXT + b"12:content-type,4:text,}",
        id="ws-empty-text",
    ),
    pytest.param(
        Ping(C, ids(b"0-0-0", 10), body=b"pp"),
        b"T92:4:from,7:condure,2:id,5:0-0-0,3:seq,2:10#" + EXT + b"4:type,4:ping,4:body,2:pp,}",
        id="ws-ping",
    ),
    pytest.param(
        Pong(C, ids(b"0-0-0", 11), body=b"qq"),
        b"T92:4:from,7:condure,2:id,5:0-0-0,3:seq,2:11#" + EXT + b"4:type,4:pong,4:body,2:qq,}",
        id="ws-pong",
    ),
    pytest.param(
        Close(C, ids(b"0-0-0", 14), code=1001, body=b"bye"),
        b"T108:4:from,7:condure,2:id,5:0-0-0,3:seq,2:14#" + EXT
        + b"4:type,5:close,4:code,4:1001#4:body,3:bye,}",
        id="ws-close-reason",
    ),
    pytest.param(
        Credit(C, ids(b"0-0-0", 6), credits=8),
        b"T95:4:from,7:condure,2:id,5:0-0-0,3:seq,1:6#" + EXT + b"4:type,6:credit,7:credits,1:8#}",
        id="credit-8",
    ),
    pytest.param(
        Credit(C, ids(b"0-0-0", 7), credits=2),
        b"T95:4:from,7:condure,2:id,5:0-0-0,3:seq,1:7#" + EXT + b"4:type,6:credit,7:credits,1:2#}",
        id="credit-2",
    ),
    pytest.param(
        Close(C, ids(b"1-0-0", 2), code=4000),
        b"T94:4:from,7:condure,2:id,5:1-0-0,3:seq,1:2#" + EXT + b"4:type,5:close,4:code,4:4000#}",
        id="ws-close-code",
    ),
    pytest.param(
        Close(C, ids(b"0-0-1", 1)),
        b"T80:4:from,7:condure,2:id,5:0-0-1,3:seq,1:1#" + EXT + b"4:type,5:close,}",
        id="ws-close-empty",
    ),
    pytest.param(
        KeepAlive(C, ids(b"0-0-0", 1)),
        b"T86:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#" + EXT + b"4:type,10:keep-alive,}",
        id="keep-alive",
    ),
    pytest.param(
        HandoffProceed(C, ids(b"1-0-3", 2)),
        b"T91:4:from,7:condure,2:id,5:1-0-3,3:seq,1:2#" + EXT + b"4:type,15:handoff-proceed,}",
        id="handoff-proceed",
    ),
    pytest.param(
        Cancel(C, ids(b"0-0-0", 1)),
        b"T81:4:from,7:condure,2:id,5:0-0-0,3:seq,1:1#" + EXT + b"4:type,6:cancel,}",
        id="cancel",
    ),
    pytest.param(
        Data(ids=ids(b"0-0-0"), method=b"GET", uri=b"http://example.com/hello?x=y",
             headers=((b"Host", b"example.com"), (b"User-Agent", b"t")),
             peer_address=b"127.0.0.1", peer_port=55326),
        b"T201:2:id,5:0-0-0," + EXT + b"6:method,3:GET,3:uri,28:http://example.com/hello?x=y,"
        b"7:headers,48:22:4:Host,11:example.com,]18:10:User-Agent,1:t,]]"
        b"12:peer-address,9:127.0.0.1,9:peer-port,5:55326#}",
        id="req-mode-get",
    ),
    pytest.param(
        Data(ids=ids(b"0-0-1"), method=b"POST", uri=b"http://example.com/p",
             headers=((b"Host", b"example.com"), (b"Content-Length", b"11")),
             body=b"hello there", peer_address=b"127.0.0.1", peer_port=55326),
        b"T221:2:id,5:0-0-1," + EXT + b"6:method,4:POST,3:uri,20:http://example.com/p,"
        b"7:headers,53:22:4:Host,11:example.com,]23:14:Content-Length,2:11,]]4:body,11:hello there,"
        b"12:peer-address,9:127.0.0.1,9:peer-port,5:55326#}",
        id="req-mode-post",
    ),
    pytest.param(
        Data(ids=ids(b"1-0-1"), method=b"GET", uri=b"http://localhost/ten",
             peer_address=b"127.0.0.1", peer_port=45842),
        b"T131:2:id,5:1-0-1," + EXT + b"6:method,3:GET,3:uri,20:http://localhost/ten,"
        b"12:peer-address,9:127.0.0.1,9:peer-port,5:45842#}",
        id="req-mode-no-headers",
    ),
]

TEXT_PLAIN = (b"Content-Type", b"text/plain")

# Packets handlers sent in the captures (exact bytes, packet). No ext.
HANDLER_SENT = [
    pytest.param(
        b"T157:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:0#4:code,3:200#6:reason,2:OK,"
        b"7:headers,52:30:12:Content-Type,10:text/plain,]14:5:X-Foo,3:bar,]]"
        b"4:body,12:hello world\n,}",
        Data(H1, ids(b"0-0-0", 0), code=200, reason=b"OK",
             headers=(TEXT_PLAIN, (b"X-Foo", b"bar")), body=b"hello world\n"),
        id="response",
    ),
    pytest.param(
        b"T74:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:0#4:type,6:credit,7:credits,4:5000#}",
        Credit(H1, ids(b"0-0-0", 0), credits=5000),
        id="credit-5000",
    ),
    pytest.param(
        b"T76:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:1#4:type,6:credit,7:credits,6:100000#}",
        Credit(H1, ids(b"0-0-0", 1), credits=100000),
        id="credit-100000",
    ),
    pytest.param(
        b"T133:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:2#4:code,3:200#6:reason,2:OK,"
        b"7:headers,34:30:12:Content-Type,10:text/plain,]]4:body,7:got it\n,}",
        Data(H1, ids(b"0-0-0", 2), code=200, reason=b"OK", headers=(TEXT_PLAIN,), body=b"got it\n"),
        id="response-after-body",
    ),
    pytest.param(
        b"T130:4:from,8:handler1,2:id,5:1-0-0,3:seq,1:0#4:code,3:200#6:reason,2:OK,"
        b"7:headers,34:30:12:Content-Type,10:text/plain,]]4:more,4:true!}",
        Data(H1, ids(b"1-0-0", 0), code=200, reason=b"OK", headers=(TEXT_PLAIN,), more=True),
        id="streamed-head",
    ),
    pytest.param(
        b"T74:4:from,8:handler1,2:id,5:1-0-0,3:seq,1:1#4:body,9:part one\n,4:more,4:true!}",
        Data(H1, ids(b"1-0-0", 1), body=b"part one\n", more=True),
        id="streamed-part",
    ),
    pytest.param(
        b"T56:4:from,8:handler1,2:id,5:1-0-0,3:seq,1:3#4:body,5:last\n,}",
        Data(H1, ids(b"1-0-0", 3), body=b"last\n"),
        id="streamed-last",
    ),
    pytest.param(
        b"T41:4:from,8:handler1,2:id,5:0-0-2,3:seq,1:2#}",
        Data(H1, ids(b"0-0-2", 2)),
        id="empty-final",
    ),
    pytest.param(
        b"T239:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:0#4:code,3:101#"
        b"6:reason,19:Switching Protocols,"
        b"7:headers,121:33:22:Sec-WebSocket-Protocol,4:chat,]18:7:Upgrade,5:bogus,]"
        b"22:10:Connection,5:bogus,]32:20:Sec-WebSocket-Accept,5:bogus,]]7:credits,4:1024#}",
        Data(H1, ids(b"0-0-0", 0), code=101, reason=b"Switching Protocols",
             headers=((b"Sec-WebSocket-Protocol", b"chat"), (b"Upgrade", b"bogus"),
                      (b"Connection", b"bogus"), (b"Sec-WebSocket-Accept", b"bogus")),
             credits=1024),
        id="ws-accept",
    ),
    pytest.param(
        b"T59:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:1#4:body,8:hi there,}",
        Data(H1, ids(b"0-0-0", 1), body=b"hi there"),
        id="ws-message",
    ),
    pytest.param(
        b"T78:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:2#12:content-type,6:binary,4:body,2:\xff\x00,}",
        Data(H1, ids(b"0-0-0", 2), content_type=b"binary", body=b"\xff\x00"),
        id="ws-binary-message",
    ),
    pytest.param(
        b"T67:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:5#4:type,4:ping,4:body,2:hp,}",
        Ping(H1, ids(b"0-0-0", 5), body=b"hp"),
        id="ws-ping",
    ),
    pytest.param(
        b"T67:4:from,8:handler1,2:id,5:0-0-0,3:seq,1:6#4:type,4:pong,4:body,2:hq,}",
        Pong(H1, ids(b"0-0-0", 6), body=b"hq"),
        id="ws-pong",
    ),
    pytest.param(
        b"T201:4:from,8:handler1,2:id,5:1-0-1,3:seq,1:0#4:type,5:error,9:condition,8:rejected,"
        b"4:code,3:403#6:reason,9:Forbidden,7:headers,56:30:12:Content-Type,10:text/plain,]"
        b"18:10:Connection,1:x,]]4:body,8:go away\n,}",
        Error(H1, ids(b"1-0-1", 0), condition=b"rejected", code=403, reason=b"Forbidden",
              headers=(TEXT_PLAIN, (b"Connection", b"x")), body=b"go away\n"),
        id="ws-rejected",
    ),
    pytest.param(
        b"T65:4:from,8:handler1,2:id,5:1-0-3,3:seq,1:1#4:type,13:handoff-start,}",
        HandoffStart(H1, ids(b"1-0-3", 1)),
        id="handoff-start",
    ),
    pytest.param(
        b"T62:4:from,8:handler2,2:id,5:1-0-3,3:seq,1:2#4:type,10:keep-alive,}",
        KeepAlive(b"handler2", ids(b"1-0-3", 2)),
        id="handoff-resume",
    ),
    pytest.param(
        b"T54:4:from,8:handler2,2:id,5:1-0-3,3:seq,1:3#4:body,3:two,}",
        Data(b"handler2", ids(b"1-0-3", 3), body=b"two"),
        id="after-handoff",
    ),
    pytest.param(
        b"T111:2:id,5:0-0-0,4:code,3:200#6:reason,2:OK,7:headers,34:30:12:Content-Type,"
        b"10:text/plain,]]4:body,12:hello world\n,}",
        Data(ids=ids(b"0-0-0"), code=200, reason=b"OK", headers=(TEXT_PLAIN,),
             body=b"hello world\n"),
        id="req-mode-response",
    ),
    pytest.param(
        b"T82:2:id,5:0-0-1,4:code,3:201#6:reason,7:Created,7:headers,0:]4:body,0:,4:more,4:true!}",
        Data(ids=ids(b"0-0-1"), code=201, reason=b"Created", headers=(), more=True),
        id="req-mode-empty-headers",
    ),
    pytest.param(
        b"T111:4:from,8:handler1,2:id,54:23:2:id,5:0-0-5,3:seq,1:1#}23:2:id,5:1-0-5,3:seq,1:1#}]"
        b"4:body,6:shared,4:more,4:true!}",
        Data(H1, (Ident(b"0-0-5", 1), Ident(b"1-0-5", 1)), id_list=True, body=b"shared", more=True),
        id="multi-id",
    ),
]


def test_golden_lengths_are_consistent():
    for param in CONDURE_SENT:
        raw = param.values[1]
        assert int(raw[1 : raw.index(b":")]) == len(raw) - raw.index(b":") - 2, param.id
    for param in HANDLER_SENT:
        raw = param.values[0]
        assert int(raw[1 : raw.index(b":")]) == len(raw) - raw.index(b":") - 2, param.id


@pytest.mark.parametrize(("packet", "raw"), CONDURE_SENT)
def test_encode_matches_condure(packet, raw):
    assert encode(packet) == raw


@pytest.mark.parametrize(("packet", "raw"), CONDURE_SENT)
def test_decode_condure_packets(packet, raw):
    # the list-form cancel decodes with id_list set; everything else is equal
    expected = packet
    if len(packet.ids) > 1:
        expected = type(packet)(packet.from_, packet.ids, True)
    assert decode(raw) == expected


@pytest.mark.parametrize(("raw", "packet"), HANDLER_SENT)
def test_decode_handler_packets(raw, packet):
    assert decode(raw) == packet


def test_encode_handler_packets_without_ext():
    # handlers in the captures wrote fields in Condure's order
    for param in HANDLER_SENT:
        raw, packet = param.values
        if param.id in ("req-mode-empty-headers", "multi-id"):
            continue
        assert encode(packet, ext_multi=False) == raw, param.id


def test_single_id_list_form():
    raw = encode(KeepAlive(C, (Ident(b"a", 3),), id_list=True), ext_multi=False)
    assert raw == b"T70:4:from,7:condure,2:id,23:19:2:id,1:a,3:seq,1:3#}]4:type,10:keep-alive,}"
    assert decode(raw) == KeepAlive(C, (Ident(b"a", 3),), id_list=True)
    entry_without_seq = encode(Cancel(ids=(Ident(b"a"), Ident(b"b", 0))), ext_multi=False)
    assert b"2:id,1:a,}" in entry_without_seq
    assert decode(entry_without_seq).ids == (Ident(b"a"), Ident(b"b", 0))


def test_encode_omissions():
    assert encode(Data(), ext_multi=False) == b"T0:}"
    error = Error(C, ids(b"x"), condition=b"bad-request", code=400, body=b"b")
    assert encode(error, ext_multi=False) == (
        b"T68:4:from,7:condure,2:id,1:x,4:type,5:error,9:condition,11:bad-request,}"
    )
    rejected = encode(Error(ids=ids(b"x"), condition=b"rejected"), ext_multi=False)
    assert rejected.endswith(b"9:condition,8:rejected,4:code,1:0#6:reason,0:,4:body,0:,}")
    assert encode(Credit(ids=ids(b"x")), ext_multi=False).endswith(b"7:credits,1:0#}")
    assert encode(Close(ids=ids(b"x"), body=b"no code"), ext_multi=False).endswith(b"5:close,}")
    assert encode(Close(ids=ids(b"x"), code=1000), ext_multi=False).endswith(b"4:code,4:1000#}")
    assert encode(Ping(ids=ids(b"x"), credits=5), ext_multi=False).endswith(b"4:ping,}")
    client = encode(Data(ids=ids(b"x"), uri=b"u", connect_host=b"h", connect_port=1,
                         ignore_policies=True, trust_connect_host=True,
                         ignore_tls_errors=True, follow_redirects=True), ext_multi=False)
    assert client.endswith(b"12:connect-host,1:h,12:connect-port,1:1#15:ignore-policies,4:true!"
                           b"18:trust-connect-host,4:true!17:ignore-tls-errors,4:true!"
                           b"16:follow-redirects,4:true!}")


def test_encode_rejects_non_packets():
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


# -- decoding rules -------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return b"T%d:%b}" % (len(body), body)


def s(value: bytes) -> bytes:
    return b"%d:%b," % (len(value), value)


def i(value: int) -> bytes:
    digits = b"%d" % value
    return b"%d:%b#" % (len(digits), digits)


BASE = s(b"from") + s(H1) + s(b"id") + s(b"1-0-0")


def test_decode_ignores_unknown_keys_and_trailing_bytes():
    raw = frame(BASE + s(b"user-data") + b"8:1:a,1:b,}" + s(b"body") + s(b"x")) + b"garbage"
    assert decode(raw) == Data(H1, ids(b"1-0-0"), body=b"x")


def test_decode_only_reads_fields_of_its_type():
    raw = frame(BASE + s(b"type") + s(b"credit") + s(b"code") + s(b"abc") + s(b"credits") + i(3))
    assert decode(raw) == Credit(H1, ids(b"1-0-0"), credits=3)


def test_decode_error_keeps_extras_only_when_rejected():
    raw = frame(BASE + s(b"type") + s(b"error") + s(b"condition") + s(b"bad") + s(b"code") + i(500))
    assert decode(raw) == Error(H1, ids(b"1-0-0"), condition=b"bad")


def test_decode_close_ignores_reason_without_code():
    raw = frame(BASE + s(b"type") + s(b"close") + s(b"body") + s(b"why"))
    assert decode(raw) == Close(H1, ids(b"1-0-0"))


def test_decode_missing_from_and_id():
    assert decode(frame(s(b"type") + s(b"keep-alive"))) == KeepAlive()
    assert decode(frame(s(b"seq") + i(4))) == Data(ids=(Ident(b"", 4),))


def test_decode_long_from_is_not_an_error():
    assert decode(frame(s(b"from") + s(b"x" * 65))).from_ == b"x" * 65


def test_decode_accepts_ext():
    raw = frame(BASE + s(b"ext") + b"24:5:multi,5:false!1:x,1:y,}")
    assert decode(raw) == Data(H1, ids(b"1-0-0"))


@pytest.mark.parametrize(
    "type_name", [b"data", b"bogus", b"Credit", b"\xc3\xa9"]
)
def test_unknown_type_carries_ids(type_name):
    raw = frame(s(b"from") + s(H1) + s(b"id")
                + b"54:23:2:id,5:0-0-5,3:seq,1:1#}23:2:id,5:1-0-5,3:seq,1:2#}]"
                + s(b"type") + s(type_name))
    with pytest.raises(UnknownType) as info:
        decode(raw)
    assert isinstance(info.value, PacketError)
    assert info.value.ids == (Ident(b"0-0-5", 1), Ident(b"1-0-5", 2))
    assert info.value.from_ == H1
    assert info.value.type_name == type_name


def headers(n: int) -> bytes:
    item = b"%d:%b]" % (len(s(b"a") + s(b"b")), s(b"a") + s(b"b"))
    body = item * n
    return s(b"headers") + b"%d:%b]" % (len(body), body)


def test_decode_headers_limit():
    assert len(decode(frame(BASE + headers(64))).headers) == 64
    with pytest.raises(PacketError, match="64"):
        decode(frame(BASE + headers(65)))


def id_list(n: int) -> bytes:
    entry = b"%d:%b}" % (len(s(b"id") + s(b"x")), s(b"id") + s(b"x"))
    body = entry * n
    return s(b"id") + b"%d:%b]" % (len(body), body)


def test_decode_ids_limit():
    assert len(decode(frame(id_list(128))).ids) == 128
    with pytest.raises(PacketError, match="128"):
        decode(frame(id_list(129)))


REJECTED = {
    "no-T-prefix": b"X" + frame(BASE)[1:],
    "empty": b"",
    "T-only": b"T",
    "not-tnetstring": b"Thello",
    "top-level-list": b"T0:]",
    "top-level-string": b"T1:a,",
    "truncated": frame(BASE)[:-3],
    "non-utf8-key": frame(BASE + s(b"\xff") + s(b"x")),
    "non-string-key": frame(BASE + i(1) + s(b"x")),
    "from-int": frame(s(b"from") + i(1)),
    "from-null": frame(s(b"from") + b"0:~"),
    "id-int": frame(s(b"id") + i(1)),
    "id-map": frame(s(b"id") + b"0:}"),
    "id-entry-string": frame(s(b"id") + b"4:1:a,]"),
    "id-entry-id-int": frame(s(b"id") + b"12:9:2:id,1:1#}]"),
    "id-entry-negative-seq": frame(s(b"id") + b"15:12:3:seq,2:-1#}]"),
    "id-entry-bad-key": frame(s(b"id") + b"12:9:1:\xff,1:a,}]"),
    "seq-string": frame(BASE + s(b"seq") + s(b"1")),
    "seq-negative": frame(BASE + s(b"seq") + i(-1)),
    "seq-too-big": frame(BASE + s(b"seq") + i(2**32)),
    "seq-bool": frame(BASE + s(b"seq") + b"4:true!"),
    "ext-string": frame(BASE + s(b"ext") + s(b"x")),
    "ext-multi-string": frame(BASE + s(b"ext") + b"16:5:multi,4:true,}"),
    "type-int": frame(BASE + s(b"type") + i(1)),
    "type-not-utf8": frame(BASE + s(b"type") + s(b"\xff")),
    "code-string": frame(BASE + s(b"code") + s(b"200")),
    "code-negative": frame(BASE + s(b"code") + i(-200)),
    "more-string": frame(BASE + s(b"more") + s(b"true")),
    "more-int": frame(BASE + s(b"more") + i(1)),
    "stream-string": frame(BASE + s(b"stream") + s(b"true")),
    "credits-negative": frame(BASE + s(b"credits") + i(-1)),
    "credits-too-big": frame(BASE + s(b"credits") + i(2**32)),
    "credit-credits-string": frame(BASE + s(b"type") + s(b"credit") + s(b"credits") + s(b"5")),
    "body-int": frame(BASE + s(b"body") + i(5)),
    "body-list": frame(BASE + s(b"body") + b"0:]"),
    "content-type-int": frame(BASE + s(b"content-type") + i(5)),
    "reason-not-utf8": frame(BASE + s(b"reason") + s(b"\xc3")),
    "method-not-utf8": frame(BASE + s(b"method") + s(b"G\xffT")),
    "uri-not-utf8": frame(BASE + s(b"uri") + s(b"/\xfe")),
    "peer-address-not-utf8": frame(BASE + s(b"peer-address") + s(b"\x80")),
    "peer-port-too-big": frame(BASE + s(b"peer-port") + i(65536)),
    "connect-host-not-utf8": frame(BASE + s(b"connect-host") + s(b"\x80")),
    "connect-port-negative": frame(BASE + s(b"connect-port") + i(-1)),
    "max-size-negative": frame(BASE + s(b"max-size") + i(-1)),
    "timeout-string": frame(BASE + s(b"timeout") + s(b"1")),
    "follow-redirects-int": frame(BASE + s(b"follow-redirects") + i(1)),
    "headers-string": frame(BASE + s(b"headers") + s(b"x")),
    "headers-map": frame(BASE + s(b"headers") + b"0:}"),
    "header-not-list": frame(BASE + s(b"headers") + b"4:1:a,]"),
    "header-one-item": frame(BASE + s(b"headers") + b"7:4:1:a,]]"),
    "header-three-items": frame(BASE + s(b"headers") + b"15:12:1:a,1:b,1:c,]]"),
    "header-value-int": frame(BASE + s(b"headers") + b"11:8:1:a,1:1#]]"),
    "header-name-not-utf8": frame(BASE + s(b"headers") + b"11:8:1:\xff,1:b,]]"),
    "error-condition-not-utf8": frame(BASE + s(b"type") + s(b"error")
                                      + s(b"condition") + s(b"\xff")),
    "error-code-string": frame(BASE + s(b"type") + s(b"error") + s(b"code") + s(b"1")),
    "close-body-not-utf8": frame(BASE + s(b"type") + s(b"close") + s(b"code") + i(1000)
                                 + s(b"body") + s(b"\xff")),
    "close-code-too-big": frame(BASE + s(b"type") + s(b"close") + s(b"code") + i(65536)),
    "ping-credits-negative": frame(BASE + s(b"type") + s(b"ping") + s(b"credits") + i(-5)),
    "pong-body-int": frame(BASE + s(b"type") + s(b"pong") + s(b"body") + i(5)),
    "unknown-type-bad-from": frame(s(b"from") + i(1) + s(b"type") + s(b"bogus")),
}


@pytest.mark.parametrize("raw", REJECTED.values(), ids=REJECTED.keys())
def test_decode_rejects(raw):
    with pytest.raises(PacketError) as info:
        decode(raw)
    assert type(info.value) is PacketError


FAST_POP = codec._fast_pop


@pytest.fixture(scope="module", params=["accelerated", "pure"])
def decoder_path(request):
    """Run a test with and without the optional C tnetstring parser.

    Module-scoped so hypothesis sees one setting for all its examples.
    """
    if request.param == "accelerated" and FAST_POP is None:
        pytest.skip("tnetstring3 C parser not available")
    codec._fast_pop = FAST_POP if request.param == "accelerated" else None
    yield request.param
    codec._fast_pop = FAST_POP


@pytest.mark.parametrize("raw", REJECTED.values(), ids=REJECTED.keys())
def test_decode_rejects_without_accelerator(raw, monkeypatch):
    monkeypatch.setattr(codec, "_fast_pop", None)
    with pytest.raises(PacketError):
        decode(raw)


# -- SUB framing ------------------------------------------------------------------


def test_split_address():
    assert split_address(b"condure T3:1:a,}") == (b"condure", b"T3:1:a,}")
    assert split_address(b" T") == (b"", b"T")
    assert split_address(b"a b c") == (b"a", b"b c")
    with pytest.raises(PacketError):
        split_address(b"condureT3:}")


# -- properties -------------------------------------------------------------------

small_bytes = st.binary(max_size=12)
nonempty = st.binary(min_size=1, max_size=12)
text = st.text(max_size=8).map(str.encode)
nonempty_text = st.text(min_size=1, max_size=8).map(str.encode)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
header_list = st.lists(st.tuples(text, small_bytes), min_size=1, max_size=4).map(tuple)


@st.composite
def common(draw):
    id_list = draw(st.booleans())
    idents = st.builds(Ident, small_bytes, st.none() | u32)
    ident_tuple = tuple(draw(st.lists(idents, max_size=4))) if id_list else (draw(idents),)
    return {"from_": draw(small_bytes), "ids": ident_tuple, "id_list": id_list}


@st.composite
def packets(draw):
    kw = draw(common())
    kind = draw(st.sampled_from(["data", "error", "rejected", "credit", "bare", "close", "ping"]))
    if kind == "data":
        peer_address = draw(st.none() | nonempty_text)
        return Data(
            **kw,
            method=draw(st.none() | nonempty_text),
            uri=draw(st.none() | nonempty_text),
            code=draw(st.none() | st.integers(1, 2**32 - 1)),
            reason=draw(st.none() | nonempty_text),
            headers=draw(st.none() | header_list),
            content_type=draw(st.none() | nonempty),
            body=draw(small_bytes),
            credits=draw(u32),
            more=draw(st.booleans()),
            stream=draw(st.booleans()),
            max_size=draw(st.none() | st.integers(1, 2**32 - 1)),
            timeout=draw(st.none() | st.integers(1, 2**32 - 1)),
            peer_address=peer_address,
            peer_port=None if peer_address is None else draw(u16),
            connect_host=draw(st.none() | nonempty_text),
            connect_port=draw(st.none() | st.integers(1, 2**16 - 1)),
            ignore_policies=draw(st.booleans()),
            trust_connect_host=draw(st.booleans()),
            ignore_tls_errors=draw(st.booleans()),
            follow_redirects=draw(st.booleans()),
        )
    if kind == "error":
        condition = draw(text.filter(lambda c: c != b"rejected"))
        return Error(**kw, condition=condition)
    if kind == "rejected":
        return Error(**kw, condition=b"rejected", code=draw(u32), reason=draw(text),
                     headers=draw(st.none() | header_list), body=draw(small_bytes))
    if kind == "credit":
        return Credit(**kw, credits=draw(u32))
    if kind == "close":
        code = draw(st.none() | u16)
        return Close(**kw, code=code, body=b"" if code is None else draw(text))
    if kind == "ping":
        return draw(st.sampled_from([Ping, Pong]))(**kw, body=draw(small_bytes))
    return draw(st.sampled_from([KeepAlive, Cancel, HandoffStart, HandoffProceed]))(**kw)


@settings(max_examples=400)
@given(packet=packets(), ext_multi=st.booleans())
def test_round_trip(packet, ext_multi, decoder_path):
    if packet.ids == () and not packet.id_list:
        return
    assert decode(encode(packet, ext_multi=ext_multi)) == packet


@given(packet=packets())
def test_encoded_length_prefix(packet):
    raw = encode(packet)
    colon = raw.index(b":")
    assert int(raw[1:colon]) == len(raw) - colon - 2
    assert raw.endswith(b"}")


@settings(max_examples=500)
@given(data=st.binary(max_size=64))
def test_decode_arbitrary_bytes(data, decoder_path):
    for raw in (data, b"T" + data):
        try:
            decode(raw)
        except PacketError:
            pass


@settings(max_examples=500)
@given(packet=packets(), cut=st.integers(0, 400), byte=st.integers(0, 255))
def test_decode_corrupted_packets(packet, cut, byte, decoder_path):
    raw = bytearray(encode(packet))
    raw[cut % len(raw)] = byte
    for candidate in (bytes(raw), bytes(raw[: cut % len(raw)])):
        try:
            decode(candidate)
        except PacketError:
            pass
