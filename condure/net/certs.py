"""Certificates for TLS listeners, looked up by server name.

A name ``N`` is the PEM certificate chain ``N.crt`` and the PEM private key
``N.key`` in ``--tls-identities-dir``. Per handshake (reference 9.1):

1. SNI present: the lower-cased name, else the name with its first label
   replaced by ``_`` (``a.wild.test`` -> ``_.wild.test``, one level only),
   else the listener's ``default-cert``;
2. no SNI: ``default-cert``;

and when nothing is found the handshake fails with the fatal alert
``unrecognized_name``.

Files are read on first use and read again when either file's modification
time changed since they were loaded (checked at every lookup, one ``stat``
per file), so certificates can be replaced without a restart. When the new
files cannot be used (a rotation that writes the certificate and the key
one after the other, a broken file), the certificate loaded before goes on
being served and the failure is logged once for those files; a name that
never loaded fails as if it had no files. An encrypted private key is
refused (there is no one to ask for its passphrase) instead of prompting
on a terminal.
"""

from __future__ import annotations

import logging
import os
import ssl

log = logging.getLogger("condure.tls")

MAX_NAME = 253

# Mozilla's "intermediate" profile: TLS 1.2 suites with forward secrecy and
# AEAD ciphers (TLS 1.3 suites are OpenSSL's defaults, all acceptable).
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
))
ALPN = ["http/1.1"]


def server_context() -> ssl.SSLContext:
    """A server context with condure's protocol settings and no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    # The client's cipher preference decides (as in Mozilla's profile); no
    # client-initiated renegotiation, no compression.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    # A client that shuts its side down without close_notify (a half-close)
    # is an end of input, not a protocol error: no decode_error alert.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_alpn_protocols(ALPN)
    return ctx


def valid_name(name: str) -> bool:
    """A name that may become a file name: not empty, at most 253
    characters, no control characters and no ``/``."""
    if not name or len(name) > MAX_NAME or "/" in name:
        return False
    return all(ch >= " " and ch != "\x7f" for ch in name)


def _no_passphrase() -> bytes:
    raise ValueError("the private key is encrypted (condure cannot ask for a passphrase)")


class _Entry:
    """A name's last loaded context (None: it never loaded) and the
    modification times of the files last tried."""

    __slots__ = ("context", "crt_mtime", "key_mtime")

    def __init__(self, context: ssl.SSLContext | None, crt_mtime: int, key_mtime: int) -> None:
        self.context = context
        self.crt_mtime = crt_mtime
        self.key_mtime = key_mtime


class CertStore:
    """The certificates of one ``--tls-identities-dir``, loaded lazily."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.entries: dict[str, _Entry] = {}

    def get(self, name: str) -> ssl.SSLContext | None:
        """The context serving certificate ``name``, or None when its files
        are missing or unusable (the reason is logged)."""
        if not valid_name(name):
            return None
        crt = os.path.join(self.directory, name + ".crt")
        key = os.path.join(self.directory, name + ".key")
        try:
            crt_mtime = os.stat(crt).st_mtime_ns
            key_mtime = os.stat(key).st_mtime_ns
        except OSError:
            self.entries.pop(name, None)
            return None
        entry = self.entries.get(name)
        if entry is not None and entry.crt_mtime == crt_mtime and entry.key_mtime == key_mtime:
            return entry.context
        ctx = server_context()
        try:
            ctx.load_cert_chain(crt, key, password=_no_passphrase)
        except (OSError, ssl.SSLError, ValueError) as e:
            # Once per set of files (not per handshake); the last good one stays.
            old = None if entry is None else entry.context
            log.warning("failed to load certificate %s: %s%s", name, e,
                        "; still serving the one loaded before" if old is not None else "")
            self.entries[name] = _Entry(old, crt_mtime, key_mtime)
            return old
        if entry is not None and entry.context is not None:
            log.info("reloaded certificate %s", name)
        else:
            log.debug("loaded certificate %s", name)
        self.entries[name] = _Entry(ctx, crt_mtime, key_mtime)
        return ctx

    def select(self, server_name: str | None, default_cert: str | None) -> ssl.SSLContext | None:
        """The context for one handshake (see the module docstring)."""
        if server_name:
            name = server_name.lower()
            ctx = self.get(name)
            if ctx is not None:
                return ctx
            _, dot, rest = name.partition(".")
            if dot and rest:
                ctx = self.get("_." + rest)
                if ctx is not None:
                    return ctx
        if default_cert:
            return self.get(default_cert)
        return None

    def listener_context(self, default_cert: str | None) -> ssl.SSLContext:
        """The context a TLS listener's handshakes start with: it picks the
        certificate from the client's SNI, or fails the handshake."""
        ctx = server_context()

        def pick(sslobj, server_name, _initial):
            chosen = self.select(server_name, default_cert)
            if chosen is None:
                log.debug("no certificate for server name %r", server_name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = chosen
            return None

        ctx.sni_callback = pick
        return ctx
