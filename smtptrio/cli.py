"""The ``smtptrio`` command: ``python -m aiosmtpd``'s options, plus limits, AUTH and workers.

``smtptrio [serve] [options] [CLASSARGS...]`` runs a server until SIGINT or SIGTERM, which start
a graceful shutdown (a second signal cuts it short); ``smtptrio hash-password [USER]`` prints a
line for an ``--auth-file``. Every mistake a user can make on the command line or in the files
it names ends as one ``smtptrio: error: ...`` line and exit status 2, never a traceback: a
traceback would say "bug" when the fix is in the user's hands.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import getpass
import importlib
import inspect
import io
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from smtptrio.__about__ import __version__
from smtptrio.auth_file import AuthFile, AuthFileError, check_user_name, hash_password

if TYPE_CHECKING:
    from smtptrio.server.serve import RunningServer

__all__ = ["main"]

log = logging.getLogger(__name__)

PROG = "smtptrio"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8025
DEFAULT_CLASS = "smtptrio.handlers.Debugging"
DEFAULT_GRACE_PERIOD = 30.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long a worker may take to report that it is listening.
_WORKER_START_TIMEOUT = 60.0
#: Dead workers are restarted, unless this many were restarted within the window (seconds):
#: then something is wrong with every worker, and the supervisor stops rather than spin.
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0


class UsageError(Exception):
    """A mistake the user can fix; ``main`` prints the message as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), so every failure looks the same."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


# --------------------------------------------------------------------------------------------
# Arguments


def _serve_parser() -> _Parser:
    p = _Parser(
        prog=f"{PROG} [serve]",
        description="Run an SMTP server (RFC 5321) on trio. Handlers are aiosmtpd-compatible.",
        epilog=f"'{PROG} hash-password [USER]' prints a user:hash line for --auth-file.",
    )
    add = p.add_argument
    add("-v", "--version", action="version", version=f"{PROG} {__version__}")
    add(
        "-n",
        "--nosetuid",
        dest="setuid",
        action="store_false",
        help="stay the current user; otherwise, when started as root, switch to 'nobody' "
        "once the socket is bound",
    )
    add(
        "-c",
        "--class",
        dest="classpath",
        metavar="CLASSPATH",
        default=DEFAULT_CLASS,
        help=f"handler class as a dotted import path (default {DEFAULT_CLASS}); CLASSARGS go "
        "to its from_cli(parser, *args)",
    )
    add(
        "-s",
        "--size",
        metavar="SIZE",
        type=int,
        help="largest message in bytes, advertised with SIZE (RFC 1870); 0 means unlimited "
        "(default 33554432)",
    )
    add("-u", "--smtputf8", action="store_true", help="offer SMTPUTF8 (RFC 6531)")
    add(
        "-d",
        "--debug",
        action="count",
        default=0,
        help="more logging: -d INFO, -dd DEBUG, -ddd DEBUG for every library and all warnings",
    )
    add(
        "-l",
        "--listen",
        metavar="[HOST][:PORT]",
        nargs="?",
        default=None,
        help=f"address to listen on (default {DEFAULT_HOST}:{DEFAULT_PORT}); IPv6 as "
        "[::1]:8025; port 0 picks a free port, shown in the start-up line",
    )
    add("-t", "--tlscert", metavar="CERTFILE", type=Path, help="certificate (PEM) for STARTTLS")
    add("-k", "--tlskey", metavar="KEYFILE", type=Path, help="private key (PEM) for STARTTLS")
    add(
        "--no-requiretls",
        dest="requiretls",
        action="store_false",
        help="with a certificate, do not require STARTTLS before mail commands",
    )
    add(
        "--smtps",
        action="store_true",
        help="use --tlscert/--tlskey for implicit TLS (SMTPS, RFC 8314) instead of STARTTLS",
    )
    add("--smtpscert", metavar="CERTFILE", type=Path, help="certificate for SMTPS (aiosmtpd)")
    add("--smtpskey", metavar="KEYFILE", type=Path, help="private key for SMTPS (aiosmtpd)")
    add("--hostname", metavar="NAME", help="name in the greeting (default: this host's FQDN)")
    add("--timeout", metavar="SECONDS", type=float, help="idle timeout (default 300)")
    add("--max-connections", metavar="N", type=int, help="simultaneous connections (512)")
    add(
        "--max-connections-per-ip",
        metavar="N",
        type=int,
        help="simultaneous connections from one address (50; 0: unlimited)",
    )
    add("--max-recipients", metavar="N", type=int, help="recipients per message (1000)")
    add(
        "--proxy-protocol",
        metavar="SECONDS",
        type=float,
        help="every connection starts with a HAProxy PROXY header (v1 or v2), read within "
        "SECONDS; the session then sees the original client's address in session.proxy_data",
    )
    add(
        "--proxy-from",
        metavar="NETWORK",
        action="append",
        default=[],
        help="with --proxy-protocol: accept PROXY headers only from this address or network "
        "(repeatable; default: from anywhere)",
    )
    add(
        "--auth-file",
        metavar="PATH",
        type=Path,
        help="offer AUTH LOGIN/PLAIN for the user:hash lines of this file",
    )
    add("--auth-required", action="store_true", help="refuse mail until AUTH succeeded")
    add(
        "--no-auth-require-tls",
        dest="auth_require_tls",
        action="store_false",
        help="offer AUTH without TLS too (passwords cross the network in clear)",
    )
    add(
        "--grace-period",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        help="on SIGINT/SIGTERM, how long sessions mid-transaction may finish (default 30)",
    )
    add(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text, or one JSON object per line",
    )
    add(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="N processes sharing the address with SO_REUSEPORT (Linux)",
    )
    add(
        "classargs",
        metavar="CLASSARGS",
        nargs="*",
        default=[],
        help="arguments for the handler class",
    )
    return p


