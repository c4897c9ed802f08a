"""The per-connection task: stream bytes to the engine, events to hooks, replies back.

One :class:`ConnectionIO` per accepted connection. It owns the stream (swapped for a
``trio.SSLStream`` by STARTTLS), the protocol engine and the ``SMTP`` object, and one cancel
scope whose deadline is the idle deadline: moved forward by every complete line, paused while
a hook runs, and reached only when the client is idle or stalled (``421 4.4.2``).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import ssl
from collections.abc import Callable, Coroutine, Generator
from enum import Enum
from functools import lru_cache
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import trio

from smtptrio.protocol import replies
from smtptrio.protocol.connection import Connection, Phase
from smtptrio.protocol.events import (
    CLOSED,
    NEED_DATA,
    ConnectionLost,
    EndOfData,
    Event,
    Refused,
    Sentinel,
    StartTLS,
)
from smtptrio.protocol.proxy import ProxyHeaderReader
from smtptrio.protocol.replies import Reply
from smtptrio.server.hooks import HookTimeout
from smtptrio.server.session import is_missing
from smtptrio.server.tls import handshake, ssl_info

if TYPE_CHECKING:
    from smtptrio.protocol.config import Config
    from smtptrio.server.options import Options
    from smtptrio.server.smtp import SMTP

__all__ = ["ConnectionIO", "StopReason"]

log = logging.getLogger("smtptrio.connection")

_RECEIVE_SIZE = 65536
_CLOSE_TIMEOUT = 5.0


class StopReason(Enum):
    """Why the server ended a session on its own initiative."""

    #: The idle (or data-rate) deadline passed.
    TIMEOUT = "timeout"
    #: The server is shutting down.
    SHUTDOWN = "shutdown"


class ConnectionIO:
    """Drives one session: the I/O half of what aiosmtpd's SMTP protocol object does."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        smtp: SMTP,
        config: Config,
        options: Options,
        *,
        peer: Any,
        sockname: Any = None,
        shutting_down: Callable[[], bool] = lambda: False,
        admit_source: Callable[[str | None], Reply | None] | None = None,
    ) -> None:
        self._stream = stream
        self._fd = _plain_socket_fd(stream)
        self._fast_reads = 0
        self.smtp = smtp
        self.options = options
        self.conn = Connection(config)
        self.peer = peer
        # The local address: given, or looked up on first use (one syscall fewer per session:
        # only handlers asking for get_extra_info("sockname") need it).
        self._sockname = sockname
        # Set by request_shutdown(), or at once when the server is already shutting down; a
        # flag, as it is read before every receive.
        self._shutdown_requested = shutting_down()
        self._admit_source = admit_source
        self._scope = trio.CancelScope()
        # trio.current_time() is this clock's current_time() behind two more calls.
        self._clock = trio.lowlevel.current_clock()
        # The deadline last given to _scope (reading CancelScope.deadline is a property call).
        self._applied = math.inf
        # Input arrived since the last event: the next event is activity (see read_event).
        self._fresh_input = False
        self._timeout = options.timeout
        self._slack = min(1.0, options.timeout * 0.01)
        # A stalled handshake is an idle client too: never wait longer than the idle timeout.
        self._handshake_limit = min(options.tls_handshake_timeout, options.timeout)
        self._deadline = math.inf
        self._data_rate = options.min_data_rate
        self._waiting_idle = False
        self.stop_reason: StopReason | None = None
        self.messages = 0
        self.bytes_in = 0
        self.outcome = "open"
        smtp._conn = self.conn
        smtp._io = self

    @property
    def stream(self) -> trio.abc.Stream:
        """The stream in use: the accepted one, or the ``trio.SSLStream`` wrapped around it."""
        return self._stream

    @stream.setter
    def stream(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._fd = _plain_socket_fd(stream)

    @property
    def sockname(self) -> Any:
        """The local address of the connection (asyncio's ``sockname``), or None."""
        if self._sockname is None:
            transport: Any = self._stream
            for _ in range(8):  # TLS over a PROXY prefix over the socket, at most
                if isinstance(transport, trio.SSLStream):
                    transport = transport.transport_stream
                elif isinstance(transport, _Prefixed):
                    transport = transport._inner
                else:
                    break
            if isinstance(transport, trio.SocketStream):
                try:
                    self._sockname = transport.socket.getsockname()
                except OSError:
                    return None
        return self._sockname

    # ------------------------------------------------------------------ public to SMTP

    def extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's ``transport.get_extra_info`` names, for handlers that use them."""
        if name == "peername":
            return self.peer
        if name == "sockname":
            return self.sockname
        if isinstance(self.stream, trio.SSLStream):
            tls = self.stream
            if name == "sslcontext":
                return tls.context
            if name == "ssl_object":
                return tls
            if name == "peercert":
                return tls.getpeercert()
            if name == "cipher":
                return tls.cipher()
            if name == "compression":
                return tls.compression()
        return default

    async def run_hook(self, func: Callable[..., Any], *args: Any) -> Any:
        """Call a hook (sync or async) with the idle timer paused and under ``hook_timeout``.

        Most hooks never wait for anything. A plain function has returned by the time we
        look (nothing to time or pause, so no cancel scope); an async hook usually finishes
        at its first step, and costs one cancel scope entered without a deadline. Only a hook
        that does suspend gets its deadline armed and the idle timer paused: two deadline
        moves each way, which the profile showed as most of a hook's cost.
        """
        start = self._clock.current_time()
        try:
            result = func(*args)
            if type(result) is not CoroutineType and not inspect.isawaitable(result):
                return result
            limit = self.options.hook_timeout
            if limit is None:
                return await self._await_hook(result, None, 0.0)
            with trio.CancelScope() as hook_scope:
                # The hook's time counts from its call, even if it blocks before it awaits.
                return await self._await_hook(result, hook_scope, start + limit)
            raise HookTimeout(f"hook {getattr(func, '__name__', func)!r} exceeded {limit} s")
        finally:
            # The idle timer restarts when the hook returns, however it spent its time (a
            # plain function or an async hook may block without ever suspending). After a
            # hook that did not suspend this moves the deadline by microseconds, below the
            # slack: no trio call; after one that did, it ends the pause.
            self._touch()
            self._apply_deadline()

    async def _await_hook(
        self, result: Any, hook_scope: trio.CancelScope | None, hook_deadline: float
    ) -> Any:
        if type(result) is CoroutineType:
            # Run the coroutine to its first suspension. It runs inside the hook's cancel
            # scope already, so any scope it opens nests inside ours.
            try:
                trap = result.send(None)
            except StopIteration as done:
                return done.value
            result = _Resumed(result, trap)
        # It waits for something: pause the idle timer, arm the hook's deadline.
        if hook_scope is not None:
            hook_scope.deadline = hook_deadline
        self._scope.deadline = self._applied = math.inf  # run_hook ends the pause
        return await result

    async def read_event(self) -> Event | Sentinel:
        """The next event, receiving (and flushing replies first) as long as the engine needs."""
        conn = self.conn
        for _ in range(1 << 62):  # bounded by the stream: each turn reads or returns
            event = conn.next_event()
            if event is not NEED_DATA:
                if self._fresh_input:
                    # A complete command arrived: activity, and the idle deadline moves. One
                    # clock read per chunk received, not one per pipelined command.
                    self._fresh_input = False
                    if event is not CLOSED and type(event) is not ConnectionLost:
                        self._touch()
                return event
            # Flush the replies. They almost always fit the socket buffer, so on plain TCP
            # they are written right here, and only a short write awaits (in _write_rest).
            data = conn.data_to_send()
            wrote = False
            if data:
                wrote = True
                fd = self._fd
                sent = 0
                if fd is not None:
                    try:
                        sent = os.write(fd, data)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        raise trio.BrokenResourceError(f"socket write failed: {exc!r}") from exc
                if sent < len(data):
                    await self._write_rest(data, sent)
            if self._shutdown_requested and self._idle_now():
                self.stop_reason = StopReason.SHUTDOWN
                self.conn.send(replies.SERVICE_SHUTTING_DOWN)
                return CLOSED
            await self._receive(wrote)
        raise AssertionError("unreachable")  # pragma: no cover

    def request_shutdown(self) -> None:
        """Graceful shutdown: end now if idle, else at the end of the transaction."""
        self._shutdown_requested = True
        if self._waiting_idle:
            self.stop_reason = StopReason.SHUTDOWN
            self._scope.cancel()

    def force_close(self) -> None:
        """The grace period is over: end the session wherever it is."""
        self.stop_reason = StopReason.SHUTDOWN
        self._scope.cancel()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Greet, serve commands until QUIT, EOF, a closing reply, timeout or shutdown."""
        smtp = self.smtp
        session = smtp._create_session()
        session.peer = self.peer
        if isinstance(self.stream, trio.SSLStream):
            session.ssl = ssl_info(self.stream)
        smtp.session = session
        smtp.envelope = smtp._create_envelope()
        self._touch()
        if log.isEnabledFor(logging.INFO):
            log.info("session started", extra={"session_id": session.id, "peer": self.peer})
        try:
            ready = False
            with self._scope:  # a forced shutdown also ends a PROXY read or TLS handshake
                ready = await self._prelude()
                if ready:
                    self.conn.send(_greeting(smtp.hostname, smtp.__ident__))
                    await self._loop()
            if self._scope.cancelled_caught and ready:
                await self._stopped()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.outcome = f"disconnected ({type(exc).__name__})"
            log.info("connection lost", extra={"session_id": session.id, "error": repr(exc)})
        finally:
            await self._close()
            if log.isEnabledFor(logging.INFO):
                self._log_end(session.id)

    def _log_end(self, session_id: str) -> None:
        """The one structured line per session (issue #8): who, how, how much, how it ended."""
        log.info(
            "session ended",
            extra={
                "session_id": session_id,
                "peer": self.peer,
                "tls": isinstance(self.stream, trio.SSLStream),
                "auth_user": _auth_user(self.smtp.session),
                "messages": self.messages,
                "bytes": self.bytes_in,
                "outcome": self.outcome,
            },
        )

    async def _prelude(self) -> bool:
        """What comes before the greeting: the PROXY header, then implicit TLS (RFC 8314).

        Returns False when the connection must be closed without a reply.
        """
        if self.options.proxy_protocol_timeout is not None and not await self._read_proxy():
            return False
        ctx = self.options.ssl_context
        if ctx is not None:
            tls = await handshake(self.stream, ctx, self._handshake_limit, _sid(self.smtp))
            if tls is None:
                self.outcome = "TLS handshake failed"
                return False
            self.stream = tls
            assert self.smtp.session is not None
            self.smtp.session.ssl = ssl_info(tls)
        return True

    async def _read_proxy(self) -> bool:
        """Read the HAProxy PROXY header (v1 or v2) within ``proxy_protocol_timeout``.

        A missing, invalid or late header, or ``handle_PROXY`` saying no, closes the connection
        without a reply (as aiosmtpd does): a client that is not the proxy learns nothing.
        """
        smtp = self.smtp
        session = smtp.session
        assert session is not None and self.options.proxy_protocol_timeout is not None
        reader = ProxyHeaderReader()
        result = None
        with trio.move_on_after(self.options.proxy_protocol_timeout):
            for _ in range(1 << 20):  # each turn reads; the header is at most 64 KiB
                data = await self._stream.receive_some(4096)
                if not data:
                    break
                reader.feed(data)
                result = reader.result()
                if result is not None:
                    break
        if result is None or not result.valid:
            reason = "timeout or EOF" if result is None else str(result.error)
            log.warning(
                "PROXY header missing or invalid",
                extra={"session_id": session.id, "peer": self.peer, "error": reason},
            )
            self.outcome = "PROXY header missing or invalid"
            return False
        session.proxy_data = result
        hook = smtp.event_handler_hooks.handle_proxy
        ok: Any = False
        if hook is not None:
            try:
                ok = await self.run_hook(hook, smtp, session, smtp.envelope, result)
            except Exception:
                log.exception("handle_PROXY failed", extra={"session_id": session.id})
                ok = False
        if not ok or is_missing(ok):
            log.info("connection refused by handle_PROXY", extra={"session_id": session.id})
            self.outcome = "refused by handle_PROXY"
            return False
        if self._admit_source is not None:
            source = str(result.src_addr) if result.src_addr is not None else None
            if isinstance(result.src_addr, bytes):
                source = None  # a unix-socket source has no address to count
            refusal = self._admit_source(source)
            if refusal is not None:
                log.warning(
                    "connection refused by limit",
                    extra={"session_id": session.id, "source": source, "reply": refusal.code},
                )
                self.outcome = "refused by limit"
                with trio.move_on_after(5):
                    try:
                        await self._stream.send_all(refusal.render())
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                return False
        leftover = reader.leftover()
        if leftover:
            if self.options.ssl_context is not None:
                self.stream = _Prefixed(self._stream, leftover)
            else:
                self.conn.receive_data(leftover)
        return True

    async def _loop(self) -> None:
        conn = self.conn
        smtp = self.smtp
        for _ in range(1 << 62):  # ends on CLOSED or ConnectionLost
            event = await self.read_event()
            if event is CLOSED:
                await self._flush()
                self.outcome = self.outcome if self.outcome != "open" else "closed"
                return
            if isinstance(event, ConnectionLost):
                self.outcome = f"client closed{' during ' + event.during if event.during else ''}"
                if event.during:
                    log.warning(
                        "connection closed mid-command",
                        extra={"session_id": _sid(smtp), "during": event.during},
                    )
                return
            if isinstance(event, Refused):
                await self._error_pause(event.reply)
                reply = event.reply
                level = logging.WARNING if reply.code >= 500 or reply.closes else logging.INFO
                log.log(
                    level,
                    "command refused",
                    extra={
                        "session_id": _sid(smtp),
                        "verb": event.command,
                        "code": event.reply.code,
                        "enhanced": event.reply.enhanced,
                        "detail": event.detail,
                    },
                )
                continue
            assert isinstance(event, Event)
            if not smtp.dispatch_now(event):
                await smtp.dispatch(event)
            if isinstance(event, EndOfData):
                self.messages += 1
                self.bytes_in += len(event.content)
            elif (
                isinstance(event, StartTLS)
                and conn.phase is Phase.TLS_PENDING
                and not await self._start_tls()
            ):
                return
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_tls(self) -> bool:
        """RFC 3207: drop pipelined plaintext, handshake, start a new session."""
        smtp = self.smtp
        ctx = smtp.tls_context
        assert ctx is not None
        await self._flush()
        dropped = self.conn.start_tls()
        if dropped:
            log.warning(
                "plaintext pipelined after STARTTLS dropped",
                extra={"session_id": _sid(smtp), "octets": len(dropped)},
            )
        tls = await self._handshake(ctx)
        if tls is None:
            return False
        self.stream = tls
        old = smtp.session
        session = smtp._create_session()
        session.peer = self.peer
        if old is not None:
            session.proxy_data = old.proxy_data
        session.ssl = ssl_info(tls)
        smtp.session = session
        smtp.envelope = smtp._create_envelope()
        hook = smtp.event_handler_hooks.handle_starttls
        if hook is not None:
            try:
                ok = await self.run_hook(hook, smtp, session, smtp.envelope)
            except Exception:
                log.exception("handle_STARTTLS failed", extra={"session_id": session.id})
                ok = False
            if not ok and not is_missing(ok):
                log.warning("handle_STARTTLS refused the session", extra={"session_id": session.id})
                self.conn.refuse_after_tls()
        log.info("TLS started", extra={"session_id": session.id, "cipher": tls.cipher()})
        return True

    async def _handshake(self, ctx: ssl.SSLContext) -> trio.SSLStream[trio.abc.Stream] | None:
        self._scope.deadline = self._applied = math.inf
        tls = await handshake(self.stream, ctx, self._handshake_limit, _sid(self.smtp))
        self._touch()
        self._scope.deadline = self._applied = self._deadline
        if tls is None:
            self.outcome = "TLS handshake failed"
        return tls

    async def _error_pause(self, reply: Reply) -> None:
        """Slow down a client past the soft error limit (RFC 5321 section 7.8, Postfix style).

        The pause does not count as activity: the idle deadline keeps running.
        """
        soft = self.options.soft_error_limit
        if soft is not None and self.conn.error_count > soft and self.options.error_delay:
            # The error reply is queued last; replies before it (a pipelined burst) go out
            # now, the error after the pause, as Postfix's smtpd_error_sleep_time delays the
            # reply itself without holding back the others (RFC 2920).
            queued = self.conn.data_to_send()
            error = reply.render()
            if queued.endswith(error):
                before = queued[: len(queued) - len(error)]
                if before:
                    self.conn.send_raw(before)
                    await self._flush()
                self.conn.send_raw(error)
            else:  # pragma: no cover - the engine queues a refusal last
                self.conn.send_raw(queued)
            await trio.sleep(self.options.error_delay)

    # ------------------------------------------------------------------ I/O

    def _apply_deadline(self) -> None:
        """Give the idle deadline to the cancel scope, if it moved enough to be worth it.

        Moving a trio deadline costs a heap operation: an earlier one is applied at once, a
        later one only once it moved by 1% of the timeout (at most a second), so the timeout
        fires at most that much early. Hooks that wait pause it (run_hook).
        """
        deadline = self._deadline
        applied = self._applied
        if deadline < applied or deadline - applied >= self._slack:
            self._scope.deadline = self._applied = deadline

    def _touch(self) -> None:
        """Activity: the idle deadline moves forward (RFC 5321 section 4.5.3.2 timeouts)."""
        self._deadline = self._clock.current_time() + self._timeout

    def _idle_now(self) -> bool:
        conn = self.conn
        return conn.phase is Phase.COMMAND and not conn.in_transaction

    async def _flush(self) -> bool:
        """Write the queued replies; True when there were any."""
        data = self.conn.data_to_send()
        if not data:
            return False
        await self._write_rest(data, 0)
        return True

    async def _write_rest(self, data: bytes, sent: int) -> None:
        """Write ``data[sent:]``, waiting for the socket to drain when it is full.

        The scope's deadline is the one set before the last read (or after the last hook): a
        client that does not read its replies runs into it like an idle one.
        """
        fd = self._fd
        if fd is None:
            await self._stream.send_all(data[sent:] if sent else data)
            return
        # Plain TCP fast path: os.write, and trio's wait_writable only when the kernel pushes
        # back. This skips trio's per-call stream wrapper layers, which the profile showed as
        # most of the per-command cost; cancellation (the idle deadline) applies while waiting.
        view = memoryview(data)[sent:]
        for _ in range(1 << 40):  # ends when everything is written (each turn writes or waits)
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket write failed: {exc!r}") from exc
            if sent == len(view):
                return
            view = view[sent:]
        raise AssertionError("unreachable")  # pragma: no cover

    async def _receive(self, after_reply: bool = False) -> None:
        conn = self.conn
        self._waiting_idle = conn.phase is Phase.COMMAND and not conn.in_transaction
        self._apply_deadline()
        try:
            fd = self._fd
            data = None
            if fd is not None:
                # Plain TCP fast path (see _write_rest). Right after our replies went out, a
                # client that waits for them cannot have answered yet: give the other tasks
                # their turn first (a checkpoint, as trio's own send_all ends with), and by
                # the time we are back its next command has usually arrived, so the read
                # succeeds without registering with epoll. Otherwise read at once. Every 16th
                # read without a wait is a full checkpoint (a cancellation point too), so
                # that a client keeping the socket full, or answering instantly, still lets
                # other connections have their turn and sees a shutdown or its deadline.
                fast = self._fast_reads + 1
                if fast >= 16:
                    fast = 0
                    await trio.lowlevel.checkpoint()
                elif after_reply:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                self._fast_reads = fast
                try:
                    data = os.read(fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise trio.BrokenResourceError(f"socket read failed: {exc!r}") from exc
            if data is None:
                data = await self._read()
        finally:
            self._waiting_idle = False
        if data and self.stop_reason is StopReason.SHUTDOWN:
            # The server began to shut down while we waited for a command, and this one
            # arrived before the cancellation reached us: it must not start a transaction
            # that the pending cancellation would cut short. It gets 421 4.3.2 instead.
            conn.send(replies.SERVICE_SHUTTING_DOWN)
            return
        if data:
            self._fresh_input = True
            if conn.in_data:
                self._data_progress(len(data), b"\n" in data)
        conn.receive_data(data)

    async def _read(self) -> bytes:
        """The waiting read: trio's stream, or wait_readable then os.read on plain TCP."""
        fd = self._fd
        if fd is None:
            return bytes(await self._stream.receive_some(_RECEIVE_SIZE))
        self._fast_reads = 0
        for _ in range(1 << 40):  # ends on data or EOF (each turn waits, then reads)
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket read failed: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _data_progress(self, size: int, had_line_end: bool) -> None:
        """Move the deadline for message text that arrived (see the min_data_rate option).

        Once the message crossed a limit it is refused anyway and its octets are dropped, so
        nothing more extends the deadline: a client cannot keep a connection busy for ever by
        streaming what will be thrown away.
        """
        if self.conn.body_rejected:
            return
        now = trio.current_time()
        cap = now + self._timeout
        rate = self._data_rate
        if rate:
            # Postfix: each read buys size/rate seconds, never beyond the timeout from now.
            self._deadline = min(cap, max(self._deadline, now) + size / rate)
        elif had_line_end:
            # COMPAT D3: a complete line is activity; a partial one is not.
            self._deadline = cap

    async def _stopped(self) -> None:
        """Tell the client why we end the session (timeout or shutdown), then close."""
        if self.stop_reason is StopReason.SHUTDOWN:
            reply = replies.SERVICE_SHUTTING_DOWN
            self.outcome = "server shutdown"
        else:
            self.stop_reason = StopReason.TIMEOUT
            reply = replies.DATA_RATE_TOO_LOW if self.conn.in_data else replies.IDLE_TIMEOUT
            self.outcome = "timeout"
            log.warning(
                "session timed out",
                extra={"session_id": _sid(self.smtp), "in_data": self.conn.in_data},
            )
        with trio.move_on_after(_CLOSE_TIMEOUT):
            try:
                self.conn.data_to_send()  # whatever was queued is moot now
                await self.stream.send_all(reply.render())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _close(self) -> None:
        stream = self.stream
        if type(stream) is trio.SocketStream:
            # Closing a plain socket never waits on the peer, so there is nothing to time out
            # or to shield: close it here (what SocketStream.aclose does before its
            # checkpoint), one cancel scope and one deadline fewer per session.
            try:
                stream.socket.close()
            except OSError:
                pass
            return
        with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        if scope.cancelled_caught:
            await trio.aclose_forcefully(stream)


class _Resumed:
    """Await the rest of a coroutine that was stepped once by hand and suspended at ``trap``.

    What ``yield from`` would do: the trap goes to trio's run loop, whatever the run loop
    sends or throws back goes into the coroutine, and its return value is the result.
    """

    __slots__ = ("_coro", "_trap")

    def __init__(self, coro: Coroutine[Any, Any, Any], trap: Any) -> None:
        self._coro = coro
        self._trap = trap

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        trap = self._trap
        self._trap = None
        for _ in range(1 << 62):  # one turn per suspension of the hook
            try:
                sent = yield trap
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (or anything) thrown in: pass it on
                try:
                    trap = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    trap = coro.send(sent)
                except StopIteration as done:
                    return done.value
        raise AssertionError("unreachable")  # pragma: no cover


class _Prefixed(trio.abc.Stream):
    """A stream that first gives back bytes already read from it (after a PROXY header)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            cut = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:cut], self._prefix[cut:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


@lru_cache(maxsize=64)
def _greeting(hostname: str, ident: str) -> Reply:
    """The 220 greeting, built once per name rather than once per connection."""
    return Reply(220, None, (f"{hostname} {ident}",))


def _plain_socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of a plain TCP (or unix) socket stream, for the fast path."""
    if type(stream) is trio.SocketStream:
        return stream.socket.fileno()
    return None


def _sid(smtp: SMTP) -> str:
    return smtp.session.id if smtp.session is not None else "-"


def _auth_user(session: Any) -> str | None:
    if session is None or not session.authenticated:
        return None
    login = getattr(session.auth_data, "login", None)
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return None
