"""The client role keeping one exchange out of the next, through a real
condure process (``--zserver-stream``/``--zserver-req``, one worker) with
real origins in threads and the handler played by the test (the helpers of
test_client_mode*.py):

- a handler's ``Content-Length`` counted against its body: a body longer
  or shorter than it is never written (``undefined-condition``), the
  origin connection is closed, not pooled, so the next session gets its
  own answer and not that of a request smuggled in the tail; a value that
  is not 1*DIGIT is refused; the fault is logged as a warning;
- a ``101`` to a plain request: that connection is not reused;
- a non-ASCII host, path and query reach the origin IDNA- and
  percent-encoded, as Condure 1.10 and zurl send them;
- credentials are not carried by a redirect to another origin.
"""

from __future__ import annotations

import pytest

from condure.zhttp.packets import Credit, Data, Error, Ident
from tests.harness.client_origin import Request, ok
from tests.harness.origin_threads import ended
from tests.integration.test_client_mode import HANDLER
from tests.integration.test_client_mode_more import ScriptedOrigin, echo, failed, started
from tests.integration.test_client_mode_origins import client_process, conns, exchange

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with client_process(tmp_path_factory.mktemp("client-rules")) as c:
        yield c


def post(value: bytes, body: bytes, **fields) -> dict:
    return dict(method=b"POST", headers=((b"Content-Length", value),), body=body, **fields)


def overrun_streamed(handler, rid: bytes, url: str, value: bytes, first: bytes,
                     later: bytes, more: bool) -> Error:
    """A streamed POST declaring ``value``: ``first`` in the first packet,
    then ``later`` in the next (``more``); what condure answered."""
    alive = started(handler, rid, url, **post(value, first, more=True))
    credit = handler.next(rid)
    assert isinstance(credit, Credit), credit
    handler.later(alive.from_, Data(from_=HANDLER, ids=(Ident(rid, 1),), body=later,
                                    more=more))
    error = handler.next(rid)
    while isinstance(error, Credit):
        error = handler.next(rid)
    assert isinstance(error, Error), error
    return error


def test_handler_content_length_frames_the_request_body(tmp_path):
    """Probe p3 (A) and p15: Condure 1.10 wrote the handler's length and
    every body byte, so the tail went to the origin as a second request
    whose answer the next session on the pooled connection received."""
    with client_process(tmp_path) as c, ScriptedOrigin(echo) as origin:
        handler = c.handler
        url = f"http://127.0.0.1:{origin.port}"
        for rid, value, body in ((b"cl-long", b"3", b"abc" + SMUGGLED),
                                 (b"cl-short", b"30", b"hello"),
                                 (b"cl-list", b"5, 5", b"hello"),
                                 (b"cl-sign", b"+5", b"hello")):
            error = failed(handler, rid, url + "/post", **post(value, body))
            assert error.condition == b"undefined-condition", rid
        assert not origin.origin.requests  # nothing was written

        error = overrun_streamed(handler, b"cl-past", url + "/post", b"4", b"ab",
                                 b"cd" + SMUGGLED, more=True)
        assert error.condition == b"undefined-condition"
        error = overrun_streamed(handler, b"cl-end-short", url + "/post", b"10", b"ab",
                                 b"cd", more=False)
        assert error.condition == b"undefined-condition"
        assert ended(origin, 2) == 2  # both connections closed by condure

        for n in range(2):  # the next sessions get their own answers
            assert exchange(handler, b"cl-next-%d" % n, url + "/next")[1] == (
                b"GET /next got 0 bytes: ")
        assert [r.path for r in origin.origin.requests] == [b"/next", b"/next"]
        assert conns(origin) == [2, 2]
        warnings = [line for line in c.proc.output().splitlines() if "broke a rule" in line]
        assert len(warnings) == 1 and "[WARN]" in warnings[0], warnings
        assert "Content-Length" in warnings[0]


def switching(request: Request) -> bytes:
    if request.path == b"/switch":
        return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    return echo(request)


