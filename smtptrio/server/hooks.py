"""The handler's hooks, resolved once per handler, and the one place that calls them.

aiosmtpd looks hooks up by name (``handle_<VERB>``, ``auth_<MECH>``, ``handle_exception``...)
and guesses the form of ``handle_EHLO`` from its signature on every connection. Here that work
happens once, when the server starts: :meth:`HookTable.for_handler` inspects the handler's class
(cached per class) and binds the hooks of the instance. Sync and async hooks are both accepted:
a hook is called, and its result awaited if it is awaitable (COMPAT.md section 2.1).
"""

from __future__ import annotations

import inspect
import logging
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from smtptrio.protocol.replies import Reply, ReplySyntaxError, complete_enhanced

__all__ = [
    "COMMAND_HOOKS",
    "DataHook",
    "HookTable",
    "HookTimeout",
    "ReplyError",
    "auth_mechanism",
    "mechanism_name",
    "parse_status",
]

log = logging.getLogger(__name__)

#: Hooks called as ``hook(server, session, envelope, *extra)``.
COMMAND_HOOKS = ("HELO", "EHLO", "NOOP", "QUIT", "VRFY", "MAIL", "RCPT", "RSET", "DATA", "AUTH")


class DataHook(Protocol):
    """The shape of the hook most handlers implement (documented for type checkers)."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str: ...


class HookTimeout(TimeoutError):
    """A hook ran longer than the ``hook_timeout`` option; the client got ``451 4.3.0``.

    ``handle_exception`` receives it like any other error a hook raised.
    """


class ReplyError(Exception):
    """A hook returned something that is not a reply; treated as a handler error."""


def auth_mechanism(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Name an ``auth_*`` method's mechanism when the name is not a valid identifier.

    >>> @auth_mechanism("SCRAM-SHA-256")
    ... async def auth_scram(server, args): ...
    >>> mechanism_name("auth_scram", auth_scram)
    'SCRAM-SHA-256'
    """
    import re

    if not re.fullmatch(r"[A-Z0-9_-]+", name.upper()) or not name:
        raise ValueError(f"invalid AUTH mechanism name {name!r}: use [A-Z0-9_-]+")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__auth_mechanism_name__ = name.upper()  # type: ignore[attr-defined]  # marker attribute
        return func

    return decorate


def mechanism_name(attr: str, func: object) -> str:
    """The mechanism an ``auth_*`` attribute implements: decorator name, else from the name."""
    named = getattr(func, "__auth_mechanism_name__", None)
    if isinstance(named, str):
        return named
    return attr[len("auth_") :].replace("__", "-").upper()


def _positional_arity(func: Callable[..., Any]) -> int | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class _ClassShape:
    """What the inspection of a handler class found (cached per class)."""

    commands: frozenset[str]
    ehlo_style: str | None  # None (no hook), "new" (5 args) or "old" (4 args, deprecated)
    has_exception: bool
    has_starttls: bool
    has_proxy: bool
    has_process_message: bool
    auth_attrs: tuple[str, ...]


_SHAPES: weakref.WeakKeyDictionary[type[Any], _ClassShape] = weakref.WeakKeyDictionary()


def _shape(handler: Any) -> _ClassShape:
    """Inspect a handler once. The result is cached per class unless the instance carries
    hooks of its own (``self.handle_DATA = ...``), which aiosmtpd's ``dir(handler)`` sees too."""
    cls = type(handler)
    own = getattr(handler, "__dict__", None) or {}
    if any(k.startswith(("handle_", "auth_", "process_message")) for k in own):
        return _inspect(handler)
    try:
        shape = _SHAPES.get(cls)
    except TypeError:  # a class that cannot be weakly referenced
        return _inspect(handler)
    if shape is None:
        shape = _SHAPES[cls] = _inspect(handler)
    return shape


