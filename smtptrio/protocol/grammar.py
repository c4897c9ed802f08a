r"""RFC 5321 / RFC 6531 syntax of the MAIL and RCPT arguments, their ESMTP parameters, and VRFY.

aiosmtpd hands paths to an RFC 5322 parser, which is far more liberal than SMTP: it accepts
``<a@b`` without the ``>``, comments, spaces and dots anywhere (COMPAT D9). Here the path is
checked against the RFC 5321 section 4.1.2 grammar instead, and every failure says *which* rule
broke (:class:`GrammarKind`) so the engine can pick the reply code without parsing messages.

What stays accepted, because real clients send it and Postfix takes it too: spaces between the
colon and the path, a path without angle brackets, source routes (dropped, RFC 5321 section
4.1.1.3 says servers SHOULD ignore them), address literals and the domainless ``<Postmaster>``
in RCPT (section 4.1.1.3).

The module is pure: standard library only, no I/O, no clock.

>>> arg = parse_mail_from("FROM:<alice@example.org> SIZE=1000 body=8BITMIME", utf8=False)
>>> arg.address, arg.params
('alice@example.org', (('SIZE', '1000'), ('BODY', '8BITMIME')))
>>> parse_rcpt_to("TO:<>", utf8=False)
Traceback (most recent call last):
  ...
smtptrio.protocol.grammar.GrammarError: the null path is not a recipient
>>> parse_rcpt_to("TO:<@relay.example:bob@example.org>", utf8=False).address
'bob@example.org'
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "GrammarError",
    "GrammarKind",
    "PathArgument",
    "is_esmtp_keyword",
    "parse_mail_from",
    "parse_rcpt_to",
    "parse_vrfy",
]


@final
class GrammarKind(enum.Enum):
    """Which rule an argument broke; the engine maps each kind to one reply."""

    #: No ``FROM:`` / ``TO:``, no address, or junk glued to the path: 501 5.5.4.
    SYNTAX = "syntax"
    #: ``<`` and ``>`` do not pair up (missing, extra or nested): 501 5.5.4.
    UNBALANCED = "unbalanced"
    #: The brackets are fine but the mailbox inside is not RFC 5321 (Dot-string, Quoted-string,
    #: Domain, address literal, source route): 553 5.1.7 for MAIL, 553 5.1.3 for RCPT.
    BAD_MAILBOX = "bad-mailbox"
    #: ``<>`` given as a forward-path, which RFC 5321 section 4.1.1.3 does not allow: 501 5.1.3.
    NULL_PATH = "null-path"
    #: A parameter is not ``esmtp-keyword ["=" esmtp-value]``: 501 5.5.4.
    PARAM_SYNTAX = "param-syntax"
    #: Non-ASCII in the path while UTF-8 is not in force. Reported before any mailbox check, so
    #: the engine can choose between 553 5.6.7 (RFC 6531 section 3.5) and 500.
    NON_ASCII = "non-ascii"


@final
class GrammarError(ValueError):
    """An argument is not valid; ``kind`` picks the reply, ``detail`` is for logs and tests."""

    def __init__(self, kind: GrammarKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@final
@dataclass(frozen=True, slots=True)
class PathArgument:
    """A parsed MAIL FROM / RCPT TO argument.

    ``address`` is the addr-spec without angle brackets and without any source route, as the
    client wrote it (quotes kept, case kept), or ``"<>"`` for the null reverse-path: the form
    aiosmtpd hands its hooks. ``params`` keeps the client's order, keywords upper-cased (they
    are case-insensitive, RFC 5321 section 2.4) and values untouched (some, like ENVID, are
    case-sensitive). ``has_non_ascii`` lets the engine apply RFC 6531 section 3.5 without
    scanning the address again.
    """

    address: str
    params: tuple[tuple[str, str | None], ...]
    has_non_ascii: bool


# --- Character classes ------------------------------------------------------------------
# Written out, never via re.IGNORECASE: under Unicode case folding [a-z] would also match
# U+212A KELVIN SIGN and U+017F LATIN SMALL LETTER LONG S, letting non-ASCII through the
# ASCII grammar.

# UTF8-non-ascii (RFC 6532 section 3.1): every non-ASCII scalar value. Lone surrogates are
# excluded because no UTF-8 sequence encodes them; the engine never passes one, but a str can
# hold one, and it must fail here rather than in .encode() later.
_U: Final = "\u0080-\ud7ff\ue000-\U0010ffff"
_ATEXT: Final = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"  # RFC 5322 section 3.2.3
_QTEXT: Final = r" !#-\[\]-~"  # qtextSMTP: %d32-33 / %d35-91 / %d93-126
_QPAIR: Final = r"\\[ -~]"  # quoted-pairSMTP: backslash, then %d32-126
_LET_DIG: Final = "A-Za-z0-9"


def _local_part(utf8: bool) -> str:
    extra = _U if utf8 else ""
    dot_string = f"[{_ATEXT}{extra}]+(?:\\.[{_ATEXT}{extra}]+)*"
    quoted_string = f'"(?:[{_QTEXT}{extra}]|{_QPAIR})*"'
    return f"(?:{dot_string}|{quoted_string})"


# An LDH label of at most 63 octets that neither starts nor ends with a hyphen (RFC 5321
# section 4.1.2 sub-domain, RFC 1035 section 2.3.4 length).
_LDH_LABEL: Final = f"[{_LET_DIG}](?:[{_LET_DIG}-]{{0,61}}[{_LET_DIG}])?"
_LDH_DOMAIN: Final = f"{_LDH_LABEL}(?:\\.{_LDH_LABEL})*"
_MAX_DOMAIN: Final = 255  # octets, RFC 5321 section 4.5.3.1.2
_MAX_LABEL: Final = 63

# The verbs' fixed words. [ \t]* after the colon is the leniency of COMPAT D9.
_FROM: Final = re.compile(r"[Ff][Rr][Oo][Mm]:[ \t]*")
_TO: Final = re.compile(r"[Tt][Oo]:[ \t]*")

# Fast path for the argument nearly every client sends: "<dot-string@ldh.domain>" then
# optional parameters. It is only a shortcut; anything it does not match goes the slow way,
# which accepts a superset and reports why it refuses.
_FAST: Final = re.compile(
    f"<([{_ATEXT}]+(?:\\.[{_ATEXT}]+)*@({_LDH_DOMAIN}))>(?:[ \\t]+(.*))?\\Z", re.DOTALL
)

# Extraction of the path before validation. Quoted strings may legally hold "<", ">" and
# spaces, so they are skipped whole. Possessive quantifiers keep a failed match linear: with
# plain ones, "(?:[^<>"]+)*" backtracks exponentially on a long "<aaaa..." with no ">".
_QUOTED_SKIP: Final = r'"(?:[^"\\]++|\\.)*+"'
_BRACKET_BODY: Final = re.compile(f'(?:[^<>"]++|{_QUOTED_SKIP})*+', re.DOTALL)
_BRACKETED: Final = re.compile(f'<((?:[^<>"]++|{_QUOTED_SKIP})*+)>', re.DOTALL)
_BARE: Final = re.compile(f'(?:[^ \\t<>"]++|{_QUOTED_SKIP})++', re.DOTALL)

# A-d-l ":" (RFC 5321 section 4.1.2). Each At-domain is checked as a Domain afterwards.
_ROUTE: Final = re.compile(r"(@[^,:@]*+(?:,@[^,:@]*+)*+):")

_LOCAL_ASCII: Final = re.compile(_local_part(utf8=False) + "@")
_LOCAL_UTF8: Final = re.compile(_local_part(utf8=True) + "@")
_STRING_ASCII: Final = re.compile(_local_part(utf8=False))
_STRING_UTF8: Final = re.compile(_local_part(utf8=True))
_DOMAIN_ASCII: Final = re.compile(_LDH_DOMAIN)
# A U-label, loosely: LDH plus non-ASCII, no hyphen at either end. Which non-ASCII characters
# may appear is checked with unicodedata below (letters, marks, digits), because IDNA2008's
# exact tables are not in the standard library and a registry refuses the rest anyway.
_U_LABEL: Final = re.compile(f"[{_LET_DIG}{_U}](?:[{_LET_DIG}{_U}-]*[{_LET_DIG}{_U}])?")

_IPV4: Final = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_TAG: Final = re.compile(r"[Ii][Pp][Vv]6:")
_IPV6_CHARS: Final = re.compile(r"[0-9A-Fa-f:.]+")  # keeps ipaddress's "%scope" out
# General-address-literal: Standardized-tag ":" 1*dcontent, dcontent = %d33-90 / %d94-126.
_GENERAL_LITERAL: Final = re.compile(f"[{_LET_DIG}-]*[{_LET_DIG}]:[!-Z^-~]+")

_KEYWORD: Final = re.compile(f"[{_LET_DIG}][{_LET_DIG}-]*")
_PARAM_ASCII: Final = re.compile(f"([{_LET_DIG}][{_LET_DIG}-]*)(?:=([!-<>-~]+))?")
_PARAM_UTF8: Final = re.compile(f"([{_LET_DIG}][{_LET_DIG}-]*)(?:=([!-<>-~{_U}]+))?")
_WSP: Final = re.compile(r"[ \t]+")

_NO_PARAMS: Final[tuple[tuple[str, str | None], ...]] = ()


def parse_mail_from(arg: str, *, utf8: bool) -> PathArgument:
    """Parse what follows ``MAIL``: ``FROM:`` Reverse-path, then ESMTP parameters.

    Args:
      arg: the text after the verb, trailing SP/HTAB removed, already decoded.
      utf8: whether RFC 6531 applies (UTF-8 allowed in the address and parameter values).

    Returns:
      The path; ``address`` is ``"<>"`` for the null reverse-path (bounces, RFC 5321
      section 4.5.5). A domainless address is refused: only RCPT has a Postmaster exception.

    Raises:
      GrammarError: with the kind that decides the reply.
    """
    return _parse_path(arg, _FROM, "FROM:", utf8=utf8, rcpt=False)


def parse_rcpt_to(arg: str, *, utf8: bool) -> PathArgument:
    """Parse what follows ``RCPT``: ``TO:`` Forward-path, then ESMTP parameters.

    ``<>`` is refused with :attr:`GrammarKind.NULL_PATH` (COMPAT D8): aiosmtpd records it as a
    recipient, which no delivery agent can use. ``<Postmaster>`` without a domain is accepted in
    any case, as RFC 5321 section 4.1.1.3 requires, and returned as written.

    Raises:
      GrammarError: with the kind that decides the reply.
    """
    return _parse_path(arg, _TO, "TO:", utf8=utf8, rcpt=True)


def parse_vrfy(arg: str, *, utf8: bool) -> str | None:
    """Return what a VRFY asks about, or ``None`` when it cannot be read (the engine: 502).

    RFC 5321 section 3.5.3 lets the argument be "a user name or a mailbox", so this accepts a
    Mailbox (bare or in angle brackets, source route dropped) and a String: a Dot-string such as
    ``smith`` or ``john.smith``, or a Quoted-string such as ``"Fred Smith"`` (quotes kept).
    Several unquoted words are not a String and give ``None``; aiosmtpd would quote them.

    >>> parse_vrfy("<postmaster@example.org>", utf8=False)
    'postmaster@example.org'
    >>> parse_vrfy('"Fred Smith"', utf8=False)
    '"Fred Smith"'
    >>> parse_vrfy("<nobody@example.org", utf8=False) is None
    True
    """
    text = arg.strip(" \t")
    if not text or (not utf8 and not text.isascii()):
        return None
    if text[0] == "<":
        if text[-1] != ">":
            return None
        body = _BRACKET_BODY.match(text, 1)
        if body is None or body.end() != len(text) - 1:
            return None  # "<a>>", "<<a>", or a quote swallowing the ">"
        text = text[1:-1]
        if text[:1] == "@":
            try:
                text = _drop_route(text, utf8=utf8)
            except GrammarError:
                return None
    string = _STRING_UTF8 if utf8 else _STRING_ASCII
    if string.fullmatch(text) is not None:
        return text
    try:
        _check_mailbox(text, utf8=utf8)
    except GrammarError:
        return None
    return text


def is_esmtp_keyword(word: str) -> bool:
    """Whether ``word`` is an RFC 5321 esmtp-keyword: ``(ALPHA / DIGIT) *(ALPHA / DIGIT / "-")``.

    Used for EHLO keywords and parameter names alike; aiosmtpd refuses keywords holding a
    hyphen (COMPAT D12), which the grammar allows.

    >>> is_esmtp_keyword("X-FOO"), is_esmtp_keyword("-X"), is_esmtp_keyword("")
    (True, False, False)
    """
    return _KEYWORD.fullmatch(word) is not None


# --- Internals --------------------------------------------------------------------------


def _parse_path(
    arg: str, prefix: re.Pattern[str], word: str, *, utf8: bool, rcpt: bool
) -> PathArgument:
    head = prefix.match(arg)
    if head is None:
        raise GrammarError(GrammarKind.SYNTAX, f"expected {word!r}")
    pos = head.end()

    fast = _FAST.match(arg, pos)
    if fast is not None and len(fast.group(2)) <= _MAX_DOMAIN:
        rest = fast.group(3)
        params = _parse_params(rest, utf8=utf8) if rest else _NO_PARAMS
        return PathArgument(fast.group(1), params, False)

    content, bracketed, rest = _split_path(arg, pos)
    if content == "" and bracketed:
        if rcpt:
            raise GrammarError(GrammarKind.NULL_PATH, "the null path is not a recipient")
        address = "<>"
    else:
        address = _check_path(content, utf8=utf8, rcpt=rcpt)
    return PathArgument(address, _parse_params(rest, utf8=utf8), not address.isascii())


def _split_path(arg: str, pos: int) -> tuple[str, bool, str]:
    """Cut ``arg[pos:]`` into the path's content, whether it was bracketed, and the rest."""
    if pos == len(arg):
        raise GrammarError(GrammarKind.SYNTAX, "no address")
    if arg[pos] == "<":
        bracketed = True
        m = _BRACKETED.match(arg, pos)
        if m is None:
            stop = _BRACKET_BODY.match(arg, pos + 1)
            end = stop.end() if stop is not None else pos + 1
            if end < len(arg) and arg[end] == '"':
                raise GrammarError(GrammarKind.BAD_MAILBOX, "unterminated quoted string")
            raise GrammarError(GrammarKind.UNBALANCED, "'<' without a matching '>'")
        content, end = m.group(1), m.end()
    else:
        bracketed = False
        m = _BARE.match(arg, pos)
        end = m.end() if m is not None else pos
        content = arg[pos:end]
    rest = arg[end:]
    if rest:
        first = rest[0]
        if first == ">":
            raise GrammarError(GrammarKind.UNBALANCED, "'>' without a matching '<'")
        if first == "<":
            raise GrammarError(GrammarKind.UNBALANCED, "'<' after the path")
        if first == '"' and not bracketed:
            raise GrammarError(GrammarKind.BAD_MAILBOX, "unterminated quoted string")
        if first not in " \t":
            raise GrammarError(GrammarKind.SYNTAX, "junk after the path")
    return content, bracketed, rest