def _hash_parser() -> _Parser:
    p = _Parser(
        prog=f"{PROG} hash-password",
        description="Read a password (prompted on a terminal, else one line of standard input) "
        "and print the line to add to an --auth-file. Without USER, print only the hash.",
    )
    p.add_argument("user", metavar="USER", nargs="?", help="the user name")
    return p


def _parse_listen(value: str | None) -> tuple[str, int]:
    """``[HOST][:PORT]``, as aiosmtpd reads it, plus bracketed IPv6: ``[::1]:25``."""
    if value is None:
        return DEFAULT_HOST, DEFAULT_PORT
    if value.startswith("["):
        address, bracket, rest = value[1:].partition("]")
        if not bracket or not address or (rest and not rest.startswith(":")):
            raise UsageError(f"invalid --listen {value!r}: expected [IPV6]:PORT, e.g. [::1]:8025")
        host, port = address, rest[1:]
    elif value.count(":") > 1:
        raise UsageError(
            f"invalid --listen {value!r}: put an IPv6 address in brackets, e.g. [::1]:8025"
        )
    else:
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    if not port:
        number = DEFAULT_PORT
    elif port.isdigit() and int(port) <= 65535:
        number = int(port)
    else:
        raise UsageError(f"invalid port number {port!r} in --listen (0 to 65535)")
    return host or DEFAULT_HOST, number


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context from PEM files, or a :class:`UsageError` naming the file at fault."""
    contents = {}
    for what, path in (("certificate", cert), ("key", key)):
        try:
            contents[what] = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read TLS {what} file {path}: {exc.strerror}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in contents["certificate"]:
        raise UsageError(f"TLS certificate file {cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in contents["key"]:
        raise UsageError(f"TLS key file {key} holds no PEM private key")
    if b"ENCRYPTED" in contents["key"]:
        raise UsageError(f"TLS key file {key} is encrypted; give an unencrypted key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # The password callback keeps OpenSSL from prompting on the terminal.
        context.load_cert_chain(str(cert), str(key), password=lambda: "")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"TLS key {key} does not belong to certificate {cert}") from exc
        raise UsageError(
            f"cannot load TLS certificate {cert} with key {key}: {exc.reason or exc}"
        ) from exc
    return context


def _load_handler(parser: _Parser, classpath: str, classargs: Sequence[str]) -> object:
    module_name, dot, name = classpath.rpartition(".")
    if not dot or not module_name or not name:
        raise UsageError(f"--class needs a dotted path like pkg.module.Class, got {classpath!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import handler module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise UsageError(
            f"importing handler module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        handler_class = getattr(module, name)
    except AttributeError:
        try:
            importlib.import_module(classpath)
        except ImportError:
            raise UsageError(f"module {module_name!r} has no attribute {name!r}") from None
        raise UsageError(f"{classpath} is a module, not a class") from None
    if not inspect.isclass(handler_class):
        raise UsageError(f"{classpath} is not a class")
    from_cli = getattr(handler_class, "from_cli", None)
    try:
        if from_cli is not None:
            return from_cli(parser, *classargs)
        if classargs:
            raise UsageError(f"handler class {classpath} takes no arguments")
        return handler_class()
    except (UsageError, SystemExit):
        raise
    except Exception as exc:
        raise UsageError(f"cannot create handler {classpath}: {type(exc).__name__}: {exc}") from exc


@dataclass(kw_only=True)
class _Config:
    """Everything ``serve`` needs, checked before anything binds."""

    handler: object
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    options: dict[str, Any]
    grace_period: float
    setuid: bool
    workers: int
    notes: list[str] = field(default_factory=list)  # extra words for the start-up line


def _configure(parser: _Parser, ns: argparse.Namespace) -> _Config:
    host, port = _parse_listen(ns.listen)
    options: dict[str, Any] = {"enable_SMTPUTF8": ns.smtputf8}
    for option, value in (
        ("data_size_limit", ns.size),
        ("hostname", ns.hostname),
        ("timeout", ns.timeout),
        ("max_connections", ns.max_connections),
        ("max_recipients", ns.max_recipients),
    ):
        if value is not None:
            options[option] = value
    if ns.max_connections_per_ip is not None:
        options["max_connections_per_ip"] = ns.max_connections_per_ip or None
    if ns.grace_period < 0:
        raise UsageError(f"--grace-period must be >= 0 seconds, got {ns.grace_period}")
    if ns.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {ns.workers}")
    if ns.workers > 1 and not (hasattr(socket, "SO_REUSEPORT") and hasattr(os, "fork")):
        raise UsageError("--workers > 1 needs SO_REUSEPORT and fork(), which this platform lacks")

    notes: list[str] = []
    if bool(ns.tlscert) != bool(ns.tlskey):
        raise UsageError("--tlscert and --tlskey must be given together")
    if bool(ns.smtpscert) != bool(ns.smtpskey):
        raise UsageError("--smtpscert and --smtpskey must be given together")
    if ns.smtps and not ns.tlscert:
        raise UsageError("--smtps needs --tlscert and --tlskey")
    ssl_context = None
    if ns.smtpscert:
        ssl_context = _tls_context(ns.smtpscert, ns.smtpskey)
    if ns.tlscert:
        context = _tls_context(ns.tlscert, ns.tlskey)
        if ns.smtps:
            ssl_context = context
        else:
            options["tls_context"] = context
            options["require_starttls"] = ns.requiretls
            notes.append("STARTTLS required" if ns.requiretls else "STARTTLS")
    if ssl_context is not None:
        notes.append("SMTPS")

    if ns.auth_file is not None:
        try:
            auth = AuthFile(ns.auth_file)
        except AuthFileError as exc:
            raise UsageError(str(exc)) from exc
        # verify_async: the server awaits awaitable results, so scrypt runs in a worker thread.
        options["authenticator"] = auth.verify_async
        notes.append(f"AUTH for {len(auth.users)} user(s)")
        if ns.auth_require_tls and "tls_context" not in options and ssl_context is None:
            log.warning(
                "AUTH is only offered over TLS: add --tlscert/--tlskey or --no-auth-require-tls"
            )
    if ns.auth_required:
        options["auth_required"] = True
    if not ns.auth_require_tls:
        options["auth_require_tls"] = False

    handler = _load_handler(parser, ns.classpath, ns.classargs)
    if ns.proxy_from and ns.proxy_protocol is None:
        raise UsageError("--proxy-from needs --proxy-protocol")
    if ns.proxy_protocol is not None:
        options["proxy_protocol_timeout"] = ns.proxy_protocol
        if not callable(getattr(handler, "handle_PROXY", None)):
            _install_proxy_gate(handler, ns.proxy_from)
        notes.append("PROXY protocol")
    if ns.auth_required and ns.auth_file is None and not _has_auth_mechanisms(handler):
        raise UsageError("--auth-required needs --auth-file, or nobody could send mail")
    return _Config(
        handler=handler,
        host=host,
        port=port,
        ssl_context=ssl_context,
        options=options,
        grace_period=ns.grace_period,
        setuid=ns.setuid,
        workers=ns.workers,
        notes=notes,
    )


def _install_proxy_gate(handler: object, sources: Sequence[str]) -> None:
    """Give a handler without ``handle_PROXY`` one that trusts the listed proxy addresses.

    smtptrio closes every connection when PROXY is on and no hook accepts it (a PROXY header
    from anyone would let them pick the address we log and limit by), so the CLI supplies the
    common policy: accept headers from these networks, or from anywhere if none is given.
    """
    try:
        networks = [ipaddress.ip_network(s, strict=False) for s in sources]
    except ValueError as exc:
        raise UsageError(f"--proxy-from: {exc}") from None

    def handle_PROXY(server: Any, session: Any, envelope: Any, proxy_data: Any) -> bool:
        if not networks:
            return True
        peer = session.peer
        try:
            address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
        except (TypeError, ValueError, IndexError):
            return False
        return any(address in network for network in networks)

    try:
        handler.handle_PROXY = handle_PROXY  # type: ignore[attr-defined]  # duck-typed hook
    except AttributeError:
        raise UsageError(
            "--proxy-protocol: the handler has no handle_PROXY hook and none can be added"
        ) from None


def _has_auth_mechanisms(handler: object) -> bool:
    return any(
        name.startswith("auth_") and callable(getattr(handler, name, None)) for name in dir(handler)
    )


# --------------------------------------------------------------------------------------------
# Logging


_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}


class _TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: the message is constant, the values follow."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _extras(record).items()
        )
        if not extras:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} {extras}{newline}{rest}"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        data: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data[f"extra_{key}" if key in data else key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def _configure_logging(debug: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug >= 3 else logging.WARNING)
    ours = logging.getLogger("smtptrio")
    ours.setLevel({0: logging.WARNING, 1: logging.INFO}.get(debug, logging.DEBUG))
    logging.captureWarnings(True)
    if debug >= 3:
        warnings.simplefilter("default")


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


# --------------------------------------------------------------------------------------------
# Running


#: The command-line flag behind each server option, to name it in error messages.
_FLAGS = {
    "data_size_limit": "-s/--size",
    "hostname": "--hostname",
    "timeout": "--timeout",
    "max_connections": "--max-connections",
    "max_connections_per_ip": "--max-connections-per-ip",
    "max_recipients": "--max-recipients",
    "proxy_protocol_timeout": "--proxy-protocol",
}


def _describe_start_error(exc: BaseException, host: str, port: int) -> str | None:
    """The one-line message for an error ``serve`` raised before listening, if it is ours."""
    where = _where(host, port)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host!r}: {exc.strerror}"
    if isinstance(exc, OSError):
        reason = {
            errno.EADDRINUSE: "address already in use",
            errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            errno.EADDRNOTAVAIL: "address not available on this host",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        return f"cannot listen on {where}: {reason}"
    if isinstance(exc, ValueError | TypeError):
        option = str(exc).split(" ", 1)[0]
        flag = _FLAGS.get(option)
        return f"argument {flag}: {exc}" if flag else f"invalid option: {exc}"
    return None


def _sole(exc: BaseException) -> BaseException:
    """The only leaf of nested single-member exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _start(
    nursery: trio.Nursery, start: Callable[..., Awaitable[None]], host: str, port: int
) -> RunningServer:
    try:
        running: RunningServer = await nursery.start(start)
    except Exception as exc:
        message = _describe_start_error(_sole(exc), host, port)
        if message is None:
            raise
        raise UsageError(message) from exc
    return running


