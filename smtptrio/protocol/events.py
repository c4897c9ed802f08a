"""The events the engine hands to its driver, one per complete command (or end of message).

Every event is a frozen value. The engine has already checked syntax, order and limits before it
emits one, so a driver can act on it without re-checking anything: a ``Mail`` event means the
MAIL command was well formed and allowed at that point in the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from smtptrio.protocol.replies import Reply

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "Auth",
    "AuthLine",
    "ConnectionLost",
    "Data",
    "Ehlo",
    "EndOfData",
    "Event",
    "Extension",
    "Helo",
    "Help",
    "Mail",
    "Noop",
    "Quit",
    "Rcpt",
    "Refused",
    "Rset",
    "Sentinel",
    "StartTLS",
    "Vrfy",
]


@final
class Sentinel:
    """A named marker returned by ``next_event()``; compare with ``is``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: No complete line is buffered: flush the replies, then feed more bytes.
NEED_DATA = Sentinel("NEED_DATA")
#: The session is over (QUIT answered, or a closing 421 queued): flush and close.
CLOSED = Sentinel("CLOSED")


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything ``Connection.next_event()`` returns besides the sentinels."""

    #: The command verb as the engine recognised it (upper case); "" for non-commands.
    @property
    def verb(self) -> str:
        return ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Helo(Event):
    """HELO with its argument; the transaction was already reset."""

    hostname: str

    @property
    def verb(self) -> str:
        return "HELO"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ehlo(Event):
    """EHLO (or LHLO) with its argument and the extension lines we would advertise."""

    hostname: str
    #: The reply lines after the first (``SIZE 33554432``, ``PIPELINING``, ..., ``HELP``).
    extensions: tuple[str, ...]
    lhlo: bool = False

    @property
    def verb(self) -> str:
        return "LHLO" if self.lhlo else "EHLO"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Mail(Event):
    """MAIL FROM, well formed and allowed; parameters upper-cased as aiosmtpd gives them."""

    address: str
    options: tuple[str, ...] = ()
    smtputf8: bool = False
    #: The text after the verb, for ``smtp_MAIL`` overrides.
    arg: str = ""

    @property
    def verb(self) -> str:
        return "MAIL"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Rcpt(Event):
    """RCPT TO, well formed, inside a transaction and under the recipient limit."""

    address: str
    options: tuple[str, ...] = ()
    arg: str = ""

    @property
    def verb(self) -> str:
        return "RCPT"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Event):
    """DATA with at least one accepted recipient: answer 354 to start the message."""

    @property
    def verb(self) -> str:
        return "DATA"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfData(Event):
    """The whole message arrived within every limit: content dot-unstuffed, terminator removed."""

    content: bytes

    @property
    def verb(self) -> str:
        return "DATA"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Rset(Event):
    """RSET; the transaction was already reset."""

    @property
    def verb(self) -> str:
        return "RSET"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Noop(Event):
    """NOOP, with its optional string argument."""

    arg: str | None = None

    @property
    def verb(self) -> str:
        return "NOOP"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Event):
    """QUIT: answer, then close whatever the answer says."""

    @property
    def verb(self) -> str:
        return "QUIT"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Vrfy(Event):
    """VRFY with a parsable argument."""

    address: str

    @property
    def verb(self) -> str:
        return "VRFY"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Help(Event):
    """HELP, with the topic (upper-cased) if one was given."""

    topic: str | None = None

    @property
    def verb(self) -> str:
        return "HELP"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StartTLS(Event):
    """STARTTLS allowed here: send 220, complete it, flush, then call ``start_tls()``."""

    @property
    def verb(self) -> str:
        return "STARTTLS"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Event):
    """AUTH that passed every pre-check (RFC 4954 section 4); mechanism upper-cased."""

    mechanism: str
    #: The initial response exactly as sent (``=`` means empty), or None.
    initial_response: str | None = None
    arg: str = ""

    @property
    def verb(self) -> str:
        return "AUTH"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthLine(Event):
    """One line of an AUTH exchange, asked for with ``read_auth_line()``; CRLF removed."""

    line: bytes

    @property
    def verb(self) -> str:
        return "AUTH"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Extension(Event):
    """A verb the driver registered as an extension command (``smtp_XYZZY``)."""

    name: str
    arg: str | None = None

    @property
    def verb(self) -> str:
        return self.name


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Refused(Event):
    """The engine answered a line itself (syntax, order, limit); the reply is already queued.

    Drivers log it; they send nothing. ``reply.closes`` tells that the session is ending.
    """

    command: str
    reply: Reply
    detail: str = ""

    @property
    def verb(self) -> str:
        return self.command


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost(Event):
    """The client closed its side; ``during`` says what was interrupted ("" when idle)."""

    during: str = ""
