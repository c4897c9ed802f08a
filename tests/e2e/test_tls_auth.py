"""TLS and AUTH with real clients on 127.0.0.1: smtplib, ``openssl s_client``, a raw socket.

Blocking clients run in worker threads, subprocesses through ``trio.run_process``; every test is
bounded by ``trio.fail_after`` and every socket has a timeout, so a hung server fails the test.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import Recorder, parse_reply, serving_tcp
from tls_helpers import (
    PASSWORD,
    USER,
    accept_alice,
    plain_blob,
    tls_material,
)

from smtptrio import SMTP, Envelope, LoginPassword, Session

TIMEOUT = 15
MESSAGE = (
    b"From: anne@example.com\r\nTo: bart@example.org\r\nSubject: tls\r\n\r\nHello over TLS.\r\n"
)
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# Function-scoped fixtures (STYLE.md section 5); only the key material behind them is cached.


async def _in_thread(func: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(func, *args))


def _assert_delivered_over_tls_and_authenticated(handler: Recorder) -> None:
    [envelope] = handler.envelopes
    assert envelope.mail_from == "anne@example.com"
    assert envelope.rcpt_tos == ["bart@example.org"]
    assert envelope.content == MESSAGE
    [session] = handler.sessions
    assert session.ssl is not None and session.ssl["cipher"]
    assert session.authenticated is True
    assert session.auth_data == LoginPassword(USER, PASSWORD)


# ---------------------------------------------------------------------------- smtplib


def _smtplib_starttls_login_send(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT) as c:
        c.ehlo()
        assert c.has_extn("starttls") and not c.has_extn("auth")
        code, _ = c.starttls(context=ctx)
        assert code == 220
        c.ehlo()
        assert not c.has_extn("starttls") and c.has_extn("auth")
        code, _ = c.login(USER.decode(), PASSWORD.decode())
        assert code == 235
        return c.sendmail("anne@example.com", ["bart@example.org"], MESSAGE)


@pytest.mark.parametrize("excluded", [(), ("PLAIN",)], ids=["plain", "login"])
async def test_smtplib_starttls_login_and_sendmail_are_delivered(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, excluded: tuple[str, ...]
) -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(
            handler,
            tls_context=server_ctx,
            authenticator=accept_alice,
            auth_required=True,
            auth_exclude_mechanism=excluded,
        ) as server:
            refused = await _in_thread(_smtplib_starttls_login_send, server.port, client_ctx)
    assert refused == {}
    _assert_delivered_over_tls_and_authenticated(handler)


def _smtplib_smtps_login_send(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT, context=ctx
    ) as c:
        c.ehlo()
        assert not c.has_extn("starttls") and c.has_extn("auth")
        code, _ = c.login(USER.decode(), PASSWORD.decode())
        assert code == 235
        return c.sendmail("anne@example.com", ["bart@example.org"], MESSAGE)


async def test_smtplib_smtp_ssl_login_and_sendmail_are_delivered(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """COMPAT D17: aiosmtpd refuses AUTH over SMTPS (538); smtptrio knows it is TLS."""
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(
            handler, ssl_context=server_ctx, authenticator=accept_alice, auth_required=True
        ) as server:
            refused = await _in_thread(_smtplib_smtps_login_send, server.port, client_ctx)
    assert refused == {}
    _assert_delivered_over_tls_and_authenticated(handler)


def _smtplib_bad_login(port: int, ctx: ssl.SSLContext) -> tuple[int, int]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT) as c:
        c.starttls(context=ctx)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            c.login(USER.decode(), "wrong password")
        code, _ = c.noop()
        return failed.value.smtp_code, code


async def test_smtplib_wrong_password_gets_535_and_the_session_goes_on(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, tls_context=server_ctx, authenticator=accept_alice) as srv:
            auth_code, noop_code = await _in_thread(_smtplib_bad_login, srv.port, client_ctx)
    assert (auth_code, noop_code) == (535, 250)


def _smtplib_login_in_clear_text(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT) as c:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.login(USER.decode(), PASSWORD.decode())
        code, _ = c.docmd("AUTH", "PLAIN " + plain_blob())
        assert code == 538


async def test_smtplib_cannot_login_before_starttls_by_default(
    server_ctx: ssl.SSLContext,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(Recorder(), tls_context=server_ctx, authenticator=accept_alice) as s:
            await _in_thread(_smtplib_login_in_clear_text, s.port)


def _smtplib_untrusted_then_trusted(
    port: int, bad: ssl.SSLContext, good: ssl.SSLContext
) -> dict[str, Any]:
    with (
        smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT) as c,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        c.starttls(context=bad)
    # The failed handshake cost only that connection.
    return _smtplib_starttls_login_send(port, good)


async def test_smtplib_client_that_rejects_the_certificate_does_not_hurt_the_next_one(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    untrusted_client_ctx: ssl.SSLContext,
) -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, tls_context=server_ctx, authenticator=accept_alice) as s:
            refused = await _in_thread(
                _smtplib_untrusted_then_trusted, s.port, untrusted_client_ctx, client_ctx
            )
    assert refused == {}
    _assert_delivered_over_tls_and_authenticated(handler)


# ---------------------------------------------------------------------------- openssl s_client


def _s_client_dialogue() -> bytes:
    return b"".join(
        line + b"\r\n"
        for line in (
            b"EHLO client.example",
            b"AUTH PLAIN " + plain_blob().encode(),
            b"MAIL FROM:<anne@example.com>",
            b"RCPT TO:<bart@example.org>",
            b"DATA",
            *MESSAGE.removesuffix(b"\r\n").split(b"\r\n"),
            b".",
            b"QUIT",
        )
    )


def _reply_codes(output: bytes) -> list[int]:
    """The code of each complete reply in s_client's output (its own lines start with none)."""
    codes = []
    for line in output.split(b"\n"):
        line = line.rstrip(b"\r")
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            codes.append(int(line[:3]))
    return codes


