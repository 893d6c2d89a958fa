"""A private, throw-away Postfix instance on 127.0.0.1 for the real-peer tests.

Debian's ``postfix`` package is installed without configuration and never started as a
service; each test starts its own instance with its own configuration, queue and data
directories and log file under a test folder, relaying everything to one ``relayhost`` (mssgate):

- ``main.cf``: the compose deployment's ``deploy/postfix/main.cf`` (``mydestination =``, no DNS:
  ``disable_dns_lookups``, ``smtp_host_lookup = native``...), with this instance's folders,
  ``inet_interfaces = 127.0.0.1``, ``mynetworks = 127.0.0.0/8``, ``relayhost =
  [127.0.0.1]:PORT`` (brackets: no MX look-up) and ``maillog_file`` under the instance folder
  (Postfix 3.4+ ``postlogd``: no syslog needed);
- ``master.cf``: ``deploy/postfix/master.cf`` (nothing chrooted) with its listeners replaced by
  one smtpd on a free loopback port.

Postfix accepts ``-c DIR`` from root without ``alternate_config_directories`` (that list, in the
*default* main.cf, is only consulted by the set-gid commands ``postdrop``/``postqueue`` run by
other users); ``postfix -c DIR check`` creates the queue's sub-directories and checks ownership,
``postfix -c DIR start`` starts ``master``. :meth:`PostfixInstance.stop` runs ``postfix stop``
and then waits for the master process (its PID from ``pid/master.pid``) to be gone, killing it
by that PID only as a last resort.

The instance folder lives in a fresh ``0o755`` temporary directory (pytest's ``tmp_path`` is
under a ``0o700`` folder that the ``postfix`` user could not traverse); its path is recorded in
the caller's ``tmp_path`` as ``postfix-instance.txt``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.smtp_peers import LOOPBACK, free_port, have, program_path

DEPLOY_POSTFIX = Path(__file__).resolve().parents[1] / "deploy" / "postfix"


def read_main_cf(path: Path) -> dict[str, str]:
    """``name = value`` pairs of a main.cf (comments dropped, continuation lines joined)."""
    params: dict[str, str] = {}
    name: str | None = None
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and name is not None:
            params[name] = f"{params[name]} {raw.strip()}".strip()
            continue
        key, _, value = raw.partition("=")
        name = key.strip()
        params[name] = value.strip()
    return params


def master_cf_without_listeners(path: Path) -> str:
    """A master.cf without its ``inet`` services (and their ``-o`` lines)."""
    kept: list[str] = []
    skipping = False
    for line in path.read_text().splitlines():
        if line[:1].isspace():
            if not skipping:
                kept.append(line)
            continue
        fields = line.split()
        skipping = len(fields) > 1 and not line.startswith("#") and fields[1] == "inet"
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def available() -> str | None:
    """None when a private Postfix instance can be started here, else the reason why not."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (master binds and drops to 'postfix')"
    for program in ("postfix", "postconf", "postqueue"):
        if not have(program):
            return f"{program} is not installed (Debian package postfix: scripts/system-deps.sh)"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user (the Debian package creates it)"
    return None


@dataclass
class QueuedMessage:
    """One message in the instance's queue, as ``postqueue -j`` reports it."""

    queue_id: str
    queue_name: str
    sender: str
    recipients: list[str]


