"""The validated configuration: argv becomes one frozen :class:`Config`.

Parsing lives in :mod:`condure.cli` (driven by the table in
:mod:`condure.options`); this module holds the result and the pure helpers
that derive things from it (ZeroMQ endpoint names, per-worker limits).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A value that parses but is not acceptable (Condure: exit status 1)."""


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One ``--listen`` value.

    TCP: ``host``/``port`` set, ``path`` None. ``local``: ``path`` set.
    ``mode`` is ``"stream"`` or ``"req"``.
    """

    host: str | None = "0.0.0.0"
    port: int | None = 8000
    path: str | None = None
    mode: str = "stream"
    tls: bool = False
    default_cert: str | None = None
    file_mode: int | None = None  # mode= (octal) for local sockets
    user: str | None = None
    group: str | None = None
    fd_name: str | None = None  # fd-name=: an inherited (socket-activated) socket

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def address(self) -> str:
        """``127.0.0.1:8000``, ``[::1]:8000`` or the socket path."""
        if self.path is not None:
            return self.path
        if self.host is None and self.fd_name is not None:
            return f"fd-name={self.fd_name}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    log_level: int = 2
    id: str = "condure"
    workers: int = 2
    req_maxconn: int = 100
    stream_maxconn: int = 10000
    buffer_size: int = 8192
    body_buffer_size: int = 100000
    messages_max: int = 100
    max_message_size: int = 0
    req_timeout: int = 30
    stream_timeout: int = 1800
    head_timeout: int = 10
    body_min_rate: int = 1024
    max_conns_per_ip: int = 0
    listen: tuple[ListenSpec, ...] = field(default_factory=lambda: (ListenSpec(),))
    zclient_req: tuple[str, ...] = ("ipc://client",)
    zclient_stream: tuple[str, ...] = ("ipc://client",)
    zclient_connect: bool = False
    zserver_req: tuple[str, ...] = ()
    zserver_stream: tuple[str, ...] = ()
    zserver_connect: bool = False
    ipc_file_mode: int = 0
    tls_identities_dir: str = "."
    compression: bool = False
    compression_context: str = "server"  # what --compression adds (ws_handshake.CONTEXTS)
    deny_out_internal: bool = False
    accept_mode: str = "auto"
    drain_timeout: int = 30
    handoff_timeout: int = 5
    handoff: str = "auto"  # ask the handler before a WebSocket moves: auto, ask or skip
    worker_timeout: int = 20
    pid_file: str | None = None
    control_socket: str | None = None  # None: condure-<id>.ctl in the runtime dir; "": none
    zmq_curve_secret: str | None = None  # CURVE on handler-facing sockets (net/curve.py)
    zmq_curve_clients: str | None = None
    zmq_curve_server: str | None = None

    def __post_init__(self) -> None:
        if self.accept_mode not in ACCEPT_MODES:
            raise ConfigError("failed to parse accept-mode: expected one of "
                              + ", ".join(ACCEPT_MODES))
        if self.handoff not in HANDOFF_MODES:
            raise ConfigError("failed to parse handoff: expected auto, ask or skip")
        if self.compression_context not in COMPRESSION_CONTEXTS:
            raise ConfigError("failed to parse compression-context: expected one of "
                              + ", ".join(COMPRESSION_CONTEXTS))
        self._check_curve()

    def _check_curve(self) -> None:
        """The CURVE options fit the sockets: a key directory when condure
        binds handler-facing sockets, a server key when it connects them."""
        if self.zmq_curve_secret is None:
            for name in ("zmq_curve_clients", "zmq_curve_server"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name.replace('_', '-')} needs zmq-curve-secret")
            return
        server_role = self.uses_stream or self.uses_req
        client_role = bool(self.zserver_stream or self.zserver_req)
        binds = ((server_role and not self.zclient_connect)
                 or (client_role and not self.zserver_connect))
        connects = ((server_role and self.zclient_connect)
                    or (client_role and self.zserver_connect))
        if binds and self.zmq_curve_clients is None:
            raise ConfigError("zmq-curve-secret: condure binds handler sockets, "
                              "so zmq-curve-clients must name the allowed handlers' keys")
        if connects and self.zmq_curve_server is None:
            raise ConfigError("zmq-curve-secret: condure connects to handlers, "
                              "so zmq-curve-server must name their public key")

    @property
    def hwm(self) -> int:
        """Condure's high-water mark H = max(total maxconn / 20, 1)."""
        return max((self.req_maxconn + self.stream_maxconn) // 20, 1)

    @property
    def uses_stream(self) -> bool:
        return any(spec.mode == "stream" for spec in self.listen)

    @property
    def uses_req(self) -> bool:
        return any(spec.mode == "req" for spec in self.listen)


COMPRESSION_CONTEXTS = ("server", "none", "keep")  # session/ws_handshake.CONTEXTS
HANDOFF_MODES = ("auto", "ask", "skip")  # --handoff values (docs/handover.md)
# --accept-mode values; "auto" is reuseport when condure binds its listeners,
# shared under socket activation (docs/accept-modes.md).
ACCEPT_MODES = ("auto", "reuseport", "shared", "dispatch")

# Rust's integer parse errors, which Condure puts in its messages.
EMPTY = "cannot parse integer from empty string"
INVALID_DIGIT = "invalid digit found in string"
TOO_LARGE = "number too large to fit in target type"


def parse_uint(text: str, bits: int = 64, radix: int = 10) -> int:
    """Parse an unsigned integer as Rust's ``str::parse``/``from_str_radix``
    do (one optional ``+``, digits only, no spaces or underscores); raise
    ValueError with Rust's message."""
    if text == "":
        raise ValueError(EMPTY)
    digits = text[1:] if text[0] == "+" and len(text) > 1 else text
    allowed = "0123456789abcdefghijklmnopqrstuvwxyz"[:radix]
    if not digits.isascii() or any(ch.lower() not in allowed for ch in digits):
        raise ValueError(INVALID_DIGIT)
    value = int(digits, radix)
    if value >= 1 << bits:
        raise ValueError(TOO_LARGE)
    return value


_IPV4 = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def parse_socket_addr(text: str) -> tuple[str, int]:
    """``A.B.C.D:PORT`` or ``[IPV6%SCOPE]:PORT`` (numeric scope only), as Rust's
    ``SocketAddr`` parses it. Returns (host without brackets, port)."""
    host, sep, port_text = text.rpartition(":")
    port_ok = sep and port_text.isascii() and port_text.isdigit()
    if port_ok and int(port_text) < 1 << 16:
        port = int(port_text)
        if _IPV4.fullmatch(host) and all(int(o) < 256 for o in host.split(".")):
            return host, port
        if host.startswith("[") and host.endswith("]"):
            addr, _, scope = host[1:-1].partition("%")
            scope_ok = "%" not in host or (scope.isascii() and scope.isdigit()
                                           and int(scope) < 1 << 32)
            if scope_ok:
                try:
                    ipaddress.IPv6Address(addr)
                except ValueError:
                    pass
                else:
                    return host[1:-1], port
    raise ConfigError("failed to parse listen: invalid socket address syntax")


def parse_listen(value: str) -> tuple[ListenSpec, tuple[str, ...]]:
    """Parse one ``--listen`` value (Condure's syntax and messages).

    Returns the spec and the parameter keys that were given, in order.
    """
    first, *params = value.split(",")
    if first.startswith("fd-name="):
        # An inherited socket needs no address: "fd-name=NAME[,PARAM...]".
        first, params = "", [first, *params]
    mode, tls, default_cert, local = "stream", False, None, False
    file_mode = user = group = fd_name = None
    keys: list[str] = []
    for part in params:
        key, _, arg = part.partition("=")
        if key == "req":
            mode = "req"
        elif key == "stream":
            mode = "stream"
        elif key == "tls":
            tls = True
        elif key == "default-cert":
            default_cert = arg
        elif key == "local":
            local = True
        elif key == "mode":
            try:
                file_mode = parse_uint(arg, bits=32, radix=8)
            except ValueError as e:
                raise ConfigError(f"failed to parse mode: {e}") from None
        elif key == "user":
            user = arg
        elif key == "group":
            group = arg
        elif key == "fd-name":
            if not arg or ":" in arg:
                raise ConfigError(f"failed to parse listen: invalid fd name: {arg}")
            fd_name = arg
        else:
            raise ConfigError(f"failed to parse listen: invalid param: {part}")
        keys.append(key)
    if fd_name is not None:
        if file_mode is not None or user is not None or group is not None:
            raise ConfigError("failed to parse listen: mode, user and group do not apply "
                              "to an inherited socket (set them in the socket unit)")
        if first == "":
            spec = ListenSpec(host=None, port=None, path=None, mode=mode, tls=tls,
                              default_cert=default_cert, fd_name=fd_name)
            return spec, tuple(keys)
    if local:
        spec = ListenSpec(host=None, port=None, path=first, mode=mode,
                          file_mode=file_mode, user=user, group=group, fd_name=fd_name)
        return spec, tuple(keys)
    # The text after the last ":" (or all of it) must be a 16-bit port first;
    # only then is the whole address checked.
    port_text = first.rpartition(":")[2]
    try:
        parse_uint(port_text, bits=16)
    except ValueError:
        raise ConfigError(f"failed to parse listen: invalid port {port_text}") from None
    host, port = parse_socket_addr(first if ":" in first else f"0.0.0.0:{first}")
    spec = ListenSpec(host=host, port=port, mode=mode, tls=tls, default_cert=default_cert,
                      fd_name=fd_name)
    return spec, tuple(keys)


def stream_endpoints(base: str) -> tuple[str, str, str]:
    """Server-role endpoints for one ``--zclient-stream`` base, in the order
    (first-packet PUSH, later-packets ROUTER, return SUB).

    ``ipc://X`` -> ``ipc://X-out``, ``ipc://X-out-stream``, ``ipc://X-in``;
    ``tcp://H:P`` -> ports P, P+1, P+2. Raises :class:`ConfigError` with
    Condure's messages otherwise.
    """
    if base.startswith("ipc:"):
        return (base + "-out", base + "-out-stream", base + "-in")
    if base.startswith("tcp:"):
        # Condure takes the port after the last ":" of the whole spec, so
        # "tcp://1.2.3.4" reports the port "//1.2.3.4" as invalid.
        host, _, port_text = base.rpartition(":")
        try:
            port = parse_uint(port_text, bits=16)
        except ValueError as e:
            raise ConfigError(f"error parsing tcp port in base spec: {e}") from None
        return tuple(f"{host}:{port + i}" for i in range(3))  # type: ignore[return-value]
    raise ConfigError("base spec must be ipc or tcp")


def client_endpoints(base: str) -> tuple[str, str, str]:
    """Client-role endpoints of one ``--zserver-stream`` base, in the order
    (first packets ``in``, later packets ``in-stream``, return ``out``):
    ``ipc://X`` -> ``X-in``, ``X-in-stream``, ``X-out``; ``tcp://H:P`` ->
    ports P, P+1, P+2 (reference 3.1). Raises ConfigError like
    :func:`stream_endpoints`."""
    if base.startswith("ipc:"):
        return (base + "-in", base + "-in-stream", base + "-out")
    return stream_endpoints(base)