def _check_path(content: str, *, utf8: bool, rcpt: bool) -> str:
    """Validate a non-empty path body; return the address with any source route dropped."""
    if not utf8 and not content.isascii():
        raise GrammarError(GrammarKind.NON_ASCII, "non-ASCII address without SMTPUTF8")
    if rcpt and content.isascii() and content.lower() == "postmaster":
        return content
    mailbox = _drop_route(content, utf8=utf8) if content[0] == "@" else content
    _check_mailbox(mailbox, utf8=utf8)
    return mailbox


def _drop_route(content: str, *, utf8: bool) -> str:
    """Check and remove an RFC 5321 A-d-l (``@a.example,@b.example:``)."""
    m = _ROUTE.match(content)
    if m is None:
        raise GrammarError(GrammarKind.BAD_MAILBOX, "malformed source route")
    for at_domain in m.group(1).split(","):
        if not _is_domain(at_domain[1:], utf8=utf8):
            raise GrammarError(GrammarKind.BAD_MAILBOX, "malformed domain in source route")
    return content[m.end() :]


def _check_mailbox(mailbox: str, *, utf8: bool) -> None:
    local = (_LOCAL_UTF8 if utf8 else _LOCAL_ASCII).match(mailbox)
    if local is None:
        raise GrammarError(GrammarKind.BAD_MAILBOX, "malformed local part or missing '@'")
    domain = mailbox[local.end() :]
    if domain[:1] == "[":
        if not _is_address_literal(domain):
            raise GrammarError(GrammarKind.BAD_MAILBOX, "malformed address literal")
    elif not _is_domain(domain, utf8=utf8):
        raise GrammarError(GrammarKind.BAD_MAILBOX, "malformed domain")


