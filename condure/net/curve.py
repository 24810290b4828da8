"""ZeroMQ CURVE on the handler-facing sockets (``--zmq-curve-*``).

One call, :func:`secure`, made on every socket handlers reach (before its
bind or connect) and on none of the internal hops between the
supervisor's relays and the workers. Without ``--zmq-curve-secret`` it
does nothing and the sockets stay plain, as in Condure.

- A socket condure binds becomes a CURVE server with condure's key pair.
  Before the first one is bound in a ZeroMQ context, a ZAP handler
  (``zmq.auth.ThreadAuthenticator``) is started in that context; it lets
  in only handlers whose public key is in ``--zmq-curve-clients`` (the
  ``*.key`` certificates there; the directory is read again when its
  modification time changes, so adding or removing a handler needs no
  restart). A refused key is logged as a warning, at most one line per
  ``REFUSAL_INTERVAL`` seconds, with the number of refusals left unlogged.
- A socket condure connects becomes a CURVE client with condure's key
  pair and the handler's public key (``--zmq-curve-server``).
- Every such socket is watched (a ZeroMQ monitor, in a thread of its own):
  a peer that fails the handshake before any key is checked (a handler
  that speaks no CURVE, or condure reaching a server with another key) is
  logged as a warning naming the endpoint, at most one line per
  ``REFUSAL_INTERVAL`` seconds per socket. The watching thread ends when
  the context is terminated.

Call :func:`stop` for a context before terminating it: the ZAP handler's
socket would keep ``Context.term`` waiting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from condure.config import Config, ConfigError

log = logging.getLogger("condure.zmq")
# zmq.auth's own lines (debug, and errors about malformed ZAP requests) go
# to condure's log under this name.
auth_log = logging.getLogger("condure.zmq.auth")

REFUSAL_INTERVAL = 10.0  # seconds between two refusal lines
# Handshakes that fail before ZAP decides (refused keys are logged by ZAP).
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


@dataclass(frozen=True, slots=True)
class Keys:
    """Z85-encoded keys, as ZeroMQ's socket options take them."""

    public: bytes
    secret: bytes
    server: bytes | None  # the handler's public key (connect mode)


def enabled(config: Config) -> bool:
    return config.zmq_curve_secret is not None


def load(config: Config) -> Keys | None:
    """The keys the options name (None without ``--zmq-curve-secret``);
    raises :class:`ConfigError` naming the file that cannot be used."""
    if config.zmq_curve_secret is None:
        return None
    return _load(config.zmq_curve_secret, config.zmq_curve_server, config.zmq_curve_clients)


@lru_cache(maxsize=4)
def _load(secret_file: str, server_file: str | None, clients_dir: str | None) -> Keys:
    public, secret = _read(secret_file, "zmq-curve-secret")
    if secret is None:
        raise ConfigError(f"zmq-curve-secret: {secret_file} holds no secret key "
                          "(give the .key_secret file)")
    server = _read(server_file, "zmq-curve-server")[0] if server_file is not None else None
    if clients_dir is not None:
        _read_clients(clients_dir)  # fails now rather than at the first handler
    return Keys(public, secret, server)


def _read(path: str, option: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{option}: cannot read a ZeroMQ certificate from {path}: "
                          f"{e}") from None


