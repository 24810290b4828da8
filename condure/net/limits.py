"""Connection-level limits of one worker: connections per client address
(``--max-conns-per-ip``) and the counters that go into the worker's stats
(``"limits"``, shown by ``condure ctl status``; docs/operations.md).

The per-address count is per worker: with several workers a client may
hold up to ``workers * limit`` connections (how connections spread over
workers is up to the kernel or the supervisor; docs/accept-modes.md).
Connections over the limit are closed at once, before condure reads or
writes anything on them. Unix-socket clients are not counted. Connections
adopted from another process (a reload's handover, or systemd's fd store
after a restart) count as well, by their peer address, but are never
refused: they were accepted under the limit, and an adoption must not drop
a live connection. Until enough of them close, new connections from their
address are refused as usual (else each reload would let a client that
holds its connections open ``limit`` more).
"""

from __future__ import annotations

import socket
from typing import Any

from condure.config import Config
from condure.session.limits import ReadLimits


class ConnLimits:
    """Per-address connection counts and the limit counters of a worker."""

    __slots__ = ("by_slot", "maxconn_full", "per_address", "per_ip", "per_ip_refused", "read")

    def __init__(self, config: Config) -> None:
        self.per_ip = config.max_conns_per_ip  # 0: no limit
        # The sessions' limits (their counters are read here).
        self.read = ReadLimits(float(config.head_timeout), config.body_min_rate)
        self.per_address: dict[str, int] = {}
        self.by_slot: dict[int, str] = {}
        self.maxconn_full = 0  # times accepting paused at the connection limit
        self.per_ip_refused = 0

    def admit(self, slot: int, address: str | None) -> bool:
        """Count a new connection from ``address`` on ``slot``; False when
        that address already has its limit (the caller closes it)."""
        if not self.per_ip or address is None:
            return True
        held = self.per_address.get(address, 0)
        if held >= self.per_ip:
            self.per_ip_refused += 1
            return False
        self.per_address[address] = held + 1
        self.by_slot[slot] = address
        return True

    def adopted(self, slot: int, address: str | None) -> None:
        """Count a connection adopted on ``slot`` from another process; it
        is kept even when it puts ``address`` over the limit."""
        if not self.per_ip or address is None:
            return
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.by_slot[slot] = address

    def release(self, slot: int) -> None:
        """The connection on ``slot`` is gone."""
        if not self.by_slot:
            return
        address = self.by_slot.pop(slot, None)
        if address is None:
            return
        held = self.per_address[address] - 1
        if held:
            self.per_address[address] = held
        else:
            del self.per_address[address]

    def stats(self) -> dict[str, Any]:
        """Counters since the worker started (the stats' ``"limits"``)."""
        return {**self.read.counts, "per_ip_refused": self.per_ip_refused,
                "maxconn_full": self.maxconn_full}


def peer_host(sock: socket.socket, recorded: bytes | None) -> str | None:
    """The client address of an adopted TCP connection as ``accept`` gives
    it (None for a Unix-socket client); ``recorded``, the address in its
    session record, when the peer is already gone."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        host = sock.getpeername()[0]
    except OSError:
        return recorded.decode("ascii", "replace") if recorded else None
    return host if isinstance(host, str) else None
