"""Options: every bad value raises at construction, naming the option; command_call_limit forms.

A bad option raises from ``build_options`` and, before anything is served, out of
``nursery.start(serve, ...)`` / ``nursery.start(serve_listeners, ...)`` (COMPAT.md section 4).
Unknown names and wrong types raise TypeError, out-of-range values ValueError.
"""

from __future__ import annotations

import re
import ssl
from functools import partial
from typing import Any

import pytest
import trio
from helpers import MemoryListener, Recorder, running_server

import smtptrio
from smtptrio import OptionError, Options
from smtptrio.server.options import build_options

BAD_TYPES: list[tuple[str, Any]] = [
    ("data_size_limit", "1000"),
    ("data_size_limit", 1.5),
    ("data_size_limit", True),
    ("timeout", "300"),
    ("timeout", True),
    ("tls_handshake_timeout", "30"),
    ("hook_timeout", "10"),
    ("proxy_protocol_timeout", "5"),
    ("command_size_limit", None),
    ("command_size_limit", 512.0),
    ("line_length_limit", "1001"),
    ("local_part_limit", None),
    ("max_recipients", 1000.0),
    ("unrecognized_command_limit", "5"),
    ("auth_failure_limit", True),
    ("error_limit", "50"),
    ("max_connections", "512"),
    ("max_connections_per_ip", 1.0),
    ("min_data_rate", "500"),
    ("tls_context", "not a context"),
    ("ssl_context", object()),
    ("authenticator", 42),
    ("command_call_limit", "5"),
    ("command_call_limit", 3.5),
    ("command_call_limit", True),
    ("command_call_limit", {"MAIL": "5"}),
    ("command_call_limit", {"MAIL": True}),
    ("command_call_limit", {1: 5}),
    ("command_call_limit", [("MAIL", 5)]),
    ("auth_exclude_mechanism", "LOGIN"),
    ("auth_exclude_mechanism", 5),
    ("hostname", 42),
    ("ident", 42),
    ("connection_limit_exempt", 5),
    ("connection_limit_exempt", "127.0.0.1"),
    ("enable_SMTPUTF8", "yes"),
    ("decode_data", "no"),
    ("require_starttls", "false"),
    ("auth_required", "false"),
    ("auth_require_tls", "true"),
    ("enhanced_status_codes", "off"),
]

BAD_VALUES: list[tuple[str, Any]] = [
    ("data_size_limit", -1),
    ("timeout", 0),
    ("timeout", -5),
    ("tls_handshake_timeout", 0),
    ("hook_timeout", 0),
    ("hook_timeout", -1),
    ("proxy_protocol_timeout", 0),
    ("proxy_protocol_timeout", -1),
    ("command_size_limit", 10),
    ("line_length_limit", 10),
    ("local_part_limit", -1),
    ("max_recipients", 99),
    ("max_recipients", 0),
    ("unrecognized_command_limit", 0),
    ("auth_failure_limit", 0),
    ("error_limit", 0),
    ("max_connections", 0),
    ("max_connections_per_ip", 0),
    ("min_data_rate", -1),
    ("bare_newline", "strip"),
    ("hostname", ""),
    ("asyncio_bridge", True),
    ("command_call_limit", 0),
    ("command_call_limit", -1),
    ("command_call_limit", {"MAIL": 0}),
]


def _ids(cases: list[tuple[str, Any]]) -> list[str]:
    """Stable ids (no object addresses), so pytest-xdist workers agree on the test list."""

    def show(value: Any) -> str:
        if value is None or isinstance(value, str | int | float | bool | dict | list):
            return repr(value)
        return type(value).__name__

    return [f"{name}={show(value)}"[:40] for name, value in cases]


def _raises(exc: type[Exception], name: str) -> Any:
    return pytest.raises(exc, match=re.escape(name))


# ---------------------------------------------------------------------------- build_options


