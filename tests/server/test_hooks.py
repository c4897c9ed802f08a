"""Hook resolution (HookTable), the auth_mechanism decorator, and reply parsing/completion.

COMPAT.md sections 1.1 (discovery), 2.1 (replies, enhanced-code completion), 2.2 (EHLO forms)
and 2.4 (mechanism names). Wire-level checks run over the in-memory server.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import pytest
from helpers import Recorder, running_server

from smtptrio import MISSING, SMTP, AuthResult, Envelope, Session, auth_mechanism
from smtptrio.protocol.replies import Reply
from smtptrio.server.hooks import HookTable, ReplyError, mechanism_name, parse_status

# ---------------------------------------------------------------------------- resolution


def _table(handler: object) -> HookTable:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-deprecated handler must not warn
        return HookTable.for_handler(handler)


class SyncAndAsync:
    def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: Any) -> str:
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return "250 OK"

    handle_RCPT = "not callable"  # type: ignore[assignment]

    def handle_XYZZY(self, server: Any, session: Any, envelope: Any) -> str:  # not a command hook
        return "250 OK"


def test_sync_and_async_command_hooks_are_both_found_and_non_callables_ignored() -> None:
    table = _table(SyncAndAsync())
    assert set(table.commands) == {"NOOP", "MAIL"}
    assert table.has("NOOP") and table.has("MAIL") and not table.has("RCPT")
    assert table.ehlo_style is None
    assert table.handle_exception is None and table.process_message is None


def test_a_handler_without_hooks_has_an_empty_table() -> None:
    table = _table(object())
    assert table.commands == {} and table.auth_hooks == {}
    assert table.handle_exception is None and table.handle_starttls is None


def test_hooks_set_on_the_instance_are_found() -> None:
    """COMPAT 1.1: discovery is from ``dir(handler)``, which includes instance attributes."""

    async def handle_DATA(server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"

    handler = Recorder()
    handler.handle_NOOP = lambda server, session, envelope, arg: "250 OK"  # type: ignore[attr-defined]
    namespace = types.SimpleNamespace(handle_DATA=handle_DATA)
    assert "NOOP" in _table(handler).commands
    assert "DATA" in _table(namespace).commands


async def test_instance_attribute_hook_is_called_on_the_wire() -> None:
    async def handle_DATA(server: Any, session: Any, envelope: Any) -> str:
        return "250 2.6.0 from the instance attribute"

    async with running_server(types.SimpleNamespace(handle_DATA=handle_DATA)) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).codes == (250, "2.6.0")


class NewEhlo:
    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return responses


class OldEhlo:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        return "250 HELP"


class VarargsEhlo:
    async def handle_EHLO(self, *args: Any) -> Any:
        return MISSING


class StaticNewEhlo:
    @staticmethod
    async def handle_EHLO(
        server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return responses


class StaticOldEhlo:
    @staticmethod
    async def handle_EHLO(server: Any, session: Any, envelope: Any, hostname: str) -> str:
        return "250 HELP"


class ClassmethodNewEhlo:
    @classmethod
    async def handle_EHLO(
        cls, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return responses


def test_five_argument_handle_ehlo_is_the_current_form_without_warning() -> None:
    assert _table(NewEhlo()).ehlo_style == "new"


def test_varargs_handle_ehlo_is_the_current_form() -> None:
    assert _table(VarargsEhlo()).ehlo_style == "new"


def test_four_argument_handle_ehlo_is_the_deprecated_form() -> None:
    with pytest.deprecated_call():
        table = HookTable.for_handler(OldEhlo())
    assert table.ehlo_style == "old"


@pytest.mark.parametrize("cls", [StaticNewEhlo, ClassmethodNewEhlo])
def test_static_and_class_method_handle_ehlo_arity_counts_the_hook_arguments(cls: type) -> None:
    """The form is judged on the hook as called (``handler.handle_EHLO``), as aiosmtpd does."""
    assert _table(cls()).ehlo_style == "new"


def test_static_four_argument_handle_ehlo_is_the_deprecated_form() -> None:
    with pytest.deprecated_call():
        table = HookTable.for_handler(StaticOldEhlo())
    assert table.ehlo_style == "old"


class Others:
    def handle_exception(self, error: Exception) -> str:
        return "451 oops"

    def handle_STARTTLS(self, server: Any, session: Any, envelope: Any) -> bool:
        return True

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy_data: Any) -> bool:
        return True


def test_handle_exception_starttls_and_proxy_are_found() -> None:
    handler = Others()
    table = _table(handler)
    assert table.handle_exception == handler.handle_exception
    assert table.handle_starttls == handler.handle_STARTTLS
    assert table.handle_proxy == handler.handle_PROXY
    assert table.commands == {}


class Legacy:
    def process_message(self, peer: Any, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        return None


class LegacyAndData(Legacy):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def test_process_message_is_found_and_deprecated() -> None:
    handler = Legacy()
    with pytest.deprecated_call():
        table = HookTable.for_handler(handler)
    assert table.process_message == handler.process_message


def test_process_message_is_ignored_without_warning_when_handle_data_exists() -> None:
    table = _table(LegacyAndData())
    assert table.process_message is None
    assert "DATA" in table.commands


async def test_handle_exception_may_be_sync_or_async() -> None:
    class SyncOne:
        def handle_exception(self, error: Exception) -> str:
            return f"451 4.3.0 {type(error).__name__}"

    class AsyncOne:
        async def handle_exception(self, error: Exception) -> str:
            return f"452 4.3.1 {type(error).__name__}"

    assert await _table(SyncOne()).on_exception(ValueError()) == "451 4.3.0 ValueError"
    assert await _table(AsyncOne()).on_exception(KeyError()) == "452 4.3.1 KeyError"
    assert await _table(object()).on_exception(KeyError()) is None


# ---------------------------------------------------------------------------- auth_* discovery


class Mechanisms:
    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        return MISSING

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> Any:
        return MISSING

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_scram(self, server: Any, args: list[str]) -> Any:
        return MISSING

    auth_not_callable = "x"


def test_auth_hooks_are_named_from_the_decorator_or_the_method_name() -> None:
    table = _table(Mechanisms())
    assert set(table.auth_hooks) == {"XOAUTH2", "CRAM-MD5", "SCRAM-SHA-256"}


@pytest.mark.parametrize(
    ("attr", "expected"),
    [("auth_PLAIN", "PLAIN"), ("auth_CRAM__MD5", "CRAM-MD5"), ("auth_digest__md5", "DIGEST-MD5")],
)
def test_mechanism_name_comes_from_the_attribute_name(attr: str, expected: str) -> None:
    assert mechanism_name(attr, lambda server, args: None) == expected


@pytest.mark.parametrize("name", ["SCRAM-SHA-256", "X_1-2", "PLAIN"])
def test_auth_mechanism_decorator_accepts_valid_names(name: str) -> None:
    @auth_mechanism(name)
    async def auth_whatever(server: Any, args: list[str]) -> Any:
        return None

    assert mechanism_name("auth_whatever", auth_whatever) == name


@pytest.mark.parametrize("name", ["", "BAD NAME", "A*B", "SCRAM/SHA", "\u00c9T\u00c9", "X\n"])
def test_auth_mechanism_decorator_rejects_invalid_names_with_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="mechanism"):
        auth_mechanism(name)


async def test_ehlo_lists_handler_and_builtin_mechanisms_sorted_where_auth_is_usable() -> None:
    async with running_server(Mechanisms(), auth_require_tls=False) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert "AUTH CRAM-MD5 LOGIN PLAIN SCRAM-SHA-256 XOAUTH2" in ehlo.lines


async def test_auth_exclude_mechanism_is_case_insensitive() -> None:
    async with running_server(
        Mechanisms(), auth_require_tls=False, auth_exclude_mechanism=["login", "Cram-MD5"]
    ) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert "AUTH PLAIN SCRAM-SHA-256 XOAUTH2" in ehlo.lines


async def test_auth_is_not_listed_without_tls_when_tls_is_required() -> None:
    async with running_server(Mechanisms()) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert not [line for line in ehlo.lines if line.startswith("AUTH")]


class OwnPlain:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def auth_PLAIN(self, server: Any, args: list[str]) -> Any:
        self.calls.append(args)
        return "the-identity"


async def test_handler_mechanism_wins_over_the_builtin_of_the_same_name() -> None:
    handler = OwnPlain()
    async with running_server(handler, auth_require_tls=False) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH plain AGZvbwBiYXI=")).codes == (235, "2.7.0")
    assert handler.calls == [["PLAIN", "AGZvbwBiYXI="]]


# ---------------------------------------------------------------------------- reply parsing


@pytest.mark.parametrize(
    ("status", "verb", "expected"),
    [
        ("250 OK", "MAIL", (250, "2.1.0")),
        ("250 OK", "RCPT", (250, "2.1.5")),
        ("250 OK", "DATA", (250, "2.0.0")),
        ("250 OK", "NOOP", (250, "2.0.0")),
        ("250 OK", "RSET", (250, "2.0.0")),
        ("221 Bye", "QUIT", (221, "2.0.0")),
        ("252 maybe", "VRFY", (252, "2.0.0")),
        ("235 welcome", "AUTH", (235, "2.0.0")),
        ("250 OK", "XYZZY", (250, "2.0.0")),
        ("450 busy", "RCPT", (450, "4.0.0")),
        ("421 closing", "NOOP", (421, "4.0.0")),
        ("451 later", "DATA", (451, "4.0.0")),
        ("550 no", "MAIL", (550, "5.0.0")),
        ("554 no", "DATA", (554, "5.0.0")),
        ("354 go ahead", "DATA", (354, None)),
        ("334 VXNlcm5hbWU6", "AUTH", (334, None)),
        ("250 mx.example", "HELO", (250, None)),
        ("250 mx.example", "EHLO", (250, None)),
        ("550 go away", "HELO", (550, None)),
        ("550 5.1.1 given", "RCPT", (550, "5.1.1")),
        ("250 2.6.0 given", "DATA", (250, "2.6.0")),
        ("451 4.7.1 given", "MAIL", (451, "4.7.1")),
        ("250 2.1.5 given", "EHLO", (250, "2.1.5")),
    ],
)
def test_hook_reply_gets_the_enhanced_code_of_compat_2_1(
    status: str, verb: str, expected: tuple[int, str | None]
) -> None:
    reply = parse_status(status, verb, complete=True, utf8=False)
    assert (reply.code, reply.enhanced) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [("250 OK", (250, None)), ("550 5.1.1 given", (550, "5.1.1")), ("451 later", (451, None))],
)
def test_without_completion_hook_replies_are_kept_as_given(
    status: str, expected: tuple[int, str | None]
) -> None:
    reply = parse_status(status, "MAIL", complete=False, utf8=False)
    assert (reply.code, reply.enhanced) == expected


def test_enhanced_code_of_another_class_is_not_taken_as_one() -> None:
    reply = parse_status("550 4.0.0 odd", "MAIL", complete=True, utf8=False)
    assert (reply.code, reply.enhanced) == (550, "5.0.0")


@pytest.mark.parametrize(
    "status",
    [
        "250-one\r\n250-two\r\n250 three",
        "250 one\r\n250 two\r\n250 three",
        "250-one\n250-two\n250 three",
    ],
)
def test_multi_line_reply_gets_our_continuation_markers(status: str) -> None:
    reply = parse_status(status, "NOOP", complete=True, utf8=False)
    assert reply.render() == b"250-2.0.0 one\r\n250-2.0.0 two\r\n250 2.0.0 three\r\n"


def test_bytes_reply_is_accepted() -> None:
    reply = parse_status(b"250 2.0.0 fine", "NOOP", complete=True, utf8=False)
    assert (reply.code, reply.enhanced, reply.lines) == (250, "2.0.0", ("fine",))


@pytest.mark.parametrize(
    "status",
    [
        None,
        250,
        ["250 OK"],
        "",
        "hello",
        "250OK",
        "600 out of range",
        "199 too low",
        "25 short",
        "250-one\r\n251 two",
        "250 a\rb",
        "250 one\nnot a reply line",
        b"\xff\xfe",
        "250 d\u00e9j\u00e0 vu",
    ],
)
def test_values_that_are_not_replies_raise_reply_error(status: Any) -> None:
    with pytest.raises(ReplyError):
        parse_status(status, "NOOP", complete=True, utf8=False)


def test_utf8_reply_text_is_accepted_when_smtputf8_is_on() -> None:
    reply = parse_status("250 d\u00e9j\u00e0 vu", "NOOP", complete=True, utf8=True)
    assert reply.render() == "250 2.0.0 d\u00e9j\u00e0 vu\r\n".encode()
    reply = parse_status("250 d\u00e9j\u00e0 vu".encode(), "NOOP", complete=True, utf8=True)
    assert reply.lines == ("d\u00e9j\u00e0 vu",)


def test_parsed_reply_is_a_reply_value() -> None:
    assert parse_status("250 OK", "NOOP", complete=True, utf8=False) == Reply(250, "2.0.0", ("OK",))


# ------------------------------------------------------------------------ completion on the wire


class Answers:
    """Every hook answers with the text configured for its verb."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        return self.answers.get("HELO", f"250 {server.hostname}")

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: Any
    ) -> Any:
        return self.answers.get("NOOP", MISSING)

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> Any:
        return self.answers.get("VRFY", MISSING)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        envelope.mail_from = address
        return self.answers.get("MAIL", MISSING)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        envelope.rcpt_tos.append(address)
        return self.answers.get("RCPT", MISSING)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        return self.answers.get("DATA", MISSING)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        return self.answers.get("QUIT", MISSING)


