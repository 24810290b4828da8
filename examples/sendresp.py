#!/usr/bin/env python3
"""Send a "200 OK" response to one request, then exit.

Usage: sendresp.py [--base BASE] BODY ADDRESS ID

ADDRESS is the condure process that holds the request and ID the request
id, both as printed by printreq.py (this condure's ADDRESS is its --id, by
default "condure", followed with several workers by "." and the worker's
slot: "condure.0", "condure.1"). The
response body is BODY followed by a newline. The request may have been
received by any other process: condure routes the answer by ADDRESS and ID.

From a checkout after scripts/setup, in the directory where condure was
started (or with `--base`, see endpoints.py):

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/printreq.py     # prints ADDRESS ID for a request,
                                              # e.g. "condure.1 1-0-b6101ce80400000002"
    .venv/bin/python examples/sendresp.py "responding from another process" ADDRESS ID
"""

import argparse

import zmq
from endpoints import add_base_option, stream_endpoints
from publisher import Publisher

parser = argparse.ArgumentParser(description="Answer one request, then exit.")
add_base_option(parser)
parser.add_argument("body", metavar="BODY", help="the response body (a newline is added)")
parser.add_argument("address", metavar="ADDRESS", help="the condure instance holding the request")
parser.add_argument("request_id", metavar="ID", help="the request id, as printreq.py printed it")
args = parser.parse_args()
_, _, inbound = stream_endpoints(args.base)

body = args.body
address = args.address.encode()
request_id = args.request_id.encode()

ctx = zmq.Context()
# The publisher waits for condure's subscription before sending, and keeps
# the packet for up to a second on close so that exiting does not drop it.
responses = Publisher(ctx, inbound)

resp = {
    b"from": b"sendresp",
    b"id": request_id,
    b"code": 200,
    b"reason": b"OK",
    b"headers": [[b"Content-Type", b"text/plain"]],
    b"body": f"{body}\n".encode(),
}
responses.send(address, resp)
responses.close()
ctx.term()
