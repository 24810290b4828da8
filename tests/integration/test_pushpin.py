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
from tests.harness import pushpin_checks as checks

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
    checks.http_get(start(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_http_post_body(start, impl):
    checks.http_post_body(start(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_http_large_response(start, impl):
    checks.http_large_response(start(impl))


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
    checks.ws_echo(start(impl), bytes(range(256)) * 64)  # 16 KiB, several condure buffers


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
    checks.stop_leaves_nothing(inst)
