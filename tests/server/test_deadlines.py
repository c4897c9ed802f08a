"""Deadlines during DATA (COMPAT D3 by default, Postfix's rate model as an option), error
pauses that never hold back earlier replies, and garbage lines against the unknown-verb limit."""

from __future__ import annotations

import trio
import trio.testing
from helpers import Recorder, running_server

DATA_START = "EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"


async def trickle(client: object, chunk: bytes, interval: float, count: int) -> None:
    """Send ``chunk`` every ``interval`` seconds until the server hangs up (bounded)."""
    for _ in range(count):
        try:
            await client.send(chunk)  # type: ignore[attr-defined]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(interval)


async def cut_off_after(client: object, chunk: bytes, interval: float) -> float:
    """Trickle until the reply comes; return how long that took (virtual seconds)."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, client, chunk, interval, 1000)
        reply = await client.reply(timeout=3600)  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()
    assert reply.codes == (421, "4.4.2")
    return trio.current_time() - start


async def start_data(srv: object, **kwargs: object) -> object:
    client = await srv.greeted(**kwargs)  # type: ignore[attr-defined]
    for line in DATA_START:
        assert (await client.cmd(line)).code == 250
    assert (await client.cmd("DATA")).code == 354
    return client


async def test_complete_lines_keep_a_slow_data_sender_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """D3: each complete line restarts the timer, however slowly the lines come."""
    handler = Recorder()
    async with running_server(handler, timeout=10) as srv:
        client = await start_data(srv, timeout=600)
        for i in range(10):  # 10 lines, 8 s apart: 80 s of DATA with a 10 s timeout
            await trio.sleep(8)
            await client.send(f"line {i}\r\n")
        await client.send(".\r\n")
        assert (await client.reply(timeout=600)).code == 250
    assert handler.envelopes[0].content.count(b"line ") == 10


async def test_a_fast_stream_without_line_ends_does_not_extend_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), timeout=10) as srv:
        client = await start_data(srv, timeout=3600)
        assert await cut_off_after(client, b"A" * 1024, 1) < 20  # a partial line, 1 KiB/s


async def test_a_message_already_refused_cannot_keep_the_connection_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over the size limit, even complete lines stop counting as progress."""
    async with running_server(Recorder(), timeout=10, data_size_limit=1000) as srv:
        client = await start_data(srv, timeout=3600)
        assert await cut_off_after(client, b"x" * 98 + b"\r\n", 1) < 30


async def test_min_data_rate_option_cuts_a_line_trickler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With min_data_rate (Postfix's model) short lines far apart are not enough."""
    async with running_server(Recorder(), timeout=10, min_data_rate=500) as srv:
        client = await start_data(srv, timeout=3600)
        assert await cut_off_after(client, b"x\r\n", 3) < 30


async def test_error_pause_does_not_hold_back_earlier_pipelined_replies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(Recorder(), soft_error_limit=0, error_delay=5.0) as srv:
        client = await srv.greeted()
        start = trio.current_time()
        await client.send("EHLO client.example\r\nRCPT TO:<a@example.org>\r\n")
        assert (await client.reply()).code == 250  # the EHLO reply comes at once
        assert trio.current_time() == start
        assert (await client.reply()).code == 503  # the error after the pause
        assert trio.current_time() - start >= 5.0


async def test_lines_without_a_verb_count_toward_the_unknown_command_limit() -> None:
    async with running_server(Recorder(), unrecognized_command_limit=5) as srv:
        client = await srv.greeted()
        for line in (b" NOOP", b"\tNOOP", b"NO\x00OP", b"FOO\nBAR"):
            assert (await client.cmd(line)).codes == (500, "5.5.2")
        assert (await client.cmd(b" NOOP")).codes == (421, "4.7.0")
        await client.expect_eof()


async def test_empty_lines_do_not_count_as_unknown_commands() -> None:
    async with running_server(Recorder(), unrecognized_command_limit=2) as srv:
        client = await srv.greeted()
        for _ in range(5):
            assert (await client.cmd(b"")).code == 500
        assert (await client.cmd("NOOP")).code == 250
