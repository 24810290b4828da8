"""Client mode's outbound connector against real origins on loopback, in
the test's own event loop: plain HTTP/1.1 and HTTPS (a trustme CA), refused
and timed-out connects, DNS of ``localhost``, the deny list, the pool
(reuse, staleness found before use, idle expiry, size bound) and the
plaintext connection itself (backpressure, end of stream, cancellation).

Nothing here leaves the host: every address is 127.0.0.1 (``localhost``
comes from /etc/hosts), and the only names resolved are ``localhost`` and
literals. The connect timeout is provoked with a listener whose accept
queue is full (Linux drops the SYN), which is the honest loopback-only way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from condure.net.outbound import Connector, OutboundError, Target, resolve
from condure.net.pool import Pool
from tests.harness.outbound_origin import (
    WAIT,
    Client,
    Origin,
    full_backlog,
    open_fds,
    readable,
    refusing_port,
    run,
)


def plain(port: int, **kw) -> Target:
    return Target("127.0.0.1", port, tls=False, **kw)


@contextlib.asynccontextmanager
async def pooled(**pool_args):
    """(loop, origin, pool, connector): a running origin and a connector
    with a pool, both closed at the end."""
    loop = asyncio.get_running_loop()
    origin = await Origin().start()
    pool = Pool(loop, **pool_args)
    try:
        yield loop, origin, pool, Connector(loop, pool=pool)
    finally:
        pool.close()
        await origin.stop()


# -- plain connections and the pool -------------------------------------------------


def test_plain_exchange_and_reuse_of_the_same_socket() -> None:
    async def scenario():
        async with pooled(capacity=10) as (_loop, origin, pool, connector):
            conn = await connector.connect(plain(origin.port))
            assert not conn.reused
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert await Client(conn).get() == b"conn 0 req 0"
            fd = conn.fd
            assert pool.put(conn) and len(pool) == 1
            again = await connector.connect(plain(origin.port))
            assert again is conn and again.reused and again.fd == fd
            assert len(pool) == 0
            assert await Client(again).get() == b"conn 0 req 1"
            assert len(origin.writers) == 1 and len(origin.requests) == 2
            # another URL host is another key: a new connection
            other = await connector.connect(Target("other.test", 80, False,
                                                   connect_host="127.0.0.1",
                                                   connect_port=origin.port))
            assert other is not conn and not other.reused
            assert await Client(other).get() == b"conn 1 req 0"
            other.close()
            again.close()

    run(scenario())


@pytest.mark.parametrize("how", ["closed", "unexpected bytes"])
def test_stale_pooled_connection_is_found_before_use(how: str) -> None:
    async def scenario():
        async with pooled(capacity=10) as (_loop, origin, pool, connector):
            conn = await connector.connect(plain(origin.port))
            assert await Client(conn).get() == b"conn 0 req 0"
            assert pool.put(conn)
            if how == "closed":
                origin.writers[0].close()
            else:
                origin.writers[0].write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            await readable(conn.sock)  # it reached the pooled socket
            fresh = await connector.connect(plain(origin.port))
            assert fresh is not conn and not fresh.reused
            assert conn.closed and pool.stale == 1 and len(pool) == 0
            assert await Client(fresh).get() == b"conn 1 req 0"
            # nothing was written to the stale connection
            assert [i for i, _ in origin.requests] == [0, 1]
            fresh.close()

    run(scenario())


def test_idle_connections_expire_on_the_sweep_timer() -> None:
    async def scenario():
        async with pooled(capacity=10, idle=0.05) as (_loop, origin, pool, connector):
            conns = [await connector.connect(plain(origin.port)) for _ in range(3)]
            for conn in conns:
                assert pool.put(conn)
            await origin.accepted(3)
            async with asyncio.timeout(WAIT):
                for ended in origin.ended:
                    await ended.wait()  # the origin saw each one closed
            assert len(pool) == 0 and pool.expired == 3
            assert all(conn.closed for conn in conns)
            assert pool._timer is None  # nothing left to wake up for

    run(scenario())


def test_sweep_closes_only_what_outlived_55_seconds() -> None:
    async def scenario():
        async with pooled(capacity=10) as (loop, origin, pool, connector):
            conn = await connector.connect(plain(origin.port))
            start = loop.time()
            assert pool.put(conn)
            await origin.accepted(1)
            assert pool._timer is not None and pool._timer.when() >= start + 55
            assert pool.sweep(start + 54) == 0 and len(pool) == 1
            assert pool.sweep(start + 56) == 1 and len(pool) == 0
            assert conn.closed
            async with asyncio.timeout(WAIT):
                await origin.ended[0].wait()

    run(scenario())


def test_pool_size_is_bounded() -> None:
    async def scenario():
        async with pooled(capacity=2) as (_loop, origin, pool, connector):
            conns = [await connector.connect(plain(origin.port)) for _ in range(3)]
            await origin.accepted(3)
            assert [pool.put(conn) for conn in conns] == [True, True, False]
            assert len(pool) == 2 and conns[2].closed
            async with asyncio.timeout(WAIT):
                await origin.ended[2].wait()
            assert not origin.ended[0].is_set() and not origin.ended[1].is_set()
            # both pooled ones are handed out again, newest first
            first = await connector.connect(plain(origin.port))
            second = await connector.connect(plain(origin.port))
            assert (first, second) == (conns[1], conns[0])
            third = await connector.connect(plain(origin.port))
            assert not third.reused
            await origin.accepted(4)
            for conn in (first, second, third):
                conn.close()

    run(scenario())


def test_connections_that_cannot_be_reused_are_not_pooled() -> None:
    async def scenario():
        async with pooled(capacity=10) as (_loop, origin, pool, connector):
            conn = await connector.connect(plain(origin.port))
            client = Client(conn)
            await origin.accepted(1)
            origin.writers[0].close()
            await client.until(lambda: client.eofs)
            assert not conn.reusable
            assert not pool.put(conn) and conn.closed and len(pool) == 0

    run(scenario())


# -- connecting ---------------------------------------------------------------


def test_refused_is_remote_connection_failed() -> None:
    async def scenario():
        with refusing_port() as port:
            connector = Connector(asyncio.get_running_loop())
            with pytest.raises(OutboundError) as info:
                await connector.connect(plain(port))
            assert info.value.condition == "remote-connection-failed"

    before = open_fds()
    run(scenario())
    assert open_fds() == before


def test_connect_timeout_is_connection_timeout() -> None:
    async def scenario():
        with full_backlog() as port:
            connector = Connector(asyncio.get_running_loop(), connect_timeout=0.3)
            start = time.monotonic()
            with pytest.raises(OutboundError) as info:
                await connector.connect(plain(port))
            assert info.value.condition == "connection-timeout"
            assert 0.25 <= time.monotonic() - start < WAIT

    before = open_fds()
    run(scenario())
    assert open_fds() == before


def test_addresses_are_tried_in_order_and_the_last_failure_decides() -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        origin = await Origin().start()
        connector = Connector(loop, connect_timeout=0.3)
        try:
            with refusing_port() as refused, full_backlog() as stalled:
                good = (socket.AF_INET, ("127.0.0.1", origin.port))
                down = (socket.AF_INET, ("127.0.0.1", refused))
                slow = (socket.AF_INET, ("127.0.0.1", stalled))
                conn = await connector.connect_any(plain(origin.port), [down, slow, good])
                assert conn.key.address == good[1]
                assert await Client(conn).get() == b"conn 0 req 0"
                conn.close()
                for order, condition in (([slow, down], "remote-connection-failed"),
                                         ([down, slow], "connection-timeout")):
                    with pytest.raises(OutboundError) as info:
                        await connector.connect_any(plain(origin.port), order)
                    assert info.value.condition == condition
        finally:
            await origin.stop()

    run(scenario())


def test_cancelled_connect_closes_its_socket() -> None:
    async def scenario():
        with full_backlog() as port:
            connector = Connector(asyncio.get_running_loop(), connect_timeout=None)
            base = open_fds()
            task = asyncio.create_task(connector.connect(plain(port)))
            await asyncio.sleep(0)  # the task runs to its connect, which hangs
            assert open_fds() == base + 1 and not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_fds() == base

    before = open_fds()
    run(scenario())
    assert open_fds() == before


def test_localhost_resolves_on_this_host() -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        addresses = await resolve(loop, "localhost", 8080)
        ips = [sockaddr[0] for _family, sockaddr in addresses]
        assert "127.0.0.1" in ips and set(ips) <= {"127.0.0.1", "::1"}
        assert len(ips) == len(set(ips))
        assert all(sockaddr[1] == 8080 for _f, sockaddr in addresses)
        origin = await Origin().start()
        try:
            conn = await Connector(loop).connect(Target("localhost", origin.port, False))
            assert await Client(conn).get(host="localhost") == b"conn 0 req 0"
            conn.close()
        finally:
            await origin.stop()

    run(scenario())


def test_deny_list_and_ignore_policies() -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        origin = await Origin().start()
        denying = Connector(loop, deny_internal=True)
        try:
            for target in (plain(origin.port), Target("localhost", origin.port, False),
                           Target("example.com", 80, False, connect_host="127.0.0.1",
                                  connect_port=origin.port)):
                with pytest.raises(OutboundError) as info:
                    await denying.connect(target)
                assert info.value.condition == "policy-violation"
            assert origin.writers == []  # not even a connect (checked again below)
            conn = await denying.connect(plain(origin.port, ignore_policies=True))
            assert await Client(conn).get() == b"conn 0 req 0"  # the first connection
            conn.close()
            conn = await Connector(loop).connect(plain(origin.port))
            assert await Client(conn).get() == b"conn 1 req 0"
            conn.close()
        finally:
            await origin.stop()

    run(scenario())
