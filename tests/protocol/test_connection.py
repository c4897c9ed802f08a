r"""The engine against COMPAT.md section 5.1: every row it answers by itself, in every chunking.

Each dialogue is fed whole, one octet at a time, and in ragged pieces; the replies the client
would read back must be the same in all three (``how`` below).
"""

from __future__ import annotations

import base64
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine_driver import CHUNKINGS, Driver, chunk, run

from smtptrio.protocol import replies
from smtptrio.protocol.config import Config
from smtptrio.protocol.connection import (
    Connection,
    LocalProtocolError,
    Phase,
    ProtocolError,
    RemoteProtocolError,
)
from smtptrio.protocol.events import (
    CLOSED,
    NEED_DATA,
    Auth,
    AuthLine,
    ConnectionLost,
    Ehlo,
    EndOfData,
    Extension,
    Help,
    Mail,
    Noop,
    Rcpt,
    Vrfy,
)
from smtptrio.protocol.replies import Reply

EHLO = b"EHLO client.example\r\n"
HELO = b"HELO client.example\r\n"
MAIL = b"MAIL FROM:<alice@example.org>\r\n"
RCPT = b"RCPT TO:<bob@example.org>\r\n"
DATA = b"DATA\r\n"
NOOP = b"NOOP\r\n"
QUIT = b"QUIT\r\n"

GREET = (250, None)  # HELO/EHLO: no enhanced code (RFC 2034)
OK = (250, "2.0.0")
SENDER_OK = (250, "2.1.0")
RCPT_OK = (250, "2.1.5")
GO_AHEAD = (354, None)
BYE = (221, "2.0.0")
BAD_SEQ = (503, "5.5.1")
SYNTAX = (501, "5.5.4")
UNKNOWN = (500, "5.5.2")
CLOSING = (421, "4.7.0")
NOT_IMPLEMENTED_PARAM = (555, "5.5.4")

TLS = {"tls_available": True}
AUTH = {"auth_mechanisms": ("LOGIN", "PLAIN")}
AUTH_NO_TLS = {**AUTH, "auth_require_tls": False}
UTF8 = {"enable_smtputf8": True}

GOOD_PLAIN = base64.b64encode(b"\x00user\x00secret").decode()
BAD_PLAIN = base64.b64encode(b"\x00user\x00wrong").decode()


