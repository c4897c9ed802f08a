"""The objects handler hooks read and write: Session, Envelope, and the AUTH result values.

Attribute names and meanings are aiosmtpd's (COMPAT.md section 3), so a handler written for
aiosmtpd reads the same fields. Handlers may add attributes of their own to both objects.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "MISSING",
    "AuthResult",
    "Envelope",
    "LoginPassword",
    "Session",
    "is_missing",
]


class _Missing:
    """The type of :data:`MISSING`: "this hook has nothing to say, do the default"."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


#: Returned by a hook to ask for the default action and reply, as in aiosmtpd.
MISSING: Any = _Missing()


def is_missing(value: object) -> bool:
    """True for our MISSING and for aiosmtpd's, when a handler imported that one.

    aiosmtpd is never imported here; its sentinel is recognised only if the handler's code
    already imported ``aiosmtpd.smtp`` (COMPAT.md section 1.2).
    """
    if value is MISSING:
        return True
    foreign = sys.modules.get("aiosmtpd.smtp")
    return foreign is not None and value is getattr(foreign, "MISSING", MISSING)


class LoginPassword(NamedTuple):
    """The credentials of the built-in PLAIN and LOGIN mechanisms; the password never prints."""

    login: bytes
    password: bytes

    def __str__(self) -> str:
        return f"LoginPassword(login={self.login.decode('utf-8', 'replace')!r}, password=...)"

    def __repr__(self) -> str:
        return str(self)


@dataclass(kw_only=True)
class AuthResult:
    """What an authenticator or an ``auth_<MECH>`` hook returns (aiosmtpd's contract).

    Attributes:
        success: the credentials are good.
        handled: on failure, True means the mechanism already sent its reply.
        message: the reply to send instead of the default one.
        auth_data: what ends up in ``session.auth_data`` (hidden from ``repr``).
    """

    success: bool
    handled: bool = True
    message: str | None = None
    auth_data: Any = field(default=None, repr=False)


_session_ids = itertools.count(1)


class Session:
    """Per-connection state seen by hooks; a new one on connect and after STARTTLS."""

    def __init__(self, loop: object = None) -> None:
        #: The socket peer: ``(host, port)``, a 4-tuple for IPv6, a path string or None.
        self.peer: Any = None
        #: Whatever HELO/EHLO/LHLO gave (None before, and after STARTTLS).
        self.host_name: str | None = None
        #: True after EHLO or LHLO.
        self.extended_smtp = False
        #: After the TLS handshake: ``sslcontext``, ``peercert``, ``cipher``, ``compression``,
        #: ``ssl_object`` (the ``trio.SSLStream``).
        self.ssl: dict[str, Any] | None = None
        #: The parsed PROXY protocol header, when the listener uses one.
        self.proxy_data: Any = None
        #: None until AUTH succeeds, then True.
        self.authenticated: bool | None = None
        #: ``AuthResult.auth_data`` of the successful AUTH (``LoginPassword`` for built-ins).
        self.auth_data: Any = None
        self._login_data: Any = None
        #: A short id that ties this session's log lines together (an smtptrio addition).
        self.id = f"{next(_session_ids):x}"
        if loop is not None:
            warnings.warn(
                "Session(loop=...) is ignored: smtptrio runs on trio, not asyncio",
                DeprecationWarning,
                stacklevel=2,
            )

    @property
    def login_data(self) -> Any:
        """Deprecated alias kept for aiosmtpd handlers: prefer ``auth_data``."""
        warnings.warn(
            "Session.login_data is deprecated; use Session.auth_data",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        warnings.warn(
            "Session.login_data is deprecated; use Session.auth_data",
            DeprecationWarning,
            stacklevel=2,
        )
        self._login_data = value

    @property
    def loop(self) -> Any:
        raise AttributeError(
            "session.loop exists only with asyncio_bridge=True: smtptrio runs hooks on trio"
        )

    def __repr__(self) -> str:
        return f"<Session {self.id} peer={self.peer!r} host_name={self.host_name!r}>"


class Envelope:
    """One mail transaction: sender, recipients, parameters and, after DATA, the content."""

    def __init__(self) -> None:
        #: Reverse-path addr-spec; ``"<>"`` for the null sender.
        self.mail_from: str | None = None
        #: Upper-cased MAIL parameters (``SIZE=1000``, ``BODY=8BITMIME``, ``SMTPUTF8``).
        self.mail_options: list[str] = []
        #: True when MAIL carried SMTPUTF8.
        self.smtp_utf8 = False
        #: Accepted forward-paths, in order.
        self.rcpt_tos: list[str] = []
        #: Upper-cased RCPT parameters.
        self.rcpt_options: list[str] = []
        #: The message as received: CRLF kept, dot-unstuffed, terminator removed.
        self.original_content: bytes | None = None
        #: The same bytes, or a ``str`` with ``decode_data=True``.
        self.content: bytes | str | None = None

    def __repr__(self) -> str:
        return (
            f"<Envelope mail_from={self.mail_from!r} rcpt_tos={self.rcpt_tos!r} "
            f"size={len(self.original_content) if self.original_content is not None else None}>"
        )
