#!/usr/bin/env python3
"""Answer every request with "hello world", using condure's req mode.

In req mode condure reads the whole request (body included) and sends it
on a DEALER socket; the handler answers on the same socket, so a plain REP
socket is all it takes. No `from` address, sequence numbers or credits are
involved: condure matches the answer to the request by `id`.

From a checkout after scripts/setup, in the directory where condure was
started, with a req listener (the DEALER binds the endpoint given to
--zclient-req as it is; `--endpoint` names it when it is elsewhere):

    .venv/bin/condure --listen 8000,req --zclient-req ipc://client
    .venv/bin/python examples/reqhandler.py
    curl -i http://localhost:8000/
"""

import argparse

import tnetstring
import zmq

parser = argparse.ArgumentParser(description="Answer every request with hello world (req mode).")
parser.add_argument("--endpoint", default="ipc://client",
                    help="condure's --zclient-req endpoint, as given to it "
                    "(default: %(default)s, relative to the working directory)")
args = parser.parse_args()

ctx = zmq.Context()
sock = ctx.socket(zmq.REP)
sock.connect(args.endpoint)

while True:
    raw = sock.recv()
    req = tnetstring.loads(raw[1:])
    print(f"IN {req}", flush=True)

    resp = {
        b"id": req[b"id"],
        b"code": 200,
        b"reason": b"OK",
        b"headers": [[b"Content-Type", b"text/plain"]],
        b"body": b"hello world\n",
    }
    print(f"OUT {resp}", flush=True)
    # REP sends the reply back to the DEALER that asked.
    sock.send(b"T" + tnetstring.dumps(resp))
