"""The built-in handlers, hooks called directly: what they print, store, relay and answer."""

from __future__ import annotations

import argparse
import contextlib
import email.message
import errno
import io
import logging
import mailbox
import os
import re
import socket
import stat
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from smtptrio.handlers import AsyncMessage, Debugging, Mailbox, Message, Proxy, Sink
from smtptrio.server.session import Envelope, Session

PEER = ("203.0.113.7", 40123)


@dataclass
class StubServer:
    """The two attributes handlers may rely on."""

    hostname: str = "mx.test.example"
    event_handler: object = None


def make_session(peer: Any = PEER) -> Session:
    session = Session()
    session.peer = peer
    return session


def make_envelope(
    content: bytes | str = b"Subject: hi\r\n\r\nbody\r\n",
    *,
    mail_from: str = "anne@example.com",
    rcpt_tos: tuple[str, ...] = ("bart@example.org",),
    mail_options: tuple[str, ...] = (),
    original: bytes | None = None,
) -> Envelope:
    envelope = Envelope()
    envelope.mail_from = mail_from
    envelope.rcpt_tos = list(rcpt_tos)
    envelope.mail_options = list(mail_options)
    envelope.smtp_utf8 = "SMTPUTF8" in mail_options
    envelope.content = content
    if original is None:
        original = (
            content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        )
    envelope.original_content = original
    return envelope


def code_of(reply: str) -> tuple[str, str]:
    """Reply code and enhanced code: what tests assert, never the text."""
    code, enhanced = reply.split(" ", 2)[:2]
    return code, enhanced


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="smtptrio")


# ---------------------------------------------------------------------------------- Debugging


async def test_debugging_prints_options_headers_peer_and_body_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    envelope = make_envelope(
        b"From: anne@example.com\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n",
        mail_options=("SIZE=100", "BODY=8BITMIME"),
    )
    reply = await Debugging().handle_DATA(StubServer(), make_session(), envelope)
    assert reply == "250 OK"
    assert capsys.readouterr().out.splitlines() == [
        "---------- MESSAGE FOLLOWS ----------",
        "mail options: SIZE=100 BODY=8BITMIME",
        "",
        "From: anne@example.com",
        "Subject: hi",
        "X-Peer: 203.0.113.7",
        "",
        "line one",
        "line two",
        "------------ END MESSAGE ------------",
    ]


