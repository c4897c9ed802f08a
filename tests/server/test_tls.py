"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over memory streams.

The real ``serve_listeners`` runs on an in-memory listener (``helpers.running_server``); the
client side of each memory stream is wrapped in a ``trio.SSLStream``, so no socket is needed.
Replies are checked on codes and enhanced codes (COMPAT.md section 0.3), never on texts.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
import trio
import trio.testing
from helpers import MemoryServer, Recorder, SMTPClient, running_server
from tls_helpers import (
    PASSWORD,
    USER,
    accept_alice,
    implicit_tls_client,
    plain_blob,
    starttls,
    upgrade,
)

from smtptrio import MISSING, SMTP, Envelope, LoginPassword, Session

BODY = b"Subject: tls\r\n\r\nover TLS\r\n"
SSL_KEYS = {"sslcontext", "peercert", "cipher", "compression", "ssl_object"}


# Function-scoped fixtures (STYLE.md section 5); only the key material behind them is cached.


class Watcher(Recorder):
    """Records the session and envelope every NOOP, MAIL and DATA sees (default replies)."""

    def __init__(self) -> None:
        super().__init__()
        self.noops: list[tuple[Session, Envelope]] = []
        #: What the session said at each NOOP (the objects themselves change later).
        self.noop_states: list[dict[str, Any]] = []
        self.mails: list[str] = []
        self.rsets = 0

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> Any:
        self.noops.append((session, envelope))
        self.noop_states.append(
            {
                "host_name": session.host_name,
                "authenticated": session.authenticated,
                "auth_data": session.auth_data,
                "ssl": session.ssl is not None,
            }
        )
        return MISSING

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        self.mails.append(address)
        return MISSING

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        self.rsets += 1
        return MISSING


def _tls_warnings(caplog: pytest.LogCaptureFixture, word: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("smtptrio")
        and r.levelno >= logging.WARNING
        and word in r.getMessage().lower()
    ]


async def _tls_session(srv: MemoryServer, ctx: ssl.SSLContext) -> SMTPClient:
    """Greeted, EHLO, STARTTLS, handshake, EHLO again: a client ready inside TLS."""
    client = await srv.ehloed()
    tls = await starttls(client, ctx)
    await tls.ehlo()
    return tls


# ---------------------------------------------------------------------------- EHLO


async def test_ehlo_before_tls_offers_starttls_and_no_auth(server_ctx: ssl.SSLContext) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert ehlo.codes == (250, None)
    assert "STARTTLS" in ehlo.lines
    assert not [line for line in ehlo.lines if line.startswith("AUTH")]
    # COMPAT 5.2 order: ... ENHANCEDSTATUSCODES, STARTTLS, (AUTH), HELP.
    assert ehlo.lines[-2:] == ("STARTTLS", "HELP")


async def test_ehlo_after_starttls_drops_starttls_and_offers_auth(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        ehlo = await tls.cmd("EHLO client.example")
    assert ehlo.codes == (250, None)
    assert "STARTTLS" not in ehlo.lines
    assert ehlo.lines[-2:] == ("AUTH LOGIN PLAIN", "HELP")


async def test_ehlo_without_tls_context_offers_no_starttls() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert "STARTTLS" not in ehlo.lines


@pytest.mark.parametrize("with_starttls_context", [False, True])
async def test_ehlo_under_implicit_tls_offers_auth_but_never_starttls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, with_starttls_context: bool
) -> None:
    """COMPAT D17: TLS is known from the first byte."""
    extra: dict[str, Any] = {"tls_context": server_ctx} if with_starttls_context else {}
    async with running_server(Recorder(), ssl_context=server_ctx, **extra) as srv:
        client = implicit_tls_client(await srv.connect(), client_ctx)
        await client.greeting()
        ehlo = await client.cmd("EHLO client.example")
    assert ehlo.codes == (250, None)
    assert "STARTTLS" not in ehlo.lines
    assert "AUTH LOGIN PLAIN" in ehlo.lines


