"""The built-in handlers, with aiosmtpd's names and contract (COMPAT.md section 8).

``Debugging`` prints, ``Sink`` discards, ``Message`` / ``AsyncMessage`` turn the content into an
``email.message.Message`` for a subclass, ``Mailbox`` stores into a Maildir and ``Proxy`` relays
to another SMTP server. What differs from aiosmtpd is where the blocking work runs: the Maildir
write and the smtplib relay go through ``trio.to_thread.run_sync`` with a per-handler
``CapacityLimiter``, so one slow disk or upstream never stalls the other connections, and
neither handler answers 250 unless the message really is safe (on disk, or accepted upstream).
"""

from __future__ import annotations

import email.generator
import email.message
import errno
import io
import itertools
import logging
import mailbox
import os
import re
import smtplib
import socket
import sys
import time
import warnings
from abc import ABCMeta, abstractmethod
from argparse import ArgumentParser
from dataclasses import dataclass
from email.parser import BytesParser, Parser
from typing import IO, Any, Protocol, Self

import trio

from smtptrio.server.session import Envelope, Session

__all__ = [
    "AsyncMessage",
    "Debugging",
    "Mailbox",
    "Message",
    "Proxy",
    "Sink",
]

log = logging.getLogger(__name__)

#: The default email class, spelled once: ``Message`` below is *our* handler class.
_EmailMessage = email.message.Message

#: Any line ending, bare CR and bare LF included.
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


class _Server(Protocol):
    """The part of the per-connection ``SMTP`` object these handlers read (COMPAT.md 3.3)."""

    @property
    def hostname(self) -> str: ...


def _peer_host(peer: object) -> str:
    """The host part of ``session.peer``, safe to put on one header line.

    A TCP peer is a tuple whose first item is the address; a Unix-socket peer is the path
    string itself (aiosmtpd would take its first character). Anything that could break the
    line (CR, LF, other controls, non-ASCII) is replaced, since this goes into message text.
    """
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
    elif peer is None:
        host = "unknown"
    else:
        host = str(peer)
    return "".join(c if " " <= c <= "~" else "?" for c in host)


# --------------------------------------------------------------------------------------------
# Debugging and Sink


