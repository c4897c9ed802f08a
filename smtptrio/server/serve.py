"""``serve`` and ``serve_listeners``: a nursery per listener, a task per connection.

Start a server with ``await nursery.start(smtptrio.serve, handler, ...)``: options are validated
and the sockets bound before ``start()`` returns (bad options and busy ports raise there), and it
returns a :class:`RunningServer` with the real port. ``RunningServer.shutdown()`` stops
accepting, tells idle clients ``421 4.3.2``, lets transactions finish within a grace period,
then closes what is left; ``serve`` returns once every connection is gone.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import warnings
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import trio

from smtptrio.protocol import replies
from smtptrio.protocol.config import Config
from smtptrio.server.connection import ConnectionIO
from smtptrio.server.hooks import HookTable
from smtptrio.server.options import Options, build_options
from smtptrio.server.smtp import SMTP

__all__ = ["RunningServer", "serve", "serve_listeners"]

log = logging.getLogger("smtptrio.server")

# accept() errors that mean "out of resources right now", not "this listener is broken";
# trio.serve_listeners treats the same set this way.
_ACCEPT_CAPACITY_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)


class RunningServer:
    """A server that is listening; returned by ``nursery.start(serve, ...)``."""

    def __init__(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        options: Options,
        hostname: str,
    ) -> None:
        self.listeners: list[trio.abc.Listener[Any]] = list(listeners)
        self.options = options
        #: The name used in the greeting and HELO/EHLO replies.
        self.hostname = hostname
        self._connections: set[ConnectionIO] = set()
        self._per_ip: Counter[str] = Counter()
        self._recent: dict[str, deque[float]] = {}
        self._accept_scopes: list[trio.CancelScope] = []
        self._shutting_down = False
        self._idle = trio.Event()
        self._idle.set()
        self._done = trio.Event()

    @property
    def sockets(self) -> list[trio.socket.SocketType]:
        """The listening sockets of the TCP listeners."""
        return [ln.socket for ln in self.listeners if isinstance(ln, trio.SocketListener)]

    @property
    def port(self) -> int:
        """The port of the first TCP listener (the real one when ``port=0`` was asked)."""
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port: int = sock.getsockname()[1]
                return port
        raise AttributeError("this server has no TCP listener")

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def shutdown(self, grace_period: float = 30.0) -> None:
        """Stop accepting, close idle sessions with 421, wait up to ``grace_period`` for the rest.

        Sessions in the middle of a transaction may finish it (and get their 250) within the
        grace period; each is closed with ``421 4.3.2`` as soon as it is idle again. After the
        grace period the remaining sessions are closed wherever they are.
        """
        if grace_period < 0:
            raise ValueError(f"grace_period must be >= 0, got {grace_period!r}")
        if not self._shutting_down:
            self._shutting_down = True
            log.info("shutting down", extra={"connections": len(self._connections)})
            for scope in self._accept_scopes:
                scope.cancel()
            for io in list(self._connections):
                io.request_shutdown()
        with trio.move_on_after(grace_period):
            await self._idle.wait()
        for io in list(self._connections):
            io.force_close()
        await self._idle.wait()
        await self._done.wait()

    # ------------------------------------------------------------------ internals

    def _admit(self, ip: str | None) -> replies.Reply | None:
        opts = self.options
        if opts.max_connections is not None and len(self._connections) >= opts.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        limit = opts.max_connections_per_ip
        if (
            ip is not None
            and limit is not None
            and ip not in opts.connection_limit_exempt
            and self._per_ip[ip] >= limit
        ):
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        return None

    def _rate_exceeded(self, ip: str | None) -> bool:
        """Count a new connection from ``ip`` in its sliding window; True if over the limit."""
        opts = self.options
        limit = opts.connection_rate_limit
        if ip is None or limit is None or ip in opts.connection_limit_exempt:
            return False
        now = trio.current_time()
        horizon = now - opts.connection_rate_window
        if len(self._recent) > 4096:  # forget quiet addresses, so the table stays small
            for key in [k for k, q in self._recent.items() if not q or q[-1] < horizon]:
                del self._recent[key]
        times = self._recent.setdefault(ip, deque())
        while times and times[0] < horizon:
            times.popleft()
        if len(times) >= limit:
            return True
        times.append(now)
        return False

    def _admit_address(self, ip: str) -> replies.Reply | None:
        """The per-address rules alone (rate, then count), for a PROXY source."""
        if self._rate_exceeded(ip):
            return replies.CONNECTION_RATE_EXCEEDED
        limit = self.options.max_connections_per_ip
        exempt = ip in self.options.connection_limit_exempt
        if limit is not None and not exempt and self._per_ip[ip] >= limit:
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        return None

    def _recount(self, ip: str) -> None:
        """Count a registered connection against ``ip`` from now on (its PROXY source)."""
        self._per_ip[ip] += 1

    def _register(self, io: ConnectionIO, ip: str | None) -> None:
        self._connections.add(io)
        if ip is not None:
            self._per_ip[ip] += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _unregister(self, io: ConnectionIO, ip: str | None) -> None:
        self._connections.discard(io)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
        if not self._connections:
            self._idle.set()


def _peer_of(stream: trio.abc.Stream) -> Any:
    """The peer address; the local one is looked up by ConnectionIO when a handler asks."""
    sock_stream = stream
    while isinstance(sock_stream, trio.SSLStream):
        sock_stream = sock_stream.transport_stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            peer = sock_stream.socket.getpeername()
        except OSError:
            peer = None
        if isinstance(peer, bytes):
            peer = peer.decode()
        return peer
    return None


def _ip_of(peer: Any) -> str | None:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


class _Runtime:
    """What every connection of one server shares: options, hooks, engine config, SMTP class."""

    def __init__(
        self, handler: object, options: Options, smtp_class: type[SMTP], hostname: str
    ) -> None:
        self.handler = handler
        self.options = options
        self.smtp_class = smtp_class
        self.hooks = HookTable.for_handler(handler)
        self.hostname = hostname
        template = smtp_class._for_connection(handler, options, self.hooks)
        if options.proxy_protocol_timeout is not None and self.hooks.handle_proxy is None:
            log.warning(
                "proxy_protocol_timeout is set but the handler has no handle_PROXY hook: "
                "every connection will be closed"
            )
            warnings.warn(
                "proxy_protocol_timeout is set but the handler has no handle_PROXY hook: "
                "every connection will be closed",
                UserWarning,
                stacklevel=4,
            )
        self.config: Config = template.protocol_config()

    def new_smtp(self) -> SMTP:
        smtp = self.smtp_class._for_connection(self.handler, self.options, self.hooks)
        smtp.hostname = self.hostname
        return smtp


async def _handle(stream: trio.abc.Stream, runtime: _Runtime, server: RunningServer) -> None:
    peer = _peer_of(stream)
    ip = _ip_of(peer)
    # Behind the PROXY protocol the socket peer is the proxy: per-address limits apply to the
    # source the PROXY header names, once it has been read (COMPAT.md section 4).
    proxied = runtime.options.proxy_protocol_timeout is not None
    counted: list[str | None] = [None if proxied else ip]
    try:
        refusal = _admit_or_refuse(server, counted[0])
        if refusal is not None:
            log.warning("connection refused by limit", extra={"peer": peer, "reply": refusal.code})
            with trio.move_on_after(5):
                try:
                    await stream.send_all(refusal.render())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        smtp = runtime.new_smtp()

        def admit_source(source: str | None) -> replies.Reply | None:
            if source is None:
                return None
            refusal = server._admit_address(source)
            if refusal is None:
                server._recount(source)
                counted[0] = source
            return refusal

        io = ConnectionIO(
            stream,
            smtp,
            runtime.config,
            runtime.options,
            peer=peer,
            shutting_down=lambda: server.shutting_down,
            admit_source=admit_source if proxied else None,
        )
        server._register(io, counted[0])
        try:
            await io.run()
        finally:
            server._unregister(io, counted[0])
    except Exception:
        # One broken connection never takes the server down (ARCHITECTURE.md section 3).
        log.exception("connection task failed", extra={"peer": peer})
        await trio.aclose_forcefully(stream)


def _admit_or_refuse(server: RunningServer, ip: str | None) -> replies.Reply | None:
    if server.shutting_down:
        return replies.SERVICE_SHUTTING_DOWN
    if server._rate_exceeded(ip):
        return replies.CONNECTION_RATE_EXCEEDED
    return server._admit(ip)


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    runtime: _Runtime,
    server: RunningServer,
    scope: trio.CancelScope,
) -> None:
    """One listener: accept until shutdown, then wait for this listener's connections."""
    # The scope exists before this task runs (see serve_listeners), so a shutdown() right
    # after start() still stops this loop.
    async with trio.open_nursery() as connections:
        with scope:
            for _ in range(1 << 62):  # ends by cancellation at shutdown
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                        log.error("accept() out of resources; pausing", extra={"errno": exc.errno})
                        await trio.sleep(0.1)
                        continue
                    raise
                connections.start_soon(_handle, stream, runtime, server)
        try:
            await listener.aclose()
        except (trio.ClosedResourceError, OSError):
            pass


