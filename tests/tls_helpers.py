"""Certificates and TLS clients for the TLS and AUTH tests (tiers 2 and 3).

One trustme CA per test run (making keys is the slow part), fresh ``ssl.SSLContext`` objects
per test: the server never mutates a context, but a test that flips an option on one must not
leak it into the next.

    ca = tls_material()
    server_ctx = ca.server_context()
    client = await starttls(client, ca.client_context())      # after EHLO: 220, handshake
"""

from __future__ import annotations

import base64
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trustme
from helpers import SMTPClient

from smtptrio import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "PASSWORD",
    "USER",
    "TLSMaterial",
    "b64",
    "implicit_tls_client",
    "plain_blob",
    "starttls",
    "tls_material",
    "untrusted_context",
    "upgrade",
]

#: The credentials the AUTH tests accept; chosen so that neither they nor their base64 forms
#: can appear in a log record by chance (the leak test searches for them).
USER = b"alice-7f3c"
PASSWORD = b"pw-Zq8vK3xT9wL2"

#: Seconds any TLS handshake of a test may take (virtual under autojump_clock).
HANDSHAKE_TIMEOUT = 10.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plain_blob(login: bytes = USER, password: bytes = PASSWORD, authzid: bytes = b"") -> str:
    """The base64 PLAIN message ``authzid NUL authcid NUL passwd`` (RFC 4616 section 2)."""
    return b64(authzid + b"\x00" + login + b"\x00" + password)


@dataclass(frozen=True)
class TLSMaterial:
    """A CA and a leaf certificate for ``localhost`` and ``127.0.0.1``."""

    ca: trustme.CA
    cert: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        """What a deployment passes as ``tls_context`` / ``ssl_context``: no client certs."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts our CA (hostname ``localhost``)."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def write_ca(self, directory: Path) -> Path:
        """The CA certificate as a PEM file, for command-line clients (``-CAfile``)."""
        path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path


@functools.cache
def tls_material() -> TLSMaterial:
    ca = trustme.CA()
    return TLSMaterial(ca, ca.issue_cert("localhost", "127.0.0.1"))


@functools.cache
def _other_ca() -> trustme.CA:
    return trustme.CA()


def untrusted_context() -> ssl.SSLContext:
    """A verifying client context that trusts some other CA: the handshake must fail."""
    ctx = ssl.create_default_context()
    _other_ca().configure_trust(ctx)
    return ctx


# ---------------------------------------------------------------------------- clients


async def upgrade(
    client: SMTPClient, ctx: ssl.SSLContext, *, server_hostname: str = "localhost"
) -> SMTPClient:
    """Run the client side of the handshake on ``client``'s stream; a new client over TLS.

    Anything the server sent in clear text after its 220 would sit in the old client's read
    buffer (or break the handshake): both make the caller's test fail, as they should.
    """
    leftover = bytes(client._buf)  # test helper internals, not the server's
    assert leftover == b"", f"server sent clear text after its 220: {leftover!r}"
    tls = trio.SSLStream(client.stream, ctx, server_hostname=server_hostname)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await tls.do_handshake()
    return SMTPClient(tls, client.server_stream, timeout=client.timeout)


async def starttls(client: SMTPClient, ctx: ssl.SSLContext) -> SMTPClient:
    """STARTTLS (expects ``220 2.0.0``), then the handshake; the caller sends EHLO again."""
    reply = await client.cmd("STARTTLS")
    assert reply.codes == (220, "2.0.0"), reply
    return await upgrade(client, ctx)


def implicit_tls_client(client: SMTPClient, ctx: ssl.SSLContext) -> SMTPClient:
    """Wrap a fresh connection for implicit TLS (RFC 8314); the handshake runs on first use."""
    tls = trio.SSLStream(client.stream, ctx, server_hostname="localhost")
    return SMTPClient(tls, client.server_stream, timeout=client.timeout)


def accept_alice(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """An authenticator that accepts USER/PASSWORD and nothing else."""
    if auth_data == LoginPassword(USER, PASSWORD):
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)
