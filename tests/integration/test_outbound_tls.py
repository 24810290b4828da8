"""Client mode's TLS and the plaintext stream, against real origins on
loopback in the test's own loop: verification with a test CA (trustme),
the name checked and sent as SNI, ``ignore-tls-errors``,
``trust-connect-host``, failures as ``tls-error``, a stalled handshake, and
the OutboundConn rhythm (backpressure and ``on_flushed``, end of stream,
reading paused) over plain TCP and TLS alike.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from condure.net.outbound import Connector, OutboundError, Target
from condure.net.pool import Pool
from tests.harness.outbound_origin import WAIT, Client, Origin, open_fds, readable, run

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def cafile(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue_cert("origin.test", "localhost")


def origin_context(leaf, seen: list) -> ssl.SSLContext:
    """The origin's context: a certificate for origin.test and localhost;
    ``seen`` collects the SNI of each handshake."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)  # type: ignore[assignment]
    return ctx


def https(port: int, host: str = "origin.test", **kw) -> Target:
    return Target(host, 443, tls=True, connect_host="127.0.0.1", connect_port=port, **kw)


def test_verified_exchange_sends_sni_alpn_and_is_reused(leaf, cafile) -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        seen: list = []
        origin = await Origin(origin_context(leaf, seen)).start()
        pool = Pool(loop, capacity=10)
        connector = Connector(loop, pool=pool, cafile=cafile)
        try:
            conn = await connector.connect(https(origin.port))
            assert seen == ["origin.test"]
            assert conn.tls is not None and conn.tls.alpn == "http/1.1"
            assert await Client(conn).get() == b"conn 0 req 0"
            assert pool.put(conn)
            # the same origin without verification is another key
            other = await connector.connect(https(origin.port, ignore_tls_errors=True))
            assert other is not conn
            other.close()
            again = await connector.connect(https(origin.port))
            assert again is conn and again.reused
            assert await Client(again).get() == b"conn 0 req 1"
            again.close()
            assert seen == ["origin.test", "origin.test"]  # one handshake each
        finally:
            pool.close()
            await origin.stop()

    run(scenario())


def test_wrong_name_unknown_ca_and_no_tls_are_tls_errors(leaf, cafile) -> None:
    async def answer_plainly(reader, writer) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario():
        loop = asyncio.get_running_loop()
        seen: list = []
        origin = await Origin(origin_context(leaf, seen)).start()
        not_tls = await asyncio.start_server(answer_plainly, "127.0.0.1", 0)
        try:
            cases = [
                (Connector(loop, cafile=cafile), https(origin.port, "wrong.test")),
                (Connector(loop), https(origin.port)),  # the system store lacks the test CA
                (Connector(loop, cafile=cafile),
                 https(not_tls.sockets[0].getsockname()[1])),
            ]
            for connector, target in cases:
                with pytest.raises(OutboundError) as info:
                    await connector.connect(target)
                assert info.value.condition == "tls-error", info.value
            assert seen == ["wrong.test", "origin.test"]
        finally:
            await origin.stop()
            not_tls.close()
            await not_tls.wait_closed()

    before = open_fds()
    run(scenario())
    assert open_fds() == before


def test_ignore_tls_errors_accepts_any_certificate(leaf) -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        seen: list = []
        origin = await Origin(origin_context(leaf, seen)).start()
        try:
            connector = Connector(loop)  # not even the CA is known
            conn = await connector.connect(https(origin.port, "wrong.test",
                                                 ignore_tls_errors=True))
            assert seen == ["wrong.test"]  # SNI is still the URL host
            assert await Client(conn).get() == b"conn 0 req 0"
            conn.close()
        finally:
            await origin.stop()

    run(scenario())


