"""The latency load client: plain SMTP (no pipelining) over raw asyncio sockets, many sessions.

Each session connects, reads the banner, says EHLO, then sends its share of the messages on
that one connection (``MAIL FROM`` (with ``SIZE=`` when offered), ``RCPT TO``, ``DATA``, the
message, ``.``) and times every transaction from the moment ``MAIL FROM`` is written to the
moment the final reply to ``.`` is read. A refused transaction (4xx/5xx at any step) is
counted by its reply code and followed by ``RSET``. With ``barrier``, every session waits until
all are connected before the first ``MAIL FROM`` (the memory-budget run: N messages in flight
at once). With ``warmup``, each session first sends that many untimed messages.

Run as ``python bench/load.py --port N --message FILE --mail-from A --rcpt B --sessions S
--count M [--warmup W]``: the result is one JSON object on stdout (durations in seconds, codes,
elapsed). Every wait is bounded: ``--timeout`` per reply, ``--deadline`` for the whole run
(when it passes, transactions under way are abandoned, ``timed_out`` is true and only the
transactions that finished are reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class SMTPError(Exception):
    """An unexpected reply; ``code`` is its three-digit code (0: connection lost)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code


@dataclass
class LoadResult:
    """What one load run measured."""

    durations: list[float] = field(default_factory=list)
    """Seconds per accepted transaction, MAIL FROM written to final 250 read."""
    codes: Counter[int] = field(default_factory=Counter)
    """Final reply code of every attempted transaction (0: connection lost or timed out)."""
    elapsed: float = 0.0
    """Seconds from the first MAIL FROM (after the barrier, if any) to the last reply."""
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    warmed: int = 0
    """Untimed transactions accepted first (``warmup`` per session), not in ``codes``."""

    @property
    def accepted(self) -> int:
        """Transactions answered 250."""
        return self.codes.get(250, 0)

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable form."""
        return {
            "durations": self.durations,
            "codes": {str(k): v for k, v in self.codes.items()},
            "elapsed": self.elapsed,
            "errors": self.errors[:20],
            "timed_out": self.timed_out,
            "warmed": self.warmed,
        }


async def read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply: its code and its last line's text."""
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise SMTPError(0, "connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
        if len(lines) > 100:
            raise SMTPError(0, "reply too long")
    last = lines[-1].decode("ascii", "replace").rstrip()
    try:
        return int(last[:3]), last[4:]
    except ValueError:
        raise SMTPError(0, f"bad reply {last!r}") from None


class Session:
    """One SMTP connection sending messages one after the other."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.size_offered = False

    @classmethod
    async def open(cls, port: int, timeout: float) -> Session:
        """Connect, read the banner, EHLO."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port, limit=1 << 20), timeout
        )
        session = cls(reader, writer)
        code, text = await read_reply(reader, timeout)
        if code != 220:
            raise SMTPError(code, text)
        writer.write(b"EHLO load.bench.localdomain\r\n")
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise SMTPError(0, "connection closed after EHLO")
            lines.append(line)
            if line[3:4] != b"-":
                break
        if not lines[-1].startswith(b"250"):
            raise SMTPError(int(lines[-1][:3] or b"0"), "EHLO refused")
        session.size_offered = any(line[4:8].upper() == b"SIZE" for line in lines)
        return session

    async def command(self, line: bytes, timeout: float) -> tuple[int, str]:
        """Send one command line and read its reply."""
        self.writer.write(line)
        return await read_reply(self.reader, timeout)

    async def send(
        self, mail_from: str, rcpt: str, wire: bytes, timeout: float
    ) -> tuple[int, float]:
        """One transaction: its final reply code and its duration in seconds."""
        size = f" SIZE={len(wire) + 3}" if self.size_offered else ""
        start = time.perf_counter()
        code, _ = await self.command(f"MAIL FROM:<{mail_from}>{size}\r\n".encode(), timeout)
        if code == 250:
            code, _ = await self.command(f"RCPT TO:<{rcpt}>\r\n".encode(), timeout)
        if code == 250:
            code, _ = await self.command(b"DATA\r\n", timeout)
            if code == 354:
                self.writer.write(wire)
                self.writer.write(b".\r\n")
                await asyncio.wait_for(self.writer.drain(), timeout)
                code, _ = await read_reply(self.reader, timeout)
        duration = time.perf_counter() - start
        if code != 250:
            rset, _ = await self.command(b"RSET\r\n", timeout)
            if rset != 250:
                raise SMTPError(rset, "RSET refused")
        return code, duration

    async def close(self) -> None:
        """QUIT (best effort) and close the socket."""
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(read_reply(self.reader, 2.0), 2.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


async def run_load(
    port: int,
    wire: bytes,
    mail_from: str,
    rcpt: str,
    *,
    sessions: int,
    count: int,
    timeout: float = 120.0,
    deadline: float = 300.0,
    barrier: bool = False,
    warmup: int = 0,
) -> LoadResult:
    """Send ``count`` messages over ``sessions`` parallel sessions (shares fixed up front),
    each session first sending ``warmup`` untimed ones (a fresh connection's first
    transactions are not the steady state the percentiles describe)."""
    result = LoadResult()
    shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    connected = 0
    all_connected = asyncio.Event()
    stop_at = time.monotonic() + deadline
    start_box: list[float] = []

    async def one(share: int) -> None:
        nonlocal connected
        session: Session | None = None
        try:
            session = await Session.open(port, timeout)
        except (OSError, TimeoutError, SMTPError) as exc:
            result.errors.append(f"connect: {exc!r}")
            result.codes[getattr(exc, "code", 0)] += share
            return
        finally:
            connected += 1
            if connected == sessions:
                all_connected.set()
        try:
            if barrier:
                await asyncio.wait_for(all_connected.wait(), timeout)
            for _ in range(warmup):
                try:
                    code, _ = await session.send(mail_from, rcpt, wire, timeout)
                except (OSError, TimeoutError, SMTPError) as exc:
                    result.errors.append(f"warm-up: {exc!r}")
                    result.codes[getattr(exc, "code", 0)] += share
                    return
                if code != 250:
                    result.errors.append(f"warm-up: {code}")
                    result.codes[code] += share
                    return
                result.warmed += 1
            if not start_box:
                start_box.append(time.perf_counter())
            for _ in range(share):
                if time.monotonic() > stop_at:
                    break
                try:
                    code, duration = await session.send(mail_from, rcpt, wire, timeout)
                except (OSError, TimeoutError, SMTPError) as exc:
                    result.errors.append(f"send: {exc!r}")
                    result.codes[getattr(exc, "code", 0)] += 1
                    return
                result.codes[code] += 1
                if code == 250:
                    result.durations.append(duration)
        finally:
            await session.close()

    tasks = [asyncio.create_task(one(share)) for share in shares if share > 0]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    end = time.perf_counter()
    if pending:
        result.timed_out = True
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=10)
    if start_box:
        result.elapsed = end - start_box[0]
    return result


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def install_uvloop() -> bool:
    """Use uvloop's event loop when it is installed (the client then costs less CPU)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> int:
    """Command line: run one load and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--message", required=True, help="message file (LF line endings)")
    parser.add_argument("--mail-from", required=True)
    parser.add_argument("--rcpt", required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--barrier", action="store_true")
    parser.add_argument("--warmup", type=int, default=0, help="untimed messages per session")
    args = parser.parse_args(argv)
    install_uvloop()
    from messages import Message  # a sibling module: this file runs as a script

    raw = Path(args.message).read_bytes()
    wire = Message("file", args.mail_from, args.rcpt, raw).wire()
    result = asyncio.run(
        run_load(
            args.port,
            wire,
            args.mail_from,
            args.rcpt,
            sessions=args.sessions,
            count=args.count,
            timeout=args.timeout,
            deadline=args.deadline,
            barrier=args.barrier,
            warmup=args.warmup,
        )
    )
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
