"""A misbehaving upstream SMTP server for the fault-injection suite, on 127.0.0.1 only.

:class:`FaultyUpstream` speaks SMTP with plain asyncio streams, so that it can misbehave at any
byte: be slow at a stage, answer 4xx/5xx at MAIL, at RCPT (per recipient), at the DATA command
or after the final dot, drop the connection at a stage or in the middle of the DATA payload
(after N bytes), or accept.

It behaves like a *careful* MTA: a message is recorded in :attr:`FaultyUpstream.committed`
(envelope and dot-unstuffed bytes) only when the final ``250`` was written on a connection the
client had not hung up. A client that went away while the upstream was thinking after the dot
leaves nothing behind.

``FaultyUpstream(down=True)`` is an upstream that is down: a port that was free a moment ago
and on which nothing listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Literal

from tests.smtp_peers import LOOPBACK, free_port

Stage = Literal["greeting", "ehlo", "mail", "rcpt", "data", "payload", "after_dot", "quit"]
"""Where a fault strikes: before the banner, at EHLO/HELO, MAIL, RCPT, the DATA command, while
reading the payload (``drop_at`` only), after the final dot before the final reply, or at QUIT
(after the message was committed)."""


@dataclass
class Faults:
    """How a :class:`FaultyUpstream` misbehaves; the default accepts everything promptly."""

    delay: dict[Stage, float] = field(default_factory=dict)
    """Seconds to wait before answering at a stage (``payload`` is not used)."""
    drop_at: Stage | None = None
    """Close the connection at this stage instead of answering."""
    drop_after_bytes: int = 0
    """With ``drop_at="payload"``: close after this many bytes of DATA payload."""
    mail_reply: str | None = None
    """Reply to every MAIL FROM instead of 250 (e.g. ``"451 4.3.0 busy"``)."""
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    """Reply to RCPT TO for these (lower-cased) addresses instead of 250."""
    data_reply: str | None = None
    """Reply to the DATA command instead of 354."""
    final_reply: str | None = None
    """Reply after the final dot instead of 250 (nothing is committed)."""


@dataclass(frozen=True)
class Committed:
    """One message the upstream accepted with a final 250 that reached an open connection."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int


