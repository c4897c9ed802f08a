"""Reply values: rendering (RFC 5321 4.2, RFC 2034), parsing hook strings, the named replies."""

from __future__ import annotations

import re

import pytest

from smtptrio.protocol import replies
from smtptrio.protocol.replies import Reply, ReplySyntaxError, complete_enhanced

# --- render ---------------------------------------------------------------------------------


def test_render_single_line() -> None:
    assert Reply(250, "2.0.0", ("OK",)).render() == b"250 2.0.0 OK\r\n"
    assert Reply(354, None, ("go ahead",)).render() == b"354 go ahead\r\n"


def test_render_multi_line_repeats_the_enhanced_code() -> None:
    reply = Reply(550, "5.7.1", ("first", "second", "third"))
    assert reply.render() == b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"


def test_render_empty_text() -> None:
    assert Reply(334, None, ("",)).render() == b"334 \r\n"
    assert Reply(250, "2.0.0", ("",)).render() == b"250 2.0.0\r\n"


def test_render_utf8() -> None:
    assert Reply(250, "2.0.0", ("grüße",)).render() == "250 2.0.0 grüße\r\n".encode()


def test_text_is_the_wire_form_without_crlf() -> None:
    assert Reply(250, None, ("a", "b")).text() == "250-a\r\n250 b"


@pytest.mark.parametrize(
    ("code", "lines"),
    [
        (199, ("x",)),
        (600, ("x",)),
        (250, ()),
        (250, ("a\r\nb",)),
        (250, ("a\nb",)),
        (250, ("a\rb",)),
        (250, ("lone \udcff surrogate",)),
    ],
)
def test_invalid_replies_are_refused(code: int, lines: tuple[str, ...]) -> None:
    with pytest.raises(ReplySyntaxError):
        Reply(code, None, lines)


def test_properties() -> None:
    assert Reply(250, None, ("x",)).is_positive
    assert Reply(354, None, ("x",)).is_positive
    assert not Reply(452, None, ("x",)).is_positive
    assert Reply(421, "4.7.0", ("x",)).closes
    assert Reply(221, "2.0.0", ("x",)).closes
    assert not Reply(250, "2.0.0", ("x",)).closes


# --- parse ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "enhanced", "lines"),
    [
        ("250 OK", 250, None, ("OK",)),
        ("250 2.1.0 Sender OK", 250, "2.1.0", ("Sender OK",)),
        ("250", 250, None, ("",)),
        ("250 2.0.0", 250, "2.0.0", ("",)),
        ("550-first\r\n550 second", 550, None, ("first", "second")),
        ("550-5.1.1 first\r\n550 5.1.1 second", 550, "5.1.1", ("first", "second")),
        ("550 first\r\n550 second", 550, None, ("first", "second")),
        ("550-a\n550 b", 550, None, ("a", "b")),
        ("250 OK\r\n", 250, None, ("OK",)),
        ("250-last marker ignored", 250, None, ("last marker ignored",)),
        # An enhanced code of another class is text.
        ("250 5.1.1 odd", 250, None, ("5.1.1 odd",)),
        ("250 2.1.0.5 no", 250, None, ("2.1.0.5 no",)),
        ("250 ünïcode", 250, None, ("ünïcode",)),
    ],
)
def test_parse(status: str, code: int, enhanced: str | None, lines: tuple[str, ...]) -> None:
    assert Reply.parse(status) == Reply(code, enhanced, lines)


@pytest.mark.parametrize(
    ("status", "default", "enhanced"),
    [
        ("250 OK", "2.0.0", "2.0.0"),
        ("250 2.1.5 OK", "2.0.0", "2.1.5"),  # a given code is never changed
        ("354 go", "2.0.0", None),  # no class 3 in RFC 3463
        ("550 no", "5.0.0", "5.0.0"),
        ("550 no", "2.0.0", None),  # a default of the wrong class is not used
    ],
)
def test_parse_default_enhanced(status: str, default: str, enhanced: str | None) -> None:
    assert Reply.parse(status, default_enhanced=default).enhanced == enhanced


