"""Real clients on 127.0.0.1: smtplib in worker threads, and a raw PIPELINING client.

Every test runs under ``trio.fail_after`` and every smtplib client has a socket timeout, so a
hung server fails the test instead of hanging it.
"""

from __future__ import annotations

import smtplib
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Recorder, dot_stuff, serving_tcp, tcp_client

from smtptrio import SMTP, Envelope, Session

TIMEOUT = 10
MESSAGE = b"From: anne@example.com\r\nTo: bart@example.org\r\nSubject: hi\r\n\r\nHello Bart.\r\n"


def _client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT)


def _sendmail(
    port: int, from_addr: str, to_addrs: list[str], msg: bytes, mail_options: tuple[str, ...] = ()
) -> dict[str, Any]:
    with _client(port) as client:
        return client.sendmail(from_addr, to_addrs, msg, mail_options=list(mail_options))


async def _in_thread(func: Any, *args: Any, limiter: trio.CapacityLimiter | None = None) -> Any:
    return await trio.to_thread.run_sync(partial(func, *args), limiter=limiter)


async def test_smtplib_plain_send_is_delivered_with_the_tcp_peer() -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            refused = await _in_thread(
                _sendmail, server.port, "anne@example.com", ["bart@example.org"], MESSAGE
            )
    assert refused == {}
    [envelope] = handler.envelopes
    assert envelope.mail_from == "anne@example.com"
    assert envelope.rcpt_tos == ["bart@example.org"]
    assert envelope.content == MESSAGE
    assert f"SIZE={len(MESSAGE)}" in envelope.mail_options
    peer = handler.sessions[0].peer
    assert isinstance(peer, tuple) and peer[0] == "127.0.0.1" and isinstance(peer[1], int)
    assert handler.sessions[0].host_name == "client.example"


async def test_smtplib_sendmail_with_several_recipients_keeps_their_order() -> None:
    handler = Recorder()
    rcpts = [f"user{n}@example.org" for n in range(5)]
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            assert (
                await _in_thread(_sendmail, server.port, "anne@example.com", rcpts, MESSAGE) == {}
            )
    assert handler.envelopes[0].rcpt_tos == rcpts


class PickyRcpt(Recorder):
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


async def test_smtplib_sees_a_refused_recipient_and_the_rest_are_delivered() -> None:
    handler = PickyRcpt()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            refused = await _in_thread(
                _sendmail,
                server.port,
                "anne@example.com",
                ["bart@example.org", "nobody@example.org"],
                MESSAGE,
            )
    assert set(refused) == {"nobody@example.org"}
    assert refused["nobody@example.org"][0] == 550
    assert refused["nobody@example.org"][1].startswith(b"5.1.1")
    assert handler.envelopes[0].rcpt_tos == ["bart@example.org"]


async def test_raw_pipelining_client_sends_mail_rcpt_rcpt_data_in_one_write() -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            client = await tcp_client(server.port)
            await client.greeting()
            ehlo = await client.ehlo()
            assert "PIPELINING" in ehlo.lines
            await client.send(
                b"MAIL FROM:<anne@example.com>\r\n"
                b"RCPT TO:<bart@example.org>\r\n"
                b"RCPT TO:<cate@example.org>\r\n"
                b"DATA\r\n"
            )
            got = await client.replies(4)
            assert [r.codes for r in got] == [
                (250, "2.1.0"),
                (250, "2.1.5"),
                (250, "2.1.5"),
                (354, None),
            ]
            await client.send(dot_stuff(MESSAGE) + b"QUIT\r\n")
            assert (await client.reply()).codes == (250, "2.0.0")
            assert (await client.reply()).codes == (221, "2.0.0")
            await client.expect_eof()
    assert handler.envelopes[0].rcpt_tos == ["bart@example.org", "cate@example.org"]
    assert handler.envelopes[0].content == MESSAGE


async def test_8bitmime_body_bytes_are_delivered_exactly() -> None:
    handler = Recorder()
    high = bytes(range(128, 256))
    body = (
        b"Subject: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + high[:64]
        + b"\r\n"
        + high[64:]
        + b"\r\ncaf\xc3\xa9 \xff\xfe\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            refused = await _in_thread(
                _sendmail,
                server.port,
                "anne@example.com",
                ["bart@example.org"],
                body,
                ("BODY=8BITMIME",),
            )
    assert refused == {}
    [envelope] = handler.envelopes
    assert envelope.content == body
    assert "BODY=8BITMIME" in envelope.mail_options


async def test_smtputf8_addresses_are_delivered_when_enabled() -> None:
    handler = Recorder()
    sender = "j\u00f6rg@ex\u00e4mple.org"
    rcpt = "\u00e5lice@\u4f8b\u3048.jp"
    body = "Subject: gr\u00fc\u00dfe\r\n\r\n\u3053\u3093\u306b\u3061\u306f\r\n".encode()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, enable_SMTPUTF8=True) as server:
            refused = await _in_thread(
                _sendmail, server.port, sender, [rcpt], body, ("SMTPUTF8", "BODY=8BITMIME")
            )
    assert refused == {}
    [envelope] = handler.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (sender, [rcpt])
    assert envelope.smtp_utf8 is True
    assert "SMTPUTF8" in envelope.mail_options
    assert envelope.content == body


