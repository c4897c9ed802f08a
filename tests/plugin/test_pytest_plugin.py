"""The fixtures of ``smtptrio.pytest_plugin``, run the way users run them: inner pytest runs.

Each test writes a small test module, runs it with ``pytester`` (in-process, except where a
subprocess is the point) and checks the outcomes and the report text.
"""

from __future__ import annotations

import base64

import pytest

# A helper module for the inner tests: a message and an smtplib client for any TLS mode.
HELPER = """
import smtplib
from email.message import EmailMessage


def message(subject="Hi", to="bob@example.com", sender="alice@example.com", body="hello"):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def connect(server):
    if server.tls == "smtps":
        return smtplib.SMTP_SSL(
            server.hostname, server.port, context=server.client_ssl_context(), timeout=10
        )
    client = smtplib.SMTP(server.hostname, server.port, timeout=10)
    if server.tls == "starttls":
        client.starttls(context=server.client_ssl_context())
    return client


def send(server, msg=None, *, login=None, **kwargs):
    with connect(server) as client:
        if login:
            client.login(*login)
        client.send_message(msg or message(**kwargs))
"""


@pytest.fixture
def mailtest(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(mailhelp=HELPER)
    return pytester


# ---------------------------------------------------------------------------- smtp_server


def test_plain_smtplib_message_arrives_parsed_with_its_envelope(
    mailtest: pytest.Pytester,
) -> None:
    mailtest.makepyfile(
        """
        from email.message import EmailMessage
        from mailhelp import message, send

        def test_plain(smtp_server):
            assert smtp_server.hostname == "127.0.0.1" and smtp_server.port > 0
            send(smtp_server, message(subject="Hello", body="the body"))
            [msg] = smtp_server.messages
            assert isinstance(msg, EmailMessage)
            assert msg["Subject"] == "Hello"
            assert msg.get_content().strip() == "the body"
            env = msg.envelope
            assert env.mail_from == "alice@example.com"
            assert env.rcpt_tos == ("bob@example.com",)
            assert any(o.startswith("SIZE=") for o in env.mail_options)
            assert env.peer[0] == "127.0.0.1"
            assert env.tls is False and env.auth_user is None
            assert env.raw.startswith(b"From: alice@example.com\\r\\n")
            # smtpdfix / aiosmtpd Message compatibility headers, and localserver names
            assert msg["X-RcptTo"] == "bob@example.com"
            assert smtp_server.outbox == smtp_server.messages
            assert smtp_server.addr == ("127.0.0.1", smtp_server.port)
        """
    )
    mailtest.runpytest().assert_outcomes(passed=1)


def test_starttls_login_and_smtps_login_both_work(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import pytest, smtplib
        from mailhelp import send

        @pytest.mark.smtp_server(tls="starttls", users={"alice": "secret"}, auth_required=True)
        def test_starttls(smtp_server):
            send(smtp_server, login=("alice", "secret"))
            env = smtp_server.messages[0].envelope
            assert env.tls is True and env.auth_user == "alice"

        @pytest.mark.smtp_server(tls="smtps", users={"alice": "secret"}, auth_required=True)
        def test_smtps(smtp_server):
            # AUTH over implicit TLS: what the aiosmtpd-based fixtures cannot do
            send(smtp_server, login=("alice", "secret"))
            env = smtp_server.messages[0].envelope
            assert env.tls is True and env.auth_user == "alice"

        @pytest.mark.smtp_server(tls="smtps", users={"alice": "secret"})
        def test_wrong_password_is_refused(smtp_server):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                send(smtp_server, login=("alice", "wrong"))

        @pytest.mark.smtp_server(tls="starttls")
        def test_ca_file_verifies_the_certificate(smtp_server):
            import ssl
            ctx = ssl.create_default_context(cafile=smtp_server.ca_file)
            with smtplib.SMTP(smtp_server.hostname, smtp_server.port, timeout=10) as c:
                c.starttls(context=ctx)
                assert c.noop()[0] == 250
        """
    )
    mailtest.runpytest().assert_outcomes(passed=4)


def test_marker_options_shape_what_the_server_accepts(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import pytest, smtplib
        from mailhelp import connect, message, send

        @pytest.mark.smtp_server(users={"alice": "pw"}, auth_required=True)
        def test_auth_required_refuses_anonymous_mail(smtp_server):
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                send(smtp_server)
            assert info.value.smtp_code == 530
            send(smtp_server, login=("alice", "pw"))  # plain AUTH: no TLS configured
            assert len(smtp_server.messages) == 1

        @pytest.mark.smtp_server(tls="starttls", require_starttls=True)
        def test_require_starttls(smtp_server):
            with smtplib.SMTP(smtp_server.hostname, smtp_server.port, timeout=10) as c:
                c.ehlo()
                assert c.mail("a@example.com")[0] == 530

        @pytest.mark.smtp_server(size_limit=1000)
        def test_size_limit(smtp_server):
            with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as info:
                send(smtp_server, body="x" * 5000)
            assert info.value.smtp_code == 552
            assert smtp_server.messages == []

        @pytest.mark.smtp_server(smtputf8=False)
        def test_smtputf8_off(smtp_server):
            with connect(smtp_server) as c:
                c.ehlo()
                assert not c.has_extn("smtputf8")

        def test_smtputf8_on_by_default(smtp_server):
            send(smtp_server, message(to="j\\u00f6rg@example.com"))
            env = smtp_server.messages[0].envelope
            assert env.rcpt_tos == ("j\\u00f6rg@example.com",) and env.smtputf8

        @pytest.mark.smtp_server(tls="starttls")
        class TestMarkersMerge:
            @pytest.mark.smtp_server(users={"carol": "pw"})
            def test_class_and_function_markers_combine(self, smtp_server):
                assert smtp_server.tls == "starttls"
                send(smtp_server, login=("carol", "pw"))
        """
    )
    mailtest.runpytest().assert_outcomes(passed=6)


def test_indirect_parametrization_takes_modes_dicts_and_configs(
    mailtest: pytest.Pytester,
) -> None:
    mailtest.makepyfile(
        """
        import pytest
        from mailhelp import send
        from smtptrio.testing import ServerConfig

        @pytest.mark.parametrize(
            "smtp_server",
            [None, "starttls", "smtps", {"tls": "smtps", "users": {"u": "p"}},
             ServerConfig(tls="starttls", users={"u": "p"})],
            indirect=True,
        )
        def test_each_mode(smtp_server):
            send(smtp_server, login=("u", "p") if smtp_server.config.users else None)
            assert smtp_server.messages[0].envelope.tls is (smtp_server.tls is not None)
        """
    )
    mailtest.runpytest().assert_outcomes(passed=5)


def test_smtpd_environment_variables_configure_the_server(
    mailtest: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTPD_USE_STARTTLS", "True")
    monkeypatch.setenv("SMTPD_LOGIN_NAME", "envuser")
    monkeypatch.setenv("SMTPD_LOGIN_PASSWORD", "envpw")
    monkeypatch.setenv("SMTPD_ENFORCE_AUTH", "1")
    mailtest.makepyfile(
        """
        from mailhelp import send

        def test_env(smtp_server):
            assert smtp_server.tls == "starttls"
            assert smtp_server.config.auth_required
            send(smtp_server, login=("envuser", "envpw"))
            assert smtp_server.messages[0].envelope.auth_user == "envuser"
        """
    )
    mailtest.runpytest().assert_outcomes(passed=1)


def test_bad_options_fail_the_test_with_a_clear_message(
    mailtest: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailtest.makepyfile(
        test_options="""
        import pytest

        @pytest.mark.smtp_server(bogus=1)
        def test_unknown(smtp_server):
            pass

        @pytest.mark.smtp_server(tls="ssl")
        def test_bad_tls(smtp_server):
            pass

        @pytest.mark.smtp_server(tls=None, require_starttls=True)
        def test_inconsistent(smtp_server):
            pass
        """
    )
    result = mailtest.runpytest("test_options.py")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.smtp_server: unknown smtp_server option(s): bogus; valid: *",
            "*tls must be None, 'starttls' or 'smtps', got 'ssl'*",
            "*require_starttls=True needs tls='starttls'*",
        ]
    )
    monkeypatch.setenv("SMTPD_USE_SSL", "maybe")
    mailtest.makepyfile(test_env="def test_env(smtp_server):\n    pass\n")
    result = mailtest.runpytest("test_env.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*SMTPD_USE_SSL='maybe' is not a boolean*"])


