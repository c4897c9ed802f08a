#!/usr/bin/env python3
"""A fast SMTP load generator: raw non-blocking sockets on one epoll loop.

Two modes. **send** (the default) delivers ``--messages`` messages over ``--connections``
parallel connections and counts the 250 replies to the end of DATA::

    python benchmarks/smtpload.py --port 2525 --connections 10 --messages 20000 \
        --size 1024 --pipelining auto

With PIPELINING (advertised by the server, or forced with ``--pipelining on``) a
transaction costs one write and one round trip: ``MAIL``, every ``RCPT`` and ``DATA`` go
in one write, and after the 354 the body, its ``.`` and the next transaction's ``MAIL``/
``RCPT``/``DATA`` go in the next (RFC 2920: message content may start a group, ``DATA``
ends it). Without it every command waits for its reply, as Postfix's smtp-source does.
``--reconnect`` opens a new connection for every message. ``--procs K`` splits the
connections and messages over K worker processes (useful where more than one CPU is left
for the load).

**idle** (``--idle N``) opens N connections, waits for each one's 220 greeting, prints
``{"held": N, ...}`` and then holds them open, doing nothing, until a line on stdin:
``check`` answers ``{"alive": n}`` (connections the server has not closed), ``quit`` or
end of input closes them all and exits.

Every result is one JSON line on stdout. The program stops by itself at ``--timeout``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

CRLF = b"\r\n"
EHLO_NAME = "client.bench.localhost"
MAIL_FROM = "bench@client.bench.localhost"
RCPT_DOMAIN = "bench.localhost"
RECV_SIZE = 256 * 1024
LINE_PAYLOAD = 76  # payload line length before CRLF, well under SMTP's 998
MAX_FAILURES = 100
DASH = ord("-")
STALL_SECONDS = 1.0
READ = select.EPOLLIN
READ_WRITE = select.EPOLLIN | select.EPOLLOUT
READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP

# What a session generator yields: (bytes to send or None, replies to wait for).
Action = tuple[bytes | None, int]
SessionGen = Generator[Action, list[int], None]


class SessionError(Exception):
    """The server answered something the session did not expect."""


def make_payload(size: int) -> bytes:
    """Exactly ``size`` bytes of CRLF-terminated lines, none starting with a dot."""
    line = b"X" * LINE_PAYLOAD + CRLF
    full, rest = divmod(max(size, 0), len(line))
    if rest == 0:
        return line * full
    if rest >= 3:
        return line * full + b"Y" * (rest - 2) + CRLF
    if full:  # too short for a line of its own: lengthen the last line instead
        return line * (full - 1) + b"X" * (LINE_PAYLOAD + rest) + CRLF
    return b"Z" * rest  # sizes 1 and 2: make_message adds the CRLF


def make_message(size: int, rcpts: int) -> bytes:
    """Headers, a ``size``-byte payload, and the end-of-data line."""
    headers = (
        f"From: <{MAIL_FROM}>\r\n"
        f"To: <rcpt0@{RCPT_DOMAIN}>\r\n"
        "Subject: smtptrio benchmark\r\n"
        "Message-ID: <bench@client.bench.localhost>\r\n"
        "\r\n"
    ).encode()
    payload = make_payload(size)
    if payload and not payload.endswith(CRLF):
        payload += CRLF
    return headers + payload + b".\r\n"


class Load:
    """The messages one worker process is to send, and what became of them."""

    def __init__(
        self, messages: int, rcpts: int, size: int, pipelining: str, rcvlowat: bool = False
    ) -> None:
        self.remaining = messages
        self.rcvlowat = rcvlowat
        self.lowat_fallback = False  # a stall made us give SO_RCVLOWAT up mid-run
        self.lowat_in_use = False  # some connection has SO_RCVLOWAT above 1
        self.ok = 0
        self.failed = 0
        self.replies_250 = 0
        self.errors: list[str] = []
        self.pipelining = pipelining
        self.advertised: bool | None = None
        self.used_pipelining = False
        self.ehlo = f"EHLO {EHLO_NAME}\r\n".encode()
        self.mail = f"MAIL FROM:<{MAIL_FROM}>\r\n".encode()
        self.rcpt_lines = [f"RCPT TO:<rcpt{i}@{RCPT_DOMAIN}>\r\n".encode() for i in range(rcpts)]
        self.data = b"DATA\r\n"
        self.quit = b"QUIT\r\n"
        self.envelope = self.mail + b"".join(self.rcpt_lines) + self.data
        self.body = make_message(size, rcpts)
        self.body_and_envelope = self.body + self.envelope
        self.n_envelope = 2 + rcpts

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class Conn:
    __slots__ = (
        "fd", "gbytes", "gen", "last_group", "lines", "out", "pending", "rbuf", "replies",
        "sock", "want",
    )  # fmt: skip

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.gen: SessionGen | None = None
        self.rbuf = bytearray()
        self.replies: list[int] = []
        self.want = 0
        self.out: memoryview | None = None
        self.pending = 0  # messages claimed by this connection whose result is not yet in
        self.lines: list[bytes] | None = None  # the text of the reply, while capturing
        self.gbytes = 0  # bytes of the replies to the current group so far
        self.last_group = 0  # bytes of the replies to the group answered last


def _check(codes: list[int], expected: int, what: str) -> None:
    for code in codes:
        if code != expected:
            raise SessionError(f"{what}: expected {expected}, got {codes}")


def session(load: Load, conn: Conn, reconnect: bool) -> SessionGen:
    """One SMTP connection's dialogue, as a generator driven by the event loop."""
    codes = yield None, 1
    _check(codes, 220, "greeting")
    conn.lines = []
    codes = yield load.ehlo, 1
    _check(codes, 250, "EHLO")
    advertised = any(line[4:].upper().startswith(b"PIPELINING") for line in conn.lines)
    conn.lines = None
    load.advertised = advertised
    pipelined = load.pipelining == "on" or (load.pipelining == "auto" and advertised)
    if pipelined:
        load.used_pipelining = True
    have = conn.pending > 0 or load.take()
    if have and conn.pending == 0:
        conn.pending = 1
    if have and pipelined:
        codes = yield load.envelope, load.n_envelope
        lowat = 0
        while True:
            _check(codes[:-1], 250, "MAIL/RCPT")
            _check(codes[-1:], 354, "DATA")
            if not reconnect and load.take():
                conn.pending += 1
                codes = yield load.body_and_envelope, 1 + load.n_envelope
                _record(load, conn, codes[0])
                codes = codes[1:]
                if load.rcvlowat and not lowat and codes[0] == 250:
                    # The replies to one such group have a fixed size: ask the kernel to
                    # wake us only once they are all in, not for each reply as it comes.
                    lowat = conn.last_group
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                    load.lowat_in_use = True
            else:
                if lowat:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                codes = yield load.body, 1
                _record(load, conn, codes[0])
                break
    elif have:
        while True:
            codes = yield load.mail, 1
            _check(codes, 250, "MAIL")
            for line in load.rcpt_lines:
                codes = yield line, 1
                _check(codes, 250, "RCPT")
            codes = yield load.data, 1
            _check(codes, 354, "DATA")
            codes = yield load.body, 1
            _record(load, conn, codes[0])
            if reconnect or not load.take():
                break
            conn.pending += 1
    yield load.quit, 1  # whatever the reply to QUIT, the session is over