def line(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return raw + b"\r\n"


@dataclass(frozen=True)
class Case:
    id: str
    lines: tuple[bytes, ...]
    expected: tuple[tuple[int, str | None], ...]
    config: dict[str, Any] = field(default_factory=dict)


def case(
    id: str,
    lines: list[bytes | str],
    expected: list[tuple[int, str | None]],
    **config: Any,
) -> Case:
    return Case(id, tuple(line(x) if isinstance(x, str) else x for x in lines), tuple(expected),
                config)


def mail_line(total: int, prefix: str = "MAIL FROM:<a@b.example> ") -> bytes:
    """A MAIL line of exactly ``total`` octets before CRLF, padded with an X-PAD parameter."""
    pad = total - len(prefix) - len("X=")
    assert pad > 0
    return f"{prefix}X={'y' * pad}".encode() + b"\r\n"


def noop_line(total: int) -> bytes:
    return b"NOOP " + b"x" * (total - 5) + b"\r\n"


CASES = [
    # --- sessions that work
    case("helo-mail-rcpt-data", [HELO, MAIL, RCPT, DATA, b"hi\r\n.\r\n", QUIT],
         [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, OK, BYE]),
    case("ehlo-null-sender", [EHLO, "MAIL FROM:<>", RCPT], [GREET, SENDER_OK, RCPT_OK]),
    case("verbs-case-insensitive", ["ehlo x", "mail from:<a@b.example>", "rCpT To:<c@d.example>",
                                    "noop", "rset"], [GREET, SENDER_OK, RCPT_OK, OK, OK]),
    case("noop-with-argument", ["NOOP anything at all"], [OK]),
    case("noop-trailing-white-space", ["NOOP \t "], [OK]),
    case("quit-trailing-space-is-no-argument", ["QUIT "], [BYE]),
    case("htab-separates-like-sp", [EHLO, "MAIL\tFROM:<a@b.example>", "RCPT\tTO:\t<c@d.example>"],
         [GREET, SENDER_OK, RCPT_OK]),
    case("rset-ends-transaction", [EHLO, MAIL, "RSET", MAIL], [GREET, SENDER_OK, OK, SENDER_OK]),
    case("ehlo-ends-transaction", [EHLO, MAIL, EHLO, RCPT], [GREET, SENDER_OK, GREET, BAD_SEQ]),
    case("helo-ends-transaction", [EHLO, MAIL, HELO, MAIL], [GREET, SENDER_OK, GREET, SENDER_OK]),
    case("postmaster-without-domain", [EHLO, MAIL, "RCPT TO:<Postmaster>"],
         [GREET, SENDER_OK, RCPT_OK]),
    case("source-route-accepted", [EHLO, "MAIL FROM:<@relay.example:a@b.example>"],
         [GREET, SENDER_OK]),
    case("no-brackets-accepted", [EHLO, "MAIL FROM:a@b.example", "RCPT TO: c@d.example"],
         [GREET, SENDER_OK, RCPT_OK]),
    # --- command order (RFC 5321 section 4.1.4)
    case("mail-before-helo", [MAIL], [BAD_SEQ]),
    case("rcpt-before-helo", [RCPT], [BAD_SEQ]),
    case("data-before-helo", [DATA], [BAD_SEQ]),
    case("nested-mail", [EHLO, MAIL, MAIL], [GREET, SENDER_OK, BAD_SEQ]),
    case("rcpt-before-mail", [EHLO, RCPT], [GREET, BAD_SEQ]),
    case("data-before-mail", [EHLO, DATA], [GREET, BAD_SEQ]),
    case("data-before-rcpt", [EHLO, MAIL, DATA], [GREET, SENDER_OK, BAD_SEQ]),
    case("data-with-argument-before-rcpt", [EHLO, MAIL, "DATA now"], [GREET, SENDER_OK, BAD_SEQ]),
    case("noop-rset-quit-before-helo", [NOOP, "RSET", QUIT], [OK, OK, BYE]),
    case("vrfy-help-before-helo", ["VRFY <a@b.example>", "HELP"], [(252, "2.0.0"), (214, "2.0.0")]),
    # --- arguments where none are allowed
    case("quit-argument", ["QUIT now"], [SYNTAX]),
    case("rset-argument", ["RSET all"], [SYNTAX]),
    case("data-argument", [EHLO, MAIL, RCPT, "DATA x"], [GREET, SENDER_OK, RCPT_OK, SYNTAX]),
    case("starttls-argument", [EHLO, "STARTTLS x"], [GREET, SYNTAX], **TLS),
    case("helo-without-argument", ["HELO"], [SYNTAX]),
    case("helo-only-white-space", ["HELO  \t"], [SYNTAX]),
    case("ehlo-without-argument", ["EHLO"], [SYNTAX]),
    case("failed-helo-leaves-no-greeting", ["EHLO", MAIL], [SYNTAX, BAD_SEQ]),
    # --- unknown verbs and bad lines
    case("unknown-verb", ["XYZZY"], [UNKNOWN]),
    case("verb-with-digit", ["MA1L FROM:<a@b.example>"], [UNKNOWN]),
    case("verb-glued-to-colon", ["MAIL:FROM:<a@b.example>"], [UNKNOWN]),
    case("fifth-unknown-verb-closes", ["A", "B", "C", "D", "E", NOOP],
         [UNKNOWN] * 4 + [CLOSING]),
    case("unknown-limit-off", ["A", "B", "C", "D", "E", "F", NOOP], [UNKNOWN] * 6 + [OK],
         unrecognized_command_limit=None),
    case("unknown-limit-two", ["A", "B", NOOP], [UNKNOWN, CLOSING], unrecognized_command_limit=2),
    case("empty-line", [b"\r\n", NOOP], [UNKNOWN, OK]),
    case("leading-space", [" NOOP", NOOP], [UNKNOWN, OK]),
    case("leading-tab", ["\tNOOP"], [UNKNOWN]),
    case("only-spaces", ["   "], [UNKNOWN]),
    case("nul-in-line", [b"NOOP a\x00b\r\n", NOOP], [UNKNOWN, OK]),
    case("nul-in-address", [EHLO, b"MAIL FROM:<a\x00b@x.example>\r\n"], [GREET, UNKNOWN]),
    case("bare-cr-in-line", [b"NOOP a\rb\r\n", NOOP], [UNKNOWN, OK]),
    case("bare-lf-is-not-a-line-end", [b"NOOP\nNOOP\r\n"], [UNKNOWN]),
    case("bare-lf-smuggled-command", [EHLO, b"NOOP\nMAIL FROM:<a@b.example>\r\n", RCPT],
         [GREET, UNKNOWN, BAD_SEQ]),
    case("cr-before-crlf", [b"NOOP\r\r\n"], [UNKNOWN]),
    case("non-ascii-verb", ["NÖOP"], [UNKNOWN]),
    case("non-ascii-verbs-are-not-unknown-verbs", ["NÖOP"] * 5 + [NOOP], [UNKNOWN] * 5 + [OK]),
    case("non-ascii-without-smtputf8", ["NOOP grüße", NOOP], [UNKNOWN, OK]),
    case("non-ascii-address-without-smtputf8", [EHLO, "MAIL FROM:<jörg@example.org>"],
         [GREET, UNKNOWN]),
    case("utf8-with-smtputf8", ["NOOP grüße"], [OK], **UTF8),
    case("invalid-utf8-byte", [b"NOOP \xff\r\n"], [UNKNOWN], **UTF8),
    case("overlong-utf8", [b"NOOP \xc0\xaf\r\n"], [UNKNOWN], **UTF8),
    case("utf8-surrogate", [b"NOOP \xed\xa0\x80\r\n"], [UNKNOWN], **UTF8),
    case("truncated-utf8", [b"NOOP \xe2\x82\r\n", NOOP], [UNKNOWN, OK], **UTF8),
    # --- command line length (512 octets before CRLF; MAIL +26 with SIZE, +10 with SMTPUTF8)
    case("line-512-ok", [noop_line(512)], [OK]),
    case("line-513-too-long", [noop_line(513), NOOP], [UNKNOWN, OK]),
    case("mail-538-with-size", [EHLO, mail_line(538)], [GREET, NOT_IMPLEMENTED_PARAM]),
    case("mail-539-with-size", [EHLO, mail_line(539), NOOP], [GREET, UNKNOWN, OK]),
    case("mail-548-with-size-and-utf8", [EHLO, mail_line(548)], [GREET, NOT_IMPLEMENTED_PARAM],
         **UTF8),
    case("mail-549-with-size-and-utf8", [EHLO, mail_line(549)], [GREET, UNKNOWN], **UTF8),
    case("mail-522-with-utf8-only", [EHLO, mail_line(522)], [GREET, NOT_IMPLEMENTED_PARAM],
         data_size_limit=None, **UTF8),
    case("mail-523-with-utf8-only", [EHLO, mail_line(523)], [GREET, UNKNOWN],
         data_size_limit=None, **UTF8),
    case("mail-513-without-extensions", [EHLO, mail_line(513)], [GREET, UNKNOWN],
         data_size_limit=None),
    case("mail-513-after-helo", [HELO, mail_line(513)], [GREET, UNKNOWN]),
    case("mail-512-after-helo", [HELO, mail_line(512)], [GREET, SYNTAX]),
    case("rcpt-513-after-ehlo", [EHLO, MAIL, mail_line(513, "RCPT TO:<c@d.example> ")],
         [GREET, SENDER_OK, UNKNOWN]),
    case("limit-follows-current-ehlo", [EHLO, HELO, mail_line(513)], [GREET, GREET, UNKNOWN]),
    case("custom-command-size-limit", [noop_line(100), noop_line(101)], [OK, UNKNOWN],
         command_size_limit=100),
    case("per-verb-size-limit", [noop_line(600), noop_line(601)], [OK, UNKNOWN],
         command_size_limits={"NOOP": 600}),
    case("long-line-then-commands-work", [b"NOOP " + b"x" * 100_000 + b"\r\n", EHLO, MAIL],
         [UNKNOWN, GREET, SENDER_OK]),
    # --- MAIL parameters
    case("size-ok", [EHLO, "MAIL FROM:<a@b.example> SIZE=1000"], [GREET, SENDER_OK]),
    case("size-at-limit", [EHLO, "MAIL FROM:<a@b.example> SIZE=1000"], [GREET, SENDER_OK],
         data_size_limit=1000),
    case("size-over-limit", [EHLO, "MAIL FROM:<a@b.example> SIZE=1001", MAIL],
         [GREET, (552, "5.3.4"), SENDER_OK], data_size_limit=1000),
    case("size-not-numeric", [EHLO, "MAIL FROM:<a@b.example> SIZE=ten"], [GREET, SYNTAX]),
    case("size-negative", [EHLO, "MAIL FROM:<a@b.example> SIZE=-1"], [GREET, SYNTAX]),
    case("size-without-value", [EHLO, "MAIL FROM:<a@b.example> SIZE"], [GREET, SYNTAX]),
    case("size-not-offered", [EHLO, "MAIL FROM:<a@b.example> SIZE=10"],
         [GREET, NOT_IMPLEMENTED_PARAM], data_size_limit=None),
    case("size-keyword-case", [EHLO, "MAIL FROM:<a@b.example> size=10"], [GREET, SENDER_OK]),
    case("body-8bitmime", [EHLO, "MAIL FROM:<a@b.example> BODY=8BITMIME"], [GREET, SENDER_OK]),
    case("body-7bit-lower-case", [EHLO, "MAIL FROM:<a@b.example> body=7bit"], [GREET, SENDER_OK]),
    case("body-bad-value", [EHLO, "MAIL FROM:<a@b.example> BODY=BINARYMIME"], [GREET, SYNTAX]),
    case("body-without-value", [EHLO, "MAIL FROM:<a@b.example> BODY"], [GREET, SYNTAX]),
    case("body-without-8bitmime", [EHLO, "MAIL FROM:<a@b.example> BODY=8BITMIME"],
         [GREET, NOT_IMPLEMENTED_PARAM], decode_data=True),
    case("body-decode-data-with-smtputf8", [EHLO, "MAIL FROM:<a@b.example> BODY=8BITMIME"],
         [GREET, SENDER_OK], decode_data=True, **UTF8),
    case("smtputf8-disabled", [EHLO, "MAIL FROM:<a@b.example> SMTPUTF8"],
         [GREET, NOT_IMPLEMENTED_PARAM]),
    case("smtputf8-enabled", [EHLO, "MAIL FROM:<a@b.example> SMTPUTF8"], [GREET, SENDER_OK],
         **UTF8),
    case("smtputf8-with-value", [EHLO, "MAIL FROM:<a@b.example> SMTPUTF8=yes"], [GREET, SYNTAX],
         **UTF8),
    case("unknown-parameter", [EHLO, "MAIL FROM:<a@b.example> XFOO=1"],
         [GREET, NOT_IMPLEMENTED_PARAM]),
    case("unknown-parameter-with-hyphen", [EHLO, "MAIL FROM:<a@b.example> X-FOO=bar"],
         [GREET, NOT_IMPLEMENTED_PARAM]),
    case("parameter-syntax", [EHLO, "MAIL FROM:<a@b.example> =x"], [GREET, SYNTAX]),
    # Checked and kept twice, as aiosmtpd does (no RFC forbids it).
    case("parameter-twice", [EHLO, "MAIL FROM:<a@b.example> SIZE=1 SIZE=2"], [GREET, SENDER_OK]),
    case("parameters-after-helo", [HELO, "MAIL FROM:<a@b.example> SIZE=10"], [GREET, SYNTAX]),
    case("unknown-parameter-after-helo", [HELO, "MAIL FROM:<a@b.example> XFOO"], [GREET, SYNTAX]),
    case("rcpt-parameter", [EHLO, MAIL, "RCPT TO:<c@d.example> NOTIFY=NEVER"],
         [GREET, SENDER_OK, NOT_IMPLEMENTED_PARAM]),
    case("rcpt-parameter-after-helo", [HELO, MAIL, "RCPT TO:<c@d.example> NOTIFY=NEVER"],
         [GREET, SENDER_OK, SYNTAX]),
    # --- paths
    case("mail-without-argument", [EHLO, "MAIL"], [GREET, SYNTAX]),
    case("mail-without-from", [EHLO, "MAIL <a@b.example>"], [GREET, SYNTAX]),
    case("mail-without-address", [EHLO, "MAIL FROM:"], [GREET, SYNTAX]),
    case("rcpt-without-argument", [EHLO, MAIL, "RCPT"], [GREET, SENDER_OK, SYNTAX]),
    case("rcpt-without-to", [EHLO, MAIL, "RCPT <c@d.example>"], [GREET, SENDER_OK, SYNTAX]),
    case("rcpt-without-address", [EHLO, MAIL, "RCPT TO:"], [GREET, SENDER_OK, SYNTAX]),
    case("rcpt-null-path", [EHLO, MAIL, "RCPT TO:<>"], [GREET, SENDER_OK, (501, "5.1.3")]),
    case("mail-unbalanced-open", [EHLO, "MAIL FROM:<a@b.example"], [GREET, SYNTAX]),
    case("mail-unbalanced-close", [EHLO, "MAIL FROM:a@b.example>"], [GREET, SYNTAX]),
    case("rcpt-unbalanced", [EHLO, MAIL, "RCPT TO:<<c@d.example>"], [GREET, SENDER_OK, SYNTAX]),
    case("mail-malformed", [EHLO, "MAIL FROM:<a..b@example.org>"], [GREET, (553, "5.1.7")]),
    case("mail-bad-domain", [EHLO, "MAIL FROM:<a@-x.example>"], [GREET, (553, "5.1.7")]),
    case("mail-domainless", [EHLO, "MAIL FROM:<postmaster>"], [GREET, (553, "5.1.7")]),
    case("rcpt-malformed", [EHLO, MAIL, "RCPT TO:<.c@d.example>"],
         [GREET, SENDER_OK, (553, "5.1.3")]),
    case("utf8-address-needs-parameter", [EHLO, "MAIL FROM:<jörg@example.org>"],
         [GREET, (553, "5.6.7")], **UTF8),
    case("utf8-address-with-parameter", [EHLO, "MAIL FROM:<jörg@example.org> SMTPUTF8",
                                         "RCPT TO:<søren@exämple.org>"],
         [GREET, SENDER_OK, RCPT_OK], **UTF8),
    case("utf8-recipient-needs-parameter", [EHLO, MAIL, "RCPT TO:<søren@example.org>"],
         [GREET, SENDER_OK, (553, "5.6.7")], **UTF8),
    case("local-part-64-ok", [EHLO, f"MAIL FROM:<{'a' * 64}@b.example>"], [GREET, SENDER_OK],
         local_part_limit=64),
    case("local-part-65-sender", [EHLO, f"MAIL FROM:<{'a' * 65}@b.example>"],
         [GREET, (553, "5.1.7")], local_part_limit=64),
    case("local-part-65-recipient", [EHLO, MAIL, f"RCPT TO:<{'a' * 65}@b.example>"],
         [GREET, SENDER_OK, (553, "5.1.3")], local_part_limit=64),
    case("local-part-limit-off", [EHLO, f"MAIL FROM:<{'a' * 200}@b.example>"],
         [GREET, SENDER_OK]),
    case("max-recipients", [EHLO, MAIL, RCPT, RCPT, RCPT, DATA],
         [GREET, SENDER_OK, RCPT_OK, RCPT_OK, (452, "4.5.3"), GO_AHEAD], max_recipients=2),
    case("max-recipients-per-transaction", [EHLO, MAIL, RCPT, RCPT, "RSET", MAIL, RCPT],
         [GREET, SENDER_OK, RCPT_OK, (452, "4.5.3"), OK, SENDER_OK, RCPT_OK], max_recipients=1),
    # --- VRFY, EXPN, HELP
    case("vrfy", ["VRFY <a@b.example>", "VRFY smith", 'VRFY "Fred Smith"'],
         [(252, "2.0.0")] * 3),
    case("vrfy-without-argument", ["VRFY"], [SYNTAX]),
    case("vrfy-unparsable", ["VRFY two words", "VRFY <a@b.example"], [(502, "5.5.4")] * 2),
    case("expn", ["EXPN staff", "EXPN"], [(502, "5.5.1")] * 2),
    case("help", ["HELP", "HELP mail", "HELP NOSUCH"], [(214, "2.0.0"), (214, "2.0.0"),
                                                        (504, "5.5.4")]),
    # --- STARTTLS refusals the engine answers
    case("starttls-without-tls", [EHLO, "STARTTLS"], [GREET, (454, "4.7.0")]),
    case("starttls-before-ehlo", ["STARTTLS", EHLO], [BAD_SEQ, GREET], **TLS),
    case("starttls-under-implicit-tls", [EHLO, "STARTTLS"], [GREET, BAD_SEQ], **TLS,
         implicit_tls=True),
    # --- require_starttls: only NOOP, EHLO, STARTTLS and QUIT before TLS
    case("require-starttls", [NOOP, EHLO, HELO, MAIL, "RSET", "HELP", "VRFY <a@b.example>",
                              "XYZZY", "EXPN a", "AUTH PLAIN", QUIT],
         [OK, GREET] + [(530, "5.7.0")] * 8 + [BYE], require_starttls=True, **TLS, **AUTH),
    case("require-starttls-needs-a-tls-context", [EHLO, MAIL], [GREET, SENDER_OK],
         require_starttls=True),
    case("require-starttls-lhlo-for-lmtp", ["LHLO c.example", MAIL], [GREET, (530, "5.7.0")],
         require_starttls=True, lmtp=True, **TLS),
    # --- auth_required: HELP, VRFY, MAIL, RCPT, DATA
    case("auth-required", [EHLO, "HELP", "VRFY <a@b.example>", MAIL, RCPT, DATA, NOOP, "RSET",
                           "EXPN x"],
         [GREET] + [(530, "5.7.0")] * 5 + [OK, OK, (502, "5.5.1")], auth_required=True),
    case("auth-required-helo-first", [MAIL], [BAD_SEQ], auth_required=True),
    case("auth-required-lifted", [EHLO, f"AUTH PLAIN {GOOD_PLAIN}", MAIL, RCPT],
         [GREET, (235, "2.7.0"), SENDER_OK, RCPT_OK], auth_required=True, **AUTH_NO_TLS),
    # --- AUTH pre-checks, in the order of COMPAT 2.4
    case("auth-before-ehlo", [f"AUTH PLAIN {GOOD_PLAIN}"], [BAD_SEQ], **AUTH),
    case("auth-after-helo", [HELO, f"AUTH PLAIN {GOOD_PLAIN}"], [GREET, (500, "5.5.1")], **AUTH),
    case("auth-needs-tls", [EHLO, f"AUTH PLAIN {GOOD_PLAIN}"], [GREET, (538, "5.7.11")], **AUTH),
    case("auth-under-implicit-tls", [EHLO, f"AUTH PLAIN {GOOD_PLAIN}"], [GREET, (235, "2.7.0")],
         implicit_tls=True, **AUTH),
    case("auth-twice", [EHLO, f"AUTH PLAIN {GOOD_PLAIN}", f"AUTH PLAIN {GOOD_PLAIN}"],
         [GREET, (235, "2.7.0"), BAD_SEQ], **AUTH_NO_TLS),
    case("auth-survives-rset-and-ehlo", [EHLO, f"AUTH PLAIN {GOOD_PLAIN}", "RSET", EHLO,
                                         f"AUTH PLAIN {GOOD_PLAIN}"],
         [GREET, (235, "2.7.0"), OK, GREET, BAD_SEQ], **AUTH_NO_TLS),
    case("auth-in-transaction", [EHLO, MAIL, f"AUTH PLAIN {GOOD_PLAIN}"],
         [GREET, SENDER_OK, BAD_SEQ], **AUTH_NO_TLS),
    case("auth-failure-limit", [EHLO] + [f"AUTH PLAIN {BAD_PLAIN}"] * 3 + ["AUTH PLAIN", NOOP],
         [GREET] + [(535, "5.7.8")] * 3 + [CLOSING], **AUTH_NO_TLS),
    case("auth-failure-limit-off", [EHLO] + [f"AUTH PLAIN {BAD_PLAIN}"] * 4
         + [f"AUTH PLAIN {GOOD_PLAIN}"], [GREET] + [(535, "5.7.8")] * 4 + [(235, "2.7.0")],
         auth_failure_limit=None, **AUTH_NO_TLS),
    case("auth-limit-checked-before-syntax", [EHLO] + [f"AUTH PLAIN {BAD_PLAIN}"] * 3 + ["AUTH"],
         [GREET] + [(535, "5.7.8")] * 3 + [CLOSING], **AUTH_NO_TLS),
    case("auth-in-transaction-before-limit", [EHLO] + [f"AUTH PLAIN {BAD_PLAIN}"] * 3
         + [MAIL, "AUTH PLAIN"], [GREET] + [(535, "5.7.8")] * 3 + [SENDER_OK, BAD_SEQ],
         **AUTH_NO_TLS),
    case("auth-without-mechanism", [EHLO, "AUTH"], [GREET, SYNTAX], **AUTH_NO_TLS),
    case("auth-too-many-words", [EHLO, "AUTH PLAIN a b"], [GREET, SYNTAX], **AUTH_NO_TLS),
    case("auth-unknown-mechanism", [EHLO, "AUTH CRAM-MD5"], [GREET, (504, "5.5.4")],
         **AUTH_NO_TLS),
    case("auth-mechanism-case-insensitive", [EHLO, f"AUTH plain {GOOD_PLAIN}"],
         [GREET, (235, "2.7.0")], **AUTH_NO_TLS),
    case("auth-order-tls-before-syntax", [EHLO, "AUTH"], [GREET, (538, "5.7.11")], **AUTH),
    case("auth-order-helo-before-tls", [HELO, "AUTH"], [GREET, (500, "5.5.1")], **AUTH),
    case("auth-not-offered-is-unknown", [EHLO, "AUTH PLAIN"], [GREET, UNKNOWN]),
    case("auth-order-greeting-before-tls", ["AUTH PLAIN"], [BAD_SEQ], **AUTH),
    case("auth-words-separated-by-sp-or-htab", [EHLO, f"AUTH\tPLAIN \t {GOOD_PLAIN}\t"],
         [GREET, (235, "2.7.0")], **AUTH_NO_TLS),
    case("auth-words-not-split-at-other-white-space", [EHLO, "AUTH PLAIN\x1fAHVzZXI="],
         [GREET, (504, "5.5.4")], **AUTH_NO_TLS),
    case("auth-words-not-split-at-nbsp", [EHLO, "AUTH PLAIN\u00a0AHVzZXI="],
         [GREET, (504, "5.5.4")], **AUTH_NO_TLS, **UTF8),
    # --- AUTH exchanges (the driver plays the built-in PLAIN and LOGIN)
    case("auth-plain-challenge", [EHLO, "AUTH PLAIN", GOOD_PLAIN, MAIL],
         [GREET, (334, None), (235, "2.7.0"), SENDER_OK], **AUTH_NO_TLS),
    case("auth-login", [EHLO, "AUTH LOGIN", "dXNlcg==", "c2VjcmV0"],
         [GREET, (334, None), (334, None), (235, "2.7.0")], **AUTH_NO_TLS),
    case("auth-login-initial-response", [EHLO, "AUTH LOGIN dXNlcg==", "c2VjcmV0"],
         [GREET, (334, None), (235, "2.7.0")], **AUTH_NO_TLS),
    case("auth-login-empty-initial-response", [EHLO, "AUTH LOGIN =", "c2VjcmV0"],
         [GREET, (334, None), (535, "5.7.8")], **AUTH_NO_TLS),
    case("auth-plain-empty-initial-response", [EHLO, "AUTH PLAIN ="],
         [GREET, (501, "5.5.2")], **AUTH_NO_TLS),
    case("auth-cancelled", [EHLO, "AUTH PLAIN", "*", NOOP],
         [GREET, (334, None), (501, "5.7.0"), OK], **AUTH_NO_TLS),
    case("auth-bad-base64", [EHLO, "AUTH PLAIN", "not base64!", NOOP],
         [GREET, (334, None), (501, "5.5.2"), OK], **AUTH_NO_TLS),
    case("auth-line-is-not-a-command", [EHLO, "AUTH LOGIN", MAIL, NOOP],
         [GREET, (334, None), (501, "5.5.2"), OK], **AUTH_NO_TLS),
    case("auth-line-that-looks-like-quit", [EHLO, "AUTH LOGIN", "QUIT", "NOOP", NOOP],
         [GREET, (334, None), (334, None), (535, "5.7.8"), OK], **AUTH_NO_TLS),
    case("auth-line-too-long", [EHLO, "AUTH PLAIN", "A" * 13000, NOOP],
         [GREET, (334, None), (500, "5.5.6"), OK], **AUTH_NO_TLS),
    case("auth-line-12288-read", [EHLO, "AUTH PLAIN", "A" * 12288, NOOP],
         [GREET, (334, None), (501, "5.5.2"), OK], **AUTH_NO_TLS),
    # RFC 4954 section 4: an AUTH line over the limit gets 500 5.5.6.
    case("auth-command-line-too-long", [EHLO, "AUTH PLAIN " + "A" * 12300, NOOP],
         [GREET, (500, "5.5.6"), OK], **AUTH_NO_TLS),
    # ...also when other command lines may be longer than AUTH's 12288 octets.
    case("auth-command-line-too-long-with-long-commands",
         [EHLO, "AUTH PLAIN " + "A" * 13000, NOOP],
         [GREET, (500, "5.5.6"), OK], command_size_limit=20000, **AUTH_NO_TLS),
    case("auth-failures-counted-for-cancel", [EHLO] + ["AUTH PLAIN", "*"] * 3 + ["AUTH PLAIN"],
         [GREET] + [(334, None), (501, "5.7.0")] * 3 + [CLOSING], **AUTH_NO_TLS),
    # --- limits on the session
    case("call-limit", [NOOP, NOOP, NOOP, "RSET"], [OK, OK, CLOSING],
         command_call_limit={"NOOP": 2}),
    case("call-limit-star", [NOOP, "RSET", NOOP, NOOP], [OK, OK, OK, CLOSING],
         command_call_limit={"*": 2}),
    case("call-limit-default-20", [NOOP] + ["RSET"] * 21, [OK] + [OK] * 20 + [CLOSING],
         command_call_limit={"NOOP": 5}),
    case("call-limit-counts-unknown-verbs", ["XYZZY", "XYZZY"], [UNKNOWN, CLOSING],
         command_call_limit={"*": 1}),
    case("error-limit", [MAIL, MAIL, MAIL, NOOP], [BAD_SEQ, BAD_SEQ, CLOSING],
         error_limit=3),
    case("error-limit-off", [MAIL] * 60 + [NOOP], [BAD_SEQ] * 60 + [OK], error_limit=None),
    case("error-limit-default-50", [MAIL] * 51, [BAD_SEQ] * 49 + [CLOSING]),
    case("closing-reply-ends-input", ["A", "B", "C", "D", "E", QUIT], [UNKNOWN] * 4 + [CLOSING]),
    case("quit-ends-input", [QUIT, NOOP], [BYE]),
    # --- LMTP, extensions, no enhanced codes
    case("lmtp", ["LHLO c.example", HELO, EHLO, MAIL], [GREET, (500, "5.5.1"), (500, "5.5.1"),
                                                        SENDER_OK], lmtp=True),
    case("lhlo-outside-lmtp", ["LHLO c.example"], [UNKNOWN]),
    case("extension-verb", ["XYZZY magic"], [OK], extension_verbs=frozenset({"XYZZY"})),
    case("no-enhanced-codes", ["XYZZY", MAIL, EHLO, "MAIL FROM:<a@b.example> SIZE=x"],
         [(500, None), (503, None), GREET, (501, None)], enhanced_status_codes=False),
]


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_dialogue(c: Case, how: str) -> None:
    driver = run(c.lines, Config(**c.config), how=how)
    assert driver.codes == list(c.expected)


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# --- closing ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
def test_fifth_unknown_verb_closes_and_nothing_more_is_read(how: str) -> None:
    d = run([b"A\r\n", b"B\r\n", b"C\r\n", b"D\r\n", b"E\r\n", NOOP, QUIT], how=how)
    assert d.closed
    assert d.codes[-1] == CLOSING
    assert d.conn.closing
    assert d.conn.phase is Phase.CLOSED
    assert not d.of_type(Noop)
    assert d.conn.next_event() is CLOSED


def test_refused_events_say_which_verb_and_reply() -> None:
    d = run([b"XYZZY\r\n", MAIL])
    assert [(r.command, r.reply.code) for r in d.refused] == [("XYZZY", 500), ("MAIL", 503)]
    assert all(r.detail for r in d.refused)


def test_refused_event_carries_the_reply_as_sent() -> None:
    d = run([b"XYZZY\r\n"], Config(enhanced_status_codes=False))
    (refused,) = d.refused
    assert refused.reply.enhanced is None
    assert refused.reply.render() == bytes(d.wire)


def test_error_limit_reply_is_in_the_refused_event() -> None:
    d = run([MAIL, MAIL], Config(error_limit=2))
    assert d.refused[-1].reply == replies.TOO_MANY_ERRORS
    assert d.refused[-1].reply.closes


def test_handler_errors_do_not_count_toward_error_limit() -> None:
    no = Reply(550, "5.1.1", ("no such user",))
    d = run([EHLO, MAIL] + [RCPT] * 5 + [NOOP], Config(error_limit=2), overrides={"RCPT": no})
    assert d.codes == [GREET, SENDER_OK] + [(550, "5.1.1")] * 5 + [OK]


def test_handler_421_closes() -> None:
    d = run([NOOP, NOOP], overrides={"NOOP": Reply(421, "4.3.2", ("bye",))})
    assert d.codes == [(421, "4.3.2")]
    assert d.closed


# --- events carry what the handler needs ------------------------------------------------------


def test_mail_event_has_address_upper_cased_options_and_argument() -> None:
    d = run([EHLO, b"MAIL FROM:<Alice@Example.org> size=100 body=8bitmime smtputf8\r\n"],
            Config(enable_smtputf8=True))
    (mail,) = d.of_type(Mail)
    assert isinstance(mail, Mail)
    assert mail.address == "Alice@Example.org"
    assert mail.options == ("SIZE=100", "BODY=8BITMIME", "SMTPUTF8")
    assert mail.smtputf8
    assert mail.arg == "FROM:<Alice@Example.org> size=100 body=8bitmime smtputf8"


def test_null_sender_is_angle_brackets() -> None:
    d = run([EHLO, b"MAIL FROM:<>\r\n"])
    (mail,) = d.of_type(Mail)
    assert isinstance(mail, Mail) and mail.address == "<>"


def test_rcpt_event_drops_source_route() -> None:
    d = run([EHLO, MAIL, b"RCPT TO:<@a.example,@b.example:bob@example.org>\r\n"])
    (rcpt,) = d.of_type(Rcpt)
    assert isinstance(rcpt, Rcpt) and rcpt.address == "bob@example.org"


def test_vrfy_help_noop_events() -> None:
    d = run([b"VRFY <a@b.example>\r\n", b"HELP mail\r\n", b"HELP\r\n", b"NOOP  some  text \r\n"])
    assert [e for e in d.events if isinstance(e, Vrfy | Help | Noop)] == [
        Vrfy(address="a@b.example"),
        Help(topic="MAIL"),
        Help(topic=None),
        Noop(arg="some  text"),
    ]


def test_extension_event() -> None:
    d = run([b"xyzzy  a b\r\n", b"XYZZY\r\n"], Config(extension_verbs=frozenset({"XYZZY"})))
    assert d.of_type(Extension) == [Extension(name="XYZZY", arg="a b"),
                                     Extension(name="XYZZY", arg=None)]
    assert d.events[0].verb == "XYZZY"


def test_auth_event_keeps_initial_response_as_sent() -> None:
    d = run([EHLO, b"AUTH login =\r\n"], Config(**AUTH_NO_TLS))
    (auth,) = d.of_type(Auth)
    assert auth == Auth(mechanism="LOGIN", initial_response="=", arg="login =")


# --- EHLO lines (COMPAT 5.2) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, ("SIZE 33554432", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP")),
        (
            {"enable_smtputf8": True, "tls_available": True, **AUTH_NO_TLS},
            ("SIZE 33554432", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES",
             "STARTTLS", "AUTH LOGIN PLAIN", "HELP"),
        ),
        ({"data_size_limit": None}, ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP")),
        ({"data_size_limit": 0}, ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP")),
        ({"decode_data": True}, ("SIZE 33554432", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP")),
        (
            {"decode_data": True, "enable_smtputf8": True},
            ("SIZE 33554432", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES",
             "HELP"),
        ),
        ({"enhanced_status_codes": False}, ("SIZE 33554432", "8BITMIME", "PIPELINING", "HELP")),
        # AUTH only where usable: not before TLS while auth_require_tls
        ({**AUTH, "tls_available": True},
         ("SIZE 33554432", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS", "HELP")),
        ({**AUTH, "implicit_tls": True},
         ("SIZE 33554432", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES",
          "AUTH LOGIN PLAIN", "HELP")),
        ({"auth_mechanisms": ("XOAUTH2", "PLAIN", "LOGIN"), "auth_require_tls": False},
         ("SIZE 33554432", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES",
          "AUTH LOGIN PLAIN XOAUTH2", "HELP")),
    ],
)
def test_ehlo_lines(config: dict[str, Any], expected: tuple[str, ...]) -> None:
    d = run([EHLO], Config(**config))
    (ehlo,) = d.of_type(Ehlo)
    assert isinstance(ehlo, Ehlo)
    assert ehlo.extensions == expected
    assert d.replies[0].lines == ("mx.example", *expected)
    assert d.conn.ehlo_extensions() == expected


# --- DATA -----------------------------------------------------------------------------------

TRANSACTION = EHLO + MAIL + RCPT + DATA


def message(body: bytes, config: Config | None = None, *, how: str = "whole",
            after: bytes = NOOP) -> Driver:
    """Send ``body`` (terminator included by the caller) after a transaction, then ``after``."""
    return run(TRANSACTION + body + after, config, how=how)


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("body", "content"),
    [
        (b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..dot first\r\n.\r\n", b".dot first\r\n"),
        (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n"),
        (b"a\r\n..b\r\n..\r\n..c\r\n.\r\n", b"a\r\n.b\r\n.\r\n.c\r\n"),
        # RFC 5321 section 4.5.2: a leading period is removed even if the client forgot to
        # double it.
        (b".x\r\n.\r\n", b"x\r\n"),
        (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
        # Only CRLF starts a line: a period after a bare LF is text.
        (b"a\n..b\r\n.\r\n", b"a\n..b\r\n"),
        (b"8bit \xff\xfe\r\n.\r\n", b"8bit \xff\xfe\r\n"),
        (b"no final newline is impossible\r\n.\r\n", b"no final newline is impossible\r\n"),
        (b"\x00nul\r\n.\r\n", b"\x00nul\r\n"),
    ],
)
def test_message_content(body: bytes, content: bytes, how: str) -> None:
    d = message(body, how=how)
    assert d.messages == [content]
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, OK, OK]


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
        b"\r\n.\x00\r\n",
        b"\r\n \r\n.\n",
        b"\r\n..\r\n",
        b"\r\r\n.\r\r\n",
        b"\n\n.\n\n",
        b"\r\n.\r\r\n",
    ],
    ids=repr,
)
@pytest.mark.parametrize("how", CHUNKINGS)
def test_smuggled_terminators_do_not_end_the_message(smuggled: bytes, how: str) -> None:
    evil = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    body = b"first" + smuggled + evil + b"forged\r\n.\r\n"
    d = message(body, how=how)
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, OK, OK]
    assert len(d.messages) == 1
    assert evil in d.messages[0]
    assert len(d.of_type(Mail)) == 1


@pytest.mark.parametrize("smuggled", [b"\n.\n", b"\n.\r\n", b"\r.\r\n"], ids=repr)
def test_smuggling_right_after_data(smuggled: bytes) -> None:
    d = message(smuggled + b"x\r\n.\r\n")
    assert d.messages == [smuggled + b"x\r\n"]


def test_leading_dot_line_right_after_data() -> None:
    d = message(b".\nx\r\n.\r\n")  # first line ".<LF>x": its period is removed
    assert d.messages == [b"\nx\r\n"]


def test_terminator_split_at_every_offset() -> None:
    stream = TRANSACTION + b"line one\r\n..two\r\n.\r\nNOOP\r\n"
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, min(cut + 7, len(stream) + 1)):
            pieces = [p for p in (stream[:cut], stream[cut:cut2], stream[cut2:]) if p]
            d = Driver().feed(*pieces)
            assert d.messages == [b"line one\r\n.two\r\n"], (cut, cut2)
            assert d.codes[-2:] == [OK, OK], (cut, cut2)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_commands_pipelined_after_the_terminator_run(how: str) -> None:
    stream = TRANSACTION + b"one\r\n.\r\n" + MAIL + RCPT + DATA + b"two\r\n.\r\n" + QUIT
    d = run(stream, how=how)
    assert d.messages == [b"one\r\n", b"two\r\n"]
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, OK, SENDER_OK, RCPT_OK, GO_AHEAD,
                       OK, BYE]
    assert d.closed


def test_body_and_commands_in_one_chunk_before_354() -> None:
    """A client that does not wait for 354 (not allowed, but seen) still gets it right."""
    d = Driver().feed(TRANSACTION + b"hello\r\n.\r\nQUIT\r\n")
    assert d.messages == [b"hello\r\n"]
    assert d.codes[-2:] == [OK, BYE]


def test_data_refused_by_handler_keeps_reading_commands() -> None:
    d = run(TRANSACTION + NOOP, overrides={"DATA": Reply(554, "5.7.1", ("no",))})
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, (554, "5.7.1"), OK]
    assert d.conn.phase is Phase.COMMAND


