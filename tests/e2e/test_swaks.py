"""swaks (the Swiss Army Knife for SMTP) against a real server, plain and with --pipeline.

CI installs swaks (``apt-get install -y swaks``); without it these tests are skipped.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import trio
import trio.testing
from helpers import Recorder, serving_tcp

from smtptrio import SMTP, Envelope, Session

SWAKS = shutil.which("swaks")

pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks not installed")

TIMEOUT = 30


async def _swaks(port: int, *extra: str) -> subprocess.CompletedProcess[bytes]:
    assert SWAKS is not None
    argv = [
        SWAKS,
        "--server",
        f"127.0.0.1:{port}",
        "--helo",
        "client.example",
        "--from",
        "anne@example.com",
        "--to",
        "bart@example.org",
        "--header",
        "Subject: from swaks",
        "--body",
        "Hello from swaks.",
        "--timeout",
        "10",
        *extra,
    ]
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def _server_codes(output: bytes) -> list[int]:
    """The codes of the replies swaks received (``<-``, or ``<**`` for errors; last lines only)."""
    codes = []
    for line in output.splitlines():
        text = line.lstrip()
        if text.startswith(b"<"):
            reply = text.lstrip(b"<-~* ")
            if len(reply) >= 4 and reply[:3].isdigit() and reply[3:4] == b" ":
                codes.append(int(reply[:3]))
    return codes


async def test_swaks_sends_a_message_that_is_delivered() -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            result = await _swaks(server.port)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    [envelope] = handler.envelopes
    assert envelope.mail_from == "anne@example.com"
    assert envelope.rcpt_tos == ["bart@example.org"]
    assert isinstance(envelope.content, bytes)
    assert b"Subject: from swaks\r\n" in envelope.content
    assert b"Hello from swaks." in envelope.content
    assert handler.sessions[0].host_name == "client.example"
    assert _server_codes(result.stdout)[:1] == [220]
    assert 221 in _server_codes(result.stdout)


async def test_swaks_with_pipeline_delivers_to_every_recipient() -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            result = await _swaks(
                server.port, "--pipeline", "--to", "bart@example.org,cate@example.org"
            )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "PIPELINING" in output
    [envelope] = handler.envelopes
    assert envelope.rcpt_tos == ["bart@example.org", "cate@example.org"]
    assert b"Hello from swaks." in envelope.content


class RefuseRcpt(Recorder):
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 no such user"


async def test_swaks_pipelined_refusal_is_reported_and_nothing_is_delivered() -> None:
    handler = RefuseRcpt()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            result = await _swaks(server.port, "--pipeline")
    assert result.returncode != 0
    # MAIL accepted, RCPT refused, the pipelined DATA refused for want of a recipient.
    assert _server_codes(result.stdout) == [220, 250, 250, 550, 503, 221]
    assert handler.envelopes == []


async def test_swaks_quit_after_rcpt_ends_the_session_cleanly() -> None:
    handler = Recorder()
    with trio.fail_after(TIMEOUT):
        async with serving_tcp(handler) as server:
            result = await _swaks(server.port, "--quit-after", "RCPT")
            assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
            assert _server_codes(result.stdout)[-1] == 221
            # The session is gone once swaks quit.
            await trio.testing.wait_all_tasks_blocked()
            assert server.connection_count == 0
    assert handler.envelopes == []