def _big_message(size: int) -> bytes:
    """At least ``size`` octets of 78-octet lines, with lines that start with dots."""
    lines = [b"Subject: big\r\n", b"\r\n"]
    total = sum(map(len, lines))
    for n in range(size):
        if n % 7 == 0:
            line = b"." + b"%075d" % n
        elif n % 1000 == 1:
            line = b"."
        elif n % 1000 == 2:
            line = b".."
        else:
            line = b"%076d" % n
        lines.append(line + b"\r\n")
        total += len(line) + 2
        if total >= size:
            break
    return b"".join(lines)


async def test_20_mb_message_with_dot_lines_is_delivered_byte_for_byte() -> None:
    handler = Recorder()
    message = _big_message(20 * 1024 * 1024)
    assert len(message) >= 20 * 1024 * 1024
    with trio.fail_after(60):
        async with serving_tcp(handler, data_size_limit=25_000_000) as server:
            refused = await _in_thread(
                _sendmail, server.port, "anne@example.com", ["bart@example.org"], message
            )
    assert refused == {}
    delivered = handler.envelopes[0].content
    assert isinstance(delivered, bytes)
    assert len(delivered) == len(message)
    assert delivered == message


def _sendmail_ignoring_size(port: int, message: bytes) -> tuple[int, bytes, int]:
    """A client that ignores the advertised SIZE: the limit is found at the end of data."""
    with _client(port) as client:
        client.ehlo()
        client.esmtp_features.pop("size", None)
        try:
            client.sendmail("anne@example.com", ["bart@example.org"], message)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        else:
            raise AssertionError("the oversized message was accepted")
        return code, text, client.noop()[0]


async def test_message_over_data_size_limit_raises_smtp_data_error_552_5_3_4() -> None:
    handler = Recorder()
    message = _big_message(200_000)
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, data_size_limit=100_000) as server:
            code, text, noop = await _in_thread(_sendmail_ignoring_size, server.port, message)
    assert code == 552 and text.startswith(b"5.3.4")
    assert noop == 250  # the session goes on
    assert handler.envelopes == []


async def test_declared_size_over_the_limit_is_refused_at_mail_with_552() -> None:
    handler = Recorder()
    message = _big_message(200_000)
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, data_size_limit=100_000) as server:
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                await _in_thread(
                    _sendmail, server.port, "anne@example.com", ["bart@example.org"], message
                )
    assert info.value.smtp_code == 552
    assert info.value.smtp_error.startswith(b"5.3.4")
    assert handler.envelopes == []


async def test_per_ip_connection_limit_over_tcp_refuses_with_421_4_7_0() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(
            Recorder(), max_connections_per_ip=2, connection_limit_exempt=frozenset()
        ) as server:
            first = await tcp_client(server.port)
            second = await tcp_client(server.port)
            await first.greeting()
            await second.greeting()
            third = await tcp_client(server.port)
            assert (await third.reply()).codes == (421, "4.7.0")
            await third.expect_eof()
            with pytest.raises(smtplib.SMTPConnectError) as info:
                await _in_thread(_client, server.port)
            assert info.value.smtp_code == 421
            # Ending a session frees its slot.
            await first.quit()
            await trio.testing.wait_all_tasks_blocked()  # the server has unregistered it
            assert server.connection_count == 1
            fourth = await tcp_client(server.port)
            await fourth.greeting()
            await fourth.quit()
            await second.quit()


async def test_loopback_is_exempt_from_the_per_ip_limit_by_default() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(Recorder(), max_connections_per_ip=1) as server:
            clients = [await tcp_client(server.port) for _ in range(3)]
            for client in clients:
                await client.greeting()
            for client in clients:
                await client.quit()


async def test_fifty_concurrent_smtplib_clients_are_all_delivered() -> None:
    handler = Recorder()
    count = 50
    limiter = trio.CapacityLimiter(count)

    with trio.fail_after(30):
        async with serving_tcp(handler) as server, trio.open_nursery() as nursery:
            for n in range(count):
                msg = b"Subject: message %d\r\n\r\nbody %d\r\n" % (n, n)
                nursery.start_soon(
                    partial(
                        _in_thread,
                        _sendmail,
                        server.port,
                        f"sender{n}@example.com",
                        [f"rcpt{n}@example.org"],
                        msg,
                        limiter=limiter,
                    )
                )
    assert len(handler.envelopes) == count
    assert sorted(e.content for e in handler.envelopes) == sorted(
        b"Subject: message %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(count)
    )
    for envelope in handler.envelopes:
        n = envelope.mail_from.removeprefix("sender").split("@")[0]
        assert envelope.rcpt_tos == [f"rcpt{n}@example.org"]


async def test_port_is_closed_after_serve_returns() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(Recorder()) as server:
            port = server.port
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


class _Addresses:
    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: Any
    ) -> str:
        self.seen = {
            "peername": server.transport.get_extra_info("peername"),
            "sockname": server.transport.get_extra_info("sockname"),
        }
        return "250 2.0.0 OK"


def _noop(port: int) -> tuple[int, bytes]:
    with _client(port) as client:
        client.ehlo()
        return client.noop()


async def test_get_extra_info_gives_both_tcp_addresses() -> None:
    # sockname is looked up only when a handler asks for it; it must still be the real one.
    handler = _Addresses()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            port = server.port
            code, _ = await _in_thread(_noop, port)
    assert code == 250
    assert handler.seen["sockname"] == ("127.0.0.1", port)
    peer = handler.seen["peername"]
    assert peer[0] == "127.0.0.1" and peer[1] != port
