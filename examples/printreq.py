#!/usr/bin/env python3
"""Print the address and id of every request, and do nothing else.

Each line is "<condure address> <request id>", which is what sendresp.py
needs to answer that request from another process. The request stays open
in condure until someone answers it (or condure gives up after 60 s).

From a checkout after scripts/setup, in the directory where condure was
started (or with `--base`, see endpoints.py):

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/printreq.py
    curl -i http://localhost:8000/        # waits; printreq prints ADDRESS ID,
                                          # e.g. "condure.1 1-0-b6101ce80400000002"
    .venv/bin/python examples/sendresp.py "responding from another process" ADDRESS ID

Or let every request be answered by a new sendresp.py process:

    .venv/bin/python examples/printreq.py |
        xargs -n 2 .venv/bin/python examples/sendresp.py "responding from another process"
"""

import argparse

import tnetstring
import zmq
from endpoints import add_base_option, stream_endpoints

parser = argparse.ArgumentParser(description="Print the address and id of every request.")
add_base_option(parser)
args = parser.parse_args()
out, _, _ = stream_endpoints(args.base)

ctx = zmq.Context()
requests = ctx.socket(zmq.PULL)
requests.connect(out)

while True:
    # Only the first frame of a message carries the packet.
    frames = requests.recv_multipart()
    req = tnetstring.loads(frames[0][1:])
    # Flush each line so that a pipe (such as xargs) sees it at once.
    print("{} {}".format(req[b"from"].decode(), req[b"id"].decode()), flush=True)