@pytest.mark.parametrize("how", CHUNKINGS)
def test_message_at_size_limit_is_accepted(how: str) -> None:
    body = b"x" * 98 + b"\r\n"  # exactly 100 octets
    d = message(body + b".\r\n", Config(data_size_limit=100), how=how)
    assert d.messages == [body]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_stuffing_dots_do_not_count_toward_size(how: str) -> None:
    content = b".\r\n" * 25 + b"." * 20 + b"\r\n" * 3 + b"." * 4 + b"\r\n"  # 75+20+6+... octets
    limit = len(content)
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    stuffed = b"." + stuffed if stuffed.startswith(b".") else stuffed
    d = message(stuffed + b".\r\n", Config(data_size_limit=limit), how=how)
    assert d.messages == [content]
    d = message(stuffed + b"y\r\n.\r\n", Config(data_size_limit=limit), how=how)
    assert d.codes[4] == (552, "5.3.4")


@pytest.mark.parametrize("how", CHUNKINGS)
def test_message_over_size_limit(how: str) -> None:
    body = b"x" * 99 + b"\r\n"  # 101 octets
    d = message(body + b".\r\n", Config(data_size_limit=100), how=how,
                after=MAIL + RCPT + DATA + b"ok\r\n.\r\n")
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, (552, "5.3.4"),
                       SENDER_OK, RCPT_OK, GO_AHEAD, OK]
    assert d.messages == [b"ok\r\n"]
    assert len(d.of_type(EndOfData)) == 1


