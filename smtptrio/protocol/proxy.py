r"""The HAProxy PROXY protocol header, versions 1 and 2: bytes in, :class:`ProxyData` out.

A load balancer that terminates the client's TCP connection says who the client really was in a
header sent before anything else on the connection to us (haproxy's ``proxy-protocol.txt``).
This module only parses; the server decides when the header is required and what a bad one
means (the connection is closed without a reply). Nothing here raises for bad input: a header
that breaks the spec gives a :class:`ProxyData` whose ``valid`` is False and whose ``error``
says why, with the same messages aiosmtpd uses where it has one, so logs read the same.

Version 1 is one text line:

>>> data, used = parse_proxy_header(b"PROXY TCP4 192.0.2.1 198.51.100.7 52000 25\r\nEHLO x\r\n")
>>> data.valid, data.version, data.src_addr, data.src_port, data.dst_port, used
(True, 1, IPv4Address('192.0.2.1'), 52000, 25, 44)

Version 2 is binary, with optional TLVs after the addresses (here, ``AUTHORITY``):

>>> import struct
>>> tlv = b"\x02" + struct.pack("!H", 11) + b"example.com"
>>> body = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 52000, 25) + tlv
>>> raw = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
>>> data, used = parse_proxy_header(raw)
>>> data.command, data.family, data.protocol, data.dst_addr, used == len(raw)
(<V2_CMD.PROXY: 1>, <AF.INET: 1>, <PROTO.STREAM: 1>, IPv4Address('198.51.100.7'), True)
>>> data.tlv.AUTHORITY, data.tlv.by_type
(b'example.com', {2: b'example.com'})

The reader takes the bytes as they arrive and keeps what follows the header for the SMTP layer:

>>> reader = ProxyHeaderReader()
>>> reader.feed(b"PROXY UNKNOWN\r")
>>> reader.result() is None   # not complete yet: feed more
True
>>> reader.feed(b"\nEHLO x\r\n")
>>> reader.result().family, reader.leftover()
(<AF.UNSPEC: 0>, b'EHLO x\r\n')
>>> parse_proxy_header(b"EHLO x\r\n")[0].error
'PROXY unrecognized signature'
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, ClassVar, Final, final

__all__ = [
    "AF",
    "MAX_V1",
    "MAX_V2",
    "PROTO",
    "V1_SIGNATURE",
    "V2_CMD",
    "V2_SIGNATURE",
    "EndpointAddress",
    "ProxyData",
    "ProxyHeaderReader",
    "ProxyTLV",
    "crc32c",
    "parse_proxy_header",
]

#: What every version 1 header starts with (the space included: "PROXY" alone is no header).
V1_SIGNATURE: Final = b"PROXY "
#: The 12 octets every version 2 header starts with; chosen by the spec so no text protocol
#: (SMTP included) can begin this way.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest version 1 line, CRLF included (spec section 2.1).
MAX_V1: Final = 107
#: Longest version 2 header: the 16-octet fixed part plus a 16-bit length.
MAX_V2: Final = 16 + 0xFFFF


class V2_CMD(IntEnum):  # aiosmtpd's name, kept so handlers port unchanged
    """The version 2 command nibble."""

    #: The proxy's own connection (health check): use the real endpoints, ignore the addresses.
    LOCAL = 0
    #: Relayed on behalf of a client: the addresses are the client's.
    PROXY = 1


class AF(IntEnum):
    """Address family. Version 1 ``UNKNOWN`` is reported as ``UNSPEC``, as aiosmtpd does."""

    #: Unknown or unsupported family (v1 ``UNKNOWN``); there are no addresses.
    UNSPEC = 0
    #: IPv4 (v1 ``TCP4``).
    INET = 1
    #: IPv6 (v1 ``TCP6``).
    INET6 = 2
    #: A Unix socket path; version 2 only.
    UNIX = 3


class PROTO(IntEnum):
    """Transport protocol. Version 1 ``UNKNOWN`` is reported as ``UNSPEC``."""

    #: Unknown or unsupported (v1 ``UNKNOWN``).
    UNSPEC = 0
    #: A stream: TCP, or a ``SOCK_STREAM`` Unix socket.
    STREAM = 1
    #: Datagrams: UDP, or a ``SOCK_DGRAM`` Unix socket; version 2 only.
    DGRAM = 2


#: A parsed endpoint: an IP address, or for ``AF.UNIX`` the raw 108-octet path field exactly as
#: received (NUL padding included, as aiosmtpd gives it).
EndpointAddress = IPv4Address | IPv6Address | bytes

_NOT_FOUND: Final = object()


# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), for the PP2_TYPE_CRC32C TLV. zlib's crc32 uses another polynomial and
# the core takes nothing outside the stdlib, so it is a byte-wise table: a header is small.


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of *data* (RFC 3720 appendix B.4), continuing from *crc* when given.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    table = _CRC32C_TABLE
    c = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# TLVs


class _MalformedTLV(ValueError):
    """Internal: a TLV runs past the end of its block. Never escapes this module."""


@final
class ProxyTLV(Mapping[str, Any]):
    """The version 2 TLVs, decoded, read-only: a mapping from type name to value.

    Names and value shapes are aiosmtpd's, so ``tlv.ALPN``, ``tlv["AUTHORITY"]`` and
    ``tlv.same_attribs(...)`` port unchanged: known types by name (``ALPN``, ``AUTHORITY``,
    ``CRC32C``, ``NOOP``, ``UNIQUE_ID``, ``NETNS``, ...), others as ``"x%02X"``; the ``SSL`` TLV
    becomes ``SSL`` (True), ``SSL_CLIENT`` and ``SSL_VERIFY`` (ints) plus its sub-TLVs
    (``SSL_VERSION``, ``SSL_CN``, ...). An absent name read as an attribute is None.
    :attr:`by_type` keeps the top-level TLVs by number, undecoded, for anything else.
    When a type repeats, the last one wins (as in aiosmtpd).
    """

    __slots__ = ("_items", "by_type", "tlv_loc")

    #: Type numbers with names (spec section 2.2.x).
    PP2_TYPENAME: ClassVar[Mapping[int, str]] = {
        0x01: "ALPN",
        0x02: "AUTHORITY",
        0x03: "CRC32C",
        0x04: "NOOP",
        0x05: "UNIQUE_ID",
        0x20: "SSL",
        0x21: "SSL_VERSION",
        0x22: "SSL_CN",
        0x23: "SSL_CIPHER",
        0x24: "SSL_SIG_ALG",
        0x25: "SSL_KEY_ALG",
        0x30: "NETNS",
    }

    _items: dict[str, Any]
    #: Top-level TLVs by type number, values as received.
    by_type: Mapping[int, bytes]
    #: Where each named TLV starts, as an offset into ``ProxyData.rest``.
    tlv_loc: Mapping[str, int]

    def __init__(
        self, items: Mapping[str, Any], *, by_type: Mapping[int, bytes], tlv_loc: Mapping[str, int]
    ) -> None:
        self._items = dict(items)
        self.by_type = dict(by_type)
        self.tlv_loc = dict(tlv_loc)

    @classmethod
    def from_raw(cls, raw: bytes) -> ProxyTLV:
        """Decode a TLV block; raises ``ValueError`` when a TLV is truncated or malformed."""
        items: dict[str, Any] = {}
        by_type: dict[int, bytes] = {}
        loc: dict[str, int] = {}
        for typ, offset, value in cls._split(raw, 0):
            name = cls._name(typ)
            by_type[typ] = value
            loc[name] = offset
            if typ == 0x20:
                # PP2_TYPE_SSL: client flags (1 octet), verify result (4), then sub-TLVs.
                if len(value) < 5:
                    raise _MalformedTLV("SSL TLV shorter than 5 octets")
                items["SSL_CLIENT"] = value[0]
                items["SSL_VERIFY"] = int.from_bytes(value[1:5], "big")
                for sub, sub_offset, sub_value in cls._split(value[5:], offset + 3 + 5):
                    sub_name = cls._name(sub)
                    items[sub_name] = sub_value
                    loc[sub_name] = sub_offset
                items["SSL"] = True
            else:
                items[name] = value
        return cls(items, by_type=by_type, tlv_loc=loc)

    @staticmethod
    def _split(raw: bytes, base: int) -> Iterator[tuple[int, int, bytes]]:
        i = 0
        while i < len(raw):
            if len(raw) - i < 3:
                raise _MalformedTLV(f"TLV header truncated at offset {base + i}")
            typ = raw[i]
            length = int.from_bytes(raw[i + 1 : i + 3], "big")
            end = i + 3 + length
            if end > len(raw):
                raise _MalformedTLV(f"TLV 0x{typ:02X} is malformed!")
            yield typ, base + i, raw[i + 3 : end]
            i = end

    @classmethod
    def _name(cls, typ: int) -> str:
        return cls.PP2_TYPENAME.get(typ) or f"x{typ:02X}"

    @classmethod
    def name_to_num(cls, name: str) -> int | None:
        """The type number for a name (``"ALPN"`` -> 1), or None if it has none."""
        for num, known in cls.PP2_TYPENAME.items():
            if known == name:
                return num
        return None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails. Dunder and private names must still fail, or
        # copy/pickle would take None for a protocol method.
        if name.startswith("_"):
            raise AttributeError(name)
        return self._items.get(name)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"ProxyTLV({self._items!r})"

    def same_attribs(self, _raises: bool = False, **kwargs: Any) -> bool:
        """True if every keyword names a TLV holding that value (aiosmtpd's test helper)."""
        return _same(self._items.get, _raises, kwargs)


def _same(get: Any, raises: bool, expected: Mapping[str, Any]) -> bool:
    for key, want in expected.items():
        actual = get(key, _NOT_FOUND)
        if actual is _NOT_FOUND:
            if raises:
                raise KeyError(f"notfound:{key}")
            return False
        if actual != want:
            if raises:
                raise ValueError(f"mismatch:{key} actual={actual!r} expect={want!r}")
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyData:
    """One PROXY header, parsed; aiosmtpd's ``ProxyData`` fields, frozen.

    aiosmtpd builds its instance by mutating it while it parses; nothing documented has users
    set fields, so this one is a value like every other event in the core. Fields a header did
    not get as far as (or that its kind does not have) are None.
    """

    #: 1 or 2; None when neither signature matched.
    version: int | None = None
    #: The version 2 command; None for version 1 (it has none).
    command: V2_CMD | None = None
    family: AF | None = None
    protocol: PROTO | None = None
    src_addr: EndpointAddress | None = None
    dst_addr: EndpointAddress | None = None
    #: None for Unix sockets and ``UNKNOWN``/``UNSPEC``.
    src_port: int | None = None
    dst_port: int | None = None
    #: v1 ``UNKNOWN``: what followed the word, leading space included (aiosmtpd's shape);
    #: v2: the octets after the addresses, i.e. the TLV block (the whole tail when no
    #: addresses were decoded).
    rest: bytes = b""
    #: The header exactly as received (the octets examined, for an invalid one).
    whole_raw: bytes = b""
    #: Offset of the first TLV within ``whole_raw``; None when there are none.
    tlv_start: int | None = None
    #: Decoded TLVs (version 2 only); None when there are none.
    tlv: ProxyTLV | None = None
    #: Why the header is invalid; "" when it is not.
    error: str = ""

    @property
    def valid(self) -> bool:
        """The header was recognised and fully parsed (aiosmtpd's definition)."""
        return not (self.error or self.version is None or self.protocol is None)

    def __bool__(self) -> bool:
        return self.valid

    def same_attribs(self, _raises: bool = False, **kwargs: Any) -> bool:
        """True if every keyword names a field holding that value (aiosmtpd's test helper)."""
        return _same(lambda key, default: getattr(self, key, default), _raises, kwargs)


# ---------------------------------------------------------------------------------------------
# Version 1

_V1_ADDR_CHARS: Final = re.compile(rb"[0-9A-Fa-f.:]+")  # no scope ids ("%eth0"), no spaces
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no leading zeros


def _v1(data: bytes) -> tuple[ProxyData | None, int]:
    end = data.find(b"\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            return _bad(1, "PROXYv1 header too long", data[:MAX_V1]), MAX_V1
        return None, len(data) + 1
    used = end + 1
    raw = data[:used]
    if end == 0 or data[end - 1] != 0x0D:
        return _bad(1, "PROXYv1 malformed", raw), used
    # Split on single spaces, so two in a row leave an empty field and fail below.
    parts = raw[len(V1_SIGNATURE) : -2].split(b" ")
    word = parts[0]
    if word == b"UNKNOWN":
        # The spec says everything after UNKNOWN up to the CRLF is to be ignored.
        rest = b" " + b" ".join(parts[1:]) if len(parts) > 1 else b""
        return ProxyData(
            version=1, family=AF.UNSPEC, protocol=PROTO.UNSPEC, rest=rest, whole_raw=raw
        ), used
    if word == b"TCP4":
        family, want = AF.INET, 4
    elif word == b"TCP6":
        family, want = AF.INET6, 6
    else:
        return _bad(1, "PROXYv1 unrecognized protocol", raw), used
    if len(parts) != 5:
        return _bad(1, "PROXYv1 wrong number of fields", raw, family), used
    addrs = []
    for field in parts[1:3]:
        if not _V1_ADDR_CHARS.fullmatch(field):
            return _bad(1, "PROXYv1 address malformed", raw, family), used
        try:
            addrs.append(ip_address(field.decode("ascii")))
        except ValueError:
            return _bad(1, "PROXYv1 address malformed", raw, family), used
    if addrs[0].version != want or addrs[1].version != want:
        return _bad(1, f"PROXYv1 address not IPv{want}", raw, family), used
    ports = []
    for field in parts[3:5]:
        if not _V1_PORT.fullmatch(field):
            return _bad(1, "PROXYv1 port malformed", raw, family), used
        ports.append(int(field))
    if ports[0] > 0xFFFF:
        return _bad(1, "PROXYv1 src port out of bounds", raw, family), used
    if ports[1] > 0xFFFF:
        return _bad(1, "PROXYv1 dst port out of bounds", raw, family), used
    return ProxyData(
        version=1,
        family=family,
        protocol=PROTO.STREAM,
        src_addr=addrs[0],
        dst_addr=addrs[1],
        src_port=ports[0],
        dst_port=ports[1],
        whole_raw=raw,
    ), used


# ---------------------------------------------------------------------------------------------
# Version 2

# The family/protocol octets the spec defines (section 2.2); anything else "must be rejected
# as invalid" in a PROXY command. Value: the address block's struct format.
_V2_ADDRESSES: Final[Mapping[int, str]] = {
    0x11: "!4s4sHH",
    0x12: "!4s4sHH",
    0x21: "!16s16sHH",
    0x22: "!16s16sHH",
    0x31: "!108s108s",
    0x32: "!108s108s",
}


def _v2(data: bytes) -> tuple[ProxyData | None, int]:
    if len(data) < 16:
        return None, 16
    ver_cmd, fam_proto, length = struct.unpack_from("!BBH", data, 12)
    head = data[:16]
    if ver_cmd & 0xF0 != 0x20:
        return _bad(2, "PROXYv2 illegal version", head), 16
    if ver_cmd & 0x0F not in (0, 1):
        return _bad(2, "PROXYv2 unsupported command", head), 16
    command = V2_CMD(ver_cmd & 0x0F)
    if fam_proto >> 4 > 3:
        return _bad(2, "PROXYv2 unsupported family", head, command=command), 16
    if fam_proto & 0x0F > 2:
        return _bad(2, "PROXYv2 unsupported protocol", head, command=command), 16
    family, protocol = AF(fam_proto >> 4), PROTO(fam_proto & 0x0F)
    if command is V2_CMD.PROXY and fam_proto != 0x00 and fam_proto not in _V2_ADDRESSES:
        return _bad(2, "PROXYv2 unsupported family/protocol pair", head, family, command), 16
    used = 16 + length
    if len(data) < used:
        return None, used
    raw = data[:used]
    tail = raw[16:]

    fields: dict[str, Any] = {}
    fmt = _V2_ADDRESSES.get(fam_proto)
    addr_len = struct.calcsize(fmt) if fmt else 0
    if fmt and len(tail) >= addr_len:
        src, dst, *ports = struct.unpack_from(fmt, tail)
        if family is AF.UNIX:
            fields.update(src_addr=src, dst_addr=dst)
        else:
            cls = IPv4Address if family is AF.INET else IPv6Address
            fields.update(
                src_addr=cls(src), dst_addr=cls(dst), src_port=ports[0], dst_port=ports[1]
            )
    elif fmt and command is V2_CMD.PROXY:
        return _bad(2, "PROXYv2 truncated address", raw, family, command), used
    else:
        # UNSPEC, or LOCAL whose address block is short: the spec says a LOCAL receiver ignores
        # the block, so it is no error; with no addresses the whole tail is TLVs.
        addr_len = 0
    rest = tail[addr_len:]

    tlv = None
    if rest:
        try:
            tlv = ProxyTLV.from_raw(rest)
        except _MalformedTLV as exc:
            return _bad(2, f"PROXYv2 malformed TLV: {exc}", raw, family, command), used
        problem = _check_crc(raw, 16 + addr_len, tlv)
        if problem:
            return _bad(2, problem, raw, family, command), used
    return ProxyData(
        version=2,
        command=command,
        family=family,
        protocol=protocol,
        rest=rest,
        whole_raw=raw,
        tlv_start=16 + addr_len if rest else None,
        tlv=tlv,
        **fields,
    ), used


def _check_crc(raw: bytes, tlv_start: int, tlv: ProxyTLV) -> str:
    """Spec 2.2.3: CRC-32C over the whole header with the checksum's own field zeroed."""
    if 0x03 not in tlv.by_type:  # top level only: an SSL sub-TLV 0x03 is not the checksum
        return ""
    starts = [off for typ, off, _ in ProxyTLV._split(raw[tlv_start:], 0) if typ == 0x03]
    if len(starts) > 1:
        return "PROXYv2 more than one CRC32C TLV"
    value = tlv.by_type[0x03]
    if len(value) != 4:
        return "PROXYv2 CRC32C TLV is not 4 octets"
    at = tlv_start + starts[0] + 3
    zeroed = raw[:at] + b"\0\0\0\0" + raw[at + 4 :]
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        return "PROXYv2 CRC32C mismatch"
    return ""


def _bad(
    version: int | None,
    error: str,
    raw: bytes,
    family: AF | None = None,
    command: V2_CMD | None = None,
) -> ProxyData:
    return ProxyData(version=version, command=command, family=family, whole_raw=raw, error=error)


# ---------------------------------------------------------------------------------------------
# Entry points


def parse_proxy_header(data: bytes | bytearray | memoryview) -> tuple[ProxyData | None, int]:
    """Parse the PROXY header at the start of *data*.

    Returns ``(None, 0)`` while more bytes are needed, else the result and how many octets of
    *data* it took: the header's length, or for an invalid one the octets examined before
    deciding (the stream cannot be resynchronised after that; the server closes it). A
    mismatch is decided as early as the bytes allow, not only after 6 or 12 of them.
    """
    result, used = _parse(bytes(data))
    return (result, used) if result is not None else (None, 0)


def _parse(data: bytes) -> tuple[ProxyData | None, int]:
    """Like :func:`parse_proxy_header`, but while incomplete the number is how many octets
    are needed before trying again is worth it, so the reader does not re-parse a 64 KiB
    version 2 header on every small read."""
    n = min(len(data), len(V1_SIGNATURE))
    if data[:n] == V1_SIGNATURE[:n]:
        return (None, n + 1) if n < len(V1_SIGNATURE) else _v1(data)
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] == V2_SIGNATURE[:n]:
        return (None, n + 1) if n < len(V2_SIGNATURE) else _v2(data)
    # The first octet that rules out both signatures decides; nothing after it is examined.
    seen = 1
    while data[:seen] in (V1_SIGNATURE[:seen], V2_SIGNATURE[:seen]):
        seen += 1
    return _bad(None, "PROXY unrecognized signature", data[:seen]), seen


@final
class ProxyHeaderReader:
    """Incremental: :meth:`feed` bytes as they arrive until :meth:`result` is not None.

    Bytes fed after the header (the client's first SMTP command, or a TLS ClientHello) are kept
    and handed back by :meth:`leftover`, so nothing read past the header is lost.
    """

    __slots__ = ("_buf", "_need", "_result", "_used")

    MAX_V1: ClassVar[int] = MAX_V1
    MAX_V2: ClassVar[int] = MAX_V2

    def __init__(self) -> None:
        self._buf = bytearray()
        self._result: ProxyData | None = None
        self._used = 0
        # Octets to have before parsing again; a parse only ever looks at the buffer's start.
        self._need = 1

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; after the result is known they only extend :meth:`leftover`."""
        self._buf += data
        if self._result is None and len(self._buf) >= self._need:
            result, used = _parse(bytes(self._buf))
            if result is None:
                self._need = used
            else:
                self._result, self._used = result, used

    def result(self) -> ProxyData | None:
        """The parsed header, valid or not, or None while more bytes are needed."""
        return self._result

    def leftover(self) -> bytes:
        """The bytes fed after the header (all of them while the header is incomplete: b"")."""
        if self._result is None:
            return b""
        return bytes(self._buf[self._used :])
