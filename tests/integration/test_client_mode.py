"""The client role end to end: a real condure process with only
``--zserver-stream``/``--zserver-req`` (no listener), a real HTTP origin
(tests/harness/client_origin.py, on its own loop in a thread) and a handler
played by the test with pyzmq, in the three arrangements: condure binds
with one worker, condure binds with two workers (the supervisor's relays),
and ``--zserver-connect`` (the handler binds).

Checked: a GET gets the keep-alive with seq 0 (whose ``from`` is where later
packets go), then the response head (``more``) and the body within the
credits; a POST body sent in two packets against condure's credits; a req
mode request answered on its envelope.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import zmq

from condure.zhttp import decode, encode
from condure.zhttp.packets import Credit, Data, Error, Ident, KeepAlive, Packet
from tests.harness import procs
from tests.harness.client_origin import OriginThread, Request, ok

HANDLER = b"handler-7"
WAIT = 10.0


def echo(request: Request) -> bytes:
    return ok(b"%s %s got %d bytes: %s" % (request.method, request.path,
                                           len(request.body), request.body))


class Handler:
    """The handler side of the client role: PUSH first packets to
    ``BASE-in``, ROUTER later packets to ``BASE-in-stream``, SUB on
    ``BASE-out``; binds when condure connects."""

    def __init__(self, base: str, *, bind: bool) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTING_ID, HANDLER)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, HANDLER + b" ")
        for sock, suffix in ((self.push, "-in"), (self.router, "-in-stream"),
                             (self.sub, "-out")):
            sock.setsockopt(zmq.LINGER, 0)
            (sock.bind if bind else sock.connect)(base + suffix)
        self.seen: dict[bytes, list[Packet]] = {}
        self.probes = 0

    def first(self, rid: bytes, uri: str, **fields) -> None:
        fields.setdefault("method", b"GET")
        fields.setdefault("credits", 100000)
        self.push.send(encode(Data(from_=HANDLER, ids=(Ident(rid, 0),), uri=uri.encode(),
                                   **fields)))

    def later(self, to: bytes, packet: Packet) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.router.send_multipart([to, b"", encode(packet)])
                return
            except zmq.ZMQError as e:  # the route to condure is not up yet
                if e.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    raise
                self.router.poll(10)

    def next(self, rid: bytes) -> Packet:
        """The next packet condure published for session ``rid``."""
        deadline = time.monotonic() + WAIT
        while not self.seen.get(rid):
            left = deadline - time.monotonic()
            assert left > 0, f"nothing for {rid!r}"
            if self.sub.poll(int(left * 1000)):
                address, _, payload = self.sub.recv().partition(b" ")
                assert address == HANDLER
                packet = decode(payload)
                for ident in packet.ids:
                    self.seen.setdefault(ident.id, []).append(packet)
        return self.seen[rid].pop(0)

    def wait_ready(self) -> None:
        """Open sessions for a bad URL until condure's answer arrives: then
        the PUB/SUB path is up (what was published before was lost)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            self.probes += 1
            rid = b"probe-%d" % self.probes
            self.first(rid, "nothing-here")
            if self.sub.poll(200):
                return
        raise AssertionError("condure never answered")

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def response(handler: Handler, rid: bytes) -> tuple[Data, bytes]:
    head = handler.next(rid)
    assert isinstance(head, Data) and head.code == 200 and head.more, head
    body = head.body
    packet = head
    while packet.more:
        packet = handler.next(rid)
        assert isinstance(packet, Data) and len(packet.body) <= 100000
        body += packet.body
    return head, body


@contextlib.contextmanager
def running(tmp_path, mode: str):
    base = f"ipc://{tmp_path}/zs"
    req = f"ipc://{tmp_path}/zr"
    args = ["--zserver-stream", base, "--zserver-req", req]
    workers = 2 if mode == "bind-2" else 1
    if mode == "connect":
        args.append("--zserver-connect")
    origin = OriginThread(echo)
    handler = dealer = proc = None
    try:
        if mode == "connect":  # the handler binds first
            handler = Handler(base, bind=True)
        proc = procs.start_condure("ours", tmp_path / "condure", extra_args=args, listen=[],
                                   workers=workers)
        if handler is None:
            handler = Handler(base, bind=False)
        dealer = handler.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        (dealer.bind if mode == "connect" else dealer.connect)(req)
        yield origin, handler, dealer, proc
    finally:
        if proc is not None:
            assert proc.stop() == 0
        if handler is not None:
            handler.close()
        origin.close()