def test_size_reply_comes_only_after_the_terminator() -> None:
    d = Driver(Config(data_size_limit=100)).feed(TRANSACTION, (b"x" * 98 + b"\r\n") * 50)
    assert d.codes[-1] == GO_AHEAD
    d.feed(b"\r\n.", b"\r\n")
    assert d.codes[-1] == (552, "5.3.4")
    d.feed(RCPT)
    assert d.codes[-1] == BAD_SEQ  # the transaction is over


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("text", "code"),
    [
        (b"x" * 999 + b"\r\n", OK),  # 1001 octets with CRLF: the limit
        (b"." + b"x" * 998 + b"\r\n", OK),  # stuffed line of 1001
        (b"x" * 1000 + b"\r\n", UNKNOWN),
        (b"short\r\n" + b"y" * 1000 + b"\r\nshort\r\n", UNKNOWN),
        (b"y" * 5000 + b"\r\n", UNKNOWN),
        # Only CRLF ends a text line, for the limit too (RFC 5321 section 2.3.8).
        (b"y" * 998 + b"\n" + b"y" * 998 + b"\r\n", UNKNOWN),
        (b"y" * 998 + b"\r" + b"y" * 998 + b"\r\n", UNKNOWN),
        (b"y" * 400 + b"\n" + b"y" * 400 + b"\r\n", OK),
    ],
)
def test_text_line_length(text: bytes, code: tuple[int, str], how: str) -> None:
    d = message(text + b".\r\n", how=how, after=MAIL)
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, code, SENDER_OK]