async def test_debugging_writes_to_the_given_stream_and_flushes() -> None:
    class Recording(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    stream = Recording()
    await Debugging(stream).handle_DATA(StubServer(), make_session(), make_envelope())
    out = stream.getvalue().splitlines()
    assert out[0] == "---------- MESSAGE FOLLOWS ----------"
    assert out[1:5] == ["Subject: hi", "X-Peer: 203.0.113.7", "", "body"]
    assert out[-1] == "------------ END MESSAGE ------------"
    assert stream.flushes >= 1


async def test_debugging_decodes_bad_bytes_with_replacement() -> None:
    stream = io.StringIO()
    content = b"Subject: caf\xc3\xa9\r\n\r\nbad \xff byte\r\n"
    await Debugging(stream).handle_DATA(StubServer(), make_session(), make_envelope(content))
    assert "Subject: caf\u00e9" in stream.getvalue()
    assert "bad \ufffd byte" in stream.getvalue()


async def test_debugging_prints_str_content_even_with_surrogate_escapes() -> None:
    stream = io.StringIO()
    content = "Subject: s\u00f6me\r\n\r\nbad \udcff\r\n"  # decode_data=True + SMTPUTF8 form
    await Debugging(stream).handle_DATA(StubServer(), make_session(), make_envelope(content))
    lines = stream.getvalue().splitlines()
    assert lines[1:5] == ["Subject: s\u00f6me", "X-Peer: 203.0.113.7", "", "bad \ufffd"]


async def test_debugging_looks_stdout_up_when_printing() -> None:
    handler = Debugging()  # built before the redirection
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert "X-Peer: 203.0.113.7" in buffer.getvalue()


async def test_debugging_adds_peer_after_headers_when_there_is_no_body() -> None:
    stream = io.StringIO()
    envelope = make_envelope(b"Subject: only\r\n")
    await Debugging(stream).handle_DATA(StubServer(), make_session(), envelope)
    assert stream.getvalue().splitlines()[1:3] == ["Subject: only", "X-Peer: 203.0.113.7"]


@pytest.mark.parametrize(
    ("peer", "shown"),
    [
        (("2001:db8::1", 25, 0, 0), "2001:db8::1"),
        ("/run/smtp.sock", "/run/smtp.sock"),
        (None, "unknown"),
        (("bad\r\nX-Evil: 1", 25), "bad??X-Evil: 1"),
    ],
)
async def test_debugging_shows_the_host_part_of_any_peer(peer: Any, shown: str) -> None:
    stream = io.StringIO()
    await Debugging(stream).handle_DATA(StubServer(), make_session(peer), make_envelope())
    assert f"X-Peer: {shown}" in stream.getvalue().splitlines()


# ----------------------------------------------------------------------------------- from_cli


def test_debugging_from_cli_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert Debugging.from_cli(parser()).stream is sys.stdout
    assert Debugging.from_cli(parser(), "stdout").stream is sys.stdout


def test_debugging_from_cli_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert Debugging.from_cli(parser(), "stderr").stream is sys.stderr


@pytest.mark.parametrize("args", [("stdin",), ("stdout", "stderr"), ("",)])
def test_debugging_from_cli_refuses_other_arguments(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        Debugging.from_cli(parser(), *args)
    assert exc.value.code == 2
    assert "Debugging" in capsys.readouterr().err


def test_sink_from_cli_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(Sink.from_cli(parser()), Sink)
    with pytest.raises(SystemExit):
        Sink.from_cli(parser(), "extra")
    assert "Sink handler does not accept arguments" in capsys.readouterr().err


def test_sink_has_no_hooks() -> None:
    assert not [name for name in dir(Sink()) if name.startswith(("handle_", "auth_"))]


def test_mailbox_from_cli_takes_the_directory(tmp_path: Path) -> None:
    handler = Mailbox.from_cli(parser(), str(tmp_path / "md"))
    assert isinstance(handler, Mailbox)
    assert handler.mail_dir == str(tmp_path / "md")
    assert (tmp_path / "md" / "new").is_dir()


@pytest.mark.parametrize("args", [(), ("a", "b")])
def test_mailbox_from_cli_needs_exactly_one_argument(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        Mailbox.from_cli(parser(), *args)
    assert "Mailbox" in capsys.readouterr().err


def test_proxy_from_cli_takes_host_and_port() -> None:
    handler = Proxy.from_cli(parser(), "relay.example", "2525")
    assert isinstance(handler, Proxy)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("relay.example",),
        ("h", "25", "x"),
        ("h", "smtp"),
        ("h", "0"),
        ("h", "65536"),
        ("h", "-25"),
        ("h", "2.5"),
    ],
)
def test_proxy_from_cli_refuses_bad_arguments(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        Proxy.from_cli(parser(), *args)
    assert "Proxy" in capsys.readouterr().err


def test_proxy_accepts_a_numeric_string_port_as_aiosmtpd_did() -> None:
    Proxy("relay.example", "2525")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Proxy("relay.example", "smtp")  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_proxy_refuses_a_bad_port_at_construction(port: int) -> None:
    with pytest.raises(ValueError, match="remote_port"):
        Proxy("relay.example", port)


# ---------------------------------------------------------------------- Message, AsyncMessage


class Recorder(Message):
    def __init__(self, message_class: type[email.message.Message] | None = None) -> None:
        super().__init__(message_class)
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


class AsyncRecorder(AsyncMessage):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.messages: list[email.message.Message] = []

    async def handle_message(self, message: email.message.Message) -> None:
        await trio.lowlevel.checkpoint()
        self.messages.append(message)


async def test_message_adds_peer_mailfrom_and_rcptto_headers() -> None:
    handler = Recorder()
    envelope = make_envelope(
        b"From: anne@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
        rcpt_tos=("bart@example.org", "cate@example.net"),
    )
    assert await handler.handle_DATA(StubServer(), make_session(), envelope) == "250 OK"
    (message,) = handler.messages
    assert type(message) is email.message.Message
    assert message["X-Peer"] == str(PEER)  # aiosmtpd: str() of the whole peer
    assert message["X-MailFrom"] == "anne@example.com"
    assert message["X-RcptTo"] == "bart@example.org, cate@example.net"
    assert message["Subject"] == "hi"
    assert message.get_payload() == "body\r\n"


async def test_message_parses_str_content() -> None:
    handler = Recorder()
    envelope = make_envelope("Subject: caf\u00e9\r\n\r\nbod\u00fd\r\n")
    await handler.handle_DATA(StubServer(), make_session(), envelope)
    assert handler.messages[0]["Subject"] == "caf\u00e9"
    assert handler.messages[0]["X-MailFrom"] == "anne@example.com"


async def test_message_uses_the_given_message_class() -> None:
    class Custom(email.message.Message):
        pass

    handler = Recorder(Custom)
    await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert type(handler.messages[0]) is Custom
    assert handler.messages[0]["X-Peer"] == str(PEER)


def test_message_prepare_message_refuses_missing_content() -> None:
    envelope = make_envelope()
    envelope.content = None
    with pytest.raises(TypeError):
        Recorder().prepare_message(make_session(), envelope)


def test_message_is_abstract() -> None:
    with pytest.raises(TypeError):
        Message()  # type: ignore[abstract]


def test_message_base_handle_message_raises_not_implemented() -> None:
    class Lazy(Message):
        def handle_message(self, message: email.message.Message) -> None:
            super().handle_message(message)  # type: ignore[safe-super]

    with pytest.raises(NotImplementedError):
        Lazy().handle_message(email.message.Message())


async def test_async_message_awaits_handle_message_with_the_same_headers() -> None:
    handler = AsyncRecorder()
    assert await handler.handle_DATA(StubServer(), make_session(), make_envelope()) == "250 OK"
    (message,) = handler.messages
    assert message["X-Peer"] == str(PEER)
    assert message["X-MailFrom"] == "anne@example.com"
    assert message["X-RcptTo"] == "bart@example.org"


async def test_async_message_with_custom_class() -> None:
    handler = AsyncRecorder(message_class=mailbox.MaildirMessage)
    await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert isinstance(handler.messages[0], mailbox.MaildirMessage)


def test_async_message_loop_is_accepted_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="trio"):
        AsyncRecorder(loop=object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handler = AsyncRecorder()
    with pytest.raises(AttributeError, match="trio"):
        _ = handler.loop


# ------------------------------------------------------------------------------------ Mailbox


DOCTEST_MESSAGES = [
    ("aperson@example.com", "bperson@example.com", "Anne", "anne", "Bart", "bart", "ant"),
    ("cperson@example.com", "dperson@example.com", "Cate", "cate", "Dave", "dave", "bee"),
    ("eperson@example.com", "fperson@example.com", "Elle", "elle", "Fred", "fred", "cat"),
]


def doctest_content(sender: str, s_mail: str, rcpt: str, r_mail: str, mid: str) -> bytes:
    # What smtplib.sendmail sends for the doctest's str message: LF turned into CRLF.
    text = (
        f"From: {sender} Person <{s_mail}@example.com>\n"
        f"To: {rcpt} Person <{r_mail}@example.com>\n"
        "Subject: A test\n"
        f"Message-ID: <{mid}>\n"
        "\n"
        f"Hi {rcpt}, this is {sender}.\n"
    )
    return text.replace("\n", "\r\n").encode()


def maildir_files(root: Path, sub: str = "new") -> list[Path]:
    return sorted((root / sub).iterdir())


async def test_mailbox_doctest_gives_the_same_output(tmp_path: Path) -> None:
    maildir_path = tmp_path / "maildir"
    handler = Mailbox(maildir_path)
    for mail_from, rcpt_to, sender, s_mail, rcpt, r_mail, mid in DOCTEST_MESSAGES:
        envelope = make_envelope(
            doctest_content(sender, s_mail, rcpt, r_mail, mid),
            mail_from=mail_from,
            rcpt_tos=(rcpt_to,),
        )
        assert await handler.handle_DATA(StubServer(), make_session(), envelope) == "250 OK"
    messages = sorted(mailbox.Maildir(maildir_path), key=itemgetter("message-id"))
    assert [(m["Message-ID"], m["From"], m["To"]) for m in messages] == [
        ("<ant>", "Anne Person <anne@example.com>", "Bart Person <bart@example.com>"),
        ("<bee>", "Cate Person <cate@example.com>", "Dave Person <dave@example.com>"),
        ("<cat>", "Elle Person <elle@example.com>", "Fred Person <fred@example.com>"),
    ]


async def test_mailbox_stores_what_maildir_add_would(tmp_path: Path) -> None:
    content = b"From: a@example.com\r\nSubject: caf\xc3\xa9\r\n\r\nline\r\n.dot\r\nbyte \xff\r\n"
    envelope = make_envelope(
        content,
        mail_from="j\u00f6rg@example.com",
        rcpt_tos=("b@example.org", "c@example.net"),
        mail_options=("SMTPUTF8", "BODY=8BITMIME"),
    )
    handler = Mailbox(tmp_path / "ours")
    session = make_session()
    assert await handler.handle_DATA(StubServer(), session, envelope) == "250 OK"

    reference = mailbox.Maildir(tmp_path / "stdlib")
    reference.add(handler.prepare_message(session, envelope))
    (ours,) = maildir_files(tmp_path / "ours")
    (theirs,) = maildir_files(tmp_path / "stdlib")
    assert ours.read_bytes() == theirs.read_bytes()
    assert not list((tmp_path / "ours" / "tmp").iterdir())

    (stored,) = list(mailbox.Maildir(tmp_path / "ours"))
    assert stored["X-Peer"] == str(PEER)
    assert stored["X-RcptTo"] == "b@example.org, c@example.net"
    assert stored.get_payload(decode=True) == b"line\n.dot\nbyte \xff\n"


async def test_mailbox_names_follow_the_maildir_convention(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "md")
    await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    (path,) = maildir_files(tmp_path / "md")
    assert re.fullmatch(rf"\d+\.M\d{{1,6}}P{os.getpid()}Q\d+\.[^/:]+", path.name)


async def test_mailbox_concurrent_deliveries_get_unique_files(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "md")
    replies: list[str] = []

    async def deliver(i: int) -> None:
        envelope = make_envelope(f"Message-ID: <m{i}>\r\n\r\nbody {i}\r\n".encode())
        replies.append(await handler.handle_DATA(StubServer(), make_session(), envelope))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(deliver, i)
    assert replies == ["250 OK"] * 60
    files = maildir_files(tmp_path / "md")
    assert len({f.name for f in files}) == 60
    assert not list((tmp_path / "md" / "tmp").iterdir())
    ids = sorted(m["Message-ID"] for m in mailbox.Maildir(tmp_path / "md"))
    assert ids == sorted(f"<m{i}>" for i in range(60))


async def test_mailbox_honours_a_maildir_message_folder_and_flags(tmp_path: Path) -> None:
    class Seen(Mailbox):
        def prepare_message(self, session: Session, envelope: Envelope) -> Any:
            message = super().prepare_message(session, envelope)
            assert isinstance(message, mailbox.MaildirMessage)
            message.set_subdir("cur")
            message.set_flags("S")
            return message

    handler = Seen(tmp_path / "md", mailbox.MaildirMessage)
    assert await handler.handle_DATA(StubServer(), make_session(), make_envelope()) == "250 OK"
    assert maildir_files(tmp_path / "md") == []
    (stored,) = maildir_files(tmp_path / "md", "cur")
    assert stored.name.endswith(":2,S")
    (message,) = list(mailbox.Maildir(tmp_path / "md"))
    assert message.get_flags() == "S"


async def test_mailbox_reset_empties_the_mailbox(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "md")
    for _ in range(3):
        await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert len(mailbox.Maildir(tmp_path / "md")) == 3
    handler.reset()
    assert len(mailbox.Maildir(tmp_path / "md")) == 0


@dataclass
class FsyncCall:
    is_dir: bool
    inode: int
    new_entries: list[str]
    in_main_thread: bool


def record_fsync(monkeypatch: pytest.MonkeyPatch, new_dir: Path) -> list[FsyncCall]:
    calls: list[FsyncCall] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(
            FsyncCall(
                is_dir=stat.S_ISDIR(st.st_mode),
                inode=st.st_ino,
                new_entries=sorted(os.listdir(new_dir)),
                in_main_thread=threading.current_thread() is threading.main_thread(),
            )
        )
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_mailbox_fsyncs_the_file_before_and_new_dir_after_linking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Mailbox(tmp_path / "md")
    new_dir = tmp_path / "md" / "new"
    calls = record_fsync(monkeypatch, new_dir)
    assert await handler.handle_DATA(StubServer(), make_session(), make_envelope()) == "250 OK"
    (delivered,) = maildir_files(tmp_path / "md")

    file_syncs = [c for c in calls if not c.is_dir]
    dir_syncs = [c for c in calls if c.is_dir and c.inode == new_dir.stat().st_ino]
    assert [c.inode for c in file_syncs] == [delivered.stat().st_ino]
    assert file_syncs[0].new_entries == []  # synced while still only in tmp/
    assert len(dir_syncs) == 1
    assert dir_syncs[0].new_entries == [delivered.name]  # new/ synced once it holds the file
    assert calls.index(file_syncs[0]) < calls.index(dir_syncs[0])
    assert not any(c.in_main_thread for c in calls)  # all of it off the event-loop thread


async def test_mailbox_handle_message_called_directly_is_durable_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Filtering(Mailbox):
        def handle_message(self, message: email.message.Message) -> None:
            if message["Subject"] != "spam":
                super().handle_message(message)

    handler = Filtering(tmp_path / "md")
    calls = record_fsync(monkeypatch, tmp_path / "md" / "new")
    await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    spam = make_envelope(b"Subject: spam\r\n\r\nbuy\r\n")
    assert await handler.handle_DATA(StubServer(), make_session(), spam) == "250 OK"
    assert len(maildir_files(tmp_path / "md")) == 1  # the override was honoured
    assert [c.is_dir for c in calls] == [False, True]

    calls.clear()
    handler.handle_message(handler.prepare_message(make_session(), make_envelope()))
    assert len(maildir_files(tmp_path / "md")) == 2
    assert [c.is_dir for c in calls] == [False, True]


def fail_fsync_on(monkeypatch: pytest.MonkeyPatch, *, dirs: bool) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) == dirs:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("dirs", [False, True], ids=["file-fsync", "dir-fsync"])
async def test_mailbox_disk_error_gives_451_and_leaves_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    dirs: bool,
) -> None:
    handler = Mailbox(tmp_path / "md")
    fail_fsync_on(monkeypatch, dirs=dirs)
    session = make_session()
    with caplog.at_level(logging.ERROR, logger="smtptrio.handlers"):
        reply = await handler.handle_DATA(StubServer(), session, make_envelope())
    assert code_of(reply) == ("451", "4.3.0")
    assert maildir_files(tmp_path / "md") == []
    assert maildir_files(tmp_path / "md", "tmp") == []
    (record,) = [r for r in caplog.records if r.name == "smtptrio.handlers"]
    assert record.session_id == session.id  # type: ignore[attr-defined]
    assert record.exc_info is not None


