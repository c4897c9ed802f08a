"""One session end to end over memory streams: greeting, dialogue, pipelining, timeouts, hooks.

Every test runs the real ``serve_listeners`` on an in-memory listener (``helpers.running_server``)
unless it needs a peer address, in which case it drives ``ConnectionIO`` as serve.py does.
Reply checks are on codes and enhanced codes (COMPAT.md section 0.3), never on texts.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from helpers import (
    Recorder,
    dot_stuff,
    open_connection_io,
    parse_replies,
    reply_while_trickling,
    running_server,
)

import smtptrio
from smtptrio import MISSING, SMTP, Envelope, Session, syntax
from smtptrio.handlers import Sink

BODY = b"Subject: hi\r\n\r\nbody\r\n"


# ---------------------------------------------------------------------------- greeting, dialogue


async def test_greeting_is_220_with_hostname_and_ident() -> None:
    async with running_server(Recorder(), hostname="mx.example", ident="TestMTA 9.9") as srv:
        client = await srv.connect()
        greeting = await client.reply()
    assert greeting.codes == (220, None)
    assert greeting.lines == ("mx.example TestMTA 9.9",)


async def test_greeting_default_ident_is_smtptrio_and_its_version() -> None:
    async with running_server(Recorder()) as srv:
        greeting = await (await srv.connect()).reply()
    assert greeting.codes == (220, None)
    assert greeting.lines == (f"mx.example smtptrio {smtptrio.__version__}",)


async def test_full_dialogue_delivers_the_message_and_quit_closes() -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert ehlo.codes == (250, None)
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (250, "2.1.5")
        assert (await client.cmd("DATA")).codes == (354, None)
        await client.send(dot_stuff(BODY))
        assert (await client.reply()).codes == (250, "2.0.0")
        assert (await client.cmd("QUIT")).codes == (221, "2.0.0")
        await client.expect_eof()
    [envelope] = handler.envelopes
    assert envelope.mail_from == "anne@example.com"
    assert envelope.rcpt_tos == ["bart@example.org"]
    assert envelope.content == BODY


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {},
            [
                "mx.example",
                "SIZE 33554432",
                "8BITMIME",
                "PIPELINING",
                "ENHANCEDSTATUSCODES",
                "HELP",
            ],
        ),
        (
            {"enable_SMTPUTF8": True, "data_size_limit": None},
            ["mx.example", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "HELP"],
        ),
        (
            {"decode_data": True, "enhanced_status_codes": False, "data_size_limit": 1000},
            ["mx.example", "SIZE 1000", "PIPELINING", "HELP"],
        ),
    ],
)
async def test_ehlo_lines_are_those_of_compat_5_2_in_order(
    options: dict[str, Any], expected: list[str]
) -> None:
    async with running_server(Recorder(), **options) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
    assert ehlo.codes == (250, None)
    assert list(ehlo.lines) == expected


async def test_helo_reply_is_bare_250_with_hostname() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        helo = await client.cmd("HELO client.example")
    assert helo.codes == (250, None)
    assert helo.lines == ("mx.example",)


# ---------------------------------------------------------------------------- pipelining


async def test_pipelined_burst_is_answered_in_order_with_one_write() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.ehloed()
        assert client.server_stream is not None
        writes_before = len(client.server_stream.writes)
        await client.send(
            b"MAIL FROM:<anne@example.com>\r\n"
            b"RCPT TO:<bart@example.org>\r\n"
            b"RCPT TO:<cate@example.org>\r\n"
            b"NOOP\r\n"
            b"RSET\r\n"
        )
        await trio.testing.wait_all_tasks_blocked()
        new_writes = client.server_stream.writes[writes_before:]
        assert len(new_writes) == 1, new_writes
        burst = parse_replies(new_writes[0])
        assert [r.codes for r in burst] == [
            (250, "2.1.0"),
            (250, "2.1.5"),
            (250, "2.1.5"),
            (250, "2.0.0"),
            (250, "2.0.0"),
        ]
        # The client reads the same five replies.
        assert [r.code for r in await client.replies(5)] == [250] * 5


class SlowAsyncHooks:
    """Async hooks that yield to the scheduler: pipelined replies must still keep order."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await trio.sleep(0.01)
        envelope.mail_from = address
        return "250 2.1.0 mail"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await trio.sleep(0.01 if address.startswith("slow") else 0)
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 rcpt"


async def test_pipelined_replies_keep_command_order_with_awaiting_hooks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(SlowAsyncHooks()) as srv:
        client = await srv.ehloed()
        await client.send(
            b"MAIL FROM:<anne@example.com>\r\n"
            b"RCPT TO:<slow@example.org>\r\n"
            b"RCPT TO:<nobody@example.org>\r\n"
            b"RCPT TO:<fast@example.org>\r\n"
            b"DATA\r\n"
        )
        got = await client.replies(5)
        assert [r.codes for r in got] == [
            (250, "2.1.0"),
            (250, "2.1.5"),
            (550, "5.1.1"),
            (250, "2.1.5"),
            (354, None),
        ]


async def test_pipelined_mail_rcpt_data_and_body_in_one_write_is_delivered() -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        await client.send(
            b"MAIL FROM:<anne@example.com>\r\nRCPT TO:<bart@example.org>\r\nDATA\r\n"
            + dot_stuff(BODY)
            + b"QUIT\r\n"
        )
        got = await client.replies(5)
        assert [r.code for r in got] == [250, 250, 354, 250, 221]
        await client.expect_eof()
    assert handler.envelopes[0].content == BODY


# ---------------------------------------------------------------------------- timeouts


async def test_idle_client_gets_421_4_4_2_then_eof_after_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), timeout=300) as srv:
        client = await srv.connect()
        start = trio.current_time()
        await client.greeting()
        reply = await client.reply(timeout=400)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - start == pytest.approx(300, abs=0.5)
        await client.expect_eof()


async def test_each_command_restarts_the_idle_timer(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server(Recorder(), timeout=300) as srv:
        client = await srv.greeted()
        await trio.sleep(200)
        assert (await client.cmd("NOOP")).code == 250
        noop_at = trio.current_time()
        reply = await client.reply(timeout=400)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - noop_at == pytest.approx(300, abs=0.5)



async def test_trickled_partial_line_does_not_extend_the_idle_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), timeout=300) as srv:
        client = await srv.greeted()
        assert (await client.cmd("EHLO client.example")).code == 250
        last_line_at = trio.current_time()

        reply = await reply_while_trickling(client, [b"X"] * 100, 10, timeout=1000)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - last_line_at == pytest.approx(300, abs=0.5)


