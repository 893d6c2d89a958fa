"""mssgate benchmark: the wire, a bare pass-through, Postfix and mssgate, side by side.

Run by ``bash bench/run.sh [--quick]`` (see bench/README.md). Everything listens on 127.0.0.1
only; every process started here is recorded and stopped by its PID at the end, also on error
or SIGTERM; every loop is bounded in count and in time.

One run measures, for each message size (2 KB, 100 KB, 5 MB) and each concurrency (1 and 20
sessions; quick mode: 20 only), five rows: smtp-sink direct, the pass-through proxy, a private
Postfix relay, mssgate with ordinary mail (signature added) and mssgate with MSSanté mail
(relayed byte for byte). Throughput comes from ``smtp-source -F`` (a fixed count after a
warm-up), latency (p50/p99 per transaction) from ``load.py``; peak RSS and CPU from ``/proc``.
Then mssgate's cost per MB for 1, 10 and 30 MB messages, and 100 concurrent 5 MB messages
against its in-flight memory budget. Results: a Markdown report on stdout and in
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import clinic
import messages
import yaml
from load import percentile
from messages import MIB, Message
from postfix_relay import PostfixRelay, unavailable_reason

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOOPBACK = "127.0.0.1"
PYTHON = sys.executable
MSSGATE = str(Path(sys.executable).parent / "mssgate")
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
ORDINARY_RCPT = "patient.durand@gmail.com"
MSSANTE_RCPT = "jean.confrere@medecin.mssante.fr"
TICK = 1.0 / os.sysconf("SC_CLK_TCK")

LATENCY_ROUNDS = 10
"""Interleaved latency rounds per size and concurrency (fewer when the counts are small)."""
THROUGHPUT_ROUNDS = 8
"""Interleaved throughput rounds per size and concurrency (fewer when the counts are small):
the shorter each round, the more evenly the rows share the machine's slow spells."""

ROWS = ("sink direct", "pass-through", "Postfix", "mssgate ordinary", "mssgate MSSanté")


# ---------------------------------------------------------------------------------------------
# Modes


@dataclass(frozen=True)
class SizePlan:
    """Counts for one message size: per concurrency, (throughput count, latency count)."""

    label: str
    title: str
    counts: dict[int, tuple[int, int]]


@dataclass(frozen=True)
class Mode:
    """What one run measures, and how much."""

    name: str
    sizes: tuple[SizePlan, ...]
    target_s: float
    """Seconds one throughput measurement should last: counts are cut to fit it after the
    warm-up."""
    latency_s: float
    """Seconds of transactions one row's latency measurement should hold (all its rounds)."""
    cap: float
    """Hard limit in seconds of one measurement (smtp-source or the latency client)."""
    linear: tuple[tuple[int, int], ...]
    """(MB, messages) for the linear-cost run."""
    budget_sessions: int
    run_budget_s: float
    """No new measurement starts after this many seconds (each may still take ``cap``)."""
    partial: bool = False
    """Only some sizes (``--sizes``): no linear-cost or memory-budget run."""


FULL = Mode(
    name="full",
    sizes=(
        SizePlan("2k", "2 KB text/plain", {1: (20000, 4000), 20: (50000, 6000)}),
        SizePlan(
            "100k", "100 KB multipart/mixed (HTML + PDF)", {1: (5000, 3000), 20: (8000, 3000)}
        ),
        SizePlan("5m", "5 MB multipart/mixed (PDF + JPEG)", {1: (40, 30), 20: (100, 60)}),
    ),
    target_s=4.0,
    latency_s=3.0,
    cap=60.0,
    linear=((1, 5), (10, 3), (30, 2)),
    budget_sessions=100,
    run_budget_s=500.0,
)
QUICK = Mode(
    name="quick",
    sizes=(
        SizePlan("2k", "2 KB text/plain", {4: (400, 100)}),
        SizePlan("100k", "100 KB multipart/mixed (HTML + PDF)", {4: (100, 40)}),
        SizePlan("5m", "5 MB multipart/mixed (PDF + JPEG)", {4: (8, 8)}),
    ),
    target_s=1.5,
    latency_s=0.9,
    cap=15.0,
    linear=((1, 2), (10, 1)),
    budget_sessions=10,
    run_budget_s=70.0,
)


# ---------------------------------------------------------------------------------------------
# Processes


class Processes:
    """Every process this run started, stopped by PID at the end (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start and record one process."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop one recorded process by its PID."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                self.stop(proc)
        self.started.clear()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (bounded); fail if ``proc`` died."""
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


# ---------------------------------------------------------------------------------------------
# /proc readings


