"""Fuzzing the per-connection task: random sessions over the in-memory listener (hypothesis).

Each example is a list of actions run by ``trio.run`` under ``MockClock(autojump_threshold=0)``
against a real ``serve_listeners`` (``helpers.running_server``): two client slots, each
connecting on demand, send pipelined batches of valid and malformed command lines or message
text cut into random chunks, go idle past the timeout, QUIT, or hang up mid-line / mid-message.
After every example:

1. exactly one reply per command line sent in command mode, counted twice: by the client as it
   reads and on the server side of the stream (every byte the server wrote parses as that many
   replies), until the server closes after a 221 or 421;
2. every message the handler accepted got a 250 at the client and every 250 was for a message
   the handler accepted, with the bytes sent (dot-unstuffed); nothing unterminated is delivered;
3. no ERROR record but the "hook failed" of a handler that was told to raise;
4. the server still greets and fully serves a fresh client.

``SMTPTRIO_EXAMPLES`` sets the example count; ``--hypothesis-profile=fuzz``
(tests/hypothesis_profiles.py) runs the profile's count instead of the modest default.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from helpers import SMTPClient, parse_replies, running_server
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from smtptrio import SMTP, Envelope, Session

TIMEOUT = 300
DATA_SIZE_LIMIT = 4096

if os.environ.get("SMTPTRIO_EXAMPLES"):
    _EXAMPLES: dict[str, Any] = {"max_examples": int(os.environ["SMTPTRIO_EXAMPLES"])}
elif settings.get_current_profile_name() == "default":
    _EXAMPLES = {"max_examples": 100}
else:  # a profile chosen on the command line (e.g. fuzz) decides
    _EXAMPLES = {}

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    **_EXAMPLES,
)

# ---------------------------------------------------------------------------- generated input

_COMMANDS = [
    b"EHLO client.example",
    b"HELO client.example",
    b"ehlo client.example",
    b"EHLO",
    b"MAIL FROM:<anne@example.com>",
    b"MAIL FROM:<>",
    b"MAIL FROM:<anne@example.com> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<anne@example.com> SIZE=999999",
    b"MAIL FROM:<anne@example.com> BODY=BAD",
    b"MAIL FROM:<anne@example.com> XFOO=1",
    b"MAIL FROM:<a@b",
    b"MAIL FROM:<j\xc3\xb6rg@example.org>",
    b"MAIL TO:<anne@example.com>",
    b"RCPT TO:<bart@example.org>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:<>",
    b"RCPT TO:<bad..dots@example.org>",
    b"RCPT FROM:<bart@example.org>",
    b"DATA extra",
    b"RSET",
    b"RSET now",
    b"NOOP",
    b"NOOP\targ",
    b"VRFY <anne@example.com>",
    b"VRFY",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"HELP NOSUCH",
    b"STARTTLS",
    b"AUTH PLAIN AGFubmUAcHc=",  # anne / pw: accepted
    b"AUTH PLAIN AGFubmUAd3Jvbmc=",  # anne / wrong
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH LOGIN =",
    b"AUTH CRAM-MD5",
    b"YW5uZQ==",
    b"cHc=",
    b"*",
    b"QUIT now",
    b"",
    b" NOOP",
    b"XFOO",
    b"BDAT 10 LAST",
    b"NOOP\x00",
    b"NOOP\rX",
    b"NOOP\nX",
    b"\xff\xfe",
    b"MAIL FROM:<" + b"a" * 600 + b"@example.com>",
    b"NOOP " + b"x" * 5000,
]

_DATA_VERB = re.compile(rb"(?i)data[ \t]*")


def _command_safe(line: bytes) -> bool:
    """A line the generator may use anywhere: no CRLF inside, and not a DATA command (DATA
    only ends a batch, RFC 2920 section 3.1, so the checker knows what mode each line is in)."""
    return b"\r\n" not in line and not _DATA_VERB.fullmatch(line)


_random_line = st.binary(max_size=40).filter(_command_safe)
_line = st.one_of(st.sampled_from(_COMMANDS), _random_line)

_TEXT = [
    b"",
    b".",
    b"..",
    b".x",
    b"Subject: fuzz",
    b"a\nb",
    b"a\rb",
    b"trailing CR\r",
    b"\n.",
    b"DATA",
    b"QUIT",
    b"x" * 998,
    b"x" * 1200,
    b"y" * 3000,
]
_text_line = st.one_of(
    st.sampled_from(_TEXT), st.binary(max_size=60).filter(lambda b: b"\r\n" not in b)
)

_slot = st.integers(0, 1)
_cuts = st.lists(st.integers(0, 8000), max_size=8)
_VERDICTS = ["250", "451", "550", "raise"]

_actions = st.lists(
    st.one_of(
        st.tuples(st.just("lines"), _slot, st.lists(_line, min_size=1, max_size=6), _cuts),
        st.tuples(
            st.just("transaction"),
            _slot,
            st.lists(_text_line, max_size=6),
            _cuts,
            st.sampled_from(_VERDICTS),
        ),
        st.tuples(st.just("disconnect"), _slot, st.binary(max_size=20)),
        st.tuples(st.just("quit"), _slot),
        st.tuples(st.just("idle")),
    ),
    max_size=25,
)

# ---------------------------------------------------------------------------- the system under test


class Judge:
    """handle_DATA: records what it was given and answers the verdict written in the message."""

    REPLIES = {"250": "250 2.0.0 OK", "451": "451 4.3.0 try later", "550": "550 5.7.1 rejected"}

    def __init__(self) -> None:
        self.calls: dict[int, tuple[str, bytes]] = {}
        self.untokened = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        found = re.match(rb"X-Token: (\d+)\r\nX-Verdict: (\w+)\r\n", content)
        if found is None:
            self.untokened += 1
            return "250 2.0.0 OK"
        token, verdict = int(found[1]), found[2].decode()
        assert token not in self.calls, f"message {token} delivered twice"
        self.calls[token] = (verdict, content)
        if verdict == "raise":
            raise RuntimeError("the handler was told to fail")
        return self.REPLIES[verdict]


async def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> bool:
    return bool(auth.login == b"anne" and auth.password == b"pw")


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Slot:
    client: SMTPClient
    replies: int = 1  # the greeting
    mode: str = "command"  # or "data" after a 354


@dataclass
class Run:
    slots: dict[int, Slot | None] = field(default_factory=lambda: {0: None, 1: None})
    token: int = 0
    #: token -> (verdict, expected content, end-of-data reply code)
    sent: dict[int, tuple[str, bytes, int]] = field(default_factory=dict)
    #: tokens whose text was sent without its terminator (then the connection was dropped)
    unterminated: set[int] = field(default_factory=set)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def stuffed(lines: list[bytes]) -> bytes:
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def check_server_side(slot: Slot) -> None:
    """Invariant 1 from the server's side: what it wrote is exactly the replies we read."""
    assert slot.client.server_stream is not None
    written = b"".join(slot.client.server_stream.writes)
    assert len(parse_replies(written)) == slot.replies, (slot.replies, written)