async def test_timeout_in_the_middle_of_data_gives_421_4_4_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with running_server(handler, timeout=300, min_data_rate=None) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"Subject: half a message\r\n")
        sent_at = trio.current_time()
        reply = await client.reply(timeout=400)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - sent_at == pytest.approx(300, abs=0.5)
        await client.expect_eof()
    assert handler.envelopes == []


async def test_trickled_partial_data_line_does_not_extend_the_idle_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with running_server(handler, timeout=300, min_data_rate=None) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        data_at = trio.current_time()

        reply = await reply_while_trickling(client, [b"a"] * 100, 10, timeout=1000)
        assert reply.codes == (421, "4.4.2")
        assert trio.current_time() - data_at == pytest.approx(300, abs=0.5)
    assert handler.envelopes == []


async def test_data_lines_each_within_the_timeout_keep_the_session_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """COMPAT D3: every complete DATA line restarts the idle timer (min_data_rate off)."""
    handler = Recorder()
    async with running_server(handler, timeout=300, min_data_rate=None) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        for n in range(10):  # 2000 s in all, 200 s between lines
            await trio.sleep(200)
            await client.send(b"line %d\r\n" % n)
        await client.send(b".\r\n")
        assert (await client.reply()).codes == (250, "2.0.0")
    assert handler.envelopes[0].content == b"".join(b"line %d\r\n" % n for n in range(10))


async def test_data_trickled_one_byte_every_5_s_is_closed_by_min_data_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with running_server(handler, timeout=300, min_data_rate=500) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        data_at = trio.current_time()

        octets = [bytes([byte]) for byte in b"ab\r\n"] * 1000  # complete lines, an octet at a time
        reply = await reply_while_trickling(client, octets, 5, timeout=2000)
        assert reply.codes == (421, "4.4.2")
        # Far below the 1000+ s the lines alone would have bought without the rate rule.
        assert trio.current_time() - data_at < 320
    assert handler.envelopes == []


class SlowNoop:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished_at: float | None = None

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        await trio.sleep(self.seconds)
        self.finished_at = trio.current_time()
        return "250 2.0.0 done"


async def test_hook_running_longer_than_timeout_does_not_trigger_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = SlowNoop(1000)
    async with running_server(handler, timeout=300, hook_timeout=None) as srv:
        client = await srv.greeted()
        reply = await client.cmd("NOOP", timeout=1100)
        assert reply.codes == (250, "2.0.0")
        # The timer restarts when the hook returns.
        idle = await client.reply(timeout=400)
        assert idle.codes == (421, "4.4.2")
        assert handler.finished_at is not None
        assert trio.current_time() - handler.finished_at == pytest.approx(300, abs=0.5)


async def test_hook_over_hook_timeout_gives_451_4_3_0_and_the_session_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = SlowNoop(10_000)
    async with running_server(handler, timeout=300, hook_timeout=10) as srv:
        client = await srv.greeted()
        sent_at = trio.current_time()
        reply = await client.cmd("NOOP", timeout=100)
        assert reply.codes == (451, "4.3.0")
        assert trio.current_time() - sent_at == pytest.approx(10, abs=0.5)
        assert (await client.cmd("RSET")).codes == (250, "2.0.0")
    assert handler.finished_at is None


class SlowNoopWithHandler(SlowNoop):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.errors: list[Exception] = []

    def handle_exception(self, error: Exception) -> str:
        self.errors.append(error)
        return "451 4.4.1 hook too slow"


async def test_hook_timeout_reaches_handle_exception_as_smtptrio_hook_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = SlowNoopWithHandler(10_000)
    async with running_server(handler, hook_timeout=10) as srv:
        client = await srv.greeted()
        assert (await client.cmd("NOOP", timeout=100)).codes == (451, "4.4.1")
    [error] = handler.errors
    assert isinstance(error, smtptrio.HookTimeout)
    assert isinstance(error, TimeoutError)


