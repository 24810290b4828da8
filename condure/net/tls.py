"""TLS between a client socket and its session, on memory buffers.

The adapter keeps its one rhythm: raw bytes read from the socket go in with
:meth:`TlsLayer.receive`, which answers the plaintext for the session; the
session's output goes through :meth:`TlsLayer.encrypt` into the socket's
output buffer. The handshake runs inside the worker after accept, driven by
the same reads; until it completes nothing reaches the session, and if it
fails the connection is dropped (after the alert, if any, is sent).

A TLS connection cannot be exported to another process: its keys and
sequence numbers live inside OpenSSL.
"""

from __future__ import annotations

import ssl

READ_CHUNK = 65536


class TlsError(Exception):
    """The handshake failed or the client sent bad TLS data."""


class TlsLayer:
    __slots__ = ("handshaking", "incoming", "obj", "outgoing")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaking = True

    def receive(self, raw: bytes) -> tuple[bytes, bool]:
        """Feed bytes read from the socket (``b""``: end of input).

        Returns (plaintext, eof): the decrypted bytes now available and
        whether the client's stream has ended (close_notify or a bare end of
        input after the handshake). Raises :class:`TlsError`. Anything the
        protocol wants sent back is in :meth:`take_output` afterwards.
        """
        if raw:
            self.incoming.write(raw)
        else:
            self.incoming.write_eof()
        obj = self.obj
        if self.handshaking:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                if not raw:
                    raise TlsError("client closed during the handshake") from None
                return b"", False
            except (ssl.SSLError, OSError, ValueError) as e:
                raise TlsError(f"handshake failed: {e}") from None
            self.handshaking = False
        chunks = []
        eof = False
        while True:
            try:
                chunk = obj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
                break
            except ssl.SSLError as e:
                raise TlsError(str(e)) from None
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0], eof
        return b"".join(chunks), eof

    def encrypt(self, data: bytes) -> bytes:
        """Records carrying ``data`` (and anything else pending)."""
        obj = self.obj
        view = memoryview(data)
        while view:
            written = obj.write(view)
            view = view[written:]
        return self.outgoing.read()

    def take_output(self) -> bytes:
        """Protocol bytes waiting to be sent (handshake, alerts, tickets)."""
        return self.outgoing.read()

    def close_notify(self) -> bytes:
        """The close_notify alert, to be sent before our FIN."""
        try:
            self.obj.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass  # the client's close_notify is not awaited
        return self.outgoing.read()

    @property
    def alpn(self) -> str | None:
        return self.obj.selected_alpn_protocol()
