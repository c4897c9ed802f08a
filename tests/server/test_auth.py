"""AUTH (RFC 4954) over memory streams: mechanisms, pre-checks, credential checks, hooks, limits.

Most tests run in clear text with ``auth_require_tls=False`` so they exercise AUTH alone; the
TLS requirement itself is tested with a STARTTLS context. Replies are checked on codes and
enhanced codes (COMPAT.md section 0.3), never on texts.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from helpers import MemoryServer, Recorder, SMTPClient, running_server
from tls_helpers import (
    PASSWORD,
    USER,
    b64,
    plain_blob,
    starttls,
)

import smtptrio
from smtptrio import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, auth_mechanism

BODY = b"Subject: auth\r\n\r\nauthenticated\r\n"
GOOD = LoginPassword(USER, PASSWORD)


# Function-scoped fixtures (STYLE.md section 5); only the key material behind them is cached.


class Authenticator:
    """Accepts USER/PASSWORD (or gives ``answer``); records every call.

    ``func`` is what the server gets: a plain function, or a coroutine function with
    ``is_async`` (COMPAT 2.3: sync, awaitable accepted).
    """

    def __init__(self, *, is_async: bool = False, answer: Any = None) -> None:
        self.calls: list[tuple[SMTP, Session, Envelope, str, Any]] = []
        self.answer = answer
        self.is_async = is_async

    def check(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> Any:
        self.calls.append((server, session, envelope, mechanism, auth_data))
        if self.answer is not None:
            return self.answer
        if auth_data == GOOD:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def sync(self, *args: Any) -> Any:
        return self.check(*args)

    async def coro(self, *args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return self.check(*args)

    @property
    def func(self) -> Any:
        return self.coro if self.is_async else self.sync


class Watcher(Recorder):
    """Snapshots the session at each NOOP (the session object changes later)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[dict[str, Any]] = []

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> Any:
        self.states.append({"authenticated": session.authenticated, "auth_data": session.auth_data})
        return MISSING


@asynccontextmanager
async def auth_server(
    handler: object | None = None, *, authenticator: Any = "default", **options: Any
) -> AsyncIterator[MemoryServer]:
    """A clear-text server where AUTH is usable, accepting USER/PASSWORD by default."""
    if authenticator == "default":
        authenticator = Authenticator().func
    if authenticator is not None:
        options["authenticator"] = authenticator
    options.setdefault("auth_require_tls", False)
    async with running_server(handler if handler is not None else Watcher(), **options) as srv:
        yield srv


async def _state_after(client: SMTPClient, handler: Watcher) -> dict[str, Any]:
    assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    return handler.states[-1]


# ---------------------------------------------------------------------------- PLAIN and LOGIN


async def test_plain_with_initial_response_succeeds_with_235_2_7_0() -> None:
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state["authenticated"] is True
    assert state["auth_data"] == GOOD
    assert isinstance(state["auth_data"], LoginPassword)


async def test_plain_without_initial_response_sends_an_empty_334_then_succeeds() -> None:
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        challenge = await client.cmd("AUTH PLAIN")
        assert challenge.code == 334
        assert challenge.raw == b"334 \r\n"  # trailing space kept (COMPAT 2.4)
        assert (await client.cmd(plain_blob())).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state["authenticated"] is True and state["auth_data"] == GOOD


async def test_plain_authzid_is_ignored() -> None:
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        blob = plain_blob(authzid=b"someone-else")
        assert (await client.cmd("AUTH PLAIN " + blob)).codes == (235, "2.7.0")
    assert checker.calls[0][4] == GOOD


async def test_login_without_initial_response_asks_user_then_password() -> None:
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        user_prompt = await client.cmd("AUTH LOGIN")
        assert user_prompt.code == 334
        assert base64.b64decode(user_prompt.lines[0], validate=True) == b"User Name\x00"
        password_prompt = await client.cmd(b64(USER))
        assert password_prompt.code == 334
        assert base64.b64decode(password_prompt.lines[0], validate=True) == b"Password\x00"
        assert (await client.cmd(b64(PASSWORD))).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state["authenticated"] is True and state["auth_data"] == GOOD


async def test_login_with_initial_response_asks_only_for_the_password() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        prompt = await client.cmd("AUTH LOGIN " + b64(USER))
        assert prompt.code == 334
        assert base64.b64decode(prompt.lines[0], validate=True) == b"Password\x00"
        assert (await client.cmd(b64(PASSWORD))).codes == (235, "2.7.0")


async def test_login_prompts_come_from_the_subclass_challenge_attributes() -> None:
    class Custom(SMTP):
        AuthLoginUsernameChallenge = "Who?"
        AuthLoginPasswordChallenge = "Secret?"

    async with auth_server(smtp_class=Custom) as srv:
        client = await srv.ehloed()
        assert base64.b64decode((await client.cmd("AUTH LOGIN")).lines[0]) == b"Who?"
        assert base64.b64decode((await client.cmd(b64(USER))).lines[0]) == b"Secret?"
        assert (await client.cmd(b64(PASSWORD))).codes == (235, "2.7.0")