class ScopedNoop:
    """A hook that opens its own cancel scopes (and a nursery) before it first suspends."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        with trio.fail_after(50):
            with trio.move_on_after(1) as inner:
                await trio.sleep(5)  # cut short by its own scope
            self.steps.append(f"inner cancelled: {inner.cancelled_caught}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 2)
            await trio.sleep(1)
        self.steps.append("done")
        return "250 2.0.0 scoped"


async def test_hook_opening_its_own_scopes_before_suspending_keeps_them_nested(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The hook's first step runs before the hook deadline is armed; its own scopes must
    # still nest inside the hook scope (trio raises on a crossed cancel scope stack).
    handler = ScopedNoop()
    async with running_server(handler, timeout=300, hook_timeout=10) as srv:
        client = await srv.greeted()
        started = trio.current_time()
        assert (await client.cmd("NOOP", timeout=100)).codes == (250, "2.0.0")
        assert trio.current_time() - started == pytest.approx(4, abs=0.5)
        assert (await client.cmd("NOOP", timeout=100)).codes == (250, "2.0.0")
    assert handler.steps == ["inner cancelled: True", "done"] * 2


class InstantHooks:
    """Hooks that never suspend: a coroutine that returns at once, a plain function, and
    an awaitable that is not a coroutine."""

    class _Ready:
        def __await__(self) -> Any:
            yield from ()
            return "250 2.0.0 from an awaitable"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        return "250 2.0.0 at once"

    def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 sync"

    def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> Any:
        return self._Ready()


async def test_hooks_that_never_suspend_answer_and_keep_the_idle_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(InstantHooks(), timeout=300, hook_timeout=10) as srv:
        client = await srv.greeted()
        assert (await client.cmd("NOOP")).lines[-1].endswith("at once")
        assert (await client.cmd("RSET")).lines[-1].endswith("sync")
        assert (await client.cmd("VRFY <a@example.com>")).lines[-1].endswith("awaitable")
        sent_at = trio.current_time()
        assert (await client.reply(timeout=400)).codes == (421, "4.4.2")
        assert trio.current_time() - sent_at == pytest.approx(300, abs=3.5)


class FailsAfterWaiting:
    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        await trio.sleep(1)
        raise ValueError("backend said no")


async def test_hook_failing_after_it_suspended_gets_451_and_the_session_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(FailsAfterWaiting(), hook_timeout=10) as srv:
        client = await srv.greeted()
        assert (await client.cmd("NOOP", timeout=100)).codes == (451, "4.3.0")
        assert (await client.cmd("RSET")).codes == (250, "2.0.0")


class BlockingHook:
    """Hooks that take time without ever suspending (blocking work), simulated on the
    autojump clock; NOOP's hook is a plain function, RSET's an async one."""

    def __init__(self, clock: trio.testing.MockClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        self.clock.jump(self.seconds)
        return "250 2.0.0 blocked"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.clock.jump(self.seconds)
        return "250 2.0.0 blocked"


@pytest.mark.parametrize("verb", ["NOOP", "RSET"])
async def test_hook_blocking_longer_than_the_idle_timeout_does_not_end_the_session(
    autojump_clock: trio.testing.MockClock, verb: str
) -> None:
    # The idle timer restarts when a hook returns, also for one that never suspended.
    async with running_server(BlockingHook(autojump_clock, 1.5), timeout=1) as srv:
        client = await srv.greeted()
        assert (await client.cmd(verb)).codes == (250, "2.0.0")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        assert (await client.cmd("QUIT")).code == 221


class BlocksThenAwaits:
    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.finished = False

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        self.clock.jump(1.0)  # blocking work past hook_timeout...
        await trio.sleep(0.1)  # ...so the first await is where it is cancelled
        self.finished = True
        return "250 2.0.0 late"


async def test_hook_timeout_counts_from_the_call_not_from_the_first_await(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = BlocksThenAwaits(autojump_clock)
    async with running_server(handler, hook_timeout=0.5) as srv:
        client = await srv.greeted()
        assert (await client.cmd("NOOP", timeout=100)).codes == (451, "4.3.0")
        assert (await client.cmd("RSET")).codes == (250, "2.0.0")
    assert not handler.finished


class MailCounter(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.mail_calls = 0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> Any:
        self.mail_calls += 1
        return MISSING


async def test_command_racing_a_shutdown_gets_421_and_starts_no_transaction() -> None:
    # shutdown() cancels sessions that wait idle for a command. A command that has already
    # arrived when that happens must not start a transaction the pending cancellation
    # would cut short (on TCP its 250 would go out, then 421 at the next command): it gets
    # 421 4.3.2 and never reaches the handler.
    handler = MailCounter()
    async with running_server(handler) as srv:
        client = await srv.connect()
        stream = srv.listener.server_streams[-1]
        inner_receive = stream.receive_some
        armed = False

        async def receive_racing_shutdown(max_bytes: int | None = None) -> Any:
            data = await inner_receive(max_bytes)
            if armed:
                for io in list(srv.server._connections):
                    io.request_shutdown()  # what shutdown() does first, for every session
            return data

        stream.receive_some = receive_racing_shutdown  # type: ignore[method-assign]
        await client.greeting()
        await client.ehlo("client.example")
        armed = True  # the server now waits, idle, in receive_racing_shutdown
        await client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        assert (await client.reply()).codes == (421, "4.3.2")
        await client.expect_eof()
    assert handler.mail_calls == 0


# ---------------------------------------------------------------------------- disconnects, garbage


async def test_client_disconnect_mid_data_never_calls_the_handler_and_server_serves_on() -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        first = await srv.ehloed()
        assert (await first.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await first.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await first.cmd("DATA")).code == 354
        await first.send(b"Subject: cut off\r\n\r\nhalf a bo")
        await first.close()

        second = await srv.ehloed()
        assert (await second.transaction(body=BODY)).codes == (250, "2.0.0")
        await second.quit()
    assert [e.content for e in handler.envelopes] == [BODY]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe\x80 garbage\r\n",
        b"\r\n",
        b"   leading white space\r\n",
        b"\xc3\xa9CLAIR\r\n",
        b"NOOP\rNOOP\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 tls hello\r\n",
    ],
)
async def test_garbage_line_gets_500_5_5_2_and_the_session_goes_on(garbage: bytes) -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        await client.send(garbage)
        assert (await client.reply()).codes == (500, "5.5.2")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


async def test_huge_line_without_crlf_gets_one_500_and_the_session_goes_on() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        await client.send(b"A" * 300_000 + b"\r\nNOOP\r\n")
        assert (await client.reply()).codes == (500, "5.5.2")
        assert (await client.reply()).codes == (250, "2.0.0")


async def test_unknown_verb_flood_ends_with_421_4_7_0_and_close() -> None:
    async with running_server(Recorder(), unrecognized_command_limit=5) as srv:
        client = await srv.greeted()
        await client.send(b"XFOO\r\n" * 4 + b"XBAR\r\nNOOP\r\n")
        got = await client.replies(5)
        assert [r.codes for r in got] == [(500, "5.5.2")] * 4 + [(421, "4.7.0")]
        await client.expect_eof()


# ---------------------------------------------------------------------------- hook replies, errors


class Closing421:
    def __init__(self) -> None:
        self.calls = 0

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str | None
    ) -> str:
        self.calls += 1
        return "421 4.3.0 going away"


async def test_421_returned_by_a_hook_closes_the_connection() -> None:
    handler = Closing421()
    async with running_server(handler) as srv:
        client = await srv.greeted()
        await client.send(b"NOOP\r\nNOOP\r\nNOOP\r\n")
        assert (await client.reply()).codes == (421, "4.3.0")
        await client.expect_eof()
    assert handler.calls == 1


class Failing:
    """handle_MAIL raises; optional handle_exception of the chosen form."""

    def __init__(self) -> None:
        self.session_ids: list[str] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.session_ids.append(session.id)
        raise RuntimeError("secret-detail-never-sent")


async def test_hook_exception_gives_451_4_3_0_without_the_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Failing()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        reply = await client.cmd("MAIL FROM:<anne@example.com>")
        assert reply.codes == (451, "4.3.0")
        assert "secret" not in reply.raw.decode()
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)


class SyncHandleException(Failing):
    def __init__(self, reply: Any) -> None:
        super().__init__()
        self.reply = reply
        self.errors: list[Exception] = []

    def handle_exception(self, error: Exception) -> Any:
        self.errors.append(error)
        return self.reply


class AsyncHandleException(SyncHandleException):
    async def handle_exception(self, error: Exception) -> Any:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        self.errors.append(error)
        return self.reply


@pytest.mark.parametrize("cls", [SyncHandleException, AsyncHandleException])
@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("554 5.3.0 custom", (554, "5.3.0")),
        ("452 try again later", (452, "4.0.0")),
        (None, (451, "4.3.0")),
        (MISSING, (451, "4.3.0")),
        (42, (451, "4.3.0")),
        ("not a reply", (451, "4.3.0")),
    ],
)
async def test_handle_exception_reply_is_sent_and_a_useless_one_gives_451(
    cls: type[SyncHandleException], returned: Any, expected: tuple[int, str]
) -> None:
    handler = cls(returned)
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == expected
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    [error] = handler.errors
    assert isinstance(error, RuntimeError)


class RaisingHandleException(Failing):
    def handle_exception(self, error: Exception) -> str:
        raise ValueError("handle_exception broke too")


async def test_handle_exception_that_raises_gives_451() -> None:
    async with running_server(RaisingHandleException()) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (451, "4.3.0")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


class GarbageMail:
    def __init__(self, returned: Any) -> None:
        self.returned = returned
        self.session_ids: list[str] = []

    def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        self.session_ids.append(session.id)
        return self.returned


@pytest.mark.parametrize(
    "returned",
    [
        "hello",
        250,
        None,
        b"\xff\xfe",
        "250-ok\r\n550 mixed codes",
        "600 out of range",
        "250 a\rb",
        ["250 ok"],
    ],
)
async def test_hook_returning_garbage_gives_451_and_is_logged_once_with_the_session_id(
    returned: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler = GarbageMail(returned)
    with caplog.at_level(logging.INFO, logger="smtptrio"):
        async with running_server(handler) as srv:
            client = await srv.ehloed()
            reply = await client.cmd("MAIL FROM:<anne@example.com>")
            assert reply.codes == (451, "4.3.0")
            assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    [sid] = handler.session_ids
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and getattr(r, "session_id", None) == sid
    ]
    assert len(errors) == 1, [r.getMessage() for r in errors]


async def test_invalid_hook_reply_is_logged_with_the_hook_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """COMPAT 2.1: a value that is not a valid reply is "logged with the hook name"."""
    handler = GarbageMail("not a reply")
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (451, "4.3.0")
    [sid] = handler.session_ids
    [record] = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and getattr(r, "session_id", None) == sid
    ]
    fields = [record.getMessage(), *map(str, vars(record).values())]
    assert any("handle_MAIL" in text for text in fields), fields


async def test_non_ascii_hook_reply_without_smtputf8_gives_451() -> None:
    async with running_server(GarbageMail("250 2.1.0 d\u00e9j\u00e0 vu")) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (451, "4.3.0")


async def test_non_ascii_hook_reply_with_smtputf8_is_sent_as_utf8() -> None:
    async with running_server(
        GarbageMail("250 2.1.0 d\u00e9j\u00e0 vu"), enable_SMTPUTF8=True
    ) as srv:
        client = await srv.ehloed()
        reply = await client.cmd("MAIL FROM:<anne@example.com>")
    assert reply.codes == (250, "2.1.0")
    assert reply.lines == ("d\u00e9j\u00e0 vu",)


class GatedData:
    """handle_DATA waits until the test lets it return."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()
        self.returned = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.entered.set()
        await self.release.wait()
        self.returned = True
        return "250 2.0.0 queued"


