#!/usr/bin/env python3
"""Benchmark server runners: each call serves one SMTP implementation in this process.

Usage (the harness in ``run.py`` does this for you)::

    python benchmarks/servers.py aiosmtpd --port 0
    python benchmarks/servers.py smtptrio --port 0 --options '{"max_connections": 20000}'

Once listening, the process prints exactly one line to stdout, a JSON object that starts
with ``READY``::

    READY {"server": "smtptrio", "port": 40123, "pid": 4242, ...}

and then closes its stdout, so a harness that stopped reading can never block it. It
serves until SIGTERM (or SIGINT), and it dies with its parent (``PR_SET_PDEATHSIG``), so a
killed harness leaves no server behind.

With ``--handler sink`` (the default) each server uses its own ``Sink`` handler, which has
no hooks at all and so gets every default reply (``aiosmtpd.handlers.Sink``,
``smtptrio.handlers.Sink``). With ``--handler data`` both use a handler whose async
``handle_DATA`` returns ``"250 OK"``, which measures one hook call per message.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import json
import os
import re
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

READY_PREFIX = "READY "
MIB = 1024 * 1024
DEFAULT_DATA_SIZE_LIMIT = 64 * MIB
# Both servers get the same explicit hostname: without one aiosmtpd calls
# socket.getfqdn() for every new connection, which measures the resolver, not the server.
BENCH_HOSTNAME = "bench.localhost"
LISTEN_BACKLOG = 4096
PR_SET_PDEATHSIG = 1


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the harness that started it dies."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent already died before prctl took effect
        os._exit(1)


def announce(info: dict[str, Any]) -> None:
    """Print the single READY line, then detach stdout from the harness's pipe."""
    sys.stdout.write(READY_PREFIX + json.dumps(info, sort_keys=True) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


# --------------------------------------------------------------------------- aiosmtpd


class DataHook:
    """A handler with one async hook: handle_DATA accepts and drops every message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def serve_aiosmtpd(host: str, port: int, options: dict[str, Any], handler_name: str) -> None:
    import asyncio

    import aiosmtpd
    from aiosmtpd.smtp import SMTP

    smtp_kwargs: dict[str, Any] = {
        "data_size_limit": DEFAULT_DATA_SIZE_LIMIT,
        "hostname": BENCH_HOSTNAME,
    }
    # Only the options aiosmtpd's SMTP() takes are passed on; the connection limits of
    # scenario g have no aiosmtpd equivalent (it has no connection limit at all).
    for key in ("data_size_limit", "hostname", "timeout", "enable_SMTPUTF8"):
        if key in options:
            smtp_kwargs[key] = options[key]
    ignored = sorted(set(options) - set(smtp_kwargs))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        from aiosmtpd.handlers import Sink as AiosmtpdSink

        handler = AiosmtpdSink() if handler_name == "sink" else DataHook()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def factory() -> SMTP:
            return SMTP(handler, loop=loop, **smtp_kwargs)

        # Straight onto the event loop, as aiosmtpd's Controller does, minus its thread.
        server = await loop.create_server(factory, host=host, port=port, backlog=LISTEN_BACKLOG)
        bound_port = server.sockets[0].getsockname()[1]
        announce(
            {
                "server": "aiosmtpd",
                "version": aiosmtpd.__version__,
                "port": bound_port,
                "pid": os.getpid(),
                "options": smtp_kwargs,
                "ignored_options": ignored,
                "dropped_options": [],
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "handler": type(handler).__module__ + "." + type(handler).__name__,
            }
        )
        await stop.wait()
        server.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- smtptrio


def _type_errors(exc: BaseException) -> list[TypeError]:
    """The TypeErrors in exc, looking inside (nested) exception groups."""
    if isinstance(exc, TypeError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[TypeError] = []
        for inner in exc.exceptions:
            found.extend(_type_errors(inner))
        return found
    return []


def _rejected_option(exc: BaseException, options: dict[str, Any]) -> str | None:
    """The name of the option a TypeError (or a group holding one) complains about."""
    for err in _type_errors(exc):
        text = str(err)
        for name in options:
            if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text):
                return name
    return None


def _known_smtptrio_options() -> set[str] | None:
    """The option names smtptrio.server.options.Options declares, if it is a dataclass."""
    try:
        from smtptrio.server import options as options_module
    except ImportError:
        return None
    cls = getattr(options_module, "Options", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    return {f.name for f in dataclasses.fields(cls)}


def serve_smtptrio(host: str, port: int, options: dict[str, Any], handler_name: str) -> None:
    import trio

    import smtptrio
    from smtptrio.handlers import Sink

    serve: Callable[..., Any] = smtptrio.serve
    kwargs: dict[str, Any] = {
        "data_size_limit": DEFAULT_DATA_SIZE_LIMIT,
        "hostname": BENCH_HOSTNAME,
    }
    kwargs.update(options)
    dropped: list[str] = []
    known = _known_smtptrio_options()
    if known is not None:
        for name in sorted(set(kwargs) - known):
            print(f"servers.py: smtptrio has no option {name!r}; dropped", file=sys.stderr)
            dropped.append(name)
            del kwargs[name]
    announced = False
    handler: Any = Sink() if handler_name == "sink" else DataHook()

    async def attempt(opts: dict[str, Any]) -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                functools.partial(serve, handler, host=host, port=port, **opts)
            )
            announce(
                {
                    "server": "smtptrio",
                    "version": getattr(smtptrio, "__version__", "?"),
                    "port": int(running.port),
                    "pid": os.getpid(),
                    "options": opts,
                    "ignored_options": [],
                    "dropped_options": dropped,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "handler": type(handler).__module__ + "." + type(handler).__name__,
                }
            )
            nonlocal announced
            announced = True
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    nursery.cancel_scope.cancel()
                    break

    async def main() -> None:
        opts = dict(kwargs)
        while True:
            try:
                await attempt(opts)
                return
            except BaseException as exc:
                # An option this smtptrio does not have yet: drop it, say so, try again.
                name = None if announced else _rejected_option(exc, opts)
                if name is None:
                    raise
                print(f"servers.py: smtptrio rejected option {name!r}: {exc!r}", file=sys.stderr)
                dropped.append(name)
                del opts[name]

    trio.run(main)


# --------------------------------------------------------------------------- trio-minimal


def serve_trio_minimal(host: str, port: int, options: dict[str, Any], handler_name: str) -> None:
    """The issue's reference point: the least SMTP a trio server can do, on trio streams.

    It checks nothing (no grammar, no limits, no state beyond "in DATA or not"), answers
    every command from a table, and only finds the end of DATA. It is here to measure the
    ceiling a trio server reaches on this machine, not as something to deploy.
    """
    import trio

    replies = {
        b"EHLO": b"250-bench.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 67108864\r\n",
        b"HELO": b"250 bench.localhost\r\n",
        b"MAIL": b"250 2.1.0 OK\r\n",
        b"RCPT": b"250 2.1.5 OK\r\n",
        b"RSET": b"250 2.0.0 OK\r\n",
        b"NOOP": b"250 2.0.0 OK\r\n",
        b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"QUIT": b"221 2.0.0 Bye\r\n",
    }
    unknown = b"500 5.5.2 Error\r\n"
    accepted = b"250 2.0.0 OK\r\n"

    async def handle(stream: Any) -> None:
        try:
            await stream.send_all(b"220 bench.localhost ESMTP\r\n")
            buf = b""
            in_data = False
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                out = []
                quit_ = False
                while buf:
                    if in_data:
                        end = (b"\r\n" + buf).find(b"\r\n.\r\n")
                        if end < 0:
                            # keep only what could start the terminator
                            buf = buf[-4:]
                            break
                        buf = buf[max(end + 3, 0):]
                        in_data = False
                        out.append(accepted)
                        continue
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        break
                    verb = buf[:4].upper()
                    buf = buf[nl + 2:]
                    reply = replies.get(verb, unknown)
                    out.append(reply)
                    if verb == b"DATA":
                        in_data = True
                    elif verb == b"QUIT":
                        quit_ = True
                        break
                if out:
                    await stream.send_all(b"".join(out))
                if quit_:
                    return
        except trio.BrokenResourceError:
            return
        finally:
            await stream.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handle, port, host=host, backlog=LISTEN_BACKLOG)
            )
            announce(
                {
                    "server": "trio-minimal",
                    "version": trio.__version__,
                    "port": listeners[0].socket.getsockname()[1],
                    "pid": os.getpid(),
                    "options": {},
                    "ignored_options": sorted(options),
                    "dropped_options": [],
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                }
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


SERVERS: dict[str, Callable[[str, int, dict[str, Any], str], None]] = {
    "aiosmtpd": serve_aiosmtpd,
    "smtptrio": serve_smtptrio,
    "trio-minimal": serve_trio_minimal,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--options", default="{}", help="JSON object of server options")
    parser.add_argument("--cpu", default="", help="comma-separated CPUs to pin this process to")
    parser.add_argument("--handler", choices=["sink", "data"], default="sink")
    args = parser.parse_args(argv)

    die_with_parent()
    if args.cpu:
        os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
    raise_nofile_limit()
    options = json.loads(args.options)
    if not isinstance(options, dict):
        parser.error("--options must be a JSON object")
    SERVERS[args.server](args.host, args.port, options, args.handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
