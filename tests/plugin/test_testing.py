"""``smtptrio.testing`` used directly: transcript details, fault counting, config, assertions.

The fixtures come from the plugin under test (it is installed), so these tests also run it
in the most ordinary way: a trio test (``trio_mode``) asking for ``trio_smtp_server``.
"""

from __future__ import annotations

import re
import threading

import pytest
import trio
import trio.testing

from smtptrio.testing import (
    ConnectionTranscript,
    Faults,
    ServerConfig,
    SMTPClientError,
    ThreadedTestServer,
    TrioTestServer,
)

MESSAGE = b"From: a@example.com\r\nSubject: Quarterly report\r\n\r\nline one\r\n.dotted\r\n"


def _transcript() -> ConnectionTranscript:
    return ConnectionTranscript(1, ("127.0.0.1", 2525), "plain", threading.Lock())


def _body_lines(chunks: list[bytes]) -> list[str]:
    log = _transcript()
    log.server(b"354 go ahead\r\n")
    for chunk in chunks:
        if chunk:  # b"" is end of input on the wire
            log.client(chunk)
    return log.lines[1:]


# ---------------------------------------------------------------------------- transcript


@pytest.mark.parametrize("cut", range(0, len(MESSAGE) + 8))
def test_body_summary_does_not_depend_on_how_the_text_was_cut(cut: int) -> None:
    wire = MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
    assert _body_lines([wire[:cut], wire[cut:]]) == [
        f"C: <message text: {len(MESSAGE) + 1} bytes, 5 lines, Subject: 'Quarterly report'>",
        "C: .",
        "C: QUIT",
    ]


def test_body_summary_byte_by_byte_and_empty_message() -> None:
    wire = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nx\r\n.\r\n"
    lines = _body_lines([wire[i : i + 1] for i in range(len(wire))])
    assert lines[0] == "C: <message text: 43 bytes, 3 lines, Subject: 'Grüße'>"
    assert _body_lines([b".\r\n"]) == ["C: <message text: 0 bytes, 0 lines>", "C: ."]


def test_auth_secrets_are_hidden_in_every_form() -> None:
    log = _transcript()
    log.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH LOGIN\r\n")
    log.server(b"535 5.7.8 no\r\n334 VXNlciBOYW1lAA==\r\n")
    log.client(b"YWxpY2U=\r\n")
    log.server(b"334 UGFzc3dvcmQA\r\n")
    log.client(b"c2VjcmV0\r\n")
    log.server(b"235 2.7.0 ok\r\n")
    log.client(b"NOOP\r\n")
    assert log.lines == [
        "C: AUTH PLAIN <hidden>",
        "C: AUTH LOGIN",
        "S: 535 5.7.8 no",
        "S: 334 VXNlciBOYW1lAA==",
        "C: <AUTH response hidden>",
        "S: 334 UGFzc3dvcmQA",
        "C: <AUTH response hidden>",
        "S: 235 2.7.0 ok",
        "C: NOOP",
    ]


async def test_pipelined_commands_and_replies_keep_their_order(
    trio_smtp_server: TrioTestServer,
) -> None:
    async with trio_smtp_server.client() as client:
        await client.ehlo()
        await client.send_raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        replies = [(await client.read_reply()).code for _ in range(3)]
        await client.send_raw(b"Subject: p\r\n\r\nhi\r\n.\r\n")
        assert (await client.read_reply()).code == 250
    assert replies == [250, 250, 354]
    lines = trio_smtp_server.transcript.connections[0].lines
    start = lines.index("C: MAIL FROM:<a@example.com>")
    assert [line[:6] for line in lines[start : start + 6]] == [
        "C: MAI",
        "C: RCP",
        "C: DAT",
        "S: 250",
        "S: 250",
        "S: 354",
    ]


