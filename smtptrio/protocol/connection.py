r"""The sans-I/O SMTP server engine: bytes in, events out, replies out as bytes.

A driver (the trio server, or a test) repeats three steps:

1. ``receive_data(chunk)`` with what the socket gave (``b""`` at end of file);
2. ``next_event()`` until it returns :data:`NEED_DATA` (feed more) or :data:`CLOSED`;
3. for each command event, ``send(reply)`` (one or more replies) and ``complete(accepted)``,
   then write ``data_to_send()`` to the socket before waiting for input.

The engine checks syntax, command order (RFC 5321 section 4.1.4), the extensions in force and
every limit before it emits an event, and answers what it refuses by itself (a
:class:`~smtptrio.protocol.events.Refused` event reports that). A command's effect on the
session is applied by ``complete()``, because only the driver knows whether the handler took it:
``accepted`` is True when the handler accepted it, however it said so.

Replies accumulate until ``data_to_send()`` is called, so a pipelined burst (RFC 2920) is
answered with one write.

>>> conn = Connection(Config())
>>> conn.receive_data(b"EHLO client.example\r\nNOOP\r\n")
>>> event = conn.next_event(); event.hostname
'client.example'
>>> conn.send(Reply(250, None, ("mx.example",) + event.extensions)); conn.complete(True)
>>> conn.next_event()
Noop(arg=None)
>>> conn.send(replies.OK); conn.complete(True)
>>> conn.next_event()
NEED_DATA
>>> conn.data_to_send().splitlines()[-1]
b'250 2.0.0 OK'
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Final, final

from smtptrio.protocol import replies
from smtptrio.protocol.buffer import TOO_LONG, BodyOutcome, BodyReader, LineBuffer
from smtptrio.protocol.config import AUTH_LINE_LIMIT, Config
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
    Sentinel,
    StartTLS,
    Vrfy,
)
from smtptrio.protocol.grammar import (
    GrammarError,
    GrammarKind,
    PathArgument,
    parse_mail_from,
    parse_rcpt_to,
    parse_vrfy,
)
from smtptrio.protocol.replies import Reply

__all__ = ["Connection", "LocalProtocolError", "Phase", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class, never raised itself: every subclass knows what the client should be told."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise a subclass of ProtocolError")
        super().__init__(detail or reply.lines[0])
        self.reply = reply


class RemoteProtocolError(ProtocolError):
    """The client broke the protocol; ``reply`` is what it is told."""


class LocalProtocolError(ProtocolError):
    """The driver misused the engine (a bug on our side); logged, never sent."""


class Phase(Enum):
    """Where the engine is in its input."""

    #: Reading command lines.
    COMMAND = "command"
    #: A command event was handed out; waiting for ``complete()``.
    PENDING = "pending"
    #: Reading one AUTH response line for the driver.
    AUTH_LINE = "auth-line"
    #: Reading message text after 354.
    BODY = "body"
    #: An EndOfData (or refused body) was handed out; waiting for ``complete()``.
    END_OF_DATA = "end-of-data"
    #: STARTTLS was accepted; waiting for ``start_tls()``.
    TLS_PENDING = "tls-pending"
    #: Nothing more will be read.
    CLOSED = "closed"


# What require_starttls lets through before TLS (RFC 3207 section 4; aiosmtpd's set, plus LHLO
# for LMTP, COMPAT D31).
_ALLOWED_BEFORE_STARTTLS: Final = frozenset({"EHLO", "NOOP", "QUIT", "STARTTLS"})
_ALLOWED_BEFORE_STARTTLS_LMTP: Final = _ALLOWED_BEFORE_STARTTLS | {"LHLO"}
# DATA is not here: like aiosmtpd it checks the command order before its argument.
_NO_ARG_VERBS: Final = frozenset({"QUIT", "RSET", "STARTTLS"})
_AUTH_GATED: Final = frozenset({"HELP", "VRFY", "MAIL", "RCPT", "DATA"})
_WS: Final = " \t"
_BODY_REPLIES: Final = {
    BodyOutcome.TOO_BIG: replies.MESSAGE_TOO_BIG,
    BodyOutcome.LINE_TOO_LONG: replies.TEXT_LINE_TOO_LONG,
    BodyOutcome.BARE_NEWLINE: replies.BARE_NEWLINE_REJECTED,
}


@final
class Connection:
    """One SMTP session, server side, with no I/O. See the module docstring for the loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Computed once: it depends only on the configuration (it is read for every line).
        self._buffer_limit = self._line_limit_for(config)
        # No verb's line allowance is below this, so shorter lines skip the per-verb lookup.
        self._shortest_limit = min(
            (
                config.command_size_limit,
                *config.command_size_limits.values(),
                *((AUTH_LINE_LIMIT,) if config.auth_mechanisms else ()),
            )
        )
        # Whether any of the configuration-dependent gates of _policy_gates can apply.
        self._gated = bool(
            (config.require_starttls and config.tls_available)
            or config.command_call_limit
            or config.extension_verbs
            or config.lmtp
        )
        self._auth_gate = config.auth_required
        self._in = LineBuffer()
        self._out: list[bytes] = []
        self._body: BodyReader | None = None
        self._phase = Phase.COMMAND
        self._pending: Event | None = None
        self._eof = False
        self._closing = False
        self._lost_reported = False
        # Session state (RFC 5321 section 4.1.4): what the last HELO/EHLO was, whether a
        # transaction is open, how many recipients it has, and the security state.
        self.greeted: str | None = None
        self.in_transaction = False
        self.smtputf8 = False
        self.recipients = 0
        self.tls_active = config.implicit_tls
        self.tls_refused = False
        self.authenticated = False
        self.auth_failures = 0
        self._unknown_commands = 0
        self._errors = 0
        self._calls: dict[str, int] = {}
        # What the current EHLO offered; MAIL's line allowance grows with it (RFC 1870/6531).
        self._offered_size = False
        self._offered_utf8 = False
        self._offered_8bit = False

    # ------------------------------------------------------------------ driver API

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def error_count(self) -> int:
        """How many error replies the engine sent itself in this session."""
        return self._errors

    @property
    def closing(self) -> bool:
        """A closing reply (221, 421) was queued: flush and close after this."""
        return self._closing

    @property
    def body_rejected(self) -> bool:
        """The message being read already crossed a limit (it will get 552/500/550)."""
        return self._body is not None and self._body.rejected

    @property
    def in_data(self) -> bool:
        """Message text is being read (for the server's data-rate and idle rules)."""
        return self._phase is Phase.BODY

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
            return
        if self._phase is Phase.CLOSED:
            return
        body = self._body
        if self._phase is Phase.BODY and body is not None and not body.done:
            rest = body.feed(data)
            if rest:
                self._in.feed(rest)
        else:
            self._in.feed(data)

    def send(self, reply: Reply) -> None:
        """Queue a reply; a 421 marks the session as closing (RFC 5321 section 3.8).

        A 221 does not: QUIT closes the session when it is completed, whatever the reply.
        """
        self._out.append(reply._wire)  # what render() returns, without the call
        if reply.code == 421:
            self._closing = True

    def close(self) -> None:
        """The driver wants to end the session once the queued replies are sent."""
        self._closing = True

    def send_raw(self, data: bytes) -> None:
        """Queue bytes already in reply form (a driver's multi-step reply such as a 334)."""
        self._out.append(data)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, in order, as one bytes object."""
        if not self._out:
            return b""
        out = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return out

    def next_event(self) -> Event | Sentinel:
        """The next thing the driver must act on, :data:`NEED_DATA`, or :data:`CLOSED`.

        Raises:
            LocalProtocolError: if a command event is still waiting for ``complete()``.
        """
        phase = self._phase
        if self._closing or phase is Phase.CLOSED:
            self._phase = Phase.CLOSED
            return CLOSED
        if phase is not Phase.COMMAND:
            if phase is Phase.BODY:
                return self._next_body_event()
            if phase is not Phase.AUTH_LINE:
                raise LocalProtocolError(
                    replies.HANDLER_ERROR, f"next_event() while {phase.value}"
                )
            auth_line = self._in.take_line(AUTH_LINE_LIMIT)
            if auth_line is None:
                return self._at_end_of_input()
            return self._auth_line(auth_line)
        take_line = self._in.take_line
        limit = self._buffer_limit
        for _ in range(1 << 62):  # each turn consumes a line; ends at the first event
            line = take_line(limit)
            if line is None:
                return self._at_end_of_input() if self._eof else NEED_DATA
            if line is TOO_LONG:
                # RFC 4954 section 4: an over-long AUTH line gets 500 5.5.6.
                is_auth = self._in.dropped_head[:5].upper() in (b"AUTH ", b"AUTH\t")
                reply = replies.AUTH_LINE_TOO_LONG if is_auth else replies.LINE_TOO_LONG
                verb = "AUTH" if is_auth else ""
                event: Event | None = self._refuse(verb, reply, "line too long")
            else:
                assert isinstance(line, bytes)
                event = self._command(line)
            if event is not None:
                if type(event) is not Refused:
                    self._pending = event
                    self._phase = Phase.PENDING
                return event
        raise AssertionError("unreachable")  # pragma: no cover

    def complete(self, accepted: bool) -> None:
        """Apply the result of the pending command to the session.

        Args:
            accepted: the handler accepted the command (its reply was positive and, for the
                state-changing commands, it recorded what aiosmtpd expects it to record).
        Raises:
            LocalProtocolError: if no command is pending.
        """
        event = self._pending
        if event is None:
            raise LocalProtocolError(replies.HANDLER_ERROR, "complete() with nothing pending")
        self._pending = None
        self._phase = Phase.COMMAND
        apply = _ON_COMPLETE.get(type(event))
        if apply is not None:
            apply(self, event, accepted)

    # What complete() does per event type (the others change nothing).

    def _completed_helo(self, event: Event, accepted: bool) -> None:
        self.greeted = "HELO" if accepted else None

    def _completed_ehlo(self, event: Event, accepted: bool) -> None:
        assert isinstance(event, Ehlo)
        self.greeted = ("LHLO" if event.lhlo else "EHLO") if accepted else None
        if not accepted:
            self._offered_size = self._offered_utf8 = self._offered_8bit = False

    def _completed_mail(self, event: Event, accepted: bool) -> None:
        if accepted:
            assert isinstance(event, Mail)
            self.in_transaction = True
            self.smtputf8 = event.smtputf8

    def _completed_rcpt(self, event: Event, accepted: bool) -> None:
        if accepted:
            self.recipients += 1

    def _completed_data(self, event: Event, accepted: bool) -> None:
        if not accepted:
            return
        cfg = self.config
        self._phase = Phase.BODY
        body = self._body = BodyReader(
            size_limit=cfg.data_size_limit,
            line_limit=cfg.line_length_limit,
            bare_newline=cfg.bare_newline,
        )
        rest = self._in.take_all()
        if rest:
            after = body.feed(rest)
            if after:
                self._in.feed(after)

    def _completed_end_of_data(self, event: Event, accepted: bool) -> None:
        self._reset_transaction()

    def _completed_quit(self, event: Event, accepted: bool) -> None:
        self._closing = True
        self._phase = Phase.CLOSED

    def _completed_starttls(self, event: Event, accepted: bool) -> None:
        if accepted:
            self._phase = Phase.TLS_PENDING

    def _completed_auth(self, event: Event, accepted: bool) -> None:
        if accepted:
            self.authenticated = True
        else:
            self.auth_failures += 1

    def read_auth_line(self) -> None:
        """Ask for the next line as an :class:`AuthLine` (the driver sent a 334 challenge).

        Only valid while an ``Auth`` event is pending; ``complete()`` ends the exchange.
        """
        if not isinstance(self._pending, Auth):
            raise LocalProtocolError(replies.HANDLER_ERROR, "read_auth_line() outside AUTH")
        self._phase = Phase.AUTH_LINE

    def start_tls(self) -> bytes:
        """Enter the TLS phase once our 220 reply to STARTTLS has been sent.

        Bytes pipelined after STARTTLS came in clear text and may have been injected by a man
        in the middle (RFC 3207 section 4.2), so they are handed back to be dropped, never
        parsed as commands. All SMTP state from before TLS is forgotten: the client must EHLO
        again, and any authentication is gone.

        Returns:
            The plaintext bytes received after the STARTTLS line.
        Raises:
            LocalProtocolError: if no accepted STARTTLS is waiting.
        """
        if self._phase is not Phase.TLS_PENDING:
            raise LocalProtocolError(replies.HANDLER_ERROR, "start_tls() without STARTTLS")
        dropped = self._in.take_all()
        self._phase = Phase.COMMAND
        self.tls_active = True
        self.greeted = None
        self.authenticated = False
        self._offered_size = self._offered_utf8 = self._offered_8bit = False
        self._reset_transaction()
        return dropped

    def refuse_after_tls(self) -> None:
        """``handle_STARTTLS`` said no: every command but QUIT now gets 554 5.7.0."""
        self.tls_refused = True

    def ehlo_extensions(self, lhlo: bool = False) -> tuple[str, ...]:
        """The EHLO lines after the hostname line, in the order of COMPAT.md section 5.2."""
        cfg = self.config
        lines: list[str] = []
        if cfg.data_size_limit:
            lines.append(f"SIZE {cfg.data_size_limit}")
        if not cfg.decode_data or cfg.enable_smtputf8:
            lines.append("8BITMIME")
        if cfg.enable_smtputf8:
            lines.append("SMTPUTF8")
        lines.append("PIPELINING")
        if cfg.enhanced_status_codes:
            lines.append("ENHANCEDSTATUSCODES")
        if cfg.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        if self._auth_usable() and cfg.auth_mechanisms:
            lines.append("AUTH " + " ".join(sorted(cfg.auth_mechanisms)))
        lines.append("HELP")
        return tuple(lines)

    # ------------------------------------------------------------------ internals

    def _auth_usable(self) -> bool:
        return bool(self.config.auth_mechanisms) and (
            self.tls_active or not self.config.auth_require_tls
        )

    @staticmethod
    def _line_limit_for(cfg: Config) -> int:
        """The longest line we buffer while reading commands (the MAIL/AUTH allowances)."""
        return max(
            cfg.command_size_limit + 36,
            AUTH_LINE_LIMIT if cfg.auth_mechanisms else 0,
            max(cfg.command_size_limits.values(), default=0),
        )

    def _verb_limit(self, verb: str) -> int:
        cfg = self.config
        if verb in cfg.command_size_limits:
            return cfg.command_size_limits[verb]
        if verb == "AUTH" and cfg.auth_mechanisms:
            return AUTH_LINE_LIMIT
        limit = cfg.command_size_limit
        if verb == "MAIL" and self.greeted in ("EHLO", "LHLO"):
            if self._offered_size:
                limit += 26
            if self._offered_utf8:
                limit += 10
        return limit

    def _at_end_of_input(self) -> Event | Sentinel:
        if not self._eof:
            return NEED_DATA
        self._phase = Phase.CLOSED
        if self._lost_reported:
            return CLOSED
        self._lost_reported = True
        return ConnectionLost(during="AUTH" if self._pending is not None else "")

    def _next_body_event(self) -> Event | Sentinel:
        body = self._body
        assert body is not None
        if not body.done:
            if self._eof:
                self._phase = Phase.CLOSED
                self._body = None
                self._lost_reported = True
                return ConnectionLost(during="DATA")
            return NEED_DATA
        self._body = None
        outcome, content = body.result()
        if outcome is BodyOutcome.OK:
            cfg = self.config
            if cfg.decode_data and not cfg.enable_smtputf8 and not content.isascii():
                reply = replies.EIGHT_BIT_NOT_DECODABLE
            else:
                event = EndOfData(content=content)
                self._pending = event
                self._phase = Phase.END_OF_DATA
                return event
        else:
            reply = _BODY_REPLIES[outcome]
        self._phase = Phase.COMMAND
        self._reset_transaction()
        return self._refuse("DATA", reply, reply.lines[0], count=False)

    def _reset_transaction(self) -> None:
        self.in_transaction = False
        self.smtputf8 = False
        self.recipients = 0

    def _refuse(self, verb: str, reply: Reply, detail: str, *, count: bool = True) -> Refused:
        """Queue our own refusal; too many of them end the session (RFC 5321 section 7.8)."""
        if count and reply.code >= 400 and reply.code != 421:
            self._errors += 1
            limit = self.config.error_limit
            if limit is not None and self._errors >= limit:
                reply = replies.TOO_MANY_ERRORS
        reply = self._finish(reply)
        self.send(reply)
        return Refused(command=verb, reply=reply, detail=detail)

    def _finish(self, reply: Reply) -> Reply:
        """Drop the enhanced code when the server does not advertise ENHANCEDSTATUSCODES."""
        if self.config.enhanced_status_codes or reply.enhanced is None:
            return reply
        return Reply(reply.code, None, reply.lines)

    def _auth_line(self, line: bytes | object) -> Event:
        self._phase = Phase.PENDING
        if line is TOO_LONG:
            return AuthLine(line=b"\x00TOO-LONG")  # never valid base64: the driver answers 500
        assert isinstance(line, bytes)
        return AuthLine(line=line)

    def _command(self, line: bytes) -> Event | None:
        """Check one command line and dispatch it; None means nothing to hand out."""
        # Every command line passes here, so the common case is kept to a few C-level calls;
        # the order of the checks (and so which reply a bad line gets) is the documented one.
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            return self._unknown("", replies.BAD_CHARACTERS, "NUL, CR or LF in command line")
        if not line:
            return self._refuse("", replies.BAD_SYNTAX, "empty line")
        first = line[0]
        if first == 0x20 or first == 0x09:
            # aiosmtpd reads " NOOP" as an unknown empty verb; so does the unknown-verb limit.
            return self._unknown("", replies.BAD_SYNTAX, "leading white space")
        # Split at the first SP or HTAB (RFC 5321 section 4.1.1; HTAB accepted, COMPAT D14).
        cut = line.find(b" ")
        if b"\t" in line:
            tab = line.find(b"\t")
            if cut < 0 or tab < cut:
                cut = tab
        if cut < 0:
            head, text = line, b""
        else:
            head, text = line[:cut], line[cut + 1 :]
        verb = _KNOWN_HEADS.get(head)
        if verb is None:
            if not head.isascii():
                return self._refuse("", replies.BAD_SYNTAX, "non-ASCII verb")
            if not head.isalpha():
                return self._unknown(head.decode("ascii"))
            verb = head.decode("ascii").upper()
        if len(line) > self._shortest_limit and len(line) > self._verb_limit(verb):
            reply = replies.AUTH_LINE_TOO_LONG if verb == "AUTH" else replies.LINE_TOO_LONG
            return self._refuse(verb, reply, f"{verb} line too long")
        if text.isascii():
            arg_text = text.decode("ascii")
        elif not self.config.enable_smtputf8:
            return self._refuse(verb, replies.NOT_ASCII, "non-ASCII octets without SMTPUTF8")
        else:
            try:
                arg_text = text.decode("utf-8")
            except UnicodeDecodeError:
                return self._refuse(verb, replies.BAD_UTF8, "ill-formed UTF-8")
        arg = arg_text.strip(_WS) or None
        if self.tls_refused and verb != "QUIT":
            return self._refuse(verb, replies.TLS_REFUSED, "handle_STARTTLS refused")
        if self._gated:
            refused = self._policy_gates(verb, arg)
            if refused is not None:
                return refused
        handler = _VERB_METHODS.get(verb)
        if handler is None or (verb == "LHLO" and not self.config.lmtp):
            return self._unknown(verb)
        if verb in _NO_ARG_VERBS and arg is not None:
            return self._refuse(verb, replies.NO_ARGUMENTS_ALLOWED, f"argument to {verb}")
        return handler(self, verb, arg)

    def _policy_gates(self, verb: str, arg: str | None) -> Event | None:
        """The checks only some configurations need (STARTTLS required, budgets, LMTP...)."""
        cfg = self.config
        if (
            cfg.require_starttls
            and cfg.tls_available
            and not self.tls_active
            and verb
            not in (_ALLOWED_BEFORE_STARTTLS_LMTP if cfg.lmtp else _ALLOWED_BEFORE_STARTTLS)
        ):
            return self._refuse(verb, replies.STARTTLS_REQUIRED, "STARTTLS required")
        budgets = cfg.command_call_limit
        if budgets:
            budget = budgets.get(verb, budgets.get("*", 20))
            used = self._calls.get(verb, 0)
            if used >= budget:
                return self._refuse(verb, replies.TOO_MANY_CALLS, "call limit")
            self._calls[verb] = used + 1
        if verb in cfg.extension_verbs:
            return Extension(name=verb, arg=arg)
        if cfg.lmtp and verb in ("HELO", "EHLO"):
            return self._refuse(verb, replies.LMTP_NEEDS_LHLO, "LMTP session")
        return None

    def _unknown(
        self,
        verb: str,
        reply: Reply = replies.UNRECOGNIZED_COMMAND,
        detail: str = "",
    ) -> Refused:
        """An unknown verb, or a line that holds no verb at all: both count toward the limit."""
        self._unknown_commands += 1
        limit = self.config.unrecognized_command_limit
        if limit is not None and self._unknown_commands >= limit:
            return self._refuse(verb, replies.TOO_MANY_UNRECOGNIZED, "unknown-command limit")
        return self._refuse(verb, reply, detail or f"unknown verb {verb!r}")

    def _gate_auth(self, verb: str) -> Refused | None:
        if self.config.auth_required and not self.authenticated and verb in _AUTH_GATED:
            return self._refuse(verb, replies.AUTH_REQUIRED, "AUTH required")
        return None

    # One method per verb: each returns the event to hand out, or a Refused.

    def _helo(self, verb: str, arg: str | None) -> Event:
        if arg is None:
            return self._refuse(verb, replies.HELO_SYNTAX, "HELO without hostname")
        self._reset_transaction()
        self._offered_size = self._offered_utf8 = self._offered_8bit = False
        return Helo(hostname=arg)

    def _ehlo(self, verb: str, arg: str | None) -> Event:
        if arg is None:
            return self._refuse(verb, replies.EHLO_SYNTAX, "EHLO without hostname")
        self._reset_transaction()
        extensions = self.ehlo_extensions()
        self._offered_size = bool(self.config.data_size_limit)
        self._offered_utf8 = self.config.enable_smtputf8
        self._offered_8bit = "8BITMIME" in extensions
        return Ehlo(hostname=arg, extensions=extensions, lhlo=verb == "LHLO")

    def _mail(self, verb: str, arg: str | None) -> Event:
        if self.greeted is None:
            return self._refuse(verb, replies.BAD_SEQUENCE_HELO_FIRST, "no HELO/EHLO yet")
        if self._auth_gate and not self.authenticated:
            return self._refuse(verb, replies.AUTH_REQUIRED, "AUTH required")
        if arg is None:
            return self._refuse(verb, replies.MAIL_SYNTAX, "MAIL without argument")
        try:
            path = parse_mail_from(arg, utf8=self.config.enable_smtputf8)
        except GrammarError as exc:
            return self._path_error(verb, exc, sender=True)
        if path.params and self.greeted == "HELO":
            return self._refuse(verb, replies.NO_PARAMETERS_AFTER_HELO, "parameters after HELO")
        if self.in_transaction:
            return self._refuse(verb, replies.BAD_SEQUENCE_NESTED_MAIL, "nested MAIL")
        options: list[str] = []
        smtputf8 = False
        for key, value in path.params:
            # A parameter given twice is checked each time and kept twice, as aiosmtpd does.
            if key == "SIZE" and self._offered_size:
                if value is None or not value.isdigit() or not value.isascii():
                    return self._refuse(verb, replies.BAD_SIZE_VALUE, "SIZE not numeric")
                limit = self.config.data_size_limit
                if limit and int(value) > limit:
                    return self._refuse(verb, replies.SIZE_PARAMETER_TOO_BIG, "SIZE over limit")
            elif key == "BODY" and self._offered_8bit:
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return self._refuse(verb, replies.BAD_BODY_VALUE, "bad BODY value")
            elif key == "SMTPUTF8" and self._offered_utf8:
                if value is not None:
                    return self._refuse(verb, replies.BAD_SMTPUTF8_VALUE, "SMTPUTF8=value")
                smtputf8 = True
            else:
                return self._refuse(verb, replies.UNKNOWN_PARAMETER, f"parameter {key}")
            options.append(key if value is None else f"{key}={value.upper()}")
        if path.has_non_ascii and not smtputf8:
            return self._refuse(verb, replies.UTF8_ADDRESS_NEEDS_SMTPUTF8, "UTF-8 address")
        if self.config.local_part_limit:
            refused = self._check_local_part(verb, path, sender=True)
            if refused:
                return refused
        return Mail(address=path.address, options=tuple(options), smtputf8=smtputf8, arg=arg)

    def _rcpt(self, verb: str, arg: str | None) -> Event:
        if self.greeted is None:
            return self._refuse(verb, replies.BAD_SEQUENCE_HELO_FIRST, "no HELO/EHLO yet")
        if self._auth_gate and not self.authenticated:
            return self._refuse(verb, replies.AUTH_REQUIRED, "AUTH required")
        if not self.in_transaction:
            return self._refuse(verb, replies.BAD_SEQUENCE_MAIL_FIRST, "RCPT before MAIL")
        if arg is None:
            return self._refuse(verb, replies.RCPT_SYNTAX, "RCPT without argument")
        try:
            path = parse_rcpt_to(arg, utf8=self.config.enable_smtputf8)
        except GrammarError as exc:
            return self._path_error(verb, exc, sender=False)
        if path.params and self.greeted == "HELO":
            return self._refuse(verb, replies.NO_PARAMETERS_AFTER_HELO, "parameters after HELO")
        if path.params:
            return self._refuse(verb, replies.UNKNOWN_PARAMETER, f"parameter {path.params[0][0]}")
        if path.has_non_ascii and not self.smtputf8:
            return self._refuse(verb, replies.UTF8_ADDRESS_NEEDS_SMTPUTF8, "UTF-8 address")
        if self.config.local_part_limit:
            refused = self._check_local_part(verb, path, sender=False)
            if refused:
                return refused
        limit = self.config.max_recipients
        if limit is not None and self.recipients >= limit:
            return self._refuse(verb, replies.TOO_MANY_RECIPIENTS, "recipient limit", count=False)
        return Rcpt(address=path.address, arg=arg)

    def _path_error(self, verb: str, exc: GrammarError, *, sender: bool) -> Refused:
        kind = exc.kind
        if kind is GrammarKind.UNBALANCED:
            reply = replies.UNBALANCED_BRACKETS
        elif kind is GrammarKind.BAD_MAILBOX:
            reply = replies.BAD_SENDER_ADDRESS if sender else replies.BAD_RECIPIENT_ADDRESS
        elif kind is GrammarKind.NULL_PATH:
            reply = replies.NULL_RECIPIENT
        elif kind is GrammarKind.PARAM_SYNTAX:
            reply = replies.PARAMETER_SYNTAX
        elif kind is GrammarKind.NON_ASCII:
            reply = replies.NOT_ASCII
        else:
            reply = replies.MAIL_SYNTAX if sender else replies.RCPT_SYNTAX
        return self._refuse(verb, reply, exc.detail)

    def _check_local_part(self, verb: str, path: PathArgument, *, sender: bool) -> Refused | None:
        limit = self.config.local_part_limit
        if not limit or path.address == "<>":
            return None
        local = path.address.rpartition("@")[0] or path.address
        if len(local.encode("utf-8")) > limit:
            reply = replies.BAD_SENDER_ADDRESS if sender else replies.BAD_RECIPIENT_ADDRESS
            return self._refuse(verb, reply, "local part too long")
        return None

    def _data(self, verb: str, arg: str | None) -> Event:
        if self.greeted is None:
            return self._refuse(verb, replies.BAD_SEQUENCE_HELO_FIRST, "no HELO/EHLO yet")
        if self._auth_gate and not self.authenticated:
            return self._refuse(verb, replies.AUTH_REQUIRED, "AUTH required")
        if not self.in_transaction:
            return self._refuse(verb, replies.BAD_SEQUENCE_MAIL_FIRST, "DATA before MAIL")
        if self.recipients == 0:
            return self._refuse(verb, replies.BAD_SEQUENCE_RCPT_FIRST, "DATA before RCPT")
        if arg is not None:
            return self._refuse(verb, replies.NO_ARGUMENTS_ALLOWED, "argument to DATA")
        return Data()

    def _rset(self, verb: str, arg: str | None) -> Event:
        self._reset_transaction()
        return Rset()

    def _noop(self, verb: str, arg: str | None) -> Event:
        return Noop(arg=arg)

    def _quit(self, verb: str, arg: str | None) -> Event:
        return Quit()

    def _vrfy(self, verb: str, arg: str | None) -> Event:
        refused = self._gate_auth(verb)
        if refused:
            return refused
        if arg is None:
            return self._refuse(verb, replies.VRFY_SYNTAX, "VRFY without argument")
        address = parse_vrfy(arg, utf8=self.config.enable_smtputf8)
        if address is None:
            return self._refuse(verb, replies.VRFY_UNPARSABLE, "VRFY argument unparsable")
        return Vrfy(address=address)

    def _expn(self, verb: str, arg: str | None) -> Event:
        return self._refuse(verb, replies.EXPN_NOT_IMPLEMENTED, "EXPN", count=False)

    def _help(self, verb: str, arg: str | None) -> Event:
        refused = self._gate_auth(verb)
        if refused:
            return refused
        return Help(topic=arg.upper() if arg else None)

    def _starttls(self, verb: str, arg: str | None) -> Event:
        if self.tls_active:
            return self._refuse(verb, replies.ALREADY_TLS, "STARTTLS inside TLS")
        if not self.config.tls_available:
            return self._refuse(verb, replies.TLS_NOT_AVAILABLE, "no TLS context")
        if self.greeted is None:
            return self._refuse(verb, replies.BAD_SEQUENCE_HELO_FIRST, "STARTTLS before EHLO")
        return StartTLS()

    def _auth(self, verb: str, arg: str | None) -> Event:
        cfg = self.config
        if not cfg.auth_mechanisms:
            return self._unknown(verb)
        if self.greeted is None:
            return self._refuse(verb, replies.AUTH_NEEDS_EHLO, "AUTH before EHLO")
        if self.greeted == "HELO":
            return self._refuse(verb, replies.AUTH_AFTER_HELO, "AUTH after HELO")
        if cfg.auth_require_tls and not self.tls_active:
            return self._refuse(verb, replies.ENCRYPTION_REQUIRED, "AUTH before TLS")
        if self.authenticated:
            return self._refuse(verb, replies.ALREADY_AUTHENTICATED, "AUTH twice")
        if self.in_transaction:
            return self._refuse(verb, replies.AUTH_IN_TRANSACTION, "AUTH in a transaction")
        limit = cfg.auth_failure_limit
        if limit is not None and self.auth_failures >= limit:
            return self._refuse(verb, replies.TOO_MANY_AUTH_FAILURES, "AUTH failure limit")
        # SP-separated (HTAB tolerated, COMPAT D14); str.split() would also split at the
        # Unicode and ASCII-control "white space" that SMTPUTF8 lets through.
        words = arg.replace("\t", " ").split(" ") if arg else []
        words = [w for w in words if w]
        if not words or len(words) > 2:
            return self._refuse(verb, replies.AUTH_SYNTAX, "AUTH needs 1 or 2 words")
        mechanism = words[0].upper()
        if mechanism not in cfg.auth_mechanisms:
            return self._refuse(verb, replies.UNKNOWN_MECHANISM, f"mechanism {mechanism!r}")
        return Auth(
            mechanism=mechanism,
            initial_response=words[1] if len(words) == 2 else None,
            arg=arg or "",
        )


#: One method per verb, looked up once here rather than bound anew for every session.
_VERB_METHODS: Final[dict[str, Callable[[Connection, str, str | None], Event]]] = {
    "HELO": Connection._helo,
    "EHLO": Connection._ehlo,
    "LHLO": Connection._ehlo,
    "MAIL": Connection._mail,
    "RCPT": Connection._rcpt,
    "DATA": Connection._data,
    "RSET": Connection._rset,
    "NOOP": Connection._noop,
    "QUIT": Connection._quit,
    "VRFY": Connection._vrfy,
    "EXPN": Connection._expn,
    "HELP": Connection._help,
    "STARTTLS": Connection._starttls,
    "AUTH": Connection._auth,
}


_ON_COMPLETE: Final[dict[type[Event], Callable[[Connection, Event, bool], None]]] = {
    Helo: Connection._completed_helo,
    Ehlo: Connection._completed_ehlo,
    Mail: Connection._completed_mail,
    Rcpt: Connection._completed_rcpt,
    Data: Connection._completed_data,
    EndOfData: Connection._completed_end_of_data,
    Quit: Connection._completed_quit,
    StartTLS: Connection._completed_starttls,
    Auth: Connection._completed_auth,
}

#: The verbs as clients usually write them (upper, lower, capitalised), looked up without
#: decoding; anything else takes the general path in ``_command``.
_KNOWN_HEADS: Final[dict[bytes, str]] = {
    spelling.encode("ascii"): verb
    for verb in _VERB_METHODS
    for spelling in (verb, verb.lower(), verb.capitalize())
}
