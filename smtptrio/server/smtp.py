"""``SMTP``: the per-connection object hooks receive as ``server``, and the class to extend.

It never parses anything (the protocol engine did that); it turns engine events into hook calls
and hook results into replies, with aiosmtpd's names and conventions so handlers and ``SMTP``
subclasses written for aiosmtpd keep working (COMPAT.md sections 2 and 3):

- a command ``XYZZY`` is added by defining ``async def smtp_XYZZY(self, arg)``; decorate it with
  :func:`syntax` to list it in HELP; answer with ``await self.push("250 ...")``;
- built-in commands can be overridden the same way, ``await super().smtp_MAIL(arg)`` running ours;
- AUTH mechanisms are ``auth_<NAME>(self, server, args)`` methods (or handler hooks).
"""

from __future__ import annotations

import base64
import logging
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from smtptrio.protocol import replies
from smtptrio.protocol.config import Config
from smtptrio.protocol.events import (
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
    Rset,
    StartTLS,
    Vrfy,
)
from smtptrio.protocol.replies import Reply
from smtptrio.protocol.sasl import decode_plain, decode_response
from smtptrio.server.hooks import (
    HookTable,
    ReplyError,
    mechanism_name,
    parse_status,
)
from smtptrio.server.options import Options, build_options
from smtptrio.server.session import (
    MISSING,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    is_missing,
)

if TYPE_CHECKING:
    from smtptrio.protocol.connection import Connection
    from smtptrio.server.connection import ConnectionIO

__all__ = ["SMTP", "syntax"]

log = logging.getLogger("smtptrio.session")

F = TypeVar("F", bound=Callable[..., Any])


def syntax(text: str, extended: str | None = None, when: str | None = None) -> Callable[[F], F]:
    """Describe a command for HELP, as aiosmtpd's decorator of the same name does.

    Args:
        text: the syntax line, e.g. ``"XYZZY <magic>"``.
        extended: appended after EHLO (the ESMTP form).
        when: the name of an ``SMTP`` attribute that must be truthy for the command to be listed.
    """

    def decorate(func: F) -> F:
        func.__smtp_syntax__ = text  # type: ignore[attr-defined]  # HELP metadata
        func.__smtp_syntax_extended__ = extended  # type: ignore[attr-defined]  # HELP metadata
        func.__smtp_syntax_when__ = when  # type: ignore[attr-defined]  # HELP metadata
        return func

    return decorate


_BUILTIN_VERBS = frozenset(
    {"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
     "HELP", "STARTTLS", "AUTH"}
)


class _Transport:
    """The little of an asyncio transport handlers use (COMPAT.md section 1.3)."""

    __slots__ = ("_smtp",)

    def __init__(self, smtp: SMTP) -> None:
        self._smtp = smtp

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._smtp._extra_info(name, default)

    def close(self) -> None:
        self._smtp._close_requested = True

    def is_closing(self) -> bool:
        return self._smtp._close_requested