def test_missing_trustme_gives_an_install_hint(mailtest: pytest.Pytester) -> None:
    mailtest.makeconftest(
        """
        import sys
        import pytest
        import smtptrio.testing

        @pytest.fixture(autouse=True)
        def no_trustme(monkeypatch):
            monkeypatch.setitem(sys.modules, "trustme", None)  # import trustme fails
            monkeypatch.setattr(smtptrio.testing._Authority, "_instance", None)
        """
    )
    mailtest.makepyfile(
        """
        import pytest

        def test_plain_needs_no_trustme(smtp_server):
            assert smtp_server.ca_file is None

        @pytest.mark.smtp_server(tls="starttls")
        def test_tls_needs_trustme(smtp_server):
            pass
        """
    )
    result = mailtest.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*needs trustme to make a TLS certificate: pip install trustme*"])


def test_clear_forgets_messages_and_transcript(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        from mailhelp import send

        def test_clear(smtp_server):
            send(smtp_server)
            assert smtp_server.messages and smtp_server.transcript.text()
            smtp_server.faults.delay("RCPT", 0.01)
            smtp_server.clear()
            assert smtp_server.messages == []
            assert smtp_server.transcript.text() == ""
            assert len(smtp_server.faults) == 1  # clear() keeps faults, reset() does not
            smtp_server.reset()
            assert len(smtp_server.faults) == 0
            send(smtp_server, subject="after")
            assert [m["Subject"] for m in smtp_server.messages] == ["after"]
        """
    )
    mailtest.runpytest().assert_outcomes(passed=1)


# ---------------------------------------------------------------------------- faults


def test_faults_make_smtplib_see_the_chosen_failures(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import smtplib, time
        import pytest
        from mailhelp import connect, message, send

        def test_421_on_the_second_mail(smtp_server):
            fault = smtp_server.faults.reply("MAIL", "421 4.3.2 try later", nth=2)
            send(smtp_server)
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                send(smtp_server)
            assert info.value.smtp_code == 421
            send(smtp_server)  # only the second one
            assert fault.fired == 1 and len(smtp_server.messages) == 2

        def test_452_on_rcpt_and_554_after_data(smtp_server):
            smtp_server.faults.reply("RCPT", "452 4.5.3 too many recipients")
            smtp_server.faults.reply("DATA", "554 5.6.0 message refused")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as rcpt:
                send(smtp_server)
            assert rcpt.value.recipients["bob@example.com"][0] == 452
            with pytest.raises(smtplib.SMTPDataError) as data:
                send(smtp_server)
            assert data.value.smtp_code == 554
            assert smtp_server.messages == []

        @pytest.mark.parametrize("point", ["MAIL", "RCPT", "DATA", "mid-DATA"])
        def test_disconnect(smtp_server, point):
            smtp_server.faults.disconnect(at=point)
            with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
                send(smtp_server, body="line\\n" * 20000)
            assert smtp_server.messages == []
            send(smtp_server)  # once by default
            assert len(smtp_server.messages) == 1

        def test_delay(smtp_server):
            smtp_server.faults.delay("RCPT", seconds=0.3)
            start = time.monotonic()
            send(smtp_server)
            assert time.monotonic() - start >= 0.3

        @pytest.mark.smtp_server(tls="starttls")
        def test_refuse_tls(smtp_server):
            smtp_server.faults.refuse_tls()
            with smtplib.SMTP(smtp_server.hostname, smtp_server.port, timeout=10) as c:
                with pytest.raises(smtplib.SMTPResponseException) as info:
                    c.starttls(context=smtp_server.client_ssl_context())
            assert info.value.smtp_code == 454

        def test_greeting(smtp_server):
            smtp_server.faults.reply("CONNECT", "421 4.3.2 too busy")
            with pytest.raises(smtplib.SMTPConnectError) as info:
                smtplib.SMTP(smtp_server.hostname, smtp_server.port, timeout=10)
            assert info.value.smtp_code == 421

        def test_bad_faults_are_refused_when_added(smtp_server):
            with pytest.raises(ValueError, match="4xx or 5xx"):
                smtp_server.faults.reply("MAIL", "250 fine")
            with pytest.raises(ValueError, match="choose one of"):
                smtp_server.faults.reply("BDAT", "421 no")
            with pytest.raises(ValueError, match="not an SMTP reply"):
                smtp_server.faults.reply("MAIL", "oops")
        """
    )
    mailtest.runpytest().assert_outcomes(passed=10)


