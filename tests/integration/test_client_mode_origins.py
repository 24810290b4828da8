"""The client role against real local origins, through real condure
processes (``--zserver-stream``, ``--zserver-req``, one worker, no
listener), the handler played by the test with pyzmq (the helpers of
test_client_mode.py and test_client_mode_more.py):

- origin responses without a body (204, 304 and the answer to HEAD, both
  with a ``Content-Length``: no body is awaited, the connection is reused),
  an HTTP/1.0 origin (reused only with ``Connection: keep-alive``), a body
  delimited by the origin's close (read to the close: a documented
  difference from Condure 1.10), and the pool limit
  (``(req_maxconn + stream_maxconn) / 10``: connections beyond it are
  closed, not pooled);
- WebSocket: ``wss://`` verified with a test CA (``SSL_CERT_FILE``), and
  permessage-deflate offered and used with ``--compression``, not offered
  without it;
- one table with every condition of reference 6.6, each for its cause.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import zmq

from condure.zhttp import decode, encode
from condure.zhttp.packets import Cancel, Close, Credit, Data, Error, Ident, Packet
from tests.harness import liveness, procs
from tests.harness.client_origin import Request, ok
from tests.harness.origin_threads import Held, WsOrigin, ended
from tests.harness.outbound_origin import full_backlog, refusing_port
from tests.integration.test_client_mode import HANDLER, WAIT, Handler
from tests.integration.test_client_mode_more import ScriptedOrigin, echo, failed, started

trustme = pytest.importorskip("trustme")

BUFFER = 8192  # --buffer-size (the default): the largest body packet

# -- condure processes --------------------------------------------------------------------


@dataclass
class Client:
    """A condure process in the client role and the handler driving it."""

    proc: procs.CondureProcess
    handler: Handler
    dealer: zmq.Socket  # req mode
    worker: int  # its one worker's pid
    fds: int  # descriptors the worker held once ready

    def req(self, rid: bytes, uri: str, **fields) -> Packet:
        """One req-mode request; the reply."""
        fields.setdefault("method", b"GET")
        self.dealer.send_multipart([b"", encode(Data(ids=(Ident(rid),), uri=uri.encode(),
                                                     **fields))])
        return self.receive()

    def receive(self) -> Packet:
        """The next req-mode reply."""
        assert self.dealer.poll(int(WAIT * 1000)), "no reply"
        empty, payload = self.dealer.recv_multipart()
        assert empty == b""
        return decode(payload)


@contextlib.contextmanager
def client_process(tmp, *args: str, env: dict[str, str] | None = None):
    base, req = f"ipc://{tmp}/zs", f"ipc://{tmp}/zr"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SSL_CERT_FILE", raising=False)
        mp.delenv("SSL_CERT_DIR", raising=False)
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        proc = procs.start_condure("ours", tmp / "condure", listen=[], workers=1,
                                   extra_args=["--zserver-stream", base,
                                               "--zserver-req", req, *args])
    handler = None
    try:
        handler = Handler(base, bind=False)
        dealer = handler.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(req)
        handler.wait_ready()
        (worker,) = liveness.worker_pids(proc.pid)
        yield Client(proc, handler, dealer, worker, liveness.fd_count(worker))
    finally:
        if handler is not None:
            handler.close()
        assert proc.stop() == 0


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def server_context(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def plain(ca, tmp_path_factory):
    """Defaults; trusts the test CA through SSL_CERT_FILE."""
    tmp = tmp_path_factory.mktemp("origins-plain")
    cafile = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    with client_process(tmp, env={"SSL_CERT_FILE": str(cafile)}) as client:
        yield client


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """One-second stream and req timeouts."""
    with client_process(tmp_path_factory.mktemp("origins-strict"), "--stream-timeout", "1",
                        "--req-timeout", "1") as client:
        yield client


@pytest.fixture(scope="module")
def denying(tmp_path_factory):
    with client_process(tmp_path_factory.mktemp("origins-deny"),
                        "--deny-out-internal") as client:
        yield client


# -- helpers --------------------------------------------------------------------------------


def exchange(handler: Handler, rid: bytes, uri: str, **fields) -> tuple[Data, bytes]:
    """A stream-mode request: its response head and whole body (each body
    packet within the buffer size, only the last without ``more``)."""
    started(handler, rid, uri, **fields)
    head = handler.next(rid)
    assert isinstance(head, Data) and head.code is not None and head.more, head
    assert not head.body
    body, packet = b"", head
    while packet.more:
        packet = handler.next(rid)
        assert isinstance(packet, Data) and packet.code is None, packet
        assert len(packet.body) <= BUFFER
        body += packet.body
    return head, body


def header(packet: Data | Error, name: bytes) -> bytes | None:
    for key, value in packet.headers or ():
        if key.lower() == name:
            return value
    return None


def conns(origin: ScriptedOrigin) -> list[int]:
    """For each request the origin read, which connection it came on."""
    return [r.conn for r in origin.origin.requests]


# -- HTTP/1.x origin responses ------------------------------------------------------------


def no_bodies(request: Request) -> bytes:
    if request.path == b"/204":
        return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    if request.path == b"/304":
        return b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n'
    if request.method == b"HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    return ok(b"after")


def test_responses_without_a_body(plain):
    """204, 304 with a Content-Length and HEAD with one: the response ends at
    its head (for HEAD a difference from Condure 1.10, which waited for the
    length's worth of body) and the same connection serves what follows."""
    handler = plain.handler
    with ScriptedOrigin(no_bodies) as origin:
        url = f"http://127.0.0.1:{origin.port}"
        head, body = exchange(handler, b"nb-204", url + "/204")
        assert head.code == 204 and body == b"" and (b"X-A", b"1") in head.headers
        head, body = exchange(handler, b"nb-304", url + "/304")
        assert head.code == 304 and body == b"" and header(head, b"content-length") == b"10"
        head, body = exchange(handler, b"nb-head", url + "/h", method=b"HEAD")
        assert head.code == 200 and body == b"" and header(head, b"content-length") == b"10"
        assert exchange(handler, b"nb-after", url + "/after")[1] == b"after"
        reply = plain.req(b"nb-req-head", url + "/h", method=b"HEAD")
        assert isinstance(reply, Data) and reply.code == 200 and reply.body == b""
        assert header(reply, b"content-length") == b"10"
        assert plain.req(b"nb-req-after", url + "/after").body == b"after"
        assert conns(origin) == [0] * 6  # one connection throughout
        assert [r.method for r in origin.origin.requests].count(b"HEAD") == 2


def http10(request: Request) -> bytes:
    if request.path == b"/ka":
        return b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nka"
    return b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nplain"


def test_http10_origin_persistent_only_with_keep_alive(plain):
    handler = plain.handler
    with ScriptedOrigin(http10) as origin:
        url = f"http://127.0.0.1:{origin.port}"
        for n, (path, want) in enumerate([("/ka", b"ka"), ("/ka", b"ka"),
                                          ("/plain", b"plain"), ("/ka", b"ka")]):
            head, body = exchange(handler, b"h10-%d" % n, url + path)
            assert head.code == 200 and body == want
        # kept after each keep-alive answer, closed by condure after the
        # plain HTTP/1.0 one (the origin itself keeps it open)
        assert conns(origin) == [0, 0, 0, 1]
        assert ended(origin, 1) == 1 and origin.origin.ended[0].is_set()


def close_delimited(request: Request) -> bytes:
    size = int(request.path[1:])
    return (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
            + bytes(b"0123456789abcdef"[i % 16] for i in range(size)))


def test_close_delimited_body_is_read_to_the_close(plain):
    """Neither Content-Length nor chunked: the body runs to the origin's
    close (RFC 9112 6.3; Condure 1.10 read no body)."""
    size = 5 * BUFFER + 123
    want = bytes(b"0123456789abcdef"[i % 16] for i in range(size))
    with ScriptedOrigin(close_delimited) as origin:
        url = f"http://127.0.0.1:{origin.port}/{size}"
        head, body = exchange(plain.handler, b"cd-stream", url)
        assert head.code == 200 and header(head, b"content-length") is None
        assert body == want
        reply = plain.req(b"cd-req", url)
        assert isinstance(reply, Data) and reply.code == 200 and reply.body == want
        # against small credits: condure stops reading while it has none,
        # so the origin's close waits behind the body
        alive = started(plain.handler, b"cd-slow", url, credits=1000)
        head = plain.handler.next(b"cd-slow")
        assert isinstance(head, Data) and head.code == 200 and head.more
        body, packet, seq = b"", head, 0
        while packet.more:
            packet = plain.handler.next(b"cd-slow")
            assert isinstance(packet, Data) and len(packet.body) <= 1000
            body += packet.body
            if packet.more and packet.body:
                seq += 1
                plain.handler.later(alive.from_, Credit(
                    from_=HANDLER, ids=(Ident(b"cd-slow", seq),), credits=len(packet.body)))
        assert body == want
        assert conns(origin) == [0, 1, 2]


def test_pool_limit(tmp_path):
    """Pool size (req_maxconn + stream_maxconn) / 10 = 2 (reference 6.2
    step 12): of four persistent connections freed at once two are closed
    and two pooled; two later concurrent requests reuse those two.

    In req mode: these limits also make the stream role's PUB high-water
    mark max(20 / 20, 1) = 1 (reference 3.4), at which ZeroMQ drops
    packets published a moment apart; the req ROUTER's is 128."""
    held = Held()
    with client_process(tmp_path, "--stream-maxconn", "10", "--req-maxconn", "10") as client, \
            ScriptedOrigin(held.respond) as origin:
        url = f"http://127.0.0.1:{origin.port}/"
        open_ones: set[int] = set()
        for rounds, n in ((b"a", 4), (b"b", 2)):
            held.want = n
            rids = {b"pool-%s-%d" % (rounds, i) for i in range(n)}
            for rid in rids:
                client.dealer.send_multipart([b"", encode(Data(ids=(Ident(rid),),
                                                               method=b"GET", uri=url.encode()))])
            for _ in range(n):
                reply = client.receive()
                assert isinstance(reply, Data) and reply.code == 200, reply
                assert reply.body.startswith(b"conn ")
                rids.remove(reply.ids[0].id)
            if rounds == b"a":
                assert ended(origin, 2) == 2  # two closed, two pooled
                open_ones = {i for i, e in enumerate(origin.origin.ended) if not e.is_set()}
        assert len(origin.origin.writers) == 4  # no new connection for round b
        assert set(conns(origin)[4:]) == open_ones
        assert sum(e.is_set() for e in origin.origin.ended) == 2


# -- WebSocket ----------------------------------------------------------------------------

def websocket_session(handler: Handler, rid: bytes, uri: str) -> Data:
    """Open, send three messages (text, binary, a long compressible text)
    and close; the 101 packet."""
    alive = started(handler, rid, uri)
    head = handler.next(rid)
    assert isinstance(head, Data) and head.code == 101 and not head.more, head
    credits, seq = head.credits, 1

    def next_packet() -> Packet:
        nonlocal credits
        while True:
            packet = handler.next(rid)
            if not isinstance(packet, Credit):
                return packet
            credits += packet.credits

    long_text = b"all work and no play " * 200  # 4200 bytes
    for body, kind in ((b"hello", b"text"), (b"\x00\xff", b"binary"), (long_text, b"text")):
        while credits < len(body):  # condure's credits for data to the origin
            more = handler.next(rid)
            assert isinstance(more, Credit), more
            credits += more.credits
        handler.later(alive.from_, Data(from_=HANDLER, ids=(Ident(rid, seq),), body=body,
                                        content_type=None if kind == b"text" else kind))
        credits -= len(body)
        seq += 1
        got = next_packet()
        assert isinstance(got, Data) and got.body == b"echo: " + body
        assert got.content_type == kind
    handler.later(alive.from_, Close(from_=HANDLER, ids=(Ident(rid, seq),), code=1000))
    closed = next_packet()
    assert isinstance(closed, Close) and closed.code == 1000, closed
    return head


def test_wss_with_the_test_ca(plain, ca):
    with WsOrigin(server_context(ca)) as ws:
        head = websocket_session(plain.handler, b"wss-1", f"wss://localhost:{ws.port}/s")
        assert header(head, b"sec-websocket-accept") is not None
        assert ws.done.wait(WAIT) and ws.closes == [1000]


def test_no_extension_offered_without_compression(plain):
    with WsOrigin() as ws:
        head = websocket_session(plain.handler, b"ws-plain", f"ws://127.0.0.1:{ws.port}/")
        assert ws.offered == [[]] and ws.agreed == [[]]
        assert header(head, b"sec-websocket-extensions") is None
        assert ws.done.wait(WAIT) and ws.closes == [1000]


def test_permessage_deflate_with_compression(tmp_path):
    """Offered without parameters (reference 10.4); used when the origin
    agrees, with three quarters of the credits (reference 10.3) of a
    session whose origin declined."""
    with client_process(tmp_path, "--compression") as client:
        with WsOrigin() as ws:
            head = websocket_session(client.handler, b"ws-deflate",
                                     f"ws://127.0.0.1:{ws.port}/")
            assert ws.offered == [["permessage-deflate"]]
            assert ws.agreed == [["permessage-deflate"]]
            agreed = header(head, b"sec-websocket-extensions")
            assert agreed is not None and agreed.startswith(b"permessage-deflate")
            assert ws.done.wait(WAIT) and ws.closes == [1000]
        with WsOrigin(compression=None) as ws:
            declined = websocket_session(client.handler, b"ws-declined",
                                         f"ws://127.0.0.1:{ws.port}/")
            assert ws.offered == [["permessage-deflate"]] and ws.agreed == [[]]
            assert header(declined, b"sec-websocket-extensions") is None
            assert ws.done.wait(WAIT) and ws.closes == [1000]
        assert head.credits == declined.credits * 3 // 4 > 0


# -- conditions (reference 6.6) ---------------------------------------------------------

Setup = Callable[[contextlib.ExitStack, pytest.FixtureRequest],
                 "tuple[str, dict, Callable[[], None] | None]"]


def refused(stack, _request):
    port = stack.enter_context(refusing_port())
    return f"http://127.0.0.1:{port}/", {}, None


def hanging_connect(stack, _request):
    port = stack.enter_context(full_backlog())
    return f"http://127.0.0.1:{port}/", {}, None


def silent_origin(stack, _request):
    origin = stack.enter_context(ScriptedOrigin(lambda _r: None))  # reads, never answers

    def check() -> None:
        assert ended(origin, 1) == 1  # condure closed it
    return f"http://127.0.0.1:{origin.port}/", {}, check


def fixed(uri: str, **fields) -> Setup:
    return lambda _stack, _request: (uri, fields, None)


def untrusted_tls(stack, _request):
    origin = stack.enter_context(ScriptedOrigin(echo, server_context(trustme.CA())))
    return f"https://localhost:{origin.port}/", {}, None


def redirect_loop(stack, _request):
    origin = stack.enter_context(ScriptedOrigin(
        lambda _r: b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n"))

    def check() -> None:
        assert len(origin.origin.requests) == 9  # the first and 8 redirects followed
    return f"http://127.0.0.1:{origin.port}/", {"follow_redirects": True}, check


def answering(answer: bytes) -> Setup:
    def setup(stack, _request):
        origin = stack.enter_context(ScriptedOrigin(lambda _r: answer))
        return f"http://127.0.0.1:{origin.port}/", {}, None
    return setup


GARBAGE = answering(b"\x00\x01 SPAM\xff\r\n\r\n")
MANY_FIELDS = answering(b"HTTP/1.1 200 OK\r\n" + b"X-F: 1\r\n" * 65
                        + b"Content-Length: 0\r\n\r\n")
GZIP = answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")


SIXTY_FOUR = tuple((b"X-H%d" % i, b"v") for i in range(64))  # + Host: 65

CASES = [
    # id, process, mode, setup, condition
    ("refused", "strict", "stream", refused, b"remote-connection-failed"),
    ("refused-req", "strict", "req", refused, b"remote-connection-failed"),
    ("connect-timeout", "strict", "stream", hanging_connect, b"connection-timeout"),
    ("connect-timeout-req", "strict", "req", hanging_connect, b"connection-timeout"),
    ("stream-timeout", "strict", "stream", silent_origin, b"connection-timeout"),
    ("req-timeout", "strict", "req", silent_origin, b"connection-timeout"),
    ("bad-url", "strict", "stream", fixed("no-scheme/x"), b"bad-request"),
    ("bad-scheme", "strict", "stream", fixed("ftp://127.0.0.1/x"), b"bad-request"),
    ("ws-scheme-req", "strict", "req", fixed("ws://127.0.0.1/x"), b"bad-request"),
    ("no-host", "strict", "stream", fixed("http:///x"), b"bad-request"),
    ("bad-method", "strict", "stream", fixed("http://127.0.0.1:9/", method=b"GE T"),
     b"bad-request"),
    ("65-headers", "strict", "stream", fixed("http://127.0.0.1:9/", headers=SIXTY_FOUR),
     b"bad-request"),
    ("65-headers-req", "strict", "req", fixed("http://127.0.0.1:9/", headers=SIXTY_FOUR),
     b"bad-request"),
    ("tls-untrusted", "strict", "stream", untrusted_tls, b"tls-error"),
    ("tls-untrusted-req", "strict", "req", untrusted_tls, b"tls-error"),
    ("denied", "denying", "stream", refused, b"policy-violation"),
    ("denied-req", "denying", "req", refused, b"policy-violation"),
    ("redirect-loop", "strict", "stream", redirect_loop, b"too-many-redirects"),
    ("redirect-loop-req", "strict", "req", redirect_loop, b"too-many-redirects"),
    ("dns-failure", "strict", "stream", fixed("http://nonexistent.invalid/"),
     b"undefined-condition"),
    ("dns-failure-req", "strict", "req", fixed("http://nonexistent.invalid/"),
     b"undefined-condition"),
    ("garbage", "strict", "stream", GARBAGE, b"undefined-condition"),
    ("garbage-req", "strict", "req", GARBAGE, b"undefined-condition"),
    ("65-response-headers", "strict", "stream", MANY_FIELDS, b"undefined-condition"),
    ("gzip-transfer-encoding", "strict", "req", GZIP, b"undefined-condition"),
]


@pytest.mark.parametrize("process, mode, setup, condition",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_condition(request, process, mode, setup, condition):
    client: Client = request.getfixturevalue(process)
    rid = request.node.callspec.id.encode()
    with contextlib.ExitStack() as stack:
        uri, fields, check = setup(stack, request)
        if mode == "stream":
            error = failed(client.handler, rid, uri, **fields)
        else:
            error = client.req(rid, uri, **fields)
            assert isinstance(error, Error), error
            assert error.ids == (Ident(rid),)
        assert error.condition == condition
        if check is not None:
            check()


def test_stream_timeout_after_the_head_is_cancel(strict):
    """The stream timeout once the response head went to the handler: no
    condition any more, a ``cancel`` (reference 6.2 step 10)."""
    def stall(_request: Request) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"

    with ScriptedOrigin(stall) as origin:
        started(strict.handler, b"stall", f"http://127.0.0.1:{origin.port}/")
        head = strict.handler.next(b"stall")
        assert isinstance(head, Data) and head.code == 200 and head.more
        part = strict.handler.next(b"stall")
        assert isinstance(part, Data) and part.body == b"only part" and part.more
        assert isinstance(strict.handler.next(b"stall"), Cancel)
        assert ended(origin, 1) == 1


@pytest.mark.parametrize("process", ["strict", "denying"])
def test_failures_leave_nothing_behind(request, process):
    """After the table (and the stall) above: the same worker, holding the
    descriptors it held when it was ready (no origin connection leaked on
    a failure path; nothing of these is pooled)."""
    client: Client = request.getfixturevalue(process)
    assert liveness.worker_pids(client.proc.pid) == [client.worker]
    assert liveness.settle_fd_count(client.worker, client.fds) == client.fds
