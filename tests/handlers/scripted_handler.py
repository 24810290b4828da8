"""A ZHTTP stream-mode handler driven line by line over stdin/stdout.

Run as ``python -m tests.handlers.scripted_handler --base ipc://DIR/client``
from the repository root. Sockets (names as seen from condure's server role):

- PULL on ``BASE-out``: first packet of each session (disable: ``--no-pull``)
- ROUTER on ``BASE-out-stream``, identity ``--identity`` (default handler1)
- XPUB on ``BASE-in``: packets to condure, and condure's subscriptions

``--bind`` binds the sockets (condure then runs with ``--zclient-connect``);
otherwise they connect. ``{"ready": true, ...}`` is printed once every
socket has completed its ZeroMQ handshake and at least one subscription
starting with ``--sub-prefix`` arrived, so nothing sent afterwards is lost.

Commands, one JSON object per line on stdin, one JSON answer per line:

- ``{"cmd": "recv", "timeout": 2.0}`` -> ``{"ok": true, "socket": "pull" |
  "router", "hex": <payload>, "frames": n, "decoded": ...}`` or
  ``{"ok": false, "error": "timeout"}``
- ``{"cmd": "send", "address": "condure", "packet": {...}}``: the packet is
  encoded in the order given and published as ``address + " T" + packet``.
  In the packet, JSON strings are UTF-8 text and ``{"$hex": "..."}`` raw
  bytes. The handler first waits (``timeout``, default 5 s) until condure
  has subscribed to a prefix of the address.
- ``{"cmd": "send_raw", "hex": "...", "more": ["hex", ...]}``: publish these
  bytes as one frame (followed by the ``more`` frames in the same message).
- ``{"cmd": "quit"}``

Req mode (``--req ENDPOINT``): one more socket, a ROUTER (``--req-type
router``, the default) or a REP (``--req-type rep``) facing condure's
DEALER; with ``--no-stream`` it is the only socket (and ``--base`` is not
needed). Its packets are reported with ``"socket": "req"`` and
``"envelope"`` (the hex frames before the payload). Ready means its
handshake completed.

- ``{"cmd": "req_send", "packet": {...}}``: encode the packet and reply on
  the req socket; a ROUTER uses the envelope of the last request received
  with the packet's ``id`` (or ``"envelope"``: hex frames given here).
- ``{"cmd": "req_send_raw", "frames": ["hex", ...]}``: send these frames
  as they are on the req socket.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.harness import tnet


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--base", help="ipc://PATH or tcp://HOST:PORT")
    p.add_argument("--identity", default="handler1")
    p.add_argument("--bind", action="store_true")
    p.add_argument("--no-pull", action="store_true")
    p.add_argument("--sub-prefix", default="condure")
    p.add_argument("--ready-timeout", type=float, default=10.0)
    p.add_argument("--req", help="req-mode endpoint (condure's DEALER)")
    p.add_argument("--req-type", choices=("router", "rep"), default="router")
    p.add_argument("--no-stream", action="store_true")
    args = p.parse_args(argv)
    if not args.no_stream and not args.base:
        p.error("--base is required unless --no-stream is given")
    return args


def endpoints(base: str) -> tuple[str, str, str]:
    if base.startswith("ipc://"):
        return base + "-out", base + "-out-stream", base + "-in"
    host, port = base.rsplit(":", 1)
    return tuple(f"{host}:{int(port) + i}" for i in range(3))  # type: ignore[return-value]


class Handler:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = zmq.Context()
        self.monitors = []
        self.poller = zmq.Poller()
        self.subscriptions: list[bytes] = []
        self.req = None
        self.envelopes: dict[bytes, list[bytes]] = {}
        if args.req:
            kind = zmq.ROUTER if args.req_type == "router" else zmq.REP
            self.req = self.ctx.socket(kind)
            self.req.setsockopt(zmq.LINGER, 0)
            self.monitors.append(self.req.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
            if args.bind:
                self.req.bind(args.req)
            else:
                self.req.connect(args.req)
            self.poller.register(self.req, zmq.POLLIN)
        if args.no_stream:
            self.pull = self.router = self.xpub = None
            return
        out, out_stream, inp = endpoints(args.base)
        self.pull = None if args.no_pull else self.ctx.socket(zmq.PULL)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.IDENTITY, args.identity.encode())
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        for sock, ep in ((self.pull, out), (self.router, out_stream), (self.xpub, inp)):
            if sock is None:
                continue
            sock.setsockopt(zmq.LINGER, 0)
            self.monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
            if args.bind:
                sock.bind(ep)
            else:
                sock.connect(ep)
        if self.pull is not None:
            self.poller.register(self.pull, zmq.POLLIN)
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.xpub, zmq.POLLIN)

    def take_subscriptions(self) -> None:
        while self.xpub.poll(0):
            msg = self.xpub.recv()
            if msg[:1] == b"\x01":
                self.subscriptions.append(msg[1:])
            elif msg[:1] == b"\x00" and msg[1:] in self.subscriptions:
                self.subscriptions.remove(msg[1:])

    def subscribed(self, address: bytes) -> bool:
        self.take_subscriptions()
        return any((address + b" ").startswith(s) for s in self.subscriptions)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.args.ready_timeout
        pending = list(self.monitors)
        prefix = self.args.sub_prefix.encode()
        while pending or (self.xpub is not None
                          and not any(s.startswith(prefix) for s in self.subscriptions)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("handler sockets not connected/subscribed in time")
            poller = zmq.Poller()
            for mon in pending:
                poller.register(mon, zmq.POLLIN)
            if self.xpub is not None:
                poller.register(self.xpub, zmq.POLLIN)
            events = dict(poller.poll(remaining * 1000))
            for mon in list(pending):
                if mon in events:
                    recv_monitor_message(mon)
                    pending.remove(mon)
            if self.xpub is not None:
                self.take_subscriptions()

    def recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 0:
                return {"ok": False, "error": "timeout"}
            events = dict(self.poller.poll(max(remaining, 0) * 1000))
            if self.xpub is not None and self.xpub in events:
                self.take_subscriptions()
            if self.req is not None and self.req in events:
                return self.req_report(self.req.recv_multipart())
            if self.pull is not None and self.pull in events:
                frames = self.pull.recv_multipart()
                return self.report("pull", frames, frames[0])
            if self.router in events:
                frames = self.router.recv_multipart()
                return self.report("router", frames, frames[-1])

    @staticmethod
    def report(name: str, frames: list[bytes], payload: bytes) -> dict:
        try:
            decoded = tnet.to_json(tnet.decode_packet(payload))
        except ValueError as e:
            decoded = {"error": str(e)}
        return {
            "ok": True,
            "socket": name,
            "frames": len(frames),
            "hex": payload.hex(),
            "decoded": decoded,
        }

    def req_report(self, frames: list[bytes]) -> dict:
        payload = frames[-1]
        envelope = frames[:-1]
        answer = self.report("req", frames, payload)
        answer["envelope"] = [f.hex() for f in envelope]
        try:
            ident = tnet.decode_packet(payload).get("id")
        except ValueError:
            ident = None
        if isinstance(ident, bytes):
            self.envelopes[ident] = envelope
        return answer

    def req_send(self, cmd: dict) -> dict:
        if self.req is None:
            return {"ok": False, "error": "no req socket"}
        fields = tnet.from_json(cmd["packet"])
        payload = tnet.encode_packet(fields)
        if self.args.req_type == "rep":
            self.req.send(payload)
            return {"ok": True}
        if "envelope" in cmd:
            envelope = [bytes.fromhex(f) for f in cmd["envelope"]]
        else:
            envelope = self.envelopes.get(fields.get("id"))
            if envelope is None:
                return {"ok": False, "error": "no request seen for that id"}
        self.req.send_multipart([*envelope, payload])
        return {"ok": True}

    def send(self, address: bytes, payload: bytes, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not self.subscribed(address):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"ok": False, "error": f"no subscription for {address!r}"}
            self.xpub.poll(remaining * 1000)
        self.xpub.send(address + b" " + payload)
        return {"ok": True}

    def handle(self, cmd: dict) -> dict | None:
        name = cmd.get("cmd")
        if name == "recv":
            return self.recv(float(cmd.get("timeout", 2.0)))
        if name == "send":
            payload = tnet.encode_packet(tnet.from_json(cmd["packet"]))
            address = cmd.get("address", self.args.sub_prefix).encode()
            return self.send(address, payload, float(cmd.get("timeout", 5.0)))
        if name == "req_send":
            return self.req_send(cmd)
        if name == "req_send_raw":
            self.req.send_multipart([bytes.fromhex(f) for f in cmd["frames"]])
            return {"ok": True}
        if name == "send_raw":
            self.xpub.send_multipart([bytes.fromhex(f) for f in [cmd["hex"], *cmd.get("more", [])]])
            return {"ok": True}
        if name == "quit":
            return None
        return {"ok": False, "error": f"unknown command {name!r}"}

    def close(self) -> None:
        for mon in self.monitors:
            mon.close(linger=0)
        self.ctx.destroy(linger=0)


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str], handler_class: type[Handler] | None = None) -> int:
    """Serve the test's commands on stdin; ``handler_class`` is Handler or
    a subclass with more commands."""
    args = parse_args(argv)
    handler = (handler_class or Handler)(args)
    try:
        handler.wait_ready()
        subs = [s.decode("utf-8", "replace") for s in handler.subscriptions]
        reply({"ready": True, "subscriptions": subs})
        for line in sys.stdin:
            if not line.strip():
                continue
            answer = handler.handle(json.loads(line))
            if answer is None:
                reply({"ok": True, "bye": True})
                break
            reply(answer)
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