class Debugging:
    """Print every message to a stream, for watching what a client sends.

    Printing is the product here, hence ``print``-style output rather than logging. The format
    follows aiosmtpd's closely enough for eyes and simple scripts, but it is not API
    (COMPAT.md section 8).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        """The stream given, or ``sys.stdout`` as it is *now*.

        Looked up on each use rather than at construction, so redirections made later
        (``contextlib.redirect_stdout``, pytest's ``capsys``) are honoured.
        """
        return sys.stdout if self._stream is None else self._stream

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._stream = value

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """``-c Debugging [stdout|stderr]``; no argument means stdout."""
        if not args:
            return cls()
        if len(args) == 1 and args[0] == "stdout":
            return cls()  # None: follow sys.stdout at print time
        if len(args) == 1 and args[0] == "stderr":
            return cls(sys.stderr)
        parser.error("Debugging takes at most one argument, 'stdout' or 'stderr'")

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        out: list[str] = ["---------- MESSAGE FOLLOWS ----------"]
        if envelope.mail_options:
            out.append("mail options: " + " ".join(envelope.mail_options))
        if envelope.rcpt_options:
            out.append("rcpt options: " + " ".join(envelope.rcpt_options))
        if len(out) > 1:
            out.append("")
        out.extend(self._content_lines(_peer_host(session.peer), envelope.content))
        out.append("------------ END MESSAGE ------------")
        stream = self.stream
        # One write per message: a reader never sees half a block, and nothing can interleave.
        stream.write("\n".join(out) + "\n")
        stream.flush()
        return "250 OK"

    @staticmethod
    def _content_lines(peer: str, content: bytes | str | None) -> list[str]:
        """The content as printable lines, with ``X-Peer`` added as the last header."""
        if content is None:
            raw = b""
        elif isinstance(content, str):
            # decode_data=True content may carry surrogate escapes for invalid UTF-8, which no
            # text stream can print: go back to the bytes and decode those leniently.
            try:
                raw = content.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a surrogate no decoder produced: just make it visible
                raw = content.encode("utf-8", "replace")
        else:
            raw = content
        lines = [line.decode("utf-8", "replace") for line in _ANY_NEWLINE.split(raw)]
        if lines and lines[-1] == "":
            lines.pop()  # the final line ending, not an empty last line
        peer_line = f"X-Peer: {peer}"
        try:
            end_of_headers = lines.index("")
        except ValueError:
            end_of_headers = len(lines)  # headers only, no body
        lines.insert(end_of_headers, peer_line)
        return lines


class Sink:
    """Accept and discard every message: no hooks at all, so every reply is the default."""

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """``-c Sink``; it has nothing to configure."""
        if args:
            parser.error("Sink handler does not accept arguments")
        return cls()


# --------------------------------------------------------------------------------------------
# Message, AsyncMessage


class MessageBase(metaclass=ABCMeta):
    """What ``Message`` and ``AsyncMessage`` share: turning the envelope into an email object.

    As in aiosmtpd, the two are siblings, not parent and child, because their
    ``handle_message`` differ in kind (sync vs. coroutine).
    """

    def __init__(self, message_class: type[_EmailMessage] | None = None) -> None:
        #: The class the content is parsed into; None means ``email.message.Message``.
        self.message_class = message_class

    def prepare_message(self, session: Session, envelope: Envelope) -> _EmailMessage:
        """Parse the content and add the ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` headers.

        Header values are aiosmtpd's exactly: ``X-Peer`` is ``str(session.peer)`` (the whole
        peer, e.g. ``('127.0.0.1', 4567)``), recipients are joined with ``", "``. As in aiosmtpd,
        ``envelope.smtp_utf8`` changes nothing here: bytes content is parsed with the compat32
        policy, so UTF-8 header bytes survive as surrogate escapes and are written back as they
        came, and a non-ASCII address in ``X-MailFrom`` / ``X-RcptTo`` is RFC 2047-encoded
        when the message is serialised.
        """
        data = envelope.content
        message: _EmailMessage
        if isinstance(data, bytes | bytearray):
            message = BytesParser(self.message_class).parsebytes(bytes(data))
        elif isinstance(data, str):
            message = Parser(self.message_class).parsestr(data)
        else:
            raise TypeError(f"envelope.content must be str or bytes, got {type(data).__name__}")
        message["X-Peer"] = str(session.peer)
        # None (no MAIL yet) is stored as is, as aiosmtpd does; compat32 writes it as empty.
        message["X-MailFrom"] = envelope.mail_from  # type: ignore[assignment]  # None allowed
        message["X-RcptTo"] = ", ".join(envelope.rcpt_tos)
        return message

    @abstractmethod
    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        """Deliver the message; see the subclasses."""


class Message(MessageBase, metaclass=ABCMeta):
    """Abstract: subclass it and implement ``handle_message``, which gets the parsed message.

    ``handle_message`` runs on the event loop, like every sync hook: keep it quick, or use
    ``AsyncMessage`` and ``await trio.to_thread.run_sync(...)`` for slow work.
    """

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        message = self.prepare_message(session, envelope)
        self.handle_message(message)
        return "250 OK"

    @abstractmethod
    def handle_message(self, message: _EmailMessage) -> None:
        """Do something with the message; raising makes the server answer with an error."""
        raise NotImplementedError


class AsyncMessage(MessageBase, metaclass=ABCMeta):
    """As ``Message``, but ``handle_message`` is a coroutine, awaited on the trio loop."""

    def __init__(
        self,
        message_class: type[_EmailMessage] | None = None,
        *,
        loop: object = None,
    ) -> None:
        super().__init__(message_class)
        self._loop = loop
        if loop is not None:
            warnings.warn(
                "AsyncMessage(loop=...) is ignored: smtptrio runs on trio, not asyncio",
                DeprecationWarning,
                stacklevel=2,
            )

    @property
    def loop(self) -> Any:
        """Whatever a subclass assigned; there is no asyncio loop to hand out otherwise."""
        if self._loop is None:
            raise AttributeError(
                "AsyncMessage.loop does not exist: smtptrio runs handlers on trio, not asyncio"
            )
        return self._loop

    @loop.setter
    def loop(self, value: Any) -> None:
        self._loop = value

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        message = self.prepare_message(session, envelope)
        await self.handle_message(message)
        return "250 OK"

    @abstractmethod
    async def handle_message(self, message: _EmailMessage) -> None:
        """Do something with the message; raising makes the server answer with an error."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Mailbox

#: A transient failure: the client keeps the message and retries (RFC 5321 4.2.1, RFC 3463 4.3.0).
_DELIVERY_FAILED = "451 4.3.0 Requested action aborted: error in processing"

#: Per-process delivery counter, the ``Q`` part of Maildir names. ``next()`` on an
#: ``itertools.count`` is atomic under the GIL, so worker threads never draw the same number.
_deliveries = itertools.count()


def _maildir_name() -> str:
    """A Maildir unique name: ``<sec>.M<usec>P<pid>Q<n>.<host>``.

    Unique because (pid, n) never repeats within a process lifetime and the time part
    separates processes that reuse a pid; ``/`` and ``:`` in the host name are escaped as the
    Maildir convention asks (``:`` starts the info suffix).
    """
    now = time.time_ns()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    seconds, usec = now // 1_000_000_000, now // 1000 % 1_000_000
    return f"{seconds}.M{usec}P{os.getpid()}Q{next(_deliveries)}.{host}"


def _fsync_dir(path: str) -> None:
    """Make a directory's entries durable: a new name is not on disk until its dir is synced."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened; NTFS journals names
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: str) -> None:
    """Remove a file if it is there; used on cleanup paths, where failing must not mask."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("could not remove maildir file", exc_info=True, extra={"path": path})


def _place(tmp_path: str, dest: str) -> None:
    """Give the finished file its final name atomically, never replacing another message.

    ``link`` fails if ``dest`` exists, where ``rename`` would silently replace it; ``rename``
    is the fallback for file systems without hard links.
    """
    try:
        os.link(tmp_path, dest)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in {
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EMLINK,
            errno.ENOSYS,
        }:
            raise
        os.rename(tmp_path, dest)


class Mailbox(Message):
    """Store each message in a Maildir, durably, answering 250 only once it is on disk.

    The file is written under ``tmp/``, flushed and fsync'ed, then linked into ``new/`` and
    ``new/`` is fsync'ed, so a message shows up in ``new/`` whole or not at all and a 250 means
    it survives a crash. Any ``OSError`` (disk full, permissions, I/O error) is logged and
    answered ``451 4.3.0``, leaving nothing behind. The stored bytes are what
    ``mailbox.Maildir.add`` would write for the prepared message.

    Unlike ``Message``, ``prepare_message`` and ``handle_message`` are called in a worker
    thread: overrides must not call trio functions (use ``trio.from_thread`` if they must).
    """

    #: How many deliveries of one handler may write at once (each holds a worker thread).
    max_writers: int = 8

    def __init__(
        self,
        mail_dir: str | os.PathLike[str],
        message_class: type[_EmailMessage] | None = None,
    ) -> None:
        #: The stdlib view of the same directory (it creates the Maildir if needed).
        self.mailbox = mailbox.Maildir(mail_dir)
        self.mail_dir = mail_dir
        self._root = os.path.abspath(os.path.expanduser(os.fspath(mail_dir)))
        self._limiter = trio.CapacityLimiter(self.max_writers)
        super().__init__(message_class)

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        try:
            # Parsing, serialising, writing and the fsyncs all happen in a worker thread, so a
            # big message or a slow disk never blocks the event loop. The hooks are still
            # called through prepare_message / handle_message, so subclass overrides apply.
            await trio.to_thread.run_sync(
                self._prepare_and_store, session, envelope, limiter=self._limiter
            )
        except OSError:
            log.exception(
                "mailbox delivery failed",
                extra={"session_id": session.id, "mail_dir": self._root},
            )
            return _DELIVERY_FAILED
        return "250 OK"

    def _prepare_and_store(self, session: Session, envelope: Envelope) -> None:
        self.handle_message(self.prepare_message(session, envelope))

    def handle_message(self, message: _EmailMessage) -> None:
        """Add the message to the Maildir, durably; blocking, raises ``OSError`` on failure.

        Kept public and synchronous for subclasses that call it, as with aiosmtpd's.
        """
        self._store(message)

    def _store(self, message: _EmailMessage) -> str:
        """Store ``message`` durably and return its Maildir key (blocking)."""
        buffer = io.BytesIO()
        email.generator.BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(message)
        # Same bytes as mailbox.Maildir.add: the generator's LFs become the platform's newline.
        data = buffer.getvalue().replace(b"\n", os.linesep.encode("ascii"))
        subdir, suffix, mtime = "new", "", None
        if isinstance(message, mailbox.MaildirMessage):  # honour its folder and flags, as add()
            subdir = message.get_subdir()
            info = message.get_info()
            suffix = self.mailbox.colon + info if info else ""
            mtime = message.get_date()

        key = _maildir_name()
        tmp_path = os.path.join(self._root, "tmp", key)
        dest_dir = os.path.join(self._root, subdir)
        dest = os.path.join(dest_dir, key + suffix)
        placed = False
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp_path, flags, 0o666)  # O_EXCL: never reuse another delivery's file
            with open(fd, "wb") as file:
                file.write(data)
                file.flush()
                if mtime is not None:
                    os.utime(tmp_path, (time.time(), mtime))
                os.fsync(file.fileno())
            _place(tmp_path, dest)
            placed = True
            _fsync_dir(dest_dir)
        except BaseException:
            if placed:  # in new/ but its name may not be durable: take it back, answer 451
                _discard(dest)
            _discard(tmp_path)
            raise
        # The tmp/ name is only a leftover hard link now; tmp/ needs no fsync, since a name
        # that resurfaces there after a crash is ignored by readers and swept by Maildir tools.
        _discard(tmp_path)
        return key

    def reset(self) -> None:
        """Delete every message in the Maildir."""
        self.mailbox.clear()

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """``-c Mailbox PATH``."""
        if len(args) != 1:
            parser.error("Mailbox takes exactly one argument: the Maildir directory")
        return cls(args[0])


# --------------------------------------------------------------------------------------------
# Proxy

# Relay failures are transient (4xx): the client keeps the message and retries, which is the
# only honest answer when nobody took responsibility for it (RFC 5321 6.1). Enhanced codes are
# RFC 3463's "Network and routing status" ones, picked by how far the relay got:
#: X.4.1 "No answer from host": the connection attempt failed or was refused, or no greeting.
_RELAY_NO_ANSWER = "451 4.4.1 Upstream server not reachable, try again later"
#: X.4.3 "Directory server failure": the upstream's name could not be resolved.
_RELAY_NO_DNS = "451 4.4.3 Upstream server name not resolvable, try again later"
#: X.4.2 "Bad connection": connected, but the transaction could not be completed (timeout,
#: disconnect, garbled reply, or the upstream closing with 421).
_RELAY_BROKEN = "451 4.4.2 Connection to upstream server failed, try again later"
#: X.6.3 "Conversion required but not supported": 8-bit body, upstream without 8BITMIME
#: (RFC 6152 section 3), or UTF-8 headers, upstream without SMTPUTF8 (RFC 6531 section 3.2).
_RELAY_NEEDS_CONVERSION = "554 5.6.3 Upstream server cannot accept this message unconverted"
#: X.6.7 "Non-ASCII addresses not permitted" (RFC 6531 section 3.5), upstream without SMTPUTF8.
_RELAY_NO_UTF8_ADDRESSES = "554 5.6.7 Upstream server does not accept non-ASCII addresses"


def _upstream_reply(code: int, text: bytes | str) -> str:
    """The upstream's refusal as our reply, code and text kept.

    421 is not passed on: it would close *our* client's connection (COMPAT.md 2.1), while it
    only says the upstream is going away, so it becomes a transient relay failure; so does a
    code that is not a 4xx/5xx refusal. Text is cleaned to printable ASCII, one reply line per
    upstream line (smtplib joins multi-line replies with LF), all with the same code.
    """
    if code == 421 or not 400 <= code <= 599:
        return _RELAY_BROKEN
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = []
    for raw in text.split("\n"):
        line = "".join(c if " " <= c <= "~" else "?" for c in raw.strip())
        if line:
            lines.append(f"{code} {line}")
    return "\r\n".join(lines) if lines else f"{code} Refused by the upstream server"


@dataclass(frozen=True, slots=True, kw_only=True)
class _RelayJob:
    """What a relay needs, copied off the envelope so the worker thread owns its data."""

    session_id: str
    local_hostname: str
    peer: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    eight_bit: bool
    smtp_utf8: bool


def _relay_data(peer: str, content: bytes) -> bytes:
    """The content to relay: every line ending made CRLF, ``X-Peer`` added as last header.

    Normalising keeps a bare ``<LF>.<LF>`` from being read as end of data by a weaker next hop
    (COMPAT.md 6.1). ``X-Peer`` goes where aiosmtpd puts it, just before the blank line that
    ends the header section (at the top when the content starts with that blank line, at the
    end when there is no body).
    """
    data = _ANY_NEWLINE.sub(b"\r\n", content)
    peer_line = b"X-Peer: " + peer.encode("ascii") + b"\r\n"
    if data.startswith(b"\r\n"):
        return peer_line + data
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2] + peer_line + data[end + 2 :]
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + peer_line


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end]


class Proxy:
    """Relay every message to another SMTP server, answering with what the relay achieved.

    The smtplib session runs in a worker thread (at most ``max_relays`` at once per handler),
    with ``timeout`` seconds for the connection and each reply. Replies (COMPAT.md D32):
    ``250`` once the upstream accepted the data for at least one recipient (refused ones are
    logged); the upstream's own code and text when it refused the sender, the data, or every
    recipient; a ``451 4.4.x`` when the relay could not be completed.
    """

    #: How many relays of one handler may run at once (each holds a thread and a connection).
    max_relays: int = 16

    def __init__(self, remote_hostname: str, remote_port: int, *, timeout: float = 60.0) -> None:
        if isinstance(remote_port, str) and re.fullmatch(r"[0-9]{1,5}", remote_port):
            # aiosmtpd passed the port straight to smtplib, which takes a numeric string too;
            # keep such callers working rather than failing on the first message.
            remote_port = int(remote_port)
        if isinstance(remote_port, bool) or not isinstance(remote_port, int):
            raise TypeError(f"remote_port must be an int, got {remote_port!r}")
        if not 1 <= remote_port <= 65535:
            raise ValueError(f"remote_port must be in 1..65535, got {remote_port!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._hostname = remote_hostname
        self._port = remote_port
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(self.max_relays)

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Self:
        """``-c Proxy HOST PORT``."""
        if len(args) != 2:
            parser.error("Proxy takes exactly two arguments: the upstream HOST and PORT")
        host, port_text = args
        # Digits only: int() would also take " 25", "+25" and "2_5".
        port = int(port_text) if re.fullmatch(r"[0-9]{1,5}", port_text) else 0
        if not 1 <= port <= 65535:
            parser.error(f"Proxy PORT must be an integer in 1..65535, got {port_text!r}")
        return cls(host, port)

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        if not envelope.rcpt_tos:  # the server never lets this happen; do not bother upstream
            return "554 5.5.1 No valid recipients"
        raw = envelope.original_content if isinstance(envelope.content, str) else envelope.content
        if isinstance(raw, str):  # pragma: no cover - only if original_content was not set
            raw = raw.encode("utf-8", "surrogateescape")
        job = _RelayJob(
            session_id=session.id,
            local_hostname=server.hostname,
            peer=_peer_host(session.peer),
            mail_from=envelope.mail_from or "<>",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=raw or b"",
            eight_bit="BODY=8BITMIME" in envelope.mail_options,
            smtp_utf8=envelope.smtp_utf8 or "SMTPUTF8" in envelope.mail_options,
        )
        # Not abandoned on cancellation: a relay cut off mid-DATA could deliver a message we
        # then fail to report. The smtplib timeout bounds how long this can take.
        return await trio.to_thread.run_sync(self._relay, job, limiter=self._limiter)

    def _relay(self, job: _RelayJob) -> str:
        """Run one SMTP transaction upstream (blocking) and map its outcome to our reply."""
        extra = {"session_id": job.session_id, "upstream": f"{self._hostname}:{self._port}"}
        client = smtplib.SMTP(local_hostname=job.local_hostname, timeout=self._timeout)
        polite = False  # QUIT only on a working connection: never wait on a dead one
        try:
            try:
                code, _greeting = client.connect(self._hostname, self._port)
            except socket.gaierror:
                log.error("proxy: upstream name not resolvable", exc_info=True, extra=extra)
                return _RELAY_NO_DNS
            except OSError:
                log.error("proxy: upstream not reachable", exc_info=True, extra=extra)
                return _RELAY_NO_ANSWER
            if code != 220:
                log.error("proxy: upstream refused the connection", extra={**extra, "code": code})
                return _RELAY_NO_ANSWER
            try:
                reply = self._transact(client, job, extra)
                polite = True
                return reply
            except smtplib.SMTPRecipientsRefused as exc:
                polite = True
                refusals: dict[str, tuple[int, bytes]] = exc.recipients
                log.warning(
                    "proxy: upstream refused the recipients",
                    extra={**extra, "refused": _codes(refusals)},
                )
                if not refusals or any(c == 421 for c, _ in refusals.values()):
                    return _RELAY_BROKEN
                code, text = next(iter(refusals.values()))  # the first, in RCPT order
                return _upstream_reply(code, text)
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                polite = True
                log.warning(
                    "proxy: upstream refused the message", extra={**extra, "code": exc.smtp_code}
                )
                return _upstream_reply(exc.smtp_code, exc.smtp_error)
            except OSError:  # smtplib.SMTPException is an OSError: disconnects, bad replies
                log.error("proxy: relay failed", exc_info=True, extra=extra)
                return _RELAY_BROKEN
        finally:
            _close(client, polite)

    def _transact(self, client: smtplib.SMTP, job: _RelayJob, extra: dict[str, str]) -> str:
        """EHLO, pick the MAIL parameters the upstream can take, and send the message."""
        client.ehlo_or_helo_if_needed()
        data = _relay_data(job.peer, job.content)
        options: list[str] = []
        # Only BODY=8BITMIME and SMTPUTF8 are passed on: SIZE is recomputed by smtplib for the
        # bytes actually sent, BODY=7BIT is the default, and the server offers no other MAIL
        # parameter. RCPT parameters are not relayed: none is offered (COMPAT.md 3.2), and the
        # flat rcpt_options list no longer says which recipient each one belonged to.
        if job.eight_bit:
            if client.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            elif not data.isascii():  # RFC 6152: no 8-bit data to a 7-bit server
                return _RELAY_NEEDS_CONVERSION
        if job.smtp_utf8:
            if client.has_extn("smtputf8"):
                options.append("SMTPUTF8")
            elif not all(a.isascii() for a in (job.mail_from, *job.rcpt_tos)):
                return _RELAY_NO_UTF8_ADDRESSES
            elif not _header_section(data).isascii():
                return _RELAY_NEEDS_CONVERSION
            # else: nothing in the message needs SMTPUTF8, so it is relayed without it
        refused = client.sendmail(job.mail_from, list(job.rcpt_tos), data, mail_options=options)
        if refused:
            log.warning(
                "proxy: upstream refused some recipients",
                extra={**extra, "refused": _codes(refused)},
            )
        return "250 OK"


def _codes(refusals: dict[str, tuple[int, bytes]]) -> dict[str, int]:
    """Recipient -> reply code, for the log (the texts can be long and are not needed)."""
    return {rcpt: code for rcpt, (code, _text) in refusals.items()}


def _close(client: smtplib.SMTP, polite: bool) -> None:
    """End the upstream session; a failure here never changes the outcome already decided."""
    if polite:
        try:
            client.quit()
            return
        except OSError:
            log.debug("proxy: QUIT failed", exc_info=True)
    client.close()
