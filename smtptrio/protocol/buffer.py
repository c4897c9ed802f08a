r"""Receive buffers: command lines ended by CRLF only, and message bodies ended by CRLF.CRLF.

Both search with ``bytes.find`` over whole chunks and remember how far they already looked, so a
byte is searched about once however the client splits its writes; neither loops per byte or
keeps a list of lines. Only CRLF ends a line and only CRLF "." CRLF ends a body (RFC 5321
section 2.3.8): a bare LF or CR never terminates anything, which closes SMTP smuggling.

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

__all__ = ["BodyOutcome", "BodyReader", "LineBuffer", "TOO_LONG"]


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

    __slots__ = ("_data", "_discarding", "_scanned")

    def __init__(self) -> None:
        self._data = bytearray()
        # Bytes before this offset hold no CRLF (so they are never searched again).
        self._scanned = 0
        # True while dropping the rest of a line that already went over the limit.
        self._discarding = False

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
                # Keep a trailing CR: it may be the first half of the CRLF we wait for.
                keep = 1 if data.endswith(b"\r") else 0
                del data[: len(data) - keep]
                self._discarding = True
            self._scanned = len(data)
            return None
        self._scanned = 0
        if self._discarding or end > limit:
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
    """How a message body ended."""

    #: Within every limit: the content is delivered.
    OK = "ok"
    #: Over ``data_size_limit`` (RFC 1870): 552 after the terminator.
    TOO_BIG = "too-big"
    #: A text line over ``line_length_limit`` (RFC 5321 section 4.5.3.1.6): 500.
    LINE_TOO_LONG = "line-too-long"
    #: A bare CR or LF while ``bare_newline="reject"``: 550.
    BARE_NEWLINE = "bare-newline"


_TERMINATOR = b"\r\n.\r\n"
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


@final
class BodyReader:
    r"""Collects one message body until CRLF.CRLF, enforcing the size and line limits.

    The body is kept as one ``bytearray`` with a virtual CRLF in front, so the terminator of an
    empty message (``".\r\n"`` right after DATA) and a stuffed dot on the first line need no
    special case. Once a limit is crossed the bytes are dropped as they arrive (only the tail a
    terminator could straddle is kept), and the outcome is reported after the terminator, as
    RFC 5321 section 4.2.5 implies.

    >>> r = BodyReader(size_limit=None, line_limit=1001, bare_newline="keep")
    >>> r.feed(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    b'QUIT\r\n'
    >>> r.result()
    (<BodyOutcome.OK: 'ok'>, b'Subject: x\r\n\r\n.dot\r\n')
    """

    __slots__ = (
        "_bare_newline",
        "_body",
        "_done",
        "_line_limit",
        "_line_start",
        "_outcome",
        "_scanned",
        "_size_limit",
        "_bare_scanned",
    )

    def __init__(self, *, size_limit: int | None, line_limit: int | None, bare_newline: str) -> None:
        self._body = bytearray(b"\r\n")
        self._size_limit = size_limit
        self._line_limit = line_limit
        self._bare_newline = bare_newline
        self._outcome = BodyOutcome.OK
        self._done = False
        # Offsets into _body: where the terminator search resumes, where the current (not yet
        # length-checked) line begins, and where the bare CR/LF check resumes.
        self._scanned = 0
        self._line_start = 2
        self._bare_scanned = 2

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; once the terminator is seen, return what followed it (else b"")."""
        body = self._body
        body += data
        end = body.find(_TERMINATOR, max(self._scanned - 4, 0))
        if end < 0:
            self._check(len(body))
            self._scanned = len(body)
            self._shed()
            return b""
        rest = bytes(body[end + 5 :])
        del body[end + 2 :]  # keep the CRLF that ends the last line
        self._done = True
        self._check(len(body))
        return rest

    def _check(self, upto: int) -> None:
        """Apply the limits to ``_body[:upto]`` (only to what was not checked before)."""
        if self._outcome is not BodyOutcome.OK:
            return
        body = self._body
        if self._line_limit is not None:
            last_lf = body.rfind(b"\n", self._line_start, upto)
            if last_lf >= 0:
                segment = body[self._line_start : last_lf + 1]
                longest = max(map(len, segment.split(b"\n")))
                # A piece of split() lacks its LF: the line is one octet longer than the piece.
                if longest + 1 > self._line_limit:
                    self._outcome = BodyOutcome.LINE_TOO_LONG
                    return
                self._line_start = last_lf + 1
            # A partial line of N octets will be at least N + 1 long once its LF arrives.
            if upto - self._line_start >= self._line_limit:
                self._outcome = BodyOutcome.LINE_TOO_LONG
                return
        if self._bare_newline == "reject":
            # Leave a final CR for next time: the LF that makes it a CRLF may still come.
            stop = upto - 1 if not self._done and body.endswith(b"\r") else upto
            if stop > self._bare_scanned and _BARE.search(body, self._bare_scanned - 1, stop):
                self._outcome = BodyOutcome.BARE_NEWLINE
                return
            self._bare_scanned = max(stop, self._bare_scanned)
        limit = self._size_limit
        if limit and len(body) - 2 > limit:
            # Stuffing dots do not count (RFC 1870 counts the message as delivered).
            if len(body) - 2 - body.count(b"\r\n..") > limit:
                self._outcome = BodyOutcome.TOO_BIG

    def _shed(self) -> None:
        """After a limit was crossed, drop all but the tail a terminator might straddle."""
        if self._outcome is BodyOutcome.OK:
            return
        body = self._body
        keep = 4
        if len(body) > keep:
            del body[: len(body) - keep]
        self._scanned = 0
        self._line_start = len(body)
        self._bare_scanned = len(body)

    def result(self) -> tuple[BodyOutcome, bytes]:
        """The outcome and, when OK, the content: dot-unstuffed, CRLF kept, terminator removed."""
        if not self._done:
            raise RuntimeError("the body has not ended yet")
        if self._outcome is not BodyOutcome.OK:
            self._body = bytearray()
            return self._outcome, b""
        body = self._body
        self._body = bytearray()
        if body.find(b"\r\n..") >= 0:
            body = body.replace(b"\r\n..", b"\r\n.")
        del body[:2]
        if self._bare_newline == "normalize" and _BARE.search(body):
            return BodyOutcome.OK, _ANY_NEWLINE.sub(b"\r\n", body)
        return BodyOutcome.OK, bytes(body)
