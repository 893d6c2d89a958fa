"""A private Postfix instance relaying everything to the benchmark's smtp-sink.

Debian's ``postfix`` package is installed without configuration and never started as a
service. This instance lives in its own folder (``etc/`` for ``main.cf``/``master.cf``,
``spool/`` for the queue, ``data/``, and ``maillog``), listens on ``127.0.0.1:<port>`` only and
relays every message to ``[127.0.0.1]:<sink port>``:

- ``master.cf`` is Debian's ``/etc/postfix/master.cf`` with every service un-chrooted (the
  chroot would need a copy of ``/etc`` in the queue folder) and the ``smtp inet`` service bound
  to ``127.0.0.1:<port>``;
- ``main.cf``: ``compatibility_level = 3.6``, ``inet_interfaces = 127.0.0.1``,
  ``mynetworks = 127.0.0.0/8``, ``mydestination =`` (nothing is delivered locally),
  ``relayhost = [127.0.0.1]:<sink port>`` (brackets: no MX look-up), no DNS at all
  (``disable_dns_lookups``, ``smtp_dns_support_level = disabled``, ``smtp_host_lookup =
  native``), ``maillog_file`` (postlogd, no syslog); everything else is Postfix's default
  (queue on disk with fsync, ``in_flow_delay``, 20 parallel deliveries to the relayhost,
  connection caching to it).

Postfix accepts ``-c DIR`` from root without ``alternate_config_directories`` (only the
set-gid ``postdrop``/``postqueue`` consult it); ``postfix -c DIR check`` creates the queue's
sub-directories with their owners; ``data_directory`` must belong to ``postfix``.
:meth:`PostfixRelay.stop` runs ``postfix -c DIR stop``, then waits for the master (its PID from
``spool/pid/master.pid``) to exit and kills that PID only as a last resort.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
LOOPBACK = "127.0.0.1"


def unavailable_reason() -> str | None:
    """None when a private Postfix can run here, else why not."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    if not Path(POSTFIX).exists():
        return "postfix is not installed (bash scripts/system-deps.sh)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    if not Path("/etc/postfix/master.cf").exists():
        return "/etc/postfix/master.cf is missing"
    return None


def _master_cf(port: int) -> str:
    """Debian's master.cf, un-chrooted, with smtpd on 127.0.0.1:``port``."""
    out: list[str] = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line[:1].isalnum() and len(fields) >= 8:
            if fields[4] == "y":
                fields[4] = "n"
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{LOOPBACK}:{port}"
            line = "  ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


class PostfixRelay:
    """One private Postfix relay; ``start()``/``stop()``, or a ``with`` block."""

    def __init__(self, root: Path, port: int, sink_port: int) -> None:
        self.root = root
        self.port = port
        self.sink_port = sink_port
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self.master_pid: int | None = None
        self._log_offset = 0
        self._sent = 0

    def main_cf(self) -> dict[str, str]:
        """The parameters written to main.cf."""
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.localdomain",
            "mydomain": "bench.localdomain",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "local_transport": "error:5.1.1 no local delivery on this relay",
            "relayhost": f"[{LOOPBACK}]:{self.sink_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.root}",
            "message_size_limit": str(64 * 1024 * 1024),
            "smtpd_client_connection_count_limit": "200",
            "smtpd_client_message_rate_limit": "0",
        }

    def write_config(self) -> None:
        """Create the folders and write main.cf and master.cf."""
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(_master_cf(self.port))

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 30.0) -> None:
        """Configure, check (creates the queue folders) and start; wait for the listener."""
        self.write_config()
        checked = self._postfix("check")
        if checked.returncode != 0:
            raise RuntimeError(f"postfix check failed: {checked.stderr.strip()}")
        started = self._postfix("start")
        if started.returncode != 0:
            raise RuntimeError(f"postfix start failed: {started.stderr.strip()} {self.log_tail()}")
        pid_file = self.queue_dir / "pid" / "master.pid"
        stop_at = time.monotonic() + timeout
        while time.monotonic() < stop_at:
            with contextlib.suppress(OSError, ValueError):
                self.master_pid = int(pid_file.read_text().strip())
            if self.master_pid and _port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """``postfix stop``; wait for the master to exit; kill its PID as a last resort."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self._postfix("stop", timeout=timeout)
        if self.master_pid is None:
            return
        stop_at = time.monotonic() + timeout
        while time.monotonic() < stop_at and _alive(self.master_pid):
            time.sleep(0.1)
        if _alive(self.master_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master_pid, signal.SIGKILL)
        self.master_pid = None

    def __enter__(self) -> PostfixRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sent_count(self) -> int:
        """Deliveries the sink accepted (``status=sent`` lines in the maillog so far)."""
        try:
            with self.maillog.open("rb") as log:
                log.seek(self._log_offset)
                chunk = log.read()
        except OSError:
            return self._sent
        end = chunk.rfind(b"\n") + 1
        self._sent += chunk[:end].count(b" status=sent ")
        self._log_offset += end
        return self._sent

    def deferred_or_bounced(self) -> int:
        """Deliveries that did not reach the sink (``status=deferred`` or ``bounced``)."""
        try:
            text = self.maillog.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r" status=(?:deferred|bounced) ", text))

    def pids(self) -> list[int]:
        """The master and its children (smtpd, cleanup, qmgr, smtp, ...)."""
        if self.master_pid is None:
            return []
        children = [self.master_pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                ppid = int(text.rsplit(")", 1)[1].split()[1])
                if ppid == self.master_pid:
                    children.append(int(stat.parent.name))
        return children

    def version(self) -> str:
        """Postfix's version (``mail_version``)."""
        done = subprocess.run(
            ["postconf", "-c", str(self.config_dir), "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip() or "?"

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the instance's maillog."""
        try:
            return " | ".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0
