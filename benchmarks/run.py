#!/usr/bin/env python3
"""Benchmark smtptrio against aiosmtpd: the same load, interleaved, several rounds.

    python benchmarks/run.py [--quick] [--rounds 3] [--json out.json]

For every round, for every scenario, each server is started as a fresh process pinned to
one CPU, loaded from another CPU (Postfix's smtp-source, or the pipelining Python client
in smtpload.py), measured from /proc, and stopped. The report gives, per scenario and
metric, the median over rounds with its min..max, the ratio of the medians
(first server / second server), the spread of the per-round ratios, the target and
PASS/FAIL. See benchmarks/README.md for the method and how to read the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVERS_PY = HERE / "servers.py"
# trio-minimal is the ceiling check: a trio loop that answers from a table (servers.py).
KNOWN_SERVERS = ("smtptrio", "aiosmtpd", "trio-minimal")
SMTPLOAD_PY = HERE / "smtpload.py"
KB = 1024
MIB = 1024 * 1024
MB = 1_000_000  # payload throughput is reported in MB/s of 10^6 bytes
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0
LOAD_TIMEOUT = 300.0
IDLE_TIMEOUT = 180.0
GREETING_PROBES = 50
QUIET_WINDOW = 0.2
QUIET_THRESHOLD = 0.10
DISTURBED_CPU = 0.15
QUIET_GIVE_UP = 3  # consecutive fruitless waits before the run stops waiting
QUIET_STATE = {"timeouts": 0}
BENCH_HOSTNAME = "bench.localhost"
SMTP_SOURCE_INSTALL = (
    "smtp-source (Postfix's load generator) was not found; install it with\n"
    "    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix   # Debian/Ubuntu\n"
    "(choose 'No configuration'; the daemon need not run). Falling back to the Python\n"
    "client (smtpload.py, one command at a time, no pipelining) for those scenarios."
)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    size: int  # payload bytes per message
    clients: int  # parallel connections
    messages: int  # messages per run (full)
    quick_messages: int  # messages per run with --quick
    rcpts: int = 1
    reconnect: bool = False  # a new connection for every message
    pipelining: bool = False  # needs the pipelining Python client
    idle: int = 0  # scenario g: connections held open
    server_options: dict[str, Any] = field(default_factory=dict)

    def count(self, quick: bool) -> int:
        return self.quick_messages if quick else self.messages


# Connection limits off for every scenario (b, c and g open many connections from 127.0.0.1);
# an option this smtptrio does not have is dropped by servers.py and reported.
LIMIT_OPTIONS: dict[str, Any] = {
    "max_connections": 20000,
    "max_connections_per_ip": None,
    "connection_rate_limit": None,
}

SCENARIOS: list[Scenario] = [
    Scenario("a", "1 KB messages, 1 connection, sequential", 1 * KB, 1, 8000, 2500),
    Scenario(
        "b", "1 KB, 20 parallel clients, new connection per message", 1 * KB, 20, 8000, 2500,
        reconnect=True,
    ),
    Scenario("c", "1 KB, 100 parallel clients, many messages per connection",
             1 * KB, 100, 20000, 6000),
    Scenario("d", "10 MB messages, 4 parallel clients", 10 * MIB, 4, 40, 12),
    Scenario("e", "1 KB with 100 recipients each, 10 parallel clients",
             1 * KB, 10, 800, 250, rcpts=100),
    Scenario("f", "1 KB pipelined (PIPELINING), 10 parallel clients", 1 * KB, 10, 30000, 10000,
             pipelining=True),
    Scenario("g", "N concurrent idle connections held open", 0, 0, 0, 0, idle=10000),
]  # fmt: skip


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "higher" or "lower"
    ratio_target: float | None = None  # first/second must be >= (higher) or <= (lower) this
    abs_target: float | None = None  # the first server's own value must be >= / <= this
    abs_unit: str = ""
    ratio: bool = True  # False: a ratio of this metric means nothing (e.g. background load)


def metrics_for(s: Scenario) -> list[Metric]:
    if s.idle:
        return [
            Metric("rss_per_conn_kb", "server RSS / connection (KB)", "lower",
                   abs_target=16.0, abs_unit="KB"),
            Metric("greet_max_ms", "new-client 220 latency, max (ms)", "lower",
                   abs_target=100.0, abs_unit="ms"),
            Metric("greet_median_ms", "new-client 220 latency, median (ms)", "lower"),
            Metric("greet_base_ms", "220 latency with none held, median (ms)", "lower"),
            Metric("open_rate", "idle connections opened / s", "higher"),
        ]  # fmt: skip
    msgs_target = {"a": 3.0, "b": 2.0, "c": 3.0, "d": 15.0, "e": 4.0, "f": 4.0}.get(s.key)
    cpu_target = 1 / 3 if s.key in ("a", "b", "c") else None
    rows = [
        Metric("msgs_per_s", "messages / s", "higher", ratio_target=msgs_target),
        Metric("mb_per_s", "payload MB/s", "higher"),
        Metric("cpu_us_per_msg", "server CPU us / message", "lower", ratio_target=cpu_target),
        Metric("peak_rss_mb", "server peak RSS (MiB)", "lower",
               ratio_target=1.0 if s.key == "d" else None),
    ]  # fmt: skip
    if s.key == "d":
        rows.append(
            Metric("rss_growth_per_conn_x", "peak RSS growth / conn / msg size", "lower",
                   abs_target=2.0, abs_unit="x")
        )  # fmt: skip
    rows.append(Metric("server_cpu_util", "server CPU busy (fraction of wall)", "higher"))
    rows.append(Metric("client_cpu_util", "load generator CPU (fraction of wall)", "lower"))
    rows.append(
        Metric("foreign_cpu", "other processes' CPU during run (CPUs)", "lower", ratio=False)
    )
    return rows


# --------------------------------------------------------------------------- /proc


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB-valued lines of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait: float, threshold: float = QUIET_THRESHOLD) -> tuple[float, float]:
    """Wait (at most max_wait s) until the machine is nearly idle; return (waited, load).

    Other people's processes (test suites...) share the machine; a run that starts while
    they are busy measures them too. Load is in CPUs (1.0 = one CPU busy).
    """
    start = time.monotonic()
    load = math.nan
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(QUIET_WINDOW)  # a measuring window, not a synchronisation
        load = (machine_busy_seconds() - b0) / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if load < threshold or waited >= max_wait:
            return waited, load


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


# --------------------------------------------------------------------------- processes

LIVE: set[subprocess.Popen[bytes]] = set()


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    # A session of its own: a Ctrl-C reaches only the harness, which then stops each child.
    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
    LIVE.add(proc)
    return proc


def reap(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop proc: SIGTERM, a bounded wait, then SIGKILL."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace)
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        LIVE.discard(proc)


def reap_all() -> None:
    for proc in list(LIVE):
        try:
            reap(proc, grace=5.0)
        except Exception as exc:  # keep going: every child must be stopped
            print(f"run.py: could not stop pid {proc.pid}: {exc!r}", file=sys.stderr)


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> bytes:
    """One line from proc's stdout pipe, waiting at most timeout seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{what}: no line within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise BenchError(f"{what}: exited (status {proc.wait()}) before printing a line")
        buf += chunk
    return buf


