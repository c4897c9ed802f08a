r"""Receive buffers: command lines ended by CRLF only, and message bodies ended by CRLF.CRLF.

Both search with ``bytes.find`` over whole chunks and remember how far they already looked, so a
byte is searched about once however the client splits its writes; neither runs a Python loop
per byte or per line, nor keeps a message as a list of lines. Only CRLF ends a line and only
CRLF "." CRLF ends a body (RFC 5321 section 2.3.8): a bare LF or CR never terminates anything,
which closes SMTP smuggling.

>>> buf = LineBuffer()
>>> buf.feed(b"NOOP\r\nQU")
>>> buf.take_line(512), buf.take_line(512)
(b'NOOP', None)
>>> buf.feed(b"IT\r\n"); buf.take_line(512)
b'QUIT'
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final, final

__all__ = ["TOO_LONG", "BodyOutcome", "BodyReader", "LineBuffer"]


@final
class _TooLong:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


#: Returned by :meth:`LineBuffer.take_line` once an over-long line has been discarded up to
#: and including its CRLF.
TOO_LONG: Final = _TooLong()


@final
class LineBuffer:
    """Bytes received and not yet consumed, handed out one CRLF-terminated line at a time."""

    __slots__ = ("_data", "_discarding", "_scanned", "dropped_head")

    def __init__(self) -> None:
        self._data = bytearray()
        # Bytes before this offset hold no CRLF (so they are never searched again).
        self._scanned = 0
        # True while dropping the rest of a line that already went over the limit.
        self._discarding = False
        #: The first octets of the last over-long line (so its verb can pick the reply).
        self.dropped_head = b""

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> None:
        self._data += data

    def take_line(self, limit: int) -> bytes | _TooLong | None:
        """Remove and return the next line without its CRLF.

        A line longer than ``limit`` octets is never held in memory: what has arrived of it is
        dropped as it comes, and once its CRLF arrives :data:`TOO_LONG` is returned in its place.
        Returns None when no complete line is buffered yet.
        """
        data = self._data
        start = self._scanned - 1 if self._scanned else 0
        end = data.find(b"\r\n", start)
        if end < 0:
            if self._discarding or len(data) > limit + 1:
                if not self._discarding:
                    self.dropped_head = bytes(data[:16])
                # Keep a trailing CR: it may be the first half of the CRLF we wait for.
                keep = 1 if data.endswith(b"\r") else 0
                del data[: len(data) - keep]
                self._discarding = True
            self._scanned = len(data)
            return None
        self._scanned = 0
        if self._discarding or end > limit:
            if not self._discarding:
                self.dropped_head = bytes(data[:16])
            del data[: end + 2]
            self._discarding = False
            return TOO_LONG
        line = bytes(data[:end])
        del data[: end + 2]
        return line

    def take_all(self) -> bytes:
        """Remove and return everything buffered (used when the body reader takes over)."""
        out = bytes(self._data)
        self._data.clear()
        self._scanned = 0
        self._discarding = False
        return out

    def clear(self) -> int:
        """Drop everything buffered; returns how many octets were dropped."""
        n = len(self._data)
        self._data.clear()
        self._scanned = 0
        self._discarding = False
        return n


class BodyOutcome(Enum):
    """How a message body ended.

    When a message breaks several limits the first member listed here wins, whatever the order
    of the offending bytes, so the reply never depends on how the client's writes were split.
    """

    #: Within every limit: the content is delivered.
    OK = "ok"
    #: Over ``data_size_limit`` (RFC 1870): 552 after the terminator.
    TOO_BIG = "too-big"
    #: A text line over ``line_length_limit`` (RFC 5321 section 4.5.3.1.6): 500.
    LINE_TOO_LONG = "line-too-long"
    #: A bare CR or LF while ``bare_newline="reject"``: 550.
    BARE_NEWLINE = "bare-newline"


_TERMINATOR: Final = b"\r\n.\r\n"
# The proper prefixes of the terminator, longest first: a body ending in one of them may be
# about to end, so those octets are only judged once the next ones arrive.
_TERMINATOR_PREFIXES: Final = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_BARE: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# Where a line starts with a period: stuffing (RFC 5321 section 4.5.2), or the terminator. The
# regex engine scans for the CR with memchr, which is about twice as fast as bytes.find with
# a three-octet needle, and most chunks hold none at all.
_LINE_DOT: Final = re.compile(rb"\r\n\.")
# Parts smaller than this are gathered into one bytearray, so a client that sends a byte at a
# time costs a few octets per octet kept, not a Python object per octet.
_SMALL_PART: Final = 16384
_ANY_NEWLINE: Final = re.compile(rb"\r\n|\r|\n")


@final
class BodyReader:
    r"""Collects one message body until CRLF.CRLF, enforcing the size and line limits.

    The body is read as a virtual CRLF followed by what the client sends, so the terminator
    of an empty message (``".\r\n"`` right after DATA) and a dot on the first line need no
    special case. Each chunk is judged once, in bulk, as soon as its octets are known to be
    message text: a tail that could be the start of the terminator (or of a CRLF) waits for the
    next chunk. One regex search per chunk finds any line that starts with a period; a chunk
    without one is kept as it is (no copy), a chunk with one is unstuffed with a single
    ``bytes.replace``. The kept chunks are joined once, when the message ends. Once a limit is
    crossed the chunks are dropped as they arrive, and the outcome is reported after the
    terminator, as RFC 5321 section 4.2.5 implies.

    Dot-unstuffing follows RFC 5321 section 4.5.2: a line that starts with a period loses that
    period (the line holding only a period is the terminator). Only CRLF starts a line.

    >>> r = BodyReader(size_limit=None, line_limit=1001, bare_newline="keep")
    >>> r.feed(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    b'QUIT\r\n'
    >>> r.result()
    (<BodyOutcome.OK: 'ok'>, b'Subject: x\r\n\r\n.dot\r\n')
    """

    __slots__ = (
        "_bare",
        "_bare_newline",
        "_chunks",
        "_done",
        "_first",
        "_held",
        "_keep",
        "_line",
        "_line_limit",
        "_size",
        "_size_limit",
        "_small",
        "_too_big",
        "_too_long",
    )

    def __init__(
        self, *, size_limit: int | None, line_limit: int | None, bare_newline: str
    ) -> None:
        self._size_limit = size_limit
        self._line_limit = line_limit
        self._bare_newline = bare_newline
        self._done = False
        # The content is kept until a limit is crossed.
        self._keep = True
        self._too_big = self._too_long = self._bare = False
        # Unstuffed content: whole chunks, and small parts gathered in one bytearray.
        self._chunks: list[bytes] = []
        self._small = bytearray()
        # Received but not judged yet: a tail that may begin the terminator. It starts as the
        # virtual CRLF, which the first judged part still carries (and drops).
        self._held = b"\r\n"
        self._first = True
        # Unstuffed octets judged so far (the virtual CRLF not counted), and the octets of the
        # current, unfinished text line.
        self._size = 0
        self._line = 0

    @property
    def rejected(self) -> bool:
        """A limit was crossed: the message will be refused and its octets are being dropped."""
        return not self._keep

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; once the terminator is seen, return what followed it (else b"")."""
        if self._done or not data:
            return data
        if type(data) is not bytes:
            data = bytes(data)  # chunks are kept by reference: never a caller's mutable buffer
        held = self._held
        if held:
            data = held + data
            self._held = b""
        size = len(data)
        # A chunk without any period (base64 attachments, most of a large message) can hold
        # neither stuffing nor the terminator: memchr says so ten times faster than the
        # regex. With a period somewhere the regex finds the lines that start with one.
        found = _LINE_DOT.search(data) if b"." in data else None
        if found is None:
            # No line starts with a period: no stuffing, and no terminator unless it is still
            # arriving, in which case the chunk ends in CR or CRLF.
            last = data[-1]
            if last == 0x0D:
                stop = size - 1
            elif last == 0x0A and data[-2:] == b"\r\n":
                stop = size - 2
            else:
                stop = size
            self._judge(data, stop, stuffed=False)
            if stop < size:
                self._held = data[stop:]
            return b""
        end = data.find(_TERMINATOR, found.start())
        if end >= 0:
            self._judge(data, end + 2, stuffed=True)  # the CRLF before "." ends the last line
            self._done = True
            return data[end + 5 :]
        stop = size
        for prefix in _TERMINATOR_PREFIXES:
            if data.endswith(prefix):
                stop -= len(prefix)
                break
        self._judge(data, stop, stuffed=found.start() < stop)
        if stop < size:
            self._held = data[stop:]
        return b""

    def _judge(self, data: bytes, stop: int, *, stuffed: bool) -> None:
        """Apply the limits to ``data[:stop]``, octets known to be message text, and keep them.

        ``stop`` never falls inside a CRLF: a stretch that ends in CR waits (held). The first
        stretch starts with the virtual CRLF; ``stop`` is then 0 or at least 2.
        """
        if stop <= 0 or self._too_big:
            return  # over the size limit: nothing else can change the outcome
        first = self._first
        self._first = False
        line_limit = self._line_limit
        if line_limit is not None and not self._too_long:
            self._check_lines(data, stop, line_limit)
        if (
            self._bare_newline == "reject"
            and not (self._too_long or self._bare)
            and _BARE.search(data, 0, stop) is not None
        ):
            self._bare = True
            self._keep = False
        part = data if stop == len(data) else data[:stop]
        if stuffed:
            part = part.replace(b"\r\n.", b"\r\n")
        if first:
            part = part[2:]
        self._size += len(part)
        limit = self._size_limit
        if limit and self._size > limit:
            # RFC 1870 counts the message as delivered: stuffing dots are not counted.
            self._too_big = True
            self._keep = False
        if not self._keep:
            self._chunks.clear()
            self._small.clear()
            return
        if len(part) < _SMALL_PART and (self._chunks or self._small):
            small = self._small
            small += part
            if len(small) >= _SMALL_PART:
                self._chunks.append(bytes(small))
                small.clear()
            return
        if self._small:  # what came before, in order
            self._chunks.append(bytes(self._small))
            self._small.clear()
        self._chunks.append(part)  # a large part, or the first one (often the whole message)

    def _check_lines(self, data: bytes, stop: int, limit: int) -> None:
        """Flag a text line longer than ``limit`` octets (CRLF included) in ``data[:stop]``.

        Text lines end at CRLF only (RFC 5321 section 2.3.8). Rather than visiting every line,
        look ``limit`` octets ahead of the current line's start for the *last* CRLF there:
        every line before it is short enough, and the next line starts after it. Each step
        moves about ``limit`` octets with one C-level ``rfind``, so a 10 MB body takes about
        ten thousand steps, however short its lines are.
        """
        line_start = -self._line  # where the unfinished line began, before data[0]
        reach = limit - 2  # a CRLF must begin at most this far after the line's start
        for _ in range(stop + 1):  # each turn moves line_start forward or stops
            window_end = line_start + reach + 2
            if window_end > stop:
                break
            end = data.rfind(b"\r\n", line_start if line_start > 0 else 0, window_end)
            if end < 0:
                self._flag_too_long()
                return
            line_start = end + 2
        end = data.rfind(b"\r\n", line_start if line_start > 0 else 0, stop)
        if end >= 0:
            line_start = end + 2
        self._line = stop - line_start
        if self._line > reach:
            self._flag_too_long()

    def _flag_too_long(self) -> None:
        self._too_long = True
        self._keep = False

    def result(self) -> tuple[BodyOutcome, bytes]:
        """The outcome and, when OK, the content: dot-unstuffed, CRLF kept, terminator removed."""
        if not self._done:
            raise RuntimeError("the body has not ended yet")
        chunks = self._chunks
        small = self._small
        self._chunks = []
        self._small = bytearray()
        if self._too_big:
            return BodyOutcome.TOO_BIG, b""
        if self._too_long:
            return BodyOutcome.LINE_TOO_LONG, b""
        if self._bare:
            return BodyOutcome.BARE_NEWLINE, b""
        if small:
            chunks.append(bytes(small))
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._bare_newline == "normalize" and _BARE.search(content):
            return BodyOutcome.OK, _ANY_NEWLINE.sub(b"\r\n", content)
        return BodyOutcome.OK, content