async def test_message_250_is_sent_only_after_handle_data_returned() -> None:
    handler = GatedData()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        assert client.server_stream is not None
        writes_before = len(client.server_stream.writes)
        await client.send(dot_stuff(BODY))
        await handler.entered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert client.server_stream.writes[writes_before:] == []
        handler.release.set()
        assert (await client.reply()).codes == (250, "2.0.0")
    assert handler.returned


class RaisingData:
    def __init__(self) -> None:
        self.calls = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls += 1
        raise OSError("disk full")


async def test_handle_data_that_raises_gives_451_never_250_and_ends_the_transaction() -> None:
    handler = RaisingData()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        reply = await client.transaction()
        assert reply.codes == (451, "4.3.0")
        # COMPAT D30: the transaction is over after any end-of-data reply.
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1")
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
    assert handler.calls == 1


async def test_handle_data_returning_none_gives_451() -> None:
    class NoneData:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> None:
            return None

    async with running_server(NoneData()) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).codes == (451, "4.3.0")


async def test_decode_data_true_gives_str_content_and_bytes_original_content() -> None:
    handler = Recorder()
    async with running_server(handler, decode_data=True) as srv:
        client = await srv.ehloed()
        assert (await client.transaction(body=BODY)).codes == (250, "2.0.0")
    [envelope] = handler.envelopes
    assert envelope.content == BODY.decode("ascii")
    assert isinstance(envelope.content, str)
    assert envelope.original_content == BODY


async def test_decode_data_with_smtputf8_decodes_utf8_content() -> None:
    handler = Recorder()
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()
    async with running_server(handler, decode_data=True, enable_SMTPUTF8=True) as srv:
        client = await srv.ehloed()
        assert (await client.transaction(body=body)).codes == (250, "2.0.0")
    assert handler.envelopes[0].content == body.decode("utf-8")
    assert handler.envelopes[0].original_content == body


async def test_decode_data_without_smtputf8_refuses_8bit_content_with_554_5_6_0() -> None:
    handler = Recorder()
    async with running_server(handler, decode_data=True) as srv:
        client = await srv.ehloed()
        assert (await client.transaction(body=b"caf\xc3\xa9\r\n")).codes == (554, "5.6.0")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1")
    assert handler.envelopes == []


class SyncLegacy:
    def __init__(self, returned: Any = None) -> None:
        self.returned = returned
        self.calls: list[tuple[Any, ...]] = []

    def process_message(self, peer: Any, mail_from: str, rcpt_tos: list[str], data: Any) -> Any:
        self.calls.append((peer, mail_from, list(rcpt_tos), data))
        return self.returned


class AsyncLegacy(SyncLegacy):
    async def process_message(  # type: ignore[override]
        self, peer: Any, mail_from: str, rcpt_tos: list[str], data: Any
    ) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls.append((peer, mail_from, list(rcpt_tos), data))
        return self.returned


@pytest.mark.parametrize("cls", [SyncLegacy, AsyncLegacy])
@pytest.mark.parametrize(
    ("returned", "expected"),
    [(None, (250, "2.0.0")), ("550 rejected", (550, "5.0.0")), ("250 2.6.0 taken", (250, "2.6.0"))],
)
async def test_legacy_process_message_is_called_and_none_means_250(
    cls: type[SyncLegacy], returned: Any, expected: tuple[int, str]
) -> None:
    handler = cls(returned)
    with pytest.deprecated_call():
        async with running_server(handler) as srv:
            client = await srv.ehloed()
            reply = await client.transaction(
                "anne@example.com", ["bart@example.org", "cate@example.org"], BODY
            )
            assert reply.codes == expected
    [(peer, mail_from, rcpt_tos, data)] = handler.calls
    assert peer is None  # memory streams have no peer address
    assert (mail_from, rcpt_tos, data) == (
        "anne@example.com",
        ["bart@example.org", "cate@example.org"],
        BODY,
    )


class LegacyWithData(SyncLegacy):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.6.0 from handle_DATA"