@pytest.mark.parametrize(
    "status",
    [
        "",
        "OK",
        "25 OK",
        "2500 OK",
        "250OK",
        "abc def",
        "199 too low",
        "600 too high",
        "250-a\r\n550 b",
        "250 a\rb",
        "250 a\r\nnope",
        "250 ok\r\n\r\n",
        "²⁵⁰ unicode digits",
        "250 lone \udcff surrogate",
    ],
)
def test_parse_refuses(status: str) -> None:
    with pytest.raises(ReplySyntaxError):
        Reply.parse(status)


@pytest.mark.parametrize("value", [None, b"250 OK", 250, ["250 OK"]])
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(ReplySyntaxError):
        Reply.parse(value)  # type: ignore[arg-type] # what a broken hook may return


def test_parse_render_round_trip() -> None:
    for status in ("250 2.0.0 OK", "550-5.7.1 a\r\n550 5.7.1 b", "221 2.0.0 Bye"):
        assert Reply.parse(status).render() == status.encode() + b"\r\n"


# --- complete_enhanced ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "verb", "enhanced"),
    [
        (250, "MAIL", "2.1.0"),
        (250, "RCPT", "2.1.5"),
        (250, "DATA", "2.0.0"),
        (250, "NOOP", "2.0.0"),
        (221, "QUIT", "2.0.0"),
        (235, "AUTH", "2.0.0"),
        (451, "RCPT", "4.0.0"),
        (550, "MAIL", "5.0.0"),
        (354, "DATA", None),
        (334, "AUTH", None),
        (250, "HELO", None),
        (250, "EHLO", None),
        (250, "LHLO", None),
        (550, "EHLO", None),
    ],
)
def test_complete_enhanced(code: int, verb: str, enhanced: str | None) -> None:
    assert complete_enhanced(code, verb) == enhanced


# --- the named replies ------------------------------------------------------------------------

NAMED = {
    name: value for name, value in vars(replies).items() if isinstance(value, Reply)
}

