r"""A tiny synchronous driver for the sans-I/O engine, playing a default handler.

It does what the trio server does, minus the I/O and the hooks: feed bytes, take events, answer
each command with the default reply and ``complete(True)`` (or with an override), record what
the engine refused by itself, and collect everything ``data_to_send()`` produced. Tests assert on
the replies parsed back from those bytes, so they see exactly what a client would see.

>>> d = run(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nNOOP x\r\n")
>>> d.codes
[(250, None), (250, '2.1.0'), (250, '2.0.0')]
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from smtptrio.protocol import replies
from smtptrio.protocol.config import Config
from smtptrio.protocol.connection import Connection
from smtptrio.protocol.events import (
    CLOSED,
    NEED_DATA,
    Auth,
    AuthLine,
    ConnectionLost,
    Data,
    Ehlo,
    EndOfData,
    Event,
    Extension,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Refused,
    Rset,
    StartTLS,
    Vrfy,
)
from smtptrio.protocol.replies import Reply
from smtptrio.protocol.sasl import decode_plain, decode_response

__all__ = [
    "CHUNKINGS",
    "Driver",
    "WireReply",
    "chunk",
    "codes_of",
    "parse_wire",
    "run",
]

HOSTNAME = "mx.example"
#: The credentials the default AUTH handling accepts.
USER, PASSWORD = b"user", b"secret"
#: HELP topics the default handler knows (the built-in verbs).
HELP_TOPICS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "AUTH"}
)

_REPLY_LINE = re.compile(rb"(\d{3})([ -])(.*)\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}\Z")


@dataclass(frozen=True)
class WireReply:
    """One reply as read back from the wire."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @property
    def pair(self) -> tuple[int, str | None]:
        return (self.code, self.enhanced)


def parse_wire(data: bytes) -> list[WireReply]:
    """Split reply bytes into replies; fail the test on anything malformed (RFC 5321 4.2)."""
    out: list[WireReply] = []
    if not data:
        return out
    assert data.endswith(b"\r\n"), f"reply bytes do not end with CRLF: {data[-40:]!r}"
    pending: list[bytes] = []
    code: bytes | None = None
    for raw in data[:-2].split(b"\r\n"):
        m = _REPLY_LINE.match(raw)
        assert m is not None, f"malformed reply line {raw!r}"
        assert b"\r" not in raw and b"\n" not in raw, f"CR/LF inside a reply line: {raw!r}"
        if code is None:
            code = m.group(1)
        assert m.group(1) == code, f"mixed codes in one reply: {raw!r}"
        pending.append(m.group(3))
        if m.group(2) == b" ":
            texts = [t.decode("utf-8") for t in pending]
            first = texts[0].partition(" ")[0]
            enhanced = first if _ENHANCED.match(first) and first[0] == chr(code[0]) else None
            out.append(WireReply(int(code), enhanced, tuple(texts)))
            pending, code = [], None
    assert not pending, f"unterminated multi-line reply: {pending!r}"
    return out


Override = Reply | Callable[[Event], Reply]