async def test_process_message_is_ignored_when_handle_data_exists() -> None:
    handler = LegacyWithData()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).codes == (250, "2.6.0")
    assert handler.calls == []


# ------------------------------------------------------------------------ every hook, both forms


def _make_hooks(is_async: bool, calls: list[tuple[str, tuple[Any, ...]]], missing: bool) -> object:
    """A handler whose every command hook records its args and answers (or returns MISSING)."""

    replies = {
        "HELO": "250 hooked.example",
        "NOOP": "250 2.6.0 noop hooked",
        "VRFY": "250 2.1.5 vrfy hooked",
        "MAIL": "250 2.6.0 mail hooked",
        "RCPT": "250 2.6.0 rcpt hooked",
        "DATA": "250 2.6.0 data hooked",
        "RSET": "250 2.6.0 rset hooked",
        "QUIT": "221 2.6.0 quit hooked",
    }

    def work(verb: str, server: SMTP, session: Session, envelope: Envelope, *args: Any) -> Any:
        calls.append((verb, tuple(list(a) if isinstance(a, list) else a for a in args)))
        if missing:
            if verb == "DATA":
                calls.append(
                    (
                        "DATA-content",
                        (envelope.content, envelope.mail_from, list(envelope.rcpt_tos)),
                    )
                )
            return MISSING
        if verb in ("HELO", "EHLO"):
            session.host_name = args[0]
        if verb == "MAIL":
            envelope.mail_from = args[0]
            envelope.mail_options.extend(args[1])
        if verb == "RCPT":
            envelope.rcpt_tos.append(args[0])
        if verb == "EHLO":
            return args[1]
        return replies[verb]

    namespace: dict[str, Any] = {}
    for verb, extra in [
        ("HELO", ["hostname"]),
        ("EHLO", ["hostname", "responses"]),
        ("NOOP", ["arg"]),
        ("VRFY", ["address"]),
        ("MAIL", ["address", "mail_options"]),
        ("RCPT", ["address", "rcpt_options"]),
        ("DATA", []),
        ("RSET", []),
        ("QUIT", []),
    ]:
        params = ", ".join(["self", "server", "session", "envelope", *extra])
        args = ", ".join(["server", "session", "envelope", *extra])
        prefix = "async " if is_async else ""
        await_line = "    await trio.lowlevel.checkpoint()\n" if is_async else ""
        src = (
            f"{prefix}def handle_{verb}({params}):\n{await_line}    return work({verb!r}, {args})\n"
        )
        exec(src, {"work": work, "trio": trio}, namespace)
    return type("AllHooks", (), namespace)()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("greeting_verb", ["HELO", "EHLO"])
async def test_every_command_hook_is_called_with_its_arguments_and_its_reply_sent(
    is_async: bool, greeting_verb: str
) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []
    handler = _make_hooks(is_async, calls, missing=False)
    async with running_server(handler) as srv:
        client = await srv.greeted()
        greet = await client.cmd(f"{greeting_verb} client.example")
        assert greet.code == 250
        assert (await client.cmd("NOOP hello")).codes == (250, "2.6.0")
        assert (await client.cmd("VRFY <someone@example.org>")).codes == (250, "2.1.5")
        params = " BODY=8BITMIME" if greeting_verb == "EHLO" else ""
        assert (await client.cmd(f"MAIL FROM:<anne@example.com>{params}")).codes == (250, "2.6.0")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (250, "2.6.0")
        assert (await client.cmd("DATA")).codes == (354, None)
        await client.send(dot_stuff(BODY))
        assert (await client.reply()).codes == (250, "2.6.0")
        assert (await client.cmd("RSET")).codes == (250, "2.6.0")
        assert (await client.cmd("QUIT")).codes == (221, "2.6.0")
        await client.expect_eof()
    verbs = [verb for verb, _ in calls]
    assert verbs == [greeting_verb, "NOOP", "VRFY", "MAIL", "RCPT", "DATA", "RSET", "QUIT"]
    by_verb = dict(calls)
    assert by_verb[greeting_verb][0] == "client.example"
    assert by_verb["NOOP"] == ("hello",)
    assert by_verb["VRFY"] == ("someone@example.org",)
    assert by_verb["MAIL"] == (
        ("anne@example.com", ["BODY=8BITMIME"]) if params else ("anne@example.com", [])
    )
    assert by_verb["RCPT"] == ("bart@example.org", [])
    assert by_verb["DATA"] == ()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_missing_from_every_hook_gives_the_default_action_and_reply(is_async: bool) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []
    handler = _make_hooks(is_async, calls, missing=True)
    async with running_server(handler) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert ehlo.codes == (250, None)
        assert ehlo.lines[0] == "mx.example" and "PIPELINING" in ehlo.lines
        assert (await client.cmd("HELO client.example")).codes == (250, None)
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        assert (await client.cmd("VRFY <someone@example.org>")).codes == (252, "2.0.0")
        # MISSING from MAIL/RCPT performs the default state change: the transaction proceeds.
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (250, "2.1.5")
        assert (await client.cmd("DATA")).codes == (354, None)
        await client.send(dot_stuff(BODY))
        assert (await client.reply()).codes == (250, "2.0.0")
        assert (await client.cmd("RSET")).codes == (250, "2.0.0")
        assert (await client.cmd("QUIT")).codes == (221, "2.0.0")
        await client.expect_eof()
    assert ("DATA-content", (BODY, "anne@example.com", ["bart@example.org"])) in calls


# ---------------------------------------------------------------------------- handle_EHLO forms


EXPECTED_EHLO_LIST = [
    "250-mx.example",
    "250-SIZE 33554432",
    "250-8BITMIME",
    "250-PIPELINING",
    "250-ENHANCEDSTATUSCODES",
    "250 HELP",
]


class EditingEhlo:
    def __init__(self) -> None:
        self.received: list[str] | None = None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.received = list(responses)
        session.host_name = hostname
        kept = [r for r in responses if "PIPELINING" not in r and "HELP" not in r]
        return [*kept, "250-XFOO bar", "250 HELP"]


async def test_five_argument_handle_ehlo_receives_the_lines_and_can_edit_them() -> None:
    handler = EditingEhlo()
    async with running_server(handler) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert ehlo.codes == (250, None)
        assert list(ehlo.lines) == [
            "mx.example",
            "SIZE 33554432",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "XFOO bar",
            "HELP",
        ]
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
    assert handler.received == EXPECTED_EHLO_LIST


class OldEhlo:
    def __init__(self, push: bool = False) -> None:
        self.push = push
        self.hostnames: list[str] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self.hostnames.append(hostname)
        session.host_name = hostname
        if self.push:
            await server.push("250-XPUSHED")
        return "250 XLAST"


