"""Run a server in a background thread, for synchronous code and tests (aiosmtpd's Controller).

The event loop lives in a thread started by anyio's blocking portal with the trio backend, a
well-kept implementation of exactly this. ``start()`` returns once ``serve`` has called
``task_status.started()``, that is once the socket is bound and accepting, so ``port=0`` works
and nothing ever connects to the server to find out whether it is up (aiosmtpd's controller
does, which shows up as a phantom session in handler logs). Errors raised while starting (a bad
option, a port in use) are raised by ``start()`` itself, in the caller's thread.

Differences from aiosmtpd 1.4.6, all deliberate (COMPAT.md section 1.3):

- ``factory()`` returns the keyword arguments for :func:`smtptrio.serve`, not an ``SMTP``
  instance: there is one ``SMTP`` object per connection, so a custom class is given as
  ``smtp_class``. Override it as ``return {**super().factory(), "smtp_class": MySMTP}``.
- ``stop()`` is graceful (idle sessions get ``421``, mid-transaction ones may finish within
  ``grace_period``) and idempotent; ``no_assert`` is accepted and has nothing left to do.
- ``start()`` on a running controller raises :class:`RuntimeError` (aiosmtpd: an assert).
- ``loop=`` is ignored with a :class:`DeprecationWarning`; ``AIOSMTPD_CONTROLLER_TIMEOUT`` is
  not read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import stat
import threading
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio.from_thread
import trio

from smtptrio.server.serve import serve, serve_listeners

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from smtptrio.server.serve import RunningServer

__all__ = ["DEFAULT_READY_TIMEOUT", "Controller", "UnixSocketController", "get_localhost"]

#: Seconds ``start()`` waits for the server to be listening.
DEFAULT_READY_TIMEOUT = 5.0
#: Seconds ``stop()`` lets sessions in the middle of a transaction finish.
DEFAULT_GRACE_PERIOD = 5.0


def get_localhost() -> str:
    """``"127.0.0.1"``, or ``"::1"`` on a host where IPv4 loopback cannot be bound."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and socket.has_ipv6:
            return "::1"
        raise
    return "127.0.0.1"


