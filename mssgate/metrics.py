"""Prometheus metrics and the health endpoints (``/metrics``, ``/healthz``, ``/readyz``).

:class:`Metrics` is an observer of the gateway's events (:mod:`mssgate.events`) that keeps
counters and histograms on its own :class:`prometheus_client.CollectorRegistry` (never the
process-wide default one: several instances, e.g. in tests, never collide). Label values are
bounded: actions, stages, rules and routes come from small fixed sets in the code, anything else
becomes ``other``, and no address, login or message-id ever becomes a label.

:class:`MetricsServer` answers HTTP with a small HTTP/1.0-style responder on
:func:`asyncio.start_server`, in the gateway's own event loop, rather than with
``prometheus_client``'s WSGI app on :mod:`wsgiref` in a thread, because:

- ``/healthz`` then proves what it claims: when the gateway's loop is stuck, ``/healthz`` is
  not answered (a thread would go on answering "ok" for a dead gateway);
- :mod:`wsgiref` serves one request at a time, with no bound on how long a client may take to
  send its request: one slow or half-open client would silence the probes and the scrapes.
  Here each connection is a task with a time limit, a size limit on the request line and the
  headers, and a cap on concurrent connections; nothing it does blocks the loop;
- the real port (``port: 0``), start and stop are plain awaits: no thread to join.

Each request is read (request line and headers only; no body is ever read), answered, and the
connection closed. ``/metrics`` is rendered with :func:`prometheus_client.generate_latest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mssgate.events import DecisionEvent
from mssgate.schema import MetricsConfig

log = logging.getLogger("mssgate.metrics")

UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds of one upstream SMTP transaction: a local relay takes milliseconds, a slow
operator tens of seconds; an upstream ``timeout`` is 60 s by default."""

SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(9))
"""Message sizes in bytes: 1 KiB, 4 KiB, 16 KiB ... 64 MiB."""

_ACTIONS = frozenset({"accept", "reject", "tempfail"})
_STAGES = frozenset({"mail", "rcpt", "data"})
_OUTCOMES = frozenset({"ok", "tempfail", "permfail"})
_ROUTES = frozenset({"mssante", "ordinary"})
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
"""What a rule name looks like (``mixed_recipients``, ``upstream``, ``dns_check``...)."""


