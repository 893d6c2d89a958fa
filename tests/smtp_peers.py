"""Real SMTP peers for the integration tests, all on 127.0.0.1.

- :class:`CaptureUpstream`: an aiosmtpd server in the test's own loop that records every message
  it accepts and can be told to refuse, delay or drop (an upstream MSSanté operator or ISP);
- :class:`SmtpSink`: Postfix's ``smtp-sink`` as a separate process, dumping each message;
- :func:`send`: Python's smtplib, run in a thread so the gateway keeps serving in the loop;
- :func:`swaks`: the ``swaks`` client as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

LOOPBACK = "127.0.0.1"


@dataclass
class Received:
    """One message an upstream accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    at: float


@dataclass
class Behaviour:
    """What the capture upstream answers (None: accept)."""

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    drop_on_data: bool = False


class _CaptureHandler:
    def __init__(self, upstream: CaptureUpstream) -> None:
        self.upstream = upstream

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.upstream.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.upstream.behaviour.mail_reply:
            return self.upstream.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.upstream.behaviour.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        behaviour = self.upstream.behaviour
        if behaviour.drop_on_data:
            server.transport.close()
            return "421 4.4.0 dropped"
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        if behaviour.data_reply:
            return behaviour.data_reply
        if session.ssl is not None:
            self.upstream.tls_sessions += 1
        self.upstream.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                time.monotonic(),
            )
        )
        return "250 2.0.0 Ok: queued as CAPTURE"


class CaptureUpstream:
    """An upstream SMTP server in the current loop that records what it accepts."""

    def __init__(
        self,
        *,
        smtputf8: bool = True,
        tls_context: ssl.SSLContext | None = None,
        pipelining: bool = False,
    ) -> None:
        self.pipelining = pipelining
        """Offer PIPELINING in the EHLO reply (aiosmtpd reads pipelined commands anyway)."""
        self.reads: list[bytes] = []
        """Every chunk of bytes the upstream read, in order (what was sent in one write)."""
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self.smtputf8 = smtputf8
        self.tls_context = tls_context
        self.tls_sessions = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CaptureUpstream:
        loop = asyncio.get_running_loop()
        handler = _CaptureHandler(self)
        reads = self.reads

        class _Recording(SMTP):
            def data_received(self, data: bytes) -> None:
                reads.append(data)
                super().data_received(data)

        self._server = await loop.create_server(
            lambda: _Recording(
                handler,
                decode_data=False,
                enable_SMTPUTF8=self.smtputf8,
                hostname="upstream.test",
                tls_context=self.tls_context,
                require_starttls=self.tls_context is not None,
            ),
            host=LOOPBACK,
            port=0,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@dataclass
class SendResult:
    """What an smtplib client saw."""

    refused: dict[str, tuple[int, bytes]]
    error: smtplib.SMTPException | None
    at: float

    @property
    def code(self) -> int | None:
        """The final SMTP code of a failed transaction, or 250."""
        if self.error is None:
            return 250
        if isinstance(self.error, smtplib.SMTPRecipientsRefused):
            return next(iter(self.error.recipients.values()))[0]
        return getattr(self.error, "smtp_code", None)

    @property
    def text(self) -> str:
        """The final error text (decoded), or '' when accepted."""
        err = self.error
        if err is None:
            return ""
        raw = getattr(err, "smtp_error", b"")
        if isinstance(err, smtplib.SMTPRecipientsRefused):
            raw = b" | ".join(v[1] for v in err.recipients.values())
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _send_blocking(
    port: int,
    mail_from: str,
    rcpts: Sequence[str],
    message: bytes,
    mail_options: Sequence[str],
) -> SendResult:
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.ehlo("client.test")
        try:
            refused = client.sendmail(mail_from, list(rcpts), message, list(mail_options))
            return SendResult(dict(refused), None, time.monotonic())
        except smtplib.SMTPException as exc:
            return SendResult({}, exc, time.monotonic())


async def send(
    port: int,
    mail_from: str,
    rcpts: Sequence[str],
    message: bytes,
    mail_options: Sequence[str] = (),
) -> SendResult:
    """Send with Python's smtplib (in a thread: the gateway runs in this loop)."""
    return await asyncio.to_thread(_send_blocking, port, mail_from, rcpts, message, mail_options)


def have(program: str) -> bool:
    """True when an external program is installed (PATH or /usr/sbin)."""
    return shutil.which(program) is not None or Path("/usr/sbin", program).exists()


def program_path(program: str) -> str:
    """The path of an external program (PATH or /usr/sbin)."""
    return shutil.which(program) or str(Path("/usr/sbin", program))


async def swaks(port: int, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run swaks against 127.0.0.1:port; returns its exit code and its transcript."""
    proc = await asyncio.create_subprocess_exec(
        program_path("swaks"),
        "--server",
        LOOPBACK,
        "--port",
        str(port),
        "--helo",
        "client.test",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode("utf-8", "replace")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1, dumping each message to a file in a temp dir."""

    def __init__(self, *extra: str) -> None:
        self.extra = extra
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="mssgate-sink-"))
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> SmtpSink:
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [
                program_path("smtp-sink"),
                *user,
                "-h",
                "sink.test",
                "-d",
                str(self.dir / "%Y%m%d%H%M%S."),
                *self.extra,
                f"{LOOPBACK}:{self.port}",
                "50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return self
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def messages(self) -> list[bytes]:
        """The dumped transactions (envelope lines, then the message)."""
        return [p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()]

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_for(condition: Callable[[], bool], timeout: float = 30) -> bool:
    """Poll ``condition`` while the loop serves the gateway; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()
