#!/usr/bin/env python3
"""A quiet ZHTTP handler that answers every request with a small 200.

Used by http_bench.py for both condure implementations, so that the handler
costs the same on both sides. It prints nothing per request.

    python3 fast_handler.py ipc:///tmp/somewhere/client [--count FILE]
    python3 fast_handler.py --req ipc:///tmp/somewhere/req

With --count, it tallies requests and connections per condure worker (from
the request ids, ``<worker>-<slot>-<counter>``) and writes them to FILE as
JSON when it gets SIGTERM (accept_modes.py uses that).

The argument is the same stream base condure got with --zclient-stream; the
handler connects PULL to BASE-out and XPUB to BASE-in (tcp bases are not
supported). XPUB lets it wait for condure's subscription before the first
packet to an address, instead of losing it.

With --req, it serves condure's req-mode DEALER (--zclient-req SPEC) instead:
a ROUTER connected to SPEC (ipc or tcp) that reads ``[peer, "", T...]`` and
answers ``[peer, "", T...]`` with the same 200, addressed by ``id`` only.
"""

import json
import os
import signal
import sys

import tnetstring
import zmq

HEADERS = [[b"Content-Type", b"text/plain"]]
BODY = b"hello world\n"


def serve_req(spec):
    """Answer every req-mode request on a ROUTER connected to ``spec``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.connect(spec)
    while True:
        frames = sock.recv_multipart()
        try:
            empty = frames.index(b"")
        except ValueError:
            continue  # no envelope delimiter: not from condure
        raw = frames[empty + 1] if len(frames) > empty + 1 else b""
        if raw[:1] != b"T":
            continue
        req = tnetstring.loads(raw[1:])
        resp = {
            b"id": req[b"id"],
            b"code": 200,
            b"reason": b"OK",
            b"headers": HEADERS,
            b"body": BODY,
        }
        sock.send_multipart([*frames[: empty + 1], b"T" + tnetstring.dumps(resp)])


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--req"]:
        if len(argv) != 2:
            sys.exit("usage: fast_handler.py --req SPEC")
        serve_req(argv[1])
        return
    count_path = None
    if len(argv) == 3 and argv[1] == "--count":
        count_path = argv.pop(2)
        argv.pop(1)
    if len(argv) != 1 or not argv[0].startswith("ipc://"):
        sys.exit("usage: fast_handler.py ipc://BASE [--count FILE]")
    base = argv[0]
    requests_by_worker = {}
    slots_by_worker = {}

    def write_counts(signum, frame):
        out = {w: {"requests": n, "connections": len(slots_by_worker[w])}
               for w, n in requests_by_worker.items()}
        with open(count_path, "w") as f:
            json.dump(out, f)
        sys.exit(0)

    if count_path:
        signal.signal(signal.SIGTERM, write_counts)
    instance_id = f"fasthandler.{os.getpid()}".encode()

    ctx = zmq.Context()
    requests = ctx.socket(zmq.PULL)
    requests.connect(base + "-out")
    responses = ctx.socket(zmq.XPUB)
    responses.connect(base + "-in")

    subscribed = set()  # prefixes condure's SUB sockets listen to

    def read_subscription():
        msg = responses.recv()
        if msg[:1] == b"\x01":
            subscribed.add(msg[1:])
        elif msg[:1] == b"\x00":
            subscribed.discard(msg[1:])

    ready_addresses = set()  # addresses known to be subscribed

    while True:
        raw = requests.recv()
        req = tnetstring.loads(raw[1:])
        address = req[b"from"]
        if count_path:
            worker, slot, _ = req[b"id"].decode().split("-", 2)
            requests_by_worker[worker] = requests_by_worker.get(worker, 0) + 1
            slots_by_worker.setdefault(worker, set()).add(slot)
        if address not in ready_addresses:
            topic = address + b" T"
            # Blocks until condure subscribes; it always does when it runs.
            while not any(topic.startswith(p) for p in subscribed):
                read_subscription()
            ready_addresses.add(address)
        resp = {
            b"from": instance_id,
            b"id": req[b"id"],
            b"code": 200,
            b"reason": b"OK",
            b"headers": HEADERS,
            b"body": BODY,
        }
        responses.send(address + b" T" + tnetstring.dumps(resp))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
