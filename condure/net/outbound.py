"""Outgoing connections of client mode: resolve, apply the deny list,
reuse or connect, and put TLS on top (reference 6.2 step 4, 6.6, 3.4).

:meth:`Connector.connect` turns a :class:`Target` (what a request's URL and
its ``connect-host``, ``connect-port``, ``trust-connect-host``,
``ignore-tls-errors`` and ``ignore-policies`` fields ask for) into a ready
:class:`~condure.net.outconn.OutboundConn` (TLS handshake done), or raises
:class:`OutboundError` with the ZHTTP condition to report:

1. The host (``connect-host`` if given, then with ``connect-port`` as is,
   even 0) is resolved to at most 16 TCP addresses, IPv4 and IPv6, in the
   resolver's order without duplicates; a literal address skips DNS.
   Failure: ``undefined-condition``.
2. With ``--deny-out-internal`` (and no ``ignore-policies``) addresses in
   127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16,
   ::1/128, fc00::/7, fe80::/10 (Condure's list), and also the unspecified
   addresses 0.0.0.0 and :: (which reach this host) and IPv4-mapped IPv6
   forms of all these, are dropped. None left: ``policy-violation``.
3. A pooled connection for one of the addresses, in order, is reused if
   it is still alive (net/pool.py).
4. Otherwise the addresses are tried in order, each within the connect
   timeout; the last failure decides the condition: refused:
   ``remote-connection-failed``; timed out: ``connection-timeout``;
   anything else (unreachable, ...): ``undefined-condition``.
5. ``https``/``wss``: TLS with ALPN ``http/1.1``; the name sent as SNI and
   checked against the certificate is the URL host, or ``connect-host``
   with ``trust-connect-host``; verification uses the system trust store
   (plus an extra CA file, for tests) unless ``ignore-tls-errors``. Any
   failure: ``tls-error``; a handshake that stalls past the connect
   timeout: ``connection-timeout``.

Cancelling ``connect`` (the session ended meanwhile) closes whatever
socket it had open.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass

from condure.net.certs import ALPN
from condure.net.outconn import READ_SIZE, ClientTls, OutboundConn, PoolKey
from condure.net.pool import Pool
from condure.session.outbound import Condition, denied

log = logging.getLogger("condure.outbound")

# The conditions a connect can fail with: the session's names, as strings.
REMOTE_CONNECTION_FAILED = Condition.REMOTE_CONNECTION_FAILED.value
CONNECTION_TIMEOUT = Condition.CONNECTION_TIMEOUT.value
BAD_REQUEST = Condition.BAD_REQUEST.value
TLS_ERROR = Condition.TLS_ERROR.value
POLICY_VIOLATION = Condition.POLICY_VIOLATION.value
UNDEFINED_CONDITION = Condition.UNDEFINED.value

MAX_ADDRESSES = 16
CONNECT_TIMEOUT = 10.0  # seconds, per address (and for the TLS handshake)
HANDSHAKE_CHUNK = 16384

Address = tuple[int, tuple]  # (address family, socket address)


class OutboundError(Exception):
    """Connecting failed; ``condition`` is what the handler is told."""

    def __init__(self, condition: str, detail: str) -> None:
        super().__init__(f"{condition}: {detail}")
        self.condition = condition
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes, as its URL and fields say (reference 6.1)."""

    host: str  # the URL host (IPv6 literals with or without brackets)
    port: int  # the URL port, or the scheme's default
    tls: bool  # https or wss
    connect_host: str | None = None
    connect_port: int = 0  # used only with connect_host, and then as is
    trust_connect_host: bool = False
    ignore_tls_errors: bool = False
    ignore_policies: bool = False

    @property
    def endpoint(self) -> tuple[str, int]:
        """The host and port to resolve and connect to."""
        if self.connect_host:
            return _unbracket(self.connect_host), self.connect_port
        return _unbracket(self.host), self.port

    @property
    def tls_name(self) -> str | None:
        """The name sent as SNI and checked against the certificate."""
        if not self.tls:
            return None
        if self.trust_connect_host and self.connect_host:
            return _unbracket(self.connect_host)
        return _unbracket(self.host)

    def key(self, address: tuple) -> PoolKey:
        if not self.tls:
            return PoolKey(address, False, self.host)
        return PoolKey(address, True, self.host, self.tls_name, not self.ignore_tls_errors)


def _unbracket(host: str) -> str:
    if len(host) > 1 and host[0] == "[" and host[-1] == "]":
        return host[1:-1]
    return host


# -- 1. resolution ------------------------------------------------------------

def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _collect(infos: list) -> list[Address]:
    seen: set[tuple] = set()
    out: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr in seen:
            continue
        seen.add(sockaddr)
        out.append((family, sockaddr))
        if len(out) == MAX_ADDRESSES:
            break
    return out


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Address]:
    """The TCP addresses of ``host`` (at most 16, resolver order, no
    duplicates); raises :class:`OutboundError` (``bad-request`` for a port
    out of range, else ``undefined-condition``)."""
    if not 0 <= port <= 65535:
        raise OutboundError(BAD_REQUEST, f"port {port} out of range")
    host = _unbracket(host)
    if not host:
        raise OutboundError(UNDEFINED_CONDITION, "empty host")
    try:
        if _literal(host):  # no DNS: numeric only
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
        else:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError) as e:
        raise OutboundError(UNDEFINED_CONDITION, f"cannot resolve {host!r}: {e}") from None
    addresses = _collect(infos)
    if not addresses:
        raise OutboundError(UNDEFINED_CONDITION, f"no address for {host!r}")
    return addresses