@pytest.mark.smtp_server(tls="starttls")
async def test_plaintext_pipelined_after_starttls_is_noted_as_dropped(
    trio_smtp_server: TrioTestServer,
) -> None:
    async with trio_smtp_server.client() as client:
        await client.ehlo()
        await client.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        assert (await client.read_reply()).code == 220
        tls = trio.SSLStream(
            client.stream, trio_smtp_server.client_ssl_context(), server_hostname="localhost"
        )
        await tls.do_handshake()
        client.stream = tls
        assert (await client.ehlo()).code == 250
    text = trio_smtp_server.transcript.text()
    assert "* TLS handshake (the 34 bytes sent after STARTTLS in clear text are dropped)" in text


async def test_clear_keeps_an_open_connection_recording(trio_smtp_server: TrioTestServer) -> None:
    async with trio_smtp_server.client() as client:
        await client.ehlo()
        trio_smtp_server.clear()
        await client.command("NOOP")
        [connection] = trio_smtp_server.transcript.connections
        assert connection.lines == [
            "* (earlier lines removed by clear())",
            "C: NOOP",
            "S: 250 2.0.0 OK",
        ]
    trio_smtp_server.clear()
    assert trio_smtp_server.transcript.text() == ""


# ---------------------------------------------------------------------------- faults


def test_nth_and_times_choose_which_occurrences_a_fault_hits() -> None:
    faults = Faults()
    second_and_third = faults.reply("rcpt", "452 4.5.3 later", nth=2, times=2)
    always = faults.delay("RCPT", 0.5, times=None)
    hits = [faults._match("RCPT") for _ in range(5)]
    assert [a is not None and a.reply is not None for a in hits] == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert all(a is not None and a.delay == 0.5 for a in hits)
    assert (second_and_third.fired, always.fired) == (2, 5)
    assert faults._match("MAIL") is None
    assert repr(second_and_third) == (
        "<Fault reply '452 4.5.3 later' at RCPT #2, 2 time(s), fired 2>"
    )


def test_first_reply_or_disconnect_wins_and_delays_add_up() -> None:
    faults = Faults()
    faults.delay("MAIL", 1)
    faults.disconnect(at="MAIL")
    faults.reply("MAIL", "550 5.7.1 no")
    faults.delay("MAIL", 2)
    action = faults._match("MAIL")
    assert action is not None
    assert (action.delay, action.disconnect, action.reply) == (3.0, True, None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.reply("MAIL", "250 OK"), "4xx or 5xx"),
        (lambda f: f.reply("MID-DATA", "421 x"), "cannot reply at 'MID-DATA'"),
        (lambda f: f.delay("CONNECT", 1), "cannot delay at 'CONNECT'"),
        (lambda f: f.delay("RCPT", -1), "seconds must be a number >= 0"),
        (lambda f: f.reply("MAIL", "421 4.3.2 zur\u00fcck"), "ASCII"),
        (lambda f: f.disconnect(at="MAIL", nth=0), "nth must be an integer >= 1"),
        (lambda f: f.disconnect(at="MAIL", times=0), "times must be an integer >= 1 or None"),
    ],
)
def test_bad_faults_raise_when_added(call: object, message: str) -> None:
    faults = Faults()
    with pytest.raises(ValueError, match=re.escape(message)):
        call(faults)  # type: ignore[operator]  # a lambda from the table
    assert len(faults) == 0


async def test_greeting_and_ehlo_faults(trio_smtp_server: TrioTestServer) -> None:
    trio_smtp_server.faults.disconnect(at="CONNECT")
    trio_smtp_server.faults.reply("EHLO", "554 5.7.1 not you")
    with pytest.raises(SMTPClientError, match="closed the connection"):
        async with trio_smtp_server.client():
            pass
    async with trio_smtp_server.client() as client:
        assert (await client.ehlo()).code == 554
        assert (await client.command("MAIL FROM:<a@example.com>")).code == 503  # not greeted
        assert (await client.ehlo()).code == 250