def test_defaults_follow_compat_section_4() -> None:
    opts = build_options({})
    assert opts.data_size_limit == 33554432
    assert opts.enable_SMTPUTF8 is False and opts.decode_data is False
    assert opts.hostname is None
    assert opts.ident == f"smtptrio {smtptrio.__version__}"
    assert opts.tls_context is None and opts.require_starttls is False
    assert opts.timeout == 300
    assert opts.auth_required is False and opts.auth_require_tls is True
    assert opts.auth_callback is None and opts.authenticator is None
    assert dict(opts.command_call_limit) == {}
    assert opts.proxy_protocol_timeout is None
    assert opts.command_size_limit == 512 and opts.line_length_limit == 1001
    assert opts.local_part_limit == 0 and opts.bare_newline == "keep"
    assert opts.enhanced_status_codes is True
    assert opts.max_recipients == 1000 and opts.unrecognized_command_limit == 5
    assert opts.auth_failure_limit == 3
    assert opts.max_connections == 512 and opts.max_connections_per_ip == 50
    assert opts.connection_limit_exempt == frozenset({"127.0.0.1", "::1"})
    assert opts.asyncio_bridge is False


def test_unknown_option_raises_type_error_naming_it() -> None:
    with _raises(TypeError, "no_such_option"):
        build_options({"no_such_option": 1})


@pytest.mark.parametrize(("name", "value"), BAD_TYPES, ids=_ids(BAD_TYPES))
def test_option_of_the_wrong_type_raises_type_error_naming_it(name: str, value: Any) -> None:
    with _raises(TypeError, name):
        build_options({name: value})


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=_ids(BAD_VALUES))
def test_option_out_of_range_raises_value_error_naming_it(name: str, value: Any) -> None:
    with _raises(ValueError, name):
        build_options({name: value})


def test_option_error_is_a_value_error() -> None:
    assert issubclass(OptionError, ValueError)
    with pytest.raises(OptionError):
        build_options({"timeout": 0})


def test_auth_callback_not_callable_raises_type_error() -> None:
    with pytest.warns(DeprecationWarning), _raises(TypeError, "auth_callback"):
        build_options({"auth_callback": "not callable"})


@pytest.mark.parametrize(("name", "value"), [("data_size_limit", 0), ("data_size_limit", None)])
def test_zero_or_none_data_size_limit_means_unlimited(name: str, value: Any) -> None:
    assert build_options({name: value}).data_limit is None


def test_auth_exclude_mechanism_is_upper_cased_into_a_frozenset() -> None:
    opts = build_options({"auth_exclude_mechanism": ["login", "Cram-MD5"]})
    assert opts.auth_exclude_mechanism == frozenset({"LOGIN", "CRAM-MD5"})


def test_connection_limit_exempt_accepts_any_iterable_of_addresses() -> None:
    opts = build_options({"connection_limit_exempt": ["10.0.0.1", "10.0.0.2"]})
    assert opts.connection_limit_exempt == frozenset({"10.0.0.1", "10.0.0.2"})


def test_options_are_frozen() -> None:
    opts = build_options({})
    with pytest.raises(AttributeError):
        opts.timeout = 1  # type: ignore[misc]


def test_loop_argument_is_accepted_ignored_and_warned_about() -> None:
    with pytest.deprecated_call():
        opts = build_options({"loop": object()})
    assert isinstance(opts, Options)


def test_auth_callback_is_deprecated() -> None:
    with pytest.deprecated_call():
        build_options({"auth_callback": lambda mechanism, login, password: True})


def test_auth_required_without_tls_requirement_warns() -> None:
    with pytest.warns(UserWarning, match="auth_require"):
        build_options({"auth_required": True, "auth_require_tls": False})


def test_tls_context_that_requires_client_certificates_warns() -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # CERT_REQUIRED, check_hostname
    with pytest.warns(UserWarning, match="tls_context"):
        build_options({"tls_context": ctx})


@pytest.mark.parametrize("value", [3.0, 5.0, 30])
def test_proxy_protocol_timeout_is_accepted_when_positive(value: float) -> None:
    assert build_options({"proxy_protocol_timeout": value}).proxy_protocol_timeout == value


def test_short_proxy_protocol_timeout_warns() -> None:
    """COMPAT 4: > 0 is required, below 3.0 warns (a slow proxy link would be cut off)."""
    with pytest.warns(UserWarning, match="proxy_protocol_timeout"):
        build_options({"proxy_protocol_timeout": 1.0})


