#!/usr/bin/env python3
"""Send a "200 OK" response to one request, then exit.

Usage: sendresp.py BODY ADDRESS ID

ADDRESS is the condure instance that holds the request ("condure" unless it
runs with --id) and ID the request id, as printed by printreq.py. The
response body is BODY followed by a newline. The request may have been
received by any other process: condure routes the answer by ADDRESS and ID.

Run it from the directory where condure was started:

    condure --listen 8000 --zclient-stream ipc://client
    python3 printreq.py                   # prints "condure 0-0-0" for a request
    python3 sendresp.py "responding from another process" condure 0-0-0
"""

import sys

import zmq

from publisher import Publisher

if len(sys.argv) != 4:
    sys.exit("usage: {} BODY ADDRESS ID".format(sys.argv[0]))

body = sys.argv[1]
address = sys.argv[2].encode()
request_id = sys.argv[3].encode()

ctx = zmq.Context()
# The publisher waits for condure's subscription before sending, and keeps
# the packet for up to a second on close so that exiting does not drop it.
responses = Publisher(ctx, "ipc://client-in")

resp = {
    b"from": b"sendresp",
    b"id": request_id,
    b"code": 200,
    b"reason": b"OK",
    b"headers": [[b"Content-Type", b"text/plain"]],
    b"body": "{}\n".format(body).encode(),
}
responses.send(address, resp)
responses.close()
ctx.term()