def test_line_length_limit_off() -> None:
    d = message(b"z" * 100_000 + b"\r\n.\r\n", Config(line_length_limit=None))
    assert d.messages == [b"z" * 100_000 + b"\r\n"]


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("text", "reject", "normalized"),
    [
        (b"plain\r\ntext\r\n", OK, b"plain\r\ntext\r\n"),
        (b"bare\nlf\r\n", (550, "5.5.2"), b"bare\r\nlf\r\n"),
        (b"bare\rcr\r\n", (550, "5.5.2"), b"bare\r\ncr\r\n"),
        (b"cr before crlf\r\r\n", (550, "5.5.2"), b"cr before crlf\r\n\r\n"),
        (b"\nfirst\r\n", (550, "5.5.2"), b"\r\nfirst\r\n"),
        # A CR that could start the terminator turns out bare; "." after it is text.
        (b"end\r\n\r.\r\n", (550, "5.5.2"), b"end\r\n\r\n.\r\n"),
    ],
)
def test_bare_newline_policies(text: bytes, reject: Any, normalized: Any, how: str) -> None:
    body = text + b".\r\n"
    d = message(body, Config(bare_newline="reject"), how=how, after=MAIL)
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, reject, SENDER_OK]
    d = message(body, Config(bare_newline="normalize"), how=how)
    assert d.messages == [normalized]
    d = message(body, Config(bare_newline="keep"), how=how)
    assert d.messages == [text.replace(b"\r\n.", b"\r\n")]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_limits_have_a_fixed_precedence(how: str) -> None:
    cfg = Config(data_size_limit=100, line_length_limit=20, bare_newline="reject")
    # bare LF first, then a long line, then too big: size wins
    body = b"a\nb\r\n" + b"c" * 30 + b"\r\n" + b"d" * 100 + b"\r\n.\r\n"
    assert message(body, cfg, how=how).codes[4] == (552, "5.3.4")
    # bare LF first, then a long line: the line wins
    body = b"a\nb\r\n" + b"c" * 30 + b"\r\n.\r\n"
    assert message(body, cfg, how=how).codes[4] == UNKNOWN
    body = b"c" * 30 + b"\r\na\nb\r\n.\r\n"
    assert message(body, cfg, how=how).codes[4] == UNKNOWN


