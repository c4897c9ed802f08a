r"""In-process SMTP servers for testing code that sends mail, and a scripted trio client.

Two servers share one API (``messages``, ``faults``, ``transcript``, ``assert_sent``,
``clear``): :class:`ThreadedTestServer` runs in a background thread (for synchronous code, any
test runner), :class:`TrioTestServer` runs inside the caller's trio run, opened with
:func:`open_trio_test_server` (no threads, so ``autojump_clock`` skips injected delays). The
pytest fixtures of ``smtptrio.pytest_plugin`` are thin wrappers over these.

What a test server adds to ``smtptrio.serve``:

- every accepted message, parsed into a :class:`ReceivedMessage` (an ``EmailMessage``) with the
  SMTP envelope attached as ``.envelope`` (:class:`ReceivedEnvelope`);
- :class:`Faults`: chosen replies, dropped connections and delays at chosen commands, to test a
  client's retry and error paths;
- a :class:`Transcript` of every connection as the wire saw it (``C:`` / ``S:`` lines, message
  text summarised, AUTH secrets hidden), which the pytest plugin prints for a failing test;
- TLS with a throw-away certificate authority (``trustme``) and the CA file for the client.

How the recording works: the transcript is taken where the server feeds the protocol engine,
above TLS, so STARTTLS and implicit TLS sessions are recorded in clear text. The server has no
public hook there yet, so :class:`_RecordingSMTP` (an ``SMTP`` subclass, passed as
``smtp_class``) swaps the connection's engine for a recording proxy when its first session is
created. Faults use only the ``smtp_<VERB>`` override points and the ``handle_DATA`` hook.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import email
import email.errors
import email.header
import email.policy
import hmac
import os
import re
import shutil
import ssl
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from email.message import EmailMessage
from functools import partial
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, final

import trio

from smtptrio.protocol.events import CLOSED, ConnectionLost, Event, Sentinel
from smtptrio.protocol.replies import Reply, ReplySyntaxError
from smtptrio.server.serve import serve
from smtptrio.server.session import MISSING, AuthResult, Envelope, LoginPassword, Session
from smtptrio.server.smtp import SMTP

if TYPE_CHECKING:
    from smtptrio.controller import Controller
    from smtptrio.protocol.connection import Connection
    from smtptrio.server.serve import RunningServer

__all__ = [
    "ClientReply",
    "ConnectionTranscript",
    "Fault",
    "Faults",
    "ReceivedEnvelope",
    "ReceivedMessage",
    "RecordingHandler",
    "SMTPClient",
    "SMTPClientError",
    "ServerConfig",
    "TLSSetupError",
    "ThreadedTestServer",
    "Transcript",
    "TrioTestServer",
    "open_trio_test_server",
]

TLSMode = Literal["starttls", "smtps"]

_TLS_MODES: Final = ("starttls", "smtps")
_DEFAULT_SIZE_LIMIT: Final = 33554432
#: Seconds a threaded server lets open transactions finish when it stops.
_STOP_GRACE: Final = 1.0


# ============================================================================ configuration


class TLSSetupError(RuntimeError):
    """TLS was asked for but cannot be set up: trustme is missing, or a certificate is bad."""


def _frozen_users(users: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(users, Mapping):
        raise TypeError(f"users must be a mapping of user name to password, got {users!r}")
    for name, password in users.items():
        if not isinstance(name, str) or not isinstance(password, str):
            raise TypeError("users must map str user names to str passwords")
    return MappingProxyType(dict(users))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How a test server is set up; the fields are the ``smtp_server`` marker's keywords.

    Every field has a default that gives a plain server on ``127.0.0.1`` and a free port, so a
    test names only what it cares about. :meth:`from_env` reads smtpdfix's ``SMTPD_*``
    variables; :meth:`replace` checks names and values.
    """

    #: The address to bind. ``SMTPD_HOST``.
    host: str = "127.0.0.1"
    #: 0 picks a free port (safe with pytest-xdist). ``SMTPD_PORT``.
    port: int = 0
    #: None: plain SMTP; ``"starttls"``: STARTTLS offered; ``"smtps"``: implicit TLS (port 465
    #: style). ``SMTPD_USE_STARTTLS``, ``SMTPD_USE_SSL``.
    tls: TLSMode | None = None
    #: Refuse everything but EHLO/NOOP/RSET/QUIT/STARTTLS before STARTTLS
    #: (needs ``tls="starttls"``).
    require_starttls: bool = False
    #: Accepted AUTH PLAIN/LOGIN credentials, ``{"alice": "secret"}``.
    #: ``SMTPD_LOGIN_NAME`` and ``SMTPD_LOGIN_PASSWORD``.
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: MAIL, RCPT, DATA, VRFY and HELP get ``530`` until AUTH succeeded. ``SMTPD_ENFORCE_AUTH``.
    auth_required: bool = False
    #: AUTH only once TLS is on. None: True when ``tls`` is set, else False (so that a plain
    #: server with ``users`` offers AUTH). ``SMTPD_AUTH_REQUIRE_TLS``.
    auth_require_tls: bool | None = None
    #: Largest message in octets (advertised as SIZE); None or 0: unlimited.
    size_limit: int | None = _DEFAULT_SIZE_LIMIT
    #: Offer SMTPUTF8 (RFC 6531); on by default, as in aiosmtpd's controller.
    smtputf8: bool = True
    #: Your own certificate (PEM) instead of a generated one. ``SMTPD_SSL_CERTIFICATE_FILE``.
    certfile: str | None = None
    #: The key of ``certfile`` when it is not in the same file. ``SMTPD_SSL_KEY_FILE``.
    keyfile: str | None = None
    #: The CA that signed ``certfile``; default: ``certfile`` itself (self-signed).
    ca_file: str | None = None
    #: The name in the greeting and the EHLO reply (never looked up in DNS).
    server_name: str = "localhost"
    #: Seconds a threaded server may take to start listening. ``SMTPD_READY_TIMEOUT``.
    ready_timeout: float = 10.0
    #: Any other :func:`smtptrio.serve` option, e.g. ``{"timeout": 5}``.
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", _frozen_users(self.users))
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options must be a mapping of server options, got {self.options!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.tls not in (None, *_TLS_MODES):
            raise ValueError(f"tls must be None, 'starttls' or 'smtps', got {self.tls!r}")
        if self.require_starttls and self.tls != "starttls":
            raise ValueError("require_starttls=True needs tls='starttls'")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port!r}")
        if self.size_limit is not None and (
            isinstance(self.size_limit, bool)
            or not isinstance(self.size_limit, int)
            or self.size_limit < 0
        ):
            raise ValueError(f"size_limit must be None or an integer >= 0, got {self.size_limit!r}")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        for name in ("host", "server_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        for name in ("require_starttls", "auth_required", "smtputf8"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        reserved = sorted(set(self.options) & _OWN_SERVER_OPTIONS)
        if reserved:
            raise ValueError(
                f"set {', '.join(reserved)} through the config, not options= "
                "(they are part of how the test server works)"
            )

    @property
    def effective_auth_require_tls(self) -> bool:
        """``auth_require_tls`` with None resolved."""
        if self.auth_require_tls is None:
            return self.tls is not None
        return self.auth_require_tls

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` applied.

        Raises:
            TypeError: for an unknown field name (the message lists the valid ones).
            ValueError: for a bad value.
        """
        unknown = sorted(set(changes) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(
                f"unknown smtp_server option(s): {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(_CONFIG_FIELDS))}"
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """The defaults overridden by the ``SMTPD_*`` variables smtpdfix reads.

        ``SMTPD_HOST``, ``SMTPD_PORT``, ``SMTPD_READY_TIMEOUT``, ``SMTPD_LOGIN_NAME``,
        ``SMTPD_LOGIN_PASSWORD``, ``SMTPD_ENFORCE_AUTH``, ``SMTPD_AUTH_REQUIRE_TLS``,
        ``SMTPD_SSL_CERTIFICATE_FILE``, ``SMTPD_SSL_KEY_FILE``, ``SMTPD_USE_STARTTLS``,
        ``SMTPD_USE_SSL`` (or ``SMTPD_USE_TLS``). Booleans take 1/0, true/false, yes/no, on/off.
        A login name without a password gets ``"password"`` and the reverse gets ``"user"``,
        smtpdfix's defaults. Unlike smtpdfix, no user exists unless one of them is set.

        Raises:
            ValueError: naming the variable, for a value that cannot be read.
        """
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        if env.get("SMTPD_HOST"):
            changes["host"] = env["SMTPD_HOST"]
        if env.get("SMTPD_PORT"):
            changes["port"] = _env_number(env, "SMTPD_PORT", int)
        if env.get("SMTPD_READY_TIMEOUT"):
            changes["ready_timeout"] = _env_number(env, "SMTPD_READY_TIMEOUT", float)
        login, password = env.get("SMTPD_LOGIN_NAME"), env.get("SMTPD_LOGIN_PASSWORD")
        if login or password:
            changes["users"] = {login or "user": password or "password"}
        if env.get("SMTPD_ENFORCE_AUTH"):
            changes["auth_required"] = _env_bool(env, "SMTPD_ENFORCE_AUTH")
        if env.get("SMTPD_AUTH_REQUIRE_TLS"):
            changes["auth_require_tls"] = _env_bool(env, "SMTPD_AUTH_REQUIRE_TLS")
        if env.get("SMTPD_SSL_CERTIFICATE_FILE"):
            changes["certfile"] = env["SMTPD_SSL_CERTIFICATE_FILE"]
        if env.get("SMTPD_SSL_KEY_FILE"):
            changes["keyfile"] = env["SMTPD_SSL_KEY_FILE"]
        starttls = bool(env.get("SMTPD_USE_STARTTLS")) and _env_bool(env, "SMTPD_USE_STARTTLS")
        smtps = any(
            bool(env.get(name)) and _env_bool(env, name)
            for name in ("SMTPD_USE_SSL", "SMTPD_USE_TLS")
        )
        if starttls and smtps:
            raise ValueError("SMTPD_USE_STARTTLS and SMTPD_USE_SSL cannot both be on")
        if starttls:
            changes["tls"] = "starttls"
        elif smtps:
            changes["tls"] = "smtps"
        try:
            return cls(**changes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"SMTPD_* environment variables: {exc}") from None


_CONFIG_FIELDS: Final = frozenset(f.name for f in fields(ServerConfig))
#: Server options the test server sets itself.
_OWN_SERVER_OPTIONS: Final = frozenset(
    {
        "smtp_class",
        "ssl_context",
        "tls_context",
        "authenticator",
        "hostname",
        "data_size_limit",
        "enable_SMTPUTF8",
        "require_starttls",
        "auth_required",
        "auth_require_tls",
    }
)
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"0", "false", "f", "no", "n", "off"})


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    value = env[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={env[name]!r} is not a boolean (use 1/0, true/false, yes/no)")


def _env_number(env: Mapping[str, str], name: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not a number") from None


# ============================================================================ certificates


@final
class _Authority:
    """A throw-away CA (trustme) and the certificates it issued, one per process."""

    _lock = threading.Lock()
    _instance: _Authority | None = None

    def __init__(self) -> None:
        try:
            import trustme
        except ImportError as exc:
            raise TLSSetupError(
                "the SMTP test server needs trustme to make a TLS certificate: "
                "pip install trustme (it is in smtptrio's 'test' extra), "
                "or give certfile= (and keyfile=) to use your own"
            ) from exc
        self._ca = trustme.CA(organization_name="smtptrio test CA")
        self._dir = tempfile.mkdtemp(prefix="smtptrio-test-ca-")
        atexit.register(shutil.rmtree, self._dir, ignore_errors=True)
        self.ca_file = os.path.join(self._dir, "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        self._issued: dict[tuple[str, ...], Any] = {}

    @classmethod
    def get(cls) -> _Authority:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def server_context(self, names: tuple[str, ...]) -> ssl.SSLContext:
        with self._lock:
            cert = self._issued.get(names)
            if cert is None:
                cert = self._issued[names] = self._ca.issue_cert(*names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx


def _tls_setup(config: ServerConfig) -> tuple[ssl.SSLContext, str | None]:
    """The server context for ``config`` and the CA file a client should trust."""
    if config.certfile is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(
                f"cannot load certfile={config.certfile!r} keyfile={config.keyfile!r}: {exc}"
            ) from exc
        return ctx, config.ca_file or config.certfile
    authority = _Authority.get()
    names = tuple(dict.fromkeys(("localhost", "127.0.0.1", "::1", config.host, config.server_name)))
    return authority.server_context(names), authority.ca_file


# ============================================================================ messages


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedEnvelope:
    """What the SMTP session said about one accepted message, beside its content."""

    #: The client's socket address, ``(host, port)``.
    peer: Any
    #: What the client gave in HELO/EHLO.
    helo: str | None
    #: MAIL FROM address; ``"<>"`` for the null sender.
    mail_from: str | None
    #: RCPT TO addresses, in order (Bcc recipients included).
    rcpt_tos: tuple[str, ...]
    #: MAIL parameters, upper-cased: ``("SIZE=1234", "BODY=8BITMIME")``.
    mail_options: tuple[str, ...]
    #: RCPT parameters of all recipients, upper-cased (``NOTIFY=SUCCESS`` ...).
    rcpt_options: tuple[str, ...]
    #: MAIL carried SMTPUTF8.
    smtputf8: bool
    #: The session was encrypted (STARTTLS or implicit TLS).
    tls: bool
    #: The AUTH login name, or None without AUTH.
    auth_user: str | None
    #: The message as received: CRLF line ends, dot-unstuffed.
    raw: bytes
    #: The server's session id (also in its log lines).
    session_id: str


class ReceivedMessage(EmailMessage):
    """An accepted message, parsed with ``email.policy.default``, with ``.envelope`` attached.

    As aiosmtpd's ``Message`` handler (and so smtpdfix) does, the parsed message also gets
    ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` headers; ``envelope.raw`` is untouched. Parts
    of a multipart message are of this class too, but only the top one has ``.envelope``.
    """

    envelope: ReceivedEnvelope


def _auth_user(session: Session) -> str | None:
    if not session.authenticated:
        return None
    data = session.auth_data
    login = data.login if isinstance(data, LoginPassword) else data
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return None if login is None else str(login)


def _parse_message(session: Session, envelope: Envelope) -> ReceivedMessage:
    raw = envelope.original_content or b""
    received = ReceivedEnvelope(
        peer=session.peer,
        helo=session.host_name,
        mail_from=envelope.mail_from,
        rcpt_tos=tuple(envelope.rcpt_tos),
        mail_options=tuple(envelope.mail_options),
        rcpt_options=tuple(envelope.rcpt_options),
        smtputf8=envelope.smtp_utf8,
        tls=session.ssl is not None,
        auth_user=_auth_user(session),
        raw=raw,
        session_id=session.id,
    )
    message = email.message_from_bytes(raw, ReceivedMessage, policy=email.policy.default)
    assert isinstance(message, ReceivedMessage)
    message["X-Peer"] = str(session.peer)
    message["X-MailFrom"] = envelope.mail_from or ""
    message["X-RcptTo"] = ", ".join(envelope.rcpt_tos)
    message.envelope = received
    return message


def _subject_of(message: EmailMessage) -> str | None:
    try:
        value = message.get("Subject")
    except (ValueError, IndexError):  # a header the default policy cannot parse
        return None
    return None if value is None else str(value)


def _describe(message: ReceivedMessage) -> str:
    env = message.envelope
    to = ", ".join(env.rcpt_tos) or "nobody"
    extra = "".join(
        [" (TLS)" if env.tls else "", f" (AUTH {env.auth_user})" if env.auth_user else ""]
    )
    return f"from {env.mail_from or '<>'} to {to}, subject {_subject_of(message)!r}{extra}"


def _split_address(address: str) -> tuple[str, str]:
    address = address.strip().removeprefix("<").removesuffix(">")
    local, at, domain = address.rpartition("@")
    return (local, domain.casefold()) if at else (address, "")


def _same_address(a: str, b: str) -> bool:
    """Domains compare case-insensitively, local parts exactly (RFC 5321 section 2.4)."""
    return _split_address(a) == _split_address(b)


def _text_of(message: EmailMessage) -> str:
    texts: list[str] = []
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        try:
            content = part.get_content()
        except (LookupError, ValueError, KeyError):
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        if isinstance(content, str):
            texts.append(content)
    return "\n".join(texts)


# ============================================================================ faults

#: Where a fault can act. "DATA" is the reply after the message text; "DATA-COMMAND" the reply
#: to the DATA command itself (normally 354); "MID-DATA" while the message text arrives.
_POINTS: Final = frozenset(
    {
        "CONNECT",
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA-COMMAND",
        "MID-DATA",
        "DATA",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "HELP",
        "STARTTLS",
        "AUTH",
    }
)
_REPLY_POINTS: Final = _POINTS - {"MID-DATA"}
_DELAY_POINTS: Final = _POINTS - {"CONNECT", "MID-DATA"}


def _point(name: str, allowed: frozenset[str], kind: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"the command must be a string, got {name!r}")
    point = name.strip().upper()
    if point not in allowed:
        raise ValueError(f"cannot {kind} at {name!r}; choose one of {', '.join(sorted(allowed))}")
    return point


def _check_count(name: str, value: int | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}"
        )


@final
class Fault:
    """One injected misbehaviour; the return value of the :class:`Faults` methods.

    It acts on occurrences ``nth``, ``nth + 1``, ... ``nth + times - 1`` of its command,
    counted from when it was added, over every connection of the server (``times=None``: every
    occurrence from ``nth`` on). Commands are counted once the server accepted their syntax and
    order, so a RCPT before MAIL (refused with 503) does not count.
    """

    __slots__ = ("_seen", "fired", "kind", "nth", "point", "reply", "seconds", "times")

    def __init__(
        self,
        kind: str,
        point: str,
        *,
        nth: int,
        times: int | None,
        reply: str | None = None,
        seconds: float = 0.0,
    ) -> None:
        #: "reply", "disconnect" or "delay".
        self.kind = kind
        #: The command (upper case) or point ("CONNECT", "MID-DATA", "DATA").
        self.point = point
        self.nth = nth
        self.times = times
        #: The reply sent instead of the normal one (kind "reply").
        self.reply = reply
        #: How long the reply is held back (kind "delay").
        self.seconds = seconds
        #: How many times it acted so far.
        self.fired = 0
        self._seen = 0

    def _applies(self) -> bool:
        """Count one occurrence; True when this one is in the fault's range."""
        self._seen += 1
        if self._seen < self.nth:
            return False
        if self.times is not None and self._seen >= self.nth + self.times:
            return False
        self.fired += 1
        return True

    def __repr__(self) -> str:
        what = {
            "reply": f"reply {self.reply!r}",
            "disconnect": "disconnect",
            "delay": f"delay {self.seconds} s",
        }[self.kind]
        times = "every time" if self.times is None else f"{self.times} time(s)"
        return f"<Fault {what} at {self.point} #{self.nth}, {times}, fired {self.fired}>"


@dataclass(slots=True)
class _Action:
    delay: float = 0.0
    disconnect: bool = False
    reply: str | None = None
    notes: list[str] = field(default_factory=list)


@final
class Faults:
    """Make the server misbehave on purpose: replies, dropped connections, delays.

    ``server.faults.reply("MAIL", "421 4.3.2 try later", nth=2)`` answers the second MAIL with
    421 (and, 421 being a closing reply, closes the session). The command is not carried out:
    no sender is set, no recipient added, no message kept. Faults are checked in the order they
    were added; delays add up, and the first reply or disconnect wins.

    Points: ``CONNECT`` (the greeting), ``HELO``, ``EHLO``, ``MAIL``, ``RCPT``,
    ``DATA-COMMAND`` (the DATA command, normally answered 354), ``MID-DATA`` (while the message
    text arrives: disconnect only), ``DATA`` (the reply after the message text), ``RSET``,
    ``NOOP``, ``QUIT``, ``VRFY``, ``HELP``, ``STARTTLS``, ``AUTH``.

    Thread-safe: a test adds faults while the threaded server reads them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def reply(self, command: str, reply: str, *, nth: int = 1, times: int | None = 1) -> Fault:
        """Answer ``command`` with ``reply`` (a 4xx or 5xx reply) instead of carrying it out.

        At ``CONNECT`` the reply replaces the 220 greeting and the server closes the connection
        after it. ``DATA`` means the reply to the message text (the message is not kept).

        Raises:
            ValueError: for an unknown command, a reply that is not 4xx/5xx or not ASCII.
        """
        point = _point(command, _REPLY_POINTS, "reply")
        if not isinstance(reply, str) or not reply.isascii():
            raise ValueError(f"the reply must be an ASCII string, got {reply!r}")
        try:
            parsed = Reply.parse(reply)
        except ReplySyntaxError as exc:
            raise ValueError(f"not an SMTP reply: {reply!r} ({exc})") from None
        if parsed.code < 400:
            raise ValueError(
                f"a reply fault must be a 4xx or 5xx reply, got {parsed.code}: a positive reply "
                "to a command the server did not carry out would desynchronise the session"
            )
        return self._add(Fault("reply", point, nth=nth, times=times, reply=reply))

    def disconnect(self, at: str, *, nth: int = 1, times: int | None = 1) -> Fault:
        """Drop the connection at ``at`` without a reply (replies already due are still sent).

        ``at="MID-DATA"`` drops it when the first bytes of message text arrive; ``at="DATA"``
        once the whole text arrived, before the reply (the message is not kept).
        """
        point = _point(at, _POINTS, "disconnect")
        return self._add(Fault("disconnect", point, nth=nth, times=times))

    def delay(self, command: str, seconds: float, *, nth: int = 1, times: int | None = 1) -> Fault:
        """Hold the reply to ``command`` back for ``seconds`` (``trio.sleep``: under
        ``autojump_clock`` in a trio test, no real time passes)."""
        point = _point(command, _DELAY_POINTS, "delay")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        return self._add(Fault("delay", point, nth=nth, times=times, seconds=float(seconds)))

    def refuse_tls(
        self,
        reply: str = "454 4.7.0 TLS not available due to temporary reason",
        *,
        nth: int = 1,
        times: int | None = None,
    ) -> Fault:
        """Answer STARTTLS with ``reply`` (every time by default: ``times=None``)."""
        return self.reply("STARTTLS", reply, nth=nth, times=times)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._faults))

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)

    def __repr__(self) -> str:
        return f"<Faults {list(self)!r}>"

    def _add(self, fault: Fault) -> Fault:
        _check_count("nth", fault.nth, allow_none=False)
        _check_count("times", fault.times, allow_none=True)
        with self._lock:
            self._faults.append(fault)
        return fault

    def _match(self, point: str) -> _Action | None:
        """Count one occurrence of ``point``; what the faults that apply to it ask for."""
        with self._lock:
            candidates = [f for f in self._faults if f.point == point]
            if not candidates:
                return None
            action = _Action()
            for fault in candidates:
                if not fault._applies():
                    continue
                if fault.kind == "delay":
                    action.delay += fault.seconds
                    action.notes.append(f"fault: {point} reply delayed by {fault.seconds:g} s")
                elif action.reply is None and not action.disconnect:
                    if fault.kind == "disconnect":
                        action.disconnect = True
                        action.notes.append(f"fault: server drops the connection at {point}")
                    else:
                        action.reply = fault.reply
                        action.notes.append(f"fault: {point} answered with {fault.reply!r}")
            if not action.notes:
                return None
            return action


# ============================================================================ transcript

_MAX_LINES: Final = 5000
_MAX_LINE_CHARS: Final = 300
_BODY_HEAD: Final = 16384
_SUBJECT: Final = re.compile(r"(?im)^subject:[ \t]*(.*(?:\r\n[ \t].*)*)")


def _shown(line: bytes) -> str:
    text = line.decode("utf-8", "backslashreplace")
    if len(text) > _MAX_LINE_CHARS:
        text = text[:_MAX_LINE_CHARS] + f"... ({len(line)} bytes)"
    return text


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unknown peer" if peer is None else str(peer)


@final
class ConnectionTranscript:
    """The dialogue of one connection, as lines: ``C:`` client, ``S:`` server, ``*`` notes."""

    def __init__(self, number: int, peer: Any, mode: str, lock: threading.Lock) -> None:
        self.number = number
        self.peer = peer
        #: "plain" or "implicit TLS".
        self.mode = mode
        self.closed = False
        self._lock = lock
        self._lines: list[str] = []
        self._dropped_lines = 0
        self._client = b""
        self._server = b""
        self._auth_pending = False
        self._in_body = False
        self._body_tail = b""
        self._body_size = 0
        self._body_lines = 0
        self._body_head = bytearray()

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def text(self) -> str:
        with self._lock:
            head = f"--- connection {self.number} from {_peer_text(self.peer)} ({self.mode}) ---"
            lines = [head, *self._lines]
            if self._dropped_lines:
                lines.append(f"* ... {self._dropped_lines} more lines not recorded")
            return "\n".join(lines)

    def note(self, text: str) -> None:
        self._add(f"* {text}")

    def _add(self, line: str) -> None:
        with self._lock:
            if len(self._lines) < _MAX_LINES:
                self._lines.append(line)
            else:
                self._dropped_lines += 1

    def _clear(self) -> None:
        with self._lock:
            self._lines = ["* (earlier lines removed by clear())"]
            self._dropped_lines = 0

    # ---------------------------------------------------------------- client side

    def client(self, data: bytes) -> None:
        if not data:
            self.note("client closed the connection")
            return
        if self._in_body:
            data = self._body(data)
            if self._in_body or not data:
                return
        # Message text starts only after the server's 354, so the rest is command lines.
        self._client += data
        *lines, self._client = self._client.split(b"\r\n")
        for line in lines:
            self._client_line(line)
        if len(self._client) > 65536:
            self._add(f"C: {_shown(self._client)} (no CRLF yet)")
            self._client = b""

    def _client_line(self, line: bytes) -> None:
        if self._auth_pending:
            self._auth_pending = False
            self._add("C: <AUTH response hidden>")
            return
        verb, _, arg = line.partition(b" ")
        if verb.upper() == b"AUTH":
            mechanism, _, secret = arg.strip().partition(b" ")
            shown = f"AUTH {_shown(mechanism)}" + (" <hidden>" if secret else "")
            self._add(f"C: {shown}")
            return
        self._add(f"C: {_shown(line)}")

    def _start_body(self) -> None:
        self._in_body = True
        self._body_tail = b"\r\n"  # the CRLF that ended the DATA line
        self._body_size = 0
        self._body_lines = 0
        self._body_head = bytearray()

    def _body(self, chunk: bytes) -> bytes:
        """Account for message text; return what follows the terminating CRLF.CRLF, if any."""
        window = self._body_tail + chunk
        end = window.find(b"\r\n.\r\n")
        if end < 0:
            self._count_body(chunk)
            self._body_tail = window[-4:]
            return b""
        # The dot sits at window[end + 2]; the text before it (its CRLF included) is the body.
        in_chunk = end + 2 - len(self._body_tail)
        self._count_body(chunk[: max(in_chunk, 0)])
        if in_chunk < 0:
            self._body_size += in_chunk  # the dot came at the end of the previous chunk
        self._in_body = False
        self._add(f"C: <{self._body_summary()}>")
        self._add("C: .")
        return chunk[in_chunk + 3 :]

    def _count_body(self, part: bytes) -> None:
        self._body_size += len(part)
        self._body_lines += part.count(b"\n")
        if len(self._body_head) < _BODY_HEAD:
            self._body_head += part[: _BODY_HEAD - len(self._body_head)]

    def _body_summary(self) -> str:
        summary = f"message text: {self._body_size} bytes, {self._body_lines} lines"
        head = bytes(self._body_head).split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        found = _SUBJECT.search(head)
        if found:
            value = re.sub(r"\r\n[ \t]+", " ", found.group(1)).strip()
            try:
                value = str(email.header.make_header(email.header.decode_header(value)))
            except (LookupError, ValueError, email.errors.HeaderParseError):
                pass
            summary += f", Subject: {value[:120]!r}"
        return summary

    def body_cut(self, size: int) -> None:
        """Message text arrived and the connection was dropped before its end."""
        self._add(f"C: <{size} bytes of message text>")
        self._in_body = False

    # ---------------------------------------------------------------- server side

    def server(self, data: bytes) -> None:
        self._server += data
        for _ in range(data.count(b"\n") + 1):
            end = self._server.find(b"\r\n")
            if end < 0:
                return
            line, self._server = self._server[:end], self._server[end + 2 :]
            self._add(f"S: {_shown(line)}")
            final = line[3:4] in (b" ", b"")
            if final:
                code = line[:3]
                self._auth_pending = code == b"334"
                if code == b"354":
                    self._start_body()


@final
class Transcript:
    """Every connection a test server served, oldest first; ``str()`` gives the whole text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[ConnectionTranscript] = []
        self._count = 0

    @property
    def connections(self) -> list[ConnectionTranscript]:
        with self._lock:
            return list(self._connections)

    def text(self) -> str:
        """The transcript of every connection, or "" when there was none."""
        return "\n".join(c.text() for c in self.connections)

    __str__ = text

    def clear(self) -> None:
        """Forget finished connections; open ones keep only what comes next."""
        with self._lock:
            self._connections = [c for c in self._connections if not c.closed]
            open_ones = list(self._connections)
        for connection in open_ones:
            connection._clear()

    def _open(self, peer: Any, mode: str) -> ConnectionTranscript:
        with self._lock:
            self._count += 1
            connection = ConnectionTranscript(self._count, peer, mode, threading.Lock())
            self._connections.append(connection)
            return connection


@final
class _RecordingEngine:
    """Stands in for one connection's protocol engine: records the dialogue, can drop it.

    Everything not defined here goes to the real ``Connection``; only what crosses the wire
    (``receive_data``, ``data_to_send``), the greeting (``send``) and TLS are intercepted.
    """

    def __init__(self, real: Connection, log: ConnectionTranscript, faults: Faults) -> None:
        self._real = real
        self.log = log
        self._faults = faults
        self._greeted = False
        self._dropped = False
        self._kept = b""
        self.drop_in_body = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def drop(self) -> None:
        """End the session now: replies already queued go out, nothing after them."""
        if not self._dropped:
            self._dropped = True
            self._kept = self._real.data_to_send()
            self._real.close()

    def receive_data(self, data: bytes) -> None:
        if self._dropped:
            return
        if data and self.drop_in_body and self._real.in_data:
            self.drop_in_body = False
            self.log.body_cut(len(data))
            self.log.note("fault: server drops the connection at MID-DATA")
            self.drop()
            return
        self.log.client(data)
        self._real.receive_data(data)

    def send(self, reply: Reply) -> None:
        if not self._greeted:
            self._greeted = True
            action = self._faults._match("CONNECT")
            if action is not None:
                for text in action.notes:
                    self.log.note(text)
                if action.disconnect:
                    self.drop()
                    return
                if action.reply is not None:
                    self._real.send(Reply.parse(action.reply))
                    self._real.close()
                    return
        self._real.send(reply)

    def data_to_send(self) -> bytes:
        data = self._real.data_to_send()
        if self._dropped:
            data, self._kept = self._kept, b""
        if data:
            self.log.server(data)
        return data

    def start_tls(self) -> bytes:
        dropped: bytes = self._real.start_tls()
        self.log.note(
            "TLS handshake"
            + (
                f" (the {len(dropped)} bytes sent after STARTTLS in clear text are dropped)"
                if dropped
                else ""
            )
        )
        return dropped

    def next_event(self) -> Event | Sentinel:
        event = self._real.next_event()
        if event is CLOSED or isinstance(event, ConnectionLost):
            self.log.closed = True
        return event


# ============================================================================ server side


class _RecordingSMTP(SMTP):
    """The test servers' ``smtp_class``: installs the recorder and applies command faults."""

    _recorder: _RecordingEngine | None = None

    def _create_session(self) -> Session:
        session = super()._create_session()
        handler = self.event_handler
        io = self._io
        if not isinstance(handler, RecordingHandler) or io is None:
            return session
        if self._recorder is None:
            mode = "implicit TLS" if self.options.ssl_context is not None else "plain"
            log = handler.transcript._open(io.peer, mode)
            self._recorder = _RecordingEngine(io.conn, log, handler.faults)
            # ConnectionIO drives the engine through io.conn; this is the one private seam.
            io.conn = self._recorder  # type: ignore[assignment]  # duck-typed recording proxy
        else:
            stream = io.stream
            version = stream.version() if isinstance(stream, trio.SSLStream) else None
            self._recorder.log.note(f"TLS established ({version or 'unknown version'})")
        return session

    async def _fault(self, point: str) -> bool:
        """Apply the faults at ``point``; True when one answered or dropped the connection."""
        handler = self.event_handler
        if not isinstance(handler, RecordingHandler):
            return False
        action = handler.faults._match(point)
        if action is None:
            return False
        recorder = self._recorder
        if recorder is not None:
            for text in action.notes:
                recorder.log.note(text)
        if action.delay:
            await trio.sleep(action.delay)
        if action.disconnect:
            if recorder is not None:
                recorder.drop()
            else:
                self.transport.close()
            return True
        if action.reply is not None:
            await self.push(action.reply)
            return True
        return False

    async def _greeting_fault(self, point: str) -> bool:
        if await self._fault(point):
            if self.session is not None:
                self.session.host_name = None
            return True
        return False

    async def smtp_HELO(self, hostname: str | None) -> None:
        if not await self._greeting_fault("HELO"):
            await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not await self._greeting_fault("EHLO"):
            await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._fault("MAIL"):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._fault("RCPT"):
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._fault("DATA-COMMAND"):
            return
        handler = self.event_handler
        if isinstance(handler, RecordingHandler):
            action = handler.faults._match("MID-DATA")
            if action is not None and action.disconnect and self._recorder is not None:
                self._recorder.drop_in_body = True
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str | None) -> None:
        if not await self._fault("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_NOOP(self, arg: str | None) -> None:
        if not await self._fault("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_QUIT(self, arg: str | None) -> None:
        if not await self._fault("QUIT"):
            await super().smtp_QUIT(arg)

    async def smtp_VRFY(self, arg: str | None) -> None:
        if not await self._fault("VRFY"):
            await super().smtp_VRFY(arg)

    async def smtp_HELP(self, arg: str | None) -> None:
        if not await self._fault("HELP"):
            await super().smtp_HELP(arg)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if not await self._fault("STARTTLS"):
            await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str | None) -> None:
        if not await self._fault("AUTH"):
            await super().smtp_AUTH(arg)


@final
class RecordingHandler:
    """The test servers' handler: keeps every accepted message, applies the ``DATA`` faults."""

    __test__ = False  # not a pytest test class, whatever a test module imports

    def __init__(
        self, deliver: Callable[[ReceivedMessage], None], faults: Faults, transcript: Transcript
    ) -> None:
        self._deliver = deliver
        self.faults = faults
        self.transcript = transcript

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        action = self.faults._match("DATA")
        if action is not None:
            recorder = server._recorder if isinstance(server, _RecordingSMTP) else None
            if recorder is not None:
                for text in action.notes:
                    recorder.log.note(text)
            if action.delay:
                await trio.sleep(action.delay)
            if action.disconnect:
                if recorder is not None:
                    recorder.drop()  # the 250 queued after this is never sent
                return MISSING
            if action.reply is not None:
                return action.reply
        self._deliver(_parse_message(session, envelope))
        return MISSING


@final
class _Authenticator:
    """``authenticator=`` for the configured users (constant-time password comparison)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name: password.encode("utf-8") for name, password in users.items()}

    def __call__(
        self, server: object, session: object, envelope: object, mechanism: str, auth_data: object
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._users.get(auth_data.login.decode("utf-8", "replace"))
        ok = expected is not None and hmac.compare_digest(expected, auth_data.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _TestServerBase:
    """What both test servers offer; see :class:`ThreadedTestServer` and :class:`TrioTestServer`."""

    __test__ = False

    def __init__(self, config: ServerConfig | None = None, **changes: Any) -> None:
        base = ServerConfig() if config is None else config
        #: The configuration the server runs with.
        self.config: ServerConfig = base.replace(**changes) if changes else base
        #: Injected misbehaviour; see :class:`Faults`.
        self.faults = Faults()
        #: Every connection's dialogue; see :class:`Transcript`.
        self.transcript = Transcript()
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self.handler = RecordingHandler(self._deliver, self.faults, self.transcript)
        self._port: int | None = None
        self._ssl: ssl.SSLContext | None = None
        #: The CA file a client should trust, when the server uses TLS.
        self.ca_file: str | None = None

    # ---------------------------------------------------------------- where it listens

    @property
    def hostname(self) -> str:
        """The address the server listens on (smtpdfix's name)."""
        return self.config.host

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        """The port really bound (a free one with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the SMTP test server is not running")
        return self._port

    @property
    def addr(self) -> tuple[str, int]:
        """``(host, port)``, pytest-localserver's name."""
        return (self.host, self.port)

    @property
    def tls(self) -> TLSMode | None:
        return self.config.tls

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this server's certificate.

        Raises:
            RuntimeError: when the server has no TLS.
        """
        if self.ca_file is None:
            raise RuntimeError(
                "this SMTP test server has no TLS: configure tls='starttls' or tls='smtps'"
            )
        return ssl.create_default_context(cafile=self.ca_file)

    # ---------------------------------------------------------------- messages

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The accepted messages, oldest first (a copy)."""
        with self._cond:
            return list(self._messages)

    @property
    def outbox(self) -> list[ReceivedMessage]:
        """``messages``, under pytest-localserver's name."""
        return self.messages

    def clear(self) -> None:
        """Forget the messages and the transcript (faults stay: see :meth:`reset`)."""
        with self._cond:
            self._messages.clear()
        self.transcript.clear()

    def reset(self) -> None:
        """``clear()`` and remove every fault."""
        self.clear()
        self.faults.clear()

    def _deliver(self, message: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _summary(self) -> str:
        messages = self.messages
        if not messages:
            return "the server saw no messages"
        lines = [f"the server saw {len(messages)} message(s):"]
        lines += [f"  {n}. {_describe(m)}" for n, m in enumerate(messages, start=1)]
        return "\n".join(lines)

    def assert_sent(
        self,
        *,
        to: str | Iterable[str] | None = None,
        mail_from: str | None = None,
        subject: str | re.Pattern[str] | None = None,
        contains: str | None = None,
        headers: Mapping[str, str] | None = None,
        tls: bool | None = None,
        auth_user: str | None = None,
        count: int | None = 1,
    ) -> list[ReceivedMessage]:
        """Assert that ``count`` accepted messages match every criterion given; return them.

        Args:
            to: envelope recipient(s) (RCPT TO, so Bcc counts); a message matches when it went
                to all of them. Domains compare case-insensitively.
            mail_from: the envelope sender (MAIL FROM).
            subject: the Subject, exactly, or a compiled pattern searched in it.
            contains: a substring of the text parts (decoded).
            headers: header values that must match exactly.
            tls: the session was (True) or was not (False) encrypted.
            auth_user: the AUTH login.
            count: how many must match; None means at least one.
        Raises:
            AssertionError: naming what was expected and listing what the server saw.
        """
        wanted = [to] if isinstance(to, str) else list(to) if to is not None else []
        found = [
            m
            for m in self.messages
            if _matches(m, wanted, mail_from, subject, contains, headers, tls, auth_user)
        ]
        if count is None:
            ok = bool(found)
        else:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"count must be None or an integer >= 0, got {count!r}")
            ok = len(found) == count
        if not ok:
            what = (
                "at least 1 message"
                if count is None
                else (f"{count} message{'' if count == 1 else 's'}")
            )
            criteria = _criteria(wanted, mail_from, subject, contains, headers, tls, auth_user)
            raise AssertionError(f"expected {what}{criteria}, got {len(found)}; {self._summary()}")
        return found

    # ---------------------------------------------------------------- serving

    def _serve_options(self) -> tuple[ssl.SSLContext | None, dict[str, Any]]:
        """The ``ssl_context`` (implicit TLS) and the other options for ``serve``."""
        cfg = self.config
        options: dict[str, Any] = {
            "smtp_class": _RecordingSMTP,
            "data_size_limit": cfg.size_limit,
            "enable_SMTPUTF8": cfg.smtputf8,
            "require_starttls": cfg.require_starttls,
            "auth_required": cfg.auth_required,
            "auth_require_tls": cfg.effective_auth_require_tls,
        }
        if cfg.users:
            options["authenticator"] = _Authenticator(cfg.users)
        implicit: ssl.SSLContext | None = None
        if cfg.tls is not None:
            context, self.ca_file = _tls_setup(cfg)
            if cfg.tls == "starttls":
                options["tls_context"] = context
            else:
                implicit = context
        options.update(cfg.options)
        return implicit, options

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "not running"
        count = len(self.messages)
        return f"<{type(self).__name__} {where} tls={self.config.tls} messages={count}>"


def _matches(
    message: ReceivedMessage,
    to: list[str],
    mail_from: str | None,
    subject: str | re.Pattern[str] | None,
    contains: str | None,
    headers: Mapping[str, str] | None,
    tls: bool | None,
    auth_user: str | None,
) -> bool:
    env = message.envelope
    if any(not any(_same_address(w, r) for r in env.rcpt_tos) for w in to):
        return False
    if mail_from is not None and not _same_address(mail_from, env.mail_from or ""):
        return False
    if subject is not None:
        actual = _subject_of(message)
        if actual is None:
            return False
        if isinstance(subject, re.Pattern):
            if not subject.search(actual):
                return False
        elif actual != subject:
            return False
    if contains is not None and contains not in _text_of(message):
        return False
    if headers and any(str(message.get(k)) != v for k, v in headers.items()):
        return False
    if tls is not None and env.tls != tls:
        return False
    return auth_user is None or env.auth_user == auth_user


def _criteria(
    to: list[str],
    mail_from: str | None,
    subject: str | re.Pattern[str] | None,
    contains: str | None,
    headers: Mapping[str, str] | None,
    tls: bool | None,
    auth_user: str | None,
) -> str:
    parts = []
    if to:
        parts.append(f"to {', '.join(to)}")
    if mail_from is not None:
        parts.append(f"from {mail_from}")
    if subject is not None:
        shown = subject.pattern if isinstance(subject, re.Pattern) else subject
        parts.append(
            f"with subject {'matching ' if isinstance(subject, re.Pattern) else ''}{shown!r}"
        )
    if contains is not None:
        parts.append(f"containing {contains!r}")
    for name, value in (headers or {}).items():
        parts.append(f"with {name}: {value!r}")
    if tls is not None:
        parts.append("over TLS" if tls else "without TLS")
    if auth_user is not None:
        parts.append(f"authenticated as {auth_user!r}")
    return "".join(" " + p for p in parts)


@contextmanager
def _quiet_clear_text_auth() -> Iterator[None]:
    """Silence the server's warning about AUTH without TLS while it starts: a test server on
    127.0.0.1 was asked for exactly that, and ``-W error`` must not make it a failure."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="auth_required=True with auth_require_tls=False",
            category=UserWarning,
        )
        yield


@final
class ThreadedTestServer(_TestServerBase):
    """A test server on its own thread (a trio loop through ``smtptrio.Controller``).

    For synchronous code under test, and for async tests that want a server outliving one
    event loop (a session-scoped fixture). ``with ThreadedTestServer(tls="starttls") as s:``
    starts and stops it.
    """

    def __init__(self, config: ServerConfig | None = None, **changes: Any) -> None:
        super().__init__(config, **changes)
        self._controller: Controller | None = None

    def start(self) -> None:
        """Listen; returns once the server accepts connections.

        Raises:
            TLSSetupError: when TLS cannot be set up.
            OSError: when the address cannot be bound.
            RuntimeError: when it is already running.
        """
        from smtptrio.controller import Controller

        if self._controller is not None:
            raise RuntimeError("the SMTP test server is already running")
        implicit, options = self._serve_options()
        controller = Controller(
            self.handler,
            hostname=self.config.host,
            port=self.config.port,
            ready_timeout=self.config.ready_timeout,
            ssl_context=implicit,
            server_hostname=self.config.server_name,
            **options,
        )
        with _quiet_clear_text_auth():
            controller.start()
        self._controller = controller
        self._port = controller.port

    def stop(self) -> None:
        """Stop listening and end every session (idle ones get 421); a no-op when stopped."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop(grace_period=_STOP_GRACE)
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for_messages(self, count: int = 1, *, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; return them all.

        Raises:
            AssertionError: after ``timeout`` seconds, with what the server saw.
        """
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self._messages) >= count, timeout)
        if not arrived:
            raise AssertionError(f"waited {timeout} s for {count} message(s); {self._summary()}")
        return self.messages


#: How many wake-ups wait_for_messages tolerates (each one is at least one new message).
_MAX_WAKEUPS: Final = 1_000_000


@final
class TrioTestServer(_TestServerBase):
    """A test server inside the caller's trio run; open it with :func:`open_trio_test_server`."""

    def __init__(self, config: ServerConfig | None = None, **changes: Any) -> None:
        super().__init__(config, **changes)
        self._arrived: trio.Event | None = None
        self.running: RunningServer | None = None

    def _deliver(self, message: ReceivedMessage) -> None:
        super()._deliver(message)
        event, self._arrived = self._arrived, None
        if event is not None:
            event.set()

    async def wait_for_messages(
        self,
        count: int = 1,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109  # the threaded server's signature, on purpose
    ) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived; return them all.

        The timeout is on trio's clock: under ``autojump_clock`` it passes as soon as every
        task is blocked, so the client must run in the same trio run (not in a thread).

        Raises:
            AssertionError: after ``timeout`` seconds, with what the server saw.
        """
        try:
            with trio.fail_after(timeout):
                for _ in range(_MAX_WAKEUPS):
                    if len(self._messages) >= count:
                        return self.messages
                    if self._arrived is None:
                        self._arrived = trio.Event()
                    await self._arrived.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"waited {timeout} s for {count} message(s); {self._summary()}"
            ) from None
        raise AssertionError(f"gave up waiting for {count} message(s); {self._summary()}")

    @asynccontextmanager
    async def client(self, *, starttls: bool = False) -> AsyncIterator[SMTPClient]:
        """A connected :class:`SMTPClient` (greeting read; TLS done for ``smtps`` servers, and
        after EHLO + STARTTLS when ``starttls=True``); QUIT and close at the end."""
        context = self.client_ssl_context() if self.config.tls is not None else None
        client = await SMTPClient.connect(
            self.host,
            self.port,
            ssl_context=context if self.config.tls == "smtps" else None,
            server_hostname="localhost",
        )
        try:
            if starttls:
                if context is None:
                    raise RuntimeError("starttls=True needs a server with tls='starttls'")
                await client.ehlo()
                reply = await client.starttls(context, server_hostname="localhost")
                if reply.code != 220:
                    raise SMTPClientError("STARTTLS refused", reply)
            yield client
        finally:
            await client.quit()


@asynccontextmanager
async def open_trio_test_server(
    config: ServerConfig | None = None, **changes: Any
) -> AsyncIterator[TrioTestServer]:
    """Run a :class:`TrioTestServer` in this trio run for the duration of the block.

    Raises:
        RuntimeError: when not called from trio (for asyncio use :class:`ThreadedTestServer`).
        TLSSetupError: when TLS cannot be set up.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            "the trio SMTP test server needs a trio event loop (pytest-trio, or anyio's pytest "
            "plugin with anyio_backend='trio'); with asyncio use the threaded server "
            "(the smtp_server fixture)"
        ) from None
    server = TrioTestServer(config, **changes)
    implicit, options = server._serve_options()
    start = partial(
        serve,
        server.handler,
        host=server.config.host,
        port=server.config.port,
        ssl_context=implicit,
        hostname=server.config.server_name,
        **options,
    )
    async with trio.open_nursery() as nursery:
        with _quiet_clear_text_auth():
            running: RunningServer = await nursery.start(start)
        server.running = running
        server._port = running.port
        try:
            yield server
        finally:
            server._port = None
            nursery.cancel_scope.cancel()


# ============================================================================ scripted client


@final
@dataclass(frozen=True, slots=True)
class ClientReply:
    """One reply as the client read it."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The text of every line, without the codes, joined with newlines."""
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return "\n".join(
            f"{self.code}{' ' if n == len(self.lines) - 1 else '-'}{line}"
            for n, line in enumerate(self.lines)
        )


class SMTPClientError(Exception):
    """A step of :meth:`SMTPClient.sendmail` was refused, or the server went away."""

    def __init__(self, message: str, reply: ClientReply | None = None) -> None:
        super().__init__(f"{message}: {reply}" if reply is not None else message)
        #: The reply that refused the step, None when the connection was lost.
        self.reply = reply


_MAX_REPLY_LINES: Final = 200
_MAX_REPLY_LINE: Final = 8192


@final
class SMTPClient:
    """A small trio SMTP client for scripting sessions in tests (no retries, no guessing).

    Each method sends one command and returns the reply; only :meth:`sendmail` raises on a
    refusal. Use it over any trio stream, e.g. a memory stream to a server under test.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        #: The 220 greeting, once read by :meth:`connect`.
        self.greeting: ClientReply | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> SMTPClient:
        """Open a TCP connection (TLS first with ``ssl_context``) and read the greeting."""
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname or host)
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
            stream = tls
        client = cls(stream)
        try:
            client.greeting = await client.read_reply()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (pipelining, broken input, ...)."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SMTPClientError(f"the connection is gone ({exc!r})") from exc

    async def read_reply(self) -> ClientReply:
        """Read one (possibly multi-line) reply.

        Raises:
            SMTPClientError: when the server closed the connection or sent garbage.
        """
        code: int | None = None
        lines: list[str] = []
        for _ in range(_MAX_REPLY_LINES):
            raw = await self._read_line()
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-"):
                raise SMTPClientError(f"not an SMTP reply line: {raw!r}")
            this = int(raw[:3])
            if code is not None and this != code:
                raise SMTPClientError(f"reply mixes codes {code} and {this}")
            code = this
            lines.append(raw[4:].decode("utf-8", "replace"))
            if raw[3:4] != b"-":
                return ClientReply(code, tuple(lines))
        raise SMTPClientError(f"reply longer than {_MAX_REPLY_LINES} lines")

    async def _read_line(self) -> bytes:
        for _ in range(_MAX_REPLY_LINE):  # each turn receives at least one byte or returns
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > _MAX_REPLY_LINE:
                raise SMTPClientError("reply line too long")
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise SMTPClientError(f"the connection is gone ({exc!r})") from exc
            if not data:
                raise SMTPClientError("the server closed the connection")
            self._buffer += data
        raise SMTPClientError("reply line too long")

    async def command(self, line: str | bytes) -> ClientReply:
        """Send one command line (CRLF added) and read its reply."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        await self.send_raw(data + b"\r\n")
        return await self.read_reply()

    async def ehlo(self, name: str = "client.example") -> ClientReply:
        return await self.command(f"EHLO {name}")

    async def starttls(
        self, ssl_context: ssl.SSLContext, *, server_hostname: str = "localhost"
    ) -> ClientReply:
        """STARTTLS and, when the server agrees (220), the handshake; returns the reply."""
        reply = await self.command("STARTTLS")
        if reply.code == 220:
            tls = trio.SSLStream(self.stream, ssl_context, server_hostname=server_hostname)
            await tls.do_handshake()
            self.stream = tls
            self._buffer.clear()
        return reply

    async def login(self, user: str, password: str) -> ClientReply:
        """AUTH PLAIN with an initial response (RFC 4616); 235 means success."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        return await self.command(f"AUTH PLAIN {token}")

    async def sendmail(
        self,
        mail_from: str,
        rcpt_tos: str | Iterable[str],
        message: bytes | str | EmailMessage,
        *,
        mail_options: Iterable[str] = (),
        rcpt_options: Iterable[str] = (),
    ) -> ClientReply:
        """One transaction: MAIL, RCPT for each recipient, DATA, the text; the final reply.

        Line ends become CRLF and lines starting with a dot are stuffed (RFC 5321 4.5.2).

        Raises:
            SMTPClientError: for the first refused step (carrying its reply).
        """
        recipients = [rcpt_tos] if isinstance(rcpt_tos, str) else list(rcpt_tos)
        mail_params = "".join(" " + p for p in mail_options)
        rcpt_params = "".join(" " + p for p in rcpt_options)
        reply = await self.command(f"MAIL FROM:<{mail_from}>{mail_params}")
        if reply.code != 250:
            raise SMTPClientError("MAIL refused", reply)
        for rcpt in recipients:
            reply = await self.command(f"RCPT TO:<{rcpt}>{rcpt_params}")
            if reply.code not in (250, 251):
                raise SMTPClientError(f"RCPT {rcpt} refused", reply)
        reply = await self.command("DATA")
        if reply.code != 354:
            raise SMTPClientError("DATA refused", reply)
        await self.send_raw(_wire_text(message))
        reply = await self.read_reply()
        if reply.code != 250:
            raise SMTPClientError("message refused", reply)
        return reply

    async def quit(self) -> None:
        """QUIT (best effort) and close."""
        try:
            with trio.move_on_after(5):
                await self.command("QUIT")
        except SMTPClientError:
            pass
        finally:
            await self.aclose()


def _wire_text(message: bytes | str | EmailMessage) -> bytes:
    if isinstance(message, EmailMessage):
        data = message.as_bytes(policy=email.policy.SMTPUTF8)
    elif isinstance(message, str):
        data = message.encode("utf-8")
    else:
        data = bytes(message)
    data = re.sub(rb"\r?\n", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"
