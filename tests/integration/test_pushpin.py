"""Pushpin 1.36 (Debian package) running on top of condure.

Pushpin's runner starts condure itself (``condure_bin``); here that is a
wrapper that records its argv and runs either Debian's condure
("reference") or ours. Requests and WebSockets go client -> condure ->
pushpin-proxy -> zurl -> a local origin, and back.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import pushpin
from tests.harness.ws_client import OP_BINARY, OP_TEXT, WsConn, accept_key

REASON = pushpin.missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

IMPLS = [pytest.param("reference", marks=pytest.mark.reference), "ours"]

# What our condure does not do yet, per feature a test needs; an entry makes
# the test an expected failure (strict: it must fail) for "ours".
OURS_MISSING: dict[str, str] = {}


def expect_ours(request, impl: str, feature: str) -> None:
    reason = OURS_MISSING.get(feature)
    if impl == "ours" and reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def start(tmp_path_factory):
    """``start(impl, **kw)`` -> running PushpinInstance, stopped at teardown.

    The work dir comes from ``tmp_path_factory`` with a short name, so ipc
    paths stay well under the 107-byte Unix socket path limit."""
    started: list[pushpin.PushpinInstance] = []

    def factory(impl: str, **kw) -> pushpin.PushpinInstance:
        if impl == "reference" and not os.access(pushpin.REFERENCE_BIN, os.X_OK):
            pytest.skip(f"{pushpin.REFERENCE_BIN} is not installed")
        inst = pushpin.start_pushpin(impl, tmp_path_factory.mktemp("pp"), **kw)
        started.append(inst)
        return inst

    yield factory
    for inst in started:
        inst.stop()


def expected_argv(inst: pushpin.PushpinInstance) -> list[str]:
    listens = [f"--listen=127.0.0.1:{inst.port},stream"]
    if inst.https_port is not None:
        p = inst.https_port
        listens.append(f"--listen=127.0.0.1:{p},stream,tls,default-cert=default_{p}")
    if inst.local_path is not None:
        listens.append(f"--listen={inst.local_path},local,stream")
    tls = [f"--tls-identities-dir={inst.workdir}/runner/certs"] if inst.https_port else []
    return [
        "--log-level=2",
        *listens,
        f"--zclient-stream=ipc://{inst.workdir}/run/{pushpin.IPC_PREFIX}condure",
        f"--buffer-size={pushpin.CLIENT_BUFFER_SIZE}",
        f"--stream-maxconn={pushpin.CLIENT_MAXCONN}",
        *tls,
    ]


@pytest.mark.parametrize("impl", IMPLS)
def test_condure_argv(start, impl):
    """Pushpin 1.36 passes exactly these options to condure_bin."""
    inst = start(impl)
    assert inst.condure_argv() == expected_argv(inst)


@pytest.mark.parametrize("impl", IMPLS)
def test_http_get(start, impl):
    inst = start(impl)
    resp = pushpin.fetch(inst.port, "GET", "/echo/get?x=1", headers=[("X-Test", "abc")])
    assert resp.code == 200
    assert resp.header("X-Origin") == b"test"
    assert resp.body == b"GET /echo/get?x=1\n"
    seen = [r for r in inst.origin.requests if r.path == "/echo/get?x=1"]
    assert len(seen) == 1
    assert seen[0].header("X-Test") == "abc"
    assert seen[0].header("Grip-Sig") is not None  # it did go through pushpin-proxy


@pytest.mark.parametrize("impl", IMPLS)
def test_http_post_body(start, impl):
    inst = start(impl)
    body = bytes(range(256)) * 40  # 10 KiB, larger than the 8 KiB buffer
    resp = pushpin.fetch(inst.port, "POST", "/echo/post", body=body,
                         headers=[("Content-Type", "application/octet-stream")])
    assert resp.code == 200
    assert resp.body == b"POST /echo/post\n" + body
    assert [r.body for r in inst.origin.requests if r.path == "/echo/post"] == [body]


@pytest.mark.parametrize("impl", IMPLS)
def test_http_large_response(start, impl):
    """A response far larger than condure's buffer: credits flow through."""
    inst = start(impl)
    n = 1_000_000
    resp = pushpin.fetch(inst.port, "GET", f"/big/{n}", timeout=20)
    assert resp.code == 200
    assert resp.body == pushpin.big_body(n)


@pytest.mark.parametrize("impl", IMPLS)
def test_http_keep_alive(start, impl):
    """Several requests on one client connection."""
    inst = start(impl)
    conn = pushpin.http_client.Conn(inst.port)
    try:
        for i in range(3):
            conn.send(pushpin.http_client.request("GET", f"/echo/ka{i}"))
            resp = conn.read_response()
            assert resp.code == 200
            assert resp.body == f"GET /echo/ka{i}\n".encode()
    finally:
        conn.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_websocket_echo(start, impl, request):
    """A WebSocket through Pushpin to a WebSocket origin: text, binary, close."""
    expect_ours(request, impl, "websocket")
    inst = start(impl)
    ws = WsConn.open(inst.port, "/ws/chat", host=f"127.0.0.1:{inst.port}")
    try:
        hs = ws.read_handshake()
        assert hs.code == 101, hs.raw
        assert hs.header("Sec-WebSocket-Accept") == accept_key(ws.key).encode()
        ws.send_text("hello pushpin")
        assert ws.read_message()[:2] == (OP_TEXT, b"hello pushpin")
        blob = bytes(range(256)) * 64  # 16 KiB, several condure buffers
        ws.send_binary(blob)
        assert ws.read_message(timeout=10)[:2] == (OP_BINARY, blob)
        ws.send_close(1000, "bye")
        code, _reason = ws.read_close()
        assert code == 1000
    finally:
        ws.close()
    assert inst.origin.ws_received == ["hello pushpin", blob]
    assert [code for code, _ in inst.origin.ws_closes] == [1000]
    assert inst.origin.errors == []
    assert [r.path for r in inst.origin.requests if r.path.startswith("/ws/")] == ["/ws/chat"]


@pytest.mark.parametrize("impl", IMPLS)
def test_local_listener(start, impl, request):
    """Pushpin's ``local_ports`` becomes a Unix-socket listener of condure."""
    expect_ours(request, impl, "local")
    inst = start(impl, local=True)
    assert inst.condure_argv() == expected_argv(inst)
    resp = pushpin.fetch(inst.local_path, "GET", "/echo/unix")
    assert resp.code == 200
    assert resp.body == b"GET /echo/unix\n"


@pytest.mark.parametrize("impl", IMPLS)
def test_tls_listener(start, impl, request):
    """Pushpin's ``https_ports``: a TLS listener with ``default-cert=default_<port>``
    looked up in ``--tls-identities-dir=<config dir>/runner/certs``."""
    expect_ours(request, impl, "tls")
    pytest.importorskip("trustme")
    inst = start(impl, tls=True)
    assert inst.condure_argv() == expected_argv(inst)
    resp = pushpin.fetch(inst.https_port, "POST", "/echo/tls", body=b"secret",
                         tls_ca=inst.tls_ca)
    assert resp.code == 200
    assert resp.body == b"POST /echo/tls\nsecret"


@pytest.mark.parametrize("impl", IMPLS)
def test_stop_leaves_nothing_running(start, impl):
    inst = start(impl)
    assert inst.runner.alive()
    inst.stop()
    assert inst.leftovers() == []
    with pytest.raises(OSError):
        pushpin.http_client.Conn(inst.port, timeout=1).close()