async def test_mid_data_drop_with_the_autojump_clock(
    trio_smtp_server: TrioTestServer, autojump_clock: trio.testing.MockClock
) -> None:
    trio_smtp_server.faults.disconnect(at="mid-DATA")
    async with trio_smtp_server.client() as client:
        await client.ehlo()
        with pytest.raises(SMTPClientError, match=r"message refused|gone|closed"):
            await client.sendmail("a@example.com", "b@example.com", MESSAGE)
    assert trio_smtp_server.messages == []
    assert "* fault: server drops the connection at MID-DATA" in trio_smtp_server.transcript.text()


# ---------------------------------------------------------------------------- client, config


async def test_dot_stuffing_round_trips(trio_smtp_server: TrioTestServer) -> None:
    async with trio_smtp_server.client() as client:
        await client.ehlo()
        await client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [msg] = trio_smtp_server.messages
    assert msg.envelope.raw == MESSAGE


def test_from_env_reads_smtpdfix_variables() -> None:
    config = ServerConfig.from_env(
        {
            "SMTPD_HOST": "::1",
            "SMTPD_PORT": "2525",
            "SMTPD_LOGIN_NAME": "alice",
            "SMTPD_USE_SSL": "yes",
            "SMTPD_AUTH_REQUIRE_TLS": "off",
        }
    )
    assert (config.host, config.port, config.tls) == ("::1", 2525, "smtps")
    assert dict(config.users) == {"alice": "password"}
    assert config.effective_auth_require_tls is False
    assert ServerConfig.from_env({}) == ServerConfig()
    assert ServerConfig(tls="starttls").effective_auth_require_tls is True
    with pytest.raises(ValueError, match="cannot both be on"):
        ServerConfig.from_env({"SMTPD_USE_STARTTLS": "1", "SMTPD_USE_TLS": "1"})
    with pytest.raises(ValueError, match="SMTPD_PORT='x' is not a number"):
        ServerConfig.from_env({"SMTPD_PORT": "x"})
    with pytest.raises(ValueError, match="set smtp_class through the config"):
        ServerConfig(options={"smtp_class": object})


# ---------------------------------------------------------------------------- assertions


def _send_three(server: ThreadedTestServer) -> None:
    import smtplib

    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.sendmail("alice@example.com", ["Bob@Example.COM"], b"Subject: one\r\n\r\nabc\r\n")
        client.sendmail(
            "carol@example.com",
            ["bob@example.com", "dan@example.com"],
            b"Subject: two\r\nX-Tag: t\r\n\r\nthe report body\r\n",
        )
        client.sendmail("alice@example.com", ["eve@example.com"], b"Subject: three\r\n\r\nx\r\n")


def test_assert_sent_criteria(smtp_server: ThreadedTestServer) -> None:
    _send_three(smtp_server)
    smtp_server.wait_for_messages(3, timeout=5)
    assert len(smtp_server.assert_sent(to="bob@example.com")) == 1
    smtp_server.assert_sent(to="Bob@example.com", subject="one")  # domains ignore case
    smtp_server.assert_sent(to=["bob@example.com", "dan@example.com"], subject="two")
    smtp_server.assert_sent(mail_from="alice@example.com", count=2)
    smtp_server.assert_sent(subject=re.compile(r"^t"), count=2)
    smtp_server.assert_sent(contains="report body", headers={"X-Tag": "t"})
    smtp_server.assert_sent(tls=False, count=None)
    smtp_server.assert_sent(to="nobody@example.com", count=0)
    with pytest.raises(AssertionError) as info:
        smtp_server.assert_sent(to="BOB@example.com", subject="one")  # local part is exact
    assert str(info.value) == (
        "expected 1 message to BOB@example.com with subject 'one', got 0; "
        "the server saw 3 message(s):\n"
        "  1. from alice@example.com to Bob@Example.COM, subject 'one'\n"
        "  2. from carol@example.com to bob@example.com, dan@example.com, subject 'two'\n"
        "  3. from alice@example.com to eve@example.com, subject 'three'"
    )
    with pytest.raises(AssertionError, match=r"waited 0\.1 s for 4 message"):
        smtp_server.wait_for_messages(4, timeout=0.1)
