"""The --auth-file format, the scrypt hashes, and the AuthFile authenticator."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import trio

from smtptrio import AuthResult, LoginPassword
from smtptrio.auth_file import (
    DEFAULT_N,
    AuthFile,
    AuthFileError,
    PasswordHash,
    hash_password,
    verify_password,
)

# Cheap parameters keep the suite fast; the defaults are exercised where timing matters.
FAST = {"n": 2**4, "r": 1, "p": 1}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users"
    path.write_text(text, encoding="utf-8")
    return path


def test_hash_has_the_documented_format_and_defaults() -> None:
    encoded = hash_password("s3cret")
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", DEFAULT_N, 8, 1)
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32


def test_same_password_gets_a_fresh_salt_each_time() -> None:
    assert hash_password("pw", **FAST) != hash_password("pw", **FAST)


def test_verify_accepts_the_password_and_refuses_others() -> None:
    encoded = hash_password("correct horse", **FAST)
    assert verify_password("correct horse", encoded)
    assert verify_password(b"correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert not verify_password("", encoded)


def test_non_ascii_passwords_are_hashed_as_utf8() -> None:
    encoded = hash_password("pässwörd", **FAST)
    assert verify_password("pässwörd".encode(), encoded)


@pytest.mark.parametrize(
    ("n", "r", "p"), [(3, 1, 1), (1, 1, 1), (2**4, 0, 1), (2**4, 1, 0), (2**22, 8, 1)]
)
def test_unusable_parameters_are_refused(n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError, match="scrypt"):
        hash_password("pw", n=n, r=r, p=p)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("hunter2", "not hashed"),
        ("$2b$12$abcdefghijklmnopqrstuv", "unsupported"),
        ("bcrypt$x$y", "unsupported"),
        ("scrypt$16$1$1$c2FsdA==", "6 fields"),
        ("scrypt$x$1$1$c2FsdA==$" + "A" * 44, "integers"),
        ("scrypt$16$1$1$not base64!$" + "A" * 44, "base64"),
        ("scrypt$16$1$1$c2FsdA==$c2hvcnQ=", "16 bytes"),
    ],
)
def test_parse_names_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PasswordHash.parse(value)


def test_file_with_comments_and_blank_lines_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# users of the test server\n\n"
        f"alice:{hash_password('a-pass', **FAST)}\n"
        f"  bob : {hash_password('b-pass', **FAST)}  \n"
        "   # indented comment\n",
    )
    auth = AuthFile(path)
    assert auth.users == {"alice", "bob"}
    assert auth.check("alice", "a-pass")
    assert auth.check(b"bob", b"b-pass")
    assert not auth.check("alice", "b-pass")
    assert not auth.check("carol", "a-pass")
    assert not auth.check(b"\xff", "a-pass")


def test_plaintext_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, f"alice:{hash_password('x', **FAST)}\nbob:hunter2\n")
    with pytest.raises(AuthFileError) as caught:
        AuthFile(path)
    message = str(caught.value)
    assert "line 2" in message and "not hashed" in message and "'bob'" in message
    assert "hash-password bob" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no users"),
        ("# only a comment\n", "no users"),
        ("alice\n", "line 1: expected user:hash"),
        (":scrypt$16$1$1$c2FsdA==$" + "A" * 44 + "\n", "line 1: the user name is empty"),
        ("a b:x\n", "white space"),
    ],
)
def test_malformed_files_are_refused_with_the_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(AuthFileError, match=problem):
        AuthFile(write(tmp_path, text))


def test_duplicate_user_is_refused(tmp_path: Path) -> None:
    line = f"alice:{hash_password('x', **FAST)}\n"
    with pytest.raises(AuthFileError, match="line 2: user 'alice' is listed twice"):
        AuthFile(write(tmp_path, line + line))


def test_missing_file_is_an_auth_file_error(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match=r"cannot read auth file .*No such file"):
        AuthFile(tmp_path / "absent")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"\xffalice:x\n")
    with pytest.raises(AuthFileError, match="not UTF-8"):
        AuthFile(path)


def test_auth_file_error_is_a_value_error() -> None:
    assert issubclass(AuthFileError, ValueError)


def test_authenticator_returns_aiosmtpd_results(tmp_path: Path) -> None:
    auth = AuthFile(write(tmp_path, f"alice:{hash_password('pw', **FAST)}\n"))
    good = LoginPassword(b"alice", b"pw")
    result = auth(None, None, None, "PLAIN", good)
    assert result == AuthResult(success=True, auth_data=good)
    for data in (LoginPassword(b"alice", b"nope"), LoginPassword(b"eve", b"pw"), b"token"):
        refused = auth(None, None, None, "LOGIN", data)
        assert (refused.success, refused.handled) == (False, False)


async def test_verify_async_runs_off_the_event_loop(tmp_path: Path) -> None:
    auth = AuthFile(write(tmp_path, f"alice:{hash_password('pw')}\n"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(1000):
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await auth.verify_async(None, None, None, "PLAIN", LoginPassword(b"alice", b"pw"))
        nursery.cancel_scope.cancel()
    assert result.success
    assert ticks > 1  # the loop kept running while scrypt did


def test_unknown_user_costs_as_much_as_a_wrong_password(tmp_path: Path) -> None:
    auth = AuthFile(write(tmp_path, f"alice:{hash_password('pw')}\n"))

    def best_of(user: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert not auth.check(user, "wrong")
            times.append(time.perf_counter() - start)
        return min(times)

    wrong_password, unknown_user = best_of("alice"), best_of("mallory")
    # Both run exactly one scrypt with the same parameters; a skipped hash would be ~1000x
    # faster, so a factor of 3 is a generous bound for scheduling noise.
    assert unknown_user > wrong_password / 3
    assert wrong_password > unknown_user / 3


def test_repr_does_not_show_hashes(tmp_path: Path) -> None:
    encoded = hash_password("pw", **FAST)
    auth = AuthFile(write(tmp_path, f"alice:{encoded}\n"))
    assert encoded.split("$")[-1] not in repr(auth)
    assert "users=1" in repr(auth)
