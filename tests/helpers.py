"""Shared test helpers: an in-memory listener, a recording stream, and an SMTP test client.

Tier 2 (``tests/server/``) runs real ``serve_listeners`` over ``trio.testing`` memory streams:

    async with running_server(handler, timeout=300) as srv:
        client = await srv.greeted()              # connected, 220 read
        assert (await client.cmd("NOOP")).code == 250

Every read is bounded by ``trio.fail_after`` (virtual seconds under ``autojump_clock``, so a
test of a 300 s timeout passes ``timeout=400`` to the read and still takes milliseconds).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
import trio.testing

import smtptrio
from smtptrio import SMTP, Envelope, Session

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "MemoryListener",
    "MemoryServer",
    "Recorder",
    "RecordingStream",
    "Reply",
    "SMTPClient",
    "dot_stuff",
    "open_connection_io",
    "parse_replies",
    "parse_reply",
    "running_server",
    "serving_tcp",
    "tcp_client",
]

#: Seconds (real, or virtual under a mock clock) any single read may take.
DEFAULT_READ_TIMEOUT = 10.0

_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}\Z")


@dataclass(frozen=True)
class Reply:
    """One parsed (possibly multi-line) SMTP reply."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    raw: bytes = field(repr=False, default=b"")

    @property
    def codes(self) -> tuple[int, str | None]:
        return (self.code, self.enhanced)


