#!/usr/bin/env python3
"""Hold every request open as an endless event stream.

Each new request gets a "200 OK" head with `more: true` and no body, so the
client keeps waiting. Condure sends a `keep-alive` packet for each open
session about every 45 s; the handler answers those with one event-stream
style message per session ("id: ...", "event: message", "data: <UTC time>"),
which both feeds the client and tells condure the handler is still there
(condure closes a session after 60 s without handler packets). Many
sessions are answered with one packet that lists all their ids.

A session is forgotten when condure sends `cancel` (the client went away)
or when nothing was heard about it for CONN_TTL; stale sessions are swept
every EXPIRE_INTERVAL.

From a checkout after scripts/setup, in the directory where condure was
started (or with `--base`, see endpoints.py):

    .venv/bin/condure --listen 8000 --zclient-stream ipc://client
    .venv/bin/python examples/holdhandler.py
    curl -i -N http://localhost:8000/     # an event arrives every ~45 s
"""

import argparse
import datetime
import os
import time

import tnetstring
import zmq
from endpoints import add_base_option, stream_endpoints
from publisher import Publisher

CONN_TTL = 60.0  # seconds
EXPIRE_INTERVAL = 60.0  # seconds

parser = argparse.ArgumentParser(description="Hold every request open as an event stream.")
add_base_option(parser)
args = parser.parse_args()
out, out_stream, inbound = stream_endpoints(args.base)

instance_id = f"holdhandler.{os.getpid()}".encode()

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


class Session:
    """One held request: where it lives and the next seq we must use."""

    def __init__(self, address, rid):
        self.address = address  # the condure instance holding the client
        self.rid = rid
        self.seq = 0
        self.expires = time.monotonic() + CONN_TTL

    def next_seq(self):
        self.seq += 1
        return self.seq - 1

    def send_head(self):
        packet = {
            b"from": instance_id,
            b"id": self.rid,
            b"seq": self.next_seq(),
            b"code": 200,
            b"reason": b"OK",
            b"headers": [[b"Content-Type", b"text/plain"]],
            b"more": True,
        }
        print(f"OUT {self.address} {packet}", flush=True)
        responses.send(self.address, packet)


def send_event(address, group):
    """Send one message body to every session in `group` with a single packet."""
    now = datetime.datetime.now(datetime.UTC)
    micros = int(now.timestamp()) * 1000000 + now.microsecond
    body = "id: TCPKaliMsgTS-{:016x}.\nevent: message\ndata: {}\n\n".format(
        micros, now.strftime("%Y-%m-%dT%H:%M:%S")
    ).encode()
    packet = {
        b"from": instance_id,
        # The multi-id form: each entry carries that session's own seq.
        b"id": [{b"id": s.rid, b"seq": s.next_seq()} for s in group],
        b"body": body,
        b"more": True,
    }
    print(f"OUT {address} {packet}", flush=True)
    responses.send(address, packet)


sessions = {}  # (address, id) -> Session
next_sweep = time.monotonic() + EXPIRE_INTERVAL

while True:
    ready = dict(poller.poll(1000))
    raw = None
    if requests in ready:
        raw = requests.recv()
    elif session_packets in ready:
        # ROUTER frames: [condure's identity, "", packet]
        raw = session_packets.recv_multipart()[2]

    now = time.monotonic()

    if raw is not None:
        msg = tnetstring.loads(raw[1:])
        print(f"IN {msg}", flush=True)

        address = msg[b"from"]
        kind = msg.get(b"type", b"")
        # A packet names one session, or several as a list of {id, seq}.
        ids = msg[b"id"]
        ids = [entry[b"id"] for entry in ids] if isinstance(ids, list) else [ids]

        known = []
        for rid in ids:
            session = sessions.get((address, rid))
            if session is not None:
                session.expires = now + CONN_TTL
                known.append(session)
            elif not kind:
                # A new request: start the response and keep it open.
                session = Session(address, rid)
                sessions[(address, rid)] = session
                session.send_head()

        if kind == b"keep-alive" and known:
            send_event(address, known)
        elif kind == b"cancel":
            for session in known:
                del sessions[(session.address, session.rid)]

    if now >= next_sweep:
        next_sweep = now + EXPIRE_INTERVAL
        for key in [k for k, s in sessions.items() if now >= s.expires]:
            print(f"expired {key}", flush=True)
            del sessions[key]
