"""The PROXY protocol parser (haproxy's proxy-protocol.txt, v1 and v2), and agreement with aiosmtpd.

Bad input never raises: it gives an invalid ``ProxyData`` with an ``error``. How the bytes are
split never changes the result, and whatever follows the header is kept for SMTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import time
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtptrio.protocol.proxy import (
    AF,
    MAX_V1,
    MAX_V2,
    PROTO,
    V2_CMD,
    V2_SIGNATURE,
    ProxyData,
    ProxyHeaderReader,
    ProxyTLV,
    crc32c,
    parse_proxy_header,
)

if os.environ.get("SMTPTRIO_EXAMPLES"):
    EXAMPLES = int(os.environ["SMTPTRIO_EXAMPLES"])
elif settings.get_current_profile_name() == "default":
    EXAMPLES = 300
else:  # a profile chosen on the command line decides
    EXAMPLES = settings().max_examples
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# Helpers


def parse(data: bytes) -> ProxyData:
    result, used = parse_proxy_header(data)
    assert result is not None, "expected a complete header"
    assert 0 < used <= len(data)
    return result


def fed(data: bytes, step: int = 1) -> ProxyHeaderReader:
    reader = ProxyHeaderReader()
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
    return reader


def tlv(typ: int, value: bytes) -> bytes:
    return bytes([typ]) + struct.pack("!H", len(value)) + value


def v2(ver_cmd: int = 0x21, fam: int = 0x11, body: bytes = b"", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", n) + body


def inet4(
    src: str = "192.0.2.1", dst: str = "198.51.100.7", sp: int = 52000, dp: int = 25
) -> bytes:
    return IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!HH", sp, dp)


def inet6(
    src: str = "2001:db8::1", dst: str = "2001:db8::2", sp: int = 52000, dp: int = 25
) -> bytes:
    return IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!HH", sp, dp)


def unix(src: bytes = b"/run/src.sock", dst: bytes = b"/run/dst.sock") -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def with_crc(
    ver_cmd: int, fam: int, addrs: bytes, tlvs: bytes = b"", corrupt: bool = False
) -> bytes:
    """A v2 header whose CRC32C TLV (placed last) is right, or off by one when *corrupt*."""
    body = addrs + tlvs + tlv(0x03, b"\0\0\0\0")
    raw = v2(ver_cmd, fam, body)
    crc = (crc32c(raw) + (1 if corrupt else 0)) & 0xFFFFFFFF
    return raw[:-4] + struct.pack("!I", crc)


# ---------------------------------------------------------------------------------------------
# Version 1


def test_v1_tcp4() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r\n"
    data, used = parse_proxy_header(line)
    assert data is not None and used == len(line)
    assert data.valid and bool(data) and data.error == ""
    assert data.same_attribs(
        version=1,
        command=None,
        family=AF.INET,
        protocol=PROTO.STREAM,
        src_addr=IPv4Address("192.0.2.1"),
        dst_addr=IPv4Address("198.51.100.7"),
        src_port=52000,
        dst_port=25,
        rest=b"",
        whole_raw=line,
        tlv=None,
        tlv_start=None,
    )


def test_v1_tcp6() -> None:
    data = parse(b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 0 65535\r\n")
    assert data.valid and data.family is AF.INET6 and data.protocol is PROTO.STREAM
    assert data.src_addr == IPv6Address("2001:db8::1")
    assert data.dst_addr == IPv6Address("::ffff:192.0.2.9")
    assert (data.src_port, data.dst_port) == (0, 65535)


def test_v1_longest_tcp6_line_is_accepted() -> None:
    full = "ffff:" * 7 + "ffff"
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert parse(line).valid


@pytest.mark.parametrize(
    ("line", "rest"),
    [
        (b"PROXY UNKNOWN\r\n", b""),
        (b"PROXY UNKNOWN 192.0.2.1 198.51.100.7 52000 25\r\n", b" 192.0.2.1 198.51.100.7 52000 25"),
        (
            b"PROXY UNKNOWN anything at all, even  two spaces\r\n",
            b" anything at all, even  two spaces",
        ),
        (b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 16) + b"\r\n", b" " + b"x" * (MAX_V1 - 16)),
    ],
)
def test_v1_unknown_ignores_what_follows(line: bytes, rest: bytes) -> None:
    assert len(line) <= MAX_V1
    data = parse(line)
    assert data.valid
    assert data.same_attribs(version=1, family=AF.UNSPEC, protocol=PROTO.UNSPEC, rest=rest)
    assert data.src_addr is None and data.src_port is None and data.tlv is None


V1_MALFORMED = [
    # (line, error)
    (b"PROXY TCP4  192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4 192.0.2.1  198.51.100.7 52000 25\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25 \r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 52000  25\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY  TCP4 192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 52000\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25 26\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4\r\n", "PROXYv1 wrong number of fields"),
    (b"PROXY TCP4\t192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCP5 192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY UDP4 192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY tcp4 192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY UNKNOWNX\r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY \r\n", "PROXYv1 unrecognized protocol"),
    (b"PROXY TCP4 192.0.2.256 198.51.100.7 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 192.0.2 198.51.100.7 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 192.0.2.01 198.51.100.7 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 192.0.2.1/32 198.51.100.7 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 mx.example 198.51.100.7 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP6 fe80::1%eth0 fe80::2 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP6 2001:db8:::1 2001:db8::2 52000 25\r\n", "PROXYv1 address malformed"),
    (b"PROXY TCP4 2001:db8::1 2001:db8::2 52000 25\r\n", "PROXYv1 address not IPv4"),
    (b"PROXY TCP4 192.0.2.1 2001:db8::2 52000 25\r\n", "PROXYv1 address not IPv4"),
    (b"PROXY TCP6 192.0.2.1 198.51.100.7 52000 25\r\n", "PROXYv1 address not IPv6"),
    (b"PROXY TCP6 2001:db8::1 198.51.100.7 52000 25\r\n", "PROXYv1 address not IPv6"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n", "PROXYv1 src port out of bounds"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 25 99999\r\n", "PROXYv1 dst port out of bounds"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 100000 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 025 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 00 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 +25 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 0x19 25\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 25 \xb2\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 25 2\r5\r\n", "PROXYv1 port malformed"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\n", "PROXYv1 malformed"),
    (b"PROXY UNKNOWN\n", "PROXYv1 malformed"),
]


@pytest.mark.parametrize(("line", "error"), V1_MALFORMED)
def test_v1_malformed(line: bytes, error: str) -> None:
    data, used = parse_proxy_header(line + b"EHLO x\r\n")
    assert data is not None and not data.valid and not data
    assert data.version == 1 and data.error == error
    assert used == len(line) and data.whole_raw == line


def test_v1_lowercase_signature_is_not_proxy() -> None:
    data = parse(b"proxy TCP4 192.0.2.1 198.51.100.7 52000 25\r\n")
    assert not data.valid and data.version is None
    assert data.error == "PROXY unrecognized signature"


def test_v1_too_long_is_decided_at_107_octets() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 15) + b"\r\n"  # 108 octets
    assert len(line) == MAX_V1 + 1
    reader = ProxyHeaderReader()
    reader.feed(line[: MAX_V1 - 1])
    assert reader.result() is None
    reader.feed(line[MAX_V1 - 1 : MAX_V1])
    result = reader.result()
    assert result is not None and result.error == "PROXYv1 header too long"
    assert len(result.whole_raw) == MAX_V1


def test_v1_without_crlf_is_incomplete_until_the_limit() -> None:
    for cut in range(len(b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25")):
        assert parse_proxy_header(b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25"[:cut]) == (None, 0)
    assert parse_proxy_header(b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r") == (None, 0)


# ---------------------------------------------------------------------------------------------
# Signatures


@pytest.mark.parametrize(
    ("data", "examined"),
    [
        (b"E", 1),
        (b"EHLO x\r\n", 1),
        (b"PROXX", 5),
        (b"PROXYX", 6),
        (b"PROXY", None),
        (b"\r\n\r\nX", 5),
        (b"\r\n\r\n\x00\r\nQUIT", None),
        (b"\r\n\r\n\x00\r\nQUIT\r", 12),
        (b"\r\n", None),
        (b"\r\r", 2),
        (b"\x16\x03\x01\x02\x00", 1),  # a TLS ClientHello
    ],
)
def test_mismatch_is_decided_as_early_as_possible(data: bytes, examined: int | None) -> None:
    result, used = parse_proxy_header(data)
    if examined is None:
        assert (result, used) == (None, 0)
        return
    assert result is not None and used == examined
    assert result.version is None and result.error == "PROXY unrecognized signature"
    assert result.whole_raw == data[:examined]
    reader = fed(data)
    assert reader.result() == result and reader.leftover() == data[examined:]


def test_empty_input_needs_more() -> None:
    assert parse_proxy_header(b"") == (None, 0)
    reader = ProxyHeaderReader()
    reader.feed(b"")
    assert reader.result() is None and reader.leftover() == b""


# ---------------------------------------------------------------------------------------------
# Version 2


def test_v2_proxy_inet_stream() -> None:
    raw = v2(0x21, 0x11, inet4())
    data, used = parse_proxy_header(raw + b"EHLO x\r\n")
    assert data is not None and used == len(raw) == 28
    assert data.valid
    assert data.same_attribs(
        version=2,
        command=V2_CMD.PROXY,
        family=AF.INET,
        protocol=PROTO.STREAM,
        src_addr=IPv4Address("192.0.2.1"),
        dst_addr=IPv4Address("198.51.100.7"),
        src_port=52000,
        dst_port=25,
        rest=b"",
        whole_raw=raw,
        tlv=None,
        tlv_start=None,
    )


def test_v2_proxy_inet_dgram() -> None:
    data = parse(v2(0x21, 0x12, inet4(sp=53, dp=5353)))
    assert data.valid and data.protocol is PROTO.DGRAM and data.src_port == 53


def test_v2_proxy_inet6() -> None:
    data = parse(v2(0x21, 0x21, inet6()))
    assert data.valid and data.family is AF.INET6 and data.protocol is PROTO.STREAM
    assert data.src_addr == IPv6Address("2001:db8::1") and data.dst_port == 25
    assert parse(v2(0x21, 0x22, inet6())).protocol is PROTO.DGRAM


@pytest.mark.parametrize("fam", [0x31, 0x32])
def test_v2_proxy_unix_keeps_the_raw_path_fields(fam: int) -> None:
    data = parse(v2(0x21, fam, unix()))
    assert data.valid and data.family is AF.UNIX
    assert data.src_addr == b"/run/src.sock".ljust(108, b"\0")
    assert isinstance(data.dst_addr, bytes) and data.dst_addr.rstrip(b"\0") == b"/run/dst.sock"
    assert data.src_port is None and data.dst_port is None


def test_v2_proxy_unspec_has_no_addresses() -> None:
    data = parse(v2(0x21, 0x00, tlv(0x04, b"")))
    assert data.valid and data.family is AF.UNSPEC and data.protocol is PROTO.UNSPEC
    assert data.src_addr is None and data.tlv is not None and data.tlv.NOOP == b""


def test_v2_local() -> None:
    data = parse(v2(0x20, 0x00))
    assert data.valid and data.command is V2_CMD.LOCAL and data.family is AF.UNSPEC
    assert data.whole_raw == v2(0x20, 0x00) and len(data.whole_raw) == 16


def test_v2_local_with_addresses_still_decodes_them() -> None:
    data = parse(v2(0x20, 0x11, inet4()))
    assert data.valid and data.command is V2_CMD.LOCAL and data.src_port == 52000


@pytest.mark.parametrize("fam", [0x11, 0x21, 0x31, 0x10, 0x01])
def test_v2_local_ignores_a_short_or_odd_address_block(fam: int) -> None:
    """Spec 2.2: for LOCAL the receiver discards the protocol block, family included."""
    data = parse(v2(0x20, fam))
    assert data.valid and data.src_addr is None


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (v2(0x11, 0x11, inet4()), "PROXYv2 illegal version"),
        (v2(0x31, 0x11, inet4()), "PROXYv2 illegal version"),
        (v2(0x01, 0x11, inet4()), "PROXYv2 illegal version"),
        (v2(0x22, 0x11, inet4()), "PROXYv2 unsupported command"),
        (v2(0x2F, 0x11, inet4()), "PROXYv2 unsupported command"),
        (v2(0x21, 0x41, inet4()), "PROXYv2 unsupported family"),
        (v2(0x21, 0xF1, inet4()), "PROXYv2 unsupported family"),
        (v2(0x21, 0x13, inet4()), "PROXYv2 unsupported protocol"),
        (v2(0x21, 0x10, inet4()), "PROXYv2 unsupported family/protocol pair"),
        (v2(0x21, 0x01), "PROXYv2 unsupported family/protocol pair"),
        (v2(0x21, 0x30), "PROXYv2 unsupported family/protocol pair"),
    ],
)
def test_v2_bad_fixed_part_is_decided_after_16_octets(raw: bytes, error: str) -> None:
    result, used = parse_proxy_header(raw[:16])
    assert result is not None and used == 16
    assert result.version == 2 and result.error == error and not result.valid
    reader = fed(raw + b"EHLO x\r\n")
    assert reader.result() == result and reader.leftover() == raw[16:] + b"EHLO x\r\n"


@pytest.mark.parametrize(
    ("fam", "body"),
    [(0x11, b""), (0x11, inet4()[:11]), (0x21, inet4()), (0x31, unix()[:200])],
)
def test_v2_truncated_address(fam: int, body: bytes) -> None:
    data = parse(v2(0x21, fam, body))
    assert not data.valid and data.error == "PROXYv2 truncated address"


def test_v2_length_beyond_the_data_is_incomplete() -> None:
    raw = v2(0x21, 0x11, inet4())
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) == (None, 0)
    assert parse_proxy_header(v2(0x21, 0x11, inet4(), length=100)) == (None, 0)


def test_v2_largest_header() -> None:
    noop = tlv(0x04, b"\0" * (0xFFFF - 12 - 3))
    raw = v2(0x21, 0x11, inet4() + noop)
    assert len(raw) == MAX_V2 == ProxyHeaderReader.MAX_V2
    data, used = parse_proxy_header(raw + b"QUIT\r\n")
    assert data is not None and data.valid and used == MAX_V2
    started = time.perf_counter()
    reader = fed(raw + b"QUIT\r\n", step=7)  # many small reads stay linear
    assert time.perf_counter() - started < 5
    assert reader.result() == data and reader.leftover() == b"QUIT\r\n"


# ---------------------------------------------------------------------------------------------
# TLVs


def test_v2_tlvs_by_name_and_by_type() -> None:
    tlvs = (
        tlv(0x01, b"smtp")
        + tlv(0x02, b"mx.example")
        + tlv(0x04, b"\0\0")
        + tlv(0x05, b"id-1")
        + tlv(0x30, b"blue")
        + tlv(0xE0, b"custom")
    )
    raw = v2(0x21, 0x11, inet4() + tlvs)
    data = parse(raw)
    assert data.valid and data.rest == tlvs and data.tlv_start == 28
    assert raw[data.tlv_start :] == tlvs
    t = data.tlv
    assert t is not None
    assert dict(t) == {
        "ALPN": b"smtp",
        "AUTHORITY": b"mx.example",
        "NOOP": b"\0\0",
        "UNIQUE_ID": b"id-1",
        "NETNS": b"blue",
        "xE0": b"custom",
    }
    assert t.by_type == {
        1: b"smtp",
        2: b"mx.example",
        4: b"\0\0",
        5: b"id-1",
        0x30: b"blue",
        0xE0: b"custom",
    }
    assert t.ALPN == b"smtp" and t["AUTHORITY"] == b"mx.example"
    assert t.SSL is None and "SSL" not in t and len(t) == 6
    assert t.tlv_loc["ALPN"] == 0 and t.tlv_loc["AUTHORITY"] == 7
    assert t.same_attribs(ALPN=b"smtp", NETNS=b"blue")
    assert not t.same_attribs(ALPN=b"imap") and not t.same_attribs(SSL=True)
    with pytest.raises(KeyError):
        t.same_attribs(True, SSL=True)
    with pytest.raises(ValueError):
        t.same_attribs(True, ALPN=b"imap")
    assert ProxyTLV.name_to_num("AUTHORITY") == 2 and ProxyTLV.name_to_num("nope") is None
    assert hash(t) == hash(parse(raw).tlv) and t == parse(raw).tlv


def test_v2_ssl_tlv_and_its_sub_tlvs() -> None:
    subs = (
        tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    )
    ssl = tlv(0x20, b"\x07" + struct.pack("!I", 0) + subs)
    data = parse(v2(0x21, 0x21, inet6() + ssl))
    assert data.valid and data.tlv is not None
    assert data.tlv.same_attribs(
        SSL=True,
        SSL_CLIENT=7,
        SSL_VERIFY=0,
        SSL_VERSION=b"TLSv1.3",
        SSL_CN=b"client.example",
        SSL_CIPHER=b"TLS_AES_128_GCM_SHA256",
    )
    assert data.tlv.by_type == {0x20: b"\x07\0\0\0\0" + subs}
    assert data.tlv.tlv_loc["SSL_VERSION"] == 8


def test_v2_repeated_tlv_last_wins() -> None:
    data = parse(v2(0x21, 0x11, inet4() + tlv(0x01, b"a") + tlv(0x01, b"b")))
    assert data.valid and data.tlv is not None and data.tlv.ALPN == b"b"


@pytest.mark.parametrize(
    "tlvs",
    [
        tlv(0x01, b"smtp")[:-1],  # value cut short
        b"\x01\x00",  # header cut short
        b"\x01",
        tlv(0x01, b"ok") + b"\x02\x00\x05ab",
        tlv(0x20, b"\x01\0\0"),  # SSL shorter than its fixed 5 octets
        tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x09TLS"),  # SSL sub-TLV cut short
    ],
)
def test_v2_malformed_tlvs_make_the_header_invalid(tlvs: bytes) -> None:
    data = parse(v2(0x21, 0x11, inet4() + tlvs))
    assert not data.valid and data.error.startswith("PROXYv2 malformed TLV")


def test_crc32c_known_values() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"\0" * 32) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


@pytest.mark.parametrize(
    ("ver_cmd", "fam", "addrs"),
    [(0x21, 0x11, inet4()), (0x21, 0x21, inet6()), (0x21, 0x31, unix()), (0x20, 0x00, b"")],
)
def test_v2_crc32c_good(ver_cmd: int, fam: int, addrs: bytes) -> None:
    raw = with_crc(ver_cmd, fam, addrs, tlv(0x02, b"mx.example"))
    data = parse(raw)
    assert data.valid, data.error
    assert data.tlv is not None and len(data.tlv.CRC32C) == 4


def test_v2_crc32c_bad() -> None:
    data = parse(with_crc(0x21, 0x11, inet4(), tlv(0x02, b"mx.example"), corrupt=True))
    assert not data.valid and data.error == "PROXYv2 CRC32C mismatch"
    # Tampering with a covered octet (the source port) breaks a correct checksum too.
    raw = bytearray(with_crc(0x21, 0x11, inet4()))
    raw[25] ^= 1
    assert parse(bytes(raw)).error == "PROXYv2 CRC32C mismatch"


def test_v2_crc32c_wrong_size_or_repeated() -> None:
    assert parse(v2(0x21, 0x11, inet4() + tlv(0x03, b"\0\0\0"))).error == (
        "PROXYv2 CRC32C TLV is not 4 octets"
    )
    twice = v2(0x21, 0x11, inet4() + tlv(0x03, b"\0" * 4) + tlv(0x03, b"\0" * 4))
    assert parse(twice).error == "PROXYv2 more than one CRC32C TLV"


def test_v2_crc32c_inside_ssl_is_not_the_checksum() -> None:
    ssl = tlv(0x20, b"\x01\0\0\0\0" + tlv(0x03, b"zzzz"))
    assert parse(v2(0x21, 0x11, inet4() + ssl)).valid


# ---------------------------------------------------------------------------------------------
# The reader: splitting and leftovers

SAMPLES = [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 52000 25\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 025\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\n",
    b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",
    b"proxy TCP4 192.0.2.1 198.51.100.7 52000 25\r\n",
    v2(0x21, 0x11, inet4()),
    v2(0x21, 0x21, inet6() + tlv(0x01, b"smtp")),
    v2(0x21, 0x31, unix()),
    v2(0x20, 0x00),
    v2(0x22, 0x11, inet4()),
    v2(0x21, 0x11, inet4() + b"\x01\x00"),
    with_crc(0x21, 0x11, inet4(), tlv(0x05, b"abc")),
    with_crc(0x21, 0x11, inet4(), corrupt=True),
]


@pytest.mark.parametrize("raw", SAMPLES)
@pytest.mark.parametrize("step", [1, 2, 3, 5, 16, 1000])
def test_feeding_in_pieces_equals_one_shot(raw: bytes, step: int) -> None:
    stream = raw + b"EHLO x\r\nMAIL FROM:<a@example>\r\n"
    expected, used = parse_proxy_header(stream)
    assert expected is not None
    reader = fed(stream, step)
    assert reader.result() == expected
    assert reader.leftover() == stream[used:]


@pytest.mark.parametrize("raw", [s for s in SAMPLES if parse(s + b"\r\n").valid])
def test_leftover_is_the_first_smtp_bytes(raw: bytes) -> None:
    reader = ProxyHeaderReader()
    reader.feed(raw[:-1])
    assert reader.result() is None and reader.leftover() == b""
    reader.feed(raw[-1:] + b"EHLO x\r\n")
    result = reader.result()
    assert result is not None and result.valid and result.whole_raw == raw
    assert reader.leftover() == b"EHLO x\r\n"
    reader.feed(b"QUIT\r\n")  # later bytes only extend the leftover
    assert reader.result() is result and reader.leftover() == b"EHLO x\r\nQUIT\r\n"


def test_reader_accepts_bytearray_and_memoryview() -> None:
    reader = ProxyHeaderReader()
    reader.feed(bytearray(b"PROXY UNKNOWN"))
    reader.feed(memoryview(b"\r\nNOOP\r\n"))
    result = reader.result()
    assert result is not None and result.valid and reader.leftover() == b"NOOP\r\n"
    assert ProxyHeaderReader.MAX_V1 == MAX_V1 == 107


# ---------------------------------------------------------------------------------------------
# The value


def test_proxy_data_is_a_frozen_hashable_value() -> None:
    data = parse(v2(0x21, 0x11, inet4() + tlv(0x01, b"smtp")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.src_port = 1  # type: ignore[misc]  # the point of the test
    assert hash(data) == hash(parse(v2(0x21, 0x11, inet4() + tlv(0x01, b"smtp"))))
    assert not hasattr(data, "__dict__")
    assert not ProxyData().valid and ProxyData().version is None
    assert not ProxyData(version=1, protocol=PROTO.STREAM, error="x").valid
    assert ProxyData(version=1, protocol=PROTO.UNSPEC).valid


def test_same_attribs() -> None:
    data = parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r\n")
    assert data.same_attribs(version=1, src_port=52000)
    assert not data.same_attribs(version=2)
    assert not data.same_attribs(no_such_field=1)
    with pytest.raises(KeyError):
        data.same_attribs(True, no_such_field=1)
    with pytest.raises(ValueError):
        data.same_attribs(True, dst_port=26)


# ---------------------------------------------------------------------------------------------
# Properties


def _check_any(data: bytes) -> ProxyData | None:
    result, used = parse_proxy_header(data)
    if result is None:
        assert used == 0
    else:
        assert isinstance(result, ProxyData)
        assert 0 < used <= len(data) and result.whole_raw == data[:used]
        assert result.valid == (result.error == "")
    return result


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_parse_without_exception(data: bytes) -> None:
    _check_any(data)


_PREFIXES = st.sampled_from(
    [
        b"PROXY ",
        b"PROXY TCP4 ",
        b"PROXY TCP6 ",
        b"PROXY UNKNOWN",
        V2_SIGNATURE + b"\x21",
        V2_SIGNATURE,
    ]
)


@SETTINGS
@given(_PREFIXES, st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_any_bytes_after_a_signature_and_any_split(
    prefix: bytes, tail: bytes, cuts: list[int]
) -> None:
    data = prefix + tail
    expected = _check_any(data)
    reader = ProxyHeaderReader()
    pos = 0
    for size in [*cuts, len(data)]:
        reader.feed(data[pos : pos + size])
        pos += size
    assert reader.result() == expected
    if expected is not None:
        assert expected.whole_raw + reader.leftover() == data


_V2_BODIES = st.builds(
    lambda fam, addrs, tlvs: (fam, addrs + b"".join(tlv(t, v) for t, v in tlvs)),
    st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]),
    st.binary(min_size=0, max_size=240),
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=5),
)


@SETTINGS
@given(st.sampled_from([0x20, 0x21]), _V2_BODIES, st.binary(max_size=20))
def test_generated_v2_headers(ver_cmd: int, fam_body: tuple[int, bytes], after: bytes) -> None:
    fam, body = fam_body
    raw = v2(ver_cmd, fam, body)
    result, used = parse_proxy_header(raw + after)
    assert result is not None and used == len(raw) and result.whole_raw == raw
    assert result.command == ver_cmd & 0x0F


# ---------------------------------------------------------------------------------------------
# Agreement with aiosmtpd


def aiosmtpd_parse(raw: bytes) -> Any:
    proxy_protocol = pytest.importorskip("aiosmtpd.proxy_protocol")

    async def run() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await proxy_protocol.get_proxy(reader)

    return asyncio.run(run())


FIELDS = (
    "version",
    "command",
    "family",
    "protocol",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
)

VALID_FOR_BOTH = [
    b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r\n",
    b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
    b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 1 2\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 192.0.2.1 198.51.100.7 52000 25\r\n",
    v2(0x21, 0x11, inet4()),
    v2(0x21, 0x12, inet4(sp=0, dp=65535)),
    v2(0x21, 0x21, inet6()),
    v2(0x21, 0x31, unix()),
    v2(0x21, 0x32, unix(b"/a", b"/b")),
    v2(0x20, 0x00),
    v2(0x20, 0x11, inet4()),
    v2(0x21, 0x00, tlv(0x05, b"uid")),
    v2(0x21, 0x11, inet4() + tlv(0x01, b"smtp") + tlv(0x02, b"mx.example") + tlv(0xE0, b"?")),
    v2(
        0x21,
        0x21,
        inet6() + tlv(0x20, b"\x05\0\0\0\x01" + tlv(0x21, b"TLSv1.2") + tlv(0x22, b"cn")),
    ),
    with_crc(0x21, 0x11, inet4(), tlv(0x04, b"")),
]


@pytest.mark.parametrize("raw", VALID_FOR_BOTH)
def test_valid_headers_agree_with_aiosmtpd(raw: bytes) -> None:
    theirs = aiosmtpd_parse(raw)
    ours = parse(raw + b"EHLO x\r\n")
    assert theirs.valid and ours.valid, (theirs.error, ours.error)
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.rest == theirs.rest
    assert ours.whole_raw == raw
    if ours.version == 2:
        assert ours.whole_raw == theirs.whole_raw
        # aiosmtpd leaves tlv_start None when an UNSPEC header carries TLVs; ours says 16.
        assert ours.tlv_start == (theirs.tlv_start or (16 if ours.rest else None))
        assert (ours.tlv is None) == (theirs.tlv is None)
        if ours.tlv is not None:
            assert dict(ours.tlv) == dict(theirs.tlv)


@pytest.mark.parametrize(("line", "error"), V1_MALFORMED)
def test_malformed_v1_is_rejected_by_aiosmtpd_too(line: bytes, error: str) -> None:
    """Every malformed line above is one aiosmtpd rejects as well (some with other messages)."""
    assert not aiosmtpd_parse(line + b"EHLO x\r\n").valid


@SETTINGS
@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.booleans(),
)
def test_generated_inet4_headers_agree_with_aiosmtpd(
    src: IPv4Address, dst: IPv4Address, sp: int, dp: int, text: bool
) -> None:
    if text:
        raw = f"PROXY TCP4 {src} {dst} {sp} {dp}\r\n".encode()
    else:
        raw = v2(0x21, 0x11, inet4(str(src), str(dst), sp, dp))
    ours, theirs = parse(raw), aiosmtpd_parse(raw)
    assert ours.valid and theirs.valid
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


@SETTINGS
@given(st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 65535))
def test_generated_inet6_headers_agree_with_aiosmtpd(
    src: IPv6Address, dst: IPv6Address, sp: int, dp: int
) -> None:
    for raw in (
        f"PROXY TCP6 {src} {dst} {sp} {dp}\r\n".encode(),
        v2(0x21, 0x21, inet6(str(src), str(dst), sp, dp)),
    ):
        ours, theirs = parse(raw), aiosmtpd_parse(raw)
        assert ours.valid and theirs.valid
        for name in FIELDS:
            assert getattr(ours, name) == getattr(theirs, name), name
