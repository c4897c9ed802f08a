"""Connection floods over real TCP on loopback: per-IP limits, the rate limit, a probe.

These limits key on the peer address, which memory streams do not have (the global limit is
tested over memory in tests/server/test_abuse.py). ``connection_limit_exempt=frozenset()``
takes loopback out of the default exemption. A second client address comes from binding the
client socket to 127.0.0.2 (any 127.0.0.0/8 address is loopback on Linux); the tests that
need it are skipped where that bind fails. Assertions are functional only, never on timing.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import threading
from collections import Counter, deque

import pytest
import trio
import trio.testing
from helpers import CountingHooks, Recorder, SMTPClient, serving_tcp, tcp_client

TIMEOUT = 30.0
OTHER_IP = "127.0.0.2"


def other_ip_available() -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((OTHER_IP, 0))
    except OSError:
        return False
    return True


needs_other_ip = pytest.mark.skipif(
    not other_ip_available(), reason=f"cannot bind a client socket to {OTHER_IP}"
)


async def client_from(port: int, local_ip: str) -> SMTPClient:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_ip)
    return SMTPClient(stream, timeout=TIMEOUT)


# ---------------------------------------------------------------------------- per-IP count


async def test_per_ip_limit_refuses_with_421_4_7_0_and_serves_the_others() -> None:
    """COMPAT 4 max_connections_per_ip, D23: 421 4.7.0 instead of the greeting, no hook
    called, the refused client is closed; the admitted ones are served; a slot frees up."""
    handler = CountingHooks()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(
            handler,
            max_connections_per_ip=3,
            connection_limit_exempt=frozenset(),
            connection_rate_limit=None,
        ) as server:
            admitted = [await tcp_client(server.port) for _ in range(3)]
            for client in admitted:
                await client.greeting()
                await client.ehlo()
            calls = handler.calls
            for _ in range(4):
                refused = await tcp_client(server.port)
                assert (await refused.reply()).codes == (421, "4.7.0")
                await refused.expect_eof()
                await refused.close()
            assert handler.calls == calls
            assert server.connection_count == 3
            async with trio.open_nursery() as nursery:
                for client in admitted:
                    nursery.start_soon(client.transaction)
            assert len(handler.envelopes) == 3
            await admitted[0].quit()
            await trio.testing.wait_all_tasks_blocked()
            late = await tcp_client(server.port)
            await late.greeting()
            await late.ehlo()
            for client in (late, *admitted[1:]):
                await client.quit()


async def test_loopback_is_exempt_from_the_per_ip_limit_by_default() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(Recorder(), max_connections_per_ip=2) as server:
            clients = [await tcp_client(server.port) for _ in range(6)]
            for client in clients:
                await client.greeting()
            for client in clients:
                await client.quit()


@needs_other_ip
async def test_per_ip_limit_counts_each_address_separately() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(
            Recorder(), max_connections_per_ip=2, connection_limit_exempt=frozenset()
        ) as server:
            mine = [await tcp_client(server.port) for _ in range(2)]
            for client in mine:
                await client.greeting()
            refused = await tcp_client(server.port)
            assert (await refused.reply()).codes == (421, "4.7.0")
            other = await client_from(server.port, OTHER_IP)
            await other.greeting()
            await other.ehlo()
            assert (await other.transaction()).codes == (250, "2.0.0")
            await other.quit()
            for client in mine:
                await client.quit()


# ---------------------------------------------------------------------------- per-IP rate


@needs_other_ip
async def test_connection_rate_limit_per_ip_and_window(mock_clock: trio.testing.MockClock) -> None:
    """connection_rate_limit=3 per 60 s from one address: the 4th is refused with 421 4.7.0,
    refusals do not count, other addresses are unaffected, and the window slides."""
    # Virtual time moves only by jump() here; a real stall over 1 s would jump it to the
    # next deadline, so a hang fails the fail_after instead of blocking forever.
    mock_clock.autojump_threshold = 1.0
    with trio.fail_after(10 * TIMEOUT):  # virtual seconds, and the test jumps 61 of them
        async with serving_tcp(
            Recorder(),
            connection_rate_limit=3,
            connection_rate_window=60,
            connection_limit_exempt=frozenset(),
        ) as server:
            for _ in range(3):
                client = await tcp_client(server.port)
                await client.greeting()
                await client.quit()
            for _ in range(3):
                refused = await tcp_client(server.port)
                assert (await refused.reply()).codes == (421, "4.7.0")
                await refused.expect_eof()
            other = await client_from(server.port, OTHER_IP)
            await other.greeting()
            await other.quit()
            mock_clock.jump(30)
            refused = await tcp_client(server.port)
            assert (await refused.reply()).codes == (421, "4.7.0")
            mock_clock.jump(31)  # 61 s after the first three
            again = await tcp_client(server.port)
            await again.greeting()
            await again.quit()


# ---------------------------------------------------------------------------- flood and probe


def flood(
    port: int,
    attempts: int,
    stats: Counter[str],
    halfway: threading.Event,
    probe_progress: threading.Event,
) -> None:
    """Open ``attempts`` connections as fast as possible, holding up to 100 open; classify
    each by its first reply line. Pauses at half way until the probe is under way, so the
    two overlap."""
    held: deque[socket.socket] = deque()

    def classify(sock: socket.socket) -> None:
        data = b""
        try:
            sock.settimeout(TIMEOUT)
            for _ in range(100):
                chunk = sock.recv(4096)
                data += chunk
                if not chunk or b"\r\n" in data:
                    break
        except OSError as exc:
            stats[f"error {type(exc).__name__}"] += 1
            return
        finally:
            sock.close()
        stats[data[:9].decode("ascii", "replace") or "EOF"] += 1

    try:
        for n in range(attempts):
            if n == attempts // 2:
                halfway.set()
                probe_progress.wait(timeout=TIMEOUT)
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            except OSError as exc:
                stats[f"connect {type(exc).__name__}"] += 1
                continue
            if len(held) > 100:
                classify(held.popleft())
    finally:
        halfway.set()
        for _ in range(len(held)):
            classify(held.popleft())


def probe(
    port: int,
    sessions: int,
    per_session: int,
    started: threading.Event,
    progress: threading.Event,
    results: list[tuple[int, bytes]],
) -> None:
    """smtplib from another address: every message must get 250."""
    started.wait(timeout=TIMEOUT)
    for s in range(sessions):
        with smtplib.SMTP(
            "127.0.0.1",
            port,
            local_hostname="probe.example",
            timeout=TIMEOUT,
            source_address=(OTHER_IP, 0),
        ) as client:
            for m in range(per_session):
                client.ehlo_or_helo_if_needed()
                client.mail("probe@example.com")
                client.rcpt("bart@example.org")
                code, text = client.data(f"Message-ID: <probe.{s}.{m}@test>\r\n\r\nhi\r\n")
                results.append((code, text))
                progress.set()


@needs_other_ip
async def test_probe_is_served_while_a_thousand_connections_flood_from_one_address() -> None:
    """max_connections_per_ip=50 and the default rate limit (120 per 60 s) with loopback not
    exempt: most of the 1000 flood connections are refused; the probe, from another address,
    gets every message delivered with 250."""
    handler = Recorder()
    stats: Counter[str] = Counter()
    results: list[tuple[int, bytes]] = []
    halfway, progress = threading.Event(), threading.Event()
    attempts = 1000
    with trio.fail_after(120):
        async with serving_tcp(
            handler, max_connections_per_ip=50, connection_limit_exempt=frozenset()
        ) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    trio.to_thread.run_sync, flood, server.port, attempts, stats, halfway, progress
                )
                nursery.start_soon(
                    trio.to_thread.run_sync, probe, server.port, 10, 3, halfway, progress, results
                )
            # The flood left the server usable for anyone, flooder's address aside.
            after = await client_from(server.port, OTHER_IP)
            await after.greeting()
            await after.ehlo()
            assert (await after.transaction()).codes == (250, "2.0.0")
            await after.quit()
    print(f"\nflood: {dict(stats)}")
    assert [code for code, _ in results] == [250] * 30
    delivered = sorted(
        e.content.split(b"\r\n", 1)[0] for e in handler.envelopes if isinstance(e.content, bytes)
    )
    assert len(delivered) == 31
    assert sum(stats.values()) == attempts
    greeted = sum(n for key, n in stats.items() if key.startswith("220"))
    refused = stats["421 4.7.0"]
    assert 1 <= greeted <= 120  # at most the rate limit's worth got in
    assert refused >= attempts - 120 - sum(
        n for key, n in stats.items() if not key.startswith(("220", "421"))
    )
    assert refused > attempts // 2  # "most are refused"


# ---------------------------------------------------------------------------- a non-reading client


def pipeline_without_reading(port: int, lines: int, outcome: list[str]) -> None:
    """Send NOOPs and never read a reply, until the server gives up on us (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        chunk = b"NOOP\r\n" * 10_000
        try:
            for _ in range(lines // 10_000):
                sock.sendall(chunk)
        except OSError as exc:  # the server closed on us: what we want
            outcome.append(type(exc).__name__)
            return
        outcome.append("all sent")


async def test_client_that_never_reads_its_replies_is_cut_off_at_the_idle_timeout(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """connection.py: "a client that does not read its replies runs into it like an idle one".
    Replies pile up until the kernel buffers are full and the server's send blocks; the idle
    deadline (300 s, virtual: the clock jumps once everything has been blocked for 0.2 s
    real) then ends the session, and others are still served."""
    mock_clock.autojump_threshold = 0.2
    caplog.set_level(logging.INFO, logger="smtptrio")
    outcome: list[str] = []
    with trio.fail_after(100_000):
        async with serving_tcp(Recorder(), timeout=300) as server:
            started = trio.current_time()
            await trio.to_thread.run_sync(pipeline_without_reading, server.port, 3_000_000, outcome)
            assert outcome and outcome[0] != "all sent", outcome
            assert trio.current_time() - started >= 300
            await trio.testing.wait_all_tasks_blocked()
            assert server.connection_count == 0
            other = await tcp_client(server.port)
            await other.greeting()
            await other.ehlo()
            assert (await other.transaction()).codes == (250, "2.0.0")
            await other.quit()
    ended = [r.__dict__ for r in caplog.records if r.getMessage() == "session ended"]
    assert [e["outcome"] for e in ended] == ["timeout", "closed"], ended
    assert ended[0]["messages"] == 0