async def test_four_argument_handle_ehlo_is_deprecated_and_gives_the_last_line() -> None:
    handler = OldEhlo()
    with pytest.deprecated_call():
        async with running_server(handler) as srv:
            client = await srv.greeted()
            ehlo = await client.cmd("EHLO client.example")
            assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    assert ehlo.codes == (250, None)
    assert list(ehlo.lines) == [
        "mx.example",
        "SIZE 33554432",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "XLAST",
    ]
    assert handler.hostnames == ["client.example"]


async def test_four_argument_handle_ehlo_pushing_lines_still_gives_one_ehlo_reply() -> None:
    """The documented aiosmtpd idiom: push ``250-X`` lines, then return the last line.

    COMPAT 2.2: for the 4-argument form "smtptrio sends its lines first (all 250-), the hook
    returns the last line", so pushed lines land between ours and the hook's last line.
    """
    handler = OldEhlo(push=True)
    with pytest.deprecated_call():
        async with running_server(handler) as srv:
            client = await srv.greeted()
            ehlo = await client.cmd("EHLO client.example")
            noop = await client.cmd("NOOP")
    assert ehlo.codes == (250, None)
    assert ehlo.lines[0] == "mx.example"
    assert ehlo.lines[-2:] == ("XPUSHED", "XLAST")
    assert noop.codes == (250, "2.0.0")


class MissingEhlo:
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> Any:
        return MISSING


async def test_handle_ehlo_returning_missing_gives_the_default_lines_and_greets() -> None:
    async with running_server(MissingEhlo()) as srv:
        client = await srv.greeted()
        ehlo = await client.cmd("EHLO client.example")
        assert [
            f"250{'-' if i < len(ehlo.lines) - 1 else ' '}{line}"
            for i, line in enumerate(ehlo.lines)
        ] == EXPECTED_EHLO_LIST
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (250, "2.1.0")


class HeloWithoutHostName:
    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        return f"250 {server.hostname}"


async def test_helo_hook_that_does_not_set_host_name_leaves_mail_refused_with_503() -> None:
    async with running_server(HeloWithoutHostName()) as srv:
        client = await srv.greeted()
        assert (await client.cmd("HELO client.example")).code == 250
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).codes == (503, "5.5.1")


# ---------------------------------------------------------------------------- session, envelope


