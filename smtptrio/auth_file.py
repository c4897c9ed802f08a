"""The password file behind ``smtptrio serve --auth-file``: its format, its hashes, its checker.

The file holds one ``user:hash`` entry per line; blank lines and lines starting with ``#`` are
ignored. Every hash is scrypt (RFC 7914, :func:`hashlib.scrypt`, no dependency outside the
standard library), written as::

    scrypt$<n>$<r>$<p>$<salt, base64>$<derived key, base64>

``smtptrio hash-password USER`` prints such a line. A plaintext password in the file is refused
at start-up rather than accepted: a file of clear passwords is one backup away from a leak, and
accepting both forms would make the mistake silent.

Cost. The default parameters (n=2**14, r=8, p=1: 16 MiB, about 20-50 ms on one core) are
deliberately moderate. The server calls a *sync* authenticator on the event loop, so every
check made through :meth:`AuthFile.__call__` blocks every other session for that long; pass
:meth:`AuthFile.verify_async` as the authenticator instead to run the hash in a worker thread.
Either way an unknown user costs one scrypt computation like a wrong password does, so timing
does not reveal which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import trio

from smtptrio.server.session import AuthResult, LoginPassword

__all__ = [
    "DEFAULT_N",
    "DEFAULT_P",
    "DEFAULT_R",
    "AuthFile",
    "AuthFileError",
    "PasswordHash",
    "check_user_name",
    "hash_password",
    "verify_password",
]

log = logging.getLogger(__name__)

#: scrypt CPU/memory cost (a power of two).
DEFAULT_N: Final = 2**14
#: scrypt block size.
DEFAULT_R: Final = 8
#: scrypt parallelism.
DEFAULT_P: Final = 1

_SCHEME: Final = "scrypt"
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
# Bounds on what a file may ask for, so that a typo ("n=2**30") fails at start-up instead of
# making every AUTH allocate gigabytes.
_MAX_MEMORY: Final = 256 * 1024 * 1024
_MAX_P: Final = 16


class AuthFileError(ValueError):
    """The auth file cannot be used: unreadable, malformed, or holding a plaintext password.

    The message names the file and the line, never the password or the hash on it.
    """


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordHash:
    """One parsed ``scrypt$...`` value."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read the encoded form; :class:`ValueError` says what is wrong, without echoing it."""
        parts = text.split("$")
        if parts[0] != _SCHEME:
            if len(parts) > 1 or text.startswith("$"):
                raise ValueError("unsupported password hash scheme (only scrypt$... is supported)")
            raise ValueError("the password is not hashed")
        if len(parts) != 6:
            raise ValueError("a scrypt hash has 6 fields: scrypt$n$r$p$salt$key")
        try:
            n, r, p = (int(field, 10) for field in parts[1:4])
        except ValueError:
            raise ValueError("scrypt parameters n, r and p must be integers") from None
        try:
            salt = base64.b64decode(parts[4], validate=True)
            key = base64.b64decode(parts[5], validate=True)
        except binascii.Error:
            raise ValueError("scrypt salt and key must be base64") from None
        value = cls(n=n, r=r, p=p, salt=salt, key=key)
        value._check()
        return value

    def _check(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError("scrypt n must be a power of two, at least 2")
        if self.r < 1 or not 1 <= self.p <= _MAX_P:
            raise ValueError(f"scrypt r must be >= 1 and p between 1 and {_MAX_P}")
        if 128 * self.r * self.n > _MAX_MEMORY:
            raise ValueError(f"scrypt n*r asks for more than {_MAX_MEMORY >> 20} MiB")
        if not self.salt or len(self.key) < 16:
            raise ValueError("scrypt salt must not be empty and the key must be >= 16 bytes")

    def encode(self) -> str:
        """The ``scrypt$n$r$p$salt$key`` text written to the auth file."""
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"{_SCHEME}${self.n}${self.r}${self.p}${salt}${key}"

    def derive(self, password: bytes) -> bytes:
        """The scrypt key of ``password`` under these parameters and this salt (CPU-heavy)."""
        # OpenSSL's default memory cap (32 MiB) is below what larger r or n need; give it the
        # real requirement plus slack rather than failing with an opaque "memory limit" error.
        maxmem = 128 * self.r * (self.n + self.p + 2) + (1 << 20)
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=maxmem,
            dklen=len(self.key),
        )

    def matches(self, password: bytes) -> bool:
        """Constant-time comparison of the derived key with the stored one."""
        return hmac.compare_digest(self.derive(password), self.key)

    @property
    def parameters(self) -> tuple[int, int, int]:
        return (self.n, self.r, self.p)


