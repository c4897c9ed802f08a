"""SASL pieces: base64 responses (RFC 4954 section 4) and the PLAIN message (RFC 4616)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtptrio.protocol.sasl import decode_plain, decode_response, encode_challenge


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"=", b""),
        (b"dXNlcg==", b"user"),
        (b"c2VjcmV0", b"secret"),
        (b"YWI=", b"ab"),
        (b"  dXNlcg==\t", b"user"),  # surrounding white space is tolerated
        (b"AHVzZXIAc2VjcmV0", b"\x00user\x00secret"),
        (b"++//", b"\xfb\xef\xff"),
    ],
)
def test_decode_response(line: bytes, value: bytes) -> None:
    assert decode_response(line) == value


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"*",  # the driver answers a cancel before decoding; here it is just not base64
        b"dXNlcg",  # padding is required
        b"dXNlcg=",
        b"dXNlcg===",
        b"dXN lcg==",
        b"dXNlcg==\r",
        b"dXNlcg==\n",
        b"d\x00Nlcg==",
        b"dXNl-_==",  # base64url is not base64
        b"==",
        b"A",
        b"\x00TOO-LONG",
        "dXNlcg==".encode("utf-16-le"),
    ],
)
def test_decode_response_refuses(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_response(line)


@given(st.binary(max_size=300))
def test_decode_response_inverts_b64encode(value: bytes) -> None:
    encoded = base64.b64encode(value)
    assert decode_response(encoded or b"=") == value


@given(st.binary(max_size=200))
def test_decode_response_raises_only_value_error(line: bytes) -> None:
    try:
        decode_response(line)
    except ValueError:
        pass


def test_encode_challenge() -> None:
    assert encode_challenge(b"Username:") == b"VXNlcm5hbWU6"
    assert encode_challenge(b"") == b""


@pytest.mark.parametrize(
    ("blob", "parts"),
    [
        (b"\x00user\x00secret", (b"", b"user", b"secret")),
        (b"admin\x00user\x00secret", (b"admin", b"user", b"secret")),
        (b"\x00us er\x00p w", (b"", b"us er", b"p w")),
        ("\x00jörg\x00pässwörd".encode(), (b"", "jörg".encode(), "pässwörd".encode())),
    ],
)
def test_decode_plain(blob: bytes, parts: tuple[bytes, bytes, bytes]) -> None:
    assert decode_plain(blob) == parts


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"user",
        b"user\x00secret",
        b"\x00user",
        b"\x00\x00",
        b"\x00user\x00",
        b"\x00\x00secret",
        b"a\x00b\x00c\x00d",
    ],
)
def test_decode_plain_refuses(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_plain(blob)