# ---------------------------------------------------------------------------- report


def test_failing_test_report_shows_the_transcript_with_secrets_hidden(
    mailtest: pytest.Pytester,
) -> None:
    mailtest.makepyfile(
        """
        import pytest
        from mailhelp import message, send

        @pytest.mark.smtp_server(tls="starttls", users={"alice": "s3cret-pw"})
        def test_fails(smtp_server):
            smtp_server.faults.reply("RCPT", "452 4.5.3 come back later", nth=2)
            send(smtp_server, message(subject="Greetings", body="TOP-SECRET-BODY"),
                 login=("alice", "s3cret-pw"))
            assert smtp_server.messages == []

        def test_passes(smtp_server):
            send(smtp_server)
        """
    )
    result = mailtest.runpytest("-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- smtp transcript -*",
            "--- connection 1 from 127.0.0.1:* (plain) ---",
            "S: 220 localhost *",
            "C: STARTTLS",
            "* TLS established (TLS*",
            "C: AUTH PLAIN <hidden>",
            "S: 235 *",
            "C: mail FROM:<alice@example.com> size=*",
            "C: <message text: * bytes, * lines, Subject: 'Greetings'>",
            "C: .",
            "S: 250 *",
        ]
    )
    out = result.stdout.str()
    assert out.count("smtp transcript") == 1  # the passing test gets none, even with -rA
    section = out.split("smtp transcript", 1)[1].split("=====", 1)[0]
    assert "s3cret-pw" not in section
    assert base64.b64encode(b"\0alice\0s3cret-pw").decode() not in section
    assert "TOP-SECRET-BODY" not in section


