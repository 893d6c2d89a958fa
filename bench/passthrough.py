"""The baseline: a bare SMTP pass-through proxy built from the same stock libraries as mssgate.

aiosmtpd's ``SMTP`` protocol served by ``loop.create_server`` (no ``Controller`` thread),
``decode_data=False``, no size limit; ``handle_DATA`` relays the envelope and the bytes as
received with aiosmtplib and answers the client with the upstream's reply, only after the
upstream's 250 (the same contract as mssgate). Upstream connections are kept warm in a pool
and reused (one per concurrent transaction at most); a connection that fails is dropped and
the transaction gets ``451``. No policy, no parsing, no signature: what is left is the cost of
the libraries themselves. uvloop is used when installed.

``python bench/passthrough.py --port N --upstream-port M`` prints ``ready <port>`` on stdout
once listening and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from load import install_uvloop

LOOPBACK = "127.0.0.1"
HOSTNAME = "passthrough.bench.localdomain"


class UpstreamPool:
    """Warm aiosmtplib connections to one upstream, reused across transactions."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self.idle: list[aiosmtplib.SMTP] = []

    async def acquire(self) -> aiosmtplib.SMTP:
        """An idle connection, or a new one."""
        while self.idle:
            client = self.idle.pop()
            if client.is_connected:
                return client
        client = aiosmtplib.SMTP(
            hostname=LOOPBACK,
            port=self.port,
            local_hostname=HOSTNAME,
            timeout=self.timeout,
            use_tls=False,
            start_tls=False,
        )
        await client.connect()
        return client

    def release(self, client: aiosmtplib.SMTP) -> None:
        """Return a healthy connection to the pool."""
        if client.is_connected:
            self.idle.append(client)

    async def close(self) -> None:
        """QUIT every idle connection."""
        for client in self.idle:
            with contextlib.suppress(Exception):
                await client.quit()
        self.idle.clear()


class RelayHandler:
    """aiosmtpd handler: relay every message upstream, reply after the upstream's reply."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Relay ``envelope`` as received; the client gets the upstream's verdict."""
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        try:
            client = await self.pool.acquire()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"451 4.4.1 upstream unreachable: {exc}"
        try:
            errors, reply = await client.sendmail(
                envelope.mail_from or "", list(envelope.rcpt_tos), data
            )
        except aiosmtplib.SMTPResponseException as exc:
            with contextlib.suppress(Exception):
                await client.rset()
            self.pool.release(client)
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            with contextlib.suppress(Exception):
                client.close()
            return f"451 4.4.2 upstream failed: {exc}"
        self.pool.release(client)
        if errors:
            return "451 4.4.3 some recipients refused upstream"
        return f"250 2.0.0 relayed: {reply}"


async def serve(port: int, upstream_port: int) -> None:
    """Listen on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    pool = UpstreamPool(upstream_port)
    handler = RelayHandler(pool)
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return SMTP(
            handler,
            hostname=HOSTNAME,
            ident="mssgate-bench passthrough",
            decode_data=False,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            timeout=300,
        )

    server = await loop.create_server(factory, host=LOOPBACK, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await pool.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    uv = install_uvloop()
    print(f"uvloop {'on' if uv else 'off'}", flush=True)
    asyncio.run(serve(args.port, args.upstream_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