class BenchError(Exception):
    pass


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} server exited with {self.proc.returncode}:\n{self.stderr_tail()}"
            )


def start_server(
    name: str,
    options: dict[str, Any],
    cpus: set[int],
    logdir: Path,
    tag: str,
    handler: str = "sink",
) -> ServerProcess:
    stderr_path = logdir / f"{tag}.stderr"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable, str(SERVERS_PY), name,
        "--host", "127.0.0.1", "--port", "0",
        "--options", json.dumps(options),
        "--cpu", ",".join(str(c) for c in sorted(cpus)),
        "--handler", handler,
    ]  # fmt: skip
    with open(stderr_path, "wb") as err:
        proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        line = read_line(proc, READY_TIMEOUT, f"{name} server").decode()
    except BenchError as exc:
        reap(proc)
        tail = stderr_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"{exc}\n--- {name} server stderr ---\n{tail}") from None
    first = line.splitlines()[0]
    if not first.startswith("READY "):
        reap(proc)
        raise BenchError(f"{name} server said {first!r} instead of READY")
    info = json.loads(first[len("READY ") :])
    assert proc.stdout is not None
    proc.stdout.close()
    return ServerProcess(name, proc, info, stderr_path)


# --------------------------------------------------------------------------- SMTP probes


def recv_reply(sock: socket.socket) -> bytes:
    """Read one (possibly multi-line) reply."""
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError(f"connection closed; got {buf!r}")
        buf += chunk
        lines = buf.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) < 4 or line[3:4] == b" ":
                return buf


