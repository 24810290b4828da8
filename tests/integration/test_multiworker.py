"""Our condure with ``--workers 4``: ZeroMQ across worker processes.

Two ways to meet handlers (docs/supervisor.md):

- bind mode: the supervisor binds the public endpoints and relays to the
  workers; handlers connect as they would to one condure;
- ``--zclient-connect``: every worker connects to the handler's bound
  endpoints itself.

Each worker has its own address ``condure.<n>`` (its packets' ``from``,
its SUB prefix) and makes ids ``"<n>-<slot>-<counter>"``; a handler that
answers to the ``from`` of a request must reach the worker holding that
connection. Connections are spread by the kernel (SO_REUSEPORT), so enough
of them are opened that every worker gets some.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from tests.harness import procs
from tests.harness import ws_scenarios as wss
from tests.harness.http_client import connect, request
from tests.harness.req_handler import start_req_condure, start_req_handler
from tests.harness.ws_client import WsConn

WORKERS = 4
CONNS = 40  # a worker gets none with probability 4 * (3/4)**40 < 1e-4
HOST = [("Host", "example.com")]
FROM = re.compile(r"condure\.([0-9]+)")


@pytest.fixture(params=["bind", "connect"])
def mode(request):
    return request.param


@pytest.fixture
def stack(tmp_path):
    with contextlib.ExitStack() as s:
        yield s


def check_from(pkt) -> int:
    """The packet's ``from`` is its worker's address, and its id was made
    by that worker; returns the worker index."""
    m = FROM.fullmatch(pkt.sender)
    assert m, f"from {pkt.sender!r} is not condure.<n>"
    ids = pkt.get("id")
    first = ids if isinstance(ids, bytes) else ids[0].get("id")
    assert first.decode().split("-")[0] == m.group(1), pkt
    return int(m.group(1))


def start_stream(mode: str, stack: contextlib.ExitStack, tmp_path, extra=()):
    """Our condure with 4 workers and one scripted handler, in ``mode``."""
    base = f"ipc://{tmp_path}/condure/client"
    (tmp_path / "condure").mkdir(parents=True, exist_ok=True)
    handler = None
    if mode == "connect":
        handler = procs.start_handler(base, tmp_path, bind=True, wait=False, name="h-bound")
        stack.callback(handler.close)
        extra = ["--zclient-connect", *extra]
    condure = procs.start_condure("ours", tmp_path / "condure", extra_args=extra,
                                  workers=WORKERS)
    stack.callback(condure.stop)
    if handler is None:
        handler = procs.start_handler(condure.base, tmp_path, name="h")
        stack.callback(handler.close)
    else:
        handler.wait_ready()
    return condure, handler


def assert_clean(condure) -> None:
    out = condure.output()
    assert condure.stop() == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_requests_from_many_connections_reach_every_worker(mode, stack, tmp_path):
    condure, h = start_stream(mode, stack, tmp_path)
    conns = [stack.enter_context(connect(condure.port)) for _ in range(CONNS)]
    for round_ in range(2):  # the second round reuses every connection
        for i, c in enumerate(conns):
            c.send(request("GET", f"/c{i}/r{round_}", HOST))
        workers = set()
        for _ in conns:
            req = h.recv(5.0)
            assert req.socket == "pull" and req.type == ""
            workers.add(check_from(req))
            path = req["uri"].split(b"example.com", 1)[1]
            h.reply(req, body=b"answer " + path)  # published to req's "from"
        assert workers == set(range(WORKERS))
        for i, c in enumerate(conns):
            resp = c.read_response()
            assert (resp.code, resp.body) == (200, f"answer /c{i}/r{round_}".encode())
    assert_clean(condure)


def test_packets_addressed_to_the_id_itself_reach_the_right_worker(mode, stack, tmp_path):
    """Handlers answer to the request's `from` (condure.<n> here), but one
    that addresses condure by its --id, as with a single worker or with
    Condure, is served too: every worker hears it, the id's owner acts."""
    condure, h = start_stream(mode, stack, tmp_path)
    conns = [stack.enter_context(connect(condure.port)) for _ in range(CONNS)]
    for i, c in enumerate(conns):
        c.send(request("GET", f"/c{i}", HOST))
    workers = set()
    for _ in conns:
        req = h.recv(5.0)
        workers.add(check_from(req))
        path = req["uri"].split(b"example.com", 1)[1]
        h.reply(req, body=b"answer " + path, address="condure")
    assert len(workers) > 1
    for i, c in enumerate(conns):
        resp = c.read_response()
        assert (resp.code, resp.body) == (200, f"answer /c{i}".encode())
    assert_clean(condure)


