"""Arbitrary handler packets to live sessions of a real condure (hypothesis).

A real condure (one worker) and the scripted handler. Each example opens
real client connections (a GET waiting for its answer, a POST whose body
waits for credits, a response under way, an accepted WebSocket, a
WebSocket handshake not yet answered), then the handler sends
hypothesis-made packets addressed to those sessions: any type, known or
not, any fields with any tnetstring values, right, wrong or missing seqs,
credits, codes, header lists, single ids and id lists, and bytes that are
not packets at all (malformed tnetstrings, truncated packets). Afterwards
every session is ended (a ``cancel`` without seq, which every live session
takes, then the clients close), and:

- the worker is the same process and logged no traceback;
- a fresh request is still served (``flows.Server.probe``);
- the worker holds exactly the descriptors it held before the example.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import flows, liveness, tnet
from tests.harness import ws_client as wc
from tests.harness.http_client import request
from tests.harness.ws_scenarios import accept

HOST = [("Host", "example.com")]
AUTO = "auto"  # the seq the handler client counts for that id
KINDS = ("get", "post", "streaming", "ws", "ws-wait")
U32 = 2**32 - 1


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("packet-fuzz")) as server:
        (worker,) = liveness.worker_pids(server.condure.pid)
        server.worker = worker
        server.fds = liveness.fd_count(worker)  # no client yet
        yield server


# -- packets ------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.integers(0, 70000), st.binary(max_size=24),
                    st.sampled_from([b"", b"binary", b"rejected", b"keep-alive", "é".encode()]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.lists(st.tuples(st.binary(max_size=8), inner), max_size=3).map(tnet.OMap)),
    max_leaves=8)
header_lists = st.lists(st.one_of(
    st.tuples(st.sampled_from([b"Content-Length", b"Content-Type", b"Connection", b"X-A",
                               b"Transfer-Encoding", b"\xff"]),
              st.sampled_from([b"5", b"0", b"-3", b"close", b"chunked", b"text/plain", b""]))
    .map(list),
    values), max_size=5)


def mostly(good, *more):
    """Usually a value the decoder takes, now and then anything at all."""
    return st.one_of(good, good, good, good, *more, values)


FIELDS = {
    b"code": mostly(st.sampled_from([101, 200, 204, 304, 404, 500]), st.integers(0, 2**33)),
    b"reason": mostly(st.sampled_from([b"OK", b"", b"Switching Protocols"]),
                      st.just(b"\xff")),
    b"headers": mostly(st.lists(st.tuples(
        st.sampled_from([b"Content-Length", b"Content-Type", b"Connection", b"X-A",
                         b"Transfer-Encoding", b"Sec-WebSocket-Protocol"]),
        st.sampled_from([b"5", b"0", b"-3", b"close", b"chunked", b"text/plain", b""])
    ).map(list), max_size=5), header_lists),
    b"body": mostly(st.one_of(st.binary(max_size=40), st.sampled_from([b"x" * 9000, b"hi"]))),
    b"credits": mostly(st.integers(0, 20000), st.integers(-5, U32 + 5)),
    b"more": mostly(st.booleans()),
    b"content-type": mostly(st.sampled_from([b"binary", b"text"])),
    b"condition": mostly(st.sampled_from([b"rejected", b"bad-request", b"policy-violation"])),
    b"ext": mostly(st.just(tnet.OMap([(b"multi", True)]))),
    b"stream": mostly(st.booleans()),
}

KNOWN_TYPES = st.sampled_from([b"", b"error", b"credit", b"keep-alive", b"cancel",
                               b"handoff-start", b"handoff-proceed", b"close", b"ping", b"pong"])
TYPES = st.one_of(st.none(), st.none(), st.none(), *[KNOWN_TYPES] * 6,
                  st.text(max_size=8).map(str.encode), st.binary(max_size=8), values)


@st.composite
def packets(draw):
    """(target session index, seq choice, field pairs), or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(
            st.binary(max_size=60), st.binary(max_size=60).map(lambda b: b"T" + b),
            st.sampled_from([b"T", b"T{}", b"T0:}", b"T3:abc,", b"T5:1:a,}", b"T9999:}"])))
    target = draw(st.integers(0, 4))
    fields: list[tuple[bytes, object]] = []
    sender = draw(st.sampled_from([b"handler1"] * 6 + [b"", b"other", b"h" * 65, None]))
    if sender is not None:
        fields.append((b"from", sender))
    id_form = draw(st.sampled_from(["single"] * 5 + ["list", "other", "none"]))
    seq = draw(st.one_of(st.just(AUTO), st.just(AUTO), st.just(AUTO), st.none(),
                         st.integers(0, 3), values))
    kind = draw(TYPES)
    extra = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True))
    extra_values = [(key, draw(FIELDS[key])) for key in extra]
    truncate = draw(st.sampled_from([None] * 9 + [draw(st.integers(1, 40))]))
    return target, id_form, seq, fields, kind, extra_values, truncate