async def test_mailbox_missing_tmp_dir_gives_451(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "md")
    (tmp_path / "md" / "tmp").rmdir()
    reply = await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert code_of(reply) == ("451", "4.3.0")
    assert maildir_files(tmp_path / "md") == []


async def test_mailbox_recovers_after_a_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Mailbox(tmp_path / "md")
    with monkeypatch.context() as patch:
        fail_fsync_on(patch, dirs=False)
        reply = await handler.handle_DATA(StubServer(), make_session(), make_envelope())
        assert code_of(reply)[0] == "451"
    assert await handler.handle_DATA(StubServer(), make_session(), make_envelope()) == "250 OK"
    assert len(maildir_files(tmp_path / "md")) == 1


# -------------------------------------------------------------------------------------- Proxy


@dataclass
class Upstream:
    """A scripted SMTP server: replies per command, and a record of what it was sent."""

    greeting: bytes = b"220 upstream.test ESMTP"
    extensions: tuple[bytes, ...] = (b"8BITMIME", b"SMTPUTF8", b"SIZE 10000000")
    mail_reply: bytes = b"250 2.1.0 OK"
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)  # default 250
    data_reply: bytes = b"250 2.0.0 queued as X1"
    hang_before_greeting: bool = False
    close_after: bytes | None = None  # drop the connection after this command's reply
    data_reply_gate: trio.Event | None = None  # hold the DATA reply until set

    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    data_received: trio.Event = field(default_factory=trio.Event)

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()

        async def readline() -> bytes | None:
            for _ in range(10_000):
                end = buffer.find(b"\r\n")
                if end >= 0:
                    line = bytes(buffer[: end + 2])
                    del buffer[: end + 2]
                    return line
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return None
                buffer.extend(chunk)
            raise AssertionError("line too long")

        async with stream:
            if self.hang_before_greeting:
                await trio.sleep_forever()
            await stream.send_all(self.greeting + b"\r\n")
            for _ in range(100):
                line = await readline()
                if line is None:
                    return
                self.commands.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    lines = [b"upstream.test", *self.extensions]
                    reply = b"\r\n".join(
                        b"250" + (b"-" if i < len(lines) - 1 else b" ") + text
                        for i, text in enumerate(lines)
                    )
                elif verb == b"MAIL":
                    reply = self.mail_reply
                elif verb == b"RCPT":
                    address = line.split(b":", 1)[1].split(b">")[0].strip(b" <").decode()
                    reply = self.rcpt_replies.get(address, b"250 2.1.5 OK")
                elif verb == b"DATA":
                    await stream.send_all(b"354 go ahead\r\n")
                    self.messages.append(await self._read_data(readline))
                    self.data_received.set()
                    if self.data_reply_gate is not None:
                        await self.data_reply_gate.wait()
                    reply = self.data_reply
                elif verb == b"QUIT":
                    await stream.send_all(b"221 bye\r\n")
                    return
                else:  # RSET, NOOP
                    reply = b"250 OK"
                await stream.send_all(reply + b"\r\n")
                if self.close_after == verb:
                    return

    @staticmethod
    async def _read_data(readline: Callable[[], Any]) -> bytes:
        lines: list[bytes] = []
        for _ in range(10_000):
            line = await readline()
            assert line is not None, "disconnect inside DATA"
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
        raise AssertionError("message too long")