async def test_plain_with_equals_as_initial_response_is_an_empty_blob_501_5_5_2() -> None:
    """COMPAT D7: ``=`` is a zero-length initial response (RFC 4954 section 4)."""
    async with auth_server() as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN =")).codes == (501, "5.5.2")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


async def test_login_with_equals_as_initial_response_is_an_empty_login_then_the_password() -> None:
    """COMPAT D7: aiosmtpd answers 501; we decode ``=`` to b"" and ask for the password."""
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        prompt = await client.cmd("AUTH LOGIN =")
        assert prompt.code == 334
        assert base64.b64decode(prompt.lines[0], validate=True) == b"Password\x00"
        assert (await client.cmd(b64(PASSWORD))).codes == (535, "5.7.8")
    [(_, _, _, mechanism, data)] = checker.calls
    assert mechanism == "LOGIN"
    assert data == LoginPassword(b"", PASSWORD)


async def test_equals_as_a_challenge_response_is_the_empty_response() -> None:
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64(USER))).code == 334
        assert (await client.cmd("=")).codes == (535, "5.7.8")
    assert checker.calls[0][4] == LoginPassword(USER, b"")


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(["AUTH PLAIN"], id="plain-challenge"),
        pytest.param(["AUTH LOGIN"], id="login-user-prompt"),
        pytest.param(["AUTH LOGIN", b64(USER)], id="login-password-prompt"),
        pytest.param(["AUTH LOGIN " + b64(USER)], id="login-after-initial-response"),
    ],
)
async def test_star_cancels_the_exchange_with_501_5_7_0(steps: list[str]) -> None:
    handler = Watcher()
    checker = Authenticator()
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        for step in steps:
            assert (await client.cmd(step)).code == 334
        assert (await client.cmd("*")).codes == (501, "5.7.0")
        state = await _state_after(client, handler)
        # The session goes on and a new AUTH may start.
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
    assert state["authenticated"] is None
    assert len(checker.calls) == 1


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(["AUTH PLAIN not*base64"], id="plain-initial"),
        pytest.param(["AUTH PLAIN AHVzZXIAc2VjcmV0="], id="plain-initial-bad-padding"),
        pytest.param(["AUTH LOGIN %%%%"], id="login-initial"),
        pytest.param(["AUTH PLAIN", "@@@@"], id="plain-challenge"),
        pytest.param(["AUTH LOGIN", "YW5u ZQ"], id="login-user-prompt"),
        pytest.param(["AUTH LOGIN", b64(USER), "c2VjcmV0!"], id="login-password-prompt"),
    ],
)
async def test_malformed_base64_gets_501_5_5_2(steps: list[str]) -> None:
    handler = Watcher()
    checker = Authenticator()
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        for step in steps[:-1]:
            assert (await client.cmd(step)).code == 334
        assert (await client.cmd(steps[-1])).codes == (501, "5.5.2")
        state = await _state_after(client, handler)
    assert state["authenticated"] is None
    assert checker.calls == []


@pytest.mark.parametrize(
    "blob",
    [b"no-nul-at-all", b"\x00only-user", b"\x00\x00password", b"a\x00b\x00c\x00d", b"\x00user\x00"],
    ids=["no-nul", "one-nul", "empty-user", "three-nuls", "empty-password"],
)
async def test_malformed_plain_message_gets_501_5_5_2(blob: bytes) -> None:
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + b64(blob))).codes == (501, "5.5.2")
    assert checker.calls == []


# ---------------------------------------------------------------------------- pre-checks


async def test_auth_twice_is_refused_with_503_5_5_1() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
        assert (await client.cmd("AUTH LOGIN")).codes == (503, "5.5.1")


async def test_auth_is_kept_across_rset_and_ehlo() -> None:
    """COMPAT 2.4: RSET and HELO/EHLO keep the authentication."""
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        assert (await client.cmd("RSET")).code == 250
        await client.ehlo()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
        state = await _state_after(client, handler)
    assert state["authenticated"] is True


async def test_auth_inside_a_mail_transaction_is_refused_with_503_5_5_1() -> None:
    """COMPAT D6 (RFC 4954 section 4): aiosmtpd accepts it."""
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("RSET")).code == 250
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")


async def test_auth_before_ehlo_is_refused_with_503_5_5_1() -> None:
    async with auth_server() as srv:
        client = await srv.greeted()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")


async def test_auth_after_helo_only_is_refused_with_500_5_5_1() -> None:
    async with auth_server() as srv:
        client = await srv.greeted()
        assert (await client.cmd("HELO client.example")).code == 250
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (500, "5.5.1")


