#!/usr/bin/env python3
"""An echo handler whose sessions survive condure's reloads and restarts.

- An HTTP request gets `200 OK` with the body `ok <path>\\n`; one with a
  body is answered once all of it came, with its SHA-256 in a
  `Body-Sha256` header (hex) and its size in `Body-Size`. One for
  `/poll/<seconds>` is a long-poll: it is answered with a `keep-alive` at
  once (condure then holds it in flight, and can move it) and with the
  `200 OK` that many seconds later (later still while condure moves it).
- A WebSocket is accepted and every message is sent back with its type
  (text or binary); pings are answered with pongs, a close with a close.
- Condure's handoff (see docs/handoff.md) is honoured: on `handoff-start`
  the handler answers `handoff-proceed` and then sends nothing for that
  session, queueing its echoes, until condure's next `keep-alive` for it;
  then it sends the queue in order and carries on.
- Packets are published through an XPUB socket and held for an address
  until condure's subscription for it is there, so that nothing is lost
  while condure's SUB socket (re)connects after a restart.
- A packet for a session it does not have (ended, or never its own) is
  answered with `cancel` (no seq), as a ZHTTP peer does; never a cancel or
  an error. Condure then ends its side at once: after a restart, a moved
  long-poll whose answer was lost meanwhile (see `--no-hold`) ends when
  condure's resume reaches the handler, not after the 60 s session timeout.

Flow control follows condure's credits: an echo goes out only when condure
has room for it (the rest waits in order), and the credits condure spent on
a client message are given back in the echo packet itself. A keep-alive
from condure is answered with one only when the session has been quiet for
10 s (condure ends a session whose handler says nothing for 60 s).

From a checkout after scripts/setup, in the directory where condure was
started:

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/handoffhandler.py
    curl -i http://localhost:8000/hello

Options: `--base` (default ipc://client; see endpoints.py), `--bind` (when
condure runs with `--zclient-connect`), `--identity`, `--verbose` (print
every packet), and two that make it behave like a handler without
condure's handoff, such as Pushpin 1.36 (for tests):

- `--ignore-handoff`: `handoff-start` is ignored entirely: no
  `handoff-proceed`, nothing held; echoes and credits go on as usual with
  the same seq numbering (condure then moves the session without the
  answer, docs/handover.md).
- `--no-hold`: an address that had a subscriber and lost it (condure
  restarting) gets its packets published all the same, so ZeroMQ drops
  them while nobody is subscribed, as a plain PUB socket does. Packets are
  still held for an address never subscribed yet (this handler's start).

And one for a handler that is slow to answer (for tests):

- `--handoff-delay SECONDS`: `handoff-start` is answered that much later;
  the session is served as usual meanwhile, and held once answered.

And one for a handler that sends on its own (for tests):

- `--keep-alive-every SECONDS`: from its first SIGUSR1 on, every WebSocket
  session that is not held gets a `keep-alive` (with its seq) every that
  many seconds, as Pushpin refreshes its sessions; paused while no condure
  is subscribed to anything at all (between a restart's old process and
  the next one's bind, nothing could take them).
"""

import argparse
import hashlib
import os
import signal
import sys
import time
from collections import deque

import tnetstring
import zmq
from endpoints import add_base_option, stream_endpoints

IN_CREDITS = 65536  # what condure may send us at once per WebSocket
BATCH = 512  # messages read from one socket before looking at the others
SILENCE = 10.0  # answer condure's keep-alive when we were quiet this long
EXPIRY = 150.0  # forget a session condure has said nothing about this long
DATA, PONG, CLOSE, CREDIT = range(4)


def t_str(value):
    return b"%d:%b," % (len(value), value)


def t_int(value):
    digits = b"%d" % value
    return b"%d:%b#" % (len(digits), digits)


SEQ_KEY = t_str(b"seq")
TYPE_TEXT = t_str(b"content-type") + t_str(b"text")
TYPE_BINARY = t_str(b"content-type") + t_str(b"binary")
BODY_KEY = t_str(b"body")
CREDITS_KEY = t_str(b"credits")
MORE_TRUE = t_str(b"more") + b"4:true!"
TYPE_FIELD = {name: t_str(b"type") + t_str(name) for name in
              (b"credit", b"keep-alive", b"handoff-proceed", b"close", b"pong", b"cancel")}
