"""pytest fixtures for testing code that sends mail (registered through the pytest11 entry point).

- ``smtp_server``: a threaded server (``smtptrio.testing.ThreadedTestServer``), one per test,
  for synchronous code and any async framework.
- ``smtp_server_session``: one threaded server for the whole session (one per xdist worker),
  reset before each test.
- ``trio_smtp_server``: a ``smtptrio.testing.TrioTestServer`` in the test's own trio run
  (pytest-trio, or anyio's plugin with the trio backend). There is no session-scoped trio
  variant: pytest-trio runs each test in a fresh ``trio.run`` and refuses fixtures of a wider
  scope, so no trio loop outlives a test; use ``smtp_server_session`` from trio tests instead.

Configuration, later wins: the defaults, smtpdfix's ``SMTPD_*`` variables, an override of the
``smtp_server_config`` fixture, ``@pytest.mark.smtp_server(...)`` markers (module, class, then
function), then indirect parametrisation of the fixture. When a test fails, the SMTP dialogue
of the servers it used is added to its report as the section "smtp transcript".

This module is imported by pytest in every run of every project that installed smtptrio, so it
imports nothing heavy at module level: the servers, trio and trustme load in the fixtures.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pluggy import Result

    from smtptrio.testing import ServerConfig, ThreadedTestServer, TrioTestServer

__all__ = [
    "smtp_server",
    "smtp_server_config",
    "smtp_server_session",
    "smtp_server_session_config",
    "trio_smtp_server",
]

_MARKER = "smtp_server"
_SERVERS = pytest.StashKey[list[Any]]()
_SHOWN = pytest.StashKey[set[int]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): configure the smtp_server / trio_smtp_server fixtures, e.g. "
        "tls='starttls'|'smtps', users={'alice': 'secret'}, auth_required=True, "
        "size_limit=1000, smtputf8=False, require_starttls=True (smtptrio.testing.ServerConfig)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    """Add the SMTP transcript of the servers a failing test used to its report."""
    outcome = yield
    report = outcome.get_result()
    servers = item.stash.get(_SERVERS, None)
    if not report.failed or not servers or "smtptrio.testing" not in sys.modules:
        return
    shown = item.stash.setdefault(_SHOWN, set())
    for number, server in enumerate(servers, start=1):
        if id(server) in shown:
            continue
        text = server.transcript.text()
        if not text:
            continue
        shown.add(id(server))
        title = "smtp transcript" if len(servers) == 1 else f"smtp transcript ({number})"
        report.sections.append((title, text))


# ---------------------------------------------------------------------------- configuration


def _from_env() -> ServerConfig:
    from smtptrio.testing import ServerConfig

    try:
        return ServerConfig.from_env()
    except ValueError as exc:
        pytest.fail(f"smtptrio test server: {exc}", pytrace=False)


@pytest.fixture
def smtp_server_config() -> ServerConfig:
    """The base configuration of ``smtp_server`` and ``trio_smtp_server``.

    The defaults with smtpdfix's ``SMTPD_*`` environment variables applied. Override it in a
    ``conftest.py`` to change the defaults of a directory::

        @pytest.fixture
        def smtp_server_config(smtp_server_config):
            return smtp_server_config.replace(tls="starttls")
    """
    return _from_env()


@pytest.fixture(scope="session")
def smtp_server_session_config() -> ServerConfig:
    """The configuration of ``smtp_server_session`` (session-scoped; override it to change it)."""
    return _from_env()


def _configure(request: pytest.FixtureRequest, base: ServerConfig) -> ServerConfig:
    """``base`` with the test's markers, then the indirect parameter, applied."""
    from smtptrio.testing import ServerConfig

    config = base
    markers = list(request.node.iter_markers(_MARKER))
    for marker in reversed(markers):  # farthest (module) first, the function's own last
        if marker.args:
            pytest.fail(
                f"@pytest.mark.{_MARKER} takes keyword arguments only, got {marker.args!r}",
                pytrace=False,
            )
        config = _apply(config, marker.kwargs, f"@pytest.mark.{_MARKER}")
    param = getattr(request, "param", None)
    if isinstance(param, ServerConfig):
        config = param
    elif isinstance(param, Mapping):
        config = _apply(config, dict(param), f"the {request.fixturename} parameter")
    elif param is None or isinstance(param, str):
        if hasattr(request, "param"):
            config = _apply(config, {"tls": param}, f"the {request.fixturename} parameter")
    else:
        pytest.fail(
            f"{request.fixturename} parameters must be a dict of options, a ServerConfig, "
            f"or a TLS mode (None, 'starttls', 'smtps'), got {param!r}",
            pytrace=False,
        )
    return config


