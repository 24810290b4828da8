#!/usr/bin/env python3
"""Answer every HTTP request with "hello world".

The handler takes each request packet from condure's PUSH socket and
publishes a complete (non-streamed) response for it. Every packet in and out
is printed.

Run it from the directory where condure was started, because the ipc://
endpoints are relative paths:

    condure --listen 8000 --zclient-stream ipc://client
    python3 basichandler.py
    curl -i http://localhost:8000/
"""

import os

import tnetstring
import zmq

from publisher import Publisher

instance_id = "basichandler.{}".format(os.getpid()).encode()

ctx = zmq.Context()
requests = ctx.socket(zmq.PULL)
requests.connect("ipc://client-out")
responses = Publisher(ctx, "ipc://client-in")

while True:
    raw = requests.recv()
    # A packet is "T" followed by a tnetstring map.
    req = tnetstring.loads(raw[1:])
    print("IN {}".format(req), flush=True)

    resp = {
        b"from": instance_id,
        b"id": req[b"id"],
        b"code": 200,
        b"reason": b"OK",
        b"headers": [[b"Content-Type", b"text/plain"]],
        b"body": b"hello world\n",
    }
    print("OUT {}".format(resp), flush=True)
    # Address the packet to the condure instance that sent the request.
    responses.send(req[b"from"], resp)