@pytest.mark.parametrize("mode", ["bind-1", "bind-2", "connect"])
def test_client_mode(tmp_path, mode):
    with running(tmp_path, mode) as (origin, handler, dealer, proc):
        assert proc.port == 0  # no listener at all
        handler.wait_ready()
        url = f"http://127.0.0.1:{origin.port}"

        # GET: keep-alive seq 0 first (its from: where later packets go)
        handler.first(b"get-1", url + "/hello?x=1", credits=5)
        alive = handler.next(b"get-1")
        assert isinstance(alive, KeepAlive) and alive.ids == (Ident(b"get-1", 0),)
        assert alive.from_.startswith(b"condure")
        head = handler.next(b"get-1")
        assert isinstance(head, Data) and head.code == 200 and head.more
        assert head.ids[0].seq == 1 and not head.body
        body, packet, seq = b"", head, 0
        while packet.more:  # at most 5 bytes each; more once we grant them
            packet = handler.next(b"get-1")
            assert isinstance(packet, Data) and 0 < len(packet.body) <= 5
            body += packet.body
            if packet.more:
                seq += 1
                handler.later(alive.from_, Credit(from_=HANDLER, ids=(Ident(b"get-1", seq),),
                                                  credits=len(packet.body)))
        assert body == b"GET /hello?x=1 got 0 bytes: "

        # POST: the body in two packets, the second against condure's credits
        handler.first(b"post-1", url + "/up", method=b"POST", body=b"part one, ",
                      more=True, headers=((b"Content-Type", b"text/plain"),))
        alive = handler.next(b"post-1")
        assert isinstance(alive, KeepAlive)
        credit = handler.next(b"post-1")
        assert isinstance(credit, Credit) and credit.credits > 0
        handler.later(alive.from_, Data(from_=HANDLER, ids=(Ident(b"post-1", 1),),
                                        body=b"part two"))
        head, body = response(handler, b"post-1")
        assert body == b"POST /up got 18 bytes: part one, part two"

        # req mode: one request, the whole response, on the same envelope
        dealer.send_multipart([b"", encode(Data(ids=(Ident(b"r-1"),), method=b"GET",
                                                uri=f"{url}/req".encode()))])
        assert dealer.poll(int(WAIT * 1000))
        empty, payload = dealer.recv_multipart()
        reply = decode(payload)
        # only id, code, reason, headers, body: no from, seq or ext (reference 6.7)
        assert b"ext" not in payload and b"4:from" not in payload and b"3:seq" not in payload
        assert empty == b"" and isinstance(reply, Data)
        assert reply.ids == (Ident(b"r-1"),) and reply.code == 200
        assert reply.body == b"GET /req got 0 bytes: "


def test_deny_out_internal(tmp_path):
    """--deny-out-internal refuses the loopback origin (``policy-violation``
    after the keep-alive) unless the request has ``ignore-policies``."""
    base = f"ipc://{tmp_path}/zs"
    origin = OriginThread(echo)
    handler = proc = None
    try:
        proc = procs.start_condure("ours", tmp_path / "condure", listen=[],
                                   extra_args=["--zserver-stream", base, "--deny-out-internal"])
        handler = Handler(base, bind=False)
        handler.wait_ready()
        url = f"http://127.0.0.1:{origin.port}/x"
        handler.first(b"denied", url)
        assert isinstance(handler.next(b"denied"), KeepAlive)
        error = handler.next(b"denied")
        assert isinstance(error, Error) and error.condition == b"policy-violation"
        handler.first(b"exempt", url, ignore_policies=True)
        assert isinstance(handler.next(b"exempt"), KeepAlive)
        _head, body = response(handler, b"exempt")
        assert body == b"GET /x got 0 bytes: "
    finally:
        if proc is not None:
            assert proc.stop() == 0
        if handler is not None:
            handler.close()
        origin.close()