@pytest.mark.parametrize("how", CHUNKINGS)
def test_eight_bit_text_with_decode_data(how: str) -> None:
    cfg = Config(decode_data=True)
    d = message(b"caf\xc3\xa9\r\n.\r\n", cfg, how=how, after=RCPT + MAIL)
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, (554, "5.6.0"), BAD_SEQ, SENDER_OK]
    assert d.messages == []
    d = message(b"ascii\r\n.\r\n", cfg, how=how)
    assert d.messages == [b"ascii\r\n"]
    d = message(b"caf\xc3\xa9\r\n.\r\n", Config(decode_data=True, enable_smtputf8=True), how=how)
    assert d.messages == [b"caf\xc3\xa9\r\n"]


def test_transaction_ends_after_end_of_data_whatever_the_reply() -> None:
    later = Reply(451, "4.3.0", ("later",))
    d = run(TRANSACTION + b"x\r\n.\r\n" + RCPT, overrides={"EOD": later})
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, (451, "4.3.0"), BAD_SEQ]


def test_mail_smtputf8_flag_ends_with_the_transaction() -> None:
    cfg = Config(enable_smtputf8=True)
    d = run([EHLO, b"MAIL FROM:<a@b.example> SMTPUTF8\r\n", b"RCPT TO:<j\xc3\xb6rg@x.example>\r\n",
             DATA, b"x\r\n.\r\n", MAIL, b"RCPT TO:<j\xc3\xb6rg@x.example>\r\n"], cfg)
    assert d.codes == [GREET, SENDER_OK, RCPT_OK, GO_AHEAD, OK, SENDER_OK, (553, "5.6.7")]