@contextlib.asynccontextmanager
async def running(upstream: Upstream) -> AsyncIterator[int]:
    """Serve ``upstream`` on 127.0.0.1, an ephemeral port, for the block's duration."""
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, upstream.serve, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def relay(upstream: Upstream, envelope: Envelope | None = None, **kwargs: Any) -> str:
    with trio.fail_after(20):
        async with running(upstream) as port:
            handler = Proxy("127.0.0.1", port, **kwargs)
            return await handler.handle_DATA(
                StubServer(), make_session(), envelope or make_envelope()
            )


async def test_proxy_relays_with_peer_header_and_crlf_and_answers_250() -> None:
    upstream = Upstream()
    content = b"From: a@example.com\r\nSubject: hi\n\r\nbare lf\nbare cr\rcrlf\r\n.dot\r\n"
    envelope = make_envelope(content, rcpt_tos=("b@example.org", "c@example.org"))
    assert await relay(upstream, envelope) == "250 OK"
    (relayed,) = upstream.messages
    assert relayed == (
        b"From: a@example.com\r\nSubject: hi\r\nX-Peer: 203.0.113.7\r\n"
        b"\r\nbare lf\r\nbare cr\r\ncrlf\r\n.dot\r\n"
    )
    verbs = [c.split()[0].upper() for c in upstream.commands]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"QUIT"]
    assert upstream.commands[0].lower() == b"ehlo mx.test.example\r\n"  # server.hostname
    assert upstream.commands[1].lower() == b"mail from:<anne@example.com> size=%d\r\n" % len(
        relayed
    )
    assert upstream.commands[2:4] == [
        b"rcpt TO:<b@example.org>\r\n",
        b"rcpt TO:<c@example.org>\r\n",
    ]


