r"""SASL pieces for SMTP AUTH (RFC 4954): base64 responses and the PLAIN message (RFC 4616).

The exchange itself (send ``334``, read one line) is driven by the server; what a response
*means* is decided here, without I/O, so it is tested on its own.

>>> decode_response(b"=")
b''
>>> decode_plain(decode_response(b"AHVzZXIAc2VjcmV0"))
(b'', b'user', b'secret')
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["decode_plain", "decode_response", "encode_challenge"]

_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_response(line: bytes) -> bytes:
    """Decode a client's base64 response; ``=`` alone is the empty response (RFC 4954 section 4).

    Raises:
        ValueError: if it is not strict, padded base64 (RFC 4648 section 4).
    """
    line = line.strip(b" \t")
    if line == b"=":
        return b""
    if not line or _BASE64.fullmatch(line) is None:
        raise ValueError("not base64")
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex already vetted it
        raise ValueError("not base64") from exc


def encode_challenge(challenge: bytes) -> bytes:
    """The text of a ``334`` line: base64, or nothing for an empty challenge."""
    return base64.b64encode(challenge)


def decode_plain(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a PLAIN message into ``(authzid, authcid, password)`` (RFC 4616 section 2).

    Raises:
        ValueError: unless there are exactly two NULs and a non-empty authcid and password.
    """
    parts = blob.split(b"\x00")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError("PLAIN needs authzid NUL authcid NUL password")
    return parts[0], parts[1], parts[2]
