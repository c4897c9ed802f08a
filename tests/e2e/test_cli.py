"""``python -m smtptrio`` as a subprocess: serving, signals, workers, AUTH, and user errors."""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import trustme

from smtptrio import cli
from smtptrio.__about__ import __version__
from smtptrio.auth_file import verify_password

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20
MESSAGE = "From: a@example.org\r\nSubject: hi\r\n\r\nhello from the test\r\n"
STARTED = re.compile(r"listening on \[?([^\s\]]+?)\]?:(\d+)[ ,]")


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtptrio", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment(),
        cwd=REPO,
        check=False,
    )


class Server:
    """A CLI process whose output is read line by line on threads, so waits stay bounded."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtptrio", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            cwd=REPO,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.queues: dict[str, queue.Queue[str | None]] = {
            "stdout": queue.Queue(),
            "stderr": queue.Queue(),
        }
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self.readers:
            reader.start()
        self.host = ""
        self.port = 0

    def _read(self, name: str, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines[name].append(line)
            self.queues[name].put(line)
        self.queues[name].put(None)

    def wait_for(self, pattern: str | re.Pattern[str], stream: str = "stderr") -> re.Match[str]:
        for _ in range(10_000):
            try:
                line = self.queues[stream].get(timeout=TIMEOUT)
            except queue.Empty:
                break
            if line is None:
                break
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"{pattern!r} never appeared on {stream}: {self.text('stderr')}")

    def started(self) -> Server:
        found = self.wait_for(STARTED)
        self.host, self.port = found[1], int(found[2])
        return self

    def text(self, stream: str) -> str:
        return "".join(self.lines[stream])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(timeout=TIMEOUT)
        return code

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def serving(*args: str) -> Server:
    return Server("-n", "-l", "127.0.0.1:0", *args).started()


def send(port: int, **login: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=TIMEOUT) as c:
        if login:
            c.login(login["user"], login["password"])
        c.sendmail("a@example.org", ["b@example.org"], MESSAGE)


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smtptrio: error: ")
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path, ca


# ----------------------------------------------------------------------------- basic behaviour


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(flag: str) -> None:
    result = run(flag)
    assert result.returncode == 0
    assert result.stdout == f"smtptrio {__version__}\n"


def test_help_lists_the_options_and_the_second_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for option in ("--listen", "--class", "--auth-file", "--workers", "hash-password"):
        assert option in result.stdout


def test_default_handler_prints_each_message_and_sigterm_exits_0() -> None:
    with serving() as server:
        startup = [ln for ln in server.lines["stderr"] if "listening on" in ln]
        assert startup == [
            f"smtptrio {__version__} listening on 127.0.0.1:{server.port} (handler Debugging)\n"
        ]
        send(server.port)
        # Printed as it arrives, not only when the process ends.
        server.wait_for("hello from the test", "stdout")
        assert server.stop() == 0
    out = server.text("stdout")
    assert "Subject: hi" in out and "X-Peer: 127.0.0.1" in out
    assert "Traceback" not in server.text("stderr")


def test_sigint_is_a_graceful_stop_too() -> None:
    with serving("-c", "smtptrio.handlers.Sink") as server:
        send(server.port)
        assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.text("stderr")


def test_explicit_serve_subcommand_and_handler_arguments() -> None:
    with Server(
        "serve", "-n", "-l", "127.0.0.1:0", "-c", "smtptrio.handlers.Debugging", "stderr"
    ).started() as server:
        send(server.port)
        server.wait_for("hello from the test")
        assert server.stop() == 0
    assert server.text("stdout") == ""


def test_ipv6_listen_address_in_brackets() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with Server("-n", "-l", "[::1]:0").started() as server:
        assert server.host == "::1"
        with smtplib.SMTP("::1", server.port, timeout=TIMEOUT) as client:
            assert client.noop()[0] == 250
        assert server.stop() == 0


def test_idle_session_gets_421_on_sigterm() -> None:
    with serving() as server, socket.create_connection(("127.0.0.1", server.port), 10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220")
        server.proc.send_signal(signal.SIGTERM)
        assert reader.readline().startswith(b"421 4.3.2")
        assert server.wait() == 0


def test_second_signal_forces_the_exit() -> None:
    with serving("-d", "--grace-period", "600") as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
        try:
            client.ehlo("client.example")
            assert client.mail("a@example.org")[0] == 250  # a transaction keeps it busy
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for("shutting down")
            assert server.stop() == 128 + signal.SIGTERM
        finally:
            client.close()
    assert "Traceback" not in server.text("stderr")


def test_options_reach_the_server() -> None:
    with serving(
        "-s",
        "100",
        "-u",
        "--hostname",
        "mx.test",
        "--max-recipients",
        "100",
        "--timeout",
        "50",
        "--max-connections",
        "3",
        "--max-connections-per-ip",
        "0",
    ) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            code, banner = client.ehlo("client.example")
            assert code == 250 and banner.startswith(b"mx.test")
            assert client.has_extn("smtputf8") and client.esmtp_features["size"] == "100"
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("a@example.org", ["b@example.org"], "x" * 200)
        assert server.stop() == 0


def test_size_zero_means_unlimited() -> None:
    with serving("-s", "0", "-c", "smtptrio.handlers.Sink") as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert not client.has_extn("size")
        assert server.stop() == 0


def test_json_log_lines_carry_the_extra_fields() -> None:
    with serving("-d", "--log-format", "json") as server:
        send(server.port)
        assert server.stop() == 0
    records = [json.loads(line) for line in server.lines["stderr"] if line.startswith("{")]
    assert records, server.text("stderr")
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    shutdown = [
        r for r in records if r["logger"] == "smtptrio.cli" and r["message"] == "shutting down"
    ]
    assert shutdown and shutdown[0]["reason"] == "SIGTERM" and shutdown[0]["grace_period"] == 30
    assert any("session_id" in r for r in records)
    # Everything on stderr but the start-up line is JSON.
    others = [ln for ln in server.lines["stderr"] if not ln.startswith("{")]
    assert len(others) == 1 and "listening on" in others[0]


# ----------------------------------------------------------------------------------- TLS, AUTH


def test_starttls_with_certificate_and_key(tls_files: tuple[Path, Path, trustme.CA]) -> None:
    cert, key, ca = tls_files
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with serving("-t", str(cert), "-k", str(key)) as server:
        assert "STARTTLS required" in server.text("stderr")
        with smtplib.SMTP("localhost", server.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert client.mail("a@example.org")[0] == 530  # require_starttls by default
            client.rset()
            client.starttls(context=context)
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert server.stop() == 0
    assert "hello from the test" in server.text("stdout")


def test_no_requiretls_allows_plain_mail(tls_files: tuple[Path, Path, trustme.CA]) -> None:
    cert, key, _ = tls_files
    with serving("--tlscert", str(cert), "--tlskey", str(key), "--no-requiretls") as server:
        send(server.port)
        assert server.stop() == 0


def test_smtps_serves_implicit_tls(tls_files: tuple[Path, Path, trustme.CA]) -> None:
    cert, key, ca = tls_files
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with serving("-t", str(cert), "-k", str(key), "--smtps") as server:
        with smtplib.SMTP_SSL("localhost", server.port, context=context, timeout=10) as client:
            assert not client.ehlo("client.example")[1].count(b"STARTTLS")
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert server.stop() == 0


def test_hash_password_prints_a_line_for_the_auth_file() -> None:
    result = run("hash-password", "alice", stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    user, _, encoded = result.stdout.strip().partition(":")
    assert user == "alice"
    assert verify_password("correct horse", encoded)
    assert "correct horse" not in result.stdout + result.stderr


def test_hash_password_without_user_prints_only_the_hash() -> None:
    result = run("hash-password", stdin="pw")
    assert result.returncode == 0
    assert verify_password("pw", result.stdout.strip())


@pytest.mark.parametrize(("args", "stdin"), [(["alice"], "\n"), (["a:b"], "pw\n"), ([""], "x")])
def test_hash_password_refuses_bad_input(args: list[str], stdin: str) -> None:
    assert_one_error_line(run("hash-password", *args, stdin=stdin))


def make_auth_file(tmp_path: Path) -> Path:
    result = run("hash-password", "alice", stdin="s3cret\n")
    assert result.returncode == 0
    path = tmp_path / "users"
    path.write_text(f"# test users\n{result.stdout}")
    return path


def test_auth_file_logins_over_starttls(
    tmp_path: Path, tls_files: tuple[Path, Path, trustme.CA]
) -> None:
    cert, key, ca = tls_files
    context = ssl.create_default_context()
    ca.configure_trust(context)
    users = make_auth_file(tmp_path)
    with serving(
        "-t", str(cert), "-k", str(key), "--auth-file", str(users), "--auth-required"
    ) as server:
        with smtplib.SMTP("localhost", server.port, timeout=TIMEOUT) as client:
            client.starttls(context=context)
            client.ehlo("client.example")
            assert client.mail("a@example.org")[0] == 530  # auth_required
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("alice", "wrong")
            assert refused.value.smtp_code == 535
            assert client.login("alice", "s3cret")[0] == 235
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert server.stop() == 0
    assert "hello from the test" in server.text("stdout")
    assert "s3cret" not in server.text("stderr")


def test_auth_file_without_tls_when_allowed(tmp_path: Path) -> None:
    users = make_auth_file(tmp_path)
    with serving("--auth-file", str(users), "--no-auth-require-tls", "-d") as server:
        send(server.port, user="alice", password="s3cret")
        with (
            smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client,
            pytest.raises(smtplib.SMTPAuthenticationError),
        ):
            client.login("mallory", "s3cret")
        assert server.stop() == 0
    assert "s3cret" not in server.text("stderr")


# -------------------------------------------------------------------------------------- workers


def test_workers_share_the_port_and_stop_on_sigterm() -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT here")
    with serving("--workers", "2") as server:
        assert "2 workers" in server.text("stderr")
        for _ in range(4):
            send(server.port)
        for _ in range(4):
            server.wait_for("END MESSAGE", "stdout")
        assert server.stop() == 0
    assert server.text("stdout").count("hello from the test") == 4
    assert "Traceback" not in server.text("stderr")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_dead_worker_is_restarted() -> None:
    with serving("--workers", "2", "-c", "smtptrio.handlers.Sink") as server:
        workers = children_of(server.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        server.wait_for("worker exited; restarting it")
        for _ in range(6):
            send(server.port)
        assert len(children_of(server.proc.pid)) == 2
        assert server.stop() == 0


def test_worker_start_up_error_is_one_line() -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT here")
    assert_one_error_line(
        run("-n", "-l", "127.0.0.1:0", "--workers", "2", "--timeout", "-1"), "timeout"
    )


# ------------------------------------------------------------------------------------- setuid


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_switches_to_nobody_after_binding() -> None:
    with Server("-l", "127.0.0.1:0", "-c", "smtptrio.handlers.Sink").started() as server:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        import pwd

        assert set(uid_line.split()[1:]) == {str(pwd.getpwnam("nobody").pw_uid)}
        send(server.port)
        assert server.stop() == 0


# -------------------------------------------------------------------------------- user errors


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_port_in_use_is_one_line(busy_port: int) -> None:
    result = run("-n", "-l", f"127.0.0.1:{busy_port}")
    assert_one_error_line(result, "address already in use", str(busy_port))


def test_port_in_use_with_workers_is_one_line(busy_port: int) -> None:
    result = run("-n", "-l", f"127.0.0.1:{busy_port}", "--workers", "2")
    assert_one_error_line(result, "address already in use")


ERRORS = [
    (["--timeout", "-1"], "argument --timeout: timeout must be > 0"),
    (["--size", "abc"], "--size"),
    (["--size", "-5"], "argument -s/--size: data_size_limit"),
    (["--max-recipients", "5"], "--max-recipients"),
    (["--max-connections", "x"], "--max-connections"),
    (["--workers", "0"], "--workers"),
    (["--grace-period", "-1"], "--grace-period"),
    (["--log-format", "xml"], "--log-format"),
    (["--bogus"], "--bogus"),
    (["-l", "127.0.0.1:port"], "port"),
    (["-l", "127.0.0.1:70000"], "70000"),
    (["-l", "[::1"], "--listen"),
    (["-l", "::1:25"], "brackets"),
    (["-c", "no_such_module.Handler"], "no_such_module"),
    (["-c", "smtptrio.handlers.NoSuchHandler"], "NoSuchHandler"),
    (["-c", "smtptrio.handlers.log"], "not a class"),
    (["-c", "smtptrio.handlers"], "is a module"),
    (["-c", "Debugging"], "dotted"),
    (["-c", "collections.OrderedDict", "arg"], "takes no arguments"),
    (["-c", "smtptrio.handlers.Sink", "arg"], "Sink"),
    (["-c", "smtptrio.handlers.Mailbox"], "Mailbox"),
    (["-t", "cert.pem"], "--tlskey"),
    (["--smtps"], "--smtps"),
    (["-t", "/nonexistent/cert.pem", "-k", "/nonexistent/key.pem"], "/nonexistent/cert.pem"),
    (["--auth-file", "/nonexistent/users"], "/nonexistent/users"),
    (["--auth-required"], "--auth-file"),
]


@pytest.mark.parametrize(("args", "words"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_user_errors_are_one_line_and_status_2(args: list[str], words: str) -> None:
    assert_one_error_line(run("-n", "-l", "127.0.0.1:0", *args), words)


def test_invalid_certificate_is_one_line(tmp_path: Path, tls_files: Any) -> None:
    cert, key, _ = tls_files
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert_one_error_line(run("-n", "-t", str(junk), "-k", str(key)), str(junk))
    assert_one_error_line(run("-n", "-t", str(cert), "-k", str(junk)), str(junk))
    other = trustme.CA().issue_cert("other")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    assert_one_error_line(run("-n", "-t", str(cert), "-k", str(other_key)), "does not belong")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_unreadable_key_is_one_line(tls_files: Any) -> None:
    cert, key, _ = tls_files
    key.chmod(0)
    assert_one_error_line(run("-n", "-t", str(cert), "-k", str(key)), "Permission denied")


def test_plaintext_auth_file_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:hunter2\n")
    line = assert_one_error_line(run("-n", "--auth-file", str(users)), "line 1", "not hashed")
    assert "hunter2" not in line


# ------------------------------------------------------------------------------- in-process


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    ours = logging.getLogger("smtptrio")
    saved = (root.handlers[:], root.level, ours.level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        ours.setLevel(saved[2])
        logging.captureWarnings(False)


def test_main_returns_the_status_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"smtptrio {__version__}\n"
    assert cli.main(["--size", "x"]) == 2


@pytest.mark.usefixtures("restore_logging")
def test_permission_denied_on_bind_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root may bind any port, so the kernel's EACCES is simulated at the server's entry point.
    import smtptrio.server.serve

    async def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(smtptrio.server.serve, "serve", refuse)
    assert cli.main(["-n", "-l", "127.0.0.1:25", "-c", "smtptrio.handlers.Sink"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "smtptrio: error: cannot listen on 127.0.0.1:25: permission denied (ports below 1024 "
        "need root or CAP_NET_BIND_SERVICE)"
    ]


@pytest.mark.usefixtures("restore_logging")
def test_failed_switch_to_nobody_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    # Pretend to be root, and make sure nothing can really change this process's identity.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(os, name, refuse)
    assert cli.main(["-l", "127.0.0.1:0", "-c", "smtptrio.handlers.Sink"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "smtptrio: error: cannot switch to user 'nobody' (Operation not permitted); "
        "use -n to keep running as root"
    ]


def proxied_dialogue(port: int) -> bytes:
    """Send a PROXY v1 header, then an SMTP session; everything the server said."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nQUIT\r\n")
        received = b""
        for _ in range(100):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


def test_proxy_protocol_flag_accepts_headers_and_serves_the_session() -> None:
    with serving("--proxy-protocol", "5") as server:
        said = proxied_dialogue(server.port)
        assert said.startswith(b"220 ") and b"\r\n221 " in said
        assert server.stop() == 0


def test_proxy_from_refuses_headers_from_other_addresses() -> None:
    with serving("--proxy-protocol", "5", "--proxy-from", "10.0.0.0/8") as server:
        assert proxied_dialogue(server.port) == b""  # closed without a word
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--proxy-from", "10.0.0.0/8"], ["--proxy-from", "--proxy-protocol"]),
        (["--proxy-protocol", "5", "--proxy-from", "not-a-net"], ["--proxy-from"]),
        (["--proxy-protocol", "0"], ["proxy"]),
    ],
)
def test_proxy_flag_mistakes_are_one_line_errors(args: list[str], words: list[str]) -> None:
    result = run("-n", "-l", "127.0.0.1:0", *args)
    assert result.returncode == 2
    assert_one_error_line(result, *words)