def test_handler_refusing_mail_leaves_no_transaction() -> None:
    d = run([EHLO, MAIL, RCPT, MAIL], overrides={"MAIL": Reply(550, "5.7.1", ("no",))})
    assert d.codes == [GREET, (550, "5.7.1"), BAD_SEQ, (550, "5.7.1")]


def test_handler_refusing_rcpt_counts_no_recipient() -> None:
    d = run([EHLO, MAIL, RCPT, DATA], overrides={"RCPT": Reply(550, "5.1.1", ("no",))})
    assert d.codes == [GREET, SENDER_OK, (550, "5.1.1"), BAD_SEQ]


def test_handler_refusing_ehlo_leaves_no_greeting() -> None:
    d = run([EHLO, MAIL], overrides={"EHLO": Reply(550, "5.7.1", ("go away",))})
    assert d.codes == [(550, "5.7.1"), BAD_SEQ]


# --- STARTTLS -------------------------------------------------------------------------------


def test_starttls_drops_pipelined_plaintext() -> None:
    injected = b"MAIL FROM:<mitm@example.org>\r\nRCPT TO:<x@example.org>\r\n"
    d = Driver(Config(tls_available=True)).feed(EHLO + b"STARTTLS\r\n" + injected)
    assert d.codes == [GREET, (220, "2.0.0")]
    assert d.dropped == [injected]
    assert not d.of_type(Mail)
    # what comes next is the TLS stream: a fresh session
    d.feed(MAIL, EHLO, MAIL)
    assert d.codes[2:] == [BAD_SEQ, GREET, SENDER_OK]


def test_starttls_with_nothing_pipelined_drops_nothing() -> None:
    d = Driver(Config(tls_available=True)).feed(EHLO, b"STARTTLS\r\n")
    assert d.dropped == [b""]
    assert d.conn.tls_active


def test_after_starttls_the_state_is_reset() -> None:
    cfg = Config(tls_available=True, **AUTH)
    d = Driver(cfg).feed(EHLO, b"STARTTLS\r\n")
    d.feed(RCPT, MAIL, EHLO)
    assert d.codes == [GREET, (220, "2.0.0"), BAD_SEQ, BAD_SEQ, GREET]
    (_, ehlo2) = d.of_type(Ehlo)
    assert isinstance(ehlo2, Ehlo)
    assert "STARTTLS" not in ehlo2.extensions
    assert "AUTH LOGIN PLAIN" in ehlo2.extensions
    d.feed(b"STARTTLS\r\n", f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode(), MAIL)
    assert d.codes[5:] == [BAD_SEQ, (235, "2.7.0"), SENDER_OK]


def test_starttls_drops_authentication() -> None:
    cfg = Config(tls_available=True, auth_required=True, **AUTH_NO_TLS)
    d = Driver(cfg).feed(EHLO, f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode(), b"STARTTLS\r\n")
    d.feed(EHLO, MAIL)
    assert d.codes == [GREET, (235, "2.7.0"), (220, "2.0.0"), GREET, (530, "5.7.0")]
    assert not d.conn.authenticated


def test_starttls_inside_a_transaction_is_allowed_and_resets_it() -> None:
    d = Driver(Config(tls_available=True)).feed(EHLO, MAIL)
    d.feed(b"STARTTLS\r\n")
    d.feed(EHLO, RCPT)
    assert d.codes == [GREET, SENDER_OK, (220, "2.0.0"), GREET, BAD_SEQ]


def test_require_starttls_lifted_after_tls() -> None:
    d = Driver(Config(tls_available=True, require_starttls=True)).feed(EHLO, MAIL)
    d.feed(b"STARTTLS\r\n")
    d.feed(EHLO, MAIL)
    assert d.codes == [GREET, (530, "5.7.0"), (220, "2.0.0"), GREET, SENDER_OK]


def test_starttls_refused_by_handler_keeps_plaintext_session() -> None:
    no = Reply(454, "4.7.0", ("not now",))
    d = run([EHLO, b"STARTTLS\r\n", MAIL], Config(tls_available=True),
            overrides={"STARTTLS": no})
    assert d.codes == [GREET, (454, "4.7.0"), SENDER_OK]
    assert d.dropped == []
    assert not d.conn.tls_active


def test_refuse_after_tls_allows_only_quit() -> None:
    d = Driver(Config(tls_available=True)).feed(EHLO, b"STARTTLS\r\n")
    d.conn.refuse_after_tls()
    d.feed(EHLO, NOOP, MAIL, QUIT)
    assert d.codes[2:] == [(554, "5.7.0")] * 3 + [BYE]


def test_starttls_then_implicit_state() -> None:
    d = Driver(Config(tls_available=True)).feed(EHLO, b"STARTTLS\r\n")
    assert d.conn.phase is Phase.COMMAND
    d.feed(EHLO, b"STARTTLS\r\n")
    assert d.codes[-1] == BAD_SEQ


# --- AUTH lines ------------------------------------------------------------------------------


