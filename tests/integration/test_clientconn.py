"""condure.net.clientconn: client sessions driven end to end against real
origins on 127.0.0.1, in the test's own event loop, with the real
connector and pool. The host (tests/harness/client_origin.py) is the fake
at the I/O seam: it records the packets published to handlers and the
req-mode replies, and keeps one ``call_at`` timer per exchange.

Covered: GET with a Content-Length and a chunked response, a POST body
sent in several handler packets against credits, keep-alive reuse of the
same socket through the pool, an origin that closes (not pooled), refused
connects, the deny list, HTTPS verified and with a wrong name, a followed
redirect, req mode (whole response; timeout), a handler cancel in the
middle of a response, a cancel while connecting, a session that raises.
Every test checks that no descriptor is left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import pytest

from condure.net import outbound as net
from condure.net.clientconn import ClientConn, condition_of, net_target
from condure.net.outbound import Connector
from condure.net.pool import Pool
from condure.session.client_http import ClientHttpSession
from condure.session.client_req import ClientReqSession
from condure.session.outbound import Condition, parse_target
from condure.zhttp.packets import Cancel, Credit, Data, Error, Ident, KeepAlive, Packet
from tests.harness.client_origin import Host, Origin, Request, Respond, ok
from tests.harness.outbound_origin import WAIT, full_backlog, open_fds, refusing_port, run

trustme = pytest.importorskip("trustme")

HANDLER = b"handler-1"
INSTANCE = b"condure-test"


@contextlib.asynccontextmanager
async def world(respond: Respond = lambda r: ok(b"hello"), *, context=None, **connector_kw):
    loop = asyncio.get_running_loop()
    origin = await Origin(respond, context).start()
    pool = Pool(loop, capacity=10)
    host = Host(loop, Connector(loop, pool=pool, **connector_kw), pool)
    try:
        yield origin, host
    finally:
        for handle in host.timers.values():
            handle.cancel()
        pool.close()
        await origin.stop()


def first(uri: str, *, rid: bytes = b"s1", method: bytes = b"GET", credits: int = 100000,
          **fields) -> Data:
    return Data(from_=HANDLER, ids=(Ident(rid, 0),), method=method, uri=uri.encode(),
                credits=credits, **fields)


def start(host: Host, session, envelope: object = None) -> ClientConn:
    conn = ClientConn(host, session, envelope)
    conn.run()
    return conn


def stream(host: Host, packet: Data, **kw) -> ClientConn:
    return start(host, ClientHttpSession(packet, instance_id=INSTANCE, now=time.monotonic(),
                                         **kw))


def no_leak(scenario) -> None:
    before = open_fds()
    run(scenario())
    assert open_fds() == before


def errors(host: Host) -> list[bytes]:
    return [p.condition for p in host.packets() if isinstance(p, Error)]


def test_the_mapping_of_targets_and_conditions() -> None:
    def mapped(uri: bytes, **fields) -> net.Target:
        return net_target(parse_target(Data(method=b"GET", uri=uri, **fields), req_mode=False))

    plain = mapped(b"http://a.test:8080/x")
    assert (plain.endpoint, plain.tls, plain.tls_name) == (("a.test", 8080), False, None)
    tls = mapped(b"https://a.test/", connect_host=b"10.1.2.3", connect_port=8443,
                 ignore_tls_errors=True, ignore_policies=True)
    assert tls.endpoint == ("10.1.2.3", 8443) and tls.tls_name == "a.test"
    assert tls.ignore_tls_errors and tls.ignore_policies
    assert tls.key(("10.1.2.3", 8443)) == (("10.1.2.3", 8443), True, "a.test", "a.test", False)
    trusted = mapped(b"https://a.test/", connect_host=b"b.test", connect_port=443,
                     trust_connect_host=True)
    assert trusted.tls_name == "b.test" and not trusted.ignore_tls_errors
    v6 = mapped(b"https://[::1]:8443/")
    assert v6.endpoint == ("::1", 8443) and v6.tls_name == "::1"
    for name in (net.REMOTE_CONNECTION_FAILED, net.CONNECTION_TIMEOUT, net.BAD_REQUEST,
                 net.TLS_ERROR, net.POLICY_VIOLATION, net.UNDEFINED_CONDITION):
        assert condition_of(name).value == name
    assert condition_of("something-else") is Condition.UNDEFINED


# -- stream mode --------------------------------------------------------------------


def test_get_with_content_length_then_reuse_of_the_same_socket() -> None:
    async def scenario():
        async with world(lambda r: ok(b"body of " + r.path)) as (origin, host):
            uri = f"http://127.0.0.1:{origin.port}/one?x=1"
            conn = stream(host, first(uri, headers=((b"X-Test", b"yes"),)))
            await host.until(lambda: conn in host.released)
            packets = host.packets()
            assert isinstance(packets[0], KeepAlive)
            assert packets[0].ids == (Ident(b"s1", 0),)
            assert all(to == HANDLER and p.from_ == INSTANCE for to, p in host.sent)
            head, body = host.response()
            assert head.code == 200 and head.reason == b"OK"
            assert (b"Content-Length", b"16") in (head.headers or ())
            assert body == b"body of /one?x=1" and len(origin.requests) == 1
            request = origin.requests[0]
            assert request.method == b"GET" and request.path == b"/one?x=1"
            assert request.headers[b"host"] == f"127.0.0.1:{origin.port}".encode()
            assert request.headers[b"x-test"] == b"yes"
            seqs = [p.ids[0].seq for p in packets]
            assert seqs == list(range(len(packets)))
            assert len(host.pool) == 1 and conn.origin is None

            # a second exchange takes the pooled connection: one socket in all
            host.sent.clear()
            again = stream(host, first(f"http://127.0.0.1:{origin.port}/two", rid=b"s2"))
            await host.until(lambda: again in host.released)
            _head, body = host.response()
            assert body == b"body of /two"
            assert len(origin.writers) == 1 and [r.conn for r in origin.requests] == [0, 0]
            assert host.pool.reused == 1 and len(host.pool) == 1

    no_leak(scenario)


def test_chunked_response_is_relayed_within_credits() -> None:
    pieces = [b"a" * 3000, b"b" * 5000, b"c" * 10]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    def respond(_r: Request) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked

    async def scenario():
        async with world(respond) as (origin, host):
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/", credits=4000))
            await host.until(lambda: sum(isinstance(p, Data) for p in host.packets()) >= 2)
            # no more body than the handler's credits
            assert sum(len(p.body) for p in host.packets() if isinstance(p, Data)) == 4000
            assert conn not in host.released
            ident = Ident(b"s1", 1)
            conn.receive_packet(Credit(from_=HANDLER, ids=(ident,), credits=100000), ident,
                                time.monotonic())
            await host.until(lambda: conn in host.released)
            head, body = host.response()
            assert head.code == 200 and body == b"".join(pieces)
            assert len(host.pool) == 1  # read to its end: reusable

    no_leak(scenario)


def test_post_body_over_several_packets_against_credits() -> None:
    async def scenario():
        async with world(lambda r: ok(b"got " + r.body)) as (origin, host):
            packet = first(f"http://127.0.0.1:{origin.port}/upload", method=b"POST",
                           body=b"part1-", more=True)
            conn = stream(host, packet, buffer_size=8192)
            await host.until(lambda: any(isinstance(p, Credit) for p in host.packets()))
            credits = [p for p in host.packets() if isinstance(p, Credit)]
            assert credits[0].credits == 8192
            for seq, (body, more) in enumerate([(b"part2-", True), (b"part3", False)], 1):
                ident = Ident(b"s1", seq)
                conn.receive_packet(Data(from_=HANDLER, ids=(ident,), body=body, more=more),
                                    ident, time.monotonic())
            await host.until(lambda: conn in host.released)
            # the bytes flushed to the origin went back as credits (not after the last)
            credits = [p.credits for p in host.packets() if isinstance(p, Credit)]
            assert credits == [8192, 6]
            request = origin.requests[0]
            assert request.method == b"POST"
            assert request.headers[b"transfer-encoding"] == b"chunked"
            assert request.body == b"part1-part2-part3"
            _head, body = host.response()
            assert body == b"got part1-part2-part3"

    no_leak(scenario)


def test_an_origin_that_closes_is_not_pooled() -> None:
    async def scenario():
        async with world(lambda r: ok(b"bye", b"Connection: close\r\n")) as (origin, host):
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/"))
            await host.until(lambda: conn in host.released)
            head, body = host.response()
            assert head.code == 200 and body == b"bye"
            assert len(host.pool) == 0
            async with asyncio.timeout(WAIT):
                await origin.ended[0].wait()

    no_leak(scenario)


def test_refused_connect_is_remote_connection_failed() -> None:
    async def scenario():
        async with world() as (_origin, host):
            with refusing_port() as port:
                conn = stream(host, first(f"http://127.0.0.1:{port}/"))
                await host.until(lambda: conn in host.released)
            assert errors(host) == [b"remote-connection-failed"]
            assert [type(p) for p in host.packets()] == [KeepAlive, Error]
            assert host.packets()[1].ids == (Ident(b"s1", 1),)

    no_leak(scenario)


def test_deny_list_is_policy_violation_unless_ignored() -> None:
    async def scenario():
        async with world(deny_internal=True) as (origin, host):
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/"))
            await host.until(lambda: conn in host.released)
            assert errors(host) == [b"policy-violation"] and not origin.requests
            host.sent.clear()
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/", rid=b"s2",
                                      ignore_policies=True))
            await host.until(lambda: conn in host.released)
            assert host.response()[1] == b"hello" and len(origin.requests) == 1

    no_leak(scenario)


def test_redirect_is_followed_on_the_same_connection() -> None:
    def respond(r: Request) -> bytes:
        if r.path == b"/old":
            return b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
        return ok(b"at " + r.path)

    async def scenario():
        async with world(respond) as (origin, host):
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/old",
                                      follow_redirects=True))
            await host.until(lambda: conn in host.released)
            head, body = host.response()
            assert head.code == 200 and body == b"at /new"
            assert [(r.conn, r.path) for r in origin.requests] == [(0, b"/old"), (0, b"/new")]
            assert host.pool.reused == 1

    no_leak(scenario)


def test_handler_cancel_mid_response_closes_the_origin_connection() -> None:
    big = b"x" * 2_000_000

    async def scenario():
        async with world(lambda r: ok(big)) as (origin, host):
            conn = stream(host, first(f"http://127.0.0.1:{origin.port}/", credits=1000))
            await host.until(lambda: sum(isinstance(p, Data) for p in host.packets()) >= 2)
            assert conn.origin is not None
            ident = Ident(b"s1", 1)
            conn.receive_packet(Cancel(from_=HANDLER, ids=(ident,)), ident, time.monotonic())
            assert conn in host.released and conn.origin is None
            assert len(host.pool) == 0
            async with asyncio.timeout(WAIT):
                await origin.ended[0].wait()
            # nothing more went to the handler after its cancel
            assert [type(p) for p in host.packets()] == [KeepAlive, Data, Data]

    no_leak(scenario)


def test_connect_timeout_and_a_cancel_while_connecting() -> None:
    async def scenario():
        async with world(connect_timeout=0.3) as (_origin, host):
            with full_backlog() as port:
                conn = stream(host, first(f"http://127.0.0.1:{port}/"))
                await host.until(lambda: conn in host.released)
                assert errors(host) == [b"connection-timeout"]
                host.connector.connect_timeout = None  # hangs until cancelled
                host.sent.clear()
                conn = stream(host, first(f"http://127.0.0.1:{port}/", rid=b"s2"))
                task = conn.task
                assert task is not None
                base = open_fds()
                await asyncio.sleep(0.05)  # the connect is under way: one more socket
                assert open_fds() == base + 1 and not task.done()
                ident = Ident(b"s2", 1)
                conn.receive_packet(Cancel(from_=HANDLER, ids=(ident,)), ident)
                assert conn in host.released and conn.task is None
                await asyncio.wait({task}, timeout=WAIT)  # (does not cancel it)
                assert task.cancelled() and open_fds() == base
                assert [type(p) for p in host.packets()] == [KeepAlive]

    no_leak(scenario)


class Faulty(ClientHttpSession):
    """A session with a deliberate bug: it raises on origin bytes that
    contain ``boom!`` and on a handler packet whose body is ``boom!``."""

    def receive_data(self, data: bytes, now: float) -> None:
        if b"boom!" in data:
            raise RuntimeError("injected fault")
        super().receive_data(data, now)

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if isinstance(packet, Data) and packet.body == b"boom!":
            raise RuntimeError("injected fault")
        super().receive_packet(packet, ident, now)


def test_a_session_bug_ends_that_exchange_with_what_is_owed(caplog) -> None:
    def respond(r: Request) -> bytes:
        return ok(b"boom!") if r.path == b"/head" else ok(b"x" * 100000)

    async def scenario():
        async with world(respond) as (origin, host):
            # before the response head: error undefined-condition, next seq
            session = Faulty(first(f"http://127.0.0.1:{origin.port}/head"),
                             instance_id=INSTANCE, now=time.monotonic())
            conn = start(host, session)
            await host.until(lambda: conn in host.released)
            assert [type(p) for p in host.packets()] == [KeepAlive, Error]
            assert errors(host) == [b"undefined-condition"]
            assert host.packets()[1].ids == (Ident(b"s1", 1),)
            assert len(host.pool) == 0 and host.released.count(conn) == 1
            # after it: cancel
            host.sent.clear()
            session = Faulty(first(f"http://127.0.0.1:{origin.port}/body", rid=b"s2",
                                   credits=10), instance_id=INSTANCE, now=time.monotonic())
            conn = start(host, session)
            await host.until(lambda: sum(isinstance(p, Data) for p in host.packets()) >= 2)
            ident = Ident(b"s2", 1)
            conn.receive_packet(Data(from_=HANDLER, ids=(ident,), body=b"boom!"), ident)
            assert conn in host.released and conn.origin is None
            assert [type(p) for p in host.packets()] == [KeepAlive, Data, Data, Cancel]
            assert host.packets()[3].ids == (Ident(b"s2", 3),)
            conn.on_timer()  # the broken session is not called again
            assert conn.keep_alive() is None and host.released.count(conn) == 1
            async with asyncio.timeout(WAIT):
                await origin.ended[1].wait()

    no_leak(scenario)
    assert sum("unexpected error" in r.getMessage() for r in caplog.records) == 2


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_setup(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test").configure_cert(ctx)
    return ctx, str(path)


def test_https_verified_and_wrong_name(tls_setup) -> None:
    context, cafile = tls_setup

    async def scenario():
        async with world(context=context, cafile=cafile) as (origin, host):
            conn = stream(host, first(f"https://origin.test:{origin.port}/secure",
                                      connect_host=b"127.0.0.1", connect_port=origin.port))
            await host.until(lambda: conn in host.released)
            head, body = host.response()
            assert head.code == 200 and body == b"hello"
            assert origin.requests[0].headers[b"host"] == f"origin.test:{origin.port}".encode()
            host.sent.clear()
            conn = stream(host, first(f"https://wrong.test:{origin.port}/", rid=b"s2",
                                      connect_host=b"127.0.0.1", connect_port=origin.port))
            await host.until(lambda: conn in host.released)
            assert errors(host) == [b"tls-error"] and len(origin.requests) == 1

    no_leak(scenario)


# -- req mode -------------------------------------------------------------------------


def test_req_mode_whole_response_and_timeout() -> None:
    def respond(r: Request) -> bytes | None:
        return None if r.path == b"/slow" else ok(b"whole " + r.body)

    async def scenario():
        async with world(respond) as (origin, host):
            envelope = [b"peer", b""]
            packet = Data(ids=(Ident(b"r1"),), method=b"POST", body=b"thing",
                          uri=f"http://127.0.0.1:{origin.port}/fast".encode())
            conn = start(host, ClientReqSession(packet, now=time.monotonic()), envelope)
            await host.until(lambda: conn in host.released)
            assert not host.sent
            [(to, reply)] = host.replies
            assert to is envelope and isinstance(reply, Data)
            assert reply.code == 200 and reply.body == b"whole thing"
            assert reply.ids == (Ident(b"r1"),) and reply.from_ == b""
            assert origin.requests[0].headers[b"content-length"] == b"5"

            host.replies.clear()
            packet = Data(method=b"GET", uri=f"http://127.0.0.1:{origin.port}/slow".encode())
            began = time.monotonic()
            conn = start(host, ClientReqSession(packet, now=began, req_timeout=0.3), envelope)
            await host.until(lambda: conn in host.released)
            assert 0.25 <= time.monotonic() - began < WAIT
            [(to, reply)] = host.replies
            assert isinstance(reply, Error) and reply.condition == b"connection-timeout"
            assert reply.ids == ()
            # it had reused the first exchange's connection, now closed, not pooled
            assert origin.requests[1].conn == 0 and len(host.pool) == 0
            async with asyncio.timeout(WAIT):
                await origin.ended[0].wait()

    no_leak(scenario)
