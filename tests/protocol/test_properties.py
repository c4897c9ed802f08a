r"""Properties of the engine over generated input (hypothesis).

1. Any bytes, any configuration: driving the engine raises nothing.
2. How the bytes are split into ``receive_data()`` calls changes neither the events nor a single
   reply byte.
3. In command phase every complete CRLF-terminated line gets exactly one reply; with DATA, each
   message gets exactly one reply after its terminator and arrives intact.
4. Every reply line is well formed (``^\d{3}[ -]``, CRLF-terminated, one code per reply); the
   driver's ``parse_wire`` checks it on every run.
"""

from __future__ import annotations

import os
import re
from typing import Any

from engine_driver import Driver, split_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtptrio.protocol.config import Config
from smtptrio.protocol.events import EndOfData

# SMTPTRIO_EXAMPLES=20000 (or --hypothesis-profile=fuzz, as `nox -s fuzz` runs) for a long
# soak; the default keeps tier 1 fast.
if os.environ.get("SMTPTRIO_EXAMPLES"):
    EXAMPLES = int(os.environ["SMTPTRIO_EXAMPLES"])
elif settings.get_current_profile_name() == "default":
    EXAMPLES = 250
else:  # a profile chosen on the command line decides
    EXAMPLES = settings().max_examples
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_COMMANDS = [
    b"EHLO client.example",
    b"HELO client.example",
    b"LHLO client.example",
    b"MAIL FROM:<alice@example.org>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8",
    b"MAIL FROM:<a@b.example> SIZE=99999999999",
    b"MAIL FROM:<a@b",
    b"RCPT TO:<bob@example.org>",
    b"RCPT TO:<>",
    b"RCPT TO:<s\xc3\xb8ren@example.org>",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"NOOP with argument",
    b"QUIT",
    b"VRFY <a@b.example>",
    b"VRFY",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"AUTH PLAIN AHVzZXIAc2VjcmV0",
    b"AUTH LOGIN",
    b"AUTH LOGIN =",
    b"dXNlcg==",
    b"c2VjcmV0",
    b"*",
    b"XYZZY",
    b"",
    b" NOOP",
    b".",
    b"..",
]
_FRAGMENTS = [
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\x00",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
]

command_line = st.sampled_from(_COMMANDS).map(lambda c: c + b"\r\n")
_ADDRESS_BITS = [b"<", b">", b"@", b".", b'"', b"\\", b":", b",", b"[", b"]", b"IPv6:", b" ",
                 b"=", b"SIZE", b"BODY", b"SMTPUTF8", b"a", b"example", b"\xc3\xa9", b"-", b"\t"]
argument = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(_ADDRESS_BITS), max_size=30).map(b"".join),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
verb_with_argument = st.builds(
    lambda verb, arg: verb + arg + b"\r\n",
    st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"VRFY ", b"HELO ", b"AUTH ", b"HELP "]),
    argument,
)
piece = st.one_of(
    command_line,
    command_line,
    verb_with_argument,
    st.sampled_from(_FRAGMENTS),
    st.binary(max_size=24),
    st.integers(1, 2500).map(lambda n: b"x" * n),
    st.integers(1, 14000).map(lambda n: b"A" * n + b"\r\n"),
)
mixed_stream = st.lists(piece, max_size=40).map(b"".join)
any_stream = st.one_of(st.binary(max_size=2048), mixed_stream)