def test_transcript_of_a_failing_trio_test(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import pytest

        @pytest.mark.trio
        async def test_fails(trio_smtp_server):
            async with trio_smtp_server.client() as client:
                await client.ehlo()
                reply = await client.command("RCPT TO:<x@example.com>")
            assert reply.code == 250
        """
    )
    result = mailtest.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*- smtp transcript -*", "C: RCPT TO:<x@example.com>", "S: 503 *", "C: QUIT"]
    )


# ---------------------------------------------------------------------------- session, xdist


def test_session_server_is_shared_and_reset_between_tests(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import pytest
        from mailhelp import send

        PORTS = []

        def test_first(smtp_server_session):
            PORTS.append(smtp_server_session.port)
            send(smtp_server_session, subject="first")
            smtp_server_session.faults.reply("MAIL", "421 4.3.2 leaked?")
            assert len(smtp_server_session.messages) == 1

        def test_second(smtp_server_session):
            PORTS.append(smtp_server_session.port)
            assert PORTS[0] == PORTS[1]
            assert smtp_server_session.messages == []
            assert smtp_server_session.transcript.text() == ""
            send(smtp_server_session, subject="second")  # the fault did not leak
            assert smtp_server_session.messages[0]["Subject"] == "second"
            assert False, "show the transcript"

        @pytest.mark.smtp_server(tls="smtps")
        def test_marker_is_refused(smtp_server_session):
            pass
        """
    )
    result = mailtest.runpytest()
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*cannot configure smtp_server_session*", "*Subject: 'second'*"])
    assert "Subject: 'first'" not in result.stdout.str()