class Snapshots:
    """Records what hooks see on session and envelope."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.envelopes: list[Envelope] = []

    def _snap(self, where: str, session: Session, envelope: Envelope) -> None:
        self.seen.append(
            {
                "where": where,
                "peer": session.peer,
                "host_name": session.host_name,
                "extended_smtp": session.extended_smtp,
                "ssl": session.ssl,
                "authenticated": session.authenticated,
                "proxy_data": session.proxy_data,
                "envelope_id": id(envelope),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "mail_options": list(envelope.mail_options),
                "content": envelope.content,
            }
        )

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        self._snap("MAIL", session, envelope)
        return MISSING

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._snap("DATA", session, envelope)
        self.envelopes.append(envelope)
        return "250 2.0.0 OK"


async def test_session_attributes_seen_by_hooks_follow_compat_3_1() -> None:
    handler = Snapshots()
    async with trio.open_nursery() as nursery:
        client = await open_connection_io(nursery, handler, peer=("203.0.113.5", 4321))
        await client.greeting()
        await client.ehlo("client.example")
        assert (await client.transaction()).code == 250
        assert (await client.cmd("HELO other.example")).code == 250
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        await client.quit()
    first, data, after_helo = handler.seen
    assert first["peer"] == ("203.0.113.5", 4321)
    assert (first["host_name"], first["extended_smtp"]) == ("client.example", True)
    assert first["ssl"] is None and first["authenticated"] is None and first["proxy_data"] is None
    assert data["peer"] == ("203.0.113.5", 4321)
    assert (after_helo["host_name"], after_helo["extended_smtp"]) == ("other.example", False)


async def test_envelope_attributes_follow_compat_3_2() -> None:
    handler = Snapshots()
    async with running_server(handler, enable_SMTPUTF8=True) as srv:
        client = await srv.ehloed()
        assert (
            await client.cmd("MAIL FROM:<anne@example.com> size=100 body=8bitmime smtputf8")
        ).codes == (250, "2.1.0")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("RCPT TO:<Cate@Example.ORG>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(dot_stuff(BODY))
        assert (await client.reply()).code == 250
        assert (await client.transaction("", ["dave@example.org"])).code == 250
    first, second = handler.envelopes
    assert first.mail_from == "anne@example.com"
    assert first.mail_options == ["SIZE=100", "BODY=8BITMIME", "SMTPUTF8"]
    assert first.smtp_utf8 is True
    assert first.rcpt_tos == ["bart@example.org", "Cate@Example.ORG"]
    assert first.rcpt_options == []
    assert first.original_content == BODY and first.content == BODY
    assert isinstance(first.content, bytes)
    assert second.mail_from == "<>"
    assert second.smtp_utf8 is False and second.mail_options == []


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"one line\r\n", b"one line\r\n.\r\n"),
        (
            b".leading dot\r\n..two dots\r\n.\r\nend\r\n",
            b"..leading dot\r\n...two dots\r\n..\r\nend\r\n.\r\n",
        ),
        (b"no final newline", b"no final newline\r\n.\r\n"),
    ],
)
async def test_content_is_dot_unstuffed_with_crlf_kept_and_terminator_removed(
    body: bytes, wire: bytes
) -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(wire)
        assert (await client.reply()).codes == (250, "2.0.0")
    expected = body if body.endswith(b"\r\n") or body == b"" else body + b"\r\n"
    assert handler.envelopes[0].original_content == expected
    assert handler.envelopes[0].content == expected


@pytest.mark.parametrize("reset", ["RSET", "HELO client.example", "EHLO client.example", "DATA"])
async def test_envelope_is_new_after_rset_helo_ehlo_and_the_data_reply(reset: str) -> None:
    handler = Snapshots()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        if reset == "DATA":
            assert (await client.cmd("DATA")).code == 354
            await client.send(dot_stuff(BODY))
        else:
            await client.line(reset)
        assert (await client.reply()).code == 250
        assert (await client.cmd("MAIL FROM:<cate@example.com>")).code == 250
    before, *_rest, after = [s for s in handler.seen if s["where"] == "MAIL"]
    assert after["envelope_id"] != before["envelope_id"]
    assert (after["mail_from"], after["rcpt_tos"], after["mail_options"], after["content"]) == (
        None,
        [],
        [],
        None,
    )


class RefusingData(Snapshots):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await super().handle_DATA(server, session, envelope)
        return "554 5.7.1 no thanks"


async def test_envelope_is_new_after_a_refused_message_too() -> None:
    handler = RefusingData()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).codes == (554, "5.7.1")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1")
        assert (await client.cmd("MAIL FROM:<cate@example.com>")).code == 250
    last = handler.seen[-1]
    assert (last["where"], last["mail_from"], last["rcpt_tos"]) == ("MAIL", None, [])


# ---------------------------------------------------------------------------- SMTP subclasses


class XyzzySMTP(SMTP):
    @syntax("XYZZY <magic>")
    async def smtp_XYZZY(self, arg: str | None) -> None:
        self.session.xyzzy_arg = arg  # type: ignore[union-attr]  # handlers may add attributes
        await self.push("250 nothing happens")

    async def smtp_XPLAIN(self, arg: str | None) -> None:
        await self.push("250 2.6.0 plain")

    async def smtp_XHELLO(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        await self.push("250 hello")

    async def smtp_XSECRET(self, arg: str | None) -> None:
        if await self.check_auth_needed("XSECRET"):
            return
        await self.push("250 the secret")

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and "spam" in arg.lower():
            await self.push("550 5.7.1 no spam")
            return
        await super().smtp_MAIL(arg)


async def test_subclass_command_with_syntax_is_listed_in_help_and_works() -> None:
    async with running_server(Recorder(), smtp_class=XyzzySMTP) as srv:
        client = await srv.ehloed()
        help_all = await client.cmd("HELP")
        assert help_all.codes == (214, "2.0.0")
        listed = " ".join(help_all.lines).split()
        assert "XYZZY" in listed
        assert "XPLAIN" not in listed
        assert (await client.cmd("HELP XYZZY")).codes == (214, "2.0.0")
        assert (await client.cmd("HELP xyzzy")).codes == (214, "2.0.0")
        assert (await client.cmd("HELP XPLAIN")).codes == (504, "5.5.4")
        assert (await client.cmd("XYZZY plugh")).codes == (250, "2.0.0")
        assert (await client.cmd("xyzzy")).codes == (250, "2.0.0")
        assert (await client.cmd("XPLAIN")).codes == (250, "2.6.0")


async def test_subclass_overriding_smtp_mail_can_refuse_or_run_the_builtin_via_super() -> None:
    handler = Recorder()
    async with running_server(handler, smtp_class=XyzzySMTP) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<spam@example.com>")).codes == (550, "5.7.1")
        assert (await client.cmd("RCPT TO:<bart@example.org>")).codes == (503, "5.5.1")
        assert (await client.transaction("anne@example.com")).codes == (250, "2.0.0")
    assert handler.envelopes[0].mail_from == "anne@example.com"


async def test_subclass_check_helo_needed_refuses_before_helo_with_503() -> None:
    async with running_server(Recorder(), smtp_class=XyzzySMTP) as srv:
        client = await srv.greeted()
        assert (await client.cmd("XHELLO")).codes == (503, "5.5.1")
        await client.ehlo()
        assert (await client.cmd("XHELLO")).codes == (250, "2.0.0")


@pytest.mark.parametrize(
    ("auth_required", "expected"), [(True, (530, "5.7.0")), (False, (250, "2.0.0"))]
)
async def test_subclass_check_auth_needed_refuses_unauthenticated_with_530(
    auth_required: bool, expected: tuple[int, str]
) -> None:
    async with running_server(Recorder(), smtp_class=XyzzySMTP, auth_required=auth_required) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("XSECRET")).codes == expected


async def test_subclass_commands_are_per_class_not_global() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("XYZZY")).codes == (500, "5.5.2")


class CustomSession(Session):
    pass


class CustomEnvelope(Envelope):
    pass


class FactorySMTP(SMTP):
    command_size_limit = 100
    line_length_limit = 200

    def _create_session(self) -> Session:
        return CustomSession()

    def _create_envelope(self) -> Envelope:
        return CustomEnvelope()


class TypeRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.types: list[tuple[type, type]] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        self.types.append((type(session), type(envelope)))
        return MISSING


async def test_subclass_create_session_and_create_envelope_overrides_are_honoured() -> None:
    handler = TypeRecorder()
    async with running_server(handler, smtp_class=FactorySMTP) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).code == 250
        assert (await client.transaction()).code == 250
    assert handler.types == [(CustomSession, CustomEnvelope)] * 2
    assert all(type(e) is CustomEnvelope for e in handler.envelopes)


async def test_smtp_methods_patched_on_the_class_are_still_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without hooks, MAIL/RCPT/DATA are answered without a coroutine; a method patched on
    # SMTP after the class was made (a test's spy) must still be called.
    calls: list[str | None] = []
    original = SMTP.smtp_RCPT

    async def spy(self: SMTP, arg: str | None) -> None:
        calls.append(arg)
        await original(self, arg)

    monkeypatch.setattr(SMTP, "smtp_RCPT", spy)
    async with running_server(Sink()) as srv:
        client = await srv.ehloed()
        assert (await client.transaction(rcpt_tos=["bart@example.org"])).code == 250
    assert calls == ["TO:<bart@example.org>"]


async def test_subclass_create_envelope_is_honoured_without_hooks() -> None:
    seen: list[type] = []

    class Watching(FactorySMTP):
        async def smtp_NOOP(self, arg: str | None) -> None:
            seen.append(type(self.envelope))
            await super().smtp_NOOP(arg)

    async with running_server(Sink(), smtp_class=Watching) as srv:
        client = await srv.ehloed()
        assert (await client.transaction()).code == 250
        assert (await client.cmd("NOOP")).code == 250
    assert seen == [CustomEnvelope]


async def test_subclass_class_attribute_limits_apply_per_instance() -> None:
    async with running_server(Recorder(), smtp_class=FactorySMTP) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("NOOP " + "x" * 150)).codes == (500, "5.5.2")
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"y" * 300 + b"\r\n.\r\n")
        assert (await client.reply()).codes == (500, "5.5.2")
    # The base class keeps the defaults (512 / 1001).
    async with running_server(Recorder()) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("NOOP " + "x" * 150)).codes == (250, "2.0.0")
        assert (await client.transaction(body=b"y" * 300 + b"\r\n")).codes == (250, "2.0.0")


async def test_deprecated_rset_hook_on_a_subclass_warns_and_still_runs() -> None:
    calls: list[str] = []
    with pytest.deprecated_call():

        class RsetHookSMTP(SMTP):
            async def rset_hook(self) -> None:
                calls.append("rset_hook")

    async with running_server(Recorder(), smtp_class=RsetHookSMTP) as srv:
        client = await srv.greeted()
        assert (await client.cmd("RSET")).codes == (250, "2.0.0")
    assert calls == ["rset_hook"]


class BoomSMTP(SMTP):
    async def smtp_XBOOM(self, arg: str | None) -> None:
        raise ZeroDivisionError("boom")


async def test_exception_in_a_subclass_command_goes_to_handle_exception() -> None:
    handler = SyncHandleException("554 5.3.5 handled")
    async with running_server(handler, smtp_class=BoomSMTP) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("XBOOM")).codes == (554, "5.3.5")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
    [error] = handler.errors
    assert isinstance(error, ZeroDivisionError)


class StubbornQuit:
    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 not leaving"


class RaisingQuit:
    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raise RuntimeError("quit hook broke")


@pytest.mark.parametrize(
    ("handler", "expected"),
    [(StubbornQuit(), (250, "2.0.0")), (RaisingQuit(), (451, "4.3.0"))],
    ids=["other-reply", "raises"],
)
async def test_quit_closes_the_connection_whatever_the_hook_answers(
    handler: object, expected: tuple[int, str]
) -> None:
    async with running_server(handler) as srv:
        client = await srv.greeted()
        await client.send(b"QUIT\r\nNOOP\r\n")
        assert (await client.reply()).codes == expected
        await client.expect_eof()


class ClosingTransport:
    def __init__(self) -> None:
        self.closing: list[bool] = []

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: Any
    ) -> str:
        self.closing.append(server.transport.is_closing())
        server.transport.close()
        self.closing.append(server.transport.is_closing())
        return "250 2.0.0 last words"


async def test_transport_close_from_a_hook_closes_after_the_queued_reply() -> None:
    handler = ClosingTransport()
    async with running_server(handler) as srv:
        client = await srv.greeted()
        await client.send(b"NOOP\r\nNOOP\r\n")
        assert (await client.reply()).codes == (250, "2.0.0")
        await client.expect_eof()
    assert handler.closing == [False, True]


class ExtraInfo:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: Any
    ) -> str:
        transport = server.transport
        self.info = {
            "peername": transport.get_extra_info("peername"),
            "sslcontext": transport.get_extra_info("sslcontext"),
            "missing": transport.get_extra_info("no-such-key", "dflt"),
        }
        for name in ("loop",):
            with pytest.raises(AttributeError, match="asyncio_bridge"):
                getattr(server, name)
            with pytest.raises(AttributeError, match="asyncio_bridge"):
                getattr(session, name)
        return "250 2.0.0 OK"


async def test_transport_facade_answers_get_extra_info_and_loop_names_the_bridge() -> None:
    handler = ExtraInfo()
    async with trio.open_nursery() as nursery:
        client = await open_connection_io(nursery, handler, peer=("198.51.100.9", 2525))
        await client.greeting()
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        await client.quit()
    assert handler.info == {
        "peername": ("198.51.100.9", 2525),
        "sslcontext": None,
        "missing": "dflt",
    }


async def test_auth_exchange_idle_client_gets_421_4_4_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(
        Recorder(), auth_require_tls=False, timeout=300, hook_timeout=None
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).codes == (334, None)
        asked_at = trio.current_time()
        assert (await client.reply(timeout=400)).codes == (421, "4.4.2")
        assert trio.current_time() - asked_at == pytest.approx(300, abs=0.5)
        await client.expect_eof()


async def test_auth_response_lines_restart_the_idle_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """COMPAT D3: AUTH responses count as complete lines."""
    async with running_server(
        Recorder(), auth_require_tls=False, timeout=300, hook_timeout=None
    ) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("AUTH LOGIN")).codes == (334, None)
        await trio.sleep(250)
        assert (await client.cmd("YW5uZQ==")).codes == (334, None)  # "anne"
        await trio.sleep(250)
        # No authenticator configured: the credentials are refused, the session is still up.
        assert (await client.cmd("c2VjcmV0")).codes == (535, "5.7.8")
        assert (await client.cmd("NOOP")).codes == (250, "2.0.0")


class ConcurrentSessions:
    """Session A's DATA hook blocks; session B must be served meanwhile."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.servers: dict[str, set[int]] = {}
        self.delivered: list[str] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        self.servers.setdefault(address, set()).add(id(server))
        return MISSING

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.mail_from is not None
        self.servers[envelope.mail_from].add(id(server))
        if envelope.mail_from.startswith("slow"):
            await self.release.wait()
        self.delivered.append(envelope.mail_from)
        return "250 2.0.0 OK"


