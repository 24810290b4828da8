#!/usr/bin/env python3
"""Answer every HTTP request with "hello world".

The handler takes each request packet from condure's PUSH socket and
publishes a complete (non-streamed) response for it. Every packet in and out
is printed.

From a checkout after scripts/setup, in the directory where condure was
started (the default `--base ipc://client` is a relative path):

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/basichandler.py
    curl -i http://localhost:8000/

`--base` names condure's `--zclient-stream` base when it is elsewhere, e.g.
`--base ipc:///run/condure/client` for condure run by the systemd unit.
"""

import argparse
import os

import tnetstring
import zmq
from endpoints import add_base_option, stream_endpoints
from publisher import Publisher

parser = argparse.ArgumentParser(description="Answer every request with hello world.")
add_base_option(parser)
args = parser.parse_args()
out, _, inbound = stream_endpoints(args.base)

instance_id = f"basichandler.{os.getpid()}".encode()

ctx = zmq.Context()
requests = ctx.socket(zmq.PULL)
requests.connect(out)
responses = Publisher(ctx, inbound)

while True:
    raw = requests.recv()
    # A packet is "T" followed by a tnetstring map.
    req = tnetstring.loads(raw[1:])
    print(f"IN {req}", flush=True)

    resp = {
        b"from": instance_id,
        b"id": req[b"id"],
        b"code": 200,
        b"reason": b"OK",
        b"headers": [[b"Content-Type", b"text/plain"]],
        b"body": b"hello world\n",
    }
    print(f"OUT {resp}", flush=True)
    # Address the packet to the condure instance that sent the request.
    responses.send(req[b"from"], resp)
