r"""Receive buffers: CRLF-only command lines with a limit, and bodies ended by CRLF.CRLF only."""

from __future__ import annotations

import tracemalloc

import pytest
from engine_driver import CHUNKINGS, chunk

from smtptrio.protocol.buffer import TOO_LONG, BodyOutcome, BodyReader, LineBuffer

# --- LineBuffer -----------------------------------------------------------------------------


def lines_of(chunks: list[bytes], limit: int = 20) -> list[object]:
    buf = LineBuffer()
    out: list[object] = []
    for piece in chunks:
        buf.feed(piece)
        for _ in range(len(piece) + 1):
            got = buf.take_line(limit)
            if got is None:
                break
            out.append(got)
    return out


@pytest.mark.parametrize("how", CHUNKINGS)
def test_lines_end_at_crlf_only(how: str) -> None:
    data = b"NOOP\r\nA\nB\r\nC\rD\r\n\r\nlast"
    assert lines_of(chunk(data, how)) == [b"NOOP", b"A\nB", b"C\rD", b""]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_line_limit_is_octets_before_crlf(how: str) -> None:
    data = b"x" * 20 + b"\r\n" + b"y" * 21 + b"\r\nok\r\n"
    assert lines_of(chunk(data, how)) == [b"x" * 20, TOO_LONG, b"ok"]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_long_line_is_discarded_while_it_arrives(how: str) -> None:
    buf = LineBuffer()
    for piece in chunk(b"z" * 5000, how):
        buf.feed(piece)
        assert buf.take_line(20) is None
        assert len(buf) <= 22 + len(piece)
    buf.feed(b"\r")
    assert buf.take_line(20) is None
    assert len(buf) == 1  # the CR is kept: it may be half of the CRLF
    buf.feed(b"\nnext\r\n")
    assert buf.take_line(20) is TOO_LONG
    assert buf.take_line(20) == b"next"
    assert buf.take_line(20) is None


def test_cr_at_chunk_end_then_lf() -> None:
    assert lines_of([b"NOOP\r", b"\nQUIT\r", b"\n"]) == [b"NOOP", b"QUIT"]


def test_take_all_and_clear() -> None:
    buf = LineBuffer()
    buf.feed(b"a\r\nb")
    assert buf.take_line(10) == b"a"
    assert buf.take_all() == b"b"
    assert len(buf) == 0
    buf.feed(b"x" * 50)
    assert buf.take_line(10) is None
    assert buf.clear() <= 50
    buf.feed(b"fresh\r\n")
    assert buf.take_line(10) == b"fresh"  # no discarding state left behind


def test_too_long_repr() -> None:
    assert repr(TOO_LONG) == "TOO_LONG"


# --- BodyReader -----------------------------------------------------------------------------


def read_body(
    chunks: list[bytes],
    *,
    size_limit: int | None = None,
    line_limit: int | None = 1001,
    bare_newline: str = "keep",
) -> tuple[BodyOutcome, bytes, bytes]:
    reader = BodyReader(size_limit=size_limit, line_limit=line_limit, bare_newline=bare_newline)
    rest = b""
    for piece in chunks:
        if reader.done:
            rest += piece
        else:
            rest += reader.feed(piece)
    assert reader.done
    outcome, content = reader.result()
    return outcome, content, rest


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "content", "rest"),
    [
        (b".\r\n", b"", b""),
        (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
        (b"a\r\n.\r\n", b"a\r\n", b""),
        (b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n"),
        (b"..\r\n.\r\n", b".\r\n", b""),
        (b"..a\r\n.b\r\n.\r\n", b".a\r\nb\r\n", b""),
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),
        (b"a\r.\r\n.\r\n", b"a\r.\r\n", b""),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n", b""),
    ],
)
def test_body_content(data: bytes, content: bytes, rest: bytes, how: str) -> None:
    outcome, got, after = read_body(chunk(data, how))
    assert (outcome, got, after) == (BodyOutcome.OK, content, rest)


def test_feed_after_done_returns_everything() -> None:
    reader = BodyReader(size_limit=None, line_limit=None, bare_newline="keep")
    assert reader.feed(b"x\r\n.\r\nNO") == b"NO"
    assert reader.feed(b"OP\r\n") == b"OP\r\n"
    assert reader.result() == (BodyOutcome.OK, b"x\r\n")


def test_result_before_the_end_is_an_error() -> None:
    reader = BodyReader(size_limit=None, line_limit=None, bare_newline="keep")
    reader.feed(b"x\r\n")
    assert not reader.done
    with pytest.raises(RuntimeError):
        reader.result()


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("size", [10, 11, 12, 13])
def test_size_is_exact_in_any_chunking(size: int, how: str) -> None:
    # The message is 12 octets: the terminator's first octets must never be counted.
    data = b"1234567890\r\n.\r\n"
    outcome, _, _ = read_body(chunk(data, how), size_limit=size)
    assert outcome is (BodyOutcome.OK if size >= 12 else BodyOutcome.TOO_BIG)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_stuffing_dots_are_not_counted(how: str) -> None:
    data = b"..\r\n..\r\n..\r\n.\r\n"  # delivered: ".\r\n" * 3 = 9 octets
    assert read_body(chunk(data, how), size_limit=9)[0] is BodyOutcome.OK
    assert read_body(chunk(data, how), size_limit=8)[0] is BodyOutcome.TOO_BIG


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(("length", "ok"), [(9, True), (10, False), (30, False)])
def test_line_limit_includes_crlf(length: int, ok: bool, how: str) -> None:
    data = b"a\r\n" + b"x" * length + b"\r\nb\r\n.\r\n"
    outcome, _, _ = read_body(chunk(data, how), line_limit=11)
    assert outcome is (BodyOutcome.OK if ok else BodyOutcome.LINE_TOO_LONG)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_first_line_counts_for_the_limit(how: str) -> None:
    assert read_body(chunk(b"x" * 10 + b"\r\n.\r\n", how), line_limit=11)[0] is (
        BodyOutcome.LINE_TOO_LONG
    )
    assert read_body(chunk(b"x" * 9 + b"\r\n.\r\n", how), line_limit=11)[0] is BodyOutcome.OK


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"a\r\nb\r\n.\r\n", False),
        (b"a\nb\r\n.\r\n", True),
        (b"a\rb\r\n.\r\n", True),
        (b"a\r\r\n.\r\n", True),
        (b"\n.\r\n.\r\n", True),
        (b"a\r\n\r.\r\n.\r\n", True),
        (b"\r\n\r\n\r\n.\r\n", False),
    ],
)
def test_bare_newline_detection(data: bytes, bare: bool, how: str) -> None:
    outcome, _, _ = read_body(chunk(data, how), bare_newline="reject")
    assert outcome is (BodyOutcome.BARE_NEWLINE if bare else BodyOutcome.OK)


