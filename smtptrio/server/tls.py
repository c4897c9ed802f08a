"""TLS for SMTP: STARTTLS (RFC 3207) and implicit TLS (RFC 8314), through ``trio.SSLStream``.

Both paths end in :func:`handshake`: wrap the stream, run the handshake under a deadline, and
report failure as ``None`` with a log line, so one broken or stalled client costs only its own
connection. Contexts are never modified here.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

__all__ = ["handshake", "ssl_info"]

log = logging.getLogger("smtptrio.tls")


async def handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, limit: float, session_id: str
) -> trio.SSLStream[trio.abc.Stream] | None:
    """Wrap ``stream`` server-side and complete the handshake within ``limit`` seconds.

    Returns:
        The TLS stream, or None when the handshake failed or timed out (already logged; the
        caller closes the connection without a reply, as RFC 3207 leaves nothing to say).
    """
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(limit):
            await tls.do_handshake()
    except trio.TooSlowError:
        log.warning("TLS handshake timed out", extra={"session_id": session_id, "timeout": limit})
        await trio.aclose_forcefully(tls)
        return None
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        log.warning(
            "TLS handshake failed",
            extra={"session_id": session_id, "error": repr(cause or exc)},
        )
        await trio.aclose_forcefully(tls)
        return None
    return tls


def ssl_info(tls: trio.SSLStream[Any]) -> dict[str, Any]:
    """``session.ssl`` as aiosmtpd fills it: context, peer certificate, cipher, the TLS object."""
    return {
        "sslcontext": tls.context,
        "peercert": tls.getpeercert(),
        "cipher": tls.cipher(),
        "compression": tls.compression(),
        "ssl_object": tls,
    }