TEXT_PLAIN = [[b"Content-Type", b"text/plain"]]


class Stop(Exception):
    """Raised by the signal handler to leave the main loop."""


class Session:
    """One ZHTTP session: seqs both ways, credits, the queue, handoff state."""

    __slots__ = (
        "addr",
        "cap",
        "credits",
        "digest",
        "held",
        "id_item",
        "in_seq",
        "last_in",
        "last_out",
        "out_seq",
        "path",
        "queue",
        "rid",
        "size",
        "ws",
    )

    def __init__(self, rid, addr, credits, ws, now):
        self.rid = rid
        self.id_item = t_str(b"id") + t_str(rid)
        self.addr = addr
        self.ws = ws
        self.in_seq = 1  # the request was seq 0
        self.out_seq = 0
        self.credits = credits
        self.cap = max(credits, 1)
        self.queue = deque()
        self.held = False
        self.last_in = now
        self.last_out = now
        self.path = b"/"
        self.digest = None  # of an HTTP request body (hashlib), once it has one
        self.size = 0


class Gate:
    """XPUB socket that holds packets for an address until it is subscribed."""

    def __init__(self, sock, hold=True):
        self.sock = sock
        self.hold = hold  # False: --no-hold
        self.seen = set()  # addresses subscribed once (used with --no-hold)
        self.prefixes = set()
        self.open = set()  # addresses with a subscriber
        self.waiting = {}  # address -> [message], in order
        self.out = []  # ready to publish at the next flush()

    def send(self, addr, message):
        if addr in self.open:
            self.out.append(message)
            return
        if not self.hold and addr in self.seen:
            self.out.append(message)  # ZeroMQ drops it unless subscribed again
            return
        if addr not in self.waiting and self._subscribed(addr):
            self.open.add(addr)
            if not self.hold:
                self.seen.add(addr)
            self.out.append(message)
            return
        self.waiting.setdefault(addr, []).append(message)

    def flush(self):
        """Publish what was sent since the last flush, back to back (one
        wakeup of ZeroMQ's I/O thread for many packets, not one each)."""
        send = self.sock.send
        for message in self.out:
            send(message)
        self.out.clear()

    def _subscribed(self, addr):
        topic = addr + b" "
        return any(topic.startswith(prefix) for prefix in self.prefixes)

    def drain(self):
        changed = False
        while True:
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                self.prefixes.add(event[1:])
                changed = True
            elif event[:1] == b"\x00":
                self.prefixes.discard(event[1:])
                changed = True
        if changed:
            self.open = {a for a in self.open if self._subscribed(a)}
            for addr in [a for a in self.waiting if self._subscribed(a)]:
                self.open.add(addr)
                if not self.hold:
                    self.seen.add(addr)
                self.out.extend(self.waiting.pop(addr))


