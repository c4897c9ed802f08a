r"""SMTP replies as frozen values, and the named replies the server sends.

A :class:`Reply` becomes bytes in exactly one place, :meth:`Reply.render`, so the rules of
RFC 5321 section 4.2 (three digits, ``-`` on every line but the last) and of RFC 2034 (the
enhanced status code repeated on every line) live here and nowhere else.

>>> Reply(250, "2.0.0", ("OK",)).render()
b'250 2.0.0 OK\r\n'
>>> Reply(250, None, ("mail.example", "PIPELINING", "HELP")).render()
b'250-mail.example\r\n250-PIPELINING\r\n250 HELP\r\n'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Reply",
    "ReplySyntaxError",
    "complete_enhanced",
]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


class ReplySyntaxError(ValueError):
    """A string offered as a reply is not one (no 2xx-5xx code, mixed codes, CR/LF inside)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a code, an optional RFC 3463 enhanced code and one or more text lines.

    ``enhanced`` is ``None`` for the replies that carry no enhanced code by RFC 2034: the
    220 greeting, the HELO/EHLO 250, 354 and the 334 AUTH challenges.
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    #: The wire form, computed once: replies are immutable and most are module constants
    #: sent thousands of times, so rendering per send would be wasted work.
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ReplySyntaxError(f"reply code must be 200-599, got {self.code!r}")
        if not self.lines:
            raise ReplySyntaxError("a reply needs at least one line")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ReplySyntaxError(f"reply line holds CR or LF: {line!r}")
            if not line.isascii():
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError:
                    raise ReplySyntaxError(f"reply line is not UTF-8 text: {line!r}") from None
        object.__setattr__(self, "_wire", self._render())

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx: the command was accepted (or input is invited)."""
        return self.code < 400

    @property
    def closes(self) -> bool:
        """True for 421 and 221: RFC 5321 section 3.8 says the connection closes after it."""
        return self.code in (221, 421)

    def text(self) -> str:
        """The reply as it would read on the wire, without the final CRLF (for logs)."""
        return self.render().decode("utf-8", "replace").rstrip("\r\n")

    def render(self) -> bytes:
        """The bytes to send: a ``DDD-`` line per text line but the last, which is ``DDD``
        and a space; each ends with CRLF."""
        return self._wire

    def _render(self) -> bytes:
        code = str(self.code)
        last = len(self.lines) - 1
        parts = []
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            if self.enhanced:
                line = f"{self.enhanced} {line}" if line else self.enhanced
            parts.append(f"{code}{sep}{line}\r\n")
        return "".join(parts).encode("utf-8")

    @classmethod
    def parse(cls, status: str, *, default_enhanced: str | None = None) -> Reply:
        r"""Read a status string as a handler returns it (``"250 OK"``, multi-line with CRLF).

        Every line must start with the same three-digit code; the ``-`` or space after it is
        ours to set. An enhanced code after the number is kept; when there is none and
        ``default_enhanced`` is given it is used (RFC 2034 wants one on every 2xx-5xx reply).

        >>> Reply.parse("550 No such user").render()
        b'550 No such user\r\n'
        >>> Reply.parse("550 No such user", default_enhanced="5.0.0").render()
        b'550 5.0.0 No such user\r\n'
        >>> Reply.parse("250-one\r\n250 two").lines
        ('one', 'two')

        Raises:
            ReplySyntaxError: if it is not a valid reply.
        """
        if not isinstance(status, str):
            raise ReplySyntaxError(f"a reply must be a string, got {type(status).__name__}")
        raw_lines = status.split("\r\n") if "\r\n" in status else status.split("\n")
        if raw_lines and raw_lines[-1] == "" and len(raw_lines) > 1:
            raw_lines.pop()
        code: int | None = None
        enhanced: str | None = None
        texts: list[str] = []
        for n, raw in enumerate(raw_lines):
            if len(raw) < 3 or not raw[:3].isdigit() or not raw[:3].isascii():
                raise ReplySyntaxError(f"reply line does not start with a code: {raw!r}")
            this = int(raw[:3])
            if code is None:
                code = this
            elif this != code:
                raise ReplySyntaxError(f"reply mixes codes {code} and {this}")
            rest = raw[3:]
            if rest[:1] in ("-", " "):
                rest = rest[1:]
            elif rest:
                raise ReplySyntaxError(f"no space after the reply code: {raw!r}")
            first, _, after = rest.partition(" ")
            if _ENHANCED.match(first) and first[0] == str(this)[0]:
                if n == 0:
                    enhanced = first
                rest = after
            if "\r" in rest or "\n" in rest:
                raise ReplySyntaxError(f"reply line holds CR or LF: {raw!r}")
            texts.append(rest)
        assert code is not None
        if not 200 <= code <= 599:
            raise ReplySyntaxError(f"reply code must be 200-599, got {code}")
        if enhanced is None and default_enhanced is not None and code // 100 in (2, 4, 5):
            enhanced = default_enhanced
        if enhanced is not None and enhanced[0] != str(code)[0]:
            enhanced = None
        return cls(code, enhanced, tuple(texts))


def complete_enhanced(code: int, verb: str) -> str | None:
    """The enhanced code a 2xx/4xx/5xx reply to ``verb`` gets when its author gave none.

    2xx is ``2.1.0`` for MAIL, ``2.1.5`` for RCPT and ``2.0.0`` otherwise; 4xx ``4.0.0``;
    5xx ``5.0.0``. HELO/EHLO/LHLO replies and 3xx replies stay bare (RFC 2034).

    >>> complete_enhanced(250, "RCPT"), complete_enhanced(550, "RCPT")
    ('2.1.5', '5.0.0')
    >>> complete_enhanced(354, "DATA"), complete_enhanced(250, "EHLO")
    (None, None)
    """
    klass = code // 100
    if klass == 3 or verb in ("HELO", "EHLO", "LHLO"):
        return None
    if klass == 2:
        return {"MAIL": "2.1.0", "RCPT": "2.1.5"}.get(verb, "2.0.0")
    if klass in (4, 5):
        return f"{klass}.0.0"
    return None


def _r(code: int, enhanced: str | None, *lines: str) -> Reply:
    return Reply(code, enhanced, lines)


# The named replies the core and the server send. Clients key on the code and enhanced
# code (RFC 3463); the texts are ours and are not API.
OK = _r(250, "2.0.0", "OK")
SENDER_OK = _r(250, "2.1.0", "Sender OK")
RECIPIENT_OK = _r(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = _r(250, "2.0.0", "Message accepted for delivery")
START_MAIL_INPUT = _r(354, None, "End data with <CR><LF>.<CR><LF>")
BYE = _r(221, "2.0.0", "Bye")
VRFY_CANNOT = _r(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_NOT_IMPLEMENTED = _r(502, "5.5.1", "EXPN not implemented")
READY_TO_START_TLS = _r(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCESS = _r(235, "2.7.0", "Authentication successful")

# 4xx: transient
SERVICE_SHUTTING_DOWN = _r(421, "4.3.2", "Service shutting down, closing connection")
IDLE_TIMEOUT = _r(421, "4.4.2", "Idle timeout, closing connection")
DATA_RATE_TOO_LOW = _r(421, "4.4.2", "Data rate too low, closing connection")
TOO_MANY_CONNECTIONS = _r(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = _r(421, "4.7.0", "Too many connections from your address")
CONNECTION_RATE_EXCEEDED = _r(421, "4.7.0", "Connection rate limit exceeded, try again later")
TOO_MANY_UNRECOGNIZED = _r(421, "4.7.0", "Too many unrecognized commands, closing connection")
TOO_MANY_CALLS = _r(421, "4.7.0", "Command sent too many times, closing connection")
TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_AUTH_FAILURES = _r(421, "4.7.0", "Too many failed authentication attempts")
TOO_MANY_RECIPIENTS = _r(452, "4.5.3", "Too many recipients")
TLS_NOT_AVAILABLE = _r(454, "4.7.0", "TLS not available")
HANDLER_ERROR = _r(451, "4.3.0", "Requested action aborted: local error in processing")
AUTH_HANDLER_ERROR = _r(454, "4.7.0", "Temporary authentication failure")
STORAGE_ERROR = _r(451, "4.3.0", "Requested action aborted: error in processing")

# 5xx: permanent
UNRECOGNIZED_COMMAND = _r(500, "5.5.2", "Command unrecognized")
BAD_SYNTAX = _r(500, "5.5.2", "Syntax error, command unrecognized")
BAD_CHARACTERS = _r(500, "5.5.2", "Syntax error: NUL, bare CR or bare LF in command line")
NOT_ASCII = _r(500, "5.5.2", "Syntax error: non-ASCII characters without SMTPUTF8")
BAD_UTF8 = _r(500, "5.5.2", "Syntax error: ill-formed UTF-8")
LINE_TOO_LONG = _r(500, "5.5.2", "Command line too long")
TEXT_LINE_TOO_LONG = _r(500, "5.5.2", "Line too long (see RFC 5321 section 4.5.3.1.6)")
AUTH_LINE_TOO_LONG = _r(500, "5.5.6", "Authentication exchange line is too long")
LMTP_NEEDS_LHLO = _r(500, "5.5.1", "This is LMTP: use LHLO")
HELO_SYNTAX = _r(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = _r(501, "5.5.4", "Syntax: EHLO hostname")
NO_ARGUMENTS_ALLOWED = _r(501, "5.5.4", "Syntax error: no arguments allowed")
MAIL_SYNTAX = _r(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = _r(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
NO_PARAMETERS_AFTER_HELO = _r(501, "5.5.4", "Parameters need EHLO")
PARAMETER_SYNTAX = _r(501, "5.5.4", "Syntax error in parameters")
UNBALANCED_BRACKETS = _r(501, "5.5.4", "Syntax error: unbalanced angle brackets")
NULL_RECIPIENT = _r(501, "5.1.3", "Null recipient not allowed")
VRFY_SYNTAX = _r(501, "5.5.4", "Syntax: VRFY <address>")
VRFY_UNPARSABLE = _r(502, "5.5.4", "Could not VRFY that address")
BAD_BODY_VALUE = _r(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
BAD_SIZE_VALUE = _r(501, "5.5.4", "SIZE must be a number")
BAD_SMTPUTF8_VALUE = _r(501, "5.5.4", "SMTPUTF8 takes no value")
AUTH_SYNTAX = _r(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_CANCELLED = _r(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_BASE64 = _r(501, "5.5.2", "Cannot decode base64 response")
AUTH_MALFORMED = _r(501, "5.5.2", "Malformed authentication response")
BAD_SEQUENCE_HELO_FIRST = _r(503, "5.5.1", "Send HELO or EHLO first")
BAD_SEQUENCE_NESTED_MAIL = _r(503, "5.5.1", "Sender already specified")
BAD_SEQUENCE_MAIL_FIRST = _r(503, "5.5.1", "Send MAIL before RCPT")
BAD_SEQUENCE_RCPT_FIRST = _r(503, "5.5.1", "Send RCPT before DATA")
ALREADY_AUTHENTICATED = _r(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = _r(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_NEEDS_EHLO = _r(503, "5.5.1", "Send EHLO first")
AUTH_AFTER_HELO = _r(500, "5.5.1", "AUTH needs EHLO, not HELO")
ALREADY_TLS = _r(503, "5.5.1", "TLS already active")
HELP_UNKNOWN_TOPIC = _r(504, "5.5.4", "HELP topic unknown")
UNKNOWN_MECHANISM = _r(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_REQUIRED = _r(530, "5.7.0", "Authentication required")
STARTTLS_REQUIRED = _r(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = _r(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = _r(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
BARE_NEWLINE_REJECTED = _r(550, "5.5.2", "Bare CR or LF in message text not allowed")
MESSAGE_TOO_BIG = _r(552, "5.3.4", "Message size exceeds fixed maximum message size")
SIZE_PARAMETER_TOO_BIG = _r(
    552, "5.3.4", "Declared message size exceeds fixed maximum message size"
)
BAD_SENDER_ADDRESS = _r(553, "5.1.7", "Malformed sender address")
BAD_RECIPIENT_ADDRESS = _r(553, "5.1.3", "Malformed recipient address")
UTF8_ADDRESS_NEEDS_SMTPUTF8 = _r(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")
EIGHT_BIT_NOT_DECODABLE = _r(554, "5.6.0", "Message contains 8-bit data that cannot be decoded")
TLS_REFUSED = _r(554, "5.7.0", "Command refused due to lack of security")
UNKNOWN_PARAMETER = _r(555, "5.5.4", "MAIL/RCPT parameter not recognized or not implemented")