_CONFIGS: list[dict[str, Any]] = [
    {},
    {"data_size_limit": 60, "line_length_limit": 30, "bare_newline": "reject",
     "max_recipients": 2, "error_limit": 8, "command_size_limit": 40},
    {"bare_newline": "normalize", "enable_smtputf8": True, "decode_data": True},
    {"decode_data": True, "data_size_limit": None, "line_length_limit": None},
    {"auth_mechanisms": ("LOGIN", "PLAIN"), "implicit_tls": True, "auth_required": True},
    {"auth_mechanisms": ("LOGIN", "PLAIN"), "auth_require_tls": False, "auth_failure_limit": 1},
    {"enhanced_status_codes": False, "unrecognized_command_limit": None, "error_limit": None,
     "local_part_limit": 5},
    {"command_call_limit": {"NOOP": 2, "*": 4}, "extension_verbs": frozenset({"XYZZY"})},
    {"lmtp": True, "enable_smtputf8": True},
]
_TLS_CONFIGS: list[dict[str, Any]] = [
    {"tls_available": True},
    {"tls_available": True, "require_starttls": True, "auth_mechanisms": ("PLAIN",)},
]

configs = st.sampled_from(_CONFIGS).map(lambda kw: Config(**kw))
all_configs = st.sampled_from(_CONFIGS + _TLS_CONFIGS).map(lambda kw: Config(**kw))
cuts = st.lists(st.integers(0, 40_000), max_size=24)


def drive(config: Config, chunks: list[bytes], *, eof: bool = True) -> Driver:
    driver = Driver(config)
    driver.feed(*chunks)
    if eof:
        driver.eof()
    driver.replies  # noqa: B018 - parsing asserts that every reply line is well formed
    return driver


def outcome(driver: Driver) -> tuple[object, ...]:
    return (
        driver.events,
        bytes(driver.wire),
        driver.messages,
        driver.dropped,
        driver.closed,
    )


# --- 1 and 4: nothing raises, replies are well formed ------------------------------------------


@SETTINGS
@given(config=all_configs, data=any_stream, pieces=cuts)
def test_any_input_is_handled_without_exceptions(config: Config, data: bytes,
                                                  pieces: list[int]) -> None:
    drive(config, split_at(data, pieces))


@SETTINGS
@given(config=all_configs, data=st.binary(min_size=1, max_size=600))
def test_bytewise_random_input(config: Config, data: bytes) -> None:
    drive(config, [data[i : i + 1] for i in range(len(data))])


# --- 2: chunking changes nothing ----------------------------------------------------------------


@SETTINGS
@given(config=configs, data=any_stream, pieces=cuts)
def test_chunking_never_changes_events_or_replies(config: Config, data: bytes,
                                                   pieces: list[int]) -> None:
    whole = drive(config, [data] if data else [])
    split = drive(config, split_at(data, pieces))
    assert outcome(split) == outcome(whole)


@settings(SETTINGS, max_examples=max(EXAMPLES // 4, 1))
@given(config=configs, data=mixed_stream)
def test_bytewise_equals_whole(config: Config, data: bytes) -> None:
    data = data[:1500]
    whole = drive(config, [data] if data else [])
    bytewise = drive(config, [data[i : i + 1] for i in range(len(data))])
    assert outcome(bytewise) == outcome(whole)


# --- 3: one reply per command line; one per message ----------------------------------------------

_NO_REPLY_SPLIT = [
    c for c in _COMMANDS if not c.startswith((b"DATA", b"AUTH", b"STARTTLS"))
]
# Verbs whose reply is not the line's only one (354 and a body, 334 challenges, TLS).
_MULTI_STEP = re.compile(rb"(?i)(DATA|AUTH|STARTTLS)([ \t]|\Z)")
line_content = st.one_of(
    st.sampled_from(_NO_REPLY_SPLIT),
    st.binary(max_size=40),
    st.integers(500, 3000).map(lambda n: b"NOOP " + b"y" * n),
    st.builds(lambda a, b: a + b, st.sampled_from(_NO_REPLY_SPLIT), st.sampled_from(_FRAGMENTS)),
    verb_with_argument.map(lambda x: x[:-2]),
).filter(lambda b: b"\r\n" not in b and not _MULTI_STEP.match(b))


@SETTINGS
@given(config=configs, lines=st.lists(line_content, max_size=30), pieces=cuts)
def test_every_command_line_gets_exactly_one_reply(config: Config, lines: list[bytes],
                                                   pieces: list[int]) -> None:
    data = b"".join(x + b"\r\n" for x in lines)
    driver = drive(config, split_at(data, pieces), eof=False)
    got = driver.replies
    if driver.closed:
        assert got and got[-1].code in (221, 421)
        assert len(got) <= len(lines)
    else:
        assert len(got) == len(lines)


def dot_stuff(body: bytes) -> bytes:
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


message_body = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from([*_FRAGMENTS, b"text", b"QUIT", b"MAIL FROM:<x@y.example>"]),
             max_size=30).map(b"".join),
)


