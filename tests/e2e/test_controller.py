"""The threaded Controller and UnixSocketController, driven from plain synchronous code."""

from __future__ import annotations

import errno
import smtplib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme

import smtptrio
from smtptrio import Envelope, Session
from smtptrio.controller import Controller, UnixSocketController

MESSAGE = "From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
TIMEOUT = 10


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.peers: list[Any] = []

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        return "250 OK"


def send(port: int, host: str = "127.0.0.1") -> None:
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=TIMEOUT) as client:
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)


def read_reply(conn: socket.socket) -> bytes:
    """One whole (possibly multi-line) reply, read byte-exactly up to its last line."""
    data = b""
    for _ in range(1000):
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data
    raise AssertionError("no complete reply")


def test_top_level_names_are_the_controller_classes() -> None:
    assert smtptrio.Controller is Controller
    assert smtptrio.UnixSocketController is UnixSocketController


def test_port_zero_is_replaced_by_the_bound_port_and_mail_arrives() -> None:
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        assert controller.port != 0
        assert controller.server is not None and controller.server.port == controller.port
        send(controller.port)
    finally:
        controller.stop()
    assert [e.rcpt_tos for e in handler.envelopes] == [["b@example.org"]]
    assert handler.envelopes[0].content == MESSAGE.encode()
    assert handler.peers[0][0] == "127.0.0.1"
    assert controller.server is None


def test_default_bind_address_is_numeric_loopback() -> None:
    controller = Controller(Recorder(), port=0)
    assert controller.hostname in ("127.0.0.1", "::1")
    with controller:
        send(controller.port, controller.hostname)


def test_context_manager_starts_and_stops() -> None:
    handler = Recorder()
    with Controller(handler, hostname="127.0.0.1", port=0) as controller:
        port = controller.port
        send(port)
    assert len(handler.envelopes) == 1
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
        pass


def test_attributes_follow_aiosmtpd() -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=0, ssl_context=ctx)
    assert controller.handler is handler
    assert controller.hostname == "127.0.0.1"
    assert controller.port == 0
    assert controller.ssl_context is ctx
    assert controller.SMTP_kwargs == {"enable_SMTPUTF8": True}


def test_smtputf8_defaults_on_and_server_hostname_names_the_server() -> None:
    named = Controller(Recorder(), hostname="127.0.0.1", port=0, server_hostname="mx.test")
    with named, socket.create_connection(("127.0.0.1", named.port), timeout=TIMEOUT) as conn:
        greeting = read_reply(conn)
        conn.sendall(b"EHLO client.example\r\n")
        ehlo = read_reply(conn)
    assert greeting.startswith(b"220 mx.test")
    assert b"SMTPUTF8" in ehlo
    plain = Controller(Recorder(), hostname="127.0.0.1", port=0, enable_SMTPUTF8=False)
    with plain, socket.create_connection(("127.0.0.1", plain.port), timeout=TIMEOUT) as conn:
        read_reply(conn)
        conn.sendall(b"EHLO client.example\r\n")
        assert b"SMTPUTF8" not in read_reply(conn)


def test_smtp_parameters_and_server_kwargs_reach_the_server() -> None:
    with pytest.warns(DeprecationWarning, match="server_kwargs"):
        controller = Controller(
            Recorder(), hostname="127.0.0.1", port=0, server_kwargs={"data_size_limit": 1234}
        )
    with controller, socket.create_connection(("127.0.0.1", controller.port), timeout=10) as conn:
        read_reply(conn)
        conn.sendall(b"EHLO client.example\r\n")
        assert b"SIZE 1234" in read_reply(conn)


def test_loop_argument_is_ignored_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="loop"):
        controller = Controller(Recorder(), "127.0.0.1", 0, object())
    with controller:
        send(controller.port)


def test_factory_can_be_overridden() -> None:
    class Small(Controller):
        def factory(self) -> dict[str, Any]:
            return {**super().factory(), "data_size_limit": 100}

    controller = Small(Recorder(), hostname="127.0.0.1", port=0)
    with (
        controller,
        smtplib.SMTP("127.0.0.1", controller.port, timeout=TIMEOUT) as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("a@example.org", ["b@example.org"], "x" * 200)
    assert refused.value.smtp_code == 552


def test_implicit_tls_with_ssl_context() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=0, ssl_context=server_ctx)
    # "localhost" so that the certificate matches; smtplib falls back from ::1 to IPv4.
    with (
        controller,
        smtplib.SMTP_SSL("localhost", controller.port, context=client_ctx, timeout=10) as client,
    ):
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert len(handler.envelopes) == 1