def test_auth_line_event_then_commands_resume() -> None:
    conn = Connection(Config(**AUTH_NO_TLS))
    conn.receive_data(EHLO + b"AUTH PLAIN\r\n" + GOOD_PLAIN.encode() + b"\r\nNOOP\r\n")
    ehlo = conn.next_event()
    assert isinstance(ehlo, Ehlo)
    conn.send(Reply(250, None, ("mx",)))
    conn.complete(True)
    auth = conn.next_event()
    assert isinstance(auth, Auth) and auth.initial_response is None
    conn.send_raw(b"334 \r\n")
    conn.read_auth_line()
    assert conn.phase is Phase.AUTH_LINE
    answer = conn.next_event()
    assert answer == AuthLine(line=GOOD_PLAIN.encode())
    assert answer.verb == "AUTH"
    conn.send(replies.AUTH_SUCCESS)
    conn.complete(True)
    assert conn.authenticated
    assert isinstance(conn.next_event(), Noop)


def test_auth_line_waits_for_crlf() -> None:
    conn = Connection(Config(**AUTH_NO_TLS))
    conn.receive_data(EHLO + b"AUTH LOGIN\r\n")
    conn.next_event()
    conn.complete(True)
    conn.next_event()
    conn.read_auth_line()
    conn.receive_data(b"dXNl")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"cg==\n")
    assert conn.next_event() is NEED_DATA  # a bare LF does not end an AUTH line either
    conn.receive_data(b"\r\n")
    assert conn.next_event() == AuthLine(line=b"dXNlcg==\n")


def test_auth_line_too_long_marker() -> None:
    conn = Connection(Config(**AUTH_NO_TLS))
    conn.receive_data(EHLO + b"AUTH LOGIN\r\n")
    conn.next_event()
    conn.complete(True)
    conn.next_event()
    conn.read_auth_line()
    for _ in range(13):
        conn.receive_data(b"A" * 1000)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, AuthLine) and event.line == b"\x00TOO-LONG"
    conn.send(replies.AUTH_LINE_TOO_LONG)
    conn.complete(False)
    assert conn.auth_failures == 1
    assert isinstance(conn.next_event(), Noop)


# --- end of input ----------------------------------------------------------------------------


def test_eof_when_idle() -> None:
    d = run([NOOP], eof=True)
    assert d.codes == [OK]
    assert d.events[-1] == ConnectionLost(during="")
    assert d.closed
    assert d.conn.next_event() is CLOSED


def test_eof_after_pipelined_commands_runs_them_first() -> None:
    conn_driver = Driver()
    conn_driver.conn.receive_data(EHLO + MAIL + b"NOOP\r\nQUI")
    conn_driver.conn.receive_data(b"")
    conn_driver.pump()
    assert conn_driver.codes == [GREET, SENDER_OK, OK]
    assert conn_driver.events[-1] == ConnectionLost(during="")


@pytest.mark.parametrize("how", CHUNKINGS)
def test_eof_mid_data(how: str) -> None:
    d = run(TRANSACTION + b"partial message\r\n.", how=how, eof=True)
    assert d.events[-1] == ConnectionLost(during="DATA")
    assert d.messages == []
    assert d.conn.next_event() is CLOSED


def test_eof_mid_auth() -> None:
    d = run([EHLO, b"AUTH LOGIN\r\n", b"dXNl"], Config(**AUTH_NO_TLS), eof=True)
    assert d.events[-1] == ConnectionLost(during="AUTH")


def test_eof_after_quit() -> None:
    d = run([QUIT], eof=True)
    assert d.closed
    assert not d.of_type(ConnectionLost)


def test_data_after_close_is_ignored() -> None:
    d = run([QUIT])
    d.conn.receive_data(NOOP)
    assert d.conn.next_event() is CLOSED
    assert d.conn.data_to_send() == b""


# --- memory: over-long input is never buffered whole --------------------------------------------


def _peak_while(feed: list[bytes], driver: Driver) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for piece in feed:
            driver.conn.receive_data(piece)
            driver.pump()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_long_command_line_is_not_buffered() -> None:
    d = Driver()
    piece = b"x" * 4096
    peak = _peak_while([b"NOOP "] + [piece] * 256, d)  # 1 MiB without CRLF
    assert peak < 64 * 1024
    d.feed(b"\r\n", NOOP)
    assert d.codes == [UNKNOWN, OK]


def test_long_command_line_is_not_buffered_with_auth_allowance() -> None:
    d = Driver(Config(**AUTH_NO_TLS))
    peak = _peak_while([b"NOOP "] + [b"x" * 4096] * 256, d)
    assert peak < 64 * 1024
    d.feed(b"\r\n", NOOP)
    assert d.codes == [UNKNOWN, OK]


def test_oversized_message_is_dropped_as_it_arrives() -> None:
    d = Driver(Config(data_size_limit=10_000)).feed(TRANSACTION)
    peak = _peak_while([b"y" * 999 + b"\r\n"] * 2000, d)  # 2 MB
    assert peak < 128 * 1024
    d.feed(b".\r\n", NOOP)
    assert d.codes[-2:] == [(552, "5.3.4"), OK]


def test_endless_text_line_is_dropped_as_it_arrives() -> None:
    d = Driver(Config(data_size_limit=None)).feed(TRANSACTION)
    peak = _peak_while([b"z" * 4096] * 512, d)  # 2 MiB, one line
    assert peak < 128 * 1024
    d.feed(b"\r\n.\r\n", NOOP)
    assert d.codes[-2:] == [UNKNOWN, OK]


# --- driver contract --------------------------------------------------------------------------


def test_next_event_while_pending_is_a_local_error() -> None:
    conn = Connection(Config())
    conn.receive_data(NOOP + NOOP)
    assert isinstance(conn.next_event(), Noop)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.complete(True)
    assert isinstance(conn.next_event(), Noop)


def test_complete_without_pending_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Config()).complete(True)


def test_start_tls_without_starttls_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Config(tls_available=True)).start_tls()


def test_read_auth_line_outside_auth_is_a_local_error() -> None:
    conn = Connection(Config())
    conn.receive_data(NOOP)
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.read_auth_line()


def test_protocol_error_base_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError(replies.BAD_SYNTAX)
    err = RemoteProtocolError(replies.LINE_TOO_LONG)
    assert err.reply is replies.LINE_TOO_LONG
    assert str(err) == replies.LINE_TOO_LONG.lines[0]
    assert str(LocalProtocolError(replies.HANDLER_ERROR, "detail")) == "detail"


def test_replies_are_batched_until_data_to_send() -> None:
    conn = Connection(Config())
    conn.receive_data(NOOP * 3)
    for _ in range(3):
        conn.next_event()
        conn.send(replies.OK)
        conn.complete(True)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == replies.OK.render() * 3
    assert conn.data_to_send() == b""


def test_close_requested_by_driver() -> None:
    conn = Connection(Config())
    conn.receive_data(NOOP + NOOP)
    conn.next_event()
    conn.send(replies.OK)
    conn.complete(True)
    conn.close()
    assert conn.closing
    assert conn.next_event() is CLOSED


def test_data_received_after_the_terminator_before_next_event() -> None:
    """A driver may feed twice before asking for events; nothing lands in the message."""
    d = Driver().feed(TRANSACTION)
    d.conn.receive_data(b"body\r\n.\r\nNO")
    d.conn.receive_data(b"OP\r\n")
    d.pump()
    assert d.messages == [b"body\r\n"]
    assert d.codes[-2:] == [OK, OK]


def test_in_data_property() -> None:
    d = Driver().feed(TRANSACTION)
    assert d.conn.in_data
    d.feed(b".\r\n")
    assert not d.conn.in_data


def test_chunk_helper() -> None:
    data = b"abcdefghijklmnopqrstuvwxyz"
    for how in (*CHUNKINGS, "lines"):
        assert b"".join(chunk(data, how)) == data
