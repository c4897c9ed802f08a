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
_ANY_NEWLINE: Final = re.compile(rb"\r\n|\r|\n")


@final
class BodyReader:
    r"""Collects one message body until CRLF.CRLF, enforcing the size and line limits.

    The body is kept as one ``bytearray`` with a virtual CRLF in front, so the terminator of an
    empty message (``".\r\n"`` right after DATA) and a dot on the first line need no special
    case. Octets are checked once each, in bulk, as soon as they are known to be message text:
    a tail that could be the start of the terminator waits for the next chunk. Once a limit is
    crossed the bytes are dropped as they arrive (only the tail a terminator could straddle is
    kept), and the outcome is reported after the terminator, as RFC 5321 section 4.2.5 implies.

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
        "_body",
        "_counted",
        "_done",
        "_keep",
        "_line",
        "_line_limit",
        "_processed",
        "_raw",
        "_size_limit",
        "_stuffing",
        "_too_big",
        "_too_long",
    )

    def __init__(
        self, *, size_limit: int | None, line_limit: int | None, bare_newline: str
    ) -> None:
        self._body = bytearray(b"\r\n")
        self._size_limit = size_limit
        self._line_limit = line_limit
        self._bare_newline = bare_newline
        self._done = False
        # The content is kept until a limit is crossed.
        self._keep = True
        self._too_big = self._too_long = self._bare = False
        # _body[:_processed] has been checked; the rest may be the start of the terminator, so
        # the terminator search resumes at _processed too.
        self._processed = 0
        # Octets checked so far (the virtual CRLF does not count), and the stuffing dots among
        # _body[:_counted]; they are only counted once the raw size nears the limit.
        self._raw = -2
        self._stuffing = 0
        self._counted = 0
        # Octets of the current, unfinished text line.
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
        if self._done:
            return data
        body = self._body
        body += data
        start = self._processed
        end = body.find(_TERMINATOR, start)
        if end >= 0:
            self._check(start, end + 2)  # the CRLF before the final "." ends the last line
            rest = bytes(body[end + 5 :])
            del body[end + 2 :]
            self._done = True
            return rest
        stop = len(body)
        for prefix in _TERMINATOR_PREFIXES:
            if body.endswith(prefix):
                stop -= len(prefix)
                break
        if stop > start:
            self._check(start, stop)
            self._processed = stop
        if not self._keep:
            self._shed()
        return b""

    def _check(self, start: int, stop: int) -> None:
        """Apply the limits to ``_body[start:stop]``, octets known to be message text.

        No CRLF straddles ``start`` or ``stop``: a checked stretch never ends in a CR that an
        LF may follow (such a CR is a terminator prefix and waits).
        """
        if self._too_big:
            return
        body = self._body
        limit = self._size_limit
        if limit:
            self._raw += stop - start
            if self._raw - self._stuffing > limit:
                # RFC 1870 counts the message as delivered: stuffing dots are not counted.
                self._count_stuffing(stop)
                if self._raw - self._stuffing > limit:
                    self._too_big = True
                    self._keep = False
                    return
        line_limit = self._line_limit
        if line_limit is not None and not self._too_long:
            self._check_lines(start, stop, line_limit)
        if (
            self._bare_newline == "reject"
            and not (self._too_long or self._bare)
            and _BARE.search(body, start, stop) is not None
        ):
            # A CR at stop - 1 is judged here too: what follows it is either the first octet
            # of a held terminator prefix (a CR) or, at the terminator, the LF of its CRLF.
            self._bare = True
            self._keep = False

    def _check_lines(self, start: int, stop: int, limit: int) -> None:
        """Flag a text line longer than ``limit`` octets (CRLF included) in ``_body[:stop]``.

        Text lines end at CRLF only (RFC 5321 section 2.3.8). Rather than visiting every line,
        look ``limit`` octets ahead of the current line's start for the *last* CRLF there:
        every line before it is short enough, and the next line starts after it. Each step
        moves about ``limit`` octets with one C-level ``rfind``, so a 10 MB body takes about
        ten thousand steps, however short its lines are.
        """
        body = self._body
        line_start = start - self._line  # where the unfinished line began
        reach = limit - 2  # a CRLF must begin at most this far after the line's start
        for _ in range(stop):  # each turn moves line_start forward or returns
            window_end = line_start + reach + 2
            if window_end > stop:
                break
            end = body.rfind(b"\r\n", line_start, window_end)
            if end < 0:
                self._flag_too_long()
                return
            line_start = end + 2
        end = body.rfind(b"\r\n", max(line_start, start - 1), stop)
        if end >= 0:
            line_start = end + 2
        self._line = stop - line_start
        if self._line > reach:
            self._flag_too_long()

    def _count_stuffing(self, stop: int) -> None:
        """Count the stuffing dots in ``_body[_counted:stop]`` (a CRLF may lie just before)."""
        if stop > self._counted:
            self._stuffing += self._body.count(b"\r\n.", max(self._counted - 2, 0), stop)
            self._counted = stop

    def _shed(self) -> None:
        """A limit was crossed: drop what was checked, but two octets (a CRLF may end there)."""
        if self._size_limit and not self._too_big:
            self._count_stuffing(self._processed)  # still needed for the size verdict
        drop = self._processed - 2
        if drop > 0:
            del self._body[:drop]
            self._processed -= drop
            self._counted = max(self._counted - drop, 0)

    def _flag_too_long(self) -> None:
        self._too_long = True
        self._keep = False

    def result(self) -> tuple[BodyOutcome, bytes]:
        """The outcome and, when OK, the content: dot-unstuffed, CRLF kept, terminator removed."""
        if not self._done:
            raise RuntimeError("the body has not ended yet")
        body = self._body
        self._body = bytearray()
        if self._too_big:
            return BodyOutcome.TOO_BIG, b""
        if self._too_long:
            return BodyOutcome.LINE_TOO_LONG, b""
        if self._bare:
            return BodyOutcome.BARE_NEWLINE, b""
        if body.find(b"\r\n.") >= 0:
            body = body.replace(b"\r\n.", b"\r\n")
        del body[:2]
        if self._bare_newline == "normalize" and _BARE.search(body):
            return BodyOutcome.OK, _ANY_NEWLINE.sub(b"\r\n", body)
        return BodyOutcome.OK, bytes(body)
