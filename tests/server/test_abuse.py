"""Abuse resistance over memory streams: slow clients, floods, handler faults, shutdown, logs.

Tier 2 (STYLE.md section 5): real ``serve_listeners`` on the in-memory listener of
``helpers.running_server``, ``autojump_clock`` for every deadline, so a 300 s timeout takes
milliseconds. Limits that need a peer address (per-IP connection count and rate) live in
``tests/e2e/test_floods.py``, over TCP. Replies are checked on codes and enhanced codes
(COMPAT.md section 0.3); the rows are those of COMPAT.md sections 4, 5.1 and 6.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from helpers import (
    CountingHooks,
    Recorder,
    SMTPClient,
    dot_stuff,
    open_connection_io,
    reply_while_trickling,
    running_server,
)

import smtptrio
from smtptrio import SMTP, Envelope, Session

BODY = b"Subject: hi\r\n\r\nbody\r\n"


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def open_transaction(client: SMTPClient, sender: str = "anne@example.com") -> None:
    assert (await client.cmd(f"MAIL FROM:<{sender}>")).codes == (250, "2.1.0")
    assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (250, "2.1.5")
    assert (await client.cmd("DATA")).code == 354


@pytest.fixture
def tls() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """(server context, client context) for mx.example, from a throwaway CA."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield server_ctx, client_ctx


def client_hello(client_ctx: ssl.SSLContext) -> bytes:
    """The bytes a TLS client sends first (a ClientHello), made without any socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello
    return hello


# ============================================================================ slow clients


async def test_idle_client_at_the_prompt_gets_421_4_4_2_then_eof(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), timeout=60) as srv:
        client = await srv.ehloed()
        last_line_at = trio.current_time()
        reply = await client.reply(timeout=100)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - last_line_at == pytest.approx(60, abs=0.1)
        await client.expect_eof()


async def test_command_trickled_byte_by_byte_does_not_extend_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """COMPAT D3: partial lines are not activity; the line would have ended after 120 s."""
    handler = Recorder()
    async with running_server(handler, timeout=60) as srv:
        client = await srv.ehloed()
        last_line_at = trio.current_time()
        sent: list[float] = []

        async def trickle() -> None:
            for byte in b"MAIL FROM:<anne@example.com>\r\n":
                await trio.sleep(4)
                try:
                    await client.send(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            reply = await client.reply(timeout=300)
            nursery.cancel_scope.cancel()
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - last_line_at == pytest.approx(60, abs=0.1)
        assert len(sent) >= 14  # it really was trickling when it was cut off
        await client.expect_eof()


async def test_data_trickled_one_byte_every_3_s_is_closed_by_min_data_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Complete text lines every 12 s would keep the idle timer (60 s) alive for ever;
    min_data_rate (500 octets/s) cuts the session once the budget bought so far is spent."""
    handler = Recorder()
    async with running_server(handler, timeout=60, min_data_rate=500) as srv:
        client = await srv.ehloed()
        await open_transaction(client)
        data_at = trio.current_time()

        octets = [bytes([byte]) for byte in b"ab\r\n"] * 1000
        reply = await reply_while_trickling(client, octets, 3, timeout=3000)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - data_at <= 60 + 3 + 0.1
        await client.expect_eof()
    assert handler.envelopes == []


