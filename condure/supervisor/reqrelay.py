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

Every request and every reply crosses this thread, so it is written for
the per-message cost (docs/performance.md, "Req mode: where the time
went"): one ``zmq_poll`` on prepared item lists per wakeup, everything
waiting read first and then sent back to back (one wakeup of ZeroMQ's I/O
thread per burst rather than one per message), integer flags, and a
reply's id found by the C tnetstring decoder when present. Requests the
DEALER cannot take yet (no handler, or all queues full) are held, in
order, and the internal ROUTER is not read until they have gone.
"""

from __future__ import annotations

import logging

import zmq

from condure.net.zmqio import BATCH
from condure.net.zmqreq import packet_frame
from condure.zhttp import tnetstring

try:
    # tnetstring3's C decoder (a dependency; also the codec's first try).
    from tnetstring import pop as _fast_pop
except Exception:  # noqa: BLE001 # pragma: no cover - absent or broken
    _fast_pop = None

log = logging.getLogger("condure")

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = _NOBLOCK | int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _fields(data: bytes) -> object:
    """The value a packet's tnetstring decodes to (bytes after it are
    ignored, as ``codec.decode`` does); raises on anything malformed."""
    if _fast_pop is not None:
        try:
            return _fast_pop(data)[0]
        except Exception:  # noqa: BLE001, S110 - our parser decides below
            pass
    return tnetstring.pop(data)[0]


def reply_index(payload: bytes) -> bytes | None:
    """The worker index in the id of a reply packet, or None."""
    if payload[:1] != b"T":
        return None
    try:
        fields = _fields(payload[1:])
    except Exception:  # noqa: BLE001 - any malformed packet is dropped
        return None
    if type(fields) is not dict:
        return None
    ident = fields.get(b"id")
    if type(ident) is list and ident and type(ident[0]) is dict:
        ident = ident[0].get(b"id")
    if type(ident) is not bytes:
        return None
    index, sep, _ = ident.partition(b"-")
    return index if sep else None


def _recv_message(sock: zmq.Socket, first: int = 1) -> list[bytes]:
    """Every frame of the next message (raises ``zmq.Again`` if none);
    ``first``: how many frames it surely has (2 on a ROUTER: the peer's
    identity and at least one more), read without asking ``RCVMORE``.
    A message arrives whole, so the frames after the first are there."""
    recv = sock.recv
    frames = [recv(_NOBLOCK)]
    for _ in range(first - 1):
        frames.append(recv(_NOBLOCK))
    while sock.getsockopt(_RCVMORE):
        frames.append(recv(_NOBLOCK))
    return frames


def relay_req(router: zmq.Socket, dealer: zmq.Socket, control: zmq.Socket) -> None:
    """Thread body: runs until ``control`` receives a message."""
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    peers: dict[bytes, list[bytes]] = {}  # worker index -> its live DEALER names
    held: list[bytes] = []  # requests the DEALER could not take yet, in order
    reading = [(control, _POLLIN), (router, _POLLIN), (dealer, _POLLIN)]
    waiting = [(control, _POLLIN), (dealer, _POLLIN | _POLLOUT)]
    poll = zmq.zmq_poll  # what Poller.poll calls, without its dict
    try:
        while True:
            router_in = dealer_events = 0
            for sock, events in poll(waiting if held else reading, -1):
                if sock is control:
                    control.recv()
                    return
                if sock is router:
                    router_in = 1
                else:
                    dealer_events = events
            if held:
                if dealer_events & _POLLOUT:
                    _forward(dealer, held)
                if not held:  # the ROUTER was not watched meanwhile: look
                    _requests(router, dealer, peers, held, False)
            elif router_in:
                _requests(router, dealer, peers, held, True)
            if dealer_events & _POLLIN:
                _replies(dealer, router, peers, True)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as e:  # pragma: no cover - reported, thread ends
        log.error("zmq proxy req relay: %s", e)


def _requests(router: zmq.Socket, dealer: zmq.Socket, peers: dict[bytes, list[bytes]],
              held: list[bytes], ready: bool) -> None:
    """Move what the workers sent (up to BATCH) to the public DEALER;
    ``ready``: the poll said a message is waiting."""
    batch: list[bytes] = []
    for n in range(BATCH):
        # ZMQ_EVENTS costs less than the EAGAIN of a receive that finds nothing.
        if (n or not ready) and not int(router.getsockopt(_EVENTS)) & _POLLIN:
            break
        try:
            frames = _recv_message(router, 2)
        except zmq.Again:
            break
        if len(frames) < 3 or frames[1]:
            log.debug("dropping a malformed req-mode message from a worker")
            continue
        worker = frames[0]
        index = worker.partition(b"-")[0]
        known = peers.get(index)
        if known is None:
            peers[index] = [worker]
        elif worker not in known:
            known.append(worker)
        batch.append(frames[2])
    if batch:
        held.extend(batch)
        _forward(dealer, held)


def _forward(dealer: zmq.Socket, held: list[bytes]) -> None:
    """Send the held requests on, back to back; what the DEALER refuses stays."""
    send = dealer.send
    sent = 0
    for payload in held:
        try:
            send(b"", _MORE)
        except zmq.Again:
            break
        send(payload, _NOBLOCK)  # once a first frame is taken, the rest is too
        sent += 1
    del held[:sent]


def _replies(dealer: zmq.Socket, router: zmq.Socket, peers: dict[bytes, list[bytes]],
             ready: bool) -> None:
    """Move what handlers sent (up to BATCH) to the workers named by the ids."""
    batch: list[tuple[bytes, bytes]] = []
    for n in range(BATCH):
        if (n or not ready) and not int(dealer.getsockopt(_EVENTS)) & _POLLIN:
            break
        try:
            frames = _recv_message(dealer)
        except zmq.Again:
            break
        payload = packet_frame(frames)
        if payload is None:
            log.debug("dropping req-mode message without a usable envelope")
            continue
        index = reply_index(payload)
        if index is None:
            log.debug("dropping req-mode reply whose id names no worker")
            continue
        batch.append((index, payload))
    send = router.send
    for index, payload in batch:
        workers = peers.get(index)
        if not workers:
            log.debug("dropping req-mode reply for worker %r: none known", index)
            continue
        for worker in list(workers):
            try:
                send(worker, _MORE)
            except zmq.Again:
                log.debug("req reply for worker %r dropped: its queue is full", worker)
                continue
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                workers.remove(worker)  # that worker is gone
                continue
            send(b"", _MORE)
            send(payload, _NOBLOCK)