# COMPAT.md section 5.1, the replies the engine and the server send by name.
CATALOGUE = {
    "OK": (250, "2.0.0"),
    "SENDER_OK": (250, "2.1.0"),
    "RECIPIENT_OK": (250, "2.1.5"),
    "MESSAGE_ACCEPTED": (250, "2.0.0"),
    "START_MAIL_INPUT": (354, None),
    "BYE": (221, "2.0.0"),
    "VRFY_CANNOT": (252, "2.0.0"),
    "EXPN_NOT_IMPLEMENTED": (502, "5.5.1"),
    "READY_TO_START_TLS": (220, "2.0.0"),
    "AUTH_SUCCESS": (235, "2.7.0"),
    "SERVICE_SHUTTING_DOWN": (421, "4.3.2"),
    "IDLE_TIMEOUT": (421, "4.4.2"),
    "TOO_MANY_CONNECTIONS": (421, "4.7.0"),
    "TOO_MANY_UNRECOGNIZED": (421, "4.7.0"),
    "TOO_MANY_CALLS": (421, "4.7.0"),
    "TOO_MANY_ERRORS": (421, "4.7.0"),
    "TOO_MANY_AUTH_FAILURES": (421, "4.7.0"),
    "TOO_MANY_RECIPIENTS": (452, "4.5.3"),
    "TLS_NOT_AVAILABLE": (454, "4.7.0"),
    "HANDLER_ERROR": (451, "4.3.0"),
    "AUTH_HANDLER_ERROR": (454, "4.7.0"),
    "UNRECOGNIZED_COMMAND": (500, "5.5.2"),
    "BAD_SYNTAX": (500, "5.5.2"),
    "BAD_CHARACTERS": (500, "5.5.2"),
    "NOT_ASCII": (500, "5.5.2"),
    "BAD_UTF8": (500, "5.5.2"),
    "LINE_TOO_LONG": (500, "5.5.2"),
    "TEXT_LINE_TOO_LONG": (500, "5.5.2"),
    "AUTH_LINE_TOO_LONG": (500, "5.5.6"),
    "LMTP_NEEDS_LHLO": (500, "5.5.1"),
    "HELO_SYNTAX": (501, "5.5.4"),
    "EHLO_SYNTAX": (501, "5.5.4"),
    "NO_ARGUMENTS_ALLOWED": (501, "5.5.4"),
    "MAIL_SYNTAX": (501, "5.5.4"),
    "RCPT_SYNTAX": (501, "5.5.4"),
    "NO_PARAMETERS_AFTER_HELO": (501, "5.5.4"),
    "PARAMETER_SYNTAX": (501, "5.5.4"),
    "UNBALANCED_BRACKETS": (501, "5.5.4"),
    "NULL_RECIPIENT": (501, "5.1.3"),
    "VRFY_SYNTAX": (501, "5.5.4"),
    "VRFY_UNPARSABLE": (502, "5.5.4"),
    "BAD_BODY_VALUE": (501, "5.5.4"),
    "BAD_SIZE_VALUE": (501, "5.5.4"),
    "BAD_SMTPUTF8_VALUE": (501, "5.5.4"),
    "AUTH_SYNTAX": (501, "5.5.4"),
    "AUTH_CANCELLED": (501, "5.7.0"),
    "AUTH_BAD_BASE64": (501, "5.5.2"),
    "AUTH_MALFORMED": (501, "5.5.2"),
    "BAD_SEQUENCE_HELO_FIRST": (503, "5.5.1"),
    "BAD_SEQUENCE_NESTED_MAIL": (503, "5.5.1"),
    "BAD_SEQUENCE_MAIL_FIRST": (503, "5.5.1"),
    "BAD_SEQUENCE_RCPT_FIRST": (503, "5.5.1"),
    "ALREADY_AUTHENTICATED": (503, "5.5.1"),
    "AUTH_IN_TRANSACTION": (503, "5.5.1"),
    "AUTH_NEEDS_EHLO": (503, "5.5.1"),
    "AUTH_AFTER_HELO": (500, "5.5.1"),
    "ALREADY_TLS": (503, "5.5.1"),
    "HELP_UNKNOWN_TOPIC": (504, "5.5.4"),
    "UNKNOWN_MECHANISM": (504, "5.5.4"),
    "AUTH_REQUIRED": (530, "5.7.0"),
    "STARTTLS_REQUIRED": (530, "5.7.0"),
    "AUTH_FAILED": (535, "5.7.8"),
    "ENCRYPTION_REQUIRED": (538, "5.7.11"),
    "BARE_NEWLINE_REJECTED": (550, "5.5.2"),
    "MESSAGE_TOO_BIG": (552, "5.3.4"),
    "SIZE_PARAMETER_TOO_BIG": (552, "5.3.4"),
    "BAD_SENDER_ADDRESS": (553, "5.1.7"),
    "BAD_RECIPIENT_ADDRESS": (553, "5.1.3"),
    "UTF8_ADDRESS_NEEDS_SMTPUTF8": (553, "5.6.7"),
    "EIGHT_BIT_NOT_DECODABLE": (554, "5.6.0"),
    "TLS_REFUSED": (554, "5.7.0"),
    "UNKNOWN_PARAMETER": (555, "5.5.4"),
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_named_reply_matches_the_catalogue(name: str) -> None:
    reply = NAMED[name]
    assert (reply.code, reply.enhanced) == CATALOGUE[name]


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_reply_is_well_formed(name: str) -> None:
    reply = NAMED[name]
    if reply.code // 100 == 3:
        assert reply.enhanced is None
    else:
        assert reply.enhanced is not None, "RFC 2034: every 2xx/4xx/5xx carries one"
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced)
        assert reply.enhanced[0] == str(reply.code)[0]
    assert reply.render().isascii()
    assert Reply.parse(reply.render().decode().rstrip("\r\n")) == reply