def _as_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def hash_password(
    password: str | bytes, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """Hash ``password`` (a ``str`` is taken as UTF-8) with a fresh random 16-byte salt.

    Returns:
        The ``scrypt$n$r$p$salt$key`` text for the auth file.
    Raises:
        ValueError: for parameters the auth file would refuse.
    """
    draft = PasswordHash(n=n, r=r, p=p, salt=secrets.token_bytes(_SALT_BYTES), key=bytes(32))
    draft._check()
    key = draft.derive(_as_bytes(password))
    return PasswordHash(n=n, r=r, p=p, salt=draft.salt, key=key).encode()


def verify_password(password: str | bytes, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time compare; CPU-heavy).

    Raises:
        ValueError: if ``encoded`` is not a valid scrypt hash.
    """
    return PasswordHash.parse(encoded).matches(_as_bytes(password))


def check_user_name(user: str) -> None:
    """Raise :class:`ValueError` unless ``user`` can be the first field of an auth file line."""
    if not user:
        raise ValueError("the user name is empty")
    if ":" in user:
        raise ValueError("a user name cannot contain ':'")
    if any(ch.isspace() or not ch.isprintable() for ch in user):
        raise ValueError("a user name cannot contain white space or control characters")


def _parse(text: str, source: str) -> dict[str, PasswordHash]:
    users: dict[str, PasswordHash] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"auth file {source}, line {number}"
        user, colon, encoded = line.partition(":")
        if not colon:
            raise AuthFileError(f"{where}: expected user:hash")
        user = user.strip()
        try:
            check_user_name(user)
        except ValueError as exc:
            raise AuthFileError(f"{where}: {exc}") from None
        if user in users:
            raise AuthFileError(f"{where}: user {user!r} is listed twice")
        try:
            users[user] = PasswordHash.parse(encoded.strip())
        except ValueError as exc:
            hint = ""
            if str(exc) == "the password is not hashed":
                hint = f"; replace it with the output of 'smtptrio hash-password {user}'"
            raise AuthFileError(f"{where}: {exc} for user {user!r}{hint}") from None
    if not users:
        raise AuthFileError(f"auth file {source} lists no users")
    return users


@final
class AuthFile:
    """An aiosmtpd-style authenticator that checks LOGIN/PLAIN credentials against a file.

    The file is read and validated once, in the constructor, so a bad file stops the server
    before it listens. Use the instance itself as ``authenticator=`` (sync: the hash runs on
    the event loop, see the module docstring) or, better, ``authenticator=auth.verify_async``.

    Raises:
        AuthFileError: if the file cannot be read or one of its lines is invalid.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthFileError(
                f"cannot read auth file {self.path}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise AuthFileError(f"auth file {self.path} is not UTF-8 text") from None
        self._users = _parse(text, str(self.path))
        # Unknown users are checked against a hash of a random secret with the parameters most
        # entries use, so a miss costs what a wrong password costs.
        n, r, p = Counter(h.parameters for h in self._users.values()).most_common(1)[0][0]
        self._dummy = PasswordHash.parse(hash_password(secrets.token_bytes(16), n=n, r=r, p=p))

    @property
    def users(self) -> frozenset[str]:
        """The user names the file defines."""
        return frozenset(self._users)

    def check(self, user: str | bytes, password: str | bytes) -> bool:
        """True when ``user`` exists and ``password`` is right; always one scrypt computation."""
        if isinstance(user, bytes):
            try:
                user = user.decode("utf-8")
            except UnicodeDecodeError:
                user = ""
        stored = self._users.get(user)
        good = (stored or self._dummy).matches(_as_bytes(password))
        return good and stored is not None

    def __call__(
        self,
        server: object,
        session: object,
        envelope: object,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """The authenticator hook (aiosmtpd signature), synchronous.

        Only the built-in LOGIN and PLAIN mechanisms hand over a :class:`LoginPassword`; any
        other mechanism gets ``AuthResult(success=False, handled=False)`` (a 535 reply).
        """
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if self.check(auth_data.login, auth_data.password):
            return AuthResult(success=True, auth_data=auth_data)
        log.debug(
            "auth file rejected credentials",
            extra={"mechanism": mechanism, "login": auth_data.login.decode("utf-8", "replace")},
        )
        return AuthResult(success=False, handled=False)

    async def verify_async(
        self,
        server: object,
        session: object,
        envelope: object,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """Same as calling the instance, with the hash computed in a worker thread.

        For servers that await an awaitable authenticator result (smtptrio does): the event
        loop keeps serving other sessions while scrypt runs.
        """
        return await trio.to_thread.run_sync(self, server, session, envelope, mechanism, auth_data)

    def __repr__(self) -> str:
        return f"<AuthFile {str(self.path)!r} users={len(self._users)}>"