def parse_reply(raw_lines: Sequence[bytes]) -> Reply:
    """Build a Reply from its wire lines (without CRLF); asserts the RFC 5321 shape."""
    assert raw_lines, "empty reply"
    code: int | None = None
    texts: list[str] = []
    for n, line in enumerate(raw_lines):
        assert len(line) >= 3 and line[:3].isdigit(), f"not a reply line: {line!r}"
        this = int(line[:3])
        assert code is None or this == code, f"reply mixes codes: {raw_lines!r}"
        code = this
        sep = line[3:4]
        last = n == len(raw_lines) - 1
        assert sep == (b" " if last else b"-") or (last and sep == b""), (
            f"bad continuation marker in {raw_lines!r}"
        )
        texts.append(line[4:].decode("utf-8"))
    assert code is not None
    enhanced = None
    first, _, _ = texts[0].partition(" ")
    m = _ENHANCED.match(first)
    if m and m.group(1) == str(code)[0]:
        enhanced = first
        stripped = []
        for text in texts:
            head, _, rest = text.partition(" ")
            stripped.append(rest if head == enhanced else text)
        texts = stripped
    return Reply(code, enhanced, tuple(texts), b"\r\n".join(raw_lines) + b"\r\n")


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete reply in a byte string (for checks on whole writes)."""
    out: list[Reply] = []
    pending: list[bytes] = []
    for line in data.split(b"\r\n")[:-1]:
        pending.append(line)
        if line[3:4] != b"-":
            out.append(parse_reply(pending))
            pending = []
    assert not pending, f"incomplete reply at the end of {data!r}"
    return out


def dot_stuff(body: bytes) -> bytes:
    """RFC 5321 section 4.5.2 transparency, plus the terminator (body must end with CRLF)."""
    assert body == b"" or body.endswith(b"\r\n")
    stuffed = re.sub(rb"(?m)^\.", b"..", body)
    return stuffed + b".\r\n"


class SMTPClient:
    """A minimal client over any trio stream: send lines, read parsed replies."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        server_stream: RecordingStream | None = None,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.stream = stream
        #: The server side of the pair (memory route): its ``writes`` show how replies left.
        self.server_stream = server_stream
        self.timeout = timeout
        self._buf = bytearray()
        self._eof = False

    # ---------------------------------------------------------------- writing

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self.stream.send_all(data)

    async def line(self, text: bytes | str) -> None:
        """Send one command line (CRLF appended)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        await self.send(text + b"\r\n")

    async def close(self) -> None:
        await self.stream.aclose()

    # ---------------------------------------------------------------- reading

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self.stream.receive_some(65536)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def _read_line(self) -> bytes | None:
        for _ in range(1 << 20):
            cut = self._buf.find(b"\r\n")
            if cut >= 0:
                out = bytes(self._buf[:cut])
                del self._buf[: cut + 2]
                return out
            if not await self._fill():
                return None
        raise AssertionError("unreachable")

    async def reply(self, timeout: float | None = None) -> Reply:
        """Read one reply; raises EOFError if the server closes first."""
        with trio.fail_after(self.timeout if timeout is None else timeout):
            lines: list[bytes] = []
            for _ in range(10000):
                line = await self._read_line()
                if line is None:
                    raise EOFError(
                        f"connection closed; partial reply {lines!r}, rest {bytes(self._buf)!r}"
                    )
                lines.append(line)
                if line[3:4] != b"-":
                    return parse_reply(lines)
        raise AssertionError("reply with more than 10000 lines")

    async def replies(self, count: int, timeout: float | None = None) -> list[Reply]:
        return [await self.reply(timeout) for _ in range(count)]

    async def cmd(self, text: bytes | str, timeout: float | None = None) -> Reply:
        """Send one command line and read its reply."""
        await self.line(text)
        return await self.reply(timeout)

    async def read_to_eof(self, timeout: float | None = None) -> bytes:
        """Everything the server still sends, up to its close."""
        with trio.fail_after(self.timeout if timeout is None else timeout):
            for _ in range(1 << 20):
                if not await self._fill():
                    out = bytes(self._buf)
                    self._buf.clear()
                    return out
        raise AssertionError("unreachable")

    async def expect_eof(self, timeout: float | None = None) -> None:
        """Assert that the server closes without sending anything more."""
        rest = await self.read_to_eof(timeout)
        assert rest == b"", f"expected EOF, got {rest!r}"

    @property
    def at_eof(self) -> bool:
        return self._eof

    # ---------------------------------------------------------------- dialogues

    async def greeting(self, timeout: float | None = None) -> Reply:
        reply = await self.reply(timeout)
        assert reply.code == 220, reply
        return reply

    async def ehlo(self, name: str = "client.example") -> Reply:
        reply = await self.cmd(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    async def transaction(
        self,
        mail_from: str = "anne@example.com",
        rcpt_tos: Iterable[str] = ("bart@example.org",),
        body: bytes = b"Subject: hi\r\n\r\nbody\r\n",
        *,
        mail_params: str = "",
    ) -> Reply:
        """MAIL, RCPT..., DATA, body; returns the end-of-data reply (asserts the others)."""
        params = f" {mail_params}" if mail_params else ""
        reply = await self.cmd(f"MAIL FROM:<{mail_from}>{params}")
        assert reply.code == 250, reply
        for rcpt in rcpt_tos:
            reply = await self.cmd(f"RCPT TO:<{rcpt}>")
            assert reply.code == 250, reply
        reply = await self.cmd("DATA")
        assert reply.code == 354, reply
        await self.send(dot_stuff(body))
        return await self.reply()

    async def quit(self) -> None:
        reply = await self.cmd("QUIT")
        assert reply.codes == (221, "2.0.0"), reply
        await self.expect_eof()


class RecordingStream(trio.abc.Stream):
    """Wraps the server side of a memory pair; records every ``send_all`` (one per flush)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.closed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose ``accept()`` returns memory streams pushed by :meth:`connect`."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self.server_streams: list[RecordingStream] = []
        self.closed = False

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise trio.ClosedResourceError("memory listener closed") from exc

    async def aclose(self) -> None:
        self.closed = True
        self._receive.close()
        await trio.lowlevel.checkpoint()

    def inject(self, stream: trio.abc.Stream) -> None:
        """Hand the server any stream (a broken one, say) as its next accepted connection."""
        self._send.send_nowait(stream)

    async def connect(self, *, timeout: float = DEFAULT_READ_TIMEOUT) -> SMTPClient:
        """A new client connection; the server sees it on its next ``accept()``."""
        client_side, server_side = trio.testing.memory_stream_pair()
        recorded = RecordingStream(server_side)
        self.server_streams.append(recorded)
        self._send.send_nowait(recorded)
        await trio.lowlevel.checkpoint()
        return SMTPClient(client_side, recorded, timeout=timeout)


