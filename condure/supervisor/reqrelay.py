"""The req-mode relay between workers and the public DEALER (bind mode).

A plain ROUTER <-> DEALER proxy would put each worker's identity in the
envelope handlers see, one frame more than a single condure sends. This
relay keeps the wire identical instead:

- a request ``[worker, "", T...]`` from the internal ROUTER leaves the
  public DEALER as ``["", T...]``, exactly as a worker's DEALER sends it;
- a reply is read as a worker reads it (``zmqreq.packet_frame``: up to
  the first empty frame, at most 8 envelope frames) and goes to the worker
  named by its packet's id, ``"<index>-<slot>-<counter>"``: the reply
  envelope plays no part in routing, as in Condure.

Workers in proxy mode name their DEALER ``b"<index>-<pid>"``; the relay
learns those names from the requests. A reply goes to every live worker of
its index (more than one only while a replaced worker drains; the one that
does not hold the id ignores it).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import zmq

from condure.net.zmqio import BATCH
from condure.net.zmqreq import packet_frame
from condure.zhttp import tnetstring

log = logging.getLogger("condure")


def reply_index(payload: bytes) -> bytes | None:
    """The worker index in the id of a reply packet, or None."""
    if payload[:1] != b"T":
        return None
    try:
        fields = tnetstring.loads(payload[1:])
    except Exception:  # noqa: BLE001 - any malformed packet is dropped
        return None
    if not isinstance(fields, dict):
        return None
    ident = fields.get(b"id")
    if isinstance(ident, list) and ident and isinstance(ident[0], dict):
        ident = ident[0].get(b"id")
    if not isinstance(ident, bytes):
        return None
    index, sep, _ = ident.partition(b"-")
    return index if sep else None


def relay_req(router: zmq.Socket, dealer: zmq.Socket, control: zmq.Socket) -> None:
    """Thread body: runs until ``control`` receives a message."""
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    peers: dict[bytes, set[bytes]] = defaultdict(set)
    pending: list[bytes] | None = None  # a request the DEALER could not take yet
    poller = zmq.Poller()
    poller.register(control, zmq.POLLIN)
    try:
        while True:
            poller.register(router, 0 if pending else zmq.POLLIN)
            poller.register(dealer, zmq.POLLIN | (zmq.POLLOUT if pending else 0))
            events = dict(poller.poll())
            if control in events:
                control.recv()
                return
            if pending is not None and events.get(dealer, 0) & zmq.POLLOUT:
                pending = _forward(dealer, pending)
            if pending is None and events.get(router, 0) & zmq.POLLIN:
                for _ in range(BATCH):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    worker = frames[0]
                    peers[worker.partition(b"-")[0]].add(worker)
                    pending = _forward(dealer, [b"", *frames[2:]])
                    if pending is not None:
                        break
            if events.get(dealer, 0) & zmq.POLLIN:
                for _ in range(BATCH):
                    try:
                        frames = dealer.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    _reply(router, peers, frames)
    except zmq.ContextTerminated:
        pass


def _forward(dealer: zmq.Socket, frames: list[bytes]) -> list[bytes] | None:
    """Send a request on; the frames back when the DEALER cannot take them."""
    try:
        dealer.send_multipart(frames, zmq.NOBLOCK, copy=True)
    except zmq.Again:
        return frames
    return None


def _reply(router: zmq.Socket, peers: dict[bytes, set[bytes]], frames: list[bytes]) -> None:
    payload = packet_frame(frames)
    if payload is None:
        log.debug("dropping req-mode message without a usable envelope")
        return
    index = reply_index(payload)
    if index is None:
        log.debug("dropping req-mode reply whose id names no worker")
        return
    for worker in list(peers.get(index, ())):
        try:
            router.send_multipart((worker, b"", payload), zmq.NOBLOCK, copy=True)
        except zmq.Again:
            log.debug("req reply for worker %r dropped: its queue is full", worker)
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            peers[index].discard(worker)  # that worker is gone