def warm_up(port: int) -> None:
    """One complete transaction, so first-use costs (lazy imports...) hit neither number."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        steps = [
            None,
            b"EHLO warmup.bench.localhost\r\n",
            b"MAIL FROM:<warmup@bench.localhost>\r\n",
            b"RCPT TO:<warmup@bench.localhost>\r\n",
            b"DATA\r\n",
            b"Subject: warm-up\r\n\r\n" + (b"W" * 76 + b"\r\n") * 13 + b".\r\n",
            b"QUIT\r\n",
        ]
        for step in steps:
            if step:
                sock.sendall(step)
            reply = recv_reply(sock)
            if reply[:1] not in (b"2", b"3"):
                raise BenchError(f"warm-up: server answered {reply!r}")


def greeting_latency_ms(port: int) -> float:
    """Time from starting a TCP connect to having the whole 220 greeting line."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reply = recv_reply(sock)
        t1 = time.perf_counter()
    if not reply.startswith(b"220"):
        raise BenchError(f"greeting probe: server answered {reply!r}")
    return (t1 - t0) * 1000.0


# --------------------------------------------------------------------------- one unit


@dataclass
class Config:
    servers: list[str]
    rounds: int
    quick: bool
    scenarios: list[Scenario]
    generator: str  # "smtp-source" or "python" for scenarios a-e
    smtp_source: str | None
    server_cpus: set[int]
    load_cpus: set[int]
    procs: int
    idle: int
    logdir: Path
    logdir_is_temp: bool
    verbose: bool
    quiet_wait: float
    handler: str = "sink"  # "sink": no hooks; "data": an async handle_DATA on both


def load_command(cfg: Config, s: Scenario, port: int) -> tuple[list[str], str]:
    n = s.count(cfg.quick)
    if not s.pipelining and cfg.generator == "smtp-source" and cfg.smtp_source:
        cmd = [
            cfg.smtp_source,
            "-s", str(s.clients), "-m", str(n), "-l", str(s.size), "-r", str(s.rcpts),
            "-M", BENCH_HOSTNAME,
            "-f", f"bench@client.{BENCH_HOSTNAME}", "-t", f"rcpt@{BENCH_HOSTNAME}",
        ]  # fmt: skip
        if not s.reconnect:
            cmd.append("-d")
        cmd.append(f"127.0.0.1:{port}")
        return cmd, "smtp-source"
    procs = max(1, min(cfg.procs, s.clients))
    cmd = [
        sys.executable, str(SMTPLOAD_PY),
        "--port", str(port), "--connections", str(s.clients), "--messages", str(n),
        "--size", str(s.size), "--rcpts", str(s.rcpts),
        "--pipelining", "on" if s.pipelining else "off",
        "--procs", str(procs), "--timeout", str(LOAD_TIMEOUT - 30),
    ]  # fmt: skip
    if s.reconnect:
        cmd.append("--reconnect")
    label = "smtpload.py pipelined" if s.pipelining else "smtpload.py lockstep"
    return cmd, label + (f" x{procs} procs" if procs > 1 else "")


