"""Every server option: one name (aiosmtpd's where it has one), one default, one check.

:class:`Options` is built once per server from the keyword arguments of ``serve``,
``serve_listeners``, ``SMTP`` or ``Controller``; a bad value raises here, naming the option,
never halfway through a session. COMPAT.md section 4 is the user-facing table.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from smtptrio.__about__ import __version__

__all__ = ["OptionError", "Options", "build_options"]


class OptionError(ValueError):
    """A server option has a bad value; the message names the option and the value."""


def _positive(name: str, value: object, *, allow_none: bool, zero_is_none: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise OptionError(f"{name} must be a number, got None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not zero_is_none):
        raise OptionError(f"{name} must be > 0, got {value!r}")


def _count(name: str, value: object, *, minimum: int = 1, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise OptionError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The validated settings of one server (all connections share them)."""

    #: Largest message in octets (RFC 1870), counted unstuffed; None or 0: unlimited.
    data_size_limit: int | None = 33554432
    #: Offer SMTPUTF8 (RFC 6531): UTF-8 in addresses and headers.
    enable_SMTPUTF8: bool = False
    #: Give handlers ``envelope.content`` as ``str`` instead of ``bytes``.
    decode_data: bool = False
    #: The name in the greeting and HELO/EHLO replies; default ``socket.getfqdn()``.
    hostname: str | None = None
    #: The second part of the 220 greeting.
    ident: str = f"smtptrio {__version__}"
    #: Offer STARTTLS with this server-side context (RFC 3207).
    tls_context: ssl.SSLContext | None = None
    #: Refuse (530) everything but EHLO, NOOP, QUIT and STARTTLS before TLS (RFC 3207 section 4).
    require_starttls: bool = False
    #: Idle seconds before ``421 4.4.2`` and close (RFC 5321 section 4.5.3.2).
    timeout: float = 300.0
    #: HELP, VRFY, MAIL, RCPT, DATA get ``530 5.7.0`` until AUTH succeeded.
    auth_required: bool = False
    #: AUTH only over TLS (STARTTLS or implicit); before that ``538 5.7.11``.
    auth_require_tls: bool = True
    #: Mechanism names not to offer (case-insensitive).
    auth_exclude_mechanism: frozenset[str] = frozenset()
    #: Legacy ``(mechanism, login, password) -> bool`` credential check.
    auth_callback: Callable[[str, bytes, bytes], bool] | None = None
    #: ``(server, session, envelope, mechanism, auth_data) -> AuthResult``; wins over auth_callback.
    authenticator: Callable[..., Any] | None = None
    #: Per-verb call budgets; an int applies to every verb.
    command_call_limit: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Seconds to wait for the HAProxy PROXY header (v1 or v2) that must start every
    #: connection; None: PROXY off. Needs a ``handle_PROXY`` hook to accept connections.
    proxy_protocol_timeout: float | None = None
    #: Implicit TLS (SMTPS, RFC 8314): every connection starts with a TLS handshake.
    ssl_context: ssl.SSLContext | None = None
    #: Command line octets before CRLF (RFC 5321 section 4.5.3.1.4).
    command_size_limit: int = 512
    #: Text line octets in DATA, CRLF included; None: unlimited.
    line_length_limit: int | None = 1001
    #: 0: off; 64 enforces RFC 5321 section 4.5.3.1.1.
    local_part_limit: int = 0
    #: What a bare CR or LF inside message text gets: keep, normalize, reject.
    bare_newline: str = "keep"
    #: Advertise ENHANCEDSTATUSCODES and complete hook replies with enhanced codes.
    enhanced_status_codes: bool = True
    #: Recipients per transaction; the next RCPT gets ``452 4.5.3``.
    max_recipients: int | None = 1000
    #: The N-th unknown verb gets ``421 4.7.0`` and the session closes.
    unrecognized_command_limit: int | None = 5
    #: Failed AUTH attempts before the next AUTH gets ``421 4.7.0``.
    auth_failure_limit: int | None = 3
    #: Error replies in one session before ``421 4.7.0`` (RFC 5321 section 7.8).
    error_limit: int | None = 50
    #: After this many error replies in a session, each further one waits ``error_delay``
    #: seconds (Postfix's smtpd_soft_error_limit and smtpd_error_sleep_time).
    soft_error_limit: int | None = 20
    error_delay: float = 0.5
    #: New connections per IP address per ``connection_rate_window`` seconds; None: unlimited.
    #: Addresses in ``connection_limit_exempt`` are not counted (Postfix's anvil rate limit).
    connection_rate_limit: int | None = 120
    connection_rate_window: float = 60.0
    #: Simultaneous connections; the next one gets ``421 4.7.0`` instead of the greeting.
    max_connections: int | None = 512
    #: Simultaneous connections from one IP address; None: unlimited.
    max_connections_per_ip: int | None = 50
    #: Addresses never counted against max_connections_per_ip.
    connection_limit_exempt: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    #: Seconds a TLS handshake (STARTTLS or implicit) may take.
    tls_handshake_timeout: float = 30.0
    #: Seconds one hook call may take before the client gets ``451 4.3.0``; None: unlimited.
    hook_timeout: float | None = 300.0
    #: None (default): during DATA every complete line restarts the idle timer and partial
    #: lines never do (COMPAT D3). A number switches to Postfix's per-request model
    #: (smtpd_per_request_deadline + smtpd_min_data_rate): the message text must arrive
    #: within ``timeout``, each read of N octets adding N / min_data_rate seconds (capped at
    #: ``timeout`` from now), so a client trickling whole lines is cut off too.
    min_data_rate: int | None = None
    #: Handlers that call asyncio need a bridge; not implemented yet (COMPAT.md section 1.3).
    asyncio_bridge: bool = False

    def __post_init__(self) -> None:
        for name in _BOOL_OPTIONS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                kind = type(value).__name__
                raise TypeError(f"{name} must be True or False, got {kind} {value!r}")
        if not isinstance(self.ident, str):
            raise TypeError(f"ident must be a string, got {type(self.ident).__name__}")
        exempt = self.connection_limit_exempt
        if not isinstance(exempt, frozenset) or not all(isinstance(a, str) for a in exempt):
            raise TypeError("connection_limit_exempt must be a set of IP address strings")
        _count("data_size_limit", self.data_size_limit, minimum=0)
        _positive("timeout", self.timeout, allow_none=False)
        _positive("tls_handshake_timeout", self.tls_handshake_timeout, allow_none=False)
        _positive("hook_timeout", self.hook_timeout, allow_none=True)
        _positive("proxy_protocol_timeout", self.proxy_protocol_timeout, allow_none=True)
        _count("command_size_limit", self.command_size_limit, minimum=64, allow_none=False)
        _count("line_length_limit", self.line_length_limit, minimum=80)
        _count("local_part_limit", self.local_part_limit, minimum=0, allow_none=False)
        _count("max_recipients", self.max_recipients, minimum=100)
        _count("unrecognized_command_limit", self.unrecognized_command_limit)
        _count("auth_failure_limit", self.auth_failure_limit)
        _count("error_limit", self.error_limit)
        _count("soft_error_limit", self.soft_error_limit, minimum=0)
        _positive("error_delay", self.error_delay, allow_none=False, zero_is_none=True)
        _count("connection_rate_limit", self.connection_rate_limit)
        _positive("connection_rate_window", self.connection_rate_window, allow_none=False)
        _count("max_connections", self.max_connections)
        _count("max_connections_per_ip", self.max_connections_per_ip)
        _count("min_data_rate", self.min_data_rate, minimum=0)
        if self.bare_newline not in ("keep", "normalize", "reject"):
            raise OptionError(
                f"bare_newline must be 'keep', 'normalize' or 'reject', got {self.bare_newline!r}"
            )
        for name in ("tls_context", "ssl_context"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, ssl.SSLContext):
                raise TypeError(f"{name} must be an ssl.SSLContext, got {type(value).__name__}")
        for name in ("authenticator", "auth_callback"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        if self.hostname is not None:
            if not isinstance(self.hostname, str):
                raise TypeError(f"hostname must be a string, got {type(self.hostname).__name__}")
            if not self.hostname or not self.hostname.isprintable() or " " in self.hostname:
                raise OptionError(f"hostname must be a non-empty name, got {self.hostname!r}")
        if self.asyncio_bridge:
            raise OptionError(
                "asyncio_bridge=True is not available yet: write hooks with trio or anyio, "
                "and run blocking code with trio.to_thread.run_sync"
            )

    @property
    def data_limit(self) -> int | None:
        """``data_size_limit`` with 0 folded into None (unlimited)."""
        return self.data_size_limit or None


_NAMES = frozenset(f.name for f in fields(Options))
_BOOL_OPTIONS = tuple(f.name for f in fields(Options) if f.type in ("bool", bool))


def _call_limits(value: object) -> Mapping[str, int]:
    """aiosmtpd's ``command_call_limit``: None, an int for every verb, or a per-verb dict."""
    if value is None:
        return MappingProxyType({})
    if isinstance(value, bool):
        raise TypeError("command_call_limit must be an int or a dict of ints")
    if isinstance(value, int):
        if value < 1:
            raise OptionError(f"command_call_limit must be >= 1, got {value}")
        return MappingProxyType({"*": value})
    if isinstance(value, Mapping):
        out: dict[str, int] = {}
        for key, limit in value.items():
            if not isinstance(key, str) or isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError("command_call_limit must map verb names to ints")
            if limit < 1:
                raise OptionError(f"command_call_limit[{key!r}] must be >= 1, got {limit}")
            out[key.upper()] = limit
        out.setdefault("*", 20)
        return MappingProxyType(out)
    raise TypeError(
        f"command_call_limit must be an int or a dict of ints, got {type(value).__name__}"
    )


def build_options(options: Mapping[str, object]) -> Options:
    """Turn the keyword arguments a user gave into :class:`Options`, or raise naming the problem.

    Raises:
        TypeError: for an unknown option name or a value of the wrong type.
        OptionError: (a ``ValueError``) for a value out of range.
    """
    unknown = sorted(set(options) - _NAMES - {"loop"})
    if unknown:
        raise TypeError(f"unknown server option(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = dict(options)
    if "loop" in kwargs:
        kwargs.pop("loop")
        warnings.warn("loop= is ignored: smtptrio runs on trio", DeprecationWarning, stacklevel=3)
    if "command_call_limit" in kwargs:
        kwargs["command_call_limit"] = _call_limits(kwargs["command_call_limit"])
    excluded = kwargs.get("auth_exclude_mechanism")
    if excluded is not None:
        if isinstance(excluded, str) or not isinstance(excluded, Iterable):
            raise TypeError("auth_exclude_mechanism must be an iterable of mechanism names")
        kwargs["auth_exclude_mechanism"] = frozenset(str(m).upper() for m in excluded)
    else:
        kwargs.pop("auth_exclude_mechanism", None)
    exempt = kwargs.get("connection_limit_exempt")
    if exempt is not None:
        if isinstance(exempt, str) or not isinstance(exempt, Iterable):
            raise TypeError("connection_limit_exempt must be a set of IP address strings")
        kwargs["connection_limit_exempt"] = frozenset(exempt)
    if kwargs.get("data_size_limit") == 0:
        kwargs["data_size_limit"] = None
    if kwargs.get("auth_callback") is not None:
        warnings.warn(
            "auth_callback is deprecated; use authenticator", DeprecationWarning, stacklevel=3
        )
    opts = Options(**kwargs)
    if opts.proxy_protocol_timeout is not None and opts.proxy_protocol_timeout < 3.0:
        warnings.warn(
            f"proxy_protocol_timeout={opts.proxy_protocol_timeout} is short: a slow proxy "
            "link will see connections closed before their PROXY header arrives",
            UserWarning,
            stacklevel=3,
        )
    if opts.auth_required and not opts.auth_require_tls:
        warnings.warn(
            "auth_required=True with auth_require_tls=False sends credentials in clear text",
            UserWarning,
            stacklevel=3,
        )
    for name in ("tls_context", "ssl_context"):
        ctx = getattr(opts, name)
        if ctx is not None and (ctx.verify_mode == ssl.CERT_REQUIRED or ctx.check_hostname):
            warnings.warn(
                f"{name} requires client certificates or checks hostnames: most SMTP clients "
                "will fail the handshake (use ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))",
                UserWarning,
                stacklevel=3,
            )
    return opts