def _sole(exc: BaseException) -> BaseException:
    """The only leaf of nested single-member exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _ThreadedController:
    """What both controllers share: the portal thread, start, stop, the context manager."""

    def __init__(
        self,
        handler: Any,
        loop: object = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: dict[str, Any] | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        if loop is not None:
            warnings.warn(
                "Controller(loop=...) is ignored: smtptrio runs its own trio loop in a thread",
                DeprecationWarning,
                stacklevel=3,
            )
        self.handler = handler
        self.ready_timeout = float(ready_timeout)
        #: Implicit TLS (SMTPS) for every connection, as in aiosmtpd.
        self.ssl_context = ssl_context
        #: The options given to every ``SMTP`` (aiosmtpd's attribute name).
        self.SMTP_kwargs: dict[str, Any] = {}
        if server_kwargs is not None:
            warnings.warn(
                "server_kwargs is deprecated: give the SMTP options as keyword arguments",
                DeprecationWarning,
                stacklevel=3,
            )
            self.SMTP_kwargs.update(server_kwargs)
        self.SMTP_kwargs.update(SMTP_parameters)
        if server_hostname:
            self.SMTP_kwargs["hostname"] = server_hostname
        # aiosmtpd's controller turns SMTPUTF8 on unless told otherwise; so do we.
        self.SMTP_kwargs.setdefault("enable_SMTPUTF8", True)
        #: The running server (``.port``, ``.sockets``, ``.listeners``), None when stopped.
        self.server: RunningServer | None = None
        self._lock = threading.Lock()
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._task: Future[None] | None = None

    def factory(self) -> dict[str, Any]:
        """The keyword arguments for ``serve`` (the handler aside); override to adjust them.

        Called by every ``start()``, in the caller's thread, so an exception raised here is
        raised by ``start()``.
        """
        return {"ssl_context": self.ssl_context, **self.SMTP_kwargs}

    def _serve(self, options: dict[str, Any]) -> Callable[..., Awaitable[None]]:
        """The ``serve``-like coroutine function ``start()`` runs, bound to its arguments."""
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Cleanup once the server is gone."""

    async def _run(
        self, serve: Callable[..., Awaitable[None]], task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(self.ready_timeout):
                running = await nursery.start(serve)
                task_status.started(running)
                return  # the nursery keeps serving until shutdown or cancellation
            raise TimeoutError(
                f"the SMTP server was not listening after ready_timeout={self.ready_timeout}s"
            )

    def start(self) -> None:
        """Start the server thread; return once the server accepts connections.

        Raises:
            RuntimeError: if this controller is already running.
            TimeoutError: if the server was not listening within ``ready_timeout`` seconds.
            OSError: if the address cannot be bound (in use, not available, ...).
            ValueError, TypeError: for a bad option, from the server's validation.
        """
        with self._lock:
            if self._portal is not None:
                raise RuntimeError("SMTP server already running: call stop() first")
            serve = self._serve(self.factory())
            portal_cm = anyio.from_thread.start_blocking_portal(
                backend="trio", name=f"smtptrio-{type(self).__name__}"
            )
            portal = portal_cm.__enter__()
            failure: BaseException | None = None
            try:
                task, running = portal.start_task(self._run, serve, name=repr(self))
            except BaseException as exc:
                failure = _sole(exc)
                portal_cm.__exit__(None, None, None)
                self._after_stop()
            if failure is not None:
                raise failure  # outside the except block: no "during handling" group noise
            self._portal_cm, self._portal, self._task = portal_cm, portal, task
            self.server = running
            self._started(running)

    def _started(self, running: RunningServer) -> None:
        """Record what the caller may want to know about the server that just started."""

    def stop(self, no_assert: bool = False, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        """Shut the server down gracefully and end its thread; a no-op when not running.

        Idle sessions get ``421 4.3.2`` at once; sessions in a transaction may finish within
        ``grace_period`` seconds, then are closed. ``no_assert`` exists for aiosmtpd
        compatibility: stopping a stopped controller is never an error here.
        """
        with self._lock:
            portal, portal_cm, task, running = (
                self._portal,
                self._portal_cm,
                self._task,
                self.server,
            )
            self._portal = self._portal_cm = self._task = None
            self.server = None
            if portal is None or portal_cm is None:
                return
            try:
                if running is not None and task is not None and not task.done():
                    portal.call(partial(running.shutdown, grace_period=grace_period))
            finally:
                if task is not None:
                    task.cancel()
                portal_cm.__exit__(None, None, None)
                self._after_stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Controller(_ThreadedController):
    """A TCP server in a background thread: aiosmtpd's ``Controller`` constructor and methods.

    Args:
        handler: the handler object, as for :func:`smtptrio.serve`.
        hostname: the address to bind; default ``127.0.0.1`` (``::1`` on IPv6-only hosts).
        port: the port; 0 picks a free one, readable as ``.port`` after ``start()``.
        loop: ignored (DeprecationWarning): there is no asyncio loop.
        ready_timeout: seconds ``start()`` waits for the server to listen.
        ssl_context: implicit TLS (SMTPS) for every connection.
        server_hostname: the name in the greeting (the ``hostname`` option of ``SMTP``).
        server_kwargs: deprecated dict of more ``SMTP`` options.
        SMTP_parameters: the ``SMTP`` options (COMPAT.md section 4); ``enable_SMTPUTF8``
            defaults to True here, as in aiosmtpd's controller.
    """

    def __init__(
        self,
        handler: Any,
        hostname: str | None = None,
        port: int = 8025,
        loop: object = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: dict[str, Any] | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        super().__init__(
            handler,
            loop,
            ready_timeout=ready_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            **SMTP_parameters,
        )
        #: The address to bind (aiosmtpd's name for it).
        self.hostname = get_localhost() if hostname is None else hostname
        #: The port asked for; after ``start()``, the port really bound.
        self.port = port
        self._requested_port = port

    def _serve(self, options: dict[str, Any]) -> Callable[..., Awaitable[None]]:
        return partial(
            serve, self.handler, host=self.hostname, port=self._requested_port, **options
        )

    def _started(self, running: RunningServer) -> None:
        self.port = running.port

    def __repr__(self) -> str:
        return f"<smtptrio.Controller {self.hostname}:{self.port}>"


class UnixSocketController(_ThreadedController):
    """A server on a Unix domain socket in a background thread (aiosmtpd's name).

    The socket file is created by ``start()`` (a stale socket file left by a previous run is
    replaced; any other existing file is an error) and removed by ``stop()``.
    """

    def __init__(
        self,
        handler: Any,
        unix_socket: str | os.PathLike[str],
        loop: object = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_kwargs: dict[str, Any] | None = None,
        **SMTP_parameters: Any,
    ) -> None:
        super().__init__(
            handler,
            loop,
            ready_timeout=ready_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            server_kwargs=server_kwargs,
            **SMTP_parameters,
        )
        self.unix_socket = Path(unix_socket)
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we created
        self._sock: socket.socket | None = None

    def _serve(self, options: dict[str, Any]) -> Callable[..., Awaitable[None]]:
        sock = self._bind()
        ssl_context = options.pop("ssl_context", None)

        async def serve_unix(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            try:
                await serve_listeners(
                    self.handler,
                    [listener],
                    ssl_context=ssl_context,
                    task_status=task_status,
                    **options,
                )
            finally:
                sock.close()

        return serve_unix

    def _bind(self) -> socket.socket:
        path = self.unix_socket
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left over from a previous run (asyncio does the same)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        info = path.lstat()
        self._bound = (info.st_dev, info.st_ino)
        self._sock = sock
        return sock

    def _after_stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # if the server never started, nobody else will
            self._sock = None
        bound, self._bound = self._bound, None
        if bound is None:
            return
        with contextlib.suppress(FileNotFoundError):
            info = self.unix_socket.lstat()
            if (info.st_dev, info.st_ino) == bound:  # ours, not a newer server's
                self.unix_socket.unlink()

    def __repr__(self) -> str:
        return f"<smtptrio.UnixSocketController {str(self.unix_socket)!r}>"
