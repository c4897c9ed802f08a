"""Every example in examples/ runs and does what its docstring says."""

from __future__ import annotations

import importlib.util
import mailbox
import smtplib
import ssl
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trustme

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def send(port: int, *, to: str = "b@example.com") -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("a@example.org", [to], MESSAGE)


async def test_sink_server_accepts_mail() -> None:
    example = load("sink_server")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(example.run, 0))
        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(send, server.port) == {}
        await server.shutdown(1)


async def test_maildir_server_stores_the_message(tmp_path: Path) -> None:
    example = load("maildir_server")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(example.run, str(tmp_path / "mail"), 0))
        with trio.fail_after(10):
            await trio.to_thread.run_sync(send, server.port)
        await server.shutdown(1)
    stored = list(mailbox.Maildir(tmp_path / "mail"))
    assert [m["Subject"] for m in stored] == ["hi"]


async def test_embedded_app_hands_messages_to_its_consumer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load("embedded_app")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(example.run, 0))
        with trio.fail_after(10):
            await trio.to_thread.run_sync(send, server.port)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert "from a@example.org for b@example.com" in capsys.readouterr().out


async def test_starttls_auth_server_needs_tls_then_login() -> None:
    example = load("starttls_auth_server")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    def plain_refused(port: int) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            return client.mail("a@example.org")[0]

    def tls_and_login(client: smtplib.SMTP) -> None:
        client.starttls(context=client_ctx)
        client.login("alice", "wonderland")

    def wrong_password(port: int) -> int:
        with smtplib.SMTP("localhost", port, timeout=10) as client:
            client.starttls(context=client_ctx)
            try:
                client.login("alice", "queen")
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
            return 235

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(example.run, server_ctx, 0))
        with trio.fail_after(20):
            assert await trio.to_thread.run_sync(plain_refused, server.port) == 530
            assert await trio.to_thread.run_sync(wrong_password, server.port) == 535

            def good(port: int) -> dict[str, Any]:
                with smtplib.SMTP("localhost", port, timeout=10) as client:
                    tls_and_login(client)
                    return client.sendmail("a@example.org", ["b@example.com"], MESSAGE)

            assert await trio.to_thread.run_sync(good, server.port) == {}
        await server.shutdown(1)


async def test_custom_command_counts_deliveries() -> None:
    example = load("custom_command")

    def dialogue(port: int) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
            return client.docmd("XCOUNT"), client.docmd("HELP", "XCOUNT")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(example.run, 0))
        with trio.fail_after(10):
            count, help_reply = await trio.to_thread.run_sync(dialogue, server.port)
        await server.shutdown(1)
    assert count[0] == 250 and b"1 message(s)" in count[1]
    assert help_reply[0] == 214


def test_aiosmtpd_handler_runs_unchanged_under_the_controller() -> None:
    example = load("aiosmtpd_handler")
    from smtptrio import Controller

    handler = example.ExampleHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        assert send(controller.port) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(controller.port, to="b@elsewhere.org")
        assert refused.value.recipients["b@elsewhere.org"][0] == 550
    finally:
        controller.stop()
    assert [(f, t) for f, t, _ in handler.received] == [("a@example.org", ["b@example.com"])]