def run_load(cfg: Config, s: Scenario, srv: ServerProcess) -> dict[str, Any]:
    cmd, generator = load_command(cfg, s, srv.port)
    n = s.count(cfg.quick)
    before_kb = proc_status_kb(srv.pid)
    cpu0 = proc_cpu_seconds(srv.pid)
    ru0 = children_cpu_seconds()
    machine0, self0 = machine_busy_seconds(), self_cpu_seconds()
    t0 = time.monotonic()
    proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=LOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{generator} did not finish within {LOAD_TIMEOUT:.0f} s") from None
    finally:
        reap(proc)  # also on Ctrl-C: stopped and waited for, never left behind
    t1 = time.monotonic()
    client_cpu = children_cpu_seconds() - ru0
    cpu1 = proc_cpu_seconds(srv.pid)
    machine = machine_busy_seconds() - machine0
    harness = self_cpu_seconds() - self0
    after_kb = proc_status_kb(srv.pid)
    srv.check_alive()

    errors: list[str] = []
    if generator == "smtp-source":
        elapsed = t1 - t0
        ok = n if proc.returncode == 0 else 0
        if proc.returncode != 0:
            errors.append(f"smtp-source exit {proc.returncode}: {err.decode(errors='replace')}")
        pipelined = False
    else:
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"{generator} printed no result; stderr: {err.decode()}") from None
        elapsed = float(report["elapsed"])
        ok = int(report["ok"])
        errors.extend(report["errors"])
        pipelined = bool(report["pipelined"])
        if report.get("rcvlowat_stall"):
            errors.append("rcvlowat stall: the client lost up to 1 s waiting (see smtpload.py)")
    failed = n - ok
    server_cpu = cpu1 - cpu0
    base_mib = before_kb.get("VmRSS", 0) / KB
    peak_mib = after_kb.get("VmHWM", 0) / KB
    result: dict[str, Any] = {
        "generator": generator,
        "messages": n,
        "ok": ok,
        "failed": failed,
        "errors": errors[:5],
        "elapsed_s": elapsed,
        "pipelined": pipelined,
        "client_stalled": any("rcvlowat stall" in e for e in errors),
        "msgs_per_s": ok / elapsed if elapsed > 0 else 0.0,
        "mb_per_s": ok * s.size / MB / elapsed if elapsed > 0 else 0.0,
        "server_cpu_s": server_cpu,
        "cpu_us_per_msg": server_cpu * 1e6 / ok if ok else math.nan,
        "server_cpu_util": server_cpu / elapsed if elapsed > 0 else math.nan,
        "client_cpu_s": client_cpu,
        "client_cpu_util": client_cpu / elapsed if elapsed > 0 else math.nan,
        # CPU that neither the server, the load generator nor the harness used: other
        # processes on the machine (in CPUs, over the harness's view of the run).
        "foreign_cpu": max(0.0, machine - (cpu1 - cpu0) - client_cpu - harness) / (t1 - t0),
        "base_rss_mb": base_mib,
        "peak_rss_mb": peak_mib,
        "end_rss_mb": after_kb.get("VmRSS", 0) / KB,
    }
    if s.key == "d":
        growth = (peak_mib - base_mib) * MIB
        result["rss_growth_per_conn_x"] = growth / s.clients / s.size
    return result


