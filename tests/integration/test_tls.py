"""TLS listeners against real processes: certificate choice by SNI, a
wildcard and a default, refusal without a certificate, replacement on disk,
and whole requests through the scripted handler.

The certificate-choice tests also run against Debian's condure when it is
installed, to keep the rules of reference section 9.1 honest.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from tests.harness import http_client

trustme = pytest.importorskip("trustme")

NAMES = ("www.example.com", "_.wild.test", "fallback")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_identity(ca, directory: Path, name: str) -> bytes:
    """``name.crt``/``name.key`` in ``directory``; returns the leaf as DER."""
    cert = ca.issue_cert("*" + name[1:] if name.startswith("_.") else name)
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    (directory / f"{name}.crt").write_bytes(
        b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


@pytest.fixture
def identities(ca, tmp_path):
    directory = tmp_path / "identities"
    directory.mkdir()
    return directory, {name: write_identity(ca, directory, name) for name in NAMES}


def client_context(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, sni: str | None) -> http_client.Conn:
    """A harness client connection with TLS under it (handshake done)."""
    conn = http_client.connect(port)
    try:
        conn.sock = ctx.wrap_socket(conn.sock, server_hostname=sni)
    except BaseException:
        conn.close()
        raise
    return conn


def served(port: int, ctx: ssl.SSLContext, sni: str | None) -> bytes:
    conn = tls_connect(port, ctx, sni)
    try:
        return conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


def start(make_condure, impl: str, directory: Path, params: str = ""):
    return make_condure(impl, listen=["127.0.0.1:{port},tls" + params],
                        extra_args=["--tls-identities-dir", str(directory)])


@pytest.mark.parametrize("impl", ["ours", pytest.param("reference", marks=pytest.mark.reference)])
def test_certificate_by_sni_wildcard_and_default(make_condure, ca, identities, impl) -> None:
    directory, ders = identities
    condure = start(make_condure, impl, directory, ",default-cert=fallback")
    ctx = client_context(ca)
    assert served(condure.port, ctx, "www.example.com") == ders["www.example.com"]
    assert served(condure.port, ctx, "WWW.EXAMPLE.COM") == ders["www.example.com"]
    assert served(condure.port, ctx, "a.wild.test") == ders["_.wild.test"]
    assert served(condure.port, ctx, "unknown.test") == ders["fallback"]
    assert served(condure.port, ctx, None) == ders["fallback"]


@pytest.mark.parametrize("impl", ["ours", pytest.param("reference", marks=pytest.mark.reference)])
@pytest.mark.parametrize("sni", ["unknown.test", None])
def test_no_certificate_fails_the_handshake(make_condure, make_handler, ca, identities,
                                            impl, sni) -> None:
    directory, ders = identities
    condure = start(make_condure, impl, directory)
    handler = make_handler(condure)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(condure.port, client_context(ca), sni)
    handler.expect_nothing()
    # The listener still serves names it knows.
    assert served(condure.port, client_context(ca), "www.example.com") == ders["www.example.com"]


def test_certificate_replaced_on_disk(make_condure, ca, identities) -> None:
    directory, ders = identities
    condure = start(make_condure, "ours", directory)
    ctx = client_context(ca)
    assert served(condure.port, ctx, "www.example.com") == ders["www.example.com"]
    new = write_identity(ca, directory, "www.example.com")
    assert new != ders["www.example.com"]
    for suffix in (".crt", ".key"):  # a later mtime, whatever the clock's granularity
        path = directory / f"www.example.com{suffix}"
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert served(condure.port, ctx, "www.example.com") == new
    # A certificate added after start is found too.
    added = write_identity(ca, directory, "late.test")
    assert served(condure.port, ctx, "late.test") == added


def test_request_and_response_over_tls(make_condure, make_handler, ca, identities) -> None:
    directory, _ = identities
    condure = start(make_condure, "ours", directory)
    handler = make_handler(condure)
    conn = tls_connect(condure.port, client_context(ca), "www.example.com")
    try:
        conn.send(http_client.request("GET", "/path?x=1", [("Host", "www.example.com")]))
        req = handler.recv()
        assert req["uri"] == b"https://www.example.com/path?x=1"
        assert req["peer-address"] == b"127.0.0.1" and isinstance(req["peer-port"], int)
        handler.reply(req, headers=[("Content-Type", "text/plain")], body=b"hello tls\n")
        resp = conn.read_response()
        assert resp.code == 200 and resp.body == b"hello tls\n"
        # The connection persists: a second request with a body, streamed,
        # after which condure closes (close_notify, then FIN).
        body = b"b" * 40000
        conn.send(http_client.request("POST", "/up", [("Host", "www.example.com"),
                                                      ("Content-Length", str(len(body))),
                                                      ("Connection", "close")],
                                      body=body))
        req = handler.recv()
        assert req["uri"] == b"https://www.example.com/up" and req.get("more") is True
        handler.credit(req, 100000)
        received = b""
        while len(received) < len(body):
            pkt = handler.recv()
            received += pkt.body
        assert received == body
        handler.reply(req, body=b"done")
        resp = conn.read_response()
        assert resp.code == 200 and resp.body == b"done"
        assert conn.read_until_close() == b""
        assert conn.end == "eof"  # close_notify (a clean end), no reset
    finally:
        conn.close()


def test_plain_http_on_a_tls_listener_is_dropped(make_condure, make_handler, identities) -> None:
    directory, _ = identities
    condure = start(make_condure, "ours", directory, ",default-cert=fallback")
    handler = make_handler(condure)
    with http_client.connect(condure.port) as conn:
        conn.send(http_client.request("GET", "/", [("Host", "x")]))
        data = conn.read_until_close()
        assert b"HTTP/1.1" not in data  # at most a TLS alert, never an HTTP answer
    handler.expect_nothing()
    assert condure.alive()