@dataclass
class MemoryServer:
    """What :func:`running_server` yields."""

    server: smtptrio.RunningServer
    listener: MemoryListener
    #: Set when ``serve_listeners`` returned on its own (after a shutdown).
    returned: trio.Event

    async def connect(self, **kwargs: Any) -> SMTPClient:
        return await self.listener.connect(**kwargs)

    async def greeted(self, **kwargs: Any) -> SMTPClient:
        """Connected, with the 220 greeting read."""
        client = await self.connect(**kwargs)
        await client.greeting()
        return client

    async def ehloed(self, name: str = "client.example", **kwargs: Any) -> SMTPClient:
        """Connected, greeted, and after a successful EHLO."""
        client = await self.greeted(**kwargs)
        await client.ehlo(name)
        return client


@asynccontextmanager
async def running_server(
    handler: object, *, smtp_class: type[SMTP] = SMTP, **options: Any
) -> AsyncIterator[MemoryServer]:
    """``serve_listeners`` on a :class:`MemoryListener`, cancelled when the block ends."""
    options.setdefault("hostname", "mx.example")
    listener = MemoryListener()
    returned = trio.Event()

    async def run(*, task_status: trio.TaskStatus[smtptrio.RunningServer]) -> None:
        await smtptrio.serve_listeners(
            handler, [listener], smtp_class=smtp_class, task_status=task_status, **options
        )
        returned.set()

    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(run)
            try:
                yield MemoryServer(server, listener, returned)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one leaf of a nested one-exception group (for readable test failures), else the group."""
    exc: BaseException = group
    for _ in range(100):
        if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        else:
            break
    return exc


async def open_connection_io(
    nursery: trio.Nursery,
    handler: object,
    *,
    peer: Any = ("203.0.113.5", 4321),
    smtp_class: type[SMTP] = SMTP,
    **options: Any,
) -> SMTPClient:
    """One session driven by ``ConnectionIO`` directly, for a chosen ``peer``.

    The listener route cannot give memory streams a peer address (``serve`` reads it from
    real sockets only), so tests of ``session.peer`` build the connection the way serve.py does.
    """
    from smtptrio.server.connection import ConnectionIO
    from smtptrio.server.options import build_options
    from smtptrio.server.serve import _Runtime

    options.setdefault("hostname", "mx.example")
    runtime = _Runtime(handler, build_options(options), smtp_class, options["hostname"])
    client_side, server_side = trio.testing.memory_stream_pair()
    recorded = RecordingStream(server_side)
    io = ConnectionIO(recorded, runtime.new_smtp(), runtime.config, runtime.options, peer=peer)
    nursery.start_soon(io.run)
    return SMTPClient(client_side, recorded)


class Recorder:
    """A handler that keeps every delivered envelope (and the session that sent it)."""

    def __init__(self, reply: str = "250 2.0.0 OK") -> None:
        self.reply = reply
        self.envelopes: list[Envelope] = []
        self.sessions: list[Session] = []
        self.delivered = trio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.sessions.append(session)
        self.delivered.set()
        return self.reply


@asynccontextmanager
async def serving_tcp(handler: object, **options: Any) -> AsyncIterator[smtptrio.RunningServer]:
    """``smtptrio.serve`` on 127.0.0.1, a free port; cancelled when the block ends."""
    options.setdefault("hostname", "mx.example")
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(smtptrio.serve, handler, host="127.0.0.1", port=0, **options)
            )
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None


async def tcp_client(port: int, *, timeout: float = DEFAULT_READ_TIMEOUT) -> SMTPClient:
    """A raw SMTPClient over a real TCP connection to 127.0.0.1."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    return SMTPClient(stream, timeout=timeout)


class CountingHooks(Recorder):
    """Counts every hook call (EHLO, NOOP, DATA), to show that refused connections reach none."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.calls += 1
        session.host_name = hostname
        return responses

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: Any
    ) -> str:
        self.calls += 1
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls += 1
        return await super().handle_DATA(server, session, envelope)


async def reply_while_trickling(
    client: SMTPClient, pieces: Iterable[bytes], interval: float, *, timeout: float
) -> Reply:
    """Send ``pieces`` one by one, ``interval`` seconds apart (each after a sleep), until the
    server replies; return that reply. The sending stops at the reply or a hang-up."""

    async def trickle() -> None:
        for piece in pieces:
            await trio.sleep(interval)
            try:
                await client.send(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        reply = await client.reply(timeout=timeout)
        nursery.cancel_scope.cancel()
    return reply