# ---------------------------------------------------------------------------- STARTTLS


async def test_starttls_gets_220_2_0_0_then_the_handshake_and_mail_flows_over_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    handler = Recorder()
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        assert isinstance(tls.stream, trio.SSLStream)
        assert tls.stream.version() is not None
        await tls.ehlo()
        assert (await tls.transaction(body=BODY)).codes == (250, "2.0.0")
        await tls.quit()
    [envelope] = handler.envelopes
    assert envelope.content == BODY
    [session] = handler.sessions
    assert session.ssl is not None and set(session.ssl) == SSL_KEYS


INJECTIONS = [
    pytest.param(b"MAIL FROM:<evil@example.net>\r\n", id="mail"),
    pytest.param(b"RSET\r\n", id="rset"),
    pytest.param(b"NOOP\r\nNOOP\r\nQUIT\r\n", id="noops-and-quit"),
    pytest.param(b"MAIL FROM:<evil@exam", id="partial-line"),
]


@pytest.mark.parametrize("injected", INJECTIONS)
async def test_starttls_drops_pipelined_plaintext(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    injected: bytes,
) -> None:
    """RFC 3207 section 4.2, COMPAT D5: what came in clear text after STARTTLS is never run."""
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    handler = Watcher()
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        await client.send(b"STARTTLS\r\n" + injected)  # one write: a man in the middle's add-on
        assert (await client.reply()).codes == (220, "2.0.0")
        tls = await upgrade(client, client_ctx)  # asserts no clear-text reply came after 220
        ehlo = await tls.cmd("EHLO client.example")
        # The first reply over TLS answers our EHLO, not an injected command.
        assert ehlo.codes == (250, None) and ehlo.lines[0] == "mx.example"
        assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
        assert (await tls.cmd("NOOP")).codes == (250, "2.0.0")
        await tls.quit()
    assert handler.mails == ["anne@example.com"]
    assert handler.rsets == 0
    assert len(handler.noops) == 1
    assert _tls_warnings(caplog, "starttls"), [r.getMessage() for r in caplog.records]