def _is_domain(domain: str, *, utf8: bool) -> bool:
    if domain.isascii():
        return len(domain) <= _MAX_DOMAIN and _DOMAIN_ASCII.fullmatch(domain) is not None
    if not utf8:
        return False
    # surrogatepass only guards the length count; _U_LABEL has already refused surrogates.
    if len(domain.encode("utf-8", "surrogatepass")) > _MAX_DOMAIN:
        return False
    return all(_is_u_label(label) for label in domain.split("."))


def _is_u_label(label: str) -> bool:
    if label.isascii():
        return _DOMAIN_ASCII.fullmatch(label) is not None and len(label) <= _MAX_LABEL
    if _U_LABEL.fullmatch(label) is None:
        return False
    if len(label.encode("utf-8", "surrogatepass")) > _MAX_LABEL:
        return False
    # Letters, combining marks (needed by Indic and Thai scripts) and digits; this refuses
    # look-alike separators such as U+3002 IDEOGRAPHIC FULL STOP, spaces and symbols.
    return all(ch.isascii() or unicodedata.category(ch)[0] in "LMN" for ch in label)


def _is_address_literal(literal: str) -> bool:
    """``[IPv4]``, ``[IPv6:...]`` or ``[tag:content]`` (RFC 5321 section 4.1.3)."""
    if len(literal) < 3 or literal[-1] != "]":
        return False
    inner = literal[1:-1]
    v4 = _IPV4.fullmatch(inner)
    if v4 is not None:
        return all(int(part) <= 255 for part in v4.groups())  # Snum, leading zeros allowed
    if _IPV6_TAG.match(inner) is not None:
        # A literal tagged IPv6 must be one; it does not fall back to the general form.
        text = inner[5:]
        if _IPV6_CHARS.fullmatch(text) is None:
            return False
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return False
        return True
    return _GENERAL_LITERAL.fullmatch(inner) is not None


def _parse_params(text: str, *, utf8: bool) -> tuple[tuple[str, str | None], ...]:
    text = text.strip(" \t")
    if not text:
        return _NO_PARAMS
    pattern = _PARAM_UTF8 if utf8 else _PARAM_ASCII
    params: list[tuple[str, str | None]] = []
    for word in _WSP.split(text):
        m = pattern.fullmatch(word)
        if m is None:
            raise GrammarError(GrammarKind.PARAM_SYNTAX, f"malformed parameter {word!r}")
        params.append((m.group(1).upper(), m.group(2)))
    return tuple(params)