def test_stop_is_idempotent_and_fine_before_start() -> None:
    controller = Controller(Recorder(), hostname="127.0.0.1", port=0)
    controller.stop()
    controller.stop(no_assert=True)
    controller.start()
    controller.stop()
    controller.stop()


def test_start_twice_is_refused() -> None:
    with Controller(Recorder(), hostname="127.0.0.1", port=0) as controller:
        with pytest.raises(RuntimeError, match="already running"):
            controller.start()
        send(controller.port)


def test_restart_after_stop_serves_again() -> None:
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=0)
    for _ in range(2):
        with controller:
            send(controller.port)
    assert len(handler.envelopes) == 2


def test_port_in_use_is_raised_in_the_callers_thread() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        controller = Controller(Recorder(), hostname="127.0.0.1", port=port)
        with pytest.raises(OSError) as caught:
            controller.start()
        assert caught.value.errno == errno.EADDRINUSE
        controller.stop()  # safe after a failed start
    assert controller.server is None


@pytest.mark.parametrize(
    ("options", "error"),
    [({"timeout": -1}, ValueError), ({"no_such_option": 1}, TypeError)],
)
def test_bad_option_is_raised_from_start(options: dict[str, Any], error: type[Exception]) -> None:
    controller = Controller(Recorder(), hostname="127.0.0.1", port=0, **options)
    caller = threading.current_thread()
    with pytest.raises(error) as caught:
        controller.start()
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert threading.current_thread() is caller
    controller.stop()


def test_ready_timeout_raises_timeout_error_and_cleans_up() -> None:
    # Starting includes resolving the greeting name in a worker thread: never instantaneous.
    controller = Controller(Recorder(), hostname="127.0.0.1", port=0, ready_timeout=0)
    with pytest.raises(TimeoutError, match="ready_timeout"):
        controller.start()
    assert controller.server is None
    controller.stop()
    controller.ready_timeout = 5
    with controller:  # nothing was left behind that blocks a new start
        send(controller.port)


def test_stop_sends_421_to_idle_sessions() -> None:
    controller = Controller(Recorder(), hostname="127.0.0.1", port=0)
    controller.start()
    try:
        conn = socket.create_connection(("127.0.0.1", controller.port), timeout=TIMEOUT)
        assert read_reply(conn).startswith(b"220")
        conn.sendall(b"EHLO client.example\r\n")
        assert read_reply(conn).startswith(b"250")
    finally:
        controller.stop(grace_period=5)
    with conn:
        assert read_reply(conn).startswith(b"421 4.3.2")
        assert conn.recv(100) == b""


# ---------------------------------------------------------------------------------- unix socket


def short_socket_path(tmp_path: Path) -> Path:
    # sun_path holds ~107 bytes; pytest's tmp_path can be longer than that.
    path = tmp_path / "s.sock"
    if len(str(path)) < 100:
        return path
    pytest.skip("temporary directory path too long for a unix socket")


def unix_client(path: Path) -> smtplib.SMTP:
    """smtplib speaking over an already connected unix socket (it cannot dial one itself)."""
    client = smtplib.SMTP(local_hostname="client.example", timeout=TIMEOUT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    client.sock = sock
    code, _ = client.getreply()
    assert code == 220
    return client


def test_unix_socket_controller_serves_and_removes_its_socket(tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    handler = Recorder()
    with UnixSocketController(handler, unix_socket=path) as controller:
        assert path.is_socket()
        assert controller.unix_socket == path
        with unix_client(path) as client:
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert handler.envelopes[0].content == MESSAGE.encode()
    assert isinstance(handler.peers[0], str)
    assert not path.exists()


def test_unix_socket_controller_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, as after a crash
    with UnixSocketController(Recorder(), str(path)), unix_client(path) as client:
        assert client.noop()[0] == 250


def test_unix_socket_controller_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    path.write_text("precious")
    controller = UnixSocketController(Recorder(), path)
    with pytest.raises(OSError):
        controller.start()
    controller.stop()
    assert path.read_text() == "precious"


def test_unix_socket_controller_bad_option_raises_and_leaves_no_file(tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    controller = UnixSocketController(Recorder(), path, timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        controller.start()
    assert not path.exists()
    controller.stop()