class _Peer:
    """The client side of one connection: a line reader with its own buffer, and the writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        try:
            chunk = await self.reader.read(65536)
        except (ConnectionError, OSError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def readline(self) -> bytes | None:
        """The next line with its ending, or None once the client hung up."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if self.eof or not await self._fill():
                return None

    async def hold(self, seconds: float) -> bool:
        """Wait ``seconds`` while buffering what the client sends; False if it hung up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.eof:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._fill()
            except TimeoutError:
                break
        return await self.still_there()

    async def still_there(self) -> bool:
        """Poll the connection without blocking: False when the client has hung up."""
        if not self.eof and not self.writer.is_closing():
            poll = asyncio.ensure_future(self._fill())
            for _ in range(3):
                await asyncio.sleep(0)
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
        return not self.eof and not self.writer.is_closing()

    async def send(self, reply: str) -> bool:
        """Write one reply (several lines joined by ``\\n``); False when it could not be."""
        if self.writer.is_closing():
            return False
        data = "".join(f"{line}\r\n" for line in reply.split("\n")).encode("utf-8")
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return not self.writer.is_closing()

    def drop(self) -> None:
        """Hang up on the client."""
        self.writer.close()


class FaultyUpstream:
    """An SMTP server on 127.0.0.1:0 that misbehaves as :attr:`faults` says.

    ``faults`` may be changed between messages. :attr:`committed` holds what was accepted,
    :attr:`events` what happened (``(connection, event)``), :attr:`connections` the number of
    connections accepted.
    """

    def __init__(self, name: str, faults: Faults | None = None, *, down: bool = False) -> None:
        self.name = name
        self.faults = faults or Faults()
        self.down = down
        self.port = 0
        self.committed: list[Committed] = []
        self.events: list[tuple[int, str]] = []
        self.connections = 0
        self._ids = itertools.count(1)
        self._queue_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultyUpstream:
        if self.down:
            self.port = free_port()
            return self
        self._server = await asyncio.start_server(self._session, host=LOOPBACK, port=0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._sessions):
                task.cancel()
            for task in list(self._sessions):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def quiesce(self, timeout: float = 10.0) -> None:
        """Wait until every connection has ended (a slow session may still commit until then)."""
        async with asyncio.timeout(timeout):
            while self._sessions:
                await asyncio.sleep(0.02)

    def saw(self, event: str) -> int:
        """How many times ``event`` (a command verb such as ``"RSET"``, or an event) happened."""
        return sum(1 for _, e in self.events if e == event)

    # -- the session -------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.connections += 1
        conn = next(self._ids)
        peer = _Peer(reader, writer)
        try:
            await self._converse(conn, peer)
        except (ConnectionError, OSError):
            self.events.append((conn, "connection error"))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._sessions.discard(task)

    async def _stage(self, conn: int, peer: _Peer, stage: Stage) -> bool:
        """Apply the delay and the drop of ``stage``; False when the session is over."""
        delay = self.faults.delay.get(stage, 0.0)
        if delay and not await peer.hold(delay):
            self.events.append((conn, f"client gone while slow at {stage}"))
            return False
        if self.faults.drop_at == stage:
            self.events.append((conn, f"dropped at {stage}"))
            peer.drop()
            return False
        return True

    async def _converse(self, conn: int, peer: _Peer) -> None:
        if not await self._stage(conn, peer, "greeting"):
            return
        await peer.send("220 upstream.test ESMTP faulty")
        mail_from: str | None = None
        rcpts: list[str] = []
        while True:
            line = await peer.readline()
            if line is None:
                self.events.append((conn, "client gone"))
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = text.split(" ", 1)[0].upper()
            self.events.append((conn, verb))
            if verb in ("EHLO", "HELO"):
                if not await self._stage(conn, peer, "ehlo"):
                    return
                if verb == "EHLO":
                    await peer.send(
                        "250-upstream.test\n250-8BITMIME\n250-SMTPUTF8\n250-SIZE 52428800\n"
                        "250 ENHANCEDSTATUSCODES"
                    )
                else:
                    await peer.send("250 upstream.test")
            elif verb == "MAIL":
                if not await self._stage(conn, peer, "mail"):
                    return
                if self.faults.mail_reply:
                    await peer.send(self.faults.mail_reply)
                    continue
                mail_from = _path(text[len("MAIL FROM:") :])
                rcpts = []
                await peer.send("250 2.1.0 Ok")
            elif verb == "RCPT":
                if not await self._stage(conn, peer, "rcpt"):
                    return
                address = _path(text[len("RCPT TO:") :])
                if mail_from is None:
                    await peer.send("503 5.5.1 Error: need MAIL command")
                    continue
                reply = self.faults.rcpt_replies.get(address.lower())
                if reply:
                    await peer.send(reply)
                    continue
                rcpts.append(address)
                await peer.send("250 2.1.5 Ok")
            elif verb == "DATA":
                if not await self._stage(conn, peer, "data"):
                    return
                if mail_from is None or not rcpts:
                    await peer.send("503 5.5.1 Error: need RCPT command")
                    continue
                if self.faults.data_reply:
                    await peer.send(self.faults.data_reply)
                    continue
                await peer.send("354 End data with <CR><LF>.<CR><LF>")
                body = await self._payload(conn, peer)
                if body is None:
                    return
                if not await self._finish(conn, peer, mail_from, rcpts, body):
                    return
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                await peer.send("250 2.0.0 Ok")
            elif verb == "NOOP":
                await peer.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                if not await self._stage(conn, peer, "quit"):
                    return
                await peer.send("221 2.0.0 Bye")
                return
            else:
                await peer.send("502 5.5.2 Error: command not recognized")

    async def _payload(self, conn: int, peer: _Peer) -> bytes | None:
        """Read the DATA payload up to the final dot, unstuffed; None if the session ended."""
        lines: list[bytes] = []
        count = 0
        dropping = self.faults.drop_at == "payload"
        while True:
            line = await peer.readline()
            if line is None:
                self.events.append((conn, "client gone during DATA"))
                return None
            count += len(line)
            if dropping and count >= self.faults.drop_after_bytes:
                self.events.append((conn, "dropped at payload"))
                peer.drop()
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)

    async def _finish(
        self, conn: int, peer: _Peer, mail_from: str, rcpts: list[str], body: bytes
    ) -> bool:
        """After the final dot: reply, and commit only if the 250 reached an open connection."""
        if not await self._stage(conn, peer, "after_dot"):
            return False
        if self.faults.final_reply:
            await peer.send(self.faults.final_reply)
            return True
        if not await peer.still_there():
            self.events.append((conn, "client gone before the final reply: not committed"))
            return False
        queue_id = f"FAULTY{next(self._queue_ids):04d}"
        if not await peer.send(f"250 2.0.0 Ok: queued as {queue_id}"):
            self.events.append((conn, "final 250 not written: not committed"))
            return False
        self.committed.append(Committed(mail_from, tuple(rcpts), body, conn))
        self.events.append((conn, "committed"))
        return True


def _path(argument: str) -> str:
    """The address inside ``<...>`` of a MAIL FROM / RCPT TO argument (parameters ignored)."""
    argument = argument.strip()
    if argument.startswith("<"):
        return argument[1 : argument.find(">")] if ">" in argument else argument[1:]
    return argument.split(" ", 1)[0]