@SETTINGS
@given(
    bodies=st.lists(message_body, min_size=1, max_size=4),
    extra=st.lists(st.sampled_from([b"NOOP", b"RSET", b"HELP", b"VRFY x"]), max_size=3),
    pieces=cuts,
)
def test_every_message_gets_one_reply_and_arrives_intact(
    bodies: list[bytes], extra: list[bytes], pieces: list[int]
) -> None:
    stream = [b"EHLO client.example\r\n"]
    for body in bodies:
        stream += [b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n", b"DATA\r\n",
                   dot_stuff(body) + b"\r\n.\r\n"]
        stream += [x + b"\r\n" for x in extra]
    data = b"".join(stream)
    driver = drive(Config(line_length_limit=None), split_at(data, pieces), eof=False)
    commands = 1 + len(bodies) * (3 + len(extra))
    assert len(driver.replies) == commands + len(bodies)
    assert [e.content for e in driver.events if isinstance(e, EndOfData)] == [
        body + b"\r\n" for body in bodies
    ]
    assert driver.messages == [body + b"\r\n" for body in bodies]
    assert not driver.closed


@SETTINGS
@given(
    body=message_body,
    config=st.sampled_from(
        [
            {"data_size_limit": 50},
            {"line_length_limit": 12},
            {"bare_newline": "reject"},
            {"data_size_limit": 80, "line_length_limit": 20, "bare_newline": "reject"},
            {"decode_data": True},
        ]
    ).map(lambda kw: Config(**kw)),
    pieces=cuts,
)
def test_refused_message_gets_one_reply_and_the_session_goes_on(
    body: bytes, config: Config, pieces: list[int]
) -> None:
    data = (b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
            + dot_stuff(body) + b"\r\n.\r\nMAIL FROM:<a@b.example>\r\n")
    driver = drive(config, split_at(data, pieces), eof=False)
    codes = [r.code for r in driver.replies]
    assert codes[:4] == [250, 250, 250, 354]
    assert len(codes) == 6
    assert codes[5] == 250  # the transaction ended either way; a new one starts
    if codes[4] == 250:
        assert len(driver.messages) == 1
    else:
        assert codes[4] in (500, 550, 552, 554)
        assert driver.messages == []


@SETTINGS
@given(
    body=message_body,
    delta=st.integers(-3, 3),
    line_limit=st.one_of(st.none(), st.integers(4, 40)),
    bare=st.sampled_from(["keep", "normalize", "reject"]),
    pieces=cuts,
)
def test_message_verdict_does_not_depend_on_chunking(
    body: bytes, delta: int, line_limit: int | None, bare: Any, pieces: list[int]
) -> None:
    content = body + b"\r\n"
    limit = max(len(content) + delta, 1)
    config = Config(data_size_limit=limit, line_length_limit=line_limit, bare_newline=bare)
    data = (b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
            + dot_stuff(body) + b"\r\n.\r\nNOOP\r\n")
    whole = drive(config, [data], eof=False)
    assert outcome(drive(config, split_at(data, pieces), eof=False)) == outcome(whole)
    bytewise = drive(config, [data[i : i + 1] for i in range(len(data))], eof=False)
    assert outcome(bytewise) == outcome(whole)
    verdict = whole.replies[4].code
    assert (verdict == 552) == (len(content) > limit)  # RFC 1870: unstuffed octets, exactly
    assert whole.replies[5].code == 250