def _apply(config: ServerConfig, changes: dict[str, Any], where: str) -> ServerConfig:
    try:
        return config.replace(**changes)
    except (TypeError, ValueError) as exc:
        pytest.fail(f"{where}: {exc}", pytrace=False)


def _register(request: pytest.FixtureRequest, server: object) -> None:
    request.node.stash.setdefault(_SERVERS, []).append(server)


def _start(server: ThreadedTestServer) -> None:
    from smtptrio.testing import TLSSetupError

    try:
        server.start()
    except TLSSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def smtp_server(
    request: pytest.FixtureRequest, smtp_server_config: ServerConfig
) -> Iterator[ThreadedTestServer]:
    """A threaded SMTP server on a free port for this test; its messages are ``.messages``.

    Configure it with ``@pytest.mark.smtp_server(tls="starttls", users={...}, ...)`` or by
    indirect parametrisation (a dict of options, or just the TLS mode)::

        @pytest.mark.parametrize("smtp_server", [None, "starttls", "smtps"], indirect=True)
    """
    from smtptrio.testing import ThreadedTestServer

    server = ThreadedTestServer(_configure(request, smtp_server_config))
    _start(server)
    try:
        _register(request, server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _smtptrio_session_server(
    smtp_server_session_config: ServerConfig,
) -> Iterator[ThreadedTestServer]:
    from smtptrio.testing import ThreadedTestServer

    server = ThreadedTestServer(smtp_server_session_config)
    _start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server_session(
    request: pytest.FixtureRequest, _smtptrio_session_server: ThreadedTestServer
) -> Iterator[ThreadedTestServer]:
    """One threaded SMTP server shared by the whole session (per xdist worker).

    Each test starts with no messages, no faults and an empty transcript. It is configured by
    the session-scoped ``smtp_server_session_config`` fixture, not by markers.
    """
    if request.node.get_closest_marker(_MARKER) is not None and not (
        {"smtp_server", "trio_smtp_server"} & set(request.fixturenames)
    ):
        pytest.fail(
            f"@pytest.mark.{_MARKER} cannot configure smtp_server_session (it is shared by "
            "every test); override the smtp_server_session_config fixture, or use smtp_server",
            pytrace=False,
        )
    server = _smtptrio_session_server
    server.reset()
    try:
        _register(request, server)
        yield server
    finally:
        server.faults.clear()


@pytest.fixture
async def trio_smtp_server(
    request: pytest.FixtureRequest, smtp_server_config: ServerConfig
) -> AsyncIterator[TrioTestServer]:
    """An SMTP server running in this test's trio run, no threads; ``await
    server.wait_for_messages(n)``, ``server.client()`` for a scripted client.

    Needs a trio test: pytest-trio (``trio_mode`` or ``@pytest.mark.trio``) or anyio's plugin
    with ``anyio_backend = "trio"``. Configured like ``smtp_server``.
    """
    from smtptrio.testing import TLSSetupError, open_trio_test_server

    config = _configure(request, smtp_server_config)
    try:
        async with open_trio_test_server(config) as server:
            _register(request, server)
            yield server
    except TLSSetupError as exc:  # raised before the server starts, never by the test
        pytest.fail(str(exc), pytrace=False)
