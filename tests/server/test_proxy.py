"""The PROXY protocol in front of a session: header first, handle_PROXY decides, then SMTP."""

from __future__ import annotations

import ssl
import struct
from ipaddress import IPv4Address
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Recorder, running_server, serving_tcp, tcp_client

import smtptrio
from smtptrio import ProxyData

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    addrs = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!HH", sport, dport)
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


class ProxyRecorder(Recorder):
    def __init__(self, accept: Any = True) -> None:
        super().__init__()
        self.accept = accept
        self.proxy: list[ProxyData] = []

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy_data: Any) -> Any:
        self.proxy.append(proxy_data)
        return self.accept


async def test_v1_header_then_a_whole_session_with_proxy_data_on_the_session() -> None:
    handler = ProxyRecorder()
    async with running_server(handler, proxy_protocol_timeout=5) as srv:
        client = await srv.connect()
        await client.send(V1 + b"EHLO client.example\r\n")  # SMTP pipelined behind the header
        assert (await client.greeting()).code == 220
        assert (await client.reply()).code == 250
        await client.transaction("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
    data = handler.proxy[0]
    assert data.valid and data.version == 1
    assert (str(data.src_addr), data.src_port) == ("203.0.113.7", 40000)
    assert handler.sessions[0].proxy_data is data


async def test_v2_header_is_accepted() -> None:
    handler = ProxyRecorder()
    async with running_server(handler, proxy_protocol_timeout=5) as srv:
        client = await srv.connect()
        await client.send(v2_inet("198.51.100.9", "192.0.2.1", 5555, 25))
        assert (await client.greeting()).code == 220
    assert handler.proxy[0].version == 2 and str(handler.proxy[0].src_addr) == "198.51.100.9"


@pytest.mark.parametrize(
    "header",
    [
        b"EHLO client.example\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
    ],
)
async def test_missing_or_invalid_header_closes_without_a_reply(header: bytes) -> None:
    handler = ProxyRecorder()
    async with running_server(handler, proxy_protocol_timeout=5) as srv:
        client = await srv.connect()
        await client.send(header)
        assert await client.read_to_eof() == b""
    assert handler.proxy == []


async def test_late_header_is_timed_out_without_a_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server(ProxyRecorder(), proxy_protocol_timeout=5) as srv:
        client = await srv.connect(timeout=60)
        await client.send(b"PROXY TCP4 ")  # and never the rest
        before = trio.current_time()
        assert await client.read_to_eof(timeout=60) == b""
        assert trio.current_time() - before >= 5


@pytest.mark.parametrize("verdict", [False, None, smtptrio.MISSING])
async def test_handle_proxy_saying_no_closes_without_a_reply(verdict: Any) -> None:
    handler = ProxyRecorder(accept=verdict)
    async with running_server(handler, proxy_protocol_timeout=5) as srv:
        client = await srv.connect()
        await client.send(V1)
        assert await client.read_to_eof() == b""
    assert len(handler.proxy) == 1


async def test_without_handle_proxy_the_server_warns_and_closes_every_connection() -> None:
    with pytest.warns(UserWarning, match="handle_PROXY"):
        async with running_server(Recorder(), proxy_protocol_timeout=5) as srv:
            client = await srv.connect()
            await client.send(V1)
            assert await client.read_to_eof() == b""


async def test_proxy_then_implicit_tls_over_tcp(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The header comes before the TLS ClientHello (HAProxy's send-proxy with SMTPS)."""
    handler = ProxyRecorder()
    async with serving_tcp(handler, proxy_protocol_timeout=5, ssl_context=server_ctx) as server:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(V1)
            tls = trio.SSLStream(stream, client_ctx, server_hostname="localhost")
            await tls.do_handshake()
            greeting = await tls.receive_some(4096)
            assert greeting.startswith(b"220 ")
            await tls.send_all(b"QUIT\r\n")
            assert (await tls.receive_some(4096)).startswith(b"221 ")
            await trio.aclose_forcefully(tls)
    assert str(handler.proxy[0].src_addr) == "203.0.113.7"


async def test_proxy_over_tcp_with_plain_smtp() -> None:
    handler = ProxyRecorder()
    async with serving_tcp(handler, proxy_protocol_timeout=5) as server:
        client = await tcp_client(server.port)
        await client.send(V1)
        assert (await client.greeting()).code == 220
        await client.ehlo()
        await client.transaction("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        await client.quit()
    assert handler.envelopes[0].mail_from == "a@example.org"


async def test_per_address_limit_counts_the_proxy_source_not_the_proxy() -> None:
    """COMPAT 4: behind PROXY, max_connections_per_ip counts the header's source address."""
    handler = ProxyRecorder()
    options = {
        "proxy_protocol_timeout": 5,
        "max_connections_per_ip": 2,
        "connection_limit_exempt": frozenset(),
    }
    async with serving_tcp(handler, **options) as server:
        clients = []
        for _ in range(2):
            client = await tcp_client(server.port)
            await client.send(V1)  # all from 203.0.113.7
            assert (await client.greeting()).code == 220
            clients.append(client)
        third = await tcp_client(server.port)
        await third.send(V1)
        assert (await third.reply()).codes == (421, "4.7.0")
        other = await tcp_client(server.port)  # another source through the same proxy
        await other.send(b"PROXY TCP4 198.51.100.1 192.0.2.1 40000 25\r\n")
        assert (await other.greeting()).code == 220
        for client in [*clients, other]:
            await client.quit()


class SocknameRecorder(ProxyRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.sockname: Any = "unset"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: Any) -> str:
        self.sockname = server.transport.get_extra_info("sockname")
        return "250 2.0.0 OK"


async def test_sockname_with_proxy_header_and_client_hello_in_one_segment(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The stream is then TLS over the PROXY leftover over the socket; sockname still works."""
    handler = SocknameRecorder()
    async with serving_tcp(handler, proxy_protocol_timeout=5, ssl_context=server_ctx) as server:
        port = server.port
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            await stream.send_all(V1 + outgoing.read())  # header and ClientHello together
            for _ in range(20):  # a handshake takes a few round trips
                incoming.write(await stream.receive_some(65536))
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    await stream.send_all(outgoing.read())
                    continue
                await stream.send_all(outgoing.read())
                break
            received = b""
            for _ in range(20):
                try:
                    received += tls.read(65536)
                except ssl.SSLWantReadError:
                    pass
                if received.endswith(b"\r\n"):
                    break
                incoming.write(await stream.receive_some(65536))
            assert received.startswith(b"220 ")
            tls.write(b"NOOP\r\n")
            await stream.send_all(outgoing.read())
            reply = b""
            for _ in range(20):
                incoming.write(await stream.receive_some(65536))
                try:
                    reply += tls.read(65536)
                except ssl.SSLWantReadError:
                    continue
                if reply.endswith(b"\r\n"):
                    break
            assert reply.startswith(b"250 ")
            await trio.aclose_forcefully(stream)
    assert handler.sockname == ("127.0.0.1", port)