@dataclass
class Driver:
    """Runs one engine ``Connection`` with a default handler; see the module docstring.

    ``overrides`` maps a verb (``"MAIL"``, ``"DATA"`` for the 354, ``"EOD"`` for the end of
    data, ...) to the reply to send instead of the default; a 4xx/5xx override completes the
    command with ``accepted=False``, as a refusing handler would.
    """

    config: Config = field(default_factory=Config)
    overrides: Mapping[str, Override] = field(default_factory=dict)
    conn: Connection = field(init=False)
    events: list[Event] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)
    messages: list[bytes] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    closed: bool = False
    _auth_step: str = ""
    _login: bytes = b""

    def __post_init__(self) -> None:
        self.conn = Connection(self.config)

    # --- feeding

    def feed(self, *chunks: bytes) -> Driver:
        for data in chunks:
            assert data, "use eof() for the end of input"
            self.conn.receive_data(data)
            self.pump()
        return self

    def eof(self) -> Driver:
        self.conn.receive_data(b"")
        self.pump()
        return self

    def pump(self) -> None:
        conn = self.conn
        for _ in range(1_000_000):
            event = conn.next_event()
            if event is NEED_DATA:
                self._flush()
                return
            if event is CLOSED:
                self._flush()
                self.closed = True
                return
            assert isinstance(event, Event)
            self.events.append(event)
            self._handle(event)
        raise AssertionError("the engine produced events forever")

    def _flush(self) -> None:
        self.wire += self.conn.data_to_send()

    # --- results

    @property
    def replies(self) -> list[WireReply]:
        return parse_wire(bytes(self.wire))

    @property
    def codes(self) -> list[tuple[int, str | None]]:
        return [r.pair for r in self.replies]

    @property
    def refused(self) -> list[Refused]:
        return [e for e in self.events if isinstance(e, Refused)]

    def of_type(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

    # --- the default handler

    def _reply(self, key: str, event: Event, default: Reply) -> bool:
        """Send the override for ``key`` or ``default``; True when it accepts the command."""
        override = self.overrides.get(key)
        reply = default
        if override is not None:
            reply = override(event) if callable(override) else override
        self.conn.send(reply)
        return reply.code < 400

    def _handle(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, Refused | ConnectionLost):
            return
        if isinstance(event, Helo):
            accepted = self._reply("HELO", event, Reply(250, None, (HOSTNAME,)))
        elif isinstance(event, Ehlo):
            accepted = self._reply(
                event.verb, event, Reply(250, None, (HOSTNAME, *event.extensions))
            )
        elif isinstance(event, Mail):
            accepted = self._reply("MAIL", event, replies.SENDER_OK)
        elif isinstance(event, Rcpt):
            accepted = self._reply("RCPT", event, replies.RECIPIENT_OK)
        elif isinstance(event, Data):
            accepted = self._reply("DATA", event, replies.START_MAIL_INPUT)
        elif isinstance(event, EndOfData):
            self.messages.append(event.content)
            accepted = self._reply("EOD", event, replies.MESSAGE_ACCEPTED)
        elif isinstance(event, Rset):
            accepted = self._reply("RSET", event, replies.OK)
        elif isinstance(event, Noop):
            accepted = self._reply("NOOP", event, replies.OK)
        elif isinstance(event, Quit):
            accepted = self._reply("QUIT", event, replies.BYE)
        elif isinstance(event, Vrfy):
            accepted = self._reply("VRFY", event, replies.VRFY_CANNOT)
        elif isinstance(event, Help):
            known = event.topic is None or event.topic in HELP_TOPICS
            default = Reply(214, "2.0.0", ("Help",)) if known else replies.HELP_UNKNOWN_TOPIC
            accepted = self._reply("HELP", event, default)
        elif isinstance(event, Extension):
            accepted = self._reply(event.name, event, Reply(250, "2.0.0", ("extension",)))
        elif isinstance(event, StartTLS):
            accepted = self._reply("STARTTLS", event, replies.READY_TO_START_TLS)
            conn.complete(accepted)
            if accepted:
                self._flush()
                self.dropped.append(conn.start_tls())
            return
        elif isinstance(event, Auth):
            if self._auth(event):
                return  # waiting for an AuthLine
            accepted = self._auth_step == "ok"
        elif isinstance(event, AuthLine):
            if self._auth_line(event.line):
                return
            accepted = self._auth_step == "ok"
        else:  # pragma: no cover - a new event type the driver does not know
            raise AssertionError(f"unexpected event {event!r}")
        conn.complete(accepted)

    # --- AUTH PLAIN / LOGIN, the way the server's built-ins do it

    def _challenge(self, text: bytes, step: str) -> bool:
        self.conn.send_raw(b"334 " + text + b"\r\n")
        self.conn.read_auth_line()
        self._auth_step = step
        return True

    def _auth(self, event: Auth) -> bool:
        """Start an exchange; True means a challenge was sent and an AuthLine is awaited."""
        initial = event.initial_response
        if event.mechanism == "PLAIN":
            if initial is None:
                return self._challenge(b"", "plain")
            return self._auth_line(initial.encode("ascii"), step="plain")
        if event.mechanism == "LOGIN":
            if initial is None:
                return self._challenge(b"VXNlcm5hbWU6", "login-user")
            return self._auth_line(initial.encode("ascii"), step="login-user")
        self.conn.send(replies.AUTH_FAILED)
        self._auth_step = "failed"
        return False

    def _auth_line(self, line: bytes, step: str | None = None) -> bool:
        step = step or self._auth_step
        self._auth_step = "failed"
        if line == b"\x00TOO-LONG":
            self.conn.send(replies.AUTH_LINE_TOO_LONG)
            return False
        if line == b"*":
            self.conn.send(replies.AUTH_CANCELLED)
            return False
        try:
            value = decode_response(line)
        except ValueError:
            self.conn.send(replies.AUTH_BAD_BASE64)
            return False
        if step == "login-user":
            self._login = value
            return self._challenge(b"UGFzc3dvcmQ6", "login-password")
        if step == "plain":
            try:
                _, login, password = decode_plain(value)
            except ValueError:
                self.conn.send(replies.AUTH_MALFORMED)
                return False
        else:
            login, password = self._login, value
        if (login, password) == (USER, PASSWORD):
            self.conn.send(replies.AUTH_SUCCESS)
            self._auth_step = "ok"
        else:
            self.conn.send(replies.AUTH_FAILED)
        return False


# --- chunking -------------------------------------------------------------------------------

#: How the tests split one input: all at once, one octet per receive_data(), and ragged pieces
#: whose boundaries fall everywhere (inside CRLF, inside CRLF.CRLF, inside verbs).
CHUNKINGS = ("whole", "bytewise", "ragged")

_RAGGED = (1, 2, 3, 5, 4, 7, 1, 11, 2, 13, 6)


def chunk(data: bytes, how: str) -> list[bytes]:
    """Split ``data`` according to one of :data:`CHUNKINGS` (or ``"lines"``: at each CRLF)."""
    if not data:
        return []
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if how == "lines":
        parts = data.split(b"\r\n")
        out = [p + b"\r\n" for p in parts[:-1]]
        return [p for p in out if p] + ([parts[-1]] if parts[-1] else [])
    if how == "ragged":
        out, pos, i = [], 0, 0
        while pos < len(data):
            size = _RAGGED[i % len(_RAGGED)]
            out.append(data[pos : pos + size])
            pos += size
            i += 1
        return out
    raise ValueError(how)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (clamped, sorted, duplicates ignored)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def run(
    data: bytes | Sequence[bytes],
    config: Config | None = None,
    *,
    how: str = "whole",
    eof: bool = False,
    overrides: Mapping[str, Override] | None = None,
) -> Driver:
    """Feed ``data`` (bytes, or a list of lines joined first) chunked by ``how``."""
    if not isinstance(data, bytes | bytearray):
        data = b"".join(data)
    driver = Driver(config or Config(), dict(overrides or {}))
    driver.feed(*chunk(bytes(data), how))
    if eof:
        driver.eof()
    return driver


def codes_of(
    data: bytes | Sequence[bytes], config: Config | None = None, *, how: str = "whole"
) -> list[tuple[int, str | None]]:
    """The ``(code, enhanced)`` pairs the client receives for ``data``."""
    return run(data, config, how=how).codes