class SMTP:
    """One SMTP session as the handler sees it. Subclass it to add commands or mechanisms."""

    #: Class attributes act as per-instance defaults (COMPAT.md section 2.5).
    command_size_limit: ClassVar[int | None] = None
    line_length_limit: ClassVar[int | None] = None
    local_part_limit: ClassVar[int | None] = None
    command_size_limits: ClassVar[Mapping[str, int]] = {}
    AuthLoginUsernameChallenge: ClassVar[str] = "User Name\x00"
    AuthLoginPasswordChallenge: ClassVar[str] = "Password\x00"

    # Filled per subclass by __init_subclass__ (and for SMTP itself below).
    _extension_verbs: ClassVar[frozenset[str]] = frozenset()
    _overridden: ClassVar[frozenset[str]] = frozenset()
    _auth_attrs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._register_commands()

    @classmethod
    def _register_commands(cls) -> None:
        verbs = {a[5:].upper() for a in dir(cls) if a.startswith("smtp_") and a[5:].isalpha()}
        cls._extension_verbs = frozenset(v for v in verbs if v not in _BUILTIN_VERBS)
        cls._overridden = frozenset(
            v for v in verbs & _BUILTIN_VERBS
            if getattr(cls, f"smtp_{v}", None) is not getattr(SMTP, f"smtp_{v}", None)
        )
        cls._auth_attrs = tuple(
            sorted(a for a in dir(cls) if a.startswith("auth_") and callable(getattr(cls, a)))
        )
        for name in ("ehlo_hook", "rset_hook"):
            if hasattr(cls, name):
                warnings.warn(
                    f"SMTP.{name}() is deprecated; implement "
                    f"handle_{name[:4].upper()} on the handler",
                    DeprecationWarning,
                    stacklevel=3,
                )

    def __init__(self, handler: object, **options: Any) -> None:
        # aiosmtpd users construct SMTP(handler, **kwargs) (e.g. in Controller.factory());
        # the server itself uses _for_connection with options validated once.
        self._setup(handler, build_options(options), HookTable.for_handler(handler))

    @classmethod
    def _for_connection(cls, handler: object, options: Options, hooks: HookTable) -> SMTP:
        self = cls.__new__(cls)
        self._setup(handler, options, hooks)
        return self

    def _setup(self, handler: object, options: Options, hooks: HookTable) -> None:
        self.event_handler = handler
        self.options = options
        self._hooks = hooks
        self.hostname: str = options.hostname or "localhost"
        self.__ident__ = options.ident
        self.data_size_limit = options.data_limit
        self.enable_SMTPUTF8 = options.enable_SMTPUTF8
        self.tls_context = options.tls_context
        self.require_starttls = options.require_starttls and options.tls_context is not None
        self._decode_data = options.decode_data
        self._auth_required = options.auth_required
        self._auth_require_tls = options.auth_require_tls
        self.session: Session | None = None
        self.envelope: Envelope | None = None
        self._conn: Connection | None = None
        self._io: ConnectionIO | None = None
        self._event: Event | None = None
        self._last_code = 0
        self._replies_sent = 0
        self._close_requested = False
        self.transport = _Transport(self)
        # The transaction commands that run no user code here (no hook, smtp_* method not
        # overridden): dispatch_now() answers them without a coroutine.
        # Looked up on the class for every session, so a method patched after the class was
        # made (mock.patch.object(SMTP, "smtp_RCPT", ...)) is seen as well.
        commands = hooks.commands
        cls = type(self)
        plain = cls.dispatch is _DEFAULTS["dispatch"]
        self._now_mail = plain and "MAIL" not in commands and _is_default(cls, "smtp_MAIL")
        self._now_rcpt = plain and "RCPT" not in commands and _is_default(cls, "smtp_RCPT")
        self._now_data = plain and _is_default(cls, "smtp_DATA")
        self._now_end_of_data = (
            plain
            and "DATA" not in commands
            and hooks.process_message is None
            and _is_default(cls, "_end_of_data")
            and _is_default(cls, "_create_envelope")
        )

    # ------------------------------------------------------------------ configuration

    def _auth_mechanisms(self) -> dict[str, Callable[..., Any]]:
        """Every AUTH mechanism on offer: ours, the subclass's, the handler's (handler wins)."""
        found: dict[str, Callable[..., Any]] = {}
        for attr in self._auth_attrs:
            func = getattr(self, attr)
            found[mechanism_name(attr, func)] = func
        found.update(self._hooks.auth_hooks)
        for name in self.options.auth_exclude_mechanism:
            found.pop(name.upper(), None)
        return found

    def protocol_config(self) -> Config:
        """The engine settings for this class of session (computed once per server)."""
        o = self.options
        cls = type(self)
        return Config(
            data_size_limit=o.data_limit,
            enable_smtputf8=o.enable_SMTPUTF8,
            decode_data=o.decode_data,
            tls_available=o.tls_context is not None,
            implicit_tls=o.ssl_context is not None,
            require_starttls=o.require_starttls,
            auth_required=o.auth_required,
            auth_require_tls=o.auth_require_tls,
            auth_mechanisms=tuple(sorted(self._auth_mechanisms())),
            command_size_limit=cls.command_size_limit or o.command_size_limit,
            line_length_limit=cls.line_length_limit or o.line_length_limit,
            local_part_limit=cls.local_part_limit or o.local_part_limit,
            bare_newline=o.bare_newline,  # type: ignore[arg-type]  # validated by Options
            enhanced_status_codes=o.enhanced_status_codes,
            max_recipients=o.max_recipients,
            unrecognized_command_limit=o.unrecognized_command_limit,
            auth_failure_limit=o.auth_failure_limit,
            error_limit=o.error_limit,
            command_call_limit=o.command_call_limit,
            extension_verbs=cls._extension_verbs,
            command_size_limits=dict(cls.command_size_limits),
        )

    # ------------------------------------------------------------------ hooks' API

    @property
    def event_handler_hooks(self) -> HookTable:
        return self._hooks

    @property
    def loop(self) -> Any:
        raise AttributeError(
            "server.loop exists only with asyncio_bridge=True: smtptrio runs hooks on trio"
        )

    async def push(self, status: str | bytes) -> None:
        """Send one reply (CRLF is added). Texts without an enhanced code get one (RFC 2034)."""
        if isinstance(status, str) and len(status) > 3 and status[3] == "-" and "\n" not in status:
            # aiosmtpd handlers build multi-line replies by pushing "250-..." lines one by one:
            # keep such a continuation line as it is (its final line comes in a later push).
            line = self._to_reply(status[:3] + " " + status[4:])
            assert self._conn is not None
            self._conn.send_raw(line.render().replace(b" ", b"-", 1))
            return
        self._send_given(self._to_reply(status))

    def _to_reply(self, status: object) -> Reply:
        verb = self._event.verb if self._event is not None else ""
        return parse_status(
            status,
            verb,
            complete=self.options.enhanced_status_codes,
            utf8=self.enable_SMTPUTF8,
        )

    def _send(self, reply: Reply) -> None:
        """Send one of our own replies; without ENHANCEDSTATUSCODES its enhanced code goes."""
        if reply.enhanced is not None and not self.options.enhanced_status_codes:
            reply = Reply(reply.code, None, reply.lines)
        # What _send_given does (one call fewer: this runs for nearly every reply).
        conn = self._conn
        assert conn is not None
        self._last_code = reply.code
        self._replies_sent += 1
        conn.send(reply)

    def _send_given(self, reply: Reply) -> None:
        """Send a reply a hook or user code wrote, exactly as written (COMPAT.md section 2.1)."""
        assert self._conn is not None
        self._last_code = reply.code
        self._replies_sent += 1
        self._conn.send(reply)

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        """Refuse with 503 when no HELO/EHLO came yet; True means "refused, stop here"."""
        assert self.session is not None
        if not self.session.host_name:
            self._send(replies.BAD_SEQUENCE_HELO_FIRST)
            return True
        return False

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Refuse with 530 when ``auth_required`` and not authenticated; True means refused."""
        assert self.session is not None
        if self._auth_required and not self.session.authenticated:
            self._send(replies.AUTH_REQUIRED)
            return True
        return False

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> bytes | Any:
        """Send a ``334`` challenge and return the decoded response (RFC 4954 section 4).

        Returns:
            The decoded bytes, or MISSING after this method already answered: ``*`` (the client
            cancelled: 501 5.7.0), bad base64 (501 5.5.2), an over-long line (500 5.5.6).
        """
        assert self._conn is not None and self._io is not None
        if isinstance(challenge, str):
            challenge = challenge.encode("utf-8")
        text = base64.b64encode(challenge) if encode_to_b64 else challenge
        self._conn.send_raw(b"334 " + text + b"\r\n")
        self._conn.read_auth_line()
        event = await self._io.read_event()
        if not isinstance(event, AuthLine):
            # Connection lost (or closed) mid-exchange: nothing more to say.
            raise _ExchangeAborted()
        line = event.line
        if line == b"\x00TOO-LONG":
            self._send(replies.AUTH_LINE_TOO_LONG)
            return MISSING
        if line == b"*":
            self._send(replies.AUTH_CANCELLED)
            return MISSING
        if log_client_response:
            log.debug("AUTH response received", extra={"length": len(line)})
        try:
            return decode_response(line)
        except ValueError:
            self._send(replies.AUTH_BAD_BASE64)
            return MISSING

    async def _auth_interact(self, server_message: str) -> bytes | Any:
        """Deprecated aiosmtpd helper: like challenge_auth with a ready-made ``334 ...`` line."""
        warnings.warn("_auth_interact is deprecated; use challenge_auth", DeprecationWarning,
                      stacklevel=2)
        text = server_message[4:] if server_message.startswith("334 ") else server_message
        return await self.challenge_auth(text.encode("ascii"), encode_to_b64=False)

    def _extra_info(self, name: str, default: Any = None) -> Any:
        assert self._io is not None
        return self._io.extra_info(name, default)

    # ------------------------------------------------------------------ dispatch

    def _create_session(self) -> Session:
        return Session()

    def _create_envelope(self) -> Envelope:
        return Envelope()

    async def _call_hook(self, verb: str, *args: Any) -> Any:
        """Call ``handle_<verb>``; MISSING when there is none. Errors propagate to dispatch()."""
        hook = self._hooks.commands.get(verb)
        if hook is None:
            return MISSING
        assert self._io is not None
        return await self._io.run_hook(hook, self, self.session, self.envelope, *args)

    def dispatch_now(self, event: Event) -> bool:
        """Run a transaction command at once when no user code is involved; else False.

        MAIL, RCPT, DATA and the end of the message, with no hook for them and the smtp_*
        methods not overridden, cannot suspend or fail: the reply is the default one. They are
        answered here without a coroutine (the common case for a sink, and for every RCPT of
        a handler without handle_RCPT); everything else goes through ``await dispatch()``.
        """
        kind = type(event)
        envelope = self.envelope
        if envelope is None:
            return False
        if kind is Rcpt:
            if not self._now_rcpt:
                return False
            rcpt = cast(Rcpt, event)
            self._accept_rcpt(envelope, rcpt.address, list(rcpt.options))
        elif kind is Mail:
            if not self._now_mail:
                return False
            mail = cast(Mail, event)
            envelope.smtp_utf8 = mail.smtputf8
            self._accept_mail(envelope, mail.address, list(mail.options))
        elif kind is Data:
            if not self._now_data:
                return False
            self._send(replies.START_MAIL_INPUT)
        elif kind is EndOfData:
            if not self._now_end_of_data:
                return False
            content = self._store_content(envelope, cast(EndOfData, event).content)
            self._send(replies.MESSAGE_ACCEPTED)
            self._log_message(envelope, content)
            self.envelope = self._create_envelope()
        else:
            return False
        conn = self._conn
        assert conn is not None
        conn.complete(True)
        if self._close_requested:
            conn.close()
        return True

    async def dispatch(self, event: Event) -> None:
        """Run one command event to its reply and tell the engine the outcome."""
        conn = self._conn
        assert conn is not None
        self._event = event
        self._last_code = 0
        accepted = False
        try:
            try:
                # The commands of every transaction are run here, one coroutine fewer each.
                if isinstance(event, Rcpt):
                    envelope = self.envelope
                    before = len(envelope.rcpt_tos) if envelope is not None else 0
                    await self.smtp_RCPT(event.arg)
                    accepted = self.envelope is not None and len(self.envelope.rcpt_tos) > before
                elif isinstance(event, Mail):
                    await self.smtp_MAIL(event.arg)
                    accepted = bool(self.envelope is not None and self.envelope.mail_from)
                elif isinstance(event, EndOfData):
                    await self._end_of_data(event)
                    accepted = True
                elif isinstance(event, Data):
                    await self.smtp_DATA(None)
                    accepted = self._last_code == 354
                else:
                    accepted = await self._run(event)
            except _ExchangeAborted:
                accepted = False
            except (ReplyError, Exception) as exc:  # a hook or an smtp_* method failed
                await self._handler_failed(event, exc)
        finally:
            self._event = None
        if type(event) is not ConnectionLost:
            conn.complete(accepted)
        if self._close_requested:
            conn.close()

    async def _handler_failed(self, event: Event, exc: Exception) -> None:
        assert self.session is not None
        in_auth = isinstance(event, (Auth, AuthLine))
        if isinstance(exc, ReplyError):
            log.error(
                "hook returned an invalid reply",
                extra={
                    "session_id": self.session.id,
                    "hook": f"handle_{event.verb}",
                    "problem": str(exc),
                },
            )
        else:
            log.error(
                "hook failed",
                exc_info=exc,
                extra={"session_id": self.session.id, "hook": f"handle_{event.verb}"},
            )
        status = await self._hooks.on_exception(exc) if not isinstance(exc, ReplyError) else None
        reply = replies.AUTH_HANDLER_ERROR if in_auth else replies.HANDLER_ERROR
        if status is not None and not is_missing(status):
            try:
                self._send_given(self._to_reply(status))
                return
            except ReplyError as bad:
                log.error(
                    "handle_exception returned an invalid reply",
                    extra={"session_id": self.session.id, "problem": str(bad)},
                )
        self._send(reply)

    async def _run(self, event: Event) -> bool:
        """Run the smtp_<VERB> method for the event; return whether the command took effect."""
        session = self.session
        envelope = self.envelope
        assert session is not None and envelope is not None
        if isinstance(event, Mail):
            await self.smtp_MAIL(event.arg)
            return bool(self.envelope is not None and self.envelope.mail_from)
        if isinstance(event, Rcpt):
            before = len(envelope.rcpt_tos)
            await self.smtp_RCPT(event.arg)
            return self.envelope is not None and len(self.envelope.rcpt_tos) > before
        if isinstance(event, EndOfData):
            await self._end_of_data(event)
            return True
        if isinstance(event, Data):
            await self.smtp_DATA(None)
            return self._last_code == 354
        if isinstance(event, Ehlo):
            await self.smtp_EHLO(event.hostname)
            return bool(self.session is not None and self.session.host_name)
        if isinstance(event, Helo):
            await self.smtp_HELO(event.hostname)
            return bool(self.session is not None and self.session.host_name)
        if isinstance(event, Rset):
            await self.smtp_RSET(None)
            return True
        if isinstance(event, Noop):
            await self.smtp_NOOP(event.arg)
            return True
        if isinstance(event, Quit):
            await self.smtp_QUIT(None)
            return True
        if isinstance(event, Vrfy):
            await self.smtp_VRFY(event.address)
            return True
        if isinstance(event, Help):
            await self.smtp_HELP(event.topic)
            return True
        if isinstance(event, StartTLS):
            await self.smtp_STARTTLS(None)
            return self._last_code == 220
        if isinstance(event, Auth):
            await self.smtp_AUTH(event.arg)
            return bool(self.session is not None and self.session.authenticated)
        if isinstance(event, Extension):
            method = getattr(self, f"smtp_{event.name}")
            await method(event.arg)
            return True
        raise TypeError(f"no dispatch for {event!r}")

    # ------------------------------------------------------------------ built-in commands

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            self._send(replies.HELO_SYNTAX)
            return
        session = self._new_transaction()
        session.extended_smtp = False
        status = (
            await self._call_hook("HELO", hostname)
            if "HELO" in self._hooks.commands
            else MISSING
        )
        if is_missing(status):
            session.host_name = hostname
            self._send(_hostname_reply(self.hostname, ()))
        else:
            await self.push(status)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            self._send(replies.EHLO_SYNTAX)
            return
        session = self._new_transaction()
        session.extended_smtp = True
        assert self._conn is not None
        event = self._event
        extensions = event.extensions if isinstance(event, Ehlo) else self._conn.ehlo_extensions()
        if hasattr(self, "ehlo_hook"):
            await self.ehlo_hook()
        style = self._hooks.ehlo_style
        if style is None:
            session.host_name = hostname
            self._send(_hostname_reply(self.hostname, extensions))
            return
        lines = [f"250-{self.hostname}"] + [f"250-{x}" for x in extensions[:-1]]
        lines.append(f"250 {extensions[-1]}")
        if style == "old":
            # The deprecated form: our lines go out first, the hook may push more and returns
            # the last line (aiosmtpd's order).
            assert self._conn is not None
            for line in lines[:-1]:
                self._conn.send_raw(line.encode("utf-8") + b"\r\n")
            status = await self._call_hook("EHLO", hostname)
            if is_missing(status):
                session.host_name = hostname
                status = lines[-1]
            await self.push(status)
            return
        result = await self._call_hook("EHLO", hostname, list(lines))
        if is_missing(result):
            session.host_name = hostname
            self._send(_hostname_reply(self.hostname, extensions))
            return
        if isinstance(result, str):
            await self.push(result)
            return
        if not isinstance(result, list | tuple) or not result:
            raise ReplyError("handle_EHLO must return a non-empty list of reply lines")
        self._send_given(self._to_reply("\r\n".join(str(x) for x in result)))

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        status = (
            await self._call_hook("NOOP", arg)
            if "NOOP" in self._hooks.commands
            else MISSING
        )
        self._send(replies.OK) if is_missing(status) else await self.push(status)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            self._send(replies.NO_ARGUMENTS_ALLOWED)
            return
        status = (
            await self._call_hook("QUIT")
            if "QUIT" in self._hooks.commands
            else MISSING
        )
        self._send(replies.BYE) if is_missing(status) else await self.push(status)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            self._send(replies.VRFY_SYNTAX)
            return
        status = await self._call_hook("VRFY", arg)
        self._send(replies.VRFY_CANNOT) if is_missing(status) else await self.push(status)

    @syntax("EXPN <list>")
    async def smtp_EXPN(self, arg: str | None) -> None:
        self._send(replies.EXPN_NOT_IMPLEMENTED)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str | None) -> None:
        assert self.session is not None
        if arg:
            method = getattr(self, f"smtp_{arg.upper()}", None) if arg.isalpha() else None
            text = getattr(method, "__smtp_syntax__", None)
            if method is None or text is None or not self._syntax_available(method):
                self._send(replies.HELP_UNKNOWN_TOPIC)
                return
            extended = getattr(method, "__smtp_syntax_extended__", None)
            if self.session.extended_smtp and extended:
                text += extended
            self._send(Reply(214, "2.0.0", (f"Syntax: {text}",)))
            return
        names = sorted(
            a[5:] for a in dir(self)
            if a.startswith("smtp_") and self._syntax_available(getattr(self, a))
        )
        self._send(Reply(214, "2.0.0", ("Supported commands: " + " ".join(names),)))

    def _syntax_available(self, method: object) -> bool:
        if getattr(method, "__smtp_syntax__", None) is None:
            return False
        when = getattr(method, "__smtp_syntax_when__", None)
        return not when or bool(getattr(self, when, None))

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        event = self._event
        assert isinstance(event, Mail) and self.envelope is not None
        envelope = self.envelope
        options = list(event.options)
        envelope.smtp_utf8 = event.smtputf8
        status = (
            await self._call_hook("MAIL", event.address, options)
            if "MAIL" in self._hooks.commands
            else MISSING
        )
        if is_missing(status):
            self._accept_mail(envelope, event.address, options)
        else:
            await self.push(status)

    def _accept_mail(self, envelope: Envelope, address: str, options: list[str]) -> None:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self._send(replies.SENDER_OK)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        event = self._event
        assert isinstance(event, Rcpt) and self.envelope is not None
        envelope = self.envelope
        options = list(event.options)
        status = (
            await self._call_hook("RCPT", event.address, options)
            if "RCPT" in self._hooks.commands
            else MISSING
        )
        if is_missing(status):
            self._accept_rcpt(envelope, event.address, options)
        else:
            await self.push(status)

    def _accept_rcpt(self, envelope: Envelope, address: str, options: list[str]) -> None:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        self._send(replies.RECIPIENT_OK)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            self._send(replies.NO_ARGUMENTS_ALLOWED)
            return
        self.envelope = self._create_envelope()
        if hasattr(self, "rset_hook"):
            await self.rset_hook()
        status = (
            await self._call_hook("RSET")
            if "RSET" in self._hooks.commands
            else MISSING
        )
        self._send(replies.OK) if is_missing(status) else await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if arg:
            self._send(replies.NO_ARGUMENTS_ALLOWED)
            return
        self._send(replies.START_MAIL_INPUT)

    async def _end_of_data(self, event: EndOfData) -> None:
        envelope = self.envelope
        assert envelope is not None and self.session is not None
        content = self._store_content(envelope, event.content)
        try:
            if "DATA" in self._hooks.commands:
                status = await self._call_hook("DATA")
            elif self._hooks.process_message is not None:
                assert self._io is not None
                status = await self._io.run_hook(
                    self._hooks.process_message,
                    self.session.peer,
                    envelope.mail_from,
                    envelope.rcpt_tos,
                    envelope.content,
                )
                status = MISSING if status is None else status
            else:
                status = MISSING
            if is_missing(status):
                self._send(replies.MESSAGE_ACCEPTED)
            else:
                await self.push(status)
            self._log_message(envelope, content)
        finally:
            # The transaction is over with any end-of-data reply (RFC 5321 section 3.3).
            self.envelope = self._create_envelope()

    def _store_content(self, envelope: Envelope, content: bytes) -> bytes:
        """Put the message into the envelope: bytes, or str when ``decode_data`` is on."""
        envelope.original_content = content
        if self._decode_data:
            if self.enable_SMTPUTF8:
                envelope.content = content.decode("utf-8", "surrogateescape")
            else:
                envelope.content = content.decode("ascii")
        else:
            envelope.content = content
        return content

    def _log_message(self, envelope: Envelope, content: bytes) -> None:
        if log.isEnabledFor(logging.INFO):
            assert self.session is not None
            log.info(
                "message received" if self._last_code < 400 else "message refused by handler",
                extra={
                    "session_id": self.session.id,
                    "size": len(content),
                    "rcpts": len(envelope.rcpt_tos),
                    "code": self._last_code,
                },
            )

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            self._send(replies.NO_ARGUMENTS_ALLOWED)
            return
        self._send(replies.READY_TO_START_TLS)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        event = self._event
        assert isinstance(event, Auth) and self.session is not None
        args = [event.mechanism] + ([event.initial_response] if event.initial_response else [])
        if "AUTH" in self._hooks.commands:
            status = await self._call_hook("AUTH", list(args))
            if status is None:
                return
            if not is_missing(status):
                await self.push(status)
                return
        method = self._auth_mechanisms().get(event.mechanism)
        if method is None:
            self._send(replies.UNKNOWN_MECHANISM)
            return
        assert self._io is not None
        result = await self._io.run_hook(method, self, list(args))
        self._apply_auth_result(result)

    def _apply_auth_result(self, result: Any) -> None:
        session = self.session
        assert session is not None
        if isinstance(result, AuthResult):
            if result.success:
                session.authenticated = True
                session.auth_data = result.auth_data
                session._login_data = getattr(result.auth_data, "login", result.auth_data)
                if result.message:
                    self._send_given(self._to_reply(result.message))
                else:
                    self._send(replies.AUTH_SUCCESS)
            elif not result.handled:
                message = result.message
                if message:
                    self._send_given(self._to_reply(message))
                else:
                    self._send(replies.AUTH_FAILED)
            return
        if result is None:
            return
        if is_missing(result) or result is False:
            self._send(replies.AUTH_FAILED)
            return
        session.authenticated = True
        session._login_data = result
        session.auth_data = result
        self._send(replies.AUTH_SUCCESS)

    async def _check_credentials(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        pair = LoginPassword(login, password)
        authenticator = self.options.authenticator
        if authenticator is not None:
            assert self._io is not None
            before = self._replies_sent
            result = await self._io.run_hook(
                authenticator, self, self.session, self.envelope, mechanism, pair
            )
            if isinstance(result, AuthResult):
                if not result.success and result.handled and self._replies_sent == before:
                    # "Handled" but nothing was said: the client would wait for ever.
                    return AuthResult(success=False, handled=False, message=result.message)
                return result
            return AuthResult(success=bool(result), handled=False, auth_data=pair)
        callback = self.options.auth_callback
        if callback is not None:
            ok = bool(callback(mechanism, login, password))
            return AuthResult(success=ok, handled=False, auth_data=pair)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> Any:
        """RFC 4616: ``authzid NUL authcid NUL passwd``, in the initial response or after 334."""
        if len(args) > 1:
            try:
                blob = decode_response(args[1].encode("ascii", "replace"))
            except ValueError:
                self._send(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        else:
            response = await self.challenge_auth("", encode_to_b64=False)
            if is_missing(response):
                return AuthResult(success=False, handled=True)
            blob = response
        try:
            _authzid, login, password = decode_plain(blob)
        except ValueError:
            self._send(replies.AUTH_MALFORMED)
            return AuthResult(success=False, handled=True)
        return await self._check_credentials("PLAIN", login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> Any:
        """The LOGIN mechanism: user name and password in two base64 rounds."""
        if len(args) > 1:
            try:
                login = decode_response(args[1].encode("ascii", "replace"))
            except ValueError:
                self._send(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        else:
            response = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if is_missing(response):
                return AuthResult(success=False, handled=True)
            login = response
        response = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if is_missing(response):
            return AuthResult(success=False, handled=True)
        return await self._check_credentials("LOGIN", login, response)

    # ------------------------------------------------------------------ helpers

    def _new_transaction(self) -> Session:
        """HELO/EHLO start over: a fresh envelope (RFC 5321 section 4.1.4)."""
        self.envelope = self._create_envelope()
        assert self.session is not None
        return self.session


@lru_cache(maxsize=64)
def _hostname_reply(hostname: str, extensions: tuple[str, ...]) -> Reply:
    """The default HELO/EHLO reply; the same few are sent on every connection, so cache them."""
    return Reply(250, None, (hostname, *extensions))


class _ExchangeAborted(Exception):
    """The client went away in the middle of an AUTH exchange."""


SMTP._register_commands()

#: SMTP's own methods that dispatch_now() stands in for, as defined here.
_DEFAULTS: dict[str, object] = {
    name: SMTP.__dict__[name]
    for name in (
        "dispatch", "smtp_MAIL", "smtp_RCPT", "smtp_DATA", "_end_of_data", "_create_envelope"
    )
}


def _is_default(cls: type, name: str) -> bool:
    return getattr(cls, name) is _DEFAULTS[name]