class PostfixInstance:
    """A private Postfix relaying everything to ``[127.0.0.1]:relay_port``.

    Use as a context manager (sync): ``with PostfixInstance(tmp_path, port) as postfix: ...``.
    """

    def __init__(
        self,
        record_dir: Path,
        relay_port: int,
        *,
        hostname: str = "relais.structure.test",
        extra_main: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mssgate-postfix-"))
        os.chmod(self.root, 0o755)
        (record_dir / "postfix-instance.txt").write_text(f"{self.root}\n")
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.relay_port = relay_port
        self.hostname = hostname
        self.port = free_port()
        self.extra_main = extra_main or {}
        self.master_pid: int | None = None
        self.start_seconds = 0.0

    # -- configuration ------------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """deploy/postfix/main.cf with this instance's folders, addresses and ports."""
        params = read_main_cf(DEPLOY_POSTFIX / "main.cf")
        params.update(
            {
                "config_directory": str(self.config_dir),
                "queue_directory": str(self.queue_dir),
                "data_directory": str(self.data_dir),
                "mail_owner": "postfix",
                "setgid_group": "postdrop",
                "myhostname": self.hostname,
                "inet_interfaces": LOOPBACK,
                "mynetworks": "127.0.0.0/8",
                "relayhost": f"[{LOOPBACK}]:{self.relay_port}",
                "maillog_file": str(self.maillog),
                # Postfix writes a maillog_file only under these prefixes (default /var,
                # /dev/stdout); otherwise every command exits 1 and says nothing.
                "maillog_file_prefixes": str(self.root),
                # Retry quickly in tests (a 4xx from mssgate leaves the message queued).
                "queue_run_delay": "5s",
                "minimal_backoff_time": "5s",
                "maximal_backoff_time": "10s",
            }
        )
        params.update(self.extra_main)
        return params

    def write_config(self) -> None:
        """Write main.cf and master.cf and create the directories Postfix expects."""
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o755)
        os.chmod(self.queue_dir, 0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")
        lines = [f"{key} = {value}" for key, value in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        smtpd = f"{LOOPBACK}:{self.port} inet n - n - - smtpd\n"
        master = master_cf_without_listeners(DEPLOY_POSTFIX / "master.cf")
        (self.config_dir / "master.cf").write_text(smtpd + master)
        for name in ("main.cf", "master.cf"):
            os.chmod(self.config_dir / name, 0o644)

    # -- commands -----------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        return subprocess.run(
            [program_path(args[0]), "-c", str(self.config_dir), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def postconf(self, name: str) -> str:
        """The value of one parameter as this instance sees it."""
        return self._run("postconf", "-h", name).stdout.strip()

    def start(self, timeout: float = 60) -> None:
        """``postfix check`` then ``postfix start``; returns when smtpd answers its banner."""
        began = time.monotonic()
        self.write_config()
        for step in (("postfix", "check"), ("postfix", "start")):
            result = self._run(*step, timeout=timeout)
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(step)} failed ({result.returncode}): {result.stderr}{self.log()}"
                )
        deadline = time.monotonic() + timeout
        pid_file = self.queue_dir / "pid" / "master.pid"
        while time.monotonic() < deadline:
            if self.master_pid is None and pid_file.exists():
                with contextlib.suppress(ValueError):
                    self.master_pid = int(pid_file.read_text().split()[0])
            if self.master_pid is not None and self._banner():
                self.start_seconds = time.monotonic() - began
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Postfix did not answer on {LOOPBACK}:{self.port}\n{self.log()}")

    def _banner(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
                sock.settimeout(5)
                greeting = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                return greeting.startswith(b"220")
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        """``postfix stop``; wait for the master PID to end (SIGKILL by that PID if it hangs)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run("postfix", "stop", timeout=timeout)
        pid = self.master_pid
        if pid is not None:
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)

    def cleanup(self) -> None:
        """Remove the instance's folder (after :meth:`stop`)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()

    # -- observation --------------------------------------------------------------------------

    def log(self) -> str:
        """The instance's mail log so far ('' before the first line)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue(self) -> list[QueuedMessage]:
        """The messages in the queue (``postqueue -j``)."""
        import json

        result = self._run("postqueue", "-j", timeout=30)
        messages = []
        for line in result.stdout.splitlines():
            if line.strip():
                item = json.loads(line)
                messages.append(
                    QueuedMessage(
                        item["queue_id"],
                        item["queue_name"],
                        item["sender"],
                        [r["address"] for r in item["recipients"]],
                    )
                )
        return messages

    def log_lines(self, pattern: str) -> list[str]:
        """The log lines matching a regular expression."""
        regex = re.compile(pattern)
        return [line for line in self.log().splitlines() if regex.search(line)]


def _alive(pid: int) -> bool:
    """True while a process exists (a zombie of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