async def _run_s_client(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [OPENSSL, "s_client", *args, "-quiet", "-verify_return_error"],
            stdin=_s_client_dialogue(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@pytest.mark.skipif(not Path(OPENSSL).exists(), reason="openssl command-line tool not found")
async def test_openssl_s_client_starttls_auth_and_delivery(
    server_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    handler = Recorder()
    ca_file = tls_material().write_ca(tmp_path)
    async with serving_tcp(handler, tls_context=server_ctx, authenticator=accept_alice) as server:
        done = await _run_s_client(
            [
                "-connect",
                f"127.0.0.1:{server.port}",
                "-starttls",
                "smtp",
                "-CAfile",
                str(ca_file),
                "-verify_hostname",
                "localhost",
            ]
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    # s_client consumed the greeting, its own EHLO and the 220; we see our dialogue's replies.
    assert _reply_codes(done.stdout) == [250, 235, 250, 250, 354, 250, 221], done.stdout
    assert b"250-STARTTLS" not in done.stdout  # our EHLO came after TLS
    _assert_delivered_over_tls_and_authenticated(handler)


@pytest.mark.skipif(not Path(OPENSSL).exists(), reason="openssl command-line tool not found")
async def test_openssl_s_client_implicit_tls_auth_and_delivery(
    server_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    handler = Recorder()
    ca_file = tls_material().write_ca(tmp_path)
    async with serving_tcp(handler, ssl_context=server_ctx, authenticator=accept_alice) as server:
        done = await _run_s_client(
            [
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(ca_file),
                "-verify_hostname",
                "localhost",
            ]
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert _reply_codes(done.stdout) == [220, 250, 235, 250, 250, 354, 250, 221], done.stdout
    _assert_delivered_over_tls_and_authenticated(handler)


# ---------------------------------------------------------------------------- raw socket


class _LineReader:
    """Reply reading over a blocking socket, keeping what was read past the last reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def reply(self) -> Any:
        lines: list[bytes] = []
        for _ in range(1000):
            cut = self.buf.find(b"\r\n")
            if cut < 0:
                data = self.sock.recv(65536)
                assert data, f"server closed; partial reply {lines!r} {self.buf!r}"
                self.buf += data
                continue
            line, self.buf = self.buf[:cut], self.buf[cut + 2 :]
            lines.append(line)
            if line[3:4] != b"-":
                return parse_reply(lines)
        raise AssertionError("reply too long")


def _inject_after_starttls(port: int, ctx: ssl.SSLContext, injected: bytes) -> list[Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        plain = _LineReader(sock)
        assert plain.reply().code == 220
        sock.sendall(b"EHLO client.example\r\n")
        assert plain.reply().code == 250
        sock.sendall(b"STARTTLS\r\n" + injected)  # one write, as a man in the middle would
        ready = plain.reply()
        assert ready.codes == (220, "2.0.0")
        assert plain.buf == b"", f"clear-text bytes after the 220: {plain.buf!r}"
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            secure = _LineReader(tls)
            tls.sendall(b"EHLO client.example\r\n")
            first = secure.reply()
            tls.sendall(b"NOOP\r\n")
            second = secure.reply()
            tls.sendall(b"QUIT\r\n")
            third = secure.reply()
            return [first, second, third]


class CountingHandler(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[str] = []

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 OK"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"MAIL {address}")
        envelope.mail_from = address
        return "250 2.1.0 OK"


@pytest.mark.parametrize(
    "injected",
    [b"RSET\r\n", b"MAIL FROM:<evil@example.net>\r\nRSET\r\n"],
    ids=["rset", "mail-rset"],
)
async def test_plaintext_injected_after_starttls_over_tcp_is_never_answered(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, injected: bytes
) -> None:
    """RFC 3207 section 4.2, COMPAT D5 (the STARTTLS command injection attack, CVE-2011-0411)."""
    handler = CountingHandler()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler, tls_context=server_ctx) as server:
            first, second, third = await _in_thread(
                _inject_after_starttls, server.port, client_ctx, injected
            )
    # The first reply over TLS is the multi-line EHLO reply, not "250 2.0.0" for the RSET.
    assert first.codes == (250, None)
    assert first.lines[0] == "mx.example" and len(first.lines) > 1
    assert second.codes == (250, "2.0.0")
    assert third.codes == (221, "2.0.0")
    assert handler.commands == []