# -- 2. the deny list ---------------------------------------------------------

def _permitted(addresses: list[Address]) -> list[Address]:
    """``addresses`` without the internal ones; ``policy-violation`` if
    none remain."""
    kept = [a for a in addresses if not denied(a[1][0])]
    if not kept:
        raise OutboundError(POLICY_VIOLATION, "every address is denied")
    return kept


# -- 5. TLS ---------------------------------------------------------------------

def client_context(verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
    """A client context: ALPN http/1.1; with ``verify``, the system trust
    store (plus ``cafile``) and host name checking, else no checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(ALPN)
    if verify:
        ctx.load_default_certs()
        if cafile is not None:
            ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     tls: ClientTls) -> None:
    obj = tls.obj
    while True:
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except (ssl.SSLError, ValueError) as e:
            try:
                sock.send(tls.take_output())  # the alert, if any; best effort
            except OSError:
                pass
            raise OutboundError(TLS_ERROR, f"handshake failed: {e}") from None
        output = tls.take_output()
        if output:
            await loop.sock_sendall(sock, output)
        if done:
            break
        data = await loop.sock_recv(sock, HANDSHAKE_CHUNK)
        if not data:
            raise OutboundError(TLS_ERROR, "origin closed during the handshake")
        tls.incoming.write(data)
    tls.handshaking = False


# -- 4. connecting ------------------------------------------------------------

async def _open(loop: asyncio.AbstractEventLoop, family: int, sockaddr: tuple,
                timeout: float | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_failure(e: BaseException, sockaddr: tuple) -> OutboundError:
    if isinstance(e, TimeoutError) or getattr(e, "errno", None) == errno.ETIMEDOUT:
        return OutboundError(CONNECTION_TIMEOUT, f"connecting to {sockaddr!r} timed out")
    if isinstance(e, ConnectionRefusedError):
        return OutboundError(REMOTE_CONNECTION_FAILED, f"{sockaddr!r} refused")
    return OutboundError(UNDEFINED_CONDITION, f"connecting to {sockaddr!r}: {e}")


class Connector:
    """Makes (or reuses) origin connections for one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, deny_internal: bool = False,
                 pool: Pool | None = None, cafile: str | None = None,
                 connect_timeout: float | None = CONNECT_TIMEOUT,
                 read_size: int = READ_SIZE) -> None:
        self.loop = loop
        self.deny_internal = deny_internal
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.read_size = read_size
        self._verifying = client_context(True, cafile)
        self._trusting = client_context(False)

    async def connect(self, target: Target) -> OutboundConn:
        """A ready connection for ``target``; raises :class:`OutboundError`."""
        host, port = target.endpoint
        addresses = await resolve(self.loop, host, port)
        if self.deny_internal and not target.ignore_policies:
            addresses = _permitted(addresses)
        pool = self.pool
        if pool is not None and len(pool):
            for _family, sockaddr in addresses:
                conn = pool.get(target.key(sockaddr))
                if conn is not None:
                    log.debug("reusing %r for %s", conn, target.host)
                    return conn
        return await self.connect_any(target, addresses)

    async def connect_any(self, target: Target, addresses: list[Address]) -> OutboundConn:
        """Connect to the first of ``addresses`` that answers (no pool, no
        deny list: :meth:`connect` did those) and start TLS if asked."""
        failure = OutboundError(UNDEFINED_CONDITION, "no address to connect to")
        for family, sockaddr in addresses:
            try:
                sock = await _open(self.loop, family, sockaddr, self.connect_timeout)
            except (OSError, TimeoutError) as e:
                failure = _connect_failure(e, sockaddr)
                log.debug("%s", failure)
                continue
            key = target.key(sockaddr)
            try:
                tls = await self._start_tls(sock, target) if target.tls else None
            except BaseException:
                sock.close()
                raise
            return OutboundConn(self.loop, sock, key, tls, self.read_size)
        raise failure

    async def _start_tls(self, sock: socket.socket, target: Target) -> ClientTls:
        context = self._trusting if target.ignore_tls_errors else self._verifying
        try:
            tls = ClientTls(context, target.tls_name or None)
        except (ssl.SSLError, ValueError) as e:  # a name OpenSSL will not take
            raise OutboundError(TLS_ERROR, f"TLS setup failed: {e}") from None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await _handshake(self.loop, sock, tls)
        except TimeoutError:
            raise OutboundError(CONNECTION_TIMEOUT, "TLS handshake timed out") from None
        except OSError as e:
            raise OutboundError(TLS_ERROR, f"handshake failed: {e}") from None
        return tls