def test_trust_connect_host_checks_the_connect_name(leaf, cafile) -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        seen: list = []
        origin = await Origin(origin_context(leaf, seen)).start()
        connector = Connector(loop, cafile=cafile)
        try:
            target = Target("www.example.com", 443, tls=True, connect_host="localhost",
                            connect_port=origin.port)
            with pytest.raises(OutboundError) as info:
                await connector.connect(target)  # the certificate is not for www.example.com
            assert info.value.condition == "tls-error"
            trusted = Target("www.example.com", 443, tls=True, connect_host="localhost",
                             connect_port=origin.port, trust_connect_host=True)
            conn = await connector.connect(trusted)
            try:
                assert seen == ["www.example.com", "localhost"]
                assert await Client(conn).get(host="www.example.com") == b"conn 0 req 0"
            finally:
                conn.close()
        finally:
            await origin.stop()

    run(scenario())


def test_stalled_handshake_is_connection_timeout(cafile) -> None:
    async def scenario():
        silent = socket.socket()  # connects complete, nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            connector = Connector(asyncio.get_running_loop(), cafile=cafile,
                                  connect_timeout=0.3)
            with pytest.raises(OutboundError) as info:
                await connector.connect(https(silent.getsockname()[1]))
            assert info.value.condition == "connection-timeout"
        finally:
            silent.close()

    before = open_fds()
    run(scenario())
    assert open_fds() == before


# -- the plaintext stream ---------------------------------------------------------


class SlowOrigin:
    """Reads nothing until ``release``; then counts what arrives."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.release = asyncio.Event()
        self.received = 0
        self.writer: asyncio.StreamWriter | None = None
        self.accepted = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        self.writer = writer
        self.accepted.set()
        await self.release.wait()
        try:
            while chunk := await reader.read(1 << 20):
                self.received += len(chunk)
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()

    async def stop(self) -> None:
        self.server.close()
        if self.writer is not None:
            self.writer.close()
        await self.server.wait_closed()


async def connect_slow_origin(leaf, cafile, use_tls: bool):
    """A started SlowOrigin (over TLS if ``use_tls``) and our connection to it."""
    origin = SlowOrigin(origin_context(leaf, []) if use_tls else None)
    port = await origin.start()
    target = https(port) if use_tls else Target("127.0.0.1", port, False)
    conn = await Connector(asyncio.get_running_loop(), cafile=cafile).connect(target)
    return origin, conn


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_backpressure_then_flushed(leaf, cafile, use_tls: bool) -> None:
    async def scenario():
        origin, conn = await connect_slow_origin(leaf, cafile, use_tls)
        try:
            client = Client(conn)
            await asyncio.wait_for(origin.accepted.wait(), WAIT)
            size = 32 << 20
            assert conn.write(b"x" * size) is False  # more than the kernel buffers hold
            assert conn.pending > 0 and client.flushes == 0
            origin.release.set()
            await client.until(lambda: client.flushes)
            assert conn.pending == 0 and client.flushes == 1
            assert conn.write(b"y" * 1000) is True  # room again: straight through
            conn.close()
            async with asyncio.timeout(WAIT):
                while origin.received < size + 1000:
                    await asyncio.sleep(0.01)
            assert origin.received == size + 1000
        finally:
            conn.close()
            await origin.stop()

    run(scenario())


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_reading_paused_then_end_of_stream_once(leaf, cafile, use_tls: bool) -> None:
    async def scenario():
        origin, conn = await connect_slow_origin(leaf, cafile, use_tls)
        try:
            client = Client(conn)
            conn.set_reading(False)
            await asyncio.wait_for(origin.accepted.wait(), WAIT)
            assert origin.writer is not None
            origin.writer.write(b"hello")
            await origin.writer.drain()
            await readable(conn.sock)
            for _ in range(3):
                await asyncio.sleep(0)
            assert client.data == b"" and client.eofs == 0  # held while paused
            conn.set_reading(True)
            await client.until(lambda: client.data == b"hello")
            origin.writer.close()
            await client.until(lambda: client.eofs)
            conn.set_reading(True)  # no effect at the end of the stream
            assert not conn.reading and not conn.reusable and conn.error is None
            for _ in range(3):
                await asyncio.sleep(0)
            assert client.eofs == 1 and client.data == b"hello"
        finally:
            conn.close()
            origin.release.set()
            await origin.stop()

    run(scenario())