def _inspect(handler: Any) -> _ClassShape:
    names = set(dir(handler))

    def has(name: str) -> bool:
        return name in names and callable(getattr(handler, name, None))

    commands = frozenset(v for v in COMMAND_HOOKS if has(f"handle_{v}"))
    ehlo_style = None
    if "EHLO" in commands:
        # Bound: (server, session, envelope, hostname, responses) is the current form; four
        # arguments is the deprecated one without responses.
        ehlo_style = "old" if _positional_arity(handler.handle_EHLO) == 4 else "new"
    return _ClassShape(
        commands=commands,
        ehlo_style=ehlo_style,
        has_exception=has("handle_exception"),
        has_starttls=has("handle_STARTTLS"),
        has_proxy=has("handle_PROXY"),
        has_process_message=has("process_message"),
        auth_attrs=tuple(sorted(a for a in names if a.startswith("auth_") and has(a))),
    )


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` and await the result when it is awaitable (sync and async hooks alike)."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


@lru_cache(maxsize=1024)
def _parse_cached(status: str, verb: str, complete: bool) -> Reply:
    reply = Reply.parse(status)
    if complete and reply.enhanced is None:
        enhanced = complete_enhanced(reply.code, verb)
        if enhanced is not None:
            reply = Reply(reply.code, enhanced, reply.lines)
    return reply


def parse_status(status: object, verb: str, *, complete: bool, utf8: bool) -> Reply:
    """Turn what a hook returned into a Reply, or raise ReplyError (never sent raw).

    Args:
        status: the hook's return value (``str`` or ``bytes``).
        verb: the command it answers, which picks the enhanced code to add.
        complete: add an enhanced code when the hook gave none (RFC 2034).
        utf8: SMTPUTF8 is on, so the text may be UTF-8; otherwise it must be ASCII.
    """
    if isinstance(status, bytes | bytearray):
        try:
            status = bytes(status).decode("utf-8" if utf8 else "ascii")
        except UnicodeDecodeError as exc:
            raise ReplyError(f"reply bytes are not {'UTF-8' if utf8 else 'ASCII'}") from exc
    if not isinstance(status, str):
        raise ReplyError(f"a reply must be str or bytes, got {type(status).__name__}")
    if not utf8 and not status.isascii():
        raise ReplyError("non-ASCII reply text while SMTPUTF8 is off")
    try:
        return _parse_cached(status, verb, complete)
    except ReplySyntaxError as exc:
        raise ReplyError(str(exc)) from exc


class HookTable:
    """The hooks of one handler instance, bound once; shared by all its connections."""

    __slots__ = (
        "auth_hooks",
        "commands",
        "ehlo_style",
        "handle_exception",
        "handle_proxy",
        "handle_starttls",
        "handler",
        "process_message",
    )

    def __init__(self, handler: Any) -> None:
        shape = _shape(handler)
        self.handler = handler
        self.commands: dict[str, Callable[..., Any]] = {
            verb: getattr(handler, f"handle_{verb}") for verb in shape.commands
        }
        self.ehlo_style = shape.ehlo_style
        if shape.ehlo_style == "old":
            warnings.warn(
                "handle_EHLO(server, session, envelope, hostname) is deprecated; add a "
                "`responses` argument and return the list of lines",
                DeprecationWarning,
                stacklevel=3,
            )
        self.handle_exception = handler.handle_exception if shape.has_exception else None
        self.handle_starttls = handler.handle_STARTTLS if shape.has_starttls else None
        self.handle_proxy = handler.handle_PROXY if shape.has_proxy else None
        self.process_message = None
        if shape.has_process_message and "DATA" not in self.commands:
            warnings.warn(
                "process_message() is deprecated; implement handle_DATA()",
                DeprecationWarning,
                stacklevel=3,
            )
            self.process_message = handler.process_message
        self.auth_hooks: dict[str, Callable[..., Any]] = {}
        for attr in shape.auth_attrs:
            func = getattr(handler, attr)
            self.auth_hooks[mechanism_name(attr, func)] = func

    @classmethod
    def for_handler(cls, handler: object) -> HookTable:
        return cls(handler)

    def has(self, verb: str) -> bool:
        return verb in self.commands

    async def on_exception(self, error: Exception) -> object:
        """Ask ``handle_exception`` (sync or async) for the reply to an error, or None."""
        hook = self.handle_exception
        if hook is None:
            return None
        try:
            return await call_maybe_async(hook, error)
        except Exception:
            log.exception("handle_exception itself failed")
            return None