def test_normalize_turns_bare_cr_and_lf_into_crlf() -> None:
    outcome, content, _ = read_body([b"a\nb\rc\r\n..d\n\r\n.\r\n"], bare_newline="normalize")
    assert outcome is BodyOutcome.OK
    assert content == b"a\r\nb\r\nc\r\n.d\r\n\r\n"


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        # bare LF, then a long line, then too big: size wins
        (b"a\nb\r\n" + b"x" * 20 + b"\r\n" + b"y" * 50 + b"\r\n.\r\n", BodyOutcome.TOO_BIG),
        # bare LF, then a long line: the line wins
        (b"a\nb\r\n" + b"x" * 20 + b"\r\n.\r\n", BodyOutcome.LINE_TOO_LONG),
        # too big, then a bare LF: still too big
        ((b"y" * 8 + b"\r\n") * 5 + b"\n\r\n.\r\n", BodyOutcome.TOO_BIG),
    ],
)
def test_precedence_size_then_line_then_bare(data: bytes, outcome: BodyOutcome, how: str) -> None:
    got = read_body(chunk(data, how), size_limit=40, line_limit=10, bare_newline="reject")
    assert got[0] is outcome


def test_over_limit_body_is_not_kept() -> None:
    reader = BodyReader(size_limit=100, line_limit=None, bare_newline="keep")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            reader.feed(b"x" * 1000 + b"\r\n")
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 16 * 1024  # 1 MB went through
    assert reader.feed(b".\r\nNOOP\r\n") == b"NOOP\r\n"
    assert reader.result() == (BodyOutcome.TOO_BIG, b"")


@pytest.mark.parametrize("cut", range(1, 12))
def test_terminator_at_every_split(cut: int) -> None:
    data = b"ab\r\n..c\r\n.\r\nX"
    outcome, content, rest = read_body([data[:cut], data[cut:]])
    assert (outcome, content, rest) == (BodyOutcome.OK, b"ab\r\n.c\r\n", b"X")


def test_byte_at_a_time_body_is_kept_compactly() -> None:
    # One octet per feed must not become one Python object per octet: a client trickling a
    # message would otherwise make us hold about 40 times its size.
    reader = BodyReader(size_limit=None, line_limit=1001, bare_newline="keep")
    line = b"x" * 78 + b"\r\n"
    body = line * 2000  # 160 KB
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(len(body)):
            reader.feed(body[i : i + 1])
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 2 * len(body)
    assert reader.feed(b".\r\n") == b""
    assert reader.result() == (BodyOutcome.OK, body)


def test_large_body_costs_about_its_size() -> None:
    # Chunks without a leading-dot line are kept as received and joined once at the end: the
    # peak is the chunks plus the joined content, never a copy per chunk on top.
    reader = BodyReader(size_limit=None, line_limit=1001, bare_newline="keep")
    chunk_ = (b"y" * 78 + b"\r\n") * 800  # 64 000 octets
    tracemalloc.start()
    try:
        for _ in range(64):
            reader.feed(bytes(chunk_))
        reader.feed(b".\r\n")
        outcome, content = reader.result()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome is BodyOutcome.OK and len(content) == 64 * len(chunk_)
    assert peak < 2.2 * len(content)


@pytest.mark.parametrize(
    "data",
    [
        b".\r\n",
        b"..\r\n.\r\n",
        b"...x\r\n.\r\n",
        b"a\r\n..\r\n..\r\n.\r\n",
        b"a\r\n.\r\r\n.\r\n",
        b"a\r\n.\rb\r\n.\r\n",
    ],
)
def test_leading_dots_in_every_chunking(data: bytes) -> None:
    expected = read_body([data])
    for cut in range(1, len(data)):
        assert read_body([data[:cut], data[cut:]]) == expected
    assert read_body([data[i : i + 1] for i in range(len(data))]) == expected


def test_a_reused_bytearray_chunk_does_not_change_what_was_kept() -> None:
    # Large chunks are kept by reference; a caller's mutable buffer is copied first.
    reader = BodyReader(size_limit=None, line_limit=None, bare_newline="keep")
    reader.feed(b"x")  # nothing held back after this, so the next chunk is not re-joined
    buf = bytearray(b"a" * 20000)  # no CR or LF at its end: judged whole, as it came
    reader.feed(buf)  # type: ignore[arg-type]
    buf[:] = b"b" * len(buf)
    reader.feed(b"\r\n.\r\n")
    assert reader.result() == (BodyOutcome.OK, b"x" + b"a" * 20000 + b"\r\n")