def _record(load: Load, conn: Conn, code: int) -> None:
    conn.pending -= 1
    if code == 250:
        load.ok += 1
        load.replies_250 += 1
    else:
        load.failed += 1
        load.error(f"end of DATA answered {code}")


class Driver:
    """Runs many sessions on one selector."""

    def __init__(self, args: argparse.Namespace, load: Load) -> None:
        self.args = args
        self.load = load
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.recvs = 0
        self.address = (args.host, args.port)
        self.reconnect: bool = args.reconnect
        self.connections_opened = 0

    # -- connections
    def open_session(self) -> bool:
        """Open a connection that already owns one message; False when none are left."""
        if not self.load.take():
            return False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.load.failed += 1
            self.load.error(f"connect: {os.strerror(err)}")
            return True
        conn = Conn(sock)
        conn.pending = 1
        conn.gen = session(self.load, conn, self.reconnect)
        self._advance(conn, None)
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, READ)
        self.connections_opened += 1
        return True

    def close(self, conn: Conn, error: str | None) -> None:
        if error is not None:
            self.load.failed += conn.pending
            conn.pending = 0
            self.load.error(error)
        if self.conns.pop(conn.fd, None) is not None:
            self.epoll.unregister(conn.fd)
        conn.sock.close()
        conn.gen = None
        replace = self.reconnect or error is not None
        if replace and self.load.failed < MAX_FAILURES:
            self.open_session()

    # -- the dialogue
    def _advance(self, conn: Conn, codes: list[int] | None) -> bool:
        """Resume the session with the replies; False once the connection is closed."""
        gen = conn.gen
        assert gen is not None
        conn.last_group = conn.gbytes
        conn.gbytes = 0
        try:
            data, want = gen.send(codes) if codes is not None else next(gen)
        except StopIteration:
            self.close(conn, None)
            return False
        except SessionError as exc:
            self.close(conn, str(exc))
            return False
        conn.want = want
        conn.replies = []
        if data:
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.close(conn, f"send: {exc}")
                return False
            if sent < len(data):
                conn.out = memoryview(data)[sent:]
                if conn.fd in self.conns:
                    self.epoll.modify(conn.fd, READ_WRITE)
                # else: open_session registers the new connection for READ_WRITE
        return True

    def on_writable(self, conn: Conn) -> None:
        out = conn.out
        if out is None:
            self.epoll.modify(conn.fd, READ)
            return
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(conn, f"send: {exc}")
            return
        if sent < len(out):
            conn.out = out[sent:]
        else:
            conn.out = None
            self.epoll.modify(conn.fd, READ)

    def on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
            self.recvs += 1
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(conn, f"recv: {exc}")
            return
        if not data:
            if conn.want:
                self.close(conn, "connection closed by the server")
            else:
                self.close(conn, None)
            return
        buf = conn.rbuf
        buf += data
        start = 0
        while True:
            end = buf.find(CRLF, start)
            if end < 0:
                break
            conn.gbytes += end + 2 - start
            if conn.lines is not None:
                conn.lines.append(bytes(buf[start:end]))
            if end - start > 3 and buf[start + 3] == DASH:
                start = end + 2
                continue
            try:
                code = int(buf[start : start + 3])
            except ValueError:
                self.close(conn, f"bad reply line {bytes(buf[start:end])!r}")
                return
            start = end + 2
            if not conn.want:
                self.close(conn, f"unexpected reply {code}")
                return
            conn.replies.append(code)
            if len(conn.replies) == conn.want:
                del buf[:start]
                start = 0
                if not self._advance(conn, conn.replies):
                    return
        if start:
            del buf[:start]

    def run(self, concurrency: int, deadline: float) -> None:
        for _ in range(concurrency):
            if not self.open_session():
                break
        poll = self.epoll.poll
        conns = self.conns
        on_readable = self.on_readable
        while conns:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                for conn in list(conns.values()):
                    self.close(conn, "timeout")
                break
            events_list = poll(min(timeout, STALL_SECONDS))
            if not events_list and self.load.rcvlowat and self.load.lowat_in_use:
                # Nothing for a while: a reply shorter than learned would wait forever
                # under SO_RCVLOWAT, so stop using it.
                self.load.rcvlowat = False
                self.load.lowat_fallback = True
                self.load.error("rcvlowat stall: fell back to waking on every reply")
                for conn in conns.values():
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            for fd, events in events_list:
                found = conns.get(fd)
                if found is None:
                    continue
                conn = found
                if events & select.EPOLLOUT:
                    self.on_writable(conn)
                    if conn.gen is None:
                        continue
                if events & READ_EVENTS:
                    on_readable(conn)
        self.epoll.close()


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_send(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args.messages, args.rcpts, args.size, args.pipelining, args.rcvlowat == "on")
    driver = Driver(args, load)
    start = time.monotonic()
    driver.run(args.connections, start + args.timeout)
    end = time.monotonic()
    load.failed += load.remaining  # never sent (only after too many failures or a timeout)
    return {
        "mode": "send",
        "messages": args.messages,
        "ok": load.ok,
        "failed": load.failed,
        "start": start,
        "end": end,
        "elapsed": end - start,
        "connections_opened": driver.connections_opened,
        "recv_calls": driver.recvs,
        "rcvlowat_stall": load.lowat_fallback,
        "advertised_pipelining": load.advertised,
        "pipelined": load.used_pipelining,
        "client_cpu": cpu_seconds_self(),
        "errors": load.errors,
    }