def run_idle(cfg: Config, s: Scenario, srv: ServerProcess) -> dict[str, Any]:
    base = [greeting_latency_ms(srv.port) for _ in range(10)]
    rss0 = proc_status_kb(srv.pid)["VmRSS"]
    cmd = [
        sys.executable, str(SMTPLOAD_PY), "--port", str(srv.port),
        "--idle", str(cfg.idle), "--timeout", str(IDLE_TIMEOUT),
    ]  # fmt: skip
    holder = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        opened = json.loads(read_line(holder, IDLE_TIMEOUT + 30, "idle holder"))
        srv.check_alive()
        rss_held = proc_status_kb(srv.pid)["VmRSS"]
        greet = [greeting_latency_ms(srv.port) for _ in range(GREETING_PROBES)]
        assert holder.stdin is not None
        holder.stdin.write(b"check\n")
        holder.stdin.flush()
        alive = int(json.loads(read_line(holder, 60, "idle holder"))["alive"])
        holder.stdin.write(b"quit\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    finally:
        reap(holder)
    srv.check_alive()
    held = int(opened["held"])
    return {
        "generator": "smtpload.py --idle",
        "target": cfg.idle,
        "held": held,
        "alive_after_probes": alive,
        "failed": cfg.idle - held,
        "errors": opened["errors"][:5],
        "open_s": opened["elapsed"],
        "open_rate": held / opened["elapsed"] if opened["elapsed"] > 0 else math.nan,
        "rss_before_kb": rss0,
        "rss_held_kb": rss_held,
        "rss_per_conn_kb": (rss_held - rss0) / held if held else math.nan,
        "greet_base_ms": statistics.median(base),
        "greet_median_ms": statistics.median(greet),
        "greet_max_ms": max(greet),
        "greet_samples_ms": [round(x, 3) for x in greet],
    }


def run_unit(cfg: Config, s: Scenario, server: str, round_no: int, slot: int) -> dict[str, Any]:
    options = dict(s.server_options)
    options.update(LIMIT_OPTIONS)
    tag = f"r{round_no}-{s.key}-{slot}-{server}"
    waited, background = 0.0, math.nan
    if cfg.quiet_wait > 0:
        # After QUIET_GIVE_UP fruitless waits in a row, only look (one window) until the
        # machine is seen quiet again: a machine that stays busy must not double the run.
        patience = cfg.quiet_wait if QUIET_STATE["timeouts"] < QUIET_GIVE_UP else 0.0
        waited, background = wait_for_quiet(patience)
        if background < QUIET_THRESHOLD:
            QUIET_STATE["timeouts"] = 0
        else:
            QUIET_STATE["timeouts"] += 1
            if QUIET_STATE["timeouts"] == QUIET_GIVE_UP:
                print(
                    f"run.py: the machine stayed busy ({background:.2f} CPU of other work) "
                    f"through {QUIET_GIVE_UP} waits in a row; not waiting until it is quiet again",
                    file=sys.stderr,
                )
    srv = start_server(server, options, cfg.server_cpus, cfg.logdir, tag, cfg.handler)
    try:
        warm_up(srv.port)
        result = run_idle(cfg, s, srv) if s.idle else run_load(cfg, s, srv)
    finally:
        reap(srv.proc)
    result.update(
        {
            "server": server,
            "slot": slot,
            "round": round_no,
            "scenario": s.key,
            "server_version": srv.info.get("version"),
            "dropped_options": srv.info.get("dropped_options", []),
            "ignored_options": srv.info.get("ignored_options", []),
            "quiet_waited_s": waited,
            "background_cpu_before": background,
        }
    )
    return result


# --------------------------------------------------------------------------- report


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    mag = abs(value)
    if mag >= 100:
        return f"{value:,.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def finite(values: Iterator[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def summarise(cfg: Config, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in cfg.scenarios:
        mine = [r for r in runs if r["scenario"] == s.key]
        invalid = any(r.get("failed") for r in mine)
        for m in metrics_for(s):
            row: dict[str, Any] = {"scenario": s.key, "metric": m.key, "label": m.label}
            medians: list[float | None] = []
            for slot in range(len(cfg.servers)):
                vals = finite(r.get(m.key) for r in mine if r["slot"] == slot)
                stats: dict[str, Any] = (
                    {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
                    if vals
                    else {"median": None, "min": None, "max": None}
                )
                stats["values"] = vals
                row[f"side{slot}"] = stats
                medians.append(stats["median"])
            ratio = None
            if m.ratio and len(medians) == 2 and medians[0] is not None and medians[1]:
                ratio = medians[0] / medians[1]
            per_round = []
            for rnd in range(cfg.rounds):
                a = finite(r.get(m.key) for r in mine if r["slot"] == 0 and r["round"] == rnd)
                b = finite(r.get(m.key) for r in mine if r["slot"] == 1 and r["round"] == rnd)
                if m.ratio and a and b and b[0]:
                    per_round.append(a[0] / b[0])
            row["ratio"] = ratio
            row["ratio_min"] = min(per_round) if per_round else None
            row["ratio_max"] = max(per_round) if per_round else None
            verdict = None
            target = ""
            checks: list[bool] = []
            if m.ratio_target is not None and ratio is not None:
                if m.better == "higher":
                    checks.append(ratio >= m.ratio_target)
                    target = f">= {m.ratio_target:g}x"
                else:
                    checks.append(ratio <= m.ratio_target + 1e-12)
                    target = (
                        "<= 1/3x"
                        if abs(m.ratio_target - 1 / 3) < 1e-9
                        else f"< {m.ratio_target:g}x"
                    )
            if m.abs_target is not None and medians and medians[0] is not None:
                value = medians[0]
                if m.better == "higher":
                    checks.append(value >= m.abs_target)
                    target = (
                        target + " & " if target else ""
                    ) + f">= {m.abs_target:g} {m.abs_unit}"
                else:
                    checks.append(value <= m.abs_target)
                    target = (
                        target + " & " if target else ""
                    ) + f"<= {m.abs_target:g} {m.abs_unit}"
            if checks:
                verdict = "INVALID" if invalid else ("PASS" if all(checks) else "FAIL")
            row["target"] = target
            row["result"] = verdict
            rows.append(row)
    return rows


def side_names(servers: list[str]) -> list[str]:
    if len(servers) == 2 and servers[0] == servers[1]:
        return [f"{servers[0]}#1", f"{servers[1]}#2"]
    return list(servers)


def render(cfg: Config, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    names = side_names(cfg.servers)
    two = len(names) == 2
    header = ["metric"] + [f"{n} median [min..max]" for n in names]
    if two:
        header += [f"ratio {names[0]}/{names[1]} [rounds]", "target", "result"]
    table: list[list[str]] = []
    lines: list[str] = []
    by_key = {s.key: s for s in cfg.scenarios}
    current = None
    for row in rows:
        if row["scenario"] != current:
            current = row["scenario"]
            s = by_key[current]
            gens = sorted({r["generator"] for r in runs if r["scenario"] == current})
            extra = f" ({s.count(cfg.quick)} msgs/run)" if not s.idle else ""
            title = s.title.replace("N ", f"{cfg.idle:,} ", 1) if s.idle else s.title
            table.append([f"{current}. {title}{extra}; load: {', '.join(gens)}"])
        cells = [f"   {row['label']}"]
        for slot in range(len(names)):
            st = row[f"side{slot}"]
            if st["median"] is None:
                cells.append("-")
            else:
                cells.append(f"{fmt(st['median'])} [{fmt(st['min'])}..{fmt(st['max'])}]")
        if two:
            if row["ratio"] is None:
                cells.append("-")
            else:
                spread = ""
                if row["ratio_min"] is not None:
                    spread = f" [{fmt(row['ratio_min'])}..{fmt(row['ratio_max'])}]"
                cells.append(f"{fmt(row['ratio'])}x{spread}")
            cells.append(row["target"] or "")
            cells.append(row["result"] or "")
        table.append(cells)
    widths = [len(h) for h in header]
    for cells in table:
        if len(cells) > 1:
            for i, c in enumerate(cells):
                widths[i] = max(widths[i], len(c))

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    for cells in table:
        lines.append(cells[0] if len(cells) == 1 else line(cells))
    return "\n".join(lines)


def notes(cfg: Config, runs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for r in runs:
        if r.get("failed"):
            out.append(
                f"round {r['round'] + 1} {r['scenario']} {r['server']}: {r['failed']} failed; "
                f"{'; '.join(r['errors'])[:300]}"
            )
    dropped = sorted({(r["server"], o) for r in runs for o in r.get("dropped_options", [])})
    for server, opt in dropped:
        out.append(f"{server} does not accept option {opt!r} (dropped; default used)")
    for s in cfg.scenarios:
        if s.idle:
            continue
        for slot, name in enumerate(side_names(cfg.servers)):
            utils = finite(
                r.get("client_cpu_util")
                for r in runs
                if r["scenario"] == s.key and r["slot"] == slot
            )
            if utils and statistics.median(utils) > 0.85:
                out.append(
                    f"{s.key} vs {name}: load generator busy {statistics.median(utils):.0%} of "
                    "wall time - it may be the bottleneck; read that ratio as a lower bound"
                )
    for r in runs:
        if r.get("client_stalled"):
            out.append(
                f"round {r['round'] + 1} {r['scenario']} {r['server']}: the pipelining client "
                "stalled (a reply group shorter than learned) and lost up to 1 s"
            )
    disturbed = [r for r in runs if r.get("foreign_cpu", 0) > DISTURBED_CPU]
    if disturbed:
        worst = max(disturbed, key=lambda r: r["foreign_cpu"])
        out.append(
            f"{len(disturbed)} of {len(runs)} runs shared the machine with other busy processes "
            f"(> {DISTURBED_CPU:g} CPU; worst {worst['foreign_cpu']:.2f} CPU in round "
            f"{worst['round'] + 1} {worst['scenario']} {worst['server']}): treat their numbers, "
            "and the min..max spread, with care"
        )
    for r in runs:
        if r["scenario"] == "g" and r.get("alive_after_probes", r.get("held")) < r.get("held", 0):
            out.append(
                f"round {r['round'] + 1} g {r['server']}: only {r['alive_after_probes']} of "
                f"{r['held']} idle connections were still open after the probes"
            )
    return out


# --------------------------------------------------------------------------- environment


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def smtp_source_version(path: str | None) -> str:
    if not path:
        return "not found"
    for cmd in (
        ["postconf", "-d", "-h", "mail_version"],
        ["dpkg-query", "-W", "-f=${Version}", "postfix"],
    ):
        exe = shutil.which(cmd[0]) or (
            f"/usr/sbin/{cmd[0]}" if os.path.exists(f"/usr/sbin/{cmd[0]}") else None
        )
        if not exe:
            continue
        try:
            out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return f"postfix {out.stdout.strip()} ({path})"
    return f"unknown version ({path})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_describe() -> str:
    """The repository's commit, and whether smtptrio/ has uncommitted changes (read-only)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "smtptrio"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "no commit"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def smtptrio_version() -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    probe = (
        "import smtptrio, smtptrio.handlers; smtptrio.serve; smtptrio.handlers.Sink; "
        "print(smtptrio.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"unusable ({last})"
    return out.stdout.strip()


def find_smtp_source(explicit: str | None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("smtp-source")
    if found:
        return found
    for candidate in ("/usr/sbin/smtp-source", "/usr/local/sbin/smtp-source"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def pick_cpus() -> tuple[set[int], set[int], str]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        server, load = {allowed[0]}, set(allowed[1:])
        return server, load, f"server on CPU {allowed[0]}, load on CPU(s) {sorted(load)}"
    return set(allowed), set(allowed), f"one CPU ({allowed}): server and load share it"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark smtptrio against aiosmtpd (see benchmarks/README.md)."
    )
    parser.add_argument("--servers", default="smtptrio,aiosmtpd",
                        help="two servers, first/second is the ratio (default smtptrio,aiosmtpd);"
                             " 'aiosmtpd,aiosmtpd' checks the harness itself")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--handler",
        choices=["sink", "data"],
        default="sink",
        help="sink: each server's own Sink (no hooks, the default); "
        "data: a handler whose async handle_DATA returns '250 OK', on both",
    )
    parser.add_argument("--quick", action="store_true", help="about a third of the messages")
    parser.add_argument("--scenarios", default="abcdefg", help="subset, e.g. 'acf'")
    parser.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    parser.add_argument(
        "--generator",
        choices=["auto", "smtp-source", "python"],
        default="auto",
        help="load for scenarios a-e (f is always the pipelining client)",
    )
    parser.add_argument("--smtp-source", metavar="PATH", help="path of smtp-source")
    parser.add_argument(
        "--procs", type=int, default=0, help="Python client processes (default: one per load CPU)"
    )
    parser.add_argument("--idle", type=int, default=10000, help="connections held in g")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every scenario's message count"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=3.0, metavar="S",
        help="before each run, wait up to S seconds for other processes to go quiet (0: off)",
    )  # fmt: skip
    parser.add_argument("--logdir", help="where server stderr goes (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> tuple[Config, str]:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not 1 <= len(servers) <= 2 or any(s not in KNOWN_SERVERS for s in servers):
        raise SystemExit("--servers takes one or two of: " + ", ".join(KNOWN_SERVERS))
    wanted = set(args.scenarios.lower())
    scenarios = []
    for s in SCENARIOS:
        if s.key in wanted:
            if args.scale != 1.0 and not s.idle:
                s = Scenario(
                    **{**asdict(s),
                       "messages": max(1, round(s.messages * args.scale)),
                       "quick_messages": max(1, round(s.quick_messages * args.scale))}
                )  # fmt: skip
            scenarios.append(s)
    if not scenarios:
        raise SystemExit(f"no scenario in {args.scenarios!r}; choose from abcdefg")
    smtp_source = find_smtp_source(args.smtp_source)
    generator = args.generator
    if generator == "auto":
        generator = "smtp-source" if smtp_source else "python"
    if generator == "smtp-source" and not smtp_source:
        generator = "python"
    if not smtp_source and any(not s.pipelining and not s.idle for s in scenarios):
        print(SMTP_SOURCE_INSTALL, file=sys.stderr)
    server_cpus, load_cpus, pinning = pick_cpus()
    if args.logdir:
        logdir = Path(args.logdir)
        logdir.mkdir(parents=True, exist_ok=True)
    else:  # removed again at the end unless something went wrong
        logdir = Path(tempfile.mkdtemp(prefix="smtptrio-bench-"))
    cfg = Config(
        servers=servers,
        rounds=args.rounds,
        quick=args.quick,
        scenarios=scenarios,
        generator=generator,
        smtp_source=smtp_source,
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        procs=args.procs or len(load_cpus),
        idle=args.idle,
        logdir=logdir,
        logdir_is_temp=not args.logdir,
        verbose=args.verbose,
        quiet_wait=args.quiet_wait,
        handler=args.handler,
    )
    return cfg, pinning


def describe(r: dict[str, Any]) -> str:
    if "held" in r:
        return (
            f"held {r['held']}/{r['target']}, {r['rss_per_conn_kb']:.1f} KB/conn, "
            f"220 in {r['greet_median_ms']:.2f} ms median / {r['greet_max_ms']:.2f} max"
        )
    return (
        f"{r['msgs_per_s']:,.0f} msg/s, {r['mb_per_s']:.1f} MB/s, "
        f"{r['cpu_us_per_msg']:.0f} us CPU/msg, peak {r['peak_rss_mb']:.1f} MiB, "
        f"{r['elapsed_s']:.2f} s" + (f", {r['failed']} FAILED" if r["failed"] else "")
    )


def describe_more(r: dict[str, Any]) -> str:
    parts = [f"load: {r['generator']}"]
    for key, label in (
        ("server_cpu_util", "server busy"),
        ("client_cpu_util", "client busy"),
        ("foreign_cpu", "other CPU"),
        ("background_cpu_before", "CPU before"),
        ("quiet_waited_s", "waited s"),
        ("base_rss_mb", "RSS before MiB"),
        ("rss_before_kb", "RSS before KB"),
        ("rss_held_kb", "RSS held KB"),
        ("open_s", "open s"),
    ):
        if key in r and isinstance(r[key], int | float) and math.isfinite(r[key]):
            parts.append(f"{label} {r[key]:.2f}")
    if r.get("dropped_options"):
        parts.append(f"dropped options {r['dropped_options']}")
    if r.get("errors"):
        parts.append(f"errors {r['errors'][:2]}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, pinning = build_config(args)
    nofile = raise_nofile_limit()
    os.sched_setaffinity(0, cfg.load_cpus)  # the harness stays off the servers' CPU
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": version_of("trio"),
        "aiosmtpd": version_of("aiosmtpd"),
        "smtptrio": smtptrio_version() if "smtptrio" in cfg.servers else "not run",
        "smtp_source": smtp_source_version(cfg.smtp_source),
        "smtptrio_git": git_describe() if "smtptrio" in cfg.servers else "not run",
        "cpu_model": cpu_model(),
        "cpus_online": os.cpu_count(),
        "pinning": pinning,
        "handler": cfg.handler,
        "kernel": platform.release(),
        "rlimit_nofile": nofile,
        "rounds": cfg.rounds,
        "quick": cfg.quick,
        "servers": cfg.servers,
        "generator_a_to_e": cfg.generator,
    }
    if "unusable" in meta["smtptrio"]:
        print(f"run.py: smtptrio is {meta['smtptrio']}; try --servers aiosmtpd,aiosmtpd",
              file=sys.stderr)  # fmt: skip
        if cfg.logdir_is_temp:
            shutil.rmtree(cfg.logdir, ignore_errors=True)
        return 2
    shown = ("python", "trio", "aiosmtpd", "smtptrio", "smtptrio_git", "smtp_source", "cpu_model")
    for key in (*shown, "cpus_online", "kernel", "pinning"):
        print(f"# {key}: {meta[key]}")
    where = "kept only on error" if cfg.logdir_is_temp else "kept"
    print(f"# rounds: {cfg.rounds}, {'quick' if cfg.quick else 'full'} sizes; "
          f"server stderr in {cfg.logdir} ({where})", flush=True)  # fmt: skip
    runs: list[dict[str, Any]] = []
    try:
        for round_no in range(cfg.rounds):
            for s in cfg.scenarios:
                order = list(enumerate(cfg.servers))
                if round_no % 2:
                    order.reverse()  # alternate who goes first, so drift hits both alike
                for slot, server in order:
                    t0 = time.monotonic()
                    result = run_unit(cfg, s, server, round_no, slot)
                    runs.append(result)
                    msg = (
                        f"[{time.monotonic() - started:6.1f}s] round {round_no + 1}/{cfg.rounds} "
                        f"{s.key} {server:<8} {describe(result)} ({time.monotonic() - t0:.1f} s)"
                    )
                    if cfg.verbose:
                        msg += "\n          " + describe_more(result)
                    print(msg, file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\nrun.py: interrupted; stopping the servers", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"run.py: {exc}\nrun.py: server stderr kept in {cfg.logdir}", file=sys.stderr)
        return 1
    finally:
        reap_all()
    if cfg.logdir_is_temp:
        shutil.rmtree(cfg.logdir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    rows = summarise(cfg, runs)
    print()
    print(render(cfg, rows, runs))
    extra = notes(cfg, runs)
    if extra:
        print("\nnotes:")
        for n in extra:
            print(f"  - {n}")
    verdicts = [r["result"] for r in rows if r["result"]]
    if verdicts:
        print(
            f"\n{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL"
            + (f", {verdicts.count('INVALID')} INVALID" if "INVALID" in verdicts else "")
            + f" ({meta['duration_s']} s)"
        )
    if args.json:
        payload = {
            "meta": meta,
            "scenarios": [asdict(s) for s in cfg.scenarios],
            "summary": rows,
            "runs": runs,
            "notes": extra,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