async def test_normal_speed_data_sender_is_not_cut_off_by_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """2 MB in 64 KB chunks, one per second: 32 s in all with timeout=10. Each read buys
    size/rate seconds (capped at the timeout), so a sender that keeps sending stays."""
    handler = Recorder()
    line = b"x" * 78 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (2 * 1024 * 1024 // len(line))
    wire = dot_stuff(body)
    chunk = 64 * 1024
    async with running_server(handler, timeout=10, min_data_rate=500) as srv:
        client = await srv.ehloed()
        await open_transaction(client)
        started = trio.current_time()
        for offset in range(0, len(wire), chunk):
            await trio.sleep(1)
            await client.send(wire[offset : offset + chunk])
        reply = await client.reply()
        assert reply.codes == (250, "2.0.0")
        assert trio.current_time() - started > 30  # three times the idle timeout
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    [envelope] = handler.envelopes
    assert envelope.content == body


async def test_data_sender_pausing_longer_than_the_timeout_gets_421_4_4_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The counterpart: a 64 KB chunk, then a pause longer than timeout=10."""
    handler = Recorder()
    async with running_server(handler, timeout=10, min_data_rate=500) as srv:
        client = await srv.ehloed()
        await open_transaction(client)
        await trio.sleep(5)
        await client.send((b"y" * 78 + b"\r\n") * (64 * 1024 // 80))
        last_sent = trio.current_time()
        reply = await client.reply(timeout=100)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - last_sent == pytest.approx(10, abs=0.1)
        await client.expect_eof()
    assert handler.envelopes == []


async def test_starttls_client_that_never_handshakes_is_closed_at_tls_handshake_timeout(
    autojump_clock: trio.testing.MockClock, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """COMPAT 5.1 "TLS handshake fails or times out": close, no reply. The idle timeout
    (300 s) does not apply while the handshake runs; tls_handshake_timeout (30 s) does."""
    server_ctx, _ = tls
    async with running_server(
        Recorder(), tls_context=server_ctx, timeout=300, tls_handshake_timeout=30
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS")).codes == (220, "2.0.0")
        started = trio.current_time()
        assert await client.read_to_eof(timeout=400) == b""
        assert trio.current_time() - started == pytest.approx(30, abs=0.1)
        # The server still serves others.
        other = await srv.ehloed()
        await other.quit()


async def test_starttls_handshake_trickled_byte_by_byte_is_still_cut_at_the_deadline(
    autojump_clock: trio.testing.MockClock, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    hello = client_hello(client_ctx)
    async with running_server(
        Recorder(), tls_context=server_ctx, timeout=300, tls_handshake_timeout=30
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("STARTTLS")).codes == (220, "2.0.0")
        started = trio.current_time()

        async def trickle() -> None:
            for byte in hello:
                await trio.sleep(2)
                try:
                    await client.send(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await client.read_to_eof(timeout=1000)  # no SMTP reply is expected, only EOF
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started == pytest.approx(30, abs=2.1)


async def test_implicit_tls_client_that_never_handshakes_is_closed_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server_ctx, client_ctx = tls
    async with running_server(
        Recorder(), ssl_context=server_ctx, timeout=300, tls_handshake_timeout=30
    ) as srv:
        silent = await srv.connect()
        started = trio.current_time()
        assert await silent.read_to_eof(timeout=400) == b""
        assert trio.current_time() - started == pytest.approx(30, abs=0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert srv.server.connection_count == 0
        # A client that does handshake is served.
        plain = await srv.connect()
        tls_stream = trio.SSLStream(plain.stream, client_ctx, server_hostname="mx.example")
        client = SMTPClient(tls_stream)
        await client.greeting()
        await client.ehlo()
        await client.quit()
    assert any(r.levelno == logging.WARNING for r in records(caplog, "TLS handshake timed out"))


# ============================================================================ floods


async def test_global_connection_limit_refuses_with_421_4_7_0_and_serves_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """COMPAT 4 max_connections and 5.1 "Connection over a connection limit"; D23."""
    caplog.set_level(logging.INFO, logger="smtptrio")
    handler = CountingHooks()
    async with running_server(handler, max_connections=3) as srv:
        admitted = [await srv.ehloed() for _ in range(3)]
        calls_before = handler.calls
        refused = [await srv.connect() for _ in range(5)]
        for client in refused:
            try:
                await client.send(b"EHLO flood.example\r\nNOOP\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            assert (await client.reply()).codes == (421, "4.7.0")
            await client.expect_eof()
        assert handler.calls == calls_before
        assert srv.server.connection_count == 3
        # The admitted sessions are served normally, concurrently.
        async with trio.open_nursery() as nursery:
            for client in admitted:
                nursery.start_soon(client.transaction)
        assert len(handler.envelopes) == 3
        # A slot frees up when a session ends.
        await admitted[0].quit()
        await trio.testing.wait_all_tasks_blocked()
        late = await srv.ehloed()
        assert (await late.transaction()).codes == (250, "2.0.0")
        for client in (late, *admitted[1:]):
            await client.quit()
    assert len(records(caplog, "session started")) == 4
    refusals = records(caplog, "connection refused by limit")
    assert len(refusals) == 5
    assert all(r.levelno == logging.WARNING for r in refusals)


async def test_error_limit_ends_the_session_with_421_4_7_0_at_the_50th_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """COMPAT 4 error_limit (RFC 5321 section 7.8): the 50th error reply becomes 421, close."""
    async with running_server(Recorder(), error_limit=50, soft_error_limit=20) as srv:
        client = await srv.ehloed()
        for n in range(1, 50):
            assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1"), n
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (421, "4.7.0")
        await client.expect_eof()
        # Other sessions are not affected.
        other = await srv.ehloed()
        assert (await other.transaction()).codes == (250, "2.0.0")


async def test_errors_past_the_soft_limit_cost_error_delay_each_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """soft_error_limit=20, error_delay=0.5: errors 21..50 (30 of them, the last being the
    421) must take at least 30 x 0.5 s; errors 1..20 are answered at once."""
    async with running_server(
        Recorder(), error_limit=50, soft_error_limit=20, error_delay=0.5
    ) as srv:
        client = await srv.ehloed()
        started = trio.current_time()
        for _ in range(20):
            assert (await client.cmd("HELO")).code == 501
        assert trio.current_time() == started
        past_soft = trio.current_time()
        for _ in range(29):
            assert (await client.cmd("HELO")).codes == (501, "5.5.4")
        assert (await client.cmd("HELO")).codes == (421, "4.7.0")
        assert trio.current_time() - past_soft >= 30 * 0.5


async def test_each_error_reply_past_the_soft_limit_is_delayed_by_error_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """options.py: "After this many error replies in a session, each further one waits
    error_delay seconds" (Postfix smtpd_error_sleep_time: the reply itself is delayed).
    Measured per reply: from sending the bad command to receiving its error reply."""
    async with running_server(
        Recorder(), error_limit=50, soft_error_limit=20, error_delay=0.5
    ) as srv:
        client = await srv.ehloed()
        for _ in range(20):
            assert (await client.cmd("HELO")).code == 501
        latencies = []
        for _ in range(5):  # errors 21..25
            sent = trio.current_time()
            assert (await client.cmd("HELO")).code == 501
            latencies.append(trio.current_time() - sent)
        assert all(lat >= 0.5 for lat in latencies), latencies


async def test_error_delay_of_one_session_does_not_slow_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), soft_error_limit=0, error_delay=5) as srv:
        abuser = await srv.ehloed()
        good = await srv.ehloed()
        async with trio.open_nursery() as nursery:

            async def abuse() -> None:
                for _ in range(10):
                    await abuser.cmd("HELO")

            nursery.start_soon(abuse)
            started = trio.current_time()
            for _ in range(3):
                assert (await good.transaction()).codes == (250, "2.0.0")
            assert trio.current_time() == started


async def test_unknown_command_flood_ends_with_421_4_7_0_at_the_fifth() -> None:
    """COMPAT 4 unrecognized_command_limit, D25."""
    async with running_server(Recorder(), unrecognized_command_limit=5) as srv:
        client = await srv.ehloed()
        for n in range(4):
            assert (await client.cmd(f"XFLOOD{n}")).codes == (500, "5.5.2")
        assert (await client.cmd("XFLOOD4")).codes == (421, "4.7.0")
        await client.expect_eof()


async def test_pipelined_unknown_command_flood_gets_no_reply_after_the_421() -> None:
    async with running_server(Recorder(), unrecognized_command_limit=5) as srv:
        client = await srv.ehloed()
        await client.send(b"".join(b"XFLOOD%d\r\n" % n for n in range(200)))
        codes = [(await client.reply()).codes for _ in range(5)]
        assert codes == [(500, "5.5.2")] * 4 + [(421, "4.7.0")]
        await client.expect_eof()


async def test_recipient_flood_gets_452_4_5_3_past_max_recipients() -> None:
    """COMPAT 4 max_recipients, D28: the transaction goes on with the recipients it has."""
    handler = Recorder()
    async with running_server(handler, max_recipients=100) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        lines = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % n for n in range(150))
        await client.send(lines)
        codes = [(await client.reply()).codes for _ in range(150)]
        assert codes == [(250, "2.1.5")] * 100 + [(452, "4.5.3")] * 50
        assert (await client.cmd("DATA")).code == 354
        await client.send(dot_stuff(BODY))
        assert (await client.reply()).codes == (250, "2.0.0")
    assert len(handler.envelopes[0].rcpt_tos) == 100


async def test_auth_failure_flood_ends_with_421_4_7_0() -> None:
    """COMPAT 4 auth_failure_limit, D24: after 3 failures the next AUTH gets 421 and close."""

    async def refuse(*args: Any) -> bool:
        return False

    async with running_server(
        Recorder(), authenticator=refuse, auth_require_tls=False, auth_failure_limit=3
    ) as srv:
        client = await srv.ehloed()
        blob = base64.b64encode(b"\0anne\0wrong").decode()
        for _ in range(3):
            assert (await client.cmd(f"AUTH PLAIN {blob}")).codes == (535, "5.7.8")
        assert (await client.cmd(f"AUTH PLAIN {blob}")).codes == (421, "4.7.0")
        await client.expect_eof()


async def test_many_concurrent_abusers_do_not_stop_a_well_behaved_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty sessions each flooding errors, unknown verbs and junk while one sends mail."""
    handler = Recorder()
    async with running_server(handler, timeout=60) as srv:
        abusers = [await srv.ehloed() for _ in range(20)]

        async def abuse(client: SMTPClient, n: int) -> None:
            junk = [b"XJUNK", b"RCPT TO:<a@b.example>", b"\x00\xff", b"MAIL FROM:<a@b", b"A" * 5000]
            for i in range(200):
                try:
                    await client.line(junk[(i + n) % len(junk)])
                    reply = await client.reply()
                except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if reply.code == 421:
                    return

        good = await srv.ehloed()
        async with trio.open_nursery() as nursery:
            for n, client in enumerate(abusers):
                nursery.start_soon(abuse, client, n)
            started = trio.current_time()
            for _ in range(10):
                assert (await good.transaction()).codes == (250, "2.0.0")
            assert trio.current_time() == started  # the abusers' error delays are theirs
        await good.quit()
    assert len(handler.envelopes) == 10


# ============================================================================ handler faults


VICTIM = "victim@example.com"


class Faulty:
    """Misbehaves in one hook, for the victim's transactions only; serves everyone else."""

    def __init__(self, hook: str, fault: str) -> None:
        self.hook = hook
        self.fault = fault
        self.entered = trio.Event()
        self.victim_session: str | None = None
        self.delivered: list[Any] = []
        self.errors: list[Exception] = []

    async def _maybe_fault(self, session: Session, sender: str | None, default: str) -> Any:
        if sender != VICTIM:
            return default
        self.victim_session = session.id
        self.entered.set()
        fault = self.fault
        if fault == "raise":
            raise RuntimeError("handler bug")
        if fault == "hang":
            await trio.sleep_forever()
        if fault == "slow":
            await trio.sleep(100)  # over hook_timeout=30
            return default
        if fault == "non-reply string":
            return "hello there"
        if fault == "int":
            return 250
        if fault == "None":
            return None
        if fault == "non-ASCII bytes":
            return b"250 \xff\xfe ok"
        raise AssertionError(fault)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        status = "250 2.1.0 OK"
        if self.hook == "MAIL":
            status = await self._maybe_fault(session, address, status)
        envelope.mail_from = address
        return status

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        status = "250 2.1.5 OK"
        if self.hook == "RCPT":
            status = await self._maybe_fault(session, envelope.mail_from, status)
        envelope.rcpt_tos.append(address)
        return status

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        status = "250 2.0.0 OK"
        if self.hook == "DATA":
            status = await self._maybe_fault(session, envelope.mail_from, status)
        self.delivered.append((envelope.mail_from, envelope.content))
        return status


class FaultyWithHandleException(Faulty):
    def handle_exception(self, error: Exception) -> str:
        self.errors.append(error)
        return "451 4.3.0 sorry"


FAULTS = ["raise", "hang", "slow", "non-reply string", "int", "None", "non-ASCII bytes"]


async def run_victim(client: SMTPClient, hook: str) -> tuple[Any, float]:
    """Drive the victim up to the faulty hook; return its reply and when it arrived."""
    if hook == "MAIL":
        await client.line(f"MAIL FROM:<{VICTIM}>")
    else:
        assert (await client.cmd(f"MAIL FROM:<{VICTIM}>")).code == 250
        if hook == "RCPT":
            await client.line("RCPT TO:<bart@example.org>")
        else:
            assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
            assert (await client.cmd("DATA")).code == 354
            await client.send(dot_stuff(b"Subject: victim\r\n\r\nbody\r\n"))
    reply = await client.reply(timeout=100)
    return reply, trio.current_time()


@pytest.mark.parametrize("hook", ["MAIL", "RCPT", "DATA"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_faulty_hook_blocks_only_its_own_session_and_is_logged_once(
    hook: str,
    fault: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """COMPAT 2.1 "Errors" and "Replies", D19: the victim gets 451 4.3.0, one ERROR record
    with its session id, and its session goes on; a second session is served meanwhile."""
    caplog.set_level(logging.INFO, logger="smtptrio")
    handler = Faulty(hook, fault)
    async with running_server(handler, hook_timeout=30, timeout=300) as srv:
        victim = await srv.ehloed()
        bystander = await srv.ehloed()
        result: list[Any] = []
        bystander_done: list[float] = []
        async with trio.open_nursery() as nursery:

            async def victim_task() -> None:
                result.append(await run_victim(victim, hook))

            nursery.start_soon(victim_task)
            await handler.entered.wait()
            entered_at = trio.current_time()
            for _ in range(3):
                assert (await bystander.transaction()).codes == (250, "2.0.0")
            bystander_done.append(trio.current_time())
        [(reply, replied_at)] = result
        assert reply.codes == (451, "4.3.0")
        if fault in ("hang", "slow"):
            assert replied_at - entered_at == pytest.approx(30, abs=0.1)  # hook_timeout
            assert bystander_done[0] == entered_at  # served at once, while the hook hung
        # The victim's session goes on, and its transaction is over or never started.
        assert (await victim.cmd("RSET")).codes == (250, "2.0.0")
        assert (await victim.transaction()).codes == (250, "2.0.0")
        await victim.quit()
        await bystander.quit()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [(r.getMessage(), r.__dict__.get("hook")) for r in errors]
    assert errors[0].__dict__.get("session_id") == handler.victim_session
    assert errors[0].__dict__.get("hook") == f"handle_{hook}"


@pytest.mark.parametrize(
    ("fault", "error_type"), [("raise", RuntimeError), ("hang", smtptrio.HookTimeout)]
)
async def test_handle_exception_gets_the_error_of_a_raising_or_hanging_hook(
    fault: str, error_type: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    handler = FaultyWithHandleException("DATA", fault)
    async with running_server(handler, hook_timeout=30) as srv:
        victim = await srv.ehloed()
        reply, _ = await run_victim(victim, "DATA")
        assert reply.codes == (451, "4.3.0")
        assert (await victim.cmd("NOOP")).codes == (250, "2.0.0")
    [error] = handler.errors
    assert type(error) is error_type


async def test_hook_slower_than_timeout_but_within_hook_timeout_delays_only_its_session(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow (not hung) hook: its client waits for the normal reply, nobody else waits,
    nothing is logged as an error, and the idle timer does not run meanwhile (COMPAT 2.1)."""

    class Slow(Recorder):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            if envelope.mail_from == VICTIM:
                await trio.sleep(200)
            return await super().handle_DATA(server, session, envelope)

    handler = Slow()
    async with running_server(handler, timeout=60, hook_timeout=300) as srv:
        slow = await srv.ehloed()
        other = await srv.ehloed()
        async with trio.open_nursery() as nursery:

            async def slow_task() -> None:
                await open_transaction(slow, VICTIM)
                await slow.send(dot_stuff(BODY))
                started = trio.current_time()
                assert (await slow.reply(timeout=300)).codes == (250, "2.0.0")
                assert trio.current_time() - started == pytest.approx(200, abs=0.1)

            nursery.start_soon(slow_task)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            assert (await other.transaction()).codes == (250, "2.0.0")
            assert trio.current_time() == started
            await other.quit()
        await slow.quit()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ============================================================================ shutdown


class SlowRecorder(Recorder):
    """Takes a little (virtual) time to deliver, so shutdowns land mid-hook too."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.ids: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await trio.sleep(self.delay)
        assert isinstance(envelope.content, bytes)
        self.ids.append(envelope.content.split(b"\r\n", 1)[0])
        return await super().handle_DATA(server, session, envelope)


async def stream_messages(
    client: SMTPClient, name: str, acked: list[bytes], outcome: dict[str, Any], pause: float
) -> None:
    """Send messages until the server stops us; record the ids that got 250 and how it ended.

    ``outcome[name]`` is (the step at which the session ended, the reply there): a send that
    fails because the server closed is followed by reading what it said before closing.
    """
    await client.ehlo()
    for n in range(200):
        msg_id = f"Message-ID: <{name}.{n}@test>".encode()
        body = msg_id + b"\r\nSubject: load\r\n\r\n" + b"line\r\n" * 50
        wire = dot_stuff(body)
        third = len(wire) // 3
        steps: list[tuple[str, list[bytes]]] = [
            ("MAIL", [f"MAIL FROM:<{name}@example.com>\r\n".encode()]),
            ("RCPT", [b"RCPT TO:<bart@example.org>\r\n"]),
            ("DATA", [b"DATA\r\n"]),
            ("end of data", [wire[:third], wire[third : 2 * third], wire[2 * third :]]),
        ]
        for step, parts in steps:
            try:
                for part in parts:
                    await client.send(part)
                    if step == "end of data":
                        await trio.sleep(pause)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server closed; read what it said first
            try:
                reply = await client.reply(timeout=1000)
            except EOFError:
                outcome[name] = (step, "EOF")
                return
            expected = {"DATA": 354}.get(step, 250)
            if reply.code != expected:
                outcome[name] = (step, reply.codes)
                return
        acked.append(msg_id)
    outcome[name] = ("done", None)


async def test_graceful_shutdown_under_load_loses_nothing_that_got_250(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Eight clients mid-stream when shutdown(grace_period=60) is called: every 250 was
    delivered exactly once, every message in flight finished, and each client got
    421 4.3.2 at its next command (COMPAT 5.1 "Server shutting down")."""
    handler = SlowRecorder(delay=0.2)
    acked: list[bytes] = []
    outcome: dict[str, Any] = {}
    async with running_server(handler, timeout=300) as srv:
        clients = [await srv.greeted() for _ in range(8)]
        async with trio.open_nursery() as nursery:
            for n, client in enumerate(clients):
                nursery.start_soon(stream_messages, client, f"c{n}", acked, outcome, 0.1 + n / 50)
            for _ in range(1000):
                if len(handler.ids) >= 25:
                    break
                await trio.sleep(0.05)
            nursery.start_soon(srv.server.shutdown, 60)
        with trio.fail_after(100):
            await srv.returned.wait()
        for client in clients:
            await client.expect_eof()
    assert len(handler.ids) == len(set(handler.ids)), "a message was delivered twice"
    assert sorted(acked) == sorted(handler.ids)
    assert len(acked) >= 25
    # Nobody was cut off mid-message: each got 421 4.3.2 at its next MAIL.
    assert outcome == {f"c{n}": ("MAIL", (421, "4.3.2")) for n in range(8)}, outcome


async def test_shutdown_with_a_short_grace_period_never_acknowledges_what_was_not_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """grace_period=0.15, shorter than a message: sessions are cut mid-DATA and mid-hook.
    Still every 250 was delivered exactly once, and the cut sessions got 421 4.3.2."""
    handler = SlowRecorder(delay=0.3)
    acked: list[bytes] = []
    outcome: dict[str, Any] = {}
    async with running_server(handler, timeout=300) as srv:
        clients = [await srv.greeted() for _ in range(8)]
        async with trio.open_nursery() as nursery:
            for n, client in enumerate(clients):
                nursery.start_soon(stream_messages, client, f"c{n}", acked, outcome, 0.1 + n / 50)
            for _ in range(1000):
                if len(handler.ids) >= 10:
                    break
                await trio.sleep(0.05)
            nursery.start_soon(srv.server.shutdown, 0.15)
        with trio.fail_after(100):
            await srv.returned.wait()
    assert len(handler.ids) == len(set(handler.ids)), "a message was delivered twice"
    assert set(acked) <= set(handler.ids)
    # Every session ended with 421 4.3.2, whether idle (at MAIL) or cut short mid-message.
    assert all(how[1] == (421, "4.3.2") for how in outcome.values()), outcome


# ============================================================================ logs


SESSION_ENDED_FIELDS = ("session_id", "peer", "tls", "auth_user", "messages", "bytes", "outcome")


async def test_one_session_ended_record_per_session_with_its_fields(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtptrio")
    bodies = [BODY, b"Subject: two\r\n\r\n" + b"x" * 900 + b"\r\n"]
    async with running_server(Recorder(), timeout=60) as srv:
        polite = await srv.ehloed()
        for body in bodies:
            assert (await polite.transaction(body=body)).code == 250
        await polite.quit()
        rude = await srv.ehloed()
        await rude.close()
        sleepy = await srv.ehloed()
        assert (await sleepy.reply(timeout=100)).codes == (421, "4.4.2")
        await trio.testing.wait_all_tasks_blocked()
    ended = records(caplog, "session ended")
    started = records(caplog, "session started")
    assert len(ended) == len(started) == 3
    for record in ended:
        for name in SESSION_ENDED_FIELDS:
            assert hasattr(record, name), (name, record.__dict__)
        assert record.levelno == logging.INFO
    assert len({r.__dict__["session_id"] for r in ended}) == 3
    by_outcome = {r.__dict__["outcome"]: r for r in ended}
    assert set(by_outcome) == {"closed", "client closed", "timeout"}, list(by_outcome)
    closed = by_outcome["closed"]
    assert closed.__dict__["messages"] == 2
    assert closed.__dict__["bytes"] == sum(len(b) for b in bodies)
    assert closed.__dict__["tls"] is False
    assert closed.__dict__["auth_user"] is None
    assert by_outcome["timeout"].__dict__["messages"] == 0


async def test_session_ended_record_carries_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtptrio")
    async with trio.open_nursery() as nursery:
        client = await open_connection_io(nursery, Recorder(), peer=("203.0.113.5", 4321))
        await client.greeting()
        await client.quit()
    [ended] = records(caplog, "session ended")
    assert ended.__dict__["peer"] == ("203.0.113.5", 4321)


async def test_session_ended_record_shows_tls_and_auth_user_and_no_secret_is_logged(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    """STYLE.md "Bodies and AUTH secrets are never logged": search every record, at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="smtptrio")
    server_ctx, client_ctx = tls
    password = "s3cr3t-Pa55w0rd"
    secrets = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0anne\0{password}".encode()).decode(),
        base64.b64encode(b"\0anne\0wrong-" + password.encode()).decode(),
    ]

    async def check(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> bool:
        return bool(auth.password == password.encode())

    async with running_server(Recorder(), tls_context=server_ctx, authenticator=check) as srv:
        plain = await srv.ehloed()
        assert (await plain.cmd("STARTTLS")).codes == (220, "2.0.0")
        tls_stream = trio.SSLStream(plain.stream, client_ctx, server_hostname="mx.example")
        client = SMTPClient(tls_stream)
        await client.ehlo()
        # A failed PLAIN, a failed LOGIN exchange, then a good PLAIN.
        assert (await client.cmd(f"AUTH PLAIN {secrets[3]}")).code == 535
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(base64.b64encode(b"anne").decode())).code == 334
        assert (await client.cmd(base64.b64encode(b"x" + password.encode()).decode())).code == 535
        assert (await client.cmd(f"AUTH PLAIN {secrets[2]}")).codes == (235, "2.7.0")
        assert (
            await client.transaction(body=b"Subject: " + password.encode() + b"\r\n\r\n")
        ).code == 250
        await client.quit()
    [ended] = [r for r in records(caplog, "session ended") if r.__dict__.get("tls")]
    assert ended.__dict__["auth_user"] == "anne"
    assert ended.__dict__["messages"] == 1
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__) + (caplog.text or "")
        for secret in secrets:
            assert secret not in text, (secret, record.getMessage())
        assert "wrong-" not in text


async def _hit_unknown_limit(srv: Any) -> None:
    client = await srv.ehloed()
    for n in range(5):
        await client.line(f"XBAD{n}")
        await client.reply()
    await client.expect_eof()


async def _hit_error_limit(srv: Any) -> None:
    client = await srv.ehloed()
    for _ in range(50):
        await client.line("HELO")
        await client.reply(timeout=100)
    await client.expect_eof()


async def _hit_auth_limit(srv: Any) -> None:
    client = await srv.ehloed()
    blob = base64.b64encode(b"\0anne\0wrong").decode()
    for _ in range(4):
        await client.line(f"AUTH PLAIN {blob}")
        await client.reply()
    await client.expect_eof()


async def _hit_call_limit(srv: Any) -> None:
    client = await srv.ehloed()
    for _ in range(4):
        await client.line("NOOP")
        await client.reply()
    await client.expect_eof()


async def _hit_idle_timeout(srv: Any) -> None:
    client = await srv.ehloed()
    await client.reply(timeout=400)
    await client.expect_eof()


async def _hit_data_rate(srv: Any) -> None:
    client = await srv.ehloed()
    await open_transaction(client)
    for _ in range(200):
        await trio.sleep(10)
        try:
            await client.send(b"a\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
    await client.read_to_eof(timeout=10)


async def _hit_connection_limit(srv: Any) -> None:
    first = await srv.greeted()
    second = await srv.connect()
    assert (await second.reply()).codes == (421, "4.7.0")
    await first.quit()


async def _never(*args: Any) -> bool:
    return False


REFUSED_421 = ("command refused", 421)
LIMITS: dict[str, tuple[Any, dict[str, Any], tuple[str, int | None]]] = {
    "unrecognized_command_limit": (
        _hit_unknown_limit,
        {"unrecognized_command_limit": 5},
        REFUSED_421,
    ),
    "error_limit": (_hit_error_limit, {"error_limit": 50}, REFUSED_421),
    "auth_failure_limit": (
        _hit_auth_limit,
        {"auth_failure_limit": 3, "authenticator": _never, "auth_require_tls": False},
        REFUSED_421,
    ),
    "command_call_limit": (_hit_call_limit, {"command_call_limit": {"NOOP": 3}}, REFUSED_421),
    "timeout": (_hit_idle_timeout, {"timeout": 300}, ("session timed out", None)),
    "min_data_rate": (
        _hit_data_rate,
        {"timeout": 300, "min_data_rate": 500},
        ("session timed out", None),
    ),
    "max_connections": (
        _hit_connection_limit,
        {"max_connections": 1},
        ("connection refused by limit", None),
    ),
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
async def test_hitting_a_limit_logs_a_warning(
    limit: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """STYLE.md: WARNING is client misbehaviour. Every limit that ends a session says so,
    with the session id (or the peer, for a connection refused before any session)."""
    caplog.set_level(logging.INFO, logger="smtptrio")
    drive, options, (message, code) = LIMITS[limit]
    async with running_server(Recorder(), **options) as srv:
        await drive(srv)
        await trio.testing.wait_all_tasks_blocked()
    found = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.getMessage() == message
        and (code is None or r.__dict__.get("code") == code)
    ]
    assert len(found) == 1, [(r.levelname, r.getMessage()) for r in caplog.records]
    assert "session_id" in found[0].__dict__ or "peer" in found[0].__dict__
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
