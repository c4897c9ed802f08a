"""serve_listeners: accepting, connection limits, graceful shutdown, RunningServer.

Over the in-memory listener; the per-IP limit needs real peer addresses and is tested over TCP
in tests/e2e/test_smtplib.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from helpers import (
    CountingHooks,
    MemoryListener,
    Recorder,
    RecordingStream,
    SMTPClient,
    dot_stuff,
    running_server,
)

import smtptrio
from smtptrio import SMTP, Envelope, Session

BODY = b"Subject: hi\r\n\r\nbody\r\n"


# ---------------------------------------------------------------------------- RunningServer


async def test_running_server_reports_hostname_and_connection_count() -> None:
    async with running_server(Recorder(), hostname="mx.example") as srv:
        assert srv.server.hostname == "mx.example"
        assert srv.server.connection_count == 0
        assert srv.server.shutting_down is False
        first = await srv.greeted()
        second = await srv.greeted()
        assert srv.server.connection_count == 2
        await first.quit()
        await trio.testing.wait_all_tasks_blocked()
        assert srv.server.connection_count == 1
        await second.quit()


async def test_memory_only_server_has_no_sockets_and_port_raises_attribute_error() -> None:
    async with running_server(Recorder()) as srv:
        assert srv.server.sockets == []
        with pytest.raises(AttributeError):
            _ = srv.server.port


async def test_many_sequential_and_concurrent_sessions_are_served() -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        clients = [await srv.ehloed() for _ in range(20)]
        for n, client in enumerate(clients):
            assert (await client.transaction(body=b"message %d\r\n" % n)).codes == (250, "2.0.0")
        for client in clients:
            await client.quit()
    assert sorted(e.content for e in handler.envelopes) == sorted(
        b"message %d\r\n" % n for n in range(20)
    )


class ExplodingStream(trio.abc.Stream):
    """A transport that fails in a way no server code expects."""

    async def send_all(self, data: Any) -> None:
        raise RuntimeError("transport exploded")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise RuntimeError("transport exploded")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_one_broken_connection_does_not_take_the_server_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        srv.listener.inject(ExplodingStream())
        await trio.testing.wait_all_tasks_blocked()
        client = await srv.ehloed()
        assert (await client.transaction()).codes == (250, "2.0.0")
        await client.quit()
    assert len(handler.envelopes) == 1
    assert any(r.levelno >= logging.ERROR for r in caplog.records)


# ---------------------------------------------------------------------------- connection limits


async def test_over_max_connections_gets_421_4_7_0_instead_of_the_greeting_and_no_hook() -> None:
    handler = CountingHooks()
    async with running_server(handler, max_connections=2) as srv:
        first = await srv.greeted()
        second = await srv.greeted()
        third = await srv.connect()
        await third.send(b"EHLO client.example\r\nNOOP\r\n")
        assert (await third.reply()).codes == (421, "4.7.0")
        await third.expect_eof()
        assert handler.calls == 0
        assert srv.server.connection_count == 2
        # A slot frees up when a session ends.
        await first.quit()
        await trio.testing.wait_all_tasks_blocked()
        fourth = await srv.ehloed()
        assert handler.calls == 1
        await fourth.quit()
        await second.quit()


async def test_memory_streams_have_no_peer_so_the_per_ip_limit_does_not_apply() -> None:
    async with running_server(
        Recorder(), max_connections_per_ip=1, connection_limit_exempt=frozenset()
    ) as srv:
        clients = [await srv.greeted() for _ in range(3)]
        for client in clients:
            await client.quit()


# ---------------------------------------------------------------------------- graceful shutdown


async def test_shutdown_closes_idle_sessions_at_once_with_421_4_3_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = CountingHooks()
    async with running_server(handler, timeout=300) as srv:
        greeted_only = await srv.greeted()
        after_ehlo = await srv.ehloed()
        after_message = await srv.ehloed()
        assert (await after_message.transaction()).code == 250
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.server.shutdown, 30)
            for client in (greeted_only, after_ehlo, after_message):
                assert (await client.reply()).codes == (421, "4.3.2")
                await client.expect_eof()
        assert trio.current_time() - started == pytest.approx(0, abs=0.01)
        assert srv.server.shutting_down
        with trio.fail_after(5):
            await srv.returned.wait()


async def test_shutdown_lets_a_session_in_data_finish_then_sends_421_4_3_2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Recorder()
    async with running_server(handler, timeout=300) as srv:
        idle = await srv.greeted()
        busy = await srv.ehloed()
        assert (await busy.cmd("MAIL FROM:<anne@example.com>")).code == 250
        assert (await busy.cmd("RCPT TO:<bart@example.org>")).code == 250
        assert (await busy.cmd("DATA")).code == 354
        await busy.send(b"Subject: in flight\r\n\r\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.server.shutdown, 30)
            assert (await idle.reply()).codes == (421, "4.3.2")
            await idle.expect_eof()
            await trio.sleep(5)  # virtual: the busy client is still sending
            await busy.send(b"the rest\r\n.\r\n")
            assert (await busy.reply()).codes == (250, "2.0.0")
            assert (await busy.reply()).codes == (421, "4.3.2")
            await busy.expect_eof()
        with trio.fail_after(5):
            await srv.returned.wait()
    assert handler.envelopes[0].content == b"Subject: in flight\r\n\r\nthe rest\r\n"


async def test_shutdown_closes_what_is_left_after_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stuck(Recorder):
        async def handle_NOOP(
            self, server: SMTP, session: Session, envelope: Envelope, arg: Any
        ) -> str:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    async with running_server(Stuck(), timeout=300, hook_timeout=None) as srv:
        in_transaction = await srv.ehloed()
        assert (await in_transaction.cmd("MAIL FROM:<anne@example.com>")).code == 250
        in_hook = await srv.greeted()
        await in_hook.line("NOOP")
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.server.shutdown, 10)
            for client in (in_transaction, in_hook):
                assert (await client.reply(timeout=60)).codes == (421, "4.3.2")
                await client.expect_eof()
        assert trio.current_time() - started == pytest.approx(10, abs=0.01)
        with trio.fail_after(5):
            await srv.returned.wait()


async def test_serve_listeners_returns_after_shutdown() -> None:
    listener = MemoryListener()
    returned = trio.Event()

    async def run(*, task_status: trio.TaskStatus[smtptrio.RunningServer]) -> None:
        await smtptrio.serve_listeners(
            Recorder(), [listener], hostname="mx.example", task_status=task_status
        )
        returned.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(run)
            client = await listener.connect()
            await client.greeting()
            await server.shutdown(grace_period=1)
            assert (await client.reply()).codes == (421, "4.3.2")
            await returned.wait()
    assert listener.closed


async def test_shutdown_right_after_start_returns_promptly() -> None:
    """shutdown() may be called as soon as nursery.start() returned the RunningServer."""
    for _ in range(20):  # the accept tasks may or may not have run yet: try both orders
        listener = MemoryListener()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(smtptrio.serve_listeners, Recorder(), [listener])
                await server.shutdown(grace_period=0)


async def test_connection_arriving_during_shutdown_is_not_served() -> None:
    handler = CountingHooks()
    async with running_server(handler) as srv:
        client = await srv.greeted()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.server.shutdown, 30)
            assert (await client.reply()).codes == (421, "4.3.2")
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await srv.connect()
    assert handler.calls == 0


async def test_shutdown_with_negative_grace_period_raises_value_error() -> None:
    async with running_server(Recorder()) as srv:
        with pytest.raises(ValueError, match="grace_period"):
            await srv.server.shutdown(grace_period=-1)


async def test_shutdown_twice_is_harmless() -> None:
    async with running_server(Recorder()) as srv:
        client = await srv.greeted()
        with trio.fail_after(5):
            await srv.server.shutdown(grace_period=1)
            await srv.server.shutdown(grace_period=1)
        assert (await client.reply()).codes == (421, "4.3.2")


async def test_cancelling_serve_listeners_closes_sessions_without_hanging() -> None:
    client: SMTPClient | None = None
    with trio.fail_after(5):
        async with running_server(Recorder()) as srv:
            client = await srv.ehloed()
            stream: RecordingStream | None = client.server_stream
        assert stream is not None
        await stream.closed.wait()
    assert client is not None


async def test_message_in_flight_at_shutdown_is_delivered_once() -> None:
    handler = Recorder()
    async with running_server(handler) as srv:
        client = await srv.ehloed()
        await client.send(b"MAIL FROM:<anne@example.com>\r\nRCPT TO:<bart@example.org>\r\nDATA\r\n")
        assert [r.code for r in await client.replies(3)] == [250, 250, 354]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(srv.server.shutdown, 30)
            await trio.testing.wait_all_tasks_blocked()
            await client.send(dot_stuff(BODY))
            assert (await client.reply()).codes == (250, "2.0.0")
            assert (await client.reply()).codes == (421, "4.3.2")
    assert [e.content for e in handler.envelopes] == [BODY]
