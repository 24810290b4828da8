"""The one-step simple request and whole response
(condure/session/http_simple.py) against the general path as the oracle.

The general path is reached with the same bytes in two reads (a first byte,
then the rest): once a read is partial, the one-step path declines. Both
sessions must then show the same actions, the same state, and answer the
same handler packet with the same bytes; a request packet sent pre-encoded
must be byte for byte what ``zhttp.encode`` makes of it. A handler packet
given to ``receive_packet`` (one step when it is a whole response) and to
``_any_packet`` (the general path) must leave two like sessions alike.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session import http_simple
from condure.session.actions import Send, Write
from condure.session.head import MAX_HEADERS
from condure.session.http import HttpSession
from condure.zhttp import encode
from condure.zhttp.packets import Data, Ident
from condure.zhttp.plain import encode_request

FIELDS = [
    b"Host: example.com", b"Host: 127.0.0.1:8080", b"host: ex\xc3\xa9mple", b"Host: ex\xffample",
    b"HOST:a", b"Host:", b"Host: a@b", b"Host: a b", b"Host: [::1]:80", b"Connection: close",
    b"Connection: keep-alive",
    b"connection: Keep-Alive, Upgrade", b"Connection: ,,close ,", b"Upgrade: websocket",
    b"Upgrade: h2c", b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked",
    b"X-Empty: ", b"X-Sp:   v  w  ", b"X-Tab:\tv\t", b"Bad Name: x", b"X: a\x00b", b" X: lead",
    b"Accept: */*", b"User-Agent: wrk", b"X-Long: " + b"v" * 300, b"X-Utf8: \xe2\x82\xac",
]


def session(buffer_size: int) -> HttpSession:
    counter = iter(range(1_000_000))
    return HttpSession(instance_id=b"condure", new_id=lambda: b"0-0-%d" % next(counter), now=0.0,
                       buffer_size=buffer_size, scheme=b"http", peer_address=b"127.0.0.1",
                       peer_port=40000)


def state(s: HttpSession) -> tuple:
    r = s.response
    return (s.state, s.rid, s.out_seq, s.in_seq, s.head_deadline, s.stream_deadline,
            s.session_deadline, s.keep_alive_asked, s.client_gone, s.body.state, s.hold,
            s.handler, s.served, r.http11, r.is_head, r.state, bytes(s.reader.inbuf),
            s.reader.parser is None, s.wants_read, s.deadline, s.persistent)


def compare_actions(fast: list, general: list) -> None:
    assert len(fast) == len(general), (fast, general)
    for a, b in zip(fast, general, strict=True):
        if isinstance(a, Send):
            assert isinstance(b, Send)
            assert (a.packet, a.to) == (b.packet, b.to)
            if a.wire is not None:
                assert a.wire == encode(a.packet)
        else:
            assert a == b


def read_once_and_twice(fast, general, data: bytes) -> None:
    """``data`` in one read to ``fast``; to ``general`` in two, a first
    byte and the rest (a partial read always takes the general path);
    their actions must match."""
    fast.receive_data(data, 1.0)
    general.receive_data(data[:1], 1.0)
    general.receive_data(data[1:], 1.0)
    compare_actions(fast.take_actions(), general.take_actions())


def sent_after_a_partial_read(s) -> Send:
    """The request packet of a simple head read in two pieces."""
    s.receive_data(b"G", 1.0)
    s.receive_data(b"ET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", 1.0)
    (send,) = s.take_actions()
    return send


SIMPLE_FIELDS = [f for f in FIELDS if b":" in f and not f.startswith(b" ") and b"\x00" not in f
                 and b"Bad Name" not in f]


@st.composite
def simple_requests(draw) -> bytes:
    """Heads the one-step path should take (or just miss: a second Host, a
    body or upgrade field, too many fields)."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE", b"CONNECT"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/" + b"a" * 4070, b"/" + b"a" * 5000,
                                   b"@e/x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    fields = draw(st.lists(st.sampled_from(SIMPLE_FIELDS), max_size=6))
    if draw(st.integers(0, 3)) == 0:  # around MAX_HEADERS
        many = draw(st.integers(MAX_HEADERS - 2, MAX_HEADERS + 1))
        fields += [b"X-Many: %d" % i for i in range(many)]
    return b"\r\n".join([method + b" " + target + b" " + version, *fields]) + b"\r\n\r\n"


@st.composite
def requests(draw) -> bytes:
    if draw(st.booleans()):
        return draw(simple_requests())
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"M-SEARCH", b"get",
                                   b"G@T"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/%20x", b"*", b"http://example.com/x",
                                   b"/" + b"a" * 5000, b"/\xff", b"//x", b"e:443", b"x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0",
                                    b"http/1.1"]))
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=MAX_HEADERS + 2))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    head = eol.join([method + b" " + target + b" " + version, *fields]) + eol + b"\r\n"
    lead = draw(st.sampled_from([b"", b"", b"\r\n"]))
    tail = draw(st.sampled_from([b"", b"", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"xx"]))
    return lead + head + tail


@settings(max_examples=400, deadline=None)
@given(data=requests(), buffer_size=st.sampled_from([64, 512, 8192]),
       code=st.sampled_from([200, 204, 304]), more=st.booleans())
