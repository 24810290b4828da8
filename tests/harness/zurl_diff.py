"""The client role played by two implementations with the same handler:
Debian's zurl (``/usr/bin/zurl`` with a private config whose endpoints are
ipc files in a tmp dir) and our condure with ``--zserver-stream`` and
``--zserver-req``. Used by tests/integration/test_zurl_differential.py.

``run_cases(impl, workdir)`` starts the implementation, a loopback origin
(tests/harness/client_origin.py on its own loop in a thread) and a pyzmq
handler, sends every request of ``CASES`` and returns, per case, the raw
packets the handler received (stream mode: the PUB packets of the session;
req mode: the reply on the DEALER) and the requests the origin read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from tests.harness import procs, tnet
from tests.harness.client_origin import OriginThread, Request, ok

ZURL_BIN = "/usr/bin/zurl"
ZURL_ID = "zurltest"
CONDURE_ID = "condure"
HANDLER = b"handler-z"
WAIT = 10.0


# -- the origin ----------------------------------------------------------------------


def respond(request: Request) -> bytes:
    """What the origin answers, by path."""
    if request.path == b"/chunked":
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"6\r\nfirst \r\n6\r\nsecond\r\n0\r\n\r\n")
    if request.path == b"/missing":
        return (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 9\r\n\r\nnot found")
    if request.method == b"HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    return ok(b"%s %s got %d bytes: %s" % (request.method, request.path,
                                           len(request.body), request.body),
              b"Content-Type: text/plain\r\n")


# -- the two implementations -----------------------------------------------------------


ZURL_CONF = """[General]
instance_id={id}
in_spec={base}-in
in_stream_spec={base}-in-stream
out_spec={base}-out
in_req_spec={req}
ipc_file_mode=600
defpolicy=allow
allow=
deny=
max_open_requests=100
buffer_size=8192
timeout=600
in_hwm=1000
out_hwm=1000
"""


def start_zurl(workdir: Path, base: str, req: str) -> procs.Proc:
    """zurl with a private config; ready when it logs ``started``."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "zurl.conf"
    conf.write_text(ZURL_CONF.format(id=ZURL_ID, base=base, req=req))
    proc = procs._spawn("zurl", [ZURL_BIN, f"--config={conf}"], workdir / "zurl.log",
                        "started")
    if not proc.pump.seen.wait(procs.READY_TIMEOUT):
        proc.stop(timeout=3)
        raise procs.StartupError(f"zurl did not start:\n{proc.pump.tail()}")
    return proc


def start_impl(impl: str, workdir: Path, base: str, req: str) -> procs.Proc:
    if impl == "zurl":
        return start_zurl(workdir, base, req)
    return procs.start_condure("ours", workdir, listen=[], instance_id=CONDURE_ID,
                               extra_args=["--zserver-stream", base, "--zserver-req", req])


# -- the handler ------------------------------------------------------------------------


@dataclass
class Session:
    rid: bytes
    packets: list[bytes] = field(default_factory=list)  # raw, as received
    to: bytes | None = None  # the implementation's address for later packets
    out_seq: int = 0


class Handler:
    """PUSH to BASE-in, ROUTER to BASE-in-stream, SUB on BASE-out; raw
    tnetstring packets so that nothing is lost in decoding."""

    def __init__(self, base: str, req: str) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTING_ID, HANDLER)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, HANDLER + b" ")
        self.dealer = self.ctx.socket(zmq.DEALER)
        for sock, spec in ((self.push, base + "-in"), (self.router, base + "-in-stream"),
                           (self.sub, base + "-out"), (self.dealer, req)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(spec)
        self.pending: dict[bytes, list[bytes]] = {}
        self.probes = 0

    def first(self, session: Session, fields: list[tuple[bytes, object]]) -> None:
        packet = tnet.OMap([(b"from", HANDLER), (b"id", session.rid), (b"seq", 0), *fields])
        session.out_seq = 1
        self.push.send(tnet.encode_packet(packet))

    def later(self, session: Session, fields: list[tuple[bytes, object]]) -> None:
        assert session.to is not None, "no address to send to yet"
        packet = tnet.OMap([(b"from", HANDLER), (b"id", session.rid),
                            (b"seq", session.out_seq), *fields])
        session.out_seq += 1
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.router.send_multipart([session.to, b"", tnet.encode_packet(packet)])
                return
            except zmq.ZMQError as e:  # the route is not up yet
                if e.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    raise
                self.router.poll(10)

    def next(self, session: Session, timeout: float = WAIT) -> tnet.OMap | None:
        """The next packet published for the session (None: none in time)."""
        deadline = time.monotonic() + timeout
        while not self.pending.get(session.rid):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sub.poll(int(left * 1000)):
                address, _, raw = self.sub.recv().partition(b" ")
                assert address == HANDLER
                fields = tnet.decode_packet(raw)
                self.pending.setdefault(fields.get("id"), []).append(raw)
        raw = self.pending[session.rid].pop(0)
        session.packets.append(raw)
        fields = tnet.decode_packet(raw)
        if session.to is None and fields.get("from"):
            session.to = fields.get("from")
        return fields

    def wait_ready(self) -> None:
        """Send bad first packets until one is answered: PUB/SUB is up."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            self.probes += 1
            s = Session(b"probe-%d" % self.probes)
            self.first(s, [(b"method", b"GET"), (b"uri", b"nothing-here")])
            if self.sub.poll(300):
                return
        raise AssertionError("no answer to the probes")

    def req(self, fields: list[tuple[bytes, object]]) -> bytes | None:
        self.dealer.send_multipart([b"", tnet.encode_packet(tnet.OMap(fields))])
        if not self.dealer.poll(int(WAIT * 1000)):
            return None
        frames = self.dealer.recv_multipart()
        assert frames[0] == b"", frames
        return frames[-1]

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def stream(h: Handler, s: Session, fields, *, second: bytes | None = None,
           quiet: float = WAIT) -> str:
    """Drive one stream session to its end: the first packet, then (with
    ``second``) the rest of the body once a credit arrived, and credits
    for response body received. Returns how it ended."""
    h.first(s, fields)
    while True:
        p = h.next(s, quiet)
        if p is None:
            return "no end"
        kind = p.get("type")
        if kind == b"credit" and second is not None:
            h.later(s, [(b"body", second)])
            second = None
        elif kind in (b"error", b"cancel"):
            return kind.decode()
        elif kind is None:
            if p.get("body"):
                h.later(s, [(b"type", b"credit"), (b"credits", len(p.get("body")))])
            if not p.get("more"):
                return "done"


def run_cases(impl: str, workdir: Path, cases: dict[str, Callable]) -> dict[str, dict]:
    base = f"ipc://{workdir}/zs"
    req = f"ipc://{workdir}/zr"
    origin = OriginThread(respond)
    proc = handler = None
    results: dict[str, dict] = {}
    try:
        proc = start_impl(impl, workdir / impl, base, req)
        handler = Handler(base, req)
        handler.wait_ready()
        url = f"http://127.0.0.1:{origin.port}"
        for name, case in cases.items():
            seen = len(origin.requests())
            packets, end = case(handler, url, name.encode())
            results[name] = {"packets": packets, "end": end,
                             "origin": origin.requests()[seen:]}
    finally:
        if handler is not None:
            handler.close()
        if proc is not None:
            status = proc.stop()
            results["<status>"] = {"status": status}
        origin.close()
    return results