def test_later_packets_and_websockets_across_workers(mode, stack, tmp_path):
    condure, h = start_stream(mode, stack, tmp_path)
    socks = [stack.enter_context(WsConn.open(condure.port, path=f"/ws{i}"))
             for i in range(CONNS // 2)]
    sessions = {}
    for _ in socks:
        req = wss.recv(h, 5.0)
        i = int(req["uri"].rsplit(b"/ws", 1)[1])
        sessions[i] = req
        # credits let the client's messages through (later packets on ROUTER)
        h.reply(req, code=101, reason=wss.SWITCHING, credits=1024)
    workers = {check_from(req) for req in sessions.values()}
    assert len(workers) > 1
    for i, ws in enumerate(socks):
        assert ws.read_handshake().code == 101
        ws.send_text(f"hello {i}")
    seen = 0
    while seen < len(socks):
        pkt = wss.recv(h, 5.0)
        assert pkt.socket == "router", pkt  # via the later-packets path
        check_from(pkt)
        if pkt.type == "credit":
            continue
        assert pkt.type == "", pkt
        seen += 1
        i = int(pkt.body.split()[1])
        assert pkt.id == sessions[i].id
        wss.message(h, pkt.id, b"echo " + pkt.body)
    for i, ws in enumerate(socks):
        frame = ws.read_frame()
        assert frame.payload == f"echo hello {i}".encode()
    for ws in socks:
        ws.abort()
    assert_clean(condure)


def test_req_mode_across_workers(mode, stack, tmp_path):
    workdir = tmp_path / "condure"
    workdir.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{workdir}/req"
    handler = None
    extra: list[str] = []
    if mode == "connect":
        handler = start_req_handler(endpoint, tmp_path, kind="rep", bind=True, wait=False,
                                    name="req-bound")
        stack.callback(handler.close)
        extra = ["--zclient-connect"]
    condure = start_req_condure("ours", workdir, extra, req_endpoint=endpoint,
                                workers=WORKERS)
    stack.callback(condure.stop)
    if handler is None:
        handler = start_req_handler(condure, tmp_path, kind="rep")
        stack.callback(handler.close)
    else:
        handler.wait_ready()
    conns = [stack.enter_context(connect(condure.port)) for _ in range(CONNS)]
    for i, c in enumerate(conns):
        c.send(request("GET", f"/q{i}", HOST))
    prefixes = set()
    for _ in conns:
        req = handler.recv(5.0)  # REP: one at a time, the reply goes back first
        prefixes.add(req.id.split("-")[0])
        path = req["uri"].split(b"example.com", 1)[1]
        handler.req_reply(req, body=b"req " + path)
    assert prefixes == {str(n) for n in range(WORKERS)}
    for i, c in enumerate(conns):
        resp = c.read_response()
        assert (resp.code, resp.body) == (200, f"req /q{i}".encode())
    assert_clean(condure)


def test_bind_mode_logs_public_endpoints_once(stack, tmp_path):
    condure, _ = start_stream("bind", stack, tmp_path)
    out = condure.output()
    binds = [line for line in out.splitlines() if "zhttp client bind" in line]
    base = condure.base
    assert len(binds) == 1, out
    assert binds[0].endswith(f"zhttp client bind {base}-out {base}-out-stream {base}-in")
    assert_clean(condure)
