"""One origin connection of client mode: plaintext in and out for a session.

An :class:`OutboundConn` owns one connected, non-blocking socket to an
origin and, for ``https``/``wss``, the TLS state over memory buffers
(:class:`ClientTls`, the client side of net/tls.py), so whoever drives it
only ever sees plaintext. The rhythm is the one of net/conn.py:

- reading: while ``set_reading(True)``, bytes from the origin go to
  ``on_read(data)``; ``on_read(b"")`` is the end of the origin's stream
  (its FIN, a reset, bad TLS: ``error`` then says what), delivered once,
  after which the connection reads no more;
- writing: :meth:`write` queues plaintext and returns True when all of it
  reached the kernel; otherwise the rest is written as the socket takes it
  and ``on_flushed()`` is called when the queue empties (backpressure: the
  caller grants credits there);
- a failed write stops the connection and is reported as ``on_read(b"")``
  on the next loop iteration (never from inside :meth:`write`);
- :meth:`close` ends it; :meth:`detach` stops serving it without closing,
  for the pool (net/pool.py), and :meth:`probe` tells the pool whether a
  detached connection is still usable.

Callbacks may call back into the connection (write, close, detach).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import NamedTuple

from condure.net.tls import TlsError, TlsLayer

log = logging.getLogger("condure.outbound")

READ_SIZE = 65536

OnRead = Callable[[bytes], None]
OnFlushed = Callable[[], None]


def _ignore_read(_data: bytes) -> None:
    pass


def _ignore_flushed() -> None:
    pass


class PoolKey(NamedTuple):
    """What a pooled connection may be reused for: the same address, TLS or
    not, the same URL host (reference 6.2 step 12) and, for TLS, the same
    name checked and the same verification."""

    address: tuple  # the socket address connected to
    tls: bool
    host: str  # the URL host
    tls_name: str | None = None  # the name verified (and sent as SNI)
    verify: bool = True  # False: the certificate was not checked


class ClientTls(TlsLayer):
    """The client side of :class:`condure.net.tls.TlsLayer`: same buffers,
    same ``receive``/``encrypt``/``close_notify``; the handshake is driven
    by net/outbound.py before the connection is handed out."""

    __slots__ = ()

    def __init__(self, context: ssl.SSLContext, server_name: str | None) -> None:
        # Not TlsLayer.__init__: that one makes a server-side object.
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=False,
                                    server_hostname=server_name)
        self.handshaking = True


class OutboundConn:
    __slots__ = (
        "at_eof",
        "closed",
        "error",
        "fd",
        "key",
        "loop",
        "on_flushed",
        "on_read",
        "out",
        "read_size",
        "reading",
        "reused",
        "sock",
        "tls",
        "writing",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, key: PoolKey,
                 tls: ClientTls | None = None, read_size: int = READ_SIZE) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.key = key
        self.tls = tls
        self.read_size = read_size
        self.out = bytearray()
        self.on_read: OnRead = _ignore_read
        self.on_flushed: OnFlushed = _ignore_flushed
        self.reading = False
        self.writing = False
        self.at_eof = False  # on_read(b"") was delivered (or is on its way)
        self.closed = False
        self.error: str | None = None
        self.reused = False  # taken from the pool rather than newly connected

    def __repr__(self) -> str:
        return (f"<OutboundConn fd={self.fd} {self.key.address!r} tls={self.key.tls} "
                f"out={len(self.out)}{' closed' if self.closed else ''}>")

    # -- the user's side ----------------------------------------------------

    def start(self, on_read: OnRead, on_flushed: OnFlushed, reading: bool = True) -> None:
        """Begin serving (again, for a connection from the pool)."""
        if self.closed:
            raise RuntimeError("connection is closed")
        self.on_read = on_read
        self.on_flushed = on_flushed
        self.set_reading(reading)

    def set_reading(self, on: bool) -> None:
        """Watch the origin for input, or stop (the caller has no room)."""
        if self.closed or self.at_eof:
            on = False
        if on == self.reading:
            return
        self.reading = on
        if on:
            self.loop.add_reader(self.fd, self._on_readable)
        else:
            self.loop.remove_reader(self.fd)

    def write(self, data: bytes) -> bool:
        """Queue plaintext for the origin; True when all of it (and anything
        queued before) reached the kernel, else ``on_flushed`` follows."""
        if self.closed or self.error is not None:
            return False
        if data:
            self.out += data if self.tls is None else self.tls.encrypt(data)
        return self._flush()

    @property
    def pending(self) -> int:
        """Bytes (on the wire, after TLS) not yet taken by the kernel."""
        return len(self.out)

    @property
    def reusable(self) -> bool:
        """Whether the connection could go back to the pool now."""
        return (not self.closed and not self.at_eof and self.error is None
                and not self.out and (self.tls is None or not self.tls.handshaking))

    def close(self) -> None:
        """End the connection now (a TLS one says close_notify first, best
        effort); unsent output is dropped. No callback follows."""
        if self.closed:
            return
        self._stop_watching()
        if self.tls is not None and self.error is None:
            try:
                self.sock.send(self.tls.close_notify())
            except OSError:
                pass
        self.sock.close()

    def detach(self) -> bool:
        """Stop serving the connection without closing it (for the pool);
        False, and nothing changes, when it is not :attr:`reusable`."""
        if not self.reusable:
            return False
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)
        self.on_read = _ignore_read
        self.on_flushed = _ignore_flushed
        return True

    def probe(self) -> bool:
        """For a detached connection: True if the origin has neither closed
        it nor sent anything since (bytes nobody asked for make it unusable
        too). A non-blocking peek; nothing is consumed."""
        if not self.reusable or self.reading:
            return False
        if self.tls is not None and self.tls.incoming.pending:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False  # end of stream, or unexpected bytes

    # -- the loop's side ----------------------------------------------------

    def _on_readable(self) -> None:
        if self.closed or not self.reading:
            return
        try:
            raw = self.sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.error = f"read: {e}"
            raw = b""
        if self.tls is None:
            self._deliver(raw, not raw)
            return
        try:
            data, eof = self.tls.receive(raw)
        except TlsError as e:
            self.error = f"TLS: {e}"
            self._deliver(b"", True)
            return
        pending = self.tls.take_output()
        if pending:  # protocol bytes owed to the origin (key update, alerts)
            self.out += pending
            self._flush()
            if self.closed or self.error is not None:
                return
        self._deliver(data, eof)

    def _deliver(self, data: bytes, eof: bool) -> None:
        if eof:
            self.set_reading(False)
            self.at_eof = True
        if data:
            self.on_read(data)
            if self.closed:
                return
        if eof:
            self.on_read(b"")

    def _on_writable(self) -> None:
        if self.closed:
            return
        if self._flush() and self.error is None:
            self.on_flushed()

    def _flush(self) -> bool:
        out = self.out
        if not out:
            return True
        try:
            sent = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._write_failed(e)
            return False
        del out[:sent]
        if out:
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.fd, self._on_writable)
            return False
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        return True

    def _write_failed(self, e: OSError) -> None:
        log.debug("write to origin failed: %s", e)
        self.error = f"write: {e}"
        self.out.clear()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        self.set_reading(False)
        if not self.at_eof:
            self.at_eof = True
            self.loop.call_soon(self._report_failure)

    def _report_failure(self) -> None:
        if not self.closed:
            self.on_read(b"")

    def _stop_watching(self) -> None:
        self.closed = True
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.writing:
            self.loop.remove_writer(self.fd)
        self.reading = self.writing = False
        self.on_read = _ignore_read
        self.on_flushed = _ignore_flushed