class Handler:
    def __init__(self, ctx, args):
        self.identity = args.identity.encode()
        self.from_item = t_str(b"from") + t_str(self.identity)
        self.verbose = args.verbose
        self.ignore_handoff = args.ignore_handoff
        self.handoff_delay = args.handoff_delay
        self.keep_alive_every = args.keep_alive_every
        self.ticking = False  # --keep-alive-every: since SIGUSR1
        self.next_tick = 0.0
        self.late = []  # (due, id) of handoff-proceeds held back (--handoff-delay)
        self.sessions = {}
        self.polls = []  # (due, id) of long-polls to answer
        self.now = time.monotonic()
        out, out_stream, inbound = stream_endpoints(args.base)
        self.pull = ctx.socket(zmq.PULL)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.identity = self.identity
        xpub = ctx.socket(zmq.XPUB)
        xpub.sndhwm = 0  # never drop: condure's credits bound what we queue
        for sock in (self.pull, self.router, xpub):
            sock.linger = 0
            sock.rcvhwm = 0
        for sock, endpoint in ((self.pull, out), (self.router, out_stream), (xpub, inbound)):
            sock.bind(endpoint) if args.bind else sock.connect(endpoint)
        self.gate = Gate(xpub, hold=not args.no_hold)
        self.sockets = (self.pull, self.router, xpub)

    def log(self, text):
        print(text, file=sys.stderr, flush=True)

    # -- sending --------------------------------------------------------

    def emit(self, sess, fields):
        """Encode and publish one packet for `sess` with the next seq."""
        body = self.from_item + sess.id_item + SEQ_KEY + t_int(sess.out_seq) + fields
        sess.out_seq += 1
        sess.last_out = self.now
        if self.verbose:
            self.log(f"OUT {sess.addr} {sess.rid} seq {sess.out_seq - 1} {fields!r}")
        self.gate.send(sess.addr, sess.addr + b" T%d:%b}" % (len(body), body))

    def flush(self, sess):
        """Send queued packets in order, as far as credits allow."""
        queue = sess.queue
        while queue and not sess.held:
            item = queue[0]
            kind = item[0]
            if kind is DATA:
                _, type_item, body, more, give = item
                size = len(body)
                if size > sess.credits:
                    # Wait for credits, unless condure can never hold the
                    # whole message: then send what fits as a fragment.
                    if size <= sess.cap or sess.credits <= 0:
                        break
                    part = sess.credits
                    item[2] = body[part:]
                    item[4] = 0
                    body, more, size = body[:part], True, part
                else:
                    queue.popleft()
                sess.credits -= size
                fields = type_item
                if body:
                    fields += BODY_KEY + t_str(body)
                if give:
                    fields += CREDITS_KEY + t_int(give)
                if more:
                    fields += MORE_TRUE
                self.emit(sess, fields)
            elif kind is PONG:
                body, give = item[1], item[2]
                if len(body) > sess.credits:
                    break
                queue.popleft()
                sess.credits -= len(body)
                fields = TYPE_FIELD[b"pong"]
                if body:
                    fields += BODY_KEY + t_str(body)
                if give:
                    fields += CREDITS_KEY + t_int(give)
                self.emit(sess, fields)
            elif kind is CREDIT:
                queue.popleft()
                self.emit(sess, TYPE_FIELD[b"credit"] + CREDITS_KEY + t_int(item[1]))
            else:  # CLOSE: the last packet of the session
                queue.clear()
                code = item[1]
                code_field = b"" if code is None else t_str(b"code") + t_int(code)
                self.emit(sess, TYPE_FIELD[b"close"] + code_field)
                self.sessions.pop(sess.rid, None)

    # -- receiving ------------------------------------------------------

    def on_request(self, req):
        rid, addr = req.get(b"id"), req.get(b"from")
        if not isinstance(rid, bytes) or not isinstance(addr, bytes) or req.get(b"type"):
            return
        uri = req.get(b"uri", b"")
        ws = uri.startswith(b"ws")
        sess = Session(rid, addr, req.get(b"credits", 0), ws, self.now)
        rest = uri.split(b"://", 1)[-1]
        slash = rest.find(b"/")
        sess.path = rest[slash:] if slash >= 0 else b"/"
        if ws:
            self.sessions[rid] = sess
            self.emit(sess, tnet_fields({b"code": 101, b"reason": b"Switching Protocols",
                                         b"credits": IN_CREDITS}))
        elif sess.path.startswith(b"/poll/") and not req.get(b"more"):
            try:
                delay = float(sess.path[len(b"/poll/"):])
            except ValueError:
                delay = 0.0
            self.sessions[rid] = sess
            self.emit(sess, TYPE_FIELD[b"keep-alive"])
            self.polls.append((self.now + delay, rid))
        elif req.get(b"more"):
            self.sessions[rid] = sess  # answered once the body is complete
            sess.digest, sess.size = hashlib.sha256(), 0
            self.emit(sess, TYPE_FIELD[b"credit"] + CREDITS_KEY + t_int(IN_CREDITS))
        else:
            self.answer_http(sess)

    def answer_http(self, sess):
        headers = TEXT_PLAIN
        if sess.digest is not None:
            headers = [*TEXT_PLAIN, [b"Body-Sha256", sess.digest.hexdigest().encode()],
                       [b"Body-Size", b"%d" % sess.size]]
        self.emit(sess, tnet_fields({b"code": 200, b"reason": b"OK", b"headers": headers,
                                     b"body": b"ok " + sess.path + b"\n"}))
        self.sessions.pop(sess.rid, None)

    def on_packet(self, packet):
        rid = packet.get(b"id")
        if isinstance(rid, list):  # several sessions in one packet
            for entry in rid:
                if isinstance(entry, dict):
                    self.on_session_packet(entry.get(b"id"), entry.get(b"seq"), packet)
        else:
            self.on_session_packet(rid, packet.get(b"seq"), packet)

    def on_session_packet(self, rid, seq, packet):
        sess = self.sessions.get(rid)
        if sess is None:
            if self.verbose:
                self.log(f"IN unknown id {rid!r}: {packet}")
            self.cancel_unknown(rid, packet)
            return
        if self.verbose:
            self.log(f"IN {rid!r} seq {seq}: {packet}")
        if seq is not None:
            if seq != sess.in_seq:
                self.log("{}: seq {} from condure, expected {}".format(rid.decode(errors="replace"),
                                                                        seq, sess.in_seq))
            sess.in_seq = seq + 1
        sess.last_in = self.now
        addr = packet.get(b"from")
        if addr and addr != sess.addr:
            sess.addr = addr
        kind = packet.get(b"type") or b""
        sess.credits += packet.get(b"credits", 0)  # on credit packets and any other
        if kind == b"":
            body = packet.get(b"body", b"")
            if sess.ws:
                type_item = TYPE_BINARY if packet.get(b"content-type") == b"binary" else TYPE_TEXT
                sess.queue.append([DATA, type_item, body, bool(packet.get(b"more")), len(body)])
            else:
                if sess.digest is not None:
                    sess.digest.update(body)
                    sess.size += len(body)
                if packet.get(b"more"):
                    if body:
                        sess.queue.append((CREDIT, len(body)))
                else:
                    self.answer_http(sess)
                    return
        elif kind == b"keep-alive":
            if sess.held:
                sess.held = False  # condure is back: resume
            elif self.now - sess.last_out >= SILENCE:
                # Condure ends a session whose handler is silent for 60 s.
                self.emit(sess, TYPE_FIELD[b"keep-alive"])
        elif kind == b"handoff-start":
            if self.handoff_delay:
                self.late.append((self.now + self.handoff_delay, rid))
            elif not self.ignore_handoff:
                self.emit(sess, TYPE_FIELD[b"handoff-proceed"])
                sess.held = True
        elif kind == b"ping":
            body = packet.get(b"body", b"")
            sess.queue.append((PONG, body, len(body)))
        elif kind == b"pong":
            if packet.get(b"body"):
                sess.queue.append((CREDIT, len(packet[b"body"])))
        elif kind == b"close":
            sess.queue.append((CLOSE, packet.get(b"code")))
        elif kind in (b"cancel", b"error"):
            del self.sessions[rid]
            return
        self.flush(sess)

    def cancel_unknown(self, rid, packet):
        """A packet for a session this handler does not have (it ended here,
        or was never ours): answer `cancel`, as a ZHTTP peer does, so that
        condure ends its side at once instead of after its session timeout
        (a long-poll whose answer was lost while condure restarted, say).
        Never in answer to a cancel or an error; no seq (there is no session
        to number it in)."""
        addr = packet.get(b"from")
        if packet.get(b"type") in (b"cancel", b"error"):
            return
        if not isinstance(rid, bytes) or not isinstance(addr, bytes):
            return
        if self.verbose:
            self.log(f"OUT {addr} {rid} cancel (unknown id)")
        body = self.from_item + t_str(b"id") + t_str(rid) + TYPE_FIELD[b"cancel"]
        self.gate.send(addr, addr + b" T%d:%b}" % (len(body), body))

    def expire(self):
        limit = self.now - EXPIRY
        for rid in [r for r, s in self.sessions.items() if s.last_in < limit]:
            self.log("{}: nothing from condure for {:.0f} s, forgotten".format(
                rid.decode(errors="replace"), EXPIRY))
            del self.sessions[rid]

    # -- main loop ------------------------------------------------------

    def run(self):
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        next_expiry = time.monotonic() + 5.0
        while True:
            wait = 100 if self.polls or self.late else 1000
            if self.ticking:
                wait = min(wait, max(int((self.next_tick - time.monotonic()) * 1000), 0))
            ready = dict(poller.poll(wait))
            self.now = time.monotonic()
            if self.gate.sock in ready:
                self.gate.drain()
            if self.pull in ready:
                self.read(self.pull, self.on_request, multipart=False)
            if self.router in ready:
                self.read(self.router, self.on_packet, multipart=True)
            if self.now >= next_expiry:
                self.expire()
                next_expiry = self.now + 5.0
            if self.polls:
                self.answer_polls()
            if self.late:
                self.answer_late()
            if self.ticking and self.now >= self.next_tick:
                self.tick()
            self.gate.flush()

    def tick(self):
        """--keep-alive-every: a keep-alive to each WebSocket not held,
        while condure is subscribed to something."""
        self.next_tick = self.now + self.keep_alive_every
        if not self.gate.prefixes:
            return
        for sess in list(self.sessions.values()):
            if sess.ws and not sess.held:
                self.emit(sess, TYPE_FIELD[b"keep-alive"])

    def answer_late(self):
        """--handoff-delay: the handoff-proceeds that are due, then hold."""
        waiting = []
        for due, rid in self.late:
            sess = self.sessions.get(rid)
            if sess is None:
                continue
            if due > self.now:
                waiting.append((due, rid))
            else:
                self.emit(sess, TYPE_FIELD[b"handoff-proceed"])
                sess.held = True
        self.late = waiting

    def answer_polls(self):
        """Answer the long-polls that are due (not while held: after the resume)."""
        waiting = []
        for due, rid in self.polls:
            sess = self.sessions.get(rid)
            if sess is None:
                continue  # cancelled
            if due > self.now or sess.held:
                waiting.append((due, rid))
            else:
                self.answer_http(sess)
        self.polls = waiting

    def read(self, sock, handle, multipart):
        for _ in range(BATCH):
            try:
                raw = sock.recv_multipart(zmq.NOBLOCK)[-1] if multipart else sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if raw[:1] != b"T":
                continue
            try:
                packet = tnetstring.loads(raw[1:])
            except ValueError:
                self.log("unparsable packet dropped")
                continue
            if isinstance(packet, dict):
                handle(packet)

    def close(self):
        for sock in self.sockets:
            sock.close()