async def test_proxy_puts_peer_first_when_there_are_no_headers() -> None:
    upstream = Upstream()
    assert await relay(upstream, make_envelope(b"\r\nbody only\r\n")) == "250 OK"
    assert upstream.messages == [b"X-Peer: 203.0.113.7\r\n\r\nbody only\r\n"]


async def test_proxy_appends_peer_when_there_is_no_body() -> None:
    upstream = Upstream()
    assert await relay(upstream, make_envelope(b"Subject: x\r\nY: z")) == "250 OK"
    assert upstream.messages == [b"Subject: x\r\nY: z\r\nX-Peer: 203.0.113.7\r\n"]


async def test_proxy_relays_str_content_from_original_bytes() -> None:
    upstream = Upstream()
    original = b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n"
    envelope = make_envelope(original.decode(), original=original, mail_options=("SMTPUTF8",))
    assert await relay(upstream, envelope) == "250 OK"
    assert upstream.messages == [b"Subject: caf\xc3\xa9\r\nX-Peer: 203.0.113.7\r\n\r\nbody\r\n"]


async def test_proxy_passes_8bitmime_and_smtputf8_but_not_the_clients_size() -> None:
    upstream = Upstream()
    envelope = make_envelope(
        "Subject: \u00fc\r\n\r\n\u00fc\r\n".encode(),
        mail_from="j\u00f6rg@example.com",
        mail_options=("SIZE=99999", "BODY=8BITMIME", "SMTPUTF8"),
    )
    assert await relay(upstream, envelope) == "250 OK"
    mail = upstream.commands[1].decode().upper().split()
    assert mail[1] == "FROM:<J\u00d6RG@EXAMPLE.COM>"
    assert "BODY=8BITMIME" in mail
    assert "SMTPUTF8" in mail
    assert "SIZE=99999" not in mail  # smtplib sends the size of what is really relayed


