"""TLS termination on the public listener (``--tls-cert``/``--tls-key``).

Plain HTTP stays the default; with a certificate and key the listener speaks TLS only.
The context follows Mozilla's "intermediate" profile as Python's defaults already do:
TLS 1.2 and 1.3 only (1.0/1.1 are refused, RFC 8996), forward-secret AEAD cipher suites
from OpenSSL's default list, no TLS compression, no session tickets across restarts of
the key. ALPN offers ``http/1.1`` only: the relay speaks HTTP/1.1, so a client that
offers h2 and http/1.1 picks http/1.1 (HAProxy's ``alpn http/1.1`` on a bind line).
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message says which file and why."""


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key`` (PEM; None: in ``cert``)."""
    for label, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not Path(path).is_file():
            raise TLSConfigError(f"{label} {path!r}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"--tls-cert {cert!r} / --tls-key {key!r} cannot be loaded: {exc}"
        ) from exc
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