def _one_of(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


def _rule(rule: str | None) -> str:
    if rule is None:
        return "none"
    return rule if _NAME.fullmatch(rule) else "other"


def _route(routes: tuple[str, ...]) -> str:
    if not routes:
        return "none"
    return "+".join(_one_of(r, _ROUTES) for r in routes)


class Metrics:
    """The gateway's Prometheus metrics; an :class:`mssgate.events.Observer`.

    Every method is a few in-memory increments: quick, non-blocking, thread-safe.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.messages = Counter(
            "mssgate_messages",
            "Messages decided at the end of DATA, by action, rule and route(s).",
            ["action", "rule", "route"],
            registry=r,
        )
        self.refusals = Counter(
            "mssgate_refusals",
            "Refusals (reject or tempfail) at every stage, by stage and rule.",
            ["stage", "rule"],
            registry=r,
        )
        self.signatures = Counter(
            "mssgate_signatures",
            "Messages relayed with the preferred-MSSante-address signature added.",
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "mssgate_upstream_seconds",
            "Duration of upstream SMTP transactions, by route and outcome.",
            ["route", "outcome"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream = Counter(
            "mssgate_upstream",
            "Upstream SMTP transactions, by route and outcome (ok, tempfail, permfail).",
            ["route", "outcome"],
            registry=r,
        )
        self.connections_open = Gauge(
            "mssgate_connections_open",
            "Client SMTP connections open now (within the limits).",
            registry=r,
        )
        self.connections = Counter(
            "mssgate_connections",
            "Client SMTP connections, accepted or refused by a connection limit.",
            ["result"],
            registry=r,
        )
        self.reloads = Counter(
            "mssgate_policy_reloads",
            "Policy reload attempts: ok (new policy in force) or failed (previous one kept).",
            ["result"],
            registry=r,
        )
        self.message_bytes = Histogram(
            "mssgate_message_bytes",
            "Message sizes: as received (in) and as relayed (out, all routes together).",
            ["direction"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        # Series that exist from the start (a rate() over a missing series is no rate at all).
        for result in ("accepted", "refused"):
            self.connections.labels(result=result)
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        for direction in ("in", "out"):
            self.message_bytes.labels(direction=direction)

    # -- Observer ----------------------------------------------------------------------------

    def decision(self, event: DecisionEvent) -> None:
        """Count a decision: every refusal, and every message decided at DATA."""
        action = _one_of(event.action, _ACTIONS)
        rule = _rule(event.rule)
        if action != "accept":
            self._child(self.refusals, _one_of(event.stage, _STAGES), rule).inc()
        if event.stage != "data":
            return
        self._child(self.messages, action, rule, _route(event.routes)).inc()
        self._child(self.message_bytes, "in").observe(event.size_in)
        if action == "accept":
            if event.size_out > 0:
                self._child(self.message_bytes, "out").observe(event.size_out)
            if event.signature_added:
                self.signatures.inc()

    def connection(self, opened: bool, refused: bool = False) -> None:
        """Count a connection opened (or refused by a limit), or closed."""
        if refused:
            self.connections.labels(result="refused").inc()
        elif opened:
            self.connections.labels(result="accepted").inc()
            self.connections_open.inc()
        else:
            self.connections_open.dec()

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        """Count one upstream transaction and its duration."""
        labels = (_one_of(route, _ROUTES), _one_of(outcome, _OUTCOMES))
        self._child(self.upstream, *labels).inc()
        self._child(self.upstream_seconds, *labels).observe(max(0.0, seconds))

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (in the order the labels were declared), kept: the
        library's lookup costs more than the count itself, on every message."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def reload(self, ok: bool) -> None:
        """Count a policy reload attempt."""
        self.reloads.labels(result="ok" if ok else "failed").inc()

    # -- exposition --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of :meth:`Metrics.exposition`."""


class HealthState:
    """What ``/readyz`` answers.

    Set :attr:`ready` to True once the gateway listens with a policy loaded, and back to False
    as soon as shutdown begins (so that a load balancer stops sending before the listener
    closes). ``/healthz`` needs no state: being answered by the gateway's loop is the proof.
    """

    def __init__(self, ready: bool = False) -> None:
        self.ready = ready


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1 << 20
_BUSY_LINGER_SECONDS = 0.2


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class MetricsServer:
    """HTTP endpoint for Prometheus and orchestrators, in the current event loop.

    ``GET /metrics``: the metrics; ``GET /healthz``: 200 ``ok``; ``GET /readyz``: 200 ``ready``
    or 503 ``not ready``; any other path 404; any other method 405. One request per
    connection, read within ``request_timeout`` seconds, with a request line and headers of at
    most ``max_line`` bytes each and ``max_head`` bytes in all; at most ``max_connections``
    connections at once (more are answered 503 at once and closed).
    """

    def __init__(
        self,
        config: MetricsConfig,
        metrics: Metrics,
        health: HealthState,
        *,
        request_timeout: float = 5.0,
        max_line: int = 8192,
        max_head: int = 32768,
        max_connections: int = 64,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.health = health
        self.host = config.host
        self.port = config.port
        self.request_timeout = request_timeout
        self.max_line = max_line
        self.max_head = max_head
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on ``config.host``; :attr:`port` is the real port afterwards."""
        self._server = await asyncio.start_server(
            self._connected, host=self.host, port=self.port, limit=self.max_line
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and end the connections in progress."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ----------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always run as a task by asyncio
            writer.close()
            return
        if len(self._tasks) >= self.max_connections:
            # Answered at once, the request unread; a brief linger lets the client read it.
            writer.write(self._response(503, b"busy\n"))
            with contextlib.suppress(Exception):
                await self._linger(reader, writer, _BUSY_LINGER_SECONDS)
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("metrics endpoint: unexpected error")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                method, path = await self._read_head(reader)
            status, body, content_type = self._answer(method, path)
        except _BadRequest as bad:
            status, body, content_type = bad.status, b"", "text/plain; charset=utf-8"
        except TimeoutError:
            status, body, content_type = 408, b"", "text/plain; charset=utf-8"
        if not body:
            body = (_REASONS[status].lower() + "\n").encode()
        writer.write(self._response(status, body, content_type, allow=status == 405))
        async with asyncio.timeout(self.request_timeout):
            await writer.drain()
        if status >= 400:
            await self._linger(reader, writer, min(_LINGER_SECONDS, self.request_timeout))

    @staticmethod
    async def _linger(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
    ) -> None:
        """Discard what the client is still sending, briefly, before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the error response before the client has read it.
        """
        if not writer.can_write_eof():
            return
        writer.write_eof()
        left = _LINGER_BYTES
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(seconds):
                while left > 0 and (chunk := await reader.read(min(left, 65536))):
                    left -= len(chunk)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """(method, path) of the request; its headers are read (bounded) and ignored."""
        line = await self._line(reader, 414)
        parts = line.split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[0].isalpha():
            raise _BadRequest(400)
        total = len(line)
        while True:
            header = await self._line(reader, 431)
            if not header:
                break
            total += len(header)
            if total > self.max_head:
                raise _BadRequest(431)
        return parts[0], parts[1].split("?", 1)[0]

    async def _line(self, reader: asyncio.StreamReader, too_long: int) -> str:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise _BadRequest(400) from exc
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest(too_long) from exc
        try:
            return raw.decode("ascii").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise _BadRequest(400) from exc

    def _answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if method != "GET":
            return 405, b"", text
        if path == "/metrics":
            return 200, self.metrics.exposition(), CONTENT_TYPE
        if path == "/healthz":
            return 200, b"ok\n", text
        if path == "/readyz":
            return (200, b"ready\n", text) if self.health.ready else (503, b"not ready\n", text)
        return 404, b"", text

    @staticmethod
    def _response(
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        allow: bool = False,
    ) -> bytes:
        head = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(["Allow: GET"] if allow else []),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