def tnet_fields(fields):
    """The items of a tnetstring map (without the map's own framing)."""
    encoded = tnetstring.dumps(fields)
    return encoded[encoded.index(b":") + 1:-1]


def main():
    parser = argparse.ArgumentParser(
        description="ZHTTP echo handler that honours condure's handoff")
    add_base_option(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--connect", dest="bind", action="store_false", help="connect (default)")
    mode.add_argument("--bind", dest="bind", action="store_true",
                      help="bind, for condure started with --zclient-connect")
    parser.set_defaults(bind=False)
    parser.add_argument("--identity", default=f"handoffhandler.{os.getpid()}",
                        help="this handler's address (the from of its packets)")
    parser.add_argument("--verbose", action="store_true", help="print every packet")
    parser.add_argument("--ignore-handoff", action="store_true",
                        help="ignore condure's handoff-start (no handoff-proceed, nothing "
                        "held), as Pushpin 1.36 does; for tests")
    parser.add_argument("--no-hold", action="store_true",
                        help="publish packets for an address whose subscriber went away "
                        "(ZeroMQ drops them), as a plain PUB socket does; for tests")
    parser.add_argument("--handoff-delay", type=float, default=0.0, metavar="SECONDS",
                        help="answer handoff-start that much later, serving the session "
                        "meanwhile (a handler that is slow to answer); for tests")
    parser.add_argument("--keep-alive-every", type=float, default=0.0, metavar="SECONDS",
                        help="from the first SIGUSR1 on, a keep-alive to every WebSocket "
                        "that often (while condure is subscribed); for tests")
    args = parser.parse_args()

    def stop(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ctx = zmq.Context()
    handler = Handler(ctx, args)
    if args.keep_alive_every > 0:

        def start_ticking(signum, frame):
            handler.ticking = True

        signal.signal(signal.SIGUSR1, start_ticking)
    print(f"handoffhandler {args.identity} ready on {args.base}", flush=True)
    try:
        handler.run()
    except Stop:
        pass
    finally:
        handler.close()
        ctx.term()


if __name__ == "__main__":
    main()