def test_101_to_a_plain_request_is_not_reused(client):
    """Probe p3 (B): Condure 1.10 pooled the switched connection and wrote
    the next session's request into the other protocol."""
    with ScriptedOrigin(switching) as origin:
        url = f"http://127.0.0.1:{origin.port}"
        head, body = exchange(client.handler, b"sw-101", url + "/switch")
        assert head.code == 101 and body == b""
        assert exchange(client.handler, b"sw-next", url + "/next")[1] == (
            b"GET /next got 0 bytes: ")
        assert conns(origin) == [0, 1]
        assert ended(origin, 1) >= 1


def where(request: Request) -> bytes:
    return ok(b"%s %s" % (request.headers.get(b"host", b"-"), request.path))


def test_non_ascii_urls_are_encoded(client):
    """Probe p18: Condure 1.10 (WHATWG URL parsing) and zurl send these;
    condure refused them with bad-request."""
    with ScriptedOrigin(where) as origin:
        port = origin.port
        via = dict(connect_host=b"127.0.0.1", connect_port=port)
        idn = f"xn--bcher-kva.example:{port}".encode()
        _head, body = exchange(client.handler, b"idn", f"http://bücher.example:{port}/x",
                               **via)
        assert body == idn + b" /x"
        _head, body = exchange(client.handler, b"utf8", f"http://127.0.0.1:{port}/café?q=é")
        assert body == b"127.0.0.1:%d /caf%%C3%%A9?q=%%C3%%A9" % port
        _head, body = exchange(client.handler, b"space", f"http://127.0.0.1:{port}/a b?c d")
        assert body == b"127.0.0.1:%d /a%%20b?c%%20d" % port
        reply = client.req(b"idn-req", f"http://BÜCHER.example:{port}/ü", **via)
        assert isinstance(reply, Data) and reply.body == idn + b" /%C3%BC"
        error = failed(client.handler, b"crlf", f"http://127.0.0.1:{port}/a\r\nX-Evil: 1")
        assert error.condition == b"bad-request"


def test_credentials_stay_with_their_origin(client):
    """Probe p2: Condure 1.10 sent Authorization, Proxy-Authorization and
    Cookie on to whatever host a redirect named."""
    with ScriptedOrigin(echo) as other:
        def hop(request: Request) -> bytes:
            target = (b"/second" if request.path == b"/first"
                      else b"http://127.0.0.1:%d/third" % other.port)
            return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % target

        with ScriptedOrigin(hop) as first:
            headers = ((b"Authorization", b"Bearer secret"), (b"Cookie", b"s=1"),
                       (b"Proxy-Authorization", b"Basic eDp5"), (b"X-Keep", b"1"))
            _head, body = exchange(client.handler, b"creds",
                                   f"http://127.0.0.1:{first.port}/first",
                                   headers=headers, follow_redirects=True)
            assert body == b"GET /third got 0 bytes: "
            same = [r.headers for r in first.origin.requests]
            assert [h.get(b"authorization") for h in same] == [b"Bearer secret"] * 2
            assert [h.get(b"cookie") for h in same] == [b"s=1"] * 2
            (moved,) = [r.headers for r in other.origin.requests]
            assert moved.get(b"x-keep") == b"1"
            assert not {b"authorization", b"cookie", b"proxy-authorization"} & set(moved)


def test_handler_faults_are_warned_about(tmp_path):
    """A wrong seq ends the exchange with nothing sent to the handler (as in
    Condure); the operator gets the server role's throttled warning, where
    Condure 1.10 logged it at debug level only."""
    with client_process(tmp_path) as c, ScriptedOrigin(echo) as origin:
        url = f"http://127.0.0.1:{origin.port}/held"
        for n in range(3):
            rid = b"seq-%d" % n
            alive = started(c.handler, rid, url, **post(b"4", b"ab", more=True))
            assert isinstance(c.handler.next(rid), Credit)
            c.handler.later(alive.from_, Data(from_=HANDLER, ids=(Ident(rid, 5),), body=b"cd"))
        assert ended(origin, 3) == 3
        assert not c.handler.sub.poll(300)  # nothing for the handler
        warnings = [line for line in c.proc.output().splitlines() if "broke a rule" in line]
        assert len(warnings) == 1 and "[WARN]" in warnings[0], warnings
        assert "bad seq 5, expected 1" in warnings[0]