async def test_starttls_without_pipelined_plaintext_logs_no_drop_warning(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        await (await _tls_session(srv, client_ctx)).quit()
    assert not _tls_warnings(caplog, "plaintext")


async def test_starttls_forgets_the_greeting_mail_right_after_tls_gets_503_5_5_1(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (503, "5.5.1")
        assert (await tls.cmd("AUTH PLAIN " + plain_blob())).codes == (503, "5.5.1")
        await tls.ehlo()
        assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")


async def test_starttls_forgets_an_open_transaction(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        tls = await starttls(client, client_ctx)
        await tls.ehlo()
        assert (await tls.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1")
        assert (await tls.cmd("DATA")).codes == (503, "5.5.1")


async def test_starttls_gives_hooks_a_new_session_without_host_name(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    handler = Watcher()
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("NOOP")).code == 250
        tls = await starttls(client, client_ctx)
        assert (await tls.cmd("NOOP")).code == 250
    (before, env_before), (after, env_after) = handler.noops
    assert before.host_name == "client.example" and before.ssl is None
    assert after is not before and env_after is not env_before
    assert after.host_name is None
    assert after.extended_smtp is False
    assert after.ssl is not None and set(after.ssl) == SSL_KEYS
    assert after.peer == before.peer


async def test_starttls_drops_the_authentication(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """COMPAT 2.4: STARTTLS drops authentication (new session); the client must AUTH again."""
    handler = Watcher()
    # auth_required without auth_require_tls warns (COMPAT 4); that is not under test here.
    with pytest.warns(UserWarning):
        async with running_server(
            handler,
            tls_context=server_ctx,
            auth_require_tls=False,
            auth_required=True,
            authenticator=accept_alice,
        ) as srv:
            client = await srv.ehloed()
            assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
            assert (await client.cmd("NOOP")).code == 250
            tls = await starttls(client, client_ctx)
            await tls.ehlo()
            assert (await tls.cmd("NOOP")).code == 250
            assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (530, "5.7.0")
            # Not "503 already authenticated": the old authentication is gone.
            assert (await tls.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
            assert (await tls.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
    before, after = handler.noop_states
    assert before["authenticated"] is True and not before["ssl"]
    assert before["auth_data"] == LoginPassword(USER, PASSWORD)
    assert after["authenticated"] is None and after["ssl"]
    assert after["auth_data"] is None


async def test_starttls_inside_starttls_is_refused_with_503_5_5_1(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """COMPAT D4 (RFC 3207 section 4.2): no TLS inside TLS."""
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        tls = await _tls_session(srv, client_ctx)
        assert (await tls.cmd("STARTTLS")).codes == (503, "5.5.1")
        assert (await tls.cmd("NOOP")).codes == (250, "2.0.0")  # still talking over TLS


@pytest.mark.parametrize("with_starttls_context", [False, True])
async def test_starttls_under_implicit_tls_is_refused_with_503_5_5_1(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, with_starttls_context: bool
) -> None:
    extra: dict[str, Any] = {"tls_context": server_ctx} if with_starttls_context else {}
    async with running_server(Recorder(), ssl_context=server_ctx, **extra) as srv:
        client = implicit_tls_client(await srv.connect(), client_ctx)
        await client.greeting()
        await client.ehlo()
        assert (await client.cmd("STARTTLS")).codes == (503, "5.5.1")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


async def test_starttls_with_an_argument_is_refused_with_501_5_5_4(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS now")).codes == (501, "5.5.4")
        # Still in clear text and still able to start TLS properly.
        tls = await starttls(client, client_ctx)
        await tls.ehlo()


async def test_starttls_before_ehlo_is_refused_with_503_5_5_1(
    server_ctx: ssl.SSLContext,
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.greeted()
        assert (await client.cmd("STARTTLS")).codes == (503, "5.5.1")
        assert (await client.cmd("EHLO client.example")).code == 250


async def test_starttls_without_tls_context_is_refused_with_454_4_7_0() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS")).codes == (454, "4.7.0")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


# ---------------------------------------------------------------------------- require_starttls


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM:<anne@example.com>",
        "RCPT TO:<bart@example.org>",
        "DATA",
        "HELO client.example",
        "RSET",
        "VRFY anne",
        "HELP",
        "AUTH PLAIN " + plain_blob(),
    ],
)
async def test_require_starttls_refuses_commands_before_tls_with_530_5_7_0(
    server_ctx: ssl.SSLContext, command: str
) -> None:
    async with running_server(Recorder(), tls_context=server_ctx, require_starttls=True) as srv:
        client = await srv.ehloed()
        assert (await client.cmd(command)).codes == (530, "5.7.0")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


async def test_require_starttls_lets_ehlo_noop_starttls_and_quit_through(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """RFC 3207 section 4: before TLS only these are allowed; after it, everything."""
    handler = Recorder()
    async with running_server(handler, tls_context=server_ctx, require_starttls=True) as srv:
        client = await srv.greeted()
        assert (await client.cmd("EHLO client.example")).code == 250
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        tls = await starttls(client, client_ctx)
        await tls.ehlo()
        assert (await tls.cmd("RSET")).codes == (250, "2.0.0")
        assert (await tls.cmd("HELP")).codes == (214, "2.0.0")
        assert (await tls.transaction(body=BODY)).codes == (250, "2.0.0")
        await tls.quit()
        other = await srv.greeted()
        await other.quit()  # QUIT before TLS works too
    assert [e.content for e in handler.envelopes] == [BODY]


async def test_require_starttls_without_tls_context_has_no_effect() -> None:
    async with running_server(Recorder(), require_starttls=True) as srv:
        client = await srv.ehloed()
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")


# ---------------------------------------------------------------------------- implicit TLS


async def test_implicit_tls_session_ssl_is_set_from_the_first_command(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    handler = Watcher()
    async with running_server(handler, ssl_context=server_ctx) as srv:
        client = implicit_tls_client(await srv.connect(), client_ctx)
        assert (await client.greeting()).codes == (220, None)
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    [(session, _)] = handler.noops
    assert session.ssl is not None and set(session.ssl) == SSL_KEYS
    assert session.ssl["sslcontext"] is server_ctx
    assert session.ssl["peercert"] is None  # no client certificate asked for
    assert isinstance(session.ssl["cipher"], tuple)


async def test_implicit_tls_offers_auth_and_delivers_authenticated_mail(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """COMPAT D17: aiosmtpd answers 538 here; with smtptrio SMTPS AUTH works."""
    handler = Recorder()
    async with running_server(
        handler, ssl_context=server_ctx, authenticator=accept_alice, auth_required=True
    ) as srv:
        client = implicit_tls_client(await srv.connect(), client_ctx)
        await client.greeting()
        ehlo = await client.ehlo()
        assert "AUTH LOGIN PLAIN" in ehlo.lines
        assert (await client.cmd("AUTH PLAIN " + plain_blob())).codes == (235, "2.7.0")
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")
        await client.quit()
    [session] = handler.sessions
    assert session.ssl is not None and session.authenticated is True
    assert session.auth_data == LoginPassword(USER, PASSWORD)
    assert handler.envelopes[0].content == BODY


async def test_implicit_tls_never_calls_handle_starttls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    calls: list[Session] = []

    class Handler(Recorder):
        def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
            calls.append(session)
            return False

    async with running_server(Handler(), ssl_context=server_ctx) as srv:
        client = implicit_tls_client(await srv.connect(), client_ctx)
        await client.greeting()
        await client.ehlo()
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")
    assert calls == []


async def test_implicit_tls_client_that_sends_nothing_is_closed_after_the_handshake_timeout(
    server_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    async with running_server(Recorder(), ssl_context=server_ctx, tls_handshake_timeout=30) as srv:
        raw = await srv.connect()
        start = trio.current_time()
        assert await raw.read_to_eof(timeout=60) == b""  # no greeting in clear text, then EOF
        assert trio.current_time() - start == pytest.approx(30, abs=0.5)
    assert _tls_warnings(caplog, "handshake")


async def test_implicit_tls_garbage_handshake_closes_that_connection_only(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    async with running_server(Recorder(), ssl_context=server_ctx) as srv:
        raw = await srv.connect()
        await raw.send(b"EHLO client.example\r\n" * 10)
        rest = await raw.read_to_eof()
        assert b"220" not in rest and b"250" not in rest
        good = implicit_tls_client(await srv.connect(), client_ctx)
        await good.greeting()
        await good.ehlo()
        await good.quit()
    assert _tls_warnings(caplog, "handshake")


# ---------------------------------------------------------------------------- handle_STARTTLS


class StartTLSHook(Recorder):
    def __init__(self, answer: Any = True, *, is_async: bool = False) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[tuple[SMTP, Session, Envelope, bool]] = []
        if is_async:
            self.handle_STARTTLS = self._async_hook  # type: ignore[method-assign]

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        self.calls.append((server, session, envelope, server.session is session))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def _async_hook(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        await trio.lowlevel.checkpoint()
        return StartTLSHook.handle_STARTTLS(self, server, session, envelope)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_handle_starttls_is_called_after_the_handshake_with_the_new_session(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, is_async: bool
) -> None:
    handler = StartTLSHook(True, is_async=is_async)
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        await tls.ehlo()
        assert (await tls.transaction(body=BODY)).codes == (250, "2.0.0")
    [(server, session, envelope, current)] = handler.calls
    assert current, "the hook must see the session that the server now uses"
    assert handler.sessions == [session]  # the same session delivered the message
    assert session.ssl is not None and set(session.ssl) == SSL_KEYS
    info = session.ssl
    assert info["sslcontext"] is server_ctx
    assert info["peercert"] is None
    assert isinstance(info["cipher"], tuple) and len(info["cipher"]) == 3
    tls_object = info["ssl_object"]
    assert tls_object.cipher() == info["cipher"]
    assert tls_object.version() in ("TLSv1.2", "TLSv1.3")
    assert isinstance(envelope, Envelope) and envelope.mail_from is None
    assert server.transport.get_extra_info("sslcontext") is server_ctx
    assert server.transport.get_extra_info("cipher") == info["cipher"]


async def test_handle_starttls_sees_a_session_not_yet_greeted(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    host_names: list[str | None] = []

    class Handler(Recorder):
        def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
            host_names.append(session.host_name)
            return True

    async with running_server(Handler(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        await starttls(client, client_ctx)
    assert host_names == [None]


@pytest.mark.parametrize(
    "answer",
    [False, None, 0, ""],
    ids=["False", "None", "zero", "empty"],
)
async def test_handle_starttls_falsy_refuses_every_command_but_quit_with_554_5_7_0(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, answer: Any
) -> None:
    handler = StartTLSHook(answer)
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        for command in ("EHLO client.example", "NOOP", "MAIL FROM:<anne@example.com>", "RSET"):
            assert (await tls.cmd(command)).codes == (554, "5.7.0"), command
        await tls.quit()
    assert len(handler.calls) == 1
    assert handler.envelopes == []


async def test_handle_starttls_that_raises_refuses_the_session_and_is_logged(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    handler = StartTLSHook(RuntimeError("certificate policy broke"))
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        assert (await tls.cmd("EHLO client.example")).codes == (554, "5.7.0")
        await tls.quit()
    assert any(r.exc_info for r in caplog.records if r.name.startswith("smtptrio"))


async def test_handle_starttls_returning_missing_lets_the_session_go_on(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """aiosmtpd's MISSING is truthy, so there a hook returning it accepts the session; MISSING
    means "as if the hook did not exist" (COMPAT 2.1), and without the hook the handshake counts
    as good (COMPAT 2.3)."""
    handler = StartTLSHook(MISSING)
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        tls = await starttls(client, client_ctx)
        assert (await tls.cmd("EHLO client.example")).codes == (250, None)


# ---------------------------------------------------------------------------- failed handshakes


async def _second_client_is_served(srv: MemoryServer, ctx: ssl.SSLContext) -> None:
    tls = await _tls_session(srv, ctx)
    assert (await tls.transaction(body=BODY)).codes == (250, "2.0.0")
    await tls.quit()


async def test_garbage_after_starttls_closes_that_connection_only(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    handler = Recorder()
    async with running_server(handler, tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS")).codes == (220, "2.0.0")
        await client.send(b"EHLO client.example\r\nMAIL FROM:<anne@example.com>\r\n")
        rest = await client.read_to_eof()
        assert b"250" not in rest and b"503" not in rest  # no SMTP reply, just the close
        await _second_client_is_served(srv, client_ctx)
    assert _tls_warnings(caplog, "handshake")
    assert len(handler.envelopes) == 1


async def test_client_that_does_not_trust_the_certificate_costs_only_its_connection(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    untrusted_client_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    async with running_server(Recorder(), tls_context=server_ctx) as srv:
        client = await srv.ehloed()
        with pytest.raises(trio.BrokenResourceError) as failed:
            await starttls(client, untrusted_client_ctx)
        assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
        await client.close()  # what a real client does after a failed handshake
        assert client.server_stream is not None
        with trio.fail_after(10):
            await client.server_stream.closed.wait()
        await _second_client_is_served(srv, client_ctx)
    assert _tls_warnings(caplog, "handshake")


async def test_stalled_handshake_after_starttls_is_closed_after_tls_handshake_timeout(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    async with running_server(
        Recorder(), tls_context=server_ctx, tls_handshake_timeout=30, timeout=300
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS")).codes == (220, "2.0.0")
        start = trio.current_time()
        assert await client.read_to_eof(timeout=100) == b""  # closed without a reply
        assert trio.current_time() - start == pytest.approx(30, abs=0.5)
        await _second_client_is_served(srv, client_ctx)
    assert _tls_warnings(caplog, "timed out")