async def test_proxy_drops_8bitmime_for_a_7bit_upstream_when_content_is_ascii() -> None:
    upstream = Upstream(extensions=())
    envelope = make_envelope(mail_options=("BODY=8BITMIME",))
    assert await relay(upstream, envelope) == "250 OK"
    assert b"BODY" not in upstream.commands[1].upper()


async def test_proxy_refuses_8bit_content_for_a_7bit_upstream() -> None:
    upstream = Upstream(extensions=())
    envelope = make_envelope(b"Subject: x\r\n\r\n\xc3\xbc\r\n", mail_options=("BODY=8BITMIME",))
    assert code_of(await relay(upstream, envelope)) == ("554", "5.6.3")
    assert upstream.messages == []


async def test_proxy_refuses_utf8_addresses_for_an_upstream_without_smtputf8() -> None:
    upstream = Upstream(extensions=(b"8BITMIME",))
    envelope = make_envelope(rcpt_tos=("\u00fc@example.org",), mail_options=("SMTPUTF8",))
    assert code_of(await relay(upstream, envelope)) == ("554", "5.6.7")
    assert upstream.messages == []


async def test_proxy_some_recipients_refused_is_250_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream(rcpt_replies={"c@example.org": b"550 5.1.1 no such user"})
    envelope = make_envelope(rcpt_tos=("b@example.org", "c@example.org"))
    with caplog.at_level(logging.WARNING, logger="smtptrio.handlers"):
        assert await relay(upstream, envelope) == "250 OK"
    assert len(upstream.messages) == 1
    (record,) = [r for r in caplog.records if r.name == "smtptrio.handlers"]
    assert record.refused == {"c@example.org": 550}  # type: ignore[attr-defined]


