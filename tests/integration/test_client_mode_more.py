"""More of the client role end to end, through one real condure process
(``--zserver-stream`` beside its usual listener and ``--zclient-stream``)
with the handler played by the test with pyzmq (the helpers of
test_client_mode.py) and real origins on loopback in threads:

- HTTPS with a test CA (trustme): verified, wrong name -> ``tls-error``,
  ``ignore-tls-errors``, ``trust-connect-host``. Condure has no option for an
  origin CA file; its verifying context loads OpenSSL's default verify
  paths, so the process is started with ``SSL_CERT_FILE`` naming the CA.
- WebSocket to a ``websockets`` origin: the 101 packet with credits,
  messages both ways, close; a 403 answer -> ``rejected`` with code,
  headers and body.
- Redirects: followed, the limit, POST -> GET on 303, not followed without
  ``follow-redirects``.
- Conditions: refused -> ``remote-connection-failed``, bad URL ->
  ``bad-request``.
- Keep-alive: two sequential requests share one origin connection.
- Both roles at once: a request to the listener answered by a scripted
  handler while the same process fetches from an origin for this one.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest

from condure.zhttp import tnetstring
from condure.zhttp.packets import Close, Credit, Data, Error, Ident, KeepAlive
from tests.harness import procs
from tests.harness.client_origin import Origin, Request, ok
from tests.harness.http_client import connect, request
from tests.harness.origin_threads import WsOrigin
from tests.integration.test_client_mode import HANDLER, WAIT, Handler, response

trustme = pytest.importorskip("trustme")

# -- origins in threads -----------------------------------------------------------------


class ScriptedOrigin:
    """client_origin.Origin (optionally TLS) on its own loop in a thread."""

    def __init__(self, respond, context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.origin = asyncio.run_coroutine_threadsafe(
            Origin(respond, context).start(), self.loop).result(WAIT)
        self.port = self.origin.port

    async def _stop(self) -> None:
        # condure may still hold a pooled connection: drop ours at once
        # (a TLS close would wait for its close_notify)
        for writer in self.origin.writers:
            writer.transport.abort()
        await self.origin.stop()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    def __enter__(self) -> ScriptedOrigin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def echo(request: Request) -> bytes:
    return ok(b"%s %s got %d bytes: %s" % (request.method, request.path,
                                           len(request.body), request.body))


# -- the condure process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_context(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def condure(ca, tmp_path_factory):
    """One process: a listener (+ --zclient-stream) and --zserver-stream;
    it trusts the test CA through SSL_CERT_FILE; yields (proc, handler)."""
    tmp = tmp_path_factory.mktemp("client-more")
    cafile = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    base = f"ipc://{tmp}/zs"
    proc = handler = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(cafile))
        mp.delenv("SSL_CERT_DIR", raising=False)
        proc = procs.start_condure("ours", tmp / "condure", extra_args=["--zserver-stream", base])
    try:
        handler = Handler(base, bind=False)
        handler.wait_ready()
        yield proc, handler
    finally:
        if handler is not None:
            handler.close()
        assert proc.stop() == 0


def started(handler: Handler, rid: bytes, uri: str, **fields) -> KeepAlive:
    handler.first(rid, uri, **fields)
    alive = handler.next(rid)
    assert isinstance(alive, KeepAlive) and alive.ids == (Ident(rid, 0),), alive
    return alive


def next_skipping_credits(handler: Handler, rid: bytes):
    """The next packet for ``rid`` that is not a ``credit`` (condure returns
    credits as the handler's messages reach the origin)."""
    while True:
        packet = handler.next(rid)
        if not isinstance(packet, Credit):
            return packet


def failed(handler: Handler, rid: bytes, uri: str, **fields) -> Error:
    started(handler, rid, uri, **fields)
    error = handler.next(rid)
    assert isinstance(error, Error), error
    return error


# -- HTTPS --------------------------------------------------------------------------------


def test_https_verified_with_the_test_ca(condure, tls_context):
    _proc, handler = condure
    with ScriptedOrigin(echo, tls_context) as origin:
        started(handler, b"tls-ok", f"https://localhost:{origin.port}/secure")
        _head, body = response(handler, b"tls-ok")
        assert body == b"GET /secure got 0 bytes: "
        # the URL host names a certificate name; connect-host only says where
        started(handler, b"tls-ok-2", "https://origin.test/by-name",
                connect_host=b"127.0.0.1", connect_port=origin.port)
        assert response(handler, b"tls-ok-2")[1] == b"GET /by-name got 0 bytes: "


def test_https_wrong_name_is_tls_error_unless_ignored(condure, tls_context):
    _proc, handler = condure
    with ScriptedOrigin(echo, tls_context) as origin:
        error = failed(handler, b"tls-bad", "https://wrong.test/x",
                       connect_host=b"127.0.0.1", connect_port=origin.port)
        assert error.condition == b"tls-error"
        started(handler, b"tls-ignored", "https://wrong.test/x",
                connect_host=b"127.0.0.1", connect_port=origin.port, ignore_tls_errors=True)
        assert response(handler, b"tls-ignored")[1] == b"GET /x got 0 bytes: "
        assert origin.origin.requests[-1].headers[b"host"] == b"wrong.test"


def test_https_trust_connect_host(condure, tls_context):
    _proc, handler = condure
    with ScriptedOrigin(echo, tls_context) as origin:
        error = failed(handler, b"tch-no", "https://www.example.com/t",
                       connect_host=b"localhost", connect_port=origin.port)
        assert error.condition == b"tls-error"
        started(handler, b"tch-yes", "https://www.example.com/t",
                connect_host=b"localhost", connect_port=origin.port, trust_connect_host=True)
        assert response(handler, b"tch-yes")[1] == b"GET /t got 0 bytes: "
        assert origin.origin.requests[-1].headers[b"host"] == b"www.example.com"


# -- WebSocket ----------------------------------------------------------------------------


def test_websocket_messages_both_ways_and_close(condure):
    _proc, handler = condure
    ws = WsOrigin()
    try:
        rid = b"ws-1"
        alive = started(handler, rid, f"ws://127.0.0.1:{ws.port}/chat?room=1", credits=1000)
        head = handler.next(rid)
        assert isinstance(head, Data) and head.code == 101 and not head.more, head
        assert head.credits > 0
        names = {k.lower() for k, _v in head.headers or ()}
        assert b"sec-websocket-accept" in names
        assert ws.paths == ["/chat?room=1"]

        to = alive.from_
        handler.later(to, Data(from_=HANDLER, ids=(Ident(rid, 1),), body=b"hello"))
        text = next_skipping_credits(handler, rid)
        assert isinstance(text, Data) and text.body == b"echo: hello"
        assert text.content_type in (None, b"text")
        handler.later(to, Data(from_=HANDLER, ids=(Ident(rid, 2),), body=b"\x00\xff",
                               content_type=b"binary"))
        binary = next_skipping_credits(handler, rid)
        assert isinstance(binary, Data) and binary.body == b"echo: \x00\xff"
        assert binary.content_type == b"binary"

        handler.later(to, Close(from_=HANDLER, ids=(Ident(rid, 3),), code=1000, body=b"bye"))
        closed = next_skipping_credits(handler, rid)
        assert isinstance(closed, Close) and closed.code == 1000, closed
        assert ws.done.wait(WAIT) and ws.closes == [1000]
    finally:
        ws.close()


def test_websocket_rejected_upgrade(condure):
    _proc, handler = condure

    def refuse(_request: Request) -> bytes:
        return b"HTTP/1.1 403 Forbidden\r\nX-Why: test\r\nContent-Length: 4\r\n\r\nnope"

    with ScriptedOrigin(refuse) as origin:
        error = failed(handler, b"ws-403", f"ws://127.0.0.1:{origin.port}/no")
        assert error.condition == b"rejected"
        assert error.code == 403 and error.reason == b"Forbidden"
        assert (b"X-Why", b"test") in (error.headers or ())
        assert error.body == b"nope"
        seen = origin.origin.requests[0]
        assert seen.headers[b"upgrade"].lower() == b"websocket"


# -- redirects ----------------------------------------------------------------------------


def redirecting(request: Request) -> bytes:
    path = request.path
    if path.startswith(b"/hop/"):
        left = int(path[5:])
        target = b"/final" if left == 0 else b"/hop/%d" % (left - 1)
        return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % target
    if path == b"/see-other":
        return b"HTTP/1.1 303 See Other\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n"
    return echo(request)


def test_redirects_followed_limited_and_post_to_get(condure):
    _proc, handler = condure
    with ScriptedOrigin(redirecting) as origin:
        url = f"http://127.0.0.1:{origin.port}"
        started(handler, b"redir-3", url + "/hop/3", follow_redirects=True)
        _head, body = response(handler, b"redir-3")
        assert body == b"GET /final got 0 bytes: "
        assert [r.path for r in origin.origin.requests] == [
            b"/hop/3", b"/hop/2", b"/hop/1", b"/hop/0", b"/final"]

        error = failed(handler, b"redir-lim", url + "/hop/20", follow_redirects=True)
        assert error.condition == b"too-many-redirects"

        started(handler, b"redir-303", url + "/see-other", method=b"POST", body=b"payload",
                follow_redirects=True)
        assert response(handler, b"redir-303")[1] == b"GET /final got 0 bytes: "
        post = [r for r in origin.origin.requests if r.path == b"/see-other"][-1]
        assert post.method == b"POST" and post.body == b"payload"

        started(handler, b"redir-off", url + "/hop/0")  # no follow-redirects
        head = handler.next(b"redir-off")
        assert isinstance(head, Data) and head.code == 302
        assert (b"Location", b"/final") in head.headers


# -- conditions ---------------------------------------------------------------------------


def test_refused_and_bad_url_conditions(condure):
    _proc, handler = condure
    port = procs.free_port()  # nothing listens there
    error = failed(handler, b"refused", f"http://127.0.0.1:{port}/")
    assert error.condition == b"remote-connection-failed"
    for n, uri in enumerate(["nothing-here", "ftp://127.0.0.1/x", "http:///no-host"]):
        error = failed(handler, b"bad-%d" % n, uri)
        assert error.condition == b"bad-request", uri


# -- keep-alive ---------------------------------------------------------------------------


def test_keep_alive_connection_is_reused(condure, tmp_path):
    """One worker: two sequential requests, one origin connection."""
    base = f"ipc://{tmp_path}/zs"
    handler = None
    proc = procs.start_condure("ours", tmp_path / "condure", listen=[], workers=1,
                               extra_args=["--zserver-stream", base])
    try:
        handler = Handler(base, bind=False)
        handler.wait_ready()
        with ScriptedOrigin(echo) as origin:
            url = f"http://127.0.0.1:{origin.port}"
            for n in range(2):
                rid = b"reuse-%d" % n
                started(handler, rid, f"{url}/r{n}")
                assert response(handler, rid)[1] == b"GET /r%d got 0 bytes: " % n
            assert [r.conn for r in origin.origin.requests] == [0, 0]
            assert len(origin.origin.writers) == 1
    finally:
        if handler is not None:
            handler.close()
        assert proc.stop() == 0


def test_keep_alive_reuse_per_worker(condure):
    """Two workers (the module's process): each has its own pool, so four
    sequential requests use at most two connections."""
    _proc, handler = condure
    with ScriptedOrigin(echo) as origin:
        url = f"http://127.0.0.1:{origin.port}"
        for n in range(4):
            rid = b"reuse-w-%d" % n
            started(handler, rid, f"{url}/w{n}")
            assert response(handler, rid)[1] == b"GET /w%d got 0 bytes: " % n
        assert len(origin.origin.requests) == 4
        assert len(origin.origin.writers) <= 2


# -- both roles in one process ------------------------------------------------------------


def test_one_process_serves_both_roles(condure, tmp_path):
    proc, handler = condure
    server_handler = procs.start_handler(proc.base, tmp_path, name="both-roles")
    try:
        with ScriptedOrigin(echo) as origin:
            # client role first packet out, then the server role exchange, then
            # the client role's answer: both are live in the process at once
            started(handler, b"both", f"http://127.0.0.1:{origin.port}/out")
            with connect(proc.port) as conn:
                conn.send(request("GET", "/in"))
                pkt = server_handler.recv(timeout=WAIT)
                assert pkt.get("uri").endswith(b"/in")
                server_handler.reply(pkt, body=b"served")
                resp = conn.read_response(timeout=WAIT)
            assert resp.code == 200 and resp.body == b"served"
            assert response(handler, b"both")[1] == b"GET /out got 0 bytes: "
    finally:
        server_handler.close()


def test_a_later_packet_of_unknown_type_ends_the_exchange(condure):
    """As in the server role (reference 4.5): the session it names ends,
    its origin connection is closed, the handler is sent nothing."""
    _proc, handler = condure
    ws = WsOrigin()
    try:
        rid = b"ws-unknown"
        alive = started(handler, rid, f"ws://127.0.0.1:{ws.port}/u", credits=1000)
        head = handler.next(rid)
        assert isinstance(head, Data) and head.code == 101, head
        bogus = b"T" + tnetstring.dumps({b"from": HANDLER, b"id": rid, b"seq": 1,
                                        b"type": b"bogus"})
        handler.router.send_multipart([alive.from_, b"", bogus])
        assert ws.done.wait(WAIT), "the origin connection stayed open"
        assert ws.closes == [1006]  # dropped, no close frame: a handler-caused end
        # nothing for the handler, and the session is gone: a later data
        # packet is ignored
        handler.later(alive.from_, Data(from_=HANDLER, ids=(Ident(rid, 2),), body=b"x"))
        assert not handler.sub.poll(500), handler.sub.recv()
    finally:
        ws.close()