async def test_sessions_share_the_handler_but_each_has_its_own_server_object() -> None:
    handler = ConcurrentSessions()
    async with running_server(handler) as srv:
        slow = await srv.ehloed()
        fast = await srv.ehloed()
        await slow.send(b"MAIL FROM:<slow@example.com>\r\nRCPT TO:<bart@example.org>\r\nDATA\r\n")
        assert [r.code for r in await slow.replies(3)] == [250, 250, 354]
        await slow.send(dot_stuff(BODY))
        assert (await fast.transaction("fast@example.com")).codes == (250, "2.0.0")
        assert handler.delivered == ["fast@example.com"]
        handler.release.set()
        assert (await slow.reply()).codes == (250, "2.0.0")
    assert handler.delivered == ["fast@example.com", "slow@example.com"]
    slow_ids, fast_ids = handler.servers["slow@example.com"], handler.servers["fast@example.com"]
    assert len(slow_ids) == 1 and len(fast_ids) == 1 and slow_ids != fast_ids


async def test_half_closed_client_still_gets_replies_to_what_it_sent() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        await client.send(b"NOOP\r\nNOOP\r\n")
        await client.stream.send_eof()  # type: ignore[attr-defined]  # StapledStream
        assert [r.codes for r in await client.replies(2)] == [(250, "2.0.0")] * 2
        await client.expect_eof()


async def test_client_gone_while_a_hook_runs_is_no_error_and_the_server_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = GatedData()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        assert (await client.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(dot_stuff(BODY))
        await handler.entered.wait()
        await client.close()
        handler.release.set()
        await trio.testing.wait_all_tasks_blocked()
        other = await srv.ehloed()
        await other.quit()
    assert handler.returned
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_client_that_leaves_before_the_greeting_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(Recorder()) as srv:
        for _ in range(3):
            gone = await srv.connect()
            await gone.close()
        await trio.testing.wait_all_tasks_blocked()
        client = await srv.ehloed()
        await client.quit()
        assert srv.server.connection_count == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