async def send_chunked(client: SMTPClient, data: bytes, cuts: list[int]) -> bool:
    """Send in pieces, letting the server run between them; False if it already closed."""
    for piece in chunks(data, cuts):
        try:
            await client.send(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        await trio.testing.wait_all_tasks_blocked()
    return True


async def closed_by_server(run: Run, number: int, slot: Slot) -> None:
    await slot.client.expect_eof()
    await trio.testing.wait_all_tasks_blocked()
    check_server_side(slot)
    run.slots[number] = None


async def read_batch_replies(run: Run, number: int, slot: Slot, lines: list[bytes]) -> None:
    for n, _line in enumerate(lines):
        reply = await slot.client.reply()
        slot.replies += 1
        if reply.code in (221, 421):
            await closed_by_server(run, number, slot)
            return
        if reply.code == 354:
            assert n == len(lines) - 1, f"354 for a line that is no DATA command: {lines!r}"
            slot.mode = "data"


async def send_message(
    run: Run, number: int, slot: Slot, text: list[bytes], cuts: list[int], verdict: str
) -> None:
    run.token += 1
    token = run.token
    head = [f"X-Token: {token}".encode(), f"X-Verdict: {verdict}".encode()]
    lines = head + text
    content = b"".join(ln + b"\r\n" for ln in lines)
    await send_chunked(slot.client, stuffed(lines) + b".\r\n", cuts)
    reply = await slot.client.reply()
    slot.replies += 1
    slot.mode = "command"
    run.sent[token] = (verdict, content, reply.code)
    if reply.code == 421:
        await closed_by_server(run, number, slot)


async def do_action(run: Run, srv: Any, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "idle":
        await trio.sleep(TIMEOUT + 1)
        for number, slot in list(run.slots.items()):
            if slot is not None:
                reply = await slot.client.reply()
                slot.replies += 1
                assert reply.codes == (421, "4.4.2"), reply
                await closed_by_server(run, number, slot)
        return
    number = action[1]
    slot = run.slots[number]
    if slot is None:
        client = await srv.connect()
        await client.greeting()
        slot = run.slots[number] = Slot(client)
    client = slot.client
    if kind == "disconnect":
        partial: bytes = action[2]
        if slot.mode == "data":
            run.token += 1
            run.unterminated.add(run.token)
            partial = f"X-Token: {run.token}\r\nX-Verdict: 250\r\n".encode() + partial
        partial = partial.replace(b"\r\n", b"")  # never a complete line, only a fragment
        await send_chunked(client, partial, [len(partial) // 2])
        await client.close()
        await trio.testing.wait_all_tasks_blocked()
        check_server_side(slot)
        run.slots[number] = None
        return
    if kind == "quit":
        if slot.mode == "data":
            await send_message(run, number, slot, [], [], "250")
            if run.slots[number] is None:
                return
        for _ in range(3):  # a QUIT right after a 334 is the AUTH response, not a command
            await client.line("QUIT")
            reply = await client.reply()
            slot.replies += 1
            if reply.code in (221, 421):
                await closed_by_server(run, number, slot)
                return
        raise AssertionError(f"QUIT never closed the session: {reply!r}")
    if kind == "transaction":
        _, _, text, cuts, verdict = action
        if slot.mode == "command":
            lines = [
                b"EHLO client.example",
                b"MAIL FROM:<anne@example.com>",
                b"RCPT TO:<bart@example.org>",
                b"DATA",
            ]
            await send_chunked(client, b"".join(ln + b"\r\n" for ln in lines), cuts)
            await read_batch_replies(run, number, slot, lines)
            if run.slots[number] is None or slot.mode != "data":
                return
        await send_message(run, number, slot, text, cuts, verdict)
        return
    assert kind == "lines"
    _, _, lines, cuts = action
    if slot.mode == "data":
        await send_message(run, number, slot, lines, cuts, "250")
        return
    await send_chunked(client, b"".join(ln + b"\r\n" for ln in lines), cuts)
    await read_batch_replies(run, number, slot, lines)


async def fuzz_session(actions: list[tuple[Any, ...]]) -> tuple[Run, Judge]:
    judge = Judge()
    errors = Errors()
    ours = logging.getLogger("smtptrio")
    ours.addHandler(errors)
    run = Run()
    try:
        async with running_server(
            judge,
            timeout=TIMEOUT,
            data_size_limit=DATA_SIZE_LIMIT,
            authenticator=authenticate,
            auth_require_tls=False,
        ) as srv:
            for action in actions:
                await do_action(run, srv, action)
            for number, slot in list(run.slots.items()):
                if slot is not None:
                    await do_action(run, srv, ("quit", number))
            # Invariant 4: a fresh client is served in full.
            fresh = await srv.ehloed()
            assert (await fresh.transaction()).codes == (250, "2.0.0")
            await fresh.quit()
    finally:
        ours.removeHandler(errors)

    # Invariant 2: 250 at the client <=> accepted by the handler; bytes intact.
    for token, (verdict, content, code) in run.sent.items():
        if token in judge.calls:
            got_verdict, got_content = judge.calls[token]
            assert got_content == content, token
            expected = {"250": 250, "451": 451, "550": 550, "raise": 451}[got_verdict]
            assert code == expected, (token, verdict, code)
        else:
            assert code >= 400, f"message {token} got {code} but the handler never saw it"
    assert not set(judge.calls) & run.unterminated, "an unterminated message was delivered"
    assert set(judge.calls) <= set(run.sent)
    # Invariant 3: the only errors logged are the failures the handler was told to have.
    raised = sum(1 for verdict, _ in judge.calls.values() if verdict == "raise")
    unexpected = [r for r in errors.records if r.getMessage() != "hook failed"]
    assert not unexpected, [(r.getMessage(), r.__dict__) for r in unexpected]
    assert len(errors.records) == raised
    return run, judge


@SETTINGS
@given(actions=_actions)
def test_random_sessions_keep_the_reply_and_delivery_invariants(
    actions: list[tuple[Any, ...]],
) -> None:
    run, judge = trio.run(fuzz_session, actions, clock=trio.testing.MockClock(autojump_threshold=0))
    codes = sorted({code for _, _, code in run.sent.values()})
    event(f"end-of-data replies: {codes}")
    event(f"messages delivered: {min(len(judge.calls), 3)}{'+' if len(judge.calls) > 3 else ''}")


def test_a_scripted_run_exercises_every_action_kind() -> None:
    """The same driver on a fixed script, so a broken driver cannot pass by doing nothing."""
    actions: list[tuple[Any, ...]] = [
        ("lines", 0, [b"EHLO client.example", b"NOOP", b"XFOO", b"\x00"], [3, 17]),
        ("transaction", 0, [b"Subject: one", b"", b".dotted", b"a\nb"], [5, 40, 41], "250"),
        ("transaction", 1, [b"x" * 1200], [], "250"),  # 500 after the terminator
        ("transaction", 1, [b"y" * 990] * 5, [100], "250"),  # 552: over data_size_limit
        ("transaction", 0, [], [], "451"),
        ("transaction", 0, [], [], "raise"),
        ("lines", 1, [b"AUTH PLAIN", b"AGFubmUAcHc="], []),
        ("lines", 1, [b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@d.example>", b"DATA"], [9]),
        ("disconnect", 1, b"half a li"),
        ("lines", 0, [b"XA", b"XB", b"XC", b"XD", b"XE", b"NOOP"], []),  # 421 at the 5th
        ("lines", 1, [b"EHLO again.example"], []),
        ("idle",),
        ("quit", 0),
    ]
    run, judge = trio.run(fuzz_session, actions, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [code for _, _, code in run.sent.values()] == [250, 500, 552, 451, 451]
    assert sorted(judge.calls) == [1, 4, 5]
    assert run.unterminated == {6}
