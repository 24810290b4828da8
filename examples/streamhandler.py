#!/usr/bin/env python3
"""Answer every request with a streamed "hello world", WebSockets included.

An HTTP request gets its response in two packets: the head with
`more: true` (condure then uses chunked encoding), and the body in a second
packet that ends the response. A WebSocket request (its uri starts with
"ws") is accepted with 101, gets one text message "hello world", then the
handler closes it.

Besides the PUSH socket for new requests, the handler reads condure's
ROUTER socket (client-out-stream), which carries later packets of a session
(credits, keep-alives, WebSocket messages, cancel). Condure addresses those
by the `from` the handler put in its packets, so the ROUTER's identity is
set to the same value. This handler prints them and otherwise ignores them.

From a checkout after scripts/setup, in the directory where condure was
started (or with `--base`, see endpoints.py):

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/streamhandler.py
    curl -i http://localhost:8000/
"""

import argparse
import os

import tnetstring
import zmq
from endpoints import add_base_option, stream_endpoints
from publisher import Publisher

parser = argparse.ArgumentParser(description="Answer every request with a streamed hello world.")
add_base_option(parser)
args = parser.parse_args()
out, out_stream, inbound = stream_endpoints(args.base)

instance_id = f"streamhandler.{os.getpid()}".encode()

ctx = zmq.Context()
requests = ctx.socket(zmq.PULL)
requests.connect(out)
session_packets = ctx.socket(zmq.ROUTER)
session_packets.identity = instance_id
session_packets.connect(out_stream)
responses = Publisher(ctx, inbound)

poller = zmq.Poller()
poller.register(requests, zmq.POLLIN)
poller.register(session_packets, zmq.POLLIN)


def send(req, seq, fields):
    """Publish one packet of the session that `req` belongs to."""
    packet = {b"from": instance_id, b"id": req[b"id"], b"seq": seq}
    packet.update(fields)
    print("OUT {} {}".format(req[b"from"], packet), flush=True)
    responses.send(req[b"from"], packet)


while True:
    ready = dict(poller.poll())
    if requests in ready:
        raw = requests.recv()
    elif session_packets in ready:
        # ROUTER frames: [condure's identity, "", packet]
        raw = session_packets.recv_multipart()[2]
    else:
        continue

    req = tnetstring.loads(raw[1:])
    print(f"IN {req}", flush=True)

    if req.get(b"type"):
        # Only new requests (data packets without a type) get an answer.
        continue

    if req.get(b"uri", b"").startswith(b"ws"):
        send(req, 0, {b"code": 101, b"reason": b"Switching Protocols", b"credits": 1024})
        send(req, 1, {b"body": b"hello world"})
        send(req, 2, {b"type": b"close"})
    else:
        head = {
            b"code": 200,
            b"reason": b"OK",
            b"headers": [[b"Content-Type", b"text/plain"]],
            b"more": True,
            b"credits": 1024,
        }
        send(req, 0, head)
        send(req, 1, {b"body": b"hello world\n"})
