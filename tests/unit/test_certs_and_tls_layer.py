"""The certificate store (condure/net/certs.py) across rotations and bad
files, and the TLS layer (condure/net/tls.py) at a client's half-close,
with real certificates (trustme) and a real TLS client on memory BIOs."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest

from condure.net.certs import CertStore
from condure.net.tls import TlsLayer

trustme = pytest.importorskip("trustme")


@pytest.fixture
def ca():
    return trustme.CA()


def write_identity(directory: Path, name: str, cert, *, mtime: int | None = None) -> None:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    if mtime is not None:
        for path in (crt, key):
            os.utime(path, ns=(mtime, mtime))


def served_name(store: CertStore, ca, server_name: str = "localhost") -> str:
    """Handshake with ``store`` as a client trusting ``ca``; the common name
    of the certificate it was served (or the handshake's error)."""
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.check_hostname = False
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname=server_name)
    server = TlsLayer(store.listener_context(None))
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            return f"error: {e.reason}"
        try:
            server.receive(client_out.read())
        except Exception as e:  # noqa: BLE001 - the layer's refusal is the answer
            client_in.write(server.take_output())
            return f"refused: {e}"
        client_in.write(server.take_output())
    cert = client.getpeercert()
    return dict(x[0] for x in cert["subject"]).get("commonName", "") or str(
        cert.get("subjectAltName"))


def test_a_rotation_half_done_keeps_serving_the_previous_certificate(tmp_path, ca, caplog):
    """A new certificate written before its key (the two files do not
    match for a moment): the previous identity goes on being served, the
    failure is logged once, and the complete new pair is taken up."""
    first = ca.issue_cert("localhost", common_name="first")
    second = ca.issue_cert("localhost", common_name="second")
    write_identity(tmp_path, "localhost", first, mtime=1_000_000_000)
    store = CertStore(str(tmp_path))
    assert served_name(store, ca) == "first"
    # the new certificate, the old key: unusable together
    (tmp_path / "localhost.crt").write_bytes(
        b"".join(blob.bytes() for blob in second.cert_chain_pems))
    with caplog.at_level(logging.WARNING, logger="condure.tls"):
        for _ in range(5):
            assert served_name(store, ca) == "first"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "still serving the one loaded before" in warnings[0].message
    write_identity(tmp_path, "localhost", second, mtime=1_000_000_002)
    assert served_name(store, ca) == "second"


def test_a_broken_certificate_that_never_loaded_is_refused_and_logged_once(
        tmp_path, ca, caplog):
    (tmp_path / "localhost.crt").write_bytes(b"garbage")
    (tmp_path / "localhost.key").write_bytes(b"garbage")
    store = CertStore(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="condure.tls"):
        for _ in range(5):
            assert store.get("localhost") is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(tmp_path, ca, caplog):
    """OpenSSL would prompt on the terminal and block the worker."""
    cert = ca.issue_cert("enc.test")
    write_identity(tmp_path, "enc.test", cert)
    from cryptography.hazmat.primitives import serialization  # trustme's own dependency
    key = tmp_path / "enc.test.key"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    store = CertStore(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="condure.tls"):
        assert store.get("enc.test") is None
    assert "encrypted" in caplog.text


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_half_close_without_close_notify_is_an_end_not_an_error(tmp_path, ca, version):
    """The client sends its request and shuts its side down without
    close_notify: the layer reports the end of input and sends no alert;
    its close_notify reaches the client as a clean end."""
    write_identity(tmp_path, "localhost", ca.issue_cert("localhost"))
    store = CertStore(str(tmp_path))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.maximum_version = version
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = TlsLayer(store.listener_context("localhost"))
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            server.receive(client_out.read())
            client_in.write(server.take_output())
    client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.receive(client_out.read()) == (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False)
    assert server.receive(b"") == (b"", True)
    client_in.write(server.take_output() + server.close_notify())
    assert client.read(100) == b""  # before: TLSV1_ALERT_DECODE_ERROR