async def test_bad_credentials_get_535_5_7_8_and_leave_the_session_unauthenticated() -> None:
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        bad = plain_blob(password=b"wrong")
        assert (await client.cmd("AUTH PLAIN " + bad)).codes == (535, "5.7.8")
        state = await _state_after(client, handler)
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
    assert state["authenticated"] is None and state["auth_data"] is None


@pytest.mark.parametrize("name", ["plain", "Plain", "pLaIn"])
async def test_mechanism_names_are_case_insensitive(name: str) -> None:
    """COMPAT D16: aiosmtpd answers 504 to ``AUTH plain``."""
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd(f"AUTH {name} {plain_blob()}")).codes == (235, "2.7.0")
    assert checker.calls[0][3] == "PLAIN"  # the authenticator sees the upper-cased name


async def test_lower_case_login_starts_the_login_exchange() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH login")).code == 334


async def test_unknown_mechanism_is_refused_with_504_5_5_4() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH CRAM-MD5")).codes == (504, "5.5.4")
        assert (await client.cmd("AUTH NOPE " + plain_blob())).codes == (504, "5.5.4")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


@pytest.mark.parametrize(
    "command", ["AUTH", "AUTH ", "AUTH PLAIN a b", "AUTH LOGIN dXNlcg== cGFzcw== x"]
)
async def test_auth_without_mechanism_or_with_too_many_words_gets_501_5_5_4(command: str) -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        assert (await client.cmd(command)).codes == (501, "5.5.4")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


# ---------------------------------------------------------------------------- TLS requirement