# -- sessions -----------------------------------------------------------------

def next_request(h):
    """The next request packet (first packets come on the PULL socket);
    packets of sessions opened before (a credit, a client message) are
    skipped."""
    while True:
        pkt = h.recv()
        if pkt.socket == "pull":
            return pkt


def open_session(srv, kind: str):
    """A client connection in the named state; (connection, request packet)."""
    h = srv.handler
    if kind.startswith("ws"):
        ws = wc.WsConn.open(srv.port, f"/{kind}")
        srv.conns.append(ws)
        req = next_request(h)
        if kind == "ws":
            accept(h, ws, req=req, credits=100)
            ws.send_text("from the client")
        return ws, req
    c = srv.conn()
    if kind == "post":
        c.send(request("POST", "/post", [*HOST, ("Content-Length", "20")]))
        req = next_request(h)
        c.send(b"0123456789abcdefghij")
    else:
        c.send(request("GET", f"/{kind}", HOST))
        req = next_request(h)
        if kind == "streaming":
            h.reply(req, headers=[("Content-Type", "text/plain")], body=b"part", more=True,
                    credits=50)
    return c, req


def payload_for(srv, sessions, spec) -> bytes:
    if isinstance(spec, bytes):
        return spec
    target, id_form, seq, fields, kind, extra, truncate = spec
    sid = sessions[target % len(sessions)][1].id
    fields = list(fields)
    if id_form == "single":
        fields.append((b"id", sid.encode()))
    elif id_form == "list":
        entries = [tnet.OMap([(b"id", s[1].id.encode()), (b"seq", srv.handler.next_seq(s[1].id))])
                   for s in sessions]
        fields.append((b"id", entries))
    elif id_form == "other":
        fields.append((b"id", b"0-999-0"))
    if id_form == "single" and seq is not None:
        fields.append((b"seq", srv.handler.next_seq(sid) if seq == AUTO else seq))
    if kind is not None:
        fields.append((b"type", kind))
    fields.extend(extra)
    payload = tnet.encode_packet(tnet.OMap(fields))
    return payload[:truncate] if truncate else payload


def end_sessions(srv, sessions) -> None:
    """Every session still live takes a seq-less cancel; clients close."""
    address = srv.condure.instance_id.encode() + b" "
    for _, req in sessions:
        cancel = tnet.OMap([(b"from", b"handler1"), (b"id", req.id.encode()),
                            (b"type", b"cancel")])
        srv.handler.send_raw(address + tnet.encode_packet(cancel))
    srv.close_conns()


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
       specs=st.lists(packets(), min_size=1, max_size=6))
def test_arbitrary_handler_packets(fuzz_server, kinds, specs):
    srv = fuzz_server
    srv.begin()
    sessions = []
    try:
        for kind in kinds:
            sessions.append(open_session(srv, kind))
        address = srv.condure.instance_id.encode() + b" "
        for spec in specs:
            srv.handler.send_raw(address + payload_for(srv, sessions, spec))
    finally:
        end_sessions(srv, sessions)
    srv.handler.begin()  # what condure still sends for them is not for the probe
    srv.probe()  # alive, no traceback, a fresh request served
    assert liveness.worker_pids(srv.condure.pid) == [srv.worker]
    count = liveness.settle_fd_count(srv.worker, srv.fds)
    assert count == srv.fds, f"worker holds {count} descriptors, {srv.fds} before"
