"""Certificate choice by server name, reloading, and the memory-BIO TLS layer."""

from __future__ import annotations

import os
import ssl

import pytest

from condure.net.certs import CertStore, valid_name
from condure.net.tls import TlsError, TlsLayer

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_identity(ca, directory, name: str, san: str | None = None) -> bytes:
    """Write ``name.crt``/``name.key`` for ``san`` (default: the name, with a
    leading ``_`` label as ``*``); return the leaf certificate as PEM."""
    if san is None:
        san = "*" + name[1:] if name.startswith("_.") else name
    cert = ca.issue_cert(san)
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    pem = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    (directory / f"{name}.crt").write_bytes(pem)
    return cert.cert_chain_pems[0].bytes()


def bump_mtime(path, seconds: int = 10) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def client_context(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    return ctx


def handshake(server: TlsLayer, client_ctx: ssl.SSLContext, sni: str | None):
    """Run a handshake between a client SSLObject and ``server`` in memory;
    return the client object (raises TlsError or ssl.SSLError on failure)."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = c_out.read()
        if data:
            server.receive(data)
            c_in.write(server.take_output())
        if done and not server.handshaking:
            return client
    raise AssertionError("handshake did not finish")


def served_pem(client) -> bytes:
    return ssl.DER_cert_to_PEM_cert(client.getpeercert(binary_form=True)).encode()


def same_cert(pem_a: bytes, pem_b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a.decode()) == ssl.PEM_cert_to_DER_cert(pem_b.decode())


@pytest.fixture
def identities(ca, tmp_path):
    pems = {name: write_identity(ca, tmp_path, name)
            for name in ("www.example.com", "_.wild.test", "fallback")}
    return tmp_path, pems


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, ok", [
    ("www.example.com", True),
    ("_.wild.test", True),
    ("", False),
    ("a/b", False),
    ("../etc/passwd", False),
    ("bad\x00name", False),
    ("bad\nname", False),
    ("bad\x7fname", False),
    ("a" * 253, True),
    ("a" * 254, False),
])
def test_valid_name(name, ok) -> None:
    assert valid_name(name) is ok


# ---------------------------------------------------------------- selection


def test_select_by_sni_wildcard_and_default(identities) -> None:
    directory, _ = identities
    store = CertStore(str(directory))
    www = store.get("www.example.com")
    wild = store.get("_.wild.test")
    fallback = store.get("fallback")
    assert None not in (www, wild, fallback)
    assert store.select("www.example.com", None) is www
    assert store.select("WWW.Example.COM", None) is www
    assert store.select("a.wild.test", None) is wild
    assert store.select("a.b.wild.test", None) is None  # one level only
    assert store.select("a.b.wild.test", "fallback") is fallback
    assert store.select("unknown.test", "fallback") is fallback
    assert store.select(None, "fallback") is fallback
    assert store.select(None, None) is None
    assert store.select("unknown.test", None) is None
    assert store.select("unknown.test", "missing") is None


def test_names_that_are_not_file_names_are_refused(identities) -> None:
    directory, _ = identities
    (directory / "sub").mkdir()
    write_identity(trustme.CA(), directory / "sub", "x")
    store = CertStore(str(directory))
    assert store.get("sub/x") is None
    assert store.select("sub/x", None) is None


def test_missing_key_or_bad_pem_is_no_certificate(ca, tmp_path) -> None:
    write_identity(ca, tmp_path, "nokey")
    (tmp_path / "nokey.key").unlink()
    write_identity(ca, tmp_path, "garbage")
    (tmp_path / "garbage.crt").write_bytes(b"not a certificate\n")
    store = CertStore(str(tmp_path))
    assert store.get("nokey") is None
    assert store.get("garbage") is None


def test_loaded_once_then_reloaded_when_a_file_changes(ca, identities) -> None:
    directory, pems = identities
    store = CertStore(str(directory))
    first = store.get("www.example.com")
    assert store.get("www.example.com") is first  # cached while unchanged
    new_pem = write_identity(ca, directory, "www.example.com")
    bump_mtime(directory / "www.example.com.crt")
    bump_mtime(directory / "www.example.com.key")
    second = store.get("www.example.com")
    assert second is not None and second is not first
    client = handshake(TlsLayer(store.listener_context(None)), client_context(ca),
                       "www.example.com")
    assert same_cert(served_pem(client), new_pem)
    assert not same_cert(new_pem, pems["www.example.com"])
    # Only the key touched: reloaded as well.
    bump_mtime(directory / "www.example.com.key", 20)
    assert store.get("www.example.com") is not second
    # Files removed: the name is gone.
    (directory / "www.example.com.crt").unlink()
    assert store.get("www.example.com") is None


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize("sni, expected", [
    ("www.example.com", "www.example.com"),
    ("WWW.EXAMPLE.COM", "www.example.com"),
    ("a.wild.test", "_.wild.test"),
    ("unknown.test", "fallback"),
    (None, "fallback"),
])
def test_handshake_serves_the_chosen_certificate(ca, identities, sni, expected) -> None:
    directory, pems = identities
    store = CertStore(str(directory))
    server = TlsLayer(store.listener_context("fallback"))
    client = handshake(server, client_context(ca), sni)
    assert same_cert(served_pem(client), pems[expected])
    assert client.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("sni", ["unknown.test", None])
def test_no_certificate_fails_with_unrecognized_name(ca, identities, sni) -> None:
    directory, _ = identities
    server = TlsLayer(CertStore(str(directory)).listener_context(None))
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(ca).wrap_bio(c_in, c_out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    with pytest.raises(TlsError):
        server.receive(c_out.read())
    alert = server.take_output()
    assert alert, "the server sends a fatal alert"
    c_in.write(alert)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        client.do_handshake()


def test_protocol_profile(ca, identities) -> None:
    directory, _ = identities
    store = CertStore(str(directory))
    ctx = store.listener_context("fallback")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(n.startswith(("ECDHE-", "DHE-")) for n in names)
    assert all("GCM" in n or "CHACHA20" in n for n in names)
    client_ctx = client_context(ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client = handshake(TlsLayer(ctx), client_ctx, "www.example.com")
    assert client.version() == "TLSv1.2"


def test_data_both_ways_and_close(ca, identities) -> None:
    directory, _ = identities
    server = TlsLayer(CertStore(str(directory)).listener_context("fallback"))
    ctx = client_context(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="www.example.com")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            assert server.receive(c_out.read()) == (b"", False)
            c_in.write(server.take_output())
    assert server.alpn == "http/1.1" and client.selected_alpn_protocol() == "http/1.1"
    big = b"x" * 50000
    client.write(b"GET / HTTP/1.1\r\n\r\n" + big)
    plain, eof = server.receive(c_out.read())
    assert plain == b"GET / HTTP/1.1\r\n\r\n" + big and not eof
    c_in.write(server.encrypt(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert client.read(100) == b"HTTP/1.1 200 OK\r\n\r\n"
    # close_notify from the client is the end of its stream
    try:
        client.unwrap()
    except ssl.SSLWantReadError:
        pass
    assert server.receive(c_out.read()) == (b"", True)
    c_in.write(server.close_notify())
    client.unwrap()  # completes: the server's close_notify arrived


def test_raw_end_of_input(ca, identities) -> None:
    directory, _ = identities
    server = TlsLayer(CertStore(str(directory)).listener_context("fallback"))
    with pytest.raises(TlsError):
        server.receive(b"")  # closed before the handshake
    server = TlsLayer(CertStore(str(directory)).listener_context("fallback"))
    handshake(server, client_context(ca), "www.example.com")
    assert server.receive(b"") == (b"", True)  # closed without close_notify


def test_garbage_instead_of_a_client_hello(identities) -> None:
    directory, _ = identities
    server = TlsLayer(CertStore(str(directory)).listener_context("fallback"))
    with pytest.raises(TlsError):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