# ---------------------------------------------------------------------------- command_call_limit


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, {}),
        (7, {"*": 7}),
        ({"mail": 3}, {"MAIL": 3, "*": 20}),
        ({"NOOP": 2, "*": 9}, {"NOOP": 2, "*": 9}),
        ({}, {"*": 20}),
    ],
)
def test_command_call_limit_forms(given: Any, expected: dict[str, int]) -> None:
    assert dict(build_options({"command_call_limit": given}).command_call_limit) == expected


async def test_command_call_limit_int_applies_to_every_verb() -> None:
    async with running_server(Recorder(), command_call_limit=3) as srv:
        client = await srv.greeted()
        for _ in range(3):
            assert (await client.cmd("NOOP")).codes == (250, "2.0.0")
        assert (await client.cmd("NOOP")).codes == (421, "4.7.0")
        await client.expect_eof()


async def test_command_call_limit_dict_limits_its_verbs_and_defaults_the_rest_to_20() -> None:
    async with running_server(Recorder(), command_call_limit={"noop": 2}) as srv:
        client = await srv.greeted()
        for _ in range(20):
            assert (await client.cmd("RSET")).codes == (250, "2.0.0")
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("NOOP")).codes == (421, "4.7.0")
        await client.expect_eof()
    async with running_server(Recorder(), command_call_limit={"noop": 2}) as srv:
        client = await srv.greeted()
        for _ in range(20):
            assert (await client.cmd("RSET")).code == 250
        assert (await client.cmd("RSET")).codes == (421, "4.7.0")


async def test_command_call_limit_star_sets_the_default() -> None:
    async with running_server(Recorder(), command_call_limit={"*": 2}) as srv:
        client = await srv.greeted()
        assert [(await client.cmd("HELP")).code for _ in range(2)] == [214, 214]
        assert (await client.cmd("HELP")).codes == (421, "4.7.0")


# ---------------------------------------------------------------------------- through serve


SERVE_CASES: list[tuple[str, Any, type[Exception]]] = [
    ("no_such_option", 1, TypeError),
    ("timeout", 0, ValueError),
    ("timeout", "300", TypeError),
    ("data_size_limit", -1, ValueError),
    ("bare_newline", "strip", ValueError),
    ("command_call_limit", "5", TypeError),
    ("tls_context", "nope", TypeError),
    ("max_connections", 0, ValueError),
]


@pytest.mark.parametrize(
    ("name", "value", "exc"), SERVE_CASES, ids=_ids([c[:2] for c in SERVE_CASES])
)
async def test_bad_option_raises_from_serve_before_started(
    name: str, value: Any, exc: type[Exception]
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with _raises(exc, name):
                await nursery.start(
                    partial(smtptrio.serve, Recorder(), host="127.0.0.1", port=0, **{name: value})
                )


@pytest.mark.parametrize(
    ("name", "value", "exc"), SERVE_CASES, ids=_ids([c[:2] for c in SERVE_CASES])
)
async def test_bad_option_raises_from_serve_listeners_before_started(
    name: str, value: Any, exc: type[Exception]
) -> None:
    listener = MemoryListener()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with _raises(exc, name):
                await nursery.start(
                    partial(smtptrio.serve_listeners, Recorder(), [listener], **{name: value})
                )


@pytest.mark.parametrize("port", [-1, 65536])
async def test_serve_port_out_of_range_raises_value_error(port: int) -> None:
    async with trio.open_nursery() as nursery:
        with _raises(ValueError, "port"):
            await nursery.start(partial(smtptrio.serve, Recorder(), host="127.0.0.1", port=port))


async def test_serve_port_of_the_wrong_type_raises_type_error() -> None:
    async with trio.open_nursery() as nursery:
        with _raises(TypeError, "port"):
            await nursery.start(partial(smtptrio.serve, Recorder(), host="127.0.0.1", port="8025"))


async def test_smtp_class_that_is_not_an_smtp_subclass_raises_type_error() -> None:
    async with trio.open_nursery() as nursery:
        with _raises(TypeError, "smtp_class"):
            await nursery.start(
                partial(smtptrio.serve_listeners, Recorder(), [MemoryListener()], smtp_class=dict)
            )


def test_smtp_constructor_validates_options_too() -> None:
    with _raises(ValueError, "timeout"):
        smtptrio.SMTP(Recorder(), timeout=0)
    with _raises(TypeError, "no_such_option"):
        smtptrio.SMTP(Recorder(), no_such_option=1)