async def test_proxy_every_recipient_refused_gives_the_first_upstream_refusal() -> None:
    upstream = Upstream(
        rcpt_replies={
            "b@example.org": b"550 5.1.1 <b@example.org>: no such user",
            "c@example.org": b"452 4.2.2 mailbox full",
        }
    )
    envelope = make_envelope(rcpt_tos=("b@example.org", "c@example.org"))
    assert await relay(upstream, envelope) == "550 5.1.1 <b@example.org>: no such user"
    assert upstream.messages == []


async def test_proxy_upstream_421_on_rcpt_is_a_transient_failure_not_a_421() -> None:
    # The first recipient was accepted: a 421 still means nothing was relayed.
    upstream = Upstream(rcpt_replies={"c@example.org": b"421 4.3.2 shutting down"})
    envelope = make_envelope(rcpt_tos=("b@example.org", "c@example.org"))
    assert code_of(await relay(upstream, envelope)) == ("451", "4.4.2")
    assert upstream.messages == []


async def test_proxy_sender_refused_gives_the_upstream_reply() -> None:
    upstream = Upstream(mail_reply=b"553 5.7.1 sender not allowed")
    assert await relay(upstream) == "553 5.7.1 sender not allowed"
    assert upstream.messages == []


async def test_proxy_data_refused_gives_the_upstream_reply_line_by_line() -> None:
    upstream = Upstream(data_reply=b"554-5.7.1 rejected\r\n554 5.7.1 looks like spam")
    assert await relay(upstream) == "554 5.7.1 rejected\r\n554 5.7.1 looks like spam"