def test_xdist_workers_each_get_free_ports(mailtest: pytest.Pytester) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist (smtptrio's test extra) is not installed")
    mailtest.makepyfile(
        """
        import pytest
        from mailhelp import send

        @pytest.mark.parametrize("n", range(4))
        def test_function_scoped(smtp_server, n):
            send(smtp_server, subject=str(n))
            smtp_server.assert_sent(subject=str(n))

        @pytest.mark.parametrize("n", range(4))
        def test_session_scoped(smtp_server_session, n):
            send(smtp_server_session, subject=str(n))
            assert len(smtp_server_session.messages) == 1
        """
    )
    result = mailtest.runpytest("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


# ---------------------------------------------------------------------------- trio


def test_trio_fixture_serves_in_the_test_run(mailtest: pytest.Pytester) -> None:
    mailtest.makeini("[pytest]\ntrio_mode = true\n")
    mailtest.makepyfile(
        """
        import pytest
        import trio

        def task_names(task):
            yield task.name
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    yield from task_names(child)

        async def test_scripted_client_and_wait(trio_smtp_server, nursery):
            # the server's accept loop is a task of this very trio run: no thread
            names = list(task_names(trio.lowlevel.current_root_task()))
            assert any(name.endswith("_accept_loop") for name in names), names
            async def send():
                async with trio_smtp_server.client() as client:
                    await client.ehlo()
                    await client.sendmail("a@example.com", ["b@example.com"],
                                          "Subject: hi\\n\\nbody\\n")
            nursery.start_soon(send)
            [msg] = await trio_smtp_server.wait_for_messages(1, timeout=10)
            assert msg["Subject"] == "hi"

        async def test_autojump_clock_skips_injected_delays(trio_smtp_server, autojump_clock):
            trio_smtp_server.faults.delay("RCPT", seconds=120)
            async with trio_smtp_server.client() as client:
                await client.ehlo()
                start = trio.current_time()
                await client.sendmail("a@example.com", "b@example.com", "Subject: x\\n\\nx\\n")
                assert trio.current_time() - start >= 120

        @pytest.mark.smtp_server(tls="smtps", users={"alice": "pw"}, auth_required=True)
        async def test_smtps_login(trio_smtp_server):
            async with trio_smtp_server.client() as client:
                await client.ehlo()
                assert (await client.login("alice", "pw")).code == 235
                await client.sendmail("a@example.com", "b@example.com", "Subject: x\\n\\nx\\n")
            trio_smtp_server.assert_sent(to="b@example.com", tls=True, auth_user="alice")

        @pytest.mark.smtp_server(tls="starttls")
        async def test_faults_in_trio(trio_smtp_server):
            trio_smtp_server.faults.reply("DATA", "554 5.6.0 no thanks")
            async with trio_smtp_server.client(starttls=True) as client:
                await client.ehlo()
                from smtptrio.testing import SMTPClientError
                with pytest.raises(SMTPClientError) as info:
                    await client.sendmail("a@example.com", "b@example.com", "x")
                assert info.value.reply.code == 554

        async def test_wait_times_out_with_a_summary(trio_smtp_server, autojump_clock):
            with pytest.raises(AssertionError, match="waited 30 s for 1 message.*no messages"):
                await trio_smtp_server.wait_for_messages(1, timeout=30)
        """
    )
    mailtest.runpytest().assert_outcomes(passed=5)


def test_trio_fixture_under_anyio_with_the_trio_backend(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.mark.anyio
        async def test_anyio_trio(trio_smtp_server):
            async with trio_smtp_server.client() as client:
                await client.ehlo()
                await client.sendmail("a@example.com", "b@example.com", "Subject: a\\n\\nx\\n")
            await trio_smtp_server.wait_for_messages(1)

        @pytest.mark.anyio
        @pytest.mark.parametrize("anyio_backend", ["asyncio"])
        async def test_asyncio_gets_a_clear_error(trio_smtp_server):
            pass
        """
    )
    result = mailtest.runpytest("-p", "no:trio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*needs a trio event loop*use the threaded server*"])


def test_trio_fixture_with_aiosmtplib(mailtest: pytest.Pytester) -> None:
    pytest.importorskip("aiosmtplib", reason="aiosmtplib (a test-only dependency) is absent")
    mailtest.makepyfile(
        """
        import asyncio
        from email.message import EmailMessage
        import aiosmtplib
        import pytest
        import trio

        @pytest.mark.trio
        @pytest.mark.smtp_server(tls="starttls", users={"alice": "pw"})
        async def test_aiosmtplib(trio_smtp_server):
            # aiosmtplib needs asyncio: it runs on a thread while trio serves. No
            # autojump_clock here: a thread's real time would let the mock clock jump.
            msg = EmailMessage()
            msg["Subject"] = "from asyncio"
            msg.set_content("hi")
            send = aiosmtplib.send(
                msg, sender="a@example.com", recipients=["b@example.com"],
                hostname=trio_smtp_server.hostname, port=trio_smtp_server.port,
                start_tls=True, tls_context=trio_smtp_server.client_ssl_context(),
                username="alice", password="pw", timeout=10,
            )
            with trio.fail_after(20):
                await trio.to_thread.run_sync(asyncio.run, send)
            trio_smtp_server.assert_sent(subject="from asyncio", tls=True, auth_user="alice")
        """
    )
    mailtest.runpytest().assert_outcomes(passed=1)


# ---------------------------------------------------------------------------- assertions


def test_assert_sent_failure_lists_what_the_server_saw(mailtest: pytest.Pytester) -> None:
    mailtest.makepyfile(
        """
        from mailhelp import message, send

        def test_wrong_recipient(smtp_server):
            send(smtp_server, message(to="carol@example.com", subject="Hi"))
            smtp_server.assert_sent(to="bob@example.com")

        def test_nothing_sent(smtp_server):
            smtp_server.assert_sent(to="bob@example.com", subject="Report", count=2)
        """
    )
    result = mailtest.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected 1 message to bob@example.com, got 0; "
            "the server saw 1 message(s):",
            "*1. from alice@example.com to carol@example.com, subject 'Hi'",
            "*AssertionError: expected 2 messages to bob@example.com with subject 'Report', "
            "got 0; the server saw no messages",
        ]
    )


# ---------------------------------------------------------------------------- import cost


def test_a_run_that_uses_no_fixture_loads_nothing_heavy(pytester: pytest.Pytester) -> None:
    # A fresh interpreter: in-process runs share this process's sys.modules.
    pytester.makepyfile(
        """
        import sys

        def test_modules():
            assert "smtptrio.pytest_plugin" in sys.modules  # the entry point registered it
            heavy = {"smtptrio.testing", "smtptrio.controller", "trustme", "cryptography"}
            assert not heavy & set(sys.modules)
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