def run_procs(args: argparse.Namespace) -> dict[str, Any]:
    """Split the load over ``args.procs`` worker processes of this same program."""
    procs = max(1, min(args.procs, args.connections))
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(procs):
            share_conns = args.connections // procs + (index < args.connections % procs)
            share_msgs = args.messages // procs + (index < args.messages % procs)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--host", args.host,
                "--port", str(args.port),
                "--connections", str(share_conns),
                "--messages", str(share_msgs),
                "--size", str(args.size),
                "--rcpts", str(args.rcpts),
                "--pipelining", args.pipelining,
                "--rcvlowat", args.rcvlowat,
                "--timeout", str(args.timeout),
                "--procs", "1",
            ]  # fmt: skip
            if args.reconnect:
                cmd.append("--reconnect")
            workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=args.timeout + 30)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    return {
        "mode": "send",
        "messages": args.messages,
        "ok": sum(r["ok"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "start": start,
        "end": end,
        "elapsed": end - start,
        "connections_opened": sum(r["connections_opened"] for r in results),
        "rcvlowat_stall": any(r.get("rcvlowat_stall") for r in results),
        "advertised_pipelining": any(r["advertised_pipelining"] for r in results),
        "pipelined": any(r["pipelined"] for r in results),
        "client_cpu": sum(r["client_cpu"] for r in results) + cpu_seconds_self(),
        "errors": [e for r in results for e in r["errors"]][:20],
        "procs": procs,
    }


# --------------------------------------------------------------------------- idle mode


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_idle(args: argparse.Namespace) -> int:
    """Open ``args.idle`` connections, wait for every greeting, then hold them."""
    target: int = args.idle
    sel = selectors.DefaultSelector()
    waiting: dict[int, tuple[socket.socket, bytearray]] = {}
    held: list[socket.socket] = []
    errors: list[str] = []
    failures = 0
    opened = 0
    start = time.monotonic()
    deadline = start + args.timeout
    while len(held) < target and time.monotonic() < deadline:
        while opened < target and len(waiting) < args.connect_batch:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((args.host, args.port))
            opened += 1
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                failures += 1
                if len(errors) < 20:
                    errors.append(f"connect: {os.strerror(err)}")
                continue
            waiting[sock.fileno()] = (sock, bytearray())
            sel.register(sock, selectors.EVENT_READ)
        if not waiting:
            if opened >= target:
                break
            continue
        for key, _events in sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
            sock, buf = waiting[key.fd]
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b""
                if len(errors) < 20:
                    errors.append(f"recv: {exc}")
            buf += data
            done = CRLF in buf and (not buf.startswith(b"220-") or b"\r\n220 " in buf)
            if data and not done:
                continue
            sel.unregister(sock)
            del waiting[key.fd]
            if data and buf.startswith(b"220"):
                held.append(sock)
            else:
                failures += 1
                if data and len(errors) < 20:
                    errors.append(f"greeting: {bytes(buf[:80])!r}")
                sock.close()
        if failures >= max(MAX_FAILURES, target // 10):
            break
    emit(
        {
            "mode": "idle",
            "target": target,
            "held": len(held),
            "failed": failures + len(waiting),
            "elapsed": time.monotonic() - start,
            "errors": errors,
        }
    )
    for sock, _buf in waiting.values():
        sock.close()
    sel.close()
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "check":
                emit({"alive": count_alive(held)})
            elif command == "quit":
                break
    finally:
        for sock in held:
            sock.close()
    return 0


def count_alive(socks: list[socket.socket]) -> int:
    """How many of socks the peer has not closed (readable with EOF, or an error)."""
    poller = select.poll()
    by_fd = {}
    for sock in socks:
        poller.register(sock, select.POLLIN | select.POLLRDHUP)
        by_fd[sock.fileno()] = sock
    dead = 0
    for fd, events in poller.poll(0):
        if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
            dead += 1
            continue
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                dead += 1
        except BlockingIOError:
            pass
        except OSError:
            dead += 1
    return len(socks) - dead


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1, help="parallel connections")
    parser.add_argument("--messages", type=int, default=1000, help="messages in all")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes per message")
    parser.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    parser.add_argument("--pipelining", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--rcvlowat", choices=["on", "off"], default="on",
        help="when pipelining, wake once per reply group (SO_RCVLOWAT), not once per reply",
    )  # fmt: skip
    parser.add_argument("--reconnect", action="store_true", help="new connection per message")
    parser.add_argument("--procs", type=int, default=1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after seconds")
    parser.add_argument("--idle", type=int, default=0, help="idle mode: hold N connections")
    parser.add_argument(
        "--connect-batch", type=int, default=256, help="idle mode: connects in flight"
    )
    args = parser.parse_args(argv)
    raise_nofile_limit()
    if args.idle:
        return run_idle(args)
    result = run_procs(args) if args.procs > 1 else run_send(args)
    emit(result)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