async def _resolve_hostname(options: Options) -> str:
    if options.hostname:
        return options.hostname
    # getfqdn may wait on DNS: off the event loop, and bounded.
    with trio.move_on_after(5):
        return await trio.to_thread.run_sync(socket.getfqdn, abandon_on_cancel=True)
    return "localhost"


async def serve_listeners(
    handler: object,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    ssl_context: ssl.SSLContext | None = None,
    smtp_class: type[SMTP] = SMTP,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve SMTP on listeners you made (unix sockets, memory listeners in tests, ...).

    Args:
        handler: an aiosmtpd-style handler object; its hooks are resolved once, here.
        listeners: trio listeners; each gets its own nursery of connection tasks.
        ssl_context: implicit TLS (SMTPS): every connection starts with a handshake.
        smtp_class: an ``SMTP`` subclass that adds commands or AUTH mechanisms.
        **options: the options of ``smtptrio.server.options.Options`` (aiosmtpd's names).
    Raises:
        TypeError, ValueError: for bad options, before anything is served.
    """
    if ssl_context is not None:
        options["ssl_context"] = ssl_context
    opts = options.pop("_options", None) or build_options(options)
    if not (isinstance(smtp_class, type) and issubclass(smtp_class, SMTP)):
        raise TypeError(f"smtp_class must be a subclass of smtptrio.SMTP, got {smtp_class!r}")
    hostname = await _resolve_hostname(opts)
    runtime = _Runtime(handler, opts, smtp_class, hostname)
    server = RunningServer(listeners, opts, hostname)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                scope = trio.CancelScope()
                server._accept_scopes.append(scope)
                nursery.start_soon(_accept_loop, listener, runtime, server, scope)
            log.info("listening", extra={"listeners": len(listeners)})
            task_status.started(server)
    finally:
        server._done.set()


async def serve(
    handler: object,
    *,
    host: str | None = "localhost",
    port: int = 8025,
    ssl_context: ssl.SSLContext | None = None,
    smtp_class: type[SMTP] = SMTP,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve SMTP on ``host:port`` until cancelled or shut down.

    ``port=0`` picks a free port (``RunningServer.port`` tells which). When ``host`` resolves
    to several addresses (``localhost`` to 127.0.0.1 and ::1) all are bound on the same port.

    Raises:
        TypeError, ValueError: for bad options (before binding).
        OSError: when the address cannot be bound (in use, permission).
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an integer, got {type(port).__name__} {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    if ssl_context is not None:
        options["ssl_context"] = ssl_context
    opts = build_options(options)
    listeners = await _open_listeners(host, port)
    try:
        await serve_listeners(
            handler, listeners, smtp_class=smtp_class, task_status=task_status, _options=opts
        )
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                try:
                    await listener.aclose()
                except (trio.ClosedResourceError, OSError):
                    pass


async def _open_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port != 0 or len(listeners) < 2:
        return listeners
    # Port 0 gave each address its own port; keep the first and bind the others to its port,
    # so a client that resolves the name differently still finds us.
    first, *others = listeners
    real = first.socket.getsockname()[1]
    result = [first]
    for other in others:
        addr = other.socket.getsockname()[0]
        await other.aclose()
        try:
            result.extend(await trio.open_tcp_listeners(real, host=addr))
        except OSError:
            log.debug("could not bind the extra address", extra={"address": addr, "port": real})
    return result

