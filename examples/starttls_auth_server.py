"""STARTTLS and AUTH: clients must start TLS, then log in, before they may send.

``python examples/starttls_auth_server.py CERT.pem KEY.pem [PORT]`` serves with that key pair;
the only account is ``alice`` / ``wonderland`` (use ``smtptrio serve --auth-file`` with hashed
passwords for real deployments).
"""

from __future__ import annotations

import hmac
import ssl
import sys
from functools import partial
from typing import Any

import trio

import smtptrio
from smtptrio.handlers import Sink

USERS = {b"alice": b"wonderland"}


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> smtptrio.AuthResult:
    """Check LOGIN/PLAIN credentials; compare in constant time."""
    if not isinstance(auth_data, smtptrio.LoginPassword):
        return smtptrio.AuthResult(success=False, handled=False)
    expected = USERS.get(auth_data.login)
    ok = expected is not None and hmac.compare_digest(expected, auth_data.password)
    return smtptrio.AuthResult(success=ok, handled=False, auth_data=auth_data)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def run(
    context: ssl.SSLContext,
    port: int = 8587,
    *,
    task_status: trio.TaskStatus[smtptrio.RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await smtptrio.serve(
        Sink(),
        host="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
        task_status=task_status,
    )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: starttls_auth_server.py CERT.pem KEY.pem [PORT]")
    ctx = tls_context(sys.argv[1], sys.argv[2])
    trio.run(partial(run, ctx, int(sys.argv[3]) if len(sys.argv) > 3 else 8587))
