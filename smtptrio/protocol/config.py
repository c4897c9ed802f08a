"""What the engine needs to know about the server: the limits and the extensions it offers.

The server layer builds one :class:`Config` from its validated options; the engine only reads it.
Nothing here is mutable, so one Config is shared by every connection of a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["BareNewline", "Config"]

BareNewline = Literal["keep", "normalize", "reject"]

#: The longest AUTH command line or AUTH response line we read (RFC 4954 section 4 says 12288).
AUTH_LINE_LIMIT = 12288


def _no_limits() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Engine settings, one per server; see ``smtptrio.server.options`` for the user's view."""

    #: Largest message in octets (unstuffed, CRLFs counted); None means unlimited.
    data_size_limit: int | None = 33554432
    enable_smtputf8: bool = False
    #: True when the server hands the handler a ``str``: 8-bit text needs SMTPUTF8 then.
    decode_data: bool = False
    #: A STARTTLS context exists (STARTTLS is offered before TLS).
    tls_available: bool = False
    #: The connection is TLS from the first byte (SMTPS, RFC 8314).
    implicit_tls: bool = False
    require_starttls: bool = False
    auth_required: bool = False
    auth_require_tls: bool = True
    #: Mechanism names on offer, upper-cased (empty tuple: AUTH is not offered at all).
    auth_mechanisms: tuple[str, ...] = ()
    #: Octets allowed before CRLF on a command line.
    command_size_limit: int = 512
    #: Octets allowed in one text line during DATA, CRLF included; None means unlimited.
    line_length_limit: int | None = 1001
    #: 0 means off; 64 enforces RFC 5321 section 4.5.3.1.1.
    local_part_limit: int = 0
    bare_newline: BareNewline = "keep"
    enhanced_status_codes: bool = True
    max_recipients: int | None = 1000
    #: The N-th unknown verb closes the session with 421.
    unrecognized_command_limit: int | None = 5
    #: After this many failed AUTH attempts the next AUTH gets 421 and the session closes.
    auth_failure_limit: int | None = 3
    #: Error replies (4xx/5xx the engine sends itself) before 421 and close (RFC 5321 7.8).
    error_limit: int | None = 50
    #: Per-verb call budgets (``"*"`` for the others); empty means no budget.
    command_call_limit: Mapping[str, int] = field(default_factory=_no_limits)
    #: Extra verbs the driver implements (``smtp_XYZZY`` methods of an SMTP subclass).
    extension_verbs: frozenset[str] = frozenset()
    #: LMTP (RFC 2033): LHLO replaces HELO/EHLO.
    lmtp: bool = False
    #: Command per-verb line allowances when a verb needs more than command_size_limit.
    command_size_limits: Mapping[str, int] = field(default_factory=_no_limits)