def proc_status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` value in kB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a process (and of its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * TICK


def pss_kb(pid: int) -> int:
    """Proportional set size of a process in kB (shared pages divided among sharers)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class GroupWatch:
    """Samples a group of processes (Postfix) every 0.2 s: peak summed PSS, largest VmHWM."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak_pss_kb = 0
        self.largest_hwm_kb = 0
        self.largest_name = ""
        self.most_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < deadline:
            pids = self.pids()
            self.most_procs = max(self.most_procs, len(pids))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(pid) for pid in pids))
            for pid in pids:
                hwm = proc_status_kb(pid, "VmHWM")
                if hwm > self.largest_hwm_kb:
                    self.largest_hwm_kb = hwm
                    with contextlib.suppress(OSError):
                        self.largest_name = Path(f"/proc/{pid}/comm").read_text().strip()
            self._stop.wait(0.2)

    def __enter__(self) -> GroupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------------------------
# The sink


READ_PAUSE = 0.02
"""Seconds between two reads of smtp-sink's counters."""


class Sink:
    """smtp-sink on 127.0.0.1, counting every message it received (its ``-c`` counters)."""

    def __init__(self, procs: Processes, port: int) -> None:
        args = [SMTP_SINK, "-c", "-m", "1024", "-t", "300", "-h", "sink.bench.localdomain"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"{LOOPBACK}:{port}", "1024"]
        self.port = port
        self.proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages = 0
        self._changed = threading.Condition()
        self._eager = threading.Event()
        """Set while someone waits for a count: the counters are then read as they come."""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_port(port, self.proc)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            tail = (tail + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", tail)
            if found:
                with self._changed:
                    self.messages = max(self.messages, int(found[-1]))
                    self._changed.notify_all()
            # smtp-sink writes its counters after every message: while nobody waits for a
            # count (a row is being measured), read them in batches, not one wake-up of this
            # process per message (the pipe holds some 2000 updates; at 30,000 messages/s,
            # 20 ms is 600 of them).
            self._eager.wait(READ_PAUSE)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the sink has received ``count`` messages in all (bounded); the count
        is seen as soon as the sink reports it, so that the clock stops there."""
        stop_at = time.monotonic() + timeout
        self._eager.set()
        try:
            with self._changed:
                while self.messages < count:
                    left = stop_at - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
        finally:
            self._eager.clear()
        return self.messages >= count


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """Something the load is sent to: a row of the tables."""

    row: str
    port: int
    message: Message
    pid: int | None = None
    """The proxy's process (VmHWM and CPU); None for the sink and for Postfix."""
    postfix: PostfixRelay | None = None


@dataclass
class Cell:
    """One row × concurrency measurement."""

    row: str
    sessions: int
    rate: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    client_rate: float = math.nan
    rss_mb: float = math.nan
    cpu_ms: float = math.nan
    tp_n: int = 0
    """Messages in the throughput measurement (smtp-source)."""
    tp_rounds: int = 0
    """Interleaved throughput rounds they were sent in (:meth:`Bench.measure_throughput`)."""
    lat_n: int = 0
    """Transactions timed by the latency client."""
    lat_rounds: int = 0
    """Interleaved latency rounds they were timed in (:meth:`Bench.measure_latency`)."""
    notes: list[str] = field(default_factory=list)


def smtp_source(
    procs: Processes, target: Target, message_file: Path, sessions: int, count: int, cap: float
) -> tuple[float, bool, str]:
    """Run smtp-source; (seconds, finished, stderr)."""
    args = [
        SMTP_SOURCE,
        "-F",
        str(message_file),
        "-f",
        target.message.mail_from,
        "-t",
        target.message.rcpt_to,
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-d",
        "-M",
        "load.bench.localdomain",
        f"{LOOPBACK}:{target.port}",
    ]
    start = time.perf_counter()
    proc = procs.start(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=cap)
        finished = proc.returncode == 0
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        err, finished = b"timed out", False
    elapsed = time.perf_counter() - start
    procs.started.remove(proc)
    return elapsed, finished, err.decode(errors="replace").strip()[-300:]


def load_client(
    procs: Processes,
    target: Target,
    message_file: Path,
    sessions: int,
    count: int,
    cap: float,
    *,
    barrier: bool = False,
    warmup: int = 0,
) -> dict[str, Any]:
    """Run load.py in its own process; its JSON result (``{}`` if it failed)."""
    args = [
        PYTHON,
        str(HERE / "load.py"),
        "--port",
        str(target.port),
        "--message",
        str(message_file),
        "--mail-from",
        target.message.mail_from,
        "--rcpt",
        target.message.rcpt_to,
        "--sessions",
        str(sessions),
        "--count",
        str(count),
        "--deadline",
        str(cap),
        "--timeout",
        "120",
    ]
    if barrier:
        args.append("--barrier")
    if warmup:
        args += ["--warmup", str(warmup)]
    proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=cap + 150)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        procs.started.remove(proc)
        return {}
    procs.started.remove(proc)
    try:
        result: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
        return {}
    return result


class Bench:
    """One benchmark run."""

    def __init__(self, mode: Mode, workdir: Path, procs: Processes) -> None:
        self.mode = mode
        self.workdir = workdir
        self.procs = procs
        self.sink: Sink | None = None
        self.postfix: PostfixRelay | None = None
        self.postfix_note = ""
        self.cells: dict[str, list[Cell]] = {}
        self.linear: list[dict[str, Any]] = []
        self.budget: list[dict[str, Any]] = []
        self.preflight: list[str] = []
        self.inflight_key = False
        self.began = time.monotonic()
        self.skipped: list[str] = []
        self.loadavg = [loadavg()]
        """1-minute load average at the start and at the end (other work on the machine)."""

    def out_of_time(self, what: str) -> bool:
        """True (and ``what`` recorded as skipped) once the run's time budget is spent."""
        if time.monotonic() - self.began < self.mode.run_budget_s:
            return False
        self.skipped.append(what)
        print(f"skipped (run time budget spent): {what}", file=sys.stderr)
        return True

    # -- setup --------------------------------------------------------------------------------

    def start_sink(self) -> Sink:
        """Start the one smtp-sink of the run."""
        self.sink = Sink(self.procs, free_port())
        return self.sink

    def start_postfix(self, sink_port: int) -> None:
        """Start the private Postfix relay, or note why not."""
        reason = unavailable_reason()
        if reason:
            self.postfix_note = f"Postfix rows skipped: {reason}"
            return
        relay = PostfixRelay(self.workdir / "postfix", free_port(), sink_port)
        relay.start()
        self.postfix = relay

    def start_passthrough(self, sink_port: int) -> tuple[subprocess.Popen[bytes], int]:
        """Start the pass-through proxy on a free port."""
        port = free_port()
        upstream = ["--upstream-port", str(sink_port)]
        log = (self.workdir / "passthrough.log").open("ab")
        proc = self.procs.start(
            [PYTHON, str(HERE / "passthrough.py"), "--port", str(port), *upstream],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port(port, proc)
        return proc, port

    def mssgate_policy(
        self, sink_port: int, inflight_bytes: int = 512 * MIB, name: str = "clinic.yaml"
    ) -> Path:
        """Write a run's copy of clinic.yaml (routes at the sink, the in-flight budget)."""
        try:
            from mssgate.schema import ListenConfig

            known = set(ListenConfig.model_fields)
        except ImportError:
            known = set()
        self.inflight_key = "max_inflight_bytes" in known
        doc = clinic.policy_for_run(
            sink_port, inflight_bytes=inflight_bytes, known_listen_keys=known
        )
        path = self.workdir / name
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
        return path

    def start_mssgate(self, policy: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Start ``mssgate serve`` on a free port with the run's policy."""
        port = free_port()
        log = (self.workdir / "mssgate.log").open("ab")
        proc = self.procs.start(
            [MSSGATE, "serve", "--config", str(policy), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        wait_port(port, proc, timeout=60)
        return proc, port

    def check_mssgate_decisions(self, policy: Path, ordinary: Path, mssante: Path) -> None:
        """``mssgate explain`` on the two messages: accepted, signature added or not."""
        for name, path, sender, rcpt in (
            ("ordinary", ordinary, clinic.ordinary_sender(), ORDINARY_RCPT),
            ("MSSanté", mssante, clinic.mssante_sender(), MSSANTE_RCPT),
        ):
            envelope = ["--mail-from", sender, "--rcpt", rcpt]
            done = subprocess.run(
                [MSSGATE, "explain", "--config", str(policy), *envelope, "--json", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            try:
                result = json.loads(done.stdout)
                signed = any(d.get("signature_added") for d in result.get("deliveries", []))
                self.preflight.append(
                    f"mssgate explain, {name} mail: {result.get('action')} via "
                    f"{', '.join(d.get('route', '?') for d in result.get('deliveries', []))}"
                    f"{', signature added' if signed else ', no signature (byte for byte)'}"
                )
            except (json.JSONDecodeError, AttributeError):
                self.preflight.append(
                    f"mssgate explain, {name} mail: failed ({done.stderr[-200:]})"
                )

    # -- one cell -----------------------------------------------------------------------------

    def warm_up(
        self, target: Target, message_file: Path, sessions: int, plan: tuple[int, int]
    ) -> Cell:
        """A few messages over up to 4 sessions; their rate sizes the row's throughput count
        (``cell.tp_n``, 0 when the warm-up failed): the plan's, reduced when the target would
        need more than ``mode.target_s`` seconds for it (never below one message per
        session), so that a slow target gets fewer messages, not a longer run."""
        assert self.sink is not None
        mode = self.mode
        cell = Cell(target.row, sessions)
        warm = max(2, min(plan[0] // 20, 40))
        warm_sessions = min(sessions, 4, warm)
        before = self.sink.messages
        start = time.perf_counter()
        _, ok, err = smtp_source(self.procs, target, message_file, warm_sessions, warm, mode.cap)
        arrived = self.sink.wait_for(before + warm, mode.cap)
        warm_s = time.perf_counter() - start
        if not (ok and arrived):
            cell.notes.append(f"warm-up failed: {err}")
            self.quiesce()
            return cell
        guess = warm / warm_s * max(1.0, min(sessions, 2) / warm_sessions)
        cell.tp_n = min(plan[0], max(sessions, round(guess * mode.target_s)))
        return cell

    def measure_throughput(self, rows: list[tuple[Target, Path, Cell]], sessions: int) -> None:
        """Messages/second (smtp-source, counted at the sink; Postfix: until its queue
        drained), peak memory and CPU of the rows of one size and concurrency, in interleaved
        rounds like their latency (:meth:`measure_latency`): each round runs every row in
        turn, one row further on each time, each row's share of its count, so that a slow
        spell of the machine is shared by the rows instead of landing on one of them. A row's
        rate is its messages over its seconds, all rounds together. Every step is capped at
        ``mode.cap`` seconds; a capped step is reported in the notes.
        """
        assert self.sink is not None
        sink = self.sink
        mode = self.mode
        live = [(t, p, c) for t, p, c in rows if c.tp_n > 0]
        if not live:
            return
        rounds = max(1, min(THROUGHPUT_ROUNDS, min(c.tp_n for _, _, c in live) // (sessions * 10)))
        counts = [c.tp_n for _, _, c in live]
        seconds = [0.0] * len(live)
        accept_seconds = [0.0] * len(live)
        got = [0] * len(live)
        cpu = [0.0] * len(live)
        watches = [GroupWatch(t.postfix.pids) if t.postfix else None for t, _, _ in live]
        for target, _, _ in live:
            if target.pid is not None:
                reset_peak(target.pid)
        with contextlib.ExitStack() as stack:
            for watch in watches:
                if watch is not None:
                    stack.enter_context(watch)
            for turn in range(rounds):
                for index in [(turn + k) % len(live) for k in range(len(live))]:
                    target, path, cell = live[index]
                    share = counts[index] // rounds + (1 if turn < counts[index] % rounds else 0)
                    if self.out_of_time(f"throughput round {turn + 1} of {target.row}"):
                        continue
                    share = max(share, sessions)
                    cpu_before = self.target_cpu(target)
                    before = sink.messages
                    start = time.perf_counter()
                    accept_s, finished, err = smtp_source(
                        self.procs, target, path, sessions, share, mode.cap
                    )
                    arrived = sink.wait_for(before + share, max(1.0, mode.cap - accept_s))
                    took = time.perf_counter() - start
                    seconds[index] += took
                    accept_seconds[index] += accept_s
                    got[index] += sink.messages - before
                    print(
                        f"      round {turn + 1}/{rounds} {target.row:<17} "
                        f"{(sink.messages - before) / max(took, 1e-9):8.1f} msg/s",
                        file=sys.stderr,
                    )
                    if not (finished and arrived):
                        cell.notes.append(
                            f"throughput capped at {mode.cap:.0f} s "
                            f"({sink.messages - before}/{share}): {err[-80:]}"
                        )
                        self.quiesce()
                    # (Postfix's own leftovers, after the sink got its messages, are its CPU.)
                    self.settle(target)
                    cpu[index] += self.target_cpu(target) - cpu_before
        for index, (target, _, cell) in enumerate(live):
            cell.tp_n = got[index]
            cell.tp_rounds = rounds
            if seconds[index] > 0:
                cell.rate = got[index] / seconds[index]
            if target.postfix is not None and accept_seconds[index] > 0:
                cell.notes.append(f"accepted {got[index] / accept_seconds[index]:.0f}/s")
            if target.pid is not None or target.postfix is not None:
                cell.cpu_ms = cpu[index] * 1000 / max(got[index], 1)
            watch = watches[index]
            if target.pid is not None:
                cell.rss_mb = proc_status_kb(target.pid, "VmHWM") / 1024
            elif watch is not None:
                cell.rss_mb = watch.peak_pss_kb / 1024
                cell.notes.append(
                    f"RSS: peak PSS sum of {watch.most_procs} procs, largest "
                    f"{watch.largest_name} {watch.largest_hwm_kb / 1024:.0f} MB"
                )

    def target_cpu(self, target: Target) -> float:
        """CPU seconds used so far by a proxy (all of Postfix's processes; 0 for the sink)."""
        if target.pid is not None:
            return cpu_seconds(target.pid)
        if target.postfix is not None:
            return self.postfix_cpu()
        return 0.0

    def measure_latency(
        self, rows: list[tuple[Target, Path, Cell]], sessions: int, plan: tuple[int, int]
    ) -> None:
        """p50/p99 of the rows of one size and concurrency, timed by load.py in interleaved
        rounds: each round runs every row in turn (starting one row further on each time,
        and letting each row's proxy go quiet before the next), so that the rows share the
        machine's quiet and busy moments (on two shared cores, a burst of other work lasting
        a few milliseconds would otherwise land on one row's p99 and not on the others'). Each
        row's count comes from its throughput (``latency_s`` seconds of it, at most the
        plan's); each round starts its sessions with one untimed message each.
        """
        assert self.sink is not None
        sink = self.sink
        mode = self.mode
        counts = [
            sessions
            if math.isnan(cell.rate)
            else min(plan[1], max(sessions, round(cell.rate * mode.latency_s)))
            for _, _, cell in rows
        ]
        rounds = max(1, min(LATENCY_ROUNDS, min(counts) // (sessions * 20)))
        durations: list[list[float]] = [[] for _ in rows]
        elapsed = [0.0] * len(rows)
        for turn in range(rounds):
            # Each round starts one row further on: no row always follows the same one.
            order = [(turn + k) % len(rows) for k in range(len(rows))]
            for index in order:
                target, path, cell = rows[index]
                if self.out_of_time(f"latency round {turn + 1} of {target.row}"):
                    continue
                share = counts[index] // rounds + (1 if turn < counts[index] % rounds else 0)
                before = sink.messages
                result = load_client(
                    self.procs, target, path, sessions, max(share, sessions), mode.cap, warmup=1
                )
                got: list[float] = result.get("durations", [])
                durations[index] += got
                if got:
                    print(
                        f"      round {turn + 1}/{rounds} {target.row:<17} "
                        f"p50 {percentile(got, 0.50) * 1000:6.2f} ms  "
                        f"p99 {percentile(got, 0.99) * 1000:6.2f} ms  "
                        f"max {max(got) * 1000:6.2f} ms  ({len(got)})",
                        file=sys.stderr,
                    )
                elapsed[index] += result.get("elapsed", 0.0)
                bad = {c: n for c, n in result.get("codes", {}).items() if c != "250"}
                if result.get("timed_out"):
                    cell.notes.append(f"latency capped at {mode.cap:.0f} s")
                if bad or not result:
                    cell.notes.append(f"latency client: {len(got)} ok, codes {bad}")
                arrived = before + len(got) + result.get("warmed", 0)
                if not sink.wait_for(arrived, mode.cap):
                    cell.notes.append(f"sink got {sink.messages - before}/{arrived - before}")
                if result.get("timed_out") or not result:
                    self.quiesce()
                self.settle(target)
        for (_, _, cell), timed, seconds in zip(rows, durations, elapsed, strict=True):
            cell.lat_n = len(timed)
            if timed:
                cell.p50_ms = percentile(timed, 0.50) * 1000
                cell.p99_ms = percentile(timed, 0.99) * 1000
                cell.client_rate = len(timed) / max(seconds, 1e-9)
            cell.lat_rounds = rounds

    def settle(self, target: Target, timeout: float = 2.0) -> None:
        """Wait until ``target`` uses no more processor (its CPU time still for 0.2 s), so that
        the next row's round does not share the machine with its leftovers (Postfix goes on
        working after the sink got its messages: queue files removed, its log written)."""
        if target.postfix is None and target.pid is None:
            return  # (the sink)
        stop_at = time.monotonic() + timeout
        last = self.target_cpu(target)
        while time.monotonic() < stop_at:
            time.sleep(0.2)
            now = self.target_cpu(target)
            if now - last < TICK / 2:
                return
            last = now

    def quiesce(self, quiet: float = 1.0, timeout: float = 60.0) -> None:
        """After a capped step: wait until the sink has received nothing for ``quiet`` s."""
        assert self.sink is not None
        stop_at = time.monotonic() + timeout
        last, since = self.sink.messages, time.monotonic()
        while time.monotonic() < stop_at and time.monotonic() - since < quiet:
            time.sleep(0.1)
            if self.sink.messages != last:
                last, since = self.sink.messages, time.monotonic()

    def postfix_cpu(self) -> float:
        """CPU seconds of the Postfix instance (master, its reaped and its live children)."""
        assert self.postfix is not None
        pids = self.postfix.pids()
        if not pids:
            return 0.0
        master, children = pids[0], pids[1:]
        return cpu_seconds(master, children=True) + sum(cpu_seconds(p) for p in children)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        """Every measurement of the mode, in order."""
        sink = self.start_sink()
        print(f"smtp-sink on {sink.port}", file=sys.stderr)
        self.start_postfix(sink.port)
        policy = self.mssgate_policy(sink.port)
        files = self.workdir / "messages"
        files.mkdir()
        for plan in self.mode.sizes:
            ordinary = messages.by_size(plan.label, clinic.ordinary_sender(), ORDINARY_RCPT)
            mssante = messages.by_size(plan.label, clinic.mssante_sender(), MSSANTE_RCPT)
            ord_file = files / f"{plan.label}-ordinary.eml"
            mss_file = files / f"{plan.label}-mssante.eml"
            ord_file.write_bytes(ordinary.file_bytes)
            mss_file.write_bytes(mssante.file_bytes)
            if plan.label == "2k":
                self.check_mssgate_decisions(policy, ord_file, mss_file)
            passthrough, pt_port = self.start_passthrough(sink.port)
            gate, gate_port = self.start_mssgate(policy)
            targets = [
                (Target("sink direct", sink.port, ordinary), ord_file),
                (Target("pass-through", pt_port, ordinary, pid=passthrough.pid), ord_file),
            ]
            if self.postfix is not None:
                targets.append(
                    (Target("Postfix", self.postfix.port, ordinary, postfix=self.postfix), ord_file)
                )
            targets += [
                (Target("mssgate ordinary", gate_port, ordinary, pid=gate.pid), ord_file),
                (Target("mssgate MSSanté", gate_port, mssante, pid=gate.pid), mss_file),
            ]
            cells = self.cells.setdefault(plan.label, [])
            for sessions, counts in plan.counts.items():
                rows: list[tuple[Target, Path, Cell]] = []
                for target, path in targets:
                    if self.out_of_time(f"{plan.label} x{sessions} {target.row}"):
                        continue
                    cell = self.warm_up(target, path, sessions, counts)
                    cells.append(cell)
                    rows.append((target, path, cell))
                began = time.monotonic()
                self.measure_throughput(rows, sessions)
                for _, _, cell in rows:
                    print(
                        f"{plan.label:>5} x{sessions:<3} {cell.row:<17} "
                        f"{cell.rate:8.1f} msg/s"
                        + (f"  [{'; '.join(cell.notes)}]" if cell.notes else ""),
                        file=sys.stderr,
                    )
                print(f"      throughput: {time.monotonic() - began:.1f} s", file=sys.stderr)
                began = time.monotonic()
                self.measure_latency(rows, sessions, counts)
                for _, _, cell in rows:
                    print(
                        f"{plan.label:>5} x{sessions:<3} {cell.row:<17} "
                        f"p50 {cell.p50_ms:8.2f} ms  p99 {cell.p99_ms:8.2f} ms",
                        file=sys.stderr,
                    )
                print(f"      latency: {time.monotonic() - began:.1f} s", file=sys.stderr)
            self.procs.stop(gate)
            self.procs.stop(passthrough)
        if self.mode.partial:
            return
        # A fresh gateway: its resident memory still holds the 5 MB cells' peak otherwise.
        gate, gate_port = self.start_mssgate(policy)
        self.run_linear(gate, gate_port, files)
        self.run_budget(gate, gate_port, files, 512 * MIB)
        self.procs.stop(gate)
        if self.inflight_key and self.budget:
            # The same load against a budget a quarter of its size: most DATA must get 452.
            size = self.budget[0]["size"] * self.mode.budget_sessions
            tight = self.mssgate_policy(sink.port, max(MIB, size // 4), "clinic-tight.yaml")
            gate, gate_port = self.start_mssgate(tight)
            self.run_budget(gate, gate_port, files, max(MIB, size // 4))
        self.procs.stop(gate)

    def run_linear(self, gate: subprocess.Popen[bytes], port: int, files: Path) -> None:
        """mssgate alone, 1 session, messages of 1, 10, 30 MB: seconds per message and per MB.

        The sink direct rows (2 messages each) show the wire's share of the time.
        """
        assert self.sink is not None
        first = True
        for mb, count in self.mode.linear:
            if self.out_of_time(f"linear cost {mb} MB"):
                continue
            for row, sender, rcpt in (
                ("mssgate ordinary", clinic.ordinary_sender(), ORDINARY_RCPT),
                ("mssgate MSSanté", clinic.mssante_sender(), MSSANTE_RCPT),
                ("sink direct", clinic.ordinary_sender(), ORDINARY_RCPT),
            ):
                message = messages.mime_of_size(sender, rcpt, mb * MIB)
                path = files / f"linear-{mb}-{row.split()[-1]}.eml"
                path.write_bytes(message.file_bytes)
                is_sink = row == "sink direct"
                target = Target(row, self.sink.port if is_sink else port, message)
                if first:
                    load_client(self.procs, target, path, 1, 1, self.mode.cap)  # warm-up
                if not is_sink:
                    reset_peak(gate.pid)
                n = min(count, 2) if is_sink else count
                result = load_client(self.procs, target, path, 1, n, self.mode.cap * 2)
                if result.get("timed_out") or not result:
                    self.quiesce()
                durations = result.get("durations", [])
                mean = sum(durations) / len(durations) if durations else math.nan
                self.linear.append(
                    {
                        "row": row,
                        "mb": mb,
                        "size": message.size,
                        "n": len(durations),
                        "s_per_msg": mean,
                        "s_per_mb": mean / (message.size / MIB),
                        "rss_mb": math.nan if is_sink else proc_status_kb(gate.pid, "VmHWM") / 1024,
                        "codes": result.get("codes", {}),
                    }
                )
                print(
                    f"linear {mb:>3} MB {row:<17} {mean:.3f} s/msg "
                    f"{mean / (message.size / MIB) * 1000:.1f} ms/MB ({len(durations)} msgs)",
                    file=sys.stderr,
                )
                path.unlink()
            first = False

    def run_budget(self, gate: subprocess.Popen[bytes], port: int, files: Path, limit: int) -> None:
        """N sessions, one 5 MB message each, all at once: mssgate's peak RSS, 250 vs 452."""
        sessions = self.mode.budget_sessions
        if self.out_of_time(f"memory budget {limit // MIB} MiB"):
            return
        message = messages.by_size("5m", clinic.ordinary_sender(), ORDINARY_RCPT)
        path = files / "budget.eml"
        path.write_bytes(message.file_bytes)
        rss_before = proc_status_kb(gate.pid, "VmRSS") / 1024
        reset_peak(gate.pid)
        began = time.perf_counter()
        result = load_client(
            self.procs,
            Target("mssgate ordinary", port, message),
            path,
            sessions,
            sessions,
            max(self.mode.cap * 4, 120.0),
            barrier=True,
        )
        outcome = {
            "sessions": sessions,
            "size": message.size,
            "limit": limit,
            "rss_before_mb": rss_before,
            "peak_rss_mb": proc_status_kb(gate.pid, "VmHWM") / 1024,
            "codes": result.get("codes", {}),
            "errors": result.get("errors", [])[:3],
            "timed_out": result.get("timed_out", not result),
            "seconds": time.perf_counter() - began,
        }
        self.budget.append(outcome)
        if outcome["timed_out"]:
            self.quiesce()
        print(f"budget: {outcome}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> list[str]:
    """The machine and software description lines."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = proc_meminfo_gb()

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def output(*command: str) -> str:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    postfix = output("postconf", "-d", "-h", "mail_version")
    commit = output("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = output("git", "-C", str(ROOT), "status", "--porcelain", "--", "mssgate")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem_gb:.0f} GiB; "
        f"kernel {platform.release()}",
        f"- Python {platform.python_version()}; aiosmtpd {version('aiosmtpd')}, "
        f"aiosmtplib {version('aiosmtplib')}, uvloop {version('uvloop')}; "
        f"Postfix {postfix or '?'}",
        f"- mssgate {version('mssgate')} at commit {commit or '?'}"
        + (" with uncommitted changes in mssgate/" if dirty else "")
        + f"; {build()}",
    ]


def build() -> str:
    """Which build of mssgate the run measures (the one its processes import)."""
    spec = importlib.util.find_spec("mssgate.mime")
    origin = spec.origin if spec is not None else None
    if origin is not None and not origin.endswith(".py"):
        return "core compiled with mypyc (scripts/compile.sh)"
    return "plain Python build"


def loadavg() -> str:
    """The 1-minute load average."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def proc_meminfo_gb() -> float:
    """Total memory in GiB."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    return math.nan


def fmt(value: float, digits: int = 1) -> str:
    """A number for the tables ('—' for missing)."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.{digits}f}"


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as ``1.23×`` ('—' if either is missing)."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return "—"
    return f"{value / reference:.2f}×"


def report(bench: Bench, started: dt.datetime, seconds: float) -> str:
    """The whole Markdown report."""
    mode = bench.mode
    lines = [
        "# mssgate benchmark results",
        "",
    ]
    if mode.partial:
        lines += [
            "> **PARTIAL RUN** — only "
            + ", ".join(plan.title for plan in mode.sizes)
            + " (`--sizes`): no linear-cost or memory-budget measurement.",
            "",
        ]
    if mode.name == "quick":
        lines += [
            "> **QUICK MODE** — small counts, one concurrency level, a few seconds per "
            "measurement: a smoke test of the harness, not numbers to quote.",
            "",
        ]
    lines += [
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; mode **{mode.name}**; run took {seconds:.0f} s",
        *machine(),
        f"- 1-minute load average at start {bench.loadavg[0]}, at end {bench.loadavg[-1]} "
        "(anything above ~1 at the start means other work shared the 2 cores)",
        "- Load: throughput from `smtp-source -F FILE -d -s N -m COUNT` (Postfix's C load "
        "generator), counted at smtp-sink; p50/p99 from `bench/load.py` (Python, uvloop), "
        "one transaction = MAIL FROM .. final reply to `.`; the rows of one size and "
        "concurrency are measured in interleaved *rounds*, throughput and latency alike "
        "(each round runs every row in turn, starting one row further on each time; each "
        "load.py run starts with one untimed message per session), so that they share the "
        "machine's quiet and busy moments; *rounds* below: throughput/latency",
        "- msgs/s: messages arrived at the sink per second (Postfix: until its queue drained); "
        "× pass-through and × Postfix: this row's msgs/s divided by theirs (> 1: faster)",
        "- peak RSS: VmHWM of the proxy process over the throughput rounds of the cell (Postfix: "
        "peak of the summed PSS of all its processes, sampled every 0.2 s); CPU ms/msg: CPU "
        "time of the proxy (all Postfix processes) per message of that step",
    ]
    if bench.postfix_note:
        lines.append(f"- {bench.postfix_note}")
    lines += [f"- {line}" for line in bench.preflight]
    if bench.skipped:
        lines.append(
            f"- **Skipped** (the run's {mode.run_budget_s:.0f} s budget was spent): "
            + ", ".join(bench.skipped)
        )
    lines.append("")
    for plan in mode.sizes:
        cells = bench.cells.get(plan.label, [])
        if not cells:
            continue
        size = messages.by_size(plan.label, clinic.ordinary_sender(), ORDINARY_RCPT).size
        lines += [
            f"## {plan.title} ({size:,} bytes on the wire)",
            "",
            "| row | sessions | msgs/s | p50 ms | p99 ms | peak RSS MB | CPU ms/msg "
            "| × pass-through | × Postfix | load.py msgs/s | n (rate/latency) | rounds | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for sessions in plan.counts:
            group = [c for c in cells if c.sessions == sessions]
            ref_pt = next((c.rate for c in group if c.row == "pass-through"), math.nan)
            ref_pf = next((c.rate for c in group if c.row == "Postfix"), math.nan)
            for c in group:
                lines.append(
                    f"| {c.row} | {c.sessions} | {fmt(c.rate)} | {fmt(c.p50_ms, 2)} "
                    f"| {fmt(c.p99_ms, 2)} | {fmt(c.rss_mb)} | {fmt(c.cpu_ms, 2)} "
                    f"| {ratio(c.rate, ref_pt)} | {ratio(c.rate, ref_pf)} "
                    f"| {fmt(c.client_rate)} | {c.tp_n}/{c.lat_n} "
                    f"| {c.tp_rounds}/{c.lat_rounds} | {'; '.join(c.notes)} |"
                )
        lines.append("")
    if bench.linear:
        lines += [
            "## Linear cost (1 session, multipart/mixed with base64 attachments)",
            "",
            "| row | size | messages | s/msg | ms per MB | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for item in bench.linear:
            lines.append(
                f"| {item['row']} | {item['size'] / MIB:.0f} MB | {item['n']} "
                f"| {fmt(item['s_per_msg'], 3)} | {fmt(item['s_per_mb'] * 1000, 1)} "
                f"| {fmt(item['rss_mb'])} |"
            )
        lines += ["", "A flat *ms per MB* down a row means the cost is linear in the size.", ""]
    if bench.budget:
        lines += ["## Memory budget", ""]
        if not bench.inflight_key:
            lines += [
                "`listen.max_inflight_bytes` is not in this mssgate's schema yet: no budget set.",
                "",
            ]
        for b in bench.budget:
            codes = b["codes"]
            others = {c: n for c, n in codes.items() if c not in ("250", "452")}
            limit = (
                f"`listen.max_inflight_bytes: {b['limit'] / MIB:.1f} MiB`"
                if bench.inflight_key
                else "no budget"
            )
            lines += [
                f"- {limit}: {b['sessions']} sessions, one {b['size'] / MIB:.1f} MB message "
                f"each ({b['sessions'] * b['size'] / MIB:.0f} MiB in all), started together "
                f"(ordinary mail): mssgate peak RSS **{b['peak_rss_mb']:.0f} MB** (before: "
                f"{b['rss_before_mb']:.0f} MB); **{codes.get('250', 0)}× 250**, "
                f"**{codes.get('452', 0)}× 452**"
                + (f", others {others}" if others else "")
                + f"; {b['seconds']:.1f} s"
                + (" (capped)" if b["timed_out"] else "")
                + "."
            ]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder under /var/tmp (Postfix's maillog must live under /var)."""
    path = Path(tempfile.mkdtemp(prefix="mssgate-bench-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report and write bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (< 90 s)")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--sizes",
        help="only these sizes, comma-separated (2k,100k,5m): a partial run while working on "
        "one size; the report says so and skips the linear-cost and memory-budget runs",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    mode = QUICK if args.quick else FULL
    if args.sizes:
        wanted = {s.strip() for s in args.sizes.split(",") if s.strip()}
        unknown = wanted - {plan.label for plan in mode.sizes}
        if unknown:
            parser.error(f"unknown size(s): {', '.join(sorted(unknown))}")
        mode = dataclasses.replace(
            mode, sizes=tuple(p for p in mode.sizes if p.label in wanted), partial=True
        )
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    procs = Processes()
    with workdir() as work:
        bench = Bench(mode, work, procs)
        try:
            bench.run()
        finally:
            if bench.postfix is not None:
                bench.postfix.stop()
            procs.stop_all()
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix="mssgate-bench-logs-", dir="/var/tmp"))
                for log in work.glob("*.log"):
                    shutil.copy(log, kept)
                print(f"logs kept in {kept}", file=sys.stderr)
    bench.loadavg.append(loadavg())
    text = report(bench, started, time.monotonic() - began)
    print(text)
    Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