async def _dialogue(handler: object, **options: Any) -> dict[str, tuple[int, str | None]]:
    got: dict[str, tuple[int, str | None]] = {}
    async with running_server(handler, **options) as srv:
        client = await srv.greeted()
        got["HELO"] = (await client.cmd("HELO client.example")).codes
        got["NOOP"] = (await client.cmd("NOOP")).codes
        got["VRFY"] = (await client.cmd("VRFY <x@example.org>")).codes
        got["MAIL"] = (await client.cmd("MAIL FROM:<anne@example.com>")).codes
        got["RCPT"] = (await client.cmd("RCPT TO:<bart@example.org>")).codes
        got["DATA-cmd"] = (await client.cmd("DATA")).codes
        await client.send(b"hello\r\n.\r\n")
        got["DATA"] = (await client.reply()).codes
        got["QUIT"] = (await client.cmd("QUIT")).codes
    return got


async def test_hook_replies_without_enhanced_codes_are_completed_on_the_wire() -> None:
    handler = Answers(
        {
            "HELO": "250 hi there",
            "NOOP": "250 fine",
            "VRFY": "252 maybe",
            "MAIL": "250 ok",
            "RCPT": "250 ok",
            "DATA": "250 queued",
            "QUIT": "221 bye",
        }
    )
    assert await _dialogue(handler) == {
        "HELO": (250, None),
        "NOOP": (250, "2.0.0"),
        "VRFY": (252, "2.0.0"),
        "MAIL": (250, "2.1.0"),
        "RCPT": (250, "2.1.5"),
        "DATA-cmd": (354, None),
        "DATA": (250, "2.0.0"),
        "QUIT": (221, "2.0.0"),
    }