def _read_clients(directory: str) -> frozenset[bytes]:
    try:
        return frozenset(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as e:
        raise ConfigError(f"zmq-curve-clients: cannot read the certificates in "
                          f"{directory}: {e}") from None


def secure(sock: zmq.Socket, config: Config, *, connect: bool) -> None:
    """Make ``sock`` (not bound or connected yet) a CURVE server
    (``connect`` false) or client, if the options ask for CURVE."""
    keys = load(config)
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    if connect:
        if keys.server is None:
            raise ConfigError("zmq-curve-server is needed to connect with CURVE")
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
    else:
        if config.zmq_curve_clients is None:
            raise ConfigError("zmq-curve-clients is needed to bind with CURVE")
        _authenticator(sock.context, config.zmq_curve_clients)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    _watch_handshakes(sock, "a handler that speaks no CURVE?" if not connect
                      else "a handler with another key than --zmq-curve-server, or no CURVE?")


def _watch_handshakes(sock: zmq.Socket, hint: str) -> None:
    """Log failed handshakes on ``sock`` (see the module docstring)."""
    monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
    threading.Thread(target=_report_handshakes, args=(monitor, hint), daemon=True,
                     name="curve-handshakes").start()


class LineBudget:
    """At most one log line per ``REFUSAL_INTERVAL``: :meth:`take` gives the
    line's tail (how many went unlogged since the last one), or None when
    this one is to be counted and not logged."""

    def __init__(self, what: str, clock=time.monotonic) -> None:
        self.what = what  # "refusals", or "": named in the tail
        self.clock = clock
        self.last = float("-inf")
        self.unlogged = 0

    def take(self) -> str | None:
        now = self.clock()
        if now - self.last < REFUSAL_INTERVAL:
            self.unlogged += 1
            return None
        what = f" {self.what}" if self.what else ""
        tail = f" ({self.unlogged} more{what} not logged)" if self.unlogged else ""
        self.last, self.unlogged = now, 0
        return tail


def _report_handshakes(monitor: zmq.Socket, hint: str) -> None:
    budget = LineBudget("")
    try:
        while True:
            event = recv_monitor_message(monitor)
            if event.get("event") == zmq.EVENT_MONITOR_STOPPED:
                return
            more = budget.take()
            if more is None:
                continue
            endpoint = event.get("endpoint", b"")
            log.warning("zmq curve: a peer on %s failed the handshake (%s): %s%s",
                        endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes)
                        else endpoint, _why(event), hint, more)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as e:
        log.debug("zmq curve: handshake watch ended: %s", e)
    finally:
        monitor.close(linger=0)


def _why(event: Mapping[str, Any]) -> str:
    if event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        value = event.get("value")
        if value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", None):
            return "security mechanism mismatch"
        return f"protocol error {value:#x}" if isinstance(value, int) else "protocol error"
    return "no detail"


# -- the ZAP handler ----------------------------------------------------------


class AllowedKeys:
    """The public keys in a directory, read again when it changes; the
    ZAP handler's credentials provider."""

    def __init__(self, directory: str, clock=time.monotonic) -> None:
        self.directory = directory
        self._mtime = self._stat()
        self.keys = _read_clients(directory)
        self.peer = ""  # the address of the handshake being decided
        self.budget = LineBudget("refusals", clock)

    def _stat(self) -> int | None:
        try:
            return os.stat(self.directory).st_mtime_ns
        except OSError:
            return None

    def _refresh(self) -> None:
        mtime = self._stat()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self.keys = _read_clients(self.directory)
        except ConfigError as e:
            log.error("%s; keeping the %d keys read before", e, len(self.keys))
            return
        log.info("zmq curve: %d handler keys in %s", len(self.keys), self.directory)

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the handler with the Z85 public ``key`` may connect."""
        self._refresh()
        if key in self.keys:
            return True
        more = self.budget.take()
        if more is None:
            return False
        log.warning("zmq curve: refused a handler%s with key %s: not in %s%s",
                    f" at {self.peer}" if self.peer else "", key.decode("ascii", "replace"),
                    self.directory, more)
        return False


class _Authenticator(ThreadAuthenticator):
    """Remembers each request's peer address for the refusal line."""

    allowed: AllowedKeys

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.allowed.peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


_lock = threading.Lock()
_running: dict[int, tuple[zmq.Context, _Authenticator]] = {}


def _authenticator(ctx: zmq.Context, directory: str) -> _Authenticator:
    """The ZAP handler of ``ctx``, started on first use."""
    with _lock:
        entry = _running.get(id(ctx))
        if entry is not None:
            return entry[1]
        auth = _Authenticator(ctx, log=auth_log)
        auth.allowed = AllowedKeys(directory)
        auth.configure_curve_callback("*", auth.allowed)
        auth.start()
        log.info("zmq curve: %d handler keys in %s", len(auth.allowed.keys), directory)
        _running[id(ctx)] = (ctx, auth)
        return auth


def stop(ctx: zmq.Context | None) -> None:
    """Stop the ZAP handler of ``ctx``, if one was started."""
    if ctx is None:
        return
    with _lock:
        entry = _running.pop(id(ctx), None)
    if entry is not None:
        entry[1].stop()