async def test_proxy_connection_refused_gives_451_441_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Proxy("127.0.0.1", unused_port(), timeout=10)
    session = make_session()
    with trio.fail_after(20), caplog.at_level(logging.ERROR, logger="smtptrio.handlers"):
        reply = await handler.handle_DATA(StubServer(), session, make_envelope())
    assert code_of(reply) == ("451", "4.4.1")
    (record,) = [r for r in caplog.records if r.name == "smtptrio.handlers"]
    assert record.session_id == session.id  # type: ignore[attr-defined]


async def test_proxy_unresolvable_upstream_gives_451_443(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    handler = Proxy("upstream.invalid", 25, timeout=10)
    with trio.fail_after(20):
        reply = await handler.handle_DATA(StubServer(), make_session(), make_envelope())
    assert code_of(reply) == ("451", "4.4.3")


async def test_proxy_refusing_greeting_gives_451_441() -> None:
    assert code_of(await relay(Upstream(greeting=b"554 go away"))) == ("451", "4.4.1")


async def test_proxy_silent_upstream_times_out_with_451_441() -> None:
    reply = await relay(Upstream(hang_before_greeting=True), timeout=0.3)
    assert code_of(reply) == ("451", "4.4.1")


@pytest.mark.parametrize("verb", [b"EHLO", b"MAIL", b"RCPT"])
async def test_proxy_upstream_disconnect_mid_transaction_gives_451_442(verb: bytes) -> None:
    assert code_of(await relay(Upstream(close_after=verb))) == ("451", "4.4.2")


async def test_proxy_disconnect_after_data_accepted_is_still_250() -> None:
    upstream = Upstream(close_after=b"DATA")  # QUIT fails, the message is upstream's now
    assert await relay(upstream) == "250 OK"


async def test_proxy_does_not_block_the_event_loop_while_relaying() -> None:
    gate = trio.Event()
    upstream = Upstream(data_reply_gate=gate)
    replies: list[str] = []
    with trio.fail_after(20):
        async with running(upstream) as port, trio.open_nursery() as nursery:
            handler = Proxy("127.0.0.1", port)

            async def deliver() -> None:
                replies.append(
                    await handler.handle_DATA(StubServer(), make_session(), make_envelope())
                )

            nursery.start_soon(deliver)
            await upstream.data_received.wait()  # the loop runs while the relay waits
            assert replies == []
            gate.set()
    assert replies == ["250 OK"]