def _drop_privileges(enabled: bool) -> None:
    """When root and not ``-n``: become ``nobody`` (groups first, so none are left behind)."""
    if not enabled or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    except (ImportError, KeyError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "no such user"
        raise UsageError(
            f"cannot switch to user 'nobody' ({reason}); use -n to keep running as root"
        ) from exc


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(sockets: Sequence[Any], host: str, port: int) -> str:
    """The bound addresses, for the start-up line (port 0 shows the port the kernel chose)."""
    names = [
        _where(str(a[0]), int(a[1]))
        for a in (s.getsockname() for s in sockets)
        if isinstance(a, tuple)
    ]
    return ", ".join(names) or _where(host, port)


def _announce(config: _Config, where: str) -> None:
    words = [f"handler {type(config.handler).__name__}", *config.notes]
    if config.workers > 1:
        words.append(f"{config.workers} workers")
    print(
        f"{PROG} {__version__} listening on {where} ({', '.join(words)})",
        file=sys.stderr,
        flush=True,
    )


async def _wait_for_stop(
    signals: AsyncIterator[int], stopped: trio.Event, lifeline: int | None
) -> str:
    """Until the first signal, the server ending on its own, or the supervisor going away."""
    reason = "server stopped"
    async with trio.open_nursery() as waiting:

        async def on_signal() -> None:
            nonlocal reason
            async for signum in signals:
                reason = signal.Signals(signum).name
                break
            waiting.cancel_scope.cancel()

        async def on_stopped() -> None:
            await stopped.wait()
            waiting.cancel_scope.cancel()

        async def on_lifeline(fd: int) -> None:
            nonlocal reason
            # The supervisor holds the write end and never writes: EOF means it is gone.
            async with trio.lowlevel.FdStream(os.dup(fd)) as stream:
                while await stream.receive_some(64):
                    pass
            reason = "supervisor exited"
            waiting.cancel_scope.cancel()

        waiting.start_soon(on_signal)
        waiting.start_soon(on_stopped)
        if lifeline is not None:
            waiting.start_soon(on_lifeline, lifeline)
    return reason


async def _force_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, outcome: list[int]
) -> None:
    """The second signal cancels everything; a third one exits on the spot."""
    async for signum in signals:
        if outcome:
            os._exit(128 + signum)
        log.warning(
            "second signal: closing every connection now",
            extra={"signal": signal.Signals(signum).name},
        )
        outcome.append(128 + signum)
        scope.cancel()


