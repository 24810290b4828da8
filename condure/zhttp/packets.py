"""ZHTTP packet types.

One small dataclass per packet type. They are not declared frozen because
a frozen dataclass costs three times as much to build and packets are built
on every request; treat them as immutable all the same. Every packet carries the common
fields (``from_``, ``ids``); the ZHTTP ``type`` field is implied by the class.

Conventions shared by every class:

* Strings that ZHTTP carries as raw bytes (ids, header values, bodies) are
  ``bytes``. Fields the protocol requires to be UTF-8 text (``method``,
  ``uri``, header names, ``reason``, ``condition``, ``peer-address``, the
  close reason) are also kept as ``bytes`` so that encoding is a copy, not
  a transcode; the decoder checks that they are valid UTF-8.
* ``None`` means "absent". Encoding omits absent fields and, as Condure
  does, fields that are empty, zero or false (section 4.1 of the protocol
  notes in docs/architecture.md).
* ``ids`` holds one :class:`Ident` for the single-id form, several for the
  list form. The encoder writes the single-id form when there is exactly one
  id and ``id_list`` is false.
"""

from __future__ import annotations

from dataclasses import dataclass

Header = tuple[bytes, bytes]


@dataclass(slots=True)
class Ident:
    """One session address inside a packet: its id and, optionally, seq."""

    id: bytes
    seq: int | None = None


@dataclass(slots=True)
class Data:
    """A data packet (ZHTTP ``type`` absent or empty).

    Request-direction fields (method ... peer_port, connect_*) and
    response-direction fields (code, reason) share one class; the encoder
    writes them in the order Condure uses:
    method, uri, code, reason, headers, content-type, body, credits, more,
    stream, max-size, timeout, peer-address, peer-port, then the client-role
    fields.
    """

    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    method: bytes | None = None
    uri: bytes | None = None
    code: int | None = None
    reason: bytes | None = None
    headers: tuple[Header, ...] | None = None
    content_type: bytes | None = None
    body: bytes = b""
    credits: int = 0
    more: bool = False
    stream: bool = False
    max_size: int | None = None
    timeout: int | None = None
    peer_address: bytes | None = None
    peer_port: int | None = None
    connect_host: bytes | None = None
    connect_port: int | None = None
    ignore_policies: bool = False
    trust_connect_host: bool = False
    ignore_tls_errors: bool = False
    follow_redirects: bool = False


@dataclass(slots=True)
class Error:
    """``type: error``. ``code``/``reason``/``headers``/``body`` only matter
    when ``condition`` is ``rejected``."""

    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    condition: bytes = b""
    code: int | None = None
    reason: bytes | None = None
    headers: tuple[Header, ...] | None = None
    body: bytes = b""


@dataclass(slots=True)
class Credit:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    credits: int = 0


@dataclass(slots=True)
class KeepAlive:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False


@dataclass(slots=True)
class Cancel:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False


@dataclass(slots=True)
class HandoffStart:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False


@dataclass(slots=True)
class HandoffProceed:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False


@dataclass(slots=True)
class Close:
    """WebSocket close. ``body`` is the reason (UTF-8); it is written only
    when ``code`` is present and the reason is non-empty."""

    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    code: int | None = None
    body: bytes = b""


@dataclass(slots=True)
class Ping:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    body: bytes = b""
    credits: int = 0  # accepted on input, never written


@dataclass(slots=True)
class Pong:
    from_: bytes = b""
    ids: tuple[Ident, ...] = ()
    id_list: bool = False
    body: bytes = b""
    credits: int = 0  # accepted on input, never written


Packet = (
    Data | Error | Credit | KeepAlive | Cancel | HandoffStart | HandoffProceed | Close | Ping | Pong
)

# ZHTTP ``type`` value of each class (Data has none).
TYPE_NAMES: dict[type, bytes] = {
    Data: b"",
    Error: b"error",
    Credit: b"credit",
    KeepAlive: b"keep-alive",
    Cancel: b"cancel",
    HandoffStart: b"handoff-start",
    HandoffProceed: b"handoff-proceed",
    Close: b"close",
    Ping: b"ping",
    Pong: b"pong",
}