async def test_auth_require_tls_by_default_hides_auth_and_refuses_it_with_538_5_7_11(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    checker = Authenticator()
    async with running_server(Watcher(), tls_context=server_ctx, authenticator=checker.func) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert not [line for line in ehlo.lines if line.startswith("AUTH")]
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (538, "5.7.11")
        assert (await client.cmd("AUTH LOGIN")).codes == (538, "5.7.11")
        tls = await starttls(client, client_ctx)
        ehlo = await tls.cmd("EHLO client.example")
        assert "AUTH LOGIN PLAIN" in ehlo.lines
        assert (await tls.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
    assert len(checker.calls) == 1


async def test_auth_require_tls_without_any_tls_still_refuses_with_538_5_7_11() -> None:
    async with running_server(Watcher(), authenticator=Authenticator().func) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert not [line for line in ehlo.lines if line.startswith("AUTH")]
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (538, "5.7.11")


async def test_auth_require_tls_false_offers_auth_in_clear_text() -> None:
    async with auth_server() as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert ehlo.lines[-2:] == ("AUTH LOGIN PLAIN", "HELP")
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")


# ---------------------------------------------------------------------------- auth_required


@pytest.mark.parametrize(
    "command",
    ["MAIL FROM:<anne@example.com>", "RCPT TO:<bart@example.org>", "DATA", "VRFY anne", "HELP"],
)
async def test_auth_required_refuses_commands_before_auth_with_530_5_7_0(command: str) -> None:
    with pytest.warns(UserWarning):  # auth_required in clear text warns (COMPAT 4)
        async with auth_server(auth_required=True) as srv:
            client = await srv.ehloed()
            assert (await client.cmd(command)).codes == (530, "5.7.0")
            assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
            assert (await client.cmd("RSET")).codes == (250, "2.0.0")


async def test_auth_required_lets_an_authenticated_client_send_mail(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    handler = Recorder()
    async with running_server(
        handler, tls_context=server_ctx, auth_required=True, authenticator=Authenticator().func
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (530, "5.7.0")
        tls = await starttls(client, client_ctx)
        await tls.ehlo()
        assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (530, "5.7.0")
        assert (await tls.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        assert (await tls.cmd("HELP")).codes == (214, "2.0.0")
        assert (await tls.cmd("VRFY anne")).codes == (252, "2.0.0")
        assert (await tls.transaction(body=BODY)).codes == (250, "2.0.0")
    [session] = handler.sessions
    assert session.authenticated is True and session.auth_data == GOOD


# ---------------------------------------------------------------------------- credential checks


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_authenticator_gets_server_session_envelope_mechanism_and_login_password(
    is_async: bool, mechanism: str
) -> None:
    handler = Watcher()
    checker = Authenticator(is_async=is_async)
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        if mechanism == "PLAIN":
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        else:
            assert (await client.cmd("AUTH LOGIN " + b64(USER))).code == 334
            assert (await client.cmd(b64(PASSWORD))).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    [(server, session, envelope, seen_mechanism, data)] = checker.calls
    assert isinstance(server, SMTP) and server.session is session
    assert isinstance(session, Session) and isinstance(envelope, Envelope)
    assert seen_mechanism == mechanism
    assert data == GOOD and isinstance(data, LoginPassword)
    assert state["authenticated"] is True and state["auth_data"] == GOOD


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_authenticator_failure_with_handled_false_gets_535_5_7_8(is_async: bool) -> None:
    handler = Watcher()
    checker = Authenticator(is_async=is_async, answer=AuthResult(success=False, handled=False))
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (535, "5.7.8")
        state = await _state_after(client, handler)
    assert state["authenticated"] is None


async def test_authenticator_failure_message_is_sent_instead_of_535() -> None:
    result = AuthResult(success=False, handled=False, message="454 4.7.0 Try again later")
    async with auth_server(authenticator=Authenticator(answer=result).func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (454, "4.7.0")


async def test_authenticator_success_message_and_auth_data_are_used() -> None:
    handler = Watcher()
    result = AuthResult(success=True, message="235 2.7.0 Welcome, alice", auth_data={"uid": 7})
    async with auth_server(handler, authenticator=Authenticator(answer=result).func) as srv:
        client = await srv.ehloed()
        reply = await client.cmd("AUTH PLAIN " + plain_blob())
        assert reply.codes == (235, "2.7.0") and reply.lines == ("Welcome, alice",)
        state = await _state_after(client, handler)
    assert state == {"authenticated": True, "auth_data": {"uid": 7}}


async def test_authenticator_success_without_auth_data_leaves_auth_data_none() -> None:
    """COMPAT 2.4 table: ``auth_data = X`` whatever X is, as in aiosmtpd."""
    handler = Watcher()
    async with auth_server(
        handler, authenticator=Authenticator(answer=AuthResult(success=True)).func
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state == {"authenticated": True, "auth_data": None}


async def test_authenticator_that_raises_gets_454_4_7_0_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")

    def broken(*args: Any) -> AuthResult:
        raise RuntimeError("user database down")

    handler = Watcher()
    async with auth_server(handler, authenticator=broken) as srv:
        client = await srv.ehloed()
        reply = await client.cmd("AUTH PLAIN " + plain_blob())
        assert reply.codes == (454, "4.7.0")
        assert "database" not in " ".join(reply.lines)
        state = await _state_after(client, handler)
    assert state["authenticated"] is None
    assert any(r.exc_info for r in caplog.records if r.name.startswith("smtptrio"))


@pytest.mark.parametrize("answer", [True, False])
async def test_legacy_auth_callback_decides_and_is_deprecated(answer: bool) -> None:
    calls: list[tuple[str, bytes, bytes]] = []

    def callback(mechanism: str, login: bytes, password: bytes) -> bool:
        calls.append((mechanism, login, password))
        return answer

    handler = Watcher()
    with pytest.warns(DeprecationWarning):
        async with auth_server(handler, authenticator=None, auth_callback=callback) as srv:
            client = await srv.ehloed()
            reply = await client.cmd("AUTH PLAIN " + plain_blob())
            assert reply.codes == ((235, "2.7.0") if answer else (535, "5.7.8"))
            assert (await client.cmd("AUTH LOGIN " + b64(USER))).code == (503 if answer else 334)
            if not answer:
                assert (await client.cmd(b64(PASSWORD))).codes == (535, "5.7.8")
            state = await _state_after(client, handler)
    expected = [("PLAIN", USER, PASSWORD)] + ([] if answer else [("LOGIN", USER, PASSWORD)])
    assert calls == expected
    if answer:
        assert state == {"authenticated": True, "auth_data": GOOD}
    else:
        assert state == {"authenticated": None, "auth_data": None}


async def test_authenticator_wins_over_auth_callback() -> None:
    callback_calls: list[str] = []

    def callback(mechanism: str, login: bytes, password: bytes) -> bool:
        callback_calls.append(mechanism)
        return True

    checker = Authenticator(answer=AuthResult(success=False, handled=False))
    with pytest.warns(DeprecationWarning):
        async with auth_server(authenticator=checker.func, auth_callback=callback) as srv:
            client = await srv.ehloed()
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (535, "5.7.8")
    assert callback_calls == [] and len(checker.calls) == 1


async def test_no_authenticator_and_no_callback_refuses_every_login_with_535_5_7_8() -> None:
    async with auth_server(authenticator=None) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (535, "5.7.8")
        assert (await client.cmd("AUTH LOGIN " + b64(USER))).code == 334
        assert (await client.cmd(b64(PASSWORD))).codes == (535, "5.7.8")


# ---------------------------------------------------------------------------- handle_AUTH


class AuthHook(Watcher):
    def __init__(self, answer: Any, *, is_async: bool = False, push: str | None = None) -> None:
        super().__init__()
        self.answer = answer
        self.push = push
        self.calls: list[list[str]] = []
        self.is_async = is_async

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        self.calls.append(list(args))
        if self.is_async:
            await trio.lowlevel.checkpoint()
        if self.push is not None:
            await server.push(self.push)
            session.authenticated = True
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_handle_auth_string_is_sent(is_async: bool) -> None:
    handler = AuthHook("535 5.7.8 Go away", is_async=is_async)
    checker = Authenticator()
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH plain " + plain_blob())).codes == (535, "5.7.8")
        state = await _state_after(client, handler)
    assert handler.calls == [["PLAIN", plain_blob()]]
    assert checker.calls == []  # the built-in mechanism did not run
    assert state["authenticated"] is None


async def test_handle_auth_none_means_the_hook_replied_itself() -> None:
    handler = AuthHook(None, push="235 2.7.0 Hook says welcome")
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).codes == (235, "2.7.0")
        state = await _state_after(client, handler)  # exactly one reply came before
        # The hook set session.authenticated: the engine knows (AUTH again is 503).
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
    assert handler.calls == [["LOGIN"]]
    assert state["authenticated"] is True


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_handle_auth_missing_runs_the_builtin_mechanism(is_async: bool) -> None:
    handler = AuthHook(MISSING, is_async=is_async)
    checker = Authenticator()
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert handler.calls == [["PLAIN", plain_blob()]]
    assert len(checker.calls) == 1
    assert state == {"authenticated": True, "auth_data": GOOD}


async def test_handle_auth_is_not_called_when_a_pre_check_fails() -> None:
    handler = AuthHook("235 2.7.0 would be wrong")
    async with auth_server(handler) as srv:
        client = await srv.greeted()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
        await client.ehlo()
        assert (await client.cmd("AUTH UNKNOWN")).codes == (504, "5.5.4")
        assert (await client.cmd("AUTH")).codes == (501, "5.5.4")
    assert handler.calls == []


async def test_handle_auth_that_raises_gets_454_4_7_0() -> None:
    handler = AuthHook(RuntimeError("boom"))
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (454, "4.7.0")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


# ---------------------------------------------------------------------------- custom mechanisms


class XTestHandler(Watcher):
    """A handler mechanism with a challenge round."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Any] = []

    async def auth_XTEST(self, server: SMTP, args: list[str]) -> Any:
        assert args[0] == "XTEST"
        answer = await server.challenge_auth("prompt")
        self.answers.append(answer)
        if answer is MISSING:
            return AuthResult(success=False)  # challenge_auth already replied
        if answer == b"open sesame":
            return AuthResult(success=True, auth_data=answer)
        return AuthResult(success=False, handled=False)


async def test_handler_auth_hook_with_challenge_auth_is_offered_and_works() -> None:
    handler = XTestHandler()
    async with auth_server(handler) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert "AUTH LOGIN PLAIN XTEST" in ehlo.lines  # sorted (COMPAT 2.4)
        challenge = await client.cmd("AUTH xtest")
        assert challenge.code == 334 and challenge.lines == (b64(b"prompt"),)
        assert (await client.cmd(b64(b"open sesame"))).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert handler.answers == [b"open sesame"]
    assert state == {"authenticated": True, "auth_data": b"open sesame"}


async def test_challenge_auth_answers_a_cancel_itself_and_returns_missing() -> None:
    handler = XTestHandler()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH XTEST")).code == 334
        assert (await client.cmd("*")).codes == (501, "5.7.0")
        # Exactly one reply: the next command's reply comes next.
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        assert (await client.cmd("AUTH XTEST")).code == 334
        assert (await client.cmd("bad base64!")).codes == (501, "5.5.2")
        assert (await client.cmd("AUTH XTEST")).code == 334
        assert (await client.cmd(b64(b"wrong"))).codes == (535, "5.7.8")
    assert handler.answers == [MISSING, MISSING, b"wrong"]


async def test_challenge_auth_without_encoding_and_with_an_empty_challenge() -> None:
    class Handler(Watcher):
        async def auth_RAW(self, server: SMTP, args: list[str]) -> Any:
            first = await server.challenge_auth("plain words", encode_to_b64=False)
            second = await server.challenge_auth(b"")
            return AuthResult(success=True, auth_data=(first, second))

    handler = Handler()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        first = await client.cmd("AUTH RAW")
        assert first.raw == b"334 plain words\r\n"
        second = await client.cmd(b64(b"one"))
        assert second.raw == b"334 \r\n"
        assert (await client.cmd("=")).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state["auth_data"] == (b"one", b"")


async def test_handler_auth_hook_wins_over_the_builtin_of_the_same_name() -> None:
    class Handler(Watcher):
        def __init__(self) -> None:
            super().__init__()
            self.args: list[list[str]] = []

        async def auth_PLAIN(self, server: SMTP, args: list[str]) -> Any:
            self.args.append(args)
            return AuthResult(success=True, auth_data="from the handler")

    handler = Handler()
    checker = Authenticator()
    async with auth_server(handler, authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert handler.args == [["PLAIN", plain_blob()]]
    assert checker.calls == []
    assert state["auth_data"] == "from the handler"


class SubclassSMTP(SMTP):
    async def auth_SUBTEST(self, server: SMTP, args: list[str]) -> Any:
        assert server is self
        if len(args) == 2 and args[1] == b64(b"token"):
            return AuthResult(success=True, auth_data="subclass")
        return AuthResult(success=False, handled=False)

    @auth_mechanism("X-DASH")
    async def auth_xdash(self, server: SMTP, args: list[str]) -> Any:
        return AuthResult(success=True, auth_data="x-dash")

    async def auth_DIGEST__TEST(self, server: SMTP, args: list[str]) -> Any:
        return AuthResult(success=True, auth_data="digest-test")


async def test_subclass_auth_methods_are_offered_sorted_with_the_builtins() -> None:
    async with auth_server(smtp_class=SubclassSMTP) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert "AUTH DIGEST-TEST LOGIN PLAIN SUBTEST X-DASH" in ehlo.lines


@pytest.mark.parametrize(
    ("command", "auth_data"),
    [
        ("AUTH SUBTEST " + b64(b"token"), "subclass"),
        ("AUTH x-dash", "x-dash"),
        ("AUTH Digest-Test", "digest-test"),
    ],
)
async def test_subclass_auth_methods_decorator_and_double_underscore_names_work(
    command: str, auth_data: str
) -> None:
    handler = Watcher()
    async with auth_server(handler, smtp_class=SubclassSMTP) as srv:
        client = await srv.ehloed()
        assert (await client.cmd(command)).codes == (235, "2.7.0")
        state = await _state_after(client, handler)
    assert state == {"authenticated": True, "auth_data": auth_data}


async def test_subclass_mechanism_failure_without_handling_gets_535() -> None:
    async with auth_server(smtp_class=SubclassSMTP) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH SUBTEST " + b64(b"nope"))).codes == (535, "5.7.8")
        # The decorated method is not also offered under its attribute name.
        assert (await client.cmd("AUTH XDASH")).codes == (504, "5.5.4")


async def test_handler_mechanism_with_the_decorator_and_double_underscore() -> None:
    class Handler(Watcher):
        @auth_mechanism("scram-sha-1")
        async def auth_scram(self, server: SMTP, args: list[str]) -> Any:
            return AuthResult(success=True, auth_data="scram")

        async def auth_GS2__KRB5(self, server: SMTP, args: list[str]) -> Any:
            return AuthResult(success=True, auth_data="gs2")

    async with auth_server(Handler()) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert "AUTH GS2-KRB5 LOGIN PLAIN SCRAM-SHA-1" in ehlo.lines
        assert (await client.cmd("AUTH SCRAM-SHA-1")).codes == (235, "2.7.0")
        other = await srv.ehloed()
        assert (await other.cmd("AUTH gs2-krb5")).codes == (235, "2.7.0")


@pytest.mark.parametrize("name", ["BAD NAME", "bad!", "", "CRAM/MD5", "ü"])
def test_auth_mechanism_decorator_refuses_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        auth_mechanism(name)


@pytest.mark.parametrize("excluded", [["PLAIN"], ["plain"], ("Plain",), {"pLaIn"}])
async def test_auth_exclude_mechanism_removes_plain_case_insensitively(excluded: Any) -> None:
    async with auth_server(auth_exclude_mechanism=excluded) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert "AUTH LOGIN" in ehlo.lines
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (504, "5.5.4")
        assert (await client.cmd("AUTH LOGIN " + b64(USER))).code == 334


async def test_auth_exclude_mechanism_of_every_mechanism_drops_auth_from_ehlo() -> None:
    async with auth_server(auth_exclude_mechanism=["login", "PLAIN"]) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert not [line for line in ehlo.lines if line.startswith("AUTH")]


async def test_auth_exclude_mechanism_applies_to_handler_mechanisms_too() -> None:
    async with auth_server(XTestHandler(), auth_exclude_mechanism=["xtest"]) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert "AUTH LOGIN PLAIN" in ehlo.lines
        assert (await client.cmd("AUTH XTEST")).codes == (504, "5.5.4")


# ---------------------------------------------------------------------------- legacy returns


class LegacyHandler(Watcher):
    """``auth_LEGACY`` returns whatever the test set (COMPAT 2.4 table, D27)."""

    def __init__(self, value: Any, push: str | None = None) -> None:
        super().__init__()
        self.value = value
        self.push_first = push

    async def auth_LEGACY(self, server: SMTP, args: list[str]) -> Any:
        if self.push_first is not None:
            await server.push(self.push_first)
        return self.value


async def test_legacy_none_from_an_auth_hook_sends_nothing_more() -> None:
    handler = LegacyHandler(None, push="535 5.7.8 hook says no")
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LEGACY")).codes == (535, "5.7.8")
        state = await _state_after(client, handler)  # no second reply in between
    assert state["authenticated"] is None


@pytest.mark.parametrize("value", [MISSING, False], ids=["MISSING", "False"])
async def test_legacy_missing_or_false_from_an_auth_hook_gets_535_5_7_8(value: Any) -> None:
    handler = LegacyHandler(value)
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LEGACY")).codes == (535, "5.7.8")
        state = await _state_after(client, handler)
    assert state["authenticated"] is None


@pytest.mark.parametrize("value", ["alice", b"alice", 42, ("alice", "admin")])
async def test_legacy_identity_from_an_auth_hook_authenticates_with_235(value: Any) -> None:
    """COMPAT D27: aiosmtpd leaves ``authenticated`` unset, so auth_required still blocks."""
    handler = LegacyHandler(value)
    with pytest.warns(UserWarning):  # auth_required in clear text (COMPAT 4)
        async with auth_server(handler, auth_required=True) as srv:
            client = await srv.ehloed()
            assert (await client.cmd("AUTH LEGACY")).codes == (235, "2.7.0")
            state = await _state_after(client, handler)
            assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
    assert state == {"authenticated": True, "auth_data": value}


async def test_legacy_identity_is_the_deprecated_login_data() -> None:
    handler = LegacyHandler("alice")
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LEGACY")).codes == (235, "2.7.0")
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")
    [session] = handler.sessions
    with pytest.warns(DeprecationWarning):
        assert session.login_data == "alice"


async def test_builtin_login_data_is_the_login_and_deprecated() -> None:
    handler = Watcher()
    async with auth_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")
    [session] = handler.sessions
    with pytest.warns(DeprecationWarning):
        assert session.login_data == USER


# ---------------------------------------------------------------------------- limits


async def test_auth_response_over_12288_octets_gets_500_5_5_6_and_the_session_goes_on() -> None:
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd("A" * 12292)).codes == (500, "5.5.6")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        assert (await client.cmd("AUTH PLAIN")).code == 334
        assert (await client.cmd("QUFB" * 4000)).codes == (500, "5.5.6")  # 16000 octets
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
    assert len(checker.calls) == 1


async def test_auth_response_of_exactly_12288_octets_is_read() -> None:
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd("A" * 12288)).code == 334
        assert (await client.cmd(b64(PASSWORD))).codes == (535, "5.7.8")
    assert checker.calls[0][4] == LoginPassword(b"\x00" * 9216, PASSWORD)


async def test_auth_command_line_over_12288_octets_is_refused_and_the_session_goes_on() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        reply = await client.cmd("AUTH PLAIN " + "A" * 13000)
        assert reply.code == 500
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


@pytest.mark.parametrize(
    "fail",
    [
        pytest.param(["AUTH PLAIN " + plain_blob(password=b"wrong")], id="bad-credentials"),
        pytest.param(["AUTH PLAIN", "*"], id="cancelled"),
        pytest.param(["AUTH PLAIN ****"], id="bad-base64"),
        pytest.param(["AUTH LOGIN", b64(USER), b64(b"wrong")], id="login-bad-password"),
    ],
)
async def test_auth_failure_limit_closes_with_421_4_7_0_after_three_failures(
    fail: list[str],
) -> None:
    """COMPAT D24 (RFC 5321 section 7.8): aiosmtpd allows unlimited guesses."""
    checker = Authenticator()
    async with auth_server(authenticator=checker.func) as srv:
        client = await srv.ehloed()
        for _ in range(3):
            for step in fail[:-1]:
                assert (await client.cmd(step)).code == 334
            assert (await client.cmd(fail[-1])).code in (501, 535)
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (421, "4.7.0")
        await client.expect_eof()
    assert all(call[4] != GOOD for call in checker.calls)


async def test_auth_failure_limit_is_configurable_and_none_disables_it() -> None:
    async with auth_server(auth_failure_limit=1) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH PLAIN " + plain_blob(password=b"x"))).code == 535
        assert (await client.cmd("AUTH LOGIN")).codes == (421, "4.7.0")
        await client.expect_eof()
    async with auth_server(auth_failure_limit=None) as srv:
        client = await srv.ehloed()
        for _ in range(10):
            assert (await client.cmd("AUTH PLAIN " + plain_blob(password=b"x"))).code == 535
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")


async def test_auth_failure_limit_is_per_connection() -> None:
    async with auth_server() as srv:
        first = await srv.ehloed()
        for _ in range(3):
            assert (await first.cmd("AUTH PLAIN " + plain_blob(password=b"x"))).code == 535
        second = await srv.ehloed()
        assert (await second.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")


async def test_two_failures_then_success_is_accepted() -> None:
    async with auth_server() as srv:
        client = await srv.ehloed()
        for _ in range(2):
            assert (await client.cmd("AUTH PLAIN " + plain_blob(password=b"x"))).code == 535
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")


# ---------------------------------------------------------------------------- secrets


def _secret_forms() -> list[str]:
    """The password as the client sent it (alone, in base64, inside PLAIN blobs)."""
    return [
        PASSWORD.decode(),
        repr(PASSWORD),
        b64(PASSWORD),
        b64(PASSWORD + b"x"),
        plain_blob(),
        plain_blob(password=PASSWORD + b"x"),
    ]


def _record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), str(record.msg), repr(record.args)]
    texts += [f"{k}={v!r}" for k, v in vars(record).items()]
    texts += [str(v) for v in vars(record).values()]
    if record.exc_info and record.exc_info[1] is not None:
        texts.append(repr(record.exc_info[1]))
    return texts


class LoggedResponse(Watcher):
    """A mechanism that asks challenge_auth to log the response (aiosmtpd would log it)."""

    async def auth_XLOG(self, server: SMTP, args: list[str]) -> Any:
        answer = await server.challenge_auth("token?", log_client_response=True)
        if answer is MISSING:
            return AuthResult(success=False)
        return AuthResult(success=answer == PASSWORD, handled=False)


async def test_credentials_never_appear_in_log_records(
    caplog: pytest.LogCaptureFixture, server_ctx: ssl.SSLContext
) -> None:
    """COMPAT 1.3: AUTH secrets are never logged, not even with ``log_client_response=True``."""
    caplog.set_level(logging.DEBUG)
    bad = PASSWORD + b"x"
    with pytest.warns(DeprecationWarning):
        async with auth_server(
            authenticator=None, auth_callback=lambda m, u, p: p == PASSWORD, auth_failure_limit=None
        ) as srv:
            client = await srv.ehloed()
            # Success and failure, PLAIN and LOGIN, initial responses and challenges.
            assert (await client.cmd("AUTH PLAIN " + plain_blob(password=bad))).code == 535
            assert (await client.cmd("AUTH PLAIN")).code == 334
            assert (await client.cmd(plain_blob(password=bad))).code == 535
            assert (await client.cmd("AUTH LOGIN " + b64(USER))).code == 334
            assert (await client.cmd(b64(bad))).code == 535
            # Refused AUTH lines carrying secrets: unknown mechanism, too many words.
            assert (await client.cmd("AUTH NOPE " + plain_blob())).code == 504
            assert (await client.cmd("AUTH PLAIN " + plain_blob() + " x")).code == 501
            assert (await client.cmd("AUTH LOGIN")).code == 334
            assert (await client.cmd(b64(USER))).code == 334
            assert (await client.cmd(b64(PASSWORD))).codes == (235, "2.7.0")
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).code == 503
            await client.quit()
        async with auth_server(LoggedResponse()) as srv:  # an authenticator; a custom mechanism
            client = await srv.ehloed()
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
            other = await srv.ehloed()
            assert (await other.cmd("AUTH XLOG")).code == 334
            assert (await other.cmd(b64(PASSWORD))).codes == (235, "2.7.0")
            await client.quit()
            await other.quit()
        # AUTH refused before TLS (538) with the secret on the line.
        async with running_server(Watcher(), tls_context=server_ctx) as srv:
            client = await srv.ehloed()
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).code == 538
            await client.quit()
    assert caplog.records, "expected the server to log something"
    secrets = _secret_forms()
    for record in caplog.records:
        for text in _record_texts(record):
            for secret in secrets:
                assert secret not in text, (record.name, record.getMessage(), secret)


def test_auth_result_repr_hides_auth_data() -> None:
    result = AuthResult(success=True, auth_data=LoginPassword(USER, PASSWORD))
    text = repr(result)
    assert "success=True" in text
    assert PASSWORD.decode() not in text and "auth_data" not in text
    secret_only = AuthResult(success=True, auth_data="token-Hq93")
    assert "token-Hq93" not in repr(secret_only) and "token-Hq93" not in str(secret_only)


def test_login_password_repr_and_str_hide_the_password() -> None:
    pair = LoginPassword(USER, PASSWORD)
    # %-formatting is what logging does with a LoginPassword passed as an argument.
    percent = ("%s %r" % (pair, pair),)  # noqa: UP031
    for text in (repr(pair), str(pair), f"{pair}", *percent, repr([pair]), repr({"k": pair})):
        assert PASSWORD.decode() not in text and repr(PASSWORD) not in text, text
        assert USER.decode() in text
    # Still a plain pair for code that unpacks it.
    login, password = pair
    assert (login, password) == (USER, PASSWORD)
    assert pair == (USER, PASSWORD)


def test_auth_names_are_exported_at_top_level() -> None:
    assert smtptrio.AuthResult is AuthResult
    assert smtptrio.LoginPassword is LoginPassword
    assert smtptrio.auth_mechanism is auth_mechanism
    with pytest.raises(TypeError):
        AuthResult(True)  # type: ignore[call-arg]  # keyword-only (COMPAT 2.4)