async def _serve_until_signalled(
    config: _Config,
    start: Callable[..., Awaitable[None]],
    on_started: Callable[[RunningServer], None],
    *,
    lifeline: int | None = None,
) -> int:
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        if lifeline is not None:  # a worker: the supervisor blocked these until now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        stopped = trio.Event()

        async def run_server(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await start(task_status=task_status)
            finally:
                stopped.set()

        forced: list[int] = []
        async with trio.open_nursery() as nursery:
            running = await _start(nursery, run_server, config.host, config.port)
            on_started(running)
            reason = await _wait_for_stop(signals, stopped, lifeline)
            if not stopped.is_set():
                log.info(
                    "shutting down", extra={"reason": reason, "grace_period": config.grace_period}
                )
                nursery.start_soon(_force_on_signal, signals, nursery.cancel_scope, forced)
                await running.shutdown(grace_period=config.grace_period)
            nursery.cancel_scope.cancel()
    log.info("stopped")
    return forced[0] if forced else 0


async def _run_single(config: _Config) -> int:
    from smtptrio.server.serve import serve

    start = partial(
        serve,
        config.handler,
        host=config.host,
        port=config.port,
        ssl_context=config.ssl_context,
        **config.options,
    )

    def on_started(running: RunningServer) -> None:
        _drop_privileges(config.setuid)
        _announce(config, _addresses(running.sockets, config.host, config.port))

    return await _serve_until_signalled(config, start, on_started)


def _run_trio(function: Callable[..., Awaitable[int]], *args: object) -> int:
    """``trio.run``, with a :class:`UsageError` raised inside brought out of its groups."""
    try:
        return trio.run(function, *args)
    except BaseExceptionGroup as group:
        usage, rest = group.split(UsageError)
        if usage is None or rest is not None:
            raise
        error = _sole(usage)  # keeps its __cause__, which -dd logs
    raise error


# --------------------------------------------------------------------------------------------
# Workers


def _bind_reuseport(host: str, port: int, copies: int) -> list[list[socket.socket]]:
    """``copies`` sets of listening sockets on every address of ``host``, all on one port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    sets: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            for sockets in sets:
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError as exc:
                    if exc.errno == errno.EAFNOSUPPORT:
                        break  # e.g. ::1 on a host without IPv6; the other family may do
                    raise
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                port = port or sock.getsockname()[1]  # port 0: every copy takes the first's
                sock.listen(socket.SOMAXCONN)
        if not sets[0]:
            raise OSError(errno.EAFNOSUPPORT, "no usable address family")
    except OSError as exc:
        for sock in (s for sockets in sets for s in sockets):
            sock.close()
        raise UsageError(_describe_start_error(exc, host, port) or str(exc)) from exc
    return sets


async def _run_worker(
    config: _Config, sockets: list[socket.socket], ready: int | None, lifeline: int
) -> int:
    from smtptrio.server.serve import serve_listeners

    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    start = partial(
        serve_listeners,
        config.handler,
        listeners,
        ssl_context=config.ssl_context,
        **config.options,
    )

    def on_started(running: RunningServer) -> None:
        if ready is not None:
            os.write(ready, b"ready\n")
            os.close(ready)

    return await _serve_until_signalled(config, start, on_started, lifeline=lifeline)


def _worker_process(
    config: _Config, index: int, sockets: list[socket.socket], ready: int | None, lifeline: int
) -> int:
    """The body of a forked worker; returns its exit status."""
    for signum in _SIGNALS:  # not the supervisor's forwarding handler
        signal.signal(signum, signal.SIG_DFL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    try:
        return _run_trio(_run_worker, config, sockets, ready, lifeline)
    except UsageError as exc:
        if ready is not None:
            os.write(ready, f"error {exc}\n".encode())
        else:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


@dataclass
class _Supervisor:
    config: _Config
    sets: list[list[socket.socket]]
    lifeline: int = -1  # read end, inherited by every worker
    lifeline_w: int = -1  # write end, held by the supervisor alone
    children: dict[int, int] = field(default_factory=dict)  # pid: worker index
    restarts: list[float] = field(default_factory=list)  # when, recently
    stopping: bool = False

    def forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def spawn(self, index: int, ready: int | None) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover  (the child; coverage does not follow forks)
                code = 1
                try:
                    os.setpgid(0, 0)  # a terminal's ^C reaches the supervisor only
                    os.close(self.lifeline_w)
                    for i, sockets in enumerate(self.sets):
                        if i != index:
                            for sock in sockets:
                                sock.close()
                    code = _worker_process(
                        self.config, index, self.sets[index], ready, self.lifeline
                    )
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            self.children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def stop_all(self) -> None:
        self.forward(signal.SIGTERM, None)

    def wait_ready(self, pipes: dict[int, int]) -> str | None:
        """None when every worker reported ready, else the failure to report."""
        deadline = time.monotonic() + _WORKER_START_TIMEOUT
        buffers = {fd: b"" for fd in pipes.values()}
        pending = set(buffers)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return "workers did not start in time"
            readable, _, _ = select.select(list(pending), [], [], left)
            for fd in readable:
                chunk = os.read(fd, 4096)
                buffers[fd] += chunk
                if b"\n" in buffers[fd] or not chunk:
                    pending.discard(fd)
        for fd, data in buffers.items():
            os.close(fd)
            line = data.decode("utf-8", "replace").strip()
            if line.startswith("error "):
                return line[len("error ") :]
            if line != "ready":
                return "a worker exited during start-up (see above)"
        return None

    def run(self) -> int:
        self.lifeline, self.lifeline_w = os.pipe()
        old = {s: signal.signal(s, self.forward) for s in _SIGNALS}
        try:
            pipes: dict[int, int] = {}
            for index in range(self.config.workers):
                r, w = os.pipe()
                self.spawn(index, w)
                os.close(w)
                pipes[index] = r
            failure = self.wait_ready(pipes)
            if failure is not None:
                self.stop_all()
                self.reap(restart=False)
                raise UsageError(failure)
            _announce(self.config, _addresses(self.sets[0], self.config.host, self.config.port))
            return self.reap(restart=True)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            os.close(self.lifeline_w)
            os.close(self.lifeline)
            for sock in (s for sockets in self.sets for s in sockets):
                sock.close()

    def reap(self, *, restart: bool) -> int:
        status = 0
        while self.children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:  # pragma: no cover
                break
            index = self.children.pop(pid, None)
            if index is None:  # pragma: no cover  (not a worker of ours)
                continue
            code = os.waitstatus_to_exitcode(raw)
            if self.stopping or not restart:
                status = status or (code if code > 0 else (1 if code else 0))
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < _RESTART_WINDOW]
            if len(self.restarts) >= _MAX_RESTARTS:
                log.error("workers keep exiting; stopping", extra={"worker": index, "status": code})
                status = 1
                self.stop_all()
                continue
            log.warning("worker exited; restarting it", extra={"worker": index, "status": code})
            self.restarts.append(now)
            self.spawn(index, None)
        return status


def _supervise(config: _Config) -> int:
    sets = _bind_reuseport(config.host, config.port, config.workers)
    try:
        _drop_privileges(config.setuid)
    except UsageError:
        for sock in (s for sockets in sets for s in sockets):
            sock.close()
        raise
    return _Supervisor(config, sets).run()


# --------------------------------------------------------------------------------------------
# Commands


def _raise_file_limit() -> None:
    """Lift the soft open-files limit to the hard one: each connection holds a descriptor,
    and the common soft default (1024) is below ``--max-connections`` 's reach."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        log.debug("could not raise the open-files limit")


def _serve_command(args: list[str]) -> int:
    parser = _serve_parser()
    ns = parser.parse_args(args)
    _configure_logging(ns.debug, ns.log_format)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # Debugging output shows up as it comes
    config = _configure(parser, ns)
    _raise_file_limit()
    if config.workers > 1:
        return _supervise(config)
    return _run_trio(_run_single, config)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise UsageError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _hash_command(args: list[str]) -> int:
    ns = _hash_parser().parse_args(args)
    user = ns.user
    if user is not None:
        try:
            check_user_name(user)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    password = _read_password().removesuffix("\r")
    if not password:
        raise UsageError("empty password")
    hashed = hash_password(password)
    print(hashed if user is None else f"{user}:{hashed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``smtptrio serve`` argument parser (the docs' CLI reference is generated from it)."""
    return _serve_parser()


def build_hash_parser() -> argparse.ArgumentParser:
    """The ``smtptrio hash-password`` argument parser."""
    return _hash_parser()


def main(argv: Sequence[str] | None = None) -> int | None:
    """The ``smtptrio`` console script (and ``python -m smtptrio``).

    Returns:
        The exit status: 0 after a graceful stop, 2 for a usage error (one line on stderr).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["hash-password"]:
            return _hash_command(args[1:])
        return _serve_command(args[1:] if args[:1] == ["serve"] else args)
    except UsageError as exc:
        if exc.__cause__ is not None:
            log.debug("details of the error below", exc_info=exc.__cause__)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse (--help, --version, errors) and from_cli
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