async def test_hook_refusals_are_completed_with_class_codes_and_given_codes_kept() -> None:
    handler = Answers({"NOOP": "452 full", "VRFY": "550 5.1.1 unknown", "DATA": "554 rejected"})
    got = await _dialogue(handler)
    assert (got["NOOP"], got["VRFY"], got["DATA"]) == (
        (452, "4.0.0"),
        (550, "5.1.1"),
        (554, "5.0.0"),
    )


async def test_enhanced_status_codes_off_sends_hook_replies_as_given() -> None:
    handler = Answers(
        {
            "NOOP": "250 fine",
            "VRFY": "550 5.1.1 unknown",
            "MAIL": "250 ok",
            "RCPT": "250 ok",
            "DATA": "250 queued",
        }
    )
    got = await _dialogue(handler, enhanced_status_codes=False)
    assert got["NOOP"] == (250, None)
    assert got["VRFY"] == (550, "5.1.1")
    assert (got["MAIL"], got["RCPT"], got["DATA"]) == ((250, None), (250, None), (250, None))


async def test_enhanced_status_codes_off_engine_refusals_carry_no_enhanced_code() -> None:
    async with running_server(Recorder(), enhanced_status_codes=False) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert "ENHANCEDSTATUSCODES" not in ehlo.lines
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, None)
        assert (await client.cmd("XFOO")).codes == (500, None)


async def test_enhanced_status_codes_off_default_replies_carry_no_enhanced_code() -> None:
    """Without ENHANCEDSTATUSCODES advertised, the server's own 2xx replies are bare too,
    as its own refusals already are (the engine strips them: protocol/connection.py _finish)."""
    async with running_server(Recorder(), enhanced_status_codes=False) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("NOOP")).codes == (250, None)
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, None)
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (250, None)
        assert (await client.cmd("QUIT")).codes == (221, None)


@pytest.mark.parametrize(
    ("success", "expected"), [(True, (235, None)), (False, (535, None))], ids=["ok", "refused"]
)
async def test_enhanced_status_codes_off_default_auth_replies_carry_no_enhanced_code(
    success: bool, expected: tuple[int, None]
) -> None:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        return AuthResult(success=success, handled=False, auth_data=data)

    async with running_server(
        Recorder(),
        enhanced_status_codes=False,
        auth_require_tls=False,
        authenticator=authenticator,
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN AGFubmUAc2VjcmV0")).codes == expected