def test_one_read_acts_as_two(data: bytes, buffer_size: int, code: int, more: bool) -> None:
    fast, general = session(buffer_size), session(buffer_size)
    read_once_and_twice(fast, general, data)
    assert state(fast) == state(general)
    if fast.rid is not None and fast.out_seq == 1:  # a request went to the handler
        answer = Data(from_=b"handler", ids=(Ident(fast.rid, 0),), code=code, reason=b"OK",
                      headers=((b"Content-Type", b"text/plain"),), body=b"hello", more=more)
        fast.receive_packet(answer, answer.ids[0], 2.0)
        general._any_packet(answer, answer.ids[0], 2.0)
        for s in (fast, general):
            s.output_flushed(2.0)
        compare_actions(fast.take_actions(), general.take_actions())
        assert state(fast) == state(general)


def test_a_simple_read_takes_the_one_step_path() -> None:
    """(So that the test above compares two paths, not one with itself.)"""
    s = session(8192)
    s.receive_data(b"GET /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", 1.0)
    (send,) = s.take_actions()
    assert send.wire is not None and send.wire == encode(send.packet)
    assert send.packet.uri == b"http://example.com/x" and not s.keep_alive_asked
    assert sent_after_a_partial_read(session(8192)).wire is None


@settings(max_examples=300, deadline=None)
@given(from_=st.binary(max_size=12), rid=st.binary(max_size=30),
       seq=st.sampled_from([None, 0, 1, 2**32 - 1]), method=st.binary(max_size=8),
       uri=st.binary(max_size=40),
       headers=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=5),
       credits=st.integers(0, 2**32 - 1), stream=st.booleans(),
       peer=st.sampled_from([None, b"", b"127.0.0.1", b"::1"]),
       port=st.sampled_from([None, 0, 1, 65535]))
def test_encode_request_is_encode(from_, rid, seq, method, uri, headers, credits, stream, peer,
                                  port):
    packet = Data(from_=from_, ids=(Ident(rid, seq),), method=method, uri=uri,
                  headers=tuple(headers) or None, credits=credits, stream=stream,
                  peer_address=peer, peer_port=port)
    assert encode_request(from_, rid, seq, method, uri, tuple(headers), credits, stream,
                          peer, port) == encode(packet)


RESPONSE_HEADERS = [
    (b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"content-length", b" 12 "),
    (b"Content-Length", b"x"), (b"Content-Length", b""), (b"Connection", b"close"),
    (b"Transfer-Encoding", b"chunked"), (b"X-Long", b"v" * 300), (b"X-Utf8", b"\xe2\x82\xac"),
    (b"X-A", b"a\r\nSet-Cookie: b"), (b"X A", b"1"), (b"X-Nul", b"a\x00"),
]
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /pa",
]


@settings(max_examples=1000, deadline=None)
@given(request=st.sampled_from(REQUESTS), buffer_size=st.sampled_from([64, 256, 8192, 8192]),
       code=st.sampled_from([200] * 5 + [0, 99, 100, 101, 201, 204, 304, 404, 599, 600]),
       reason=st.sampled_from([None, b"", b"OK", b"Not Found", b"O\r\nK"]),
       headers=st.lists(st.sampled_from(RESPONSE_HEADERS), max_size=3),
       body=st.sampled_from([b"", b"hello", b"hello", b"x" * 200, b"x" * 9000]),
       # (weighted towards what the one-step path takes)
       more=st.sampled_from([False] * 4 + [True]), seq=st.sampled_from([0] * 6 + [1, None]),
       from_=st.sampled_from([b"handler"] * 6 + [b"", b"h" * 65]),
       gone=st.sampled_from([False] * 6 + [True]), leaving=st.sampled_from([False] * 4 + [True]),
       credits=st.sampled_from([0, 0, 0, 10]))
def test_a_whole_response_acts_as_the_general_path(request, buffer_size, code, reason, headers,
                                                   body, more, seq, from_, gone, leaving,
                                                   credits) -> None:
    fast, general = session(buffer_size), session(buffer_size)
    for s in (fast, general):
        s.receive_data(request, 1.0)
        if gone:
            s.receive_data(b"", 1.5)
        if leaving:
            s.going_away(1.5)
        s.take_actions()
    packet = Data(from_=from_, ids=(Ident(fast.rid, seq),), code=code, reason=reason,
                  headers=tuple(headers) or None, body=body, more=more, credits=credits)
    fast.receive_packet(packet, packet.ids[0], 2.0)
    general._any_packet(packet, packet.ids[0], 2.0)
    compare_actions(fast.take_actions(), general.take_actions())
    assert state(fast) == state(general)
    r, g = fast.response, general.response
    assert ((r.credits, r.unflushed, r.discard_body, r.chunked, r.close_delimited, r.returned)
            == (g.credits, g.unflushed, g.discard_body, g.chunked, g.close_delimited, g.returned))
    for s in (fast, general):  # and whatever comes next
        s.output_flushed(3.0)
        s.receive_data(b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n", 3.0)
    compare_actions(fast.take_actions(), general.take_actions())
    assert state(fast) == state(general)


def test_a_whole_response_takes_the_one_step_path() -> None:
    """(So that the test above compares two paths, not one with itself.)"""
    s = session(8192)
    s.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1.0)
    s.take_actions()
    rid = s.rid
    packet = Data(from_=b"handler", ids=(Ident(rid, 0),), code=200, reason=b"OK",
                  headers=((b"Content-Type", b"text/plain"),), body=b"hello")
    assert http_simple.answer(s, packet, packet.ids[0], 2.0)
    assert s.take_actions() == [Write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                      b"Content-Length: 5\r\n\r\nhello",
                                          ends_response=True)]
    assert s.served == 1 and s.rid != rid and s.handler is None and s.in_seq == 0
