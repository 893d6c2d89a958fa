"""Metrics and health endpoints: a gateway over real SMTP, scraped over real HTTP (127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mssgate.config import load_policy
from mssgate.events import DecisionEvent, Observers
from mssgate.holder import PolicyHolder
from mssgate.metrics import HealthState, Metrics, MetricsServer
from mssgate.model import Route
from mssgate.relay import build_relays
from mssgate.schema import MetricsConfig
from mssgate.server import Gateway
from tests.conftest import make_policy, policy_yaml
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class MetricsStack:
    """A gateway with its two capture upstreams, observed by :class:`Metrics`, and its HTTP."""

    gateway: Gateway
    mssante: CaptureUpstream
    ordinary: CaptureUpstream
    metrics: Metrics
    health: HealthState
    http: MetricsServer


@asynccontextmanager
async def metrics_stack(request_timeout: float = 5.0) -> AsyncIterator[MetricsStack]:
    """As ``tests.conftest.running_stack``, with a :class:`Metrics` observer and its server."""
    metrics = Metrics()
    health = HealthState()
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port)
        routes = {
            Route.MSSANTE: policy.document.routes.mssante,
            Route.ORDINARY: policy.document.routes.ordinary,
        }
        relays = build_relays(routes, "mssgate.test", {})
        gateway = Gateway(
            lambda: policy,
            relays,
            host=LOOPBACK,
            port=0,
            observers=Observers([metrics]),
        )
        http = MetricsServer(
            MetricsConfig(host=LOOPBACK, port=0), metrics, health, request_timeout=request_timeout
        )
        async with http, gateway:
            yield MetricsStack(gateway, mssante, ordinary, metrics, health, http)


def _get_blocking(url: str, method: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, content type, body) of one request with urllib (in a thread)."""
    url = f"http://{LOOPBACK}:{port}{path}"
    return await asyncio.to_thread(_get_blocking, url, method)


async def raw_exchange(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes and read until the server closes (at most 10 s)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(response.split(b" ", 2)[1])


async def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` (scraped over HTTP), keyed by name and sorted labels."""
    status, content_type, body = await http_get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one series name, by labels."""
    return {labels: value for (n, labels), value in samples.items() if n == name}


async def eventually_closed(metrics: Metrics, port: int) -> Samples:
    """Scrape until every SMTP connection was seen closing (at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        samples = await scrape(port)
        if samples[("mssgate_connections_open", ())] == 0 or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def test_counters_over_smtp_and_http() -> None:
    async with metrics_stack() as s:
        ok = await send(s.gateway.port, DR, [GMAIL], message(DR, GMAIL))
        mixed = await send(s.gateway.port, BAL, [CONFRERE, GMAIL], message(BAL, CONFRERE))
        s.ordinary.behaviour.data_reply = "451 4.3.0 try later"
        later = await send(s.gateway.port, DR, [GMAIL], message(DR, GMAIL))
        assert (ok.code, mixed.code, later.code) == (250, 550, 451)
        samples = await eventually_closed(s.metrics, s.http.port)

    assert series(samples, "mssgate_messages_total") == {
        (("action", "accept"), ("route", "ordinary"), ("rule", "none")): 1,
        (("action", "reject"), ("route", "none"), ("rule", "mixed_recipients")): 1,
        (("action", "tempfail"), ("route", "ordinary"), ("rule", "upstream")): 1,
    }
    assert series(samples, "mssgate_refusals_total") == {
        (("rule", "mixed_recipients"), ("stage", "rcpt")): 1,
        (("rule", "mixed_recipients"), ("stage", "data")): 1,
        (("rule", "upstream"), ("stage", "data")): 1,
    }
    assert samples[("mssgate_signatures_total", ())] == 1
    assert series(samples, "mssgate_upstream_total") == {
        (("outcome", "ok"), ("route", "ordinary")): 1,
        (("outcome", "tempfail"), ("route", "ordinary")): 1,
    }
    assert series(samples, "mssgate_upstream_seconds_count") == {
        (("outcome", "ok"), ("route", "ordinary")): 1,
        (("outcome", "tempfail"), ("route", "ordinary")): 1,
    }
    buckets = series(samples, "mssgate_upstream_seconds_bucket")
    assert buckets[(("le", "60.0"), ("outcome", "ok"), ("route", "ordinary"))] == 1
    assert (("le", "0.005"), ("outcome", "ok"), ("route", "ordinary")) in buckets
    assert series(samples, "mssgate_connections_total") == {
        (("result", "accepted"),): 3,
        (("result", "refused"),): 0,
    }
    assert samples[("mssgate_connections_open", ())] == 0
    assert series(samples, "mssgate_message_bytes_count") == {
        (("direction", "in"),): 3,
        (("direction", "out"),): 1,
    }
    size_in = len(message(DR, GMAIL))
    sums = series(samples, "mssgate_message_bytes_sum")
    assert sums[(("direction", "out"),)] > size_in  # signed on the way out
    assert series(samples, "mssgate_policy_reloads_total") == {
        (("result", "ok"),): 0,
        (("result", "failed"),): 0,
    }
    # No address ever becomes a label value.
    for (_name, labels), _value in samples.items():
        assert all("@" not in value for _key, value in labels)


async def test_health_endpoints() -> None:
    async with metrics_stack() as s:
        port = s.http.port
        assert await http_get(port, "/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")
        status, _, body = await http_get(port, "/readyz")
        assert (status, body) == (503, b"not ready\n")
        s.health.ready = True
        status, _, body = await http_get(port, "/readyz?verbose=1")
        assert (status, body) == (200, b"ready\n")
        s.health.ready = False  # shutting down
        assert (await http_get(port, "/readyz"))[0] == 503
        assert (await http_get(port, "/nothing-here"))[0] == 404
        assert (await http_get(port, "/"))[0] == 404
        assert (await http_get(port, "/metrics", "POST"))[0] == 405
        assert (await http_get(port, "/healthz", "DELETE"))[0] == 405
        raw = await raw_exchange(port, b"PUT /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 405 and b"\r\nAllow: GET\r\n" in raw
        # HTTP/1.0 without a Host header, as simple probes send it.
        raw = await raw_exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nok\n")
        assert b"Content-Length: 3\r\n" in raw and b"Connection: close\r\n" in raw


async def test_hostile_requests_are_bounded_and_mail_flows() -> None:
    async with metrics_stack(request_timeout=0.5) as s:
        port = s.http.port
        # Malformed request lines.
        for bad in (
            b"GARBAGE\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/9.9\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ):
            assert status_of(await raw_exchange(port, bad)) == 400, bad
        # A request cut short (the client half-closes before the end of the headers).
        raw = await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost:", close_write=True)
        assert status_of(raw) == 400
        # Oversized request line, oversized header, too many headers.
        huge = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n"
        assert status_of(await raw_exchange(port, huge)) == 414
        big_header = b"GET /metrics HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n"
        assert status_of(await raw_exchange(port, big_header)) == 431
        many = b"GET /metrics HTTP/1.1\r\n" + b"X-A: 1234567890\r\n" * 5000 + b"\r\n"
        assert status_of(await raw_exchange(port, many)) == 431

        # Slow clients (headers never finished, or nothing sent at all) hold connections open
        # while the gateway relays a message and the endpoint answers others.
        slow = [await asyncio.open_connection(LOOPBACK, port) for _ in range(3)]
        for _reader, writer in slow[:2]:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
        began = time.monotonic()
        sent = await send(s.gateway.port, DR, [GMAIL], message(DR, GMAIL))
        assert sent.code == 250 and len(s.ordinary.received) == 1
        assert (await http_get(port, "/healthz"))[0] == 200
        for reader, writer in slow:
            answer = await asyncio.wait_for(reader.read(), 5)
            assert status_of(answer) == 408
            writer.close()
        assert time.monotonic() - began < 5


async def test_connection_cap_and_stop_with_clients_pending() -> None:
    metrics = Metrics()
    server = MetricsServer(
        MetricsConfig(host=LOOPBACK, port=0), metrics, HealthState(), max_connections=2
    )
    await server.start()
    try:
        held = [await asyncio.open_connection(LOOPBACK, server.port) for _ in range(2)]
        await asyncio.sleep(0.05)  # both are being served (waiting for their request)
        busy = await raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status_of(busy) == 503
        for _reader, writer in held:
            writer.close()
        await asyncio.sleep(0.05)
        assert (await http_get(server.port, "/healthz"))[0] == 200
        pending = await asyncio.open_connection(LOOPBACK, server.port)
        await asyncio.sleep(0.05)
    finally:
        began = time.monotonic()
        await server.stop()
        assert time.monotonic() - began < 2  # a pending client does not hold the stop
    assert await asyncio.wait_for(pending[0].read(), 5) == b""
    pending[1].close()


def test_reloads_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml())
    metrics = Metrics()
    holder = PolicyHolder(load_policy(path), path, Observers([metrics]))
    assert holder.reload()
    path.write_text("version: 1\nroutes: {}\n")
    assert not holder.reload()
    assert not holder.reload()

    async def scraped() -> Samples:
        async with MetricsServer(MetricsConfig(host=LOOPBACK, port=0), metrics, HealthState()) as m:
            return await scrape(m.port)

    samples = asyncio.run(scraped())
    assert series(samples, "mssgate_policy_reloads_total") == {
        (("result", "ok"),): 1,
        (("result", "failed"),): 2,
    }


def _event(**changes: object) -> DecisionEvent:
    fields: dict[str, object] = {
        "time": 0.0,
        "session": "s",
        "peer": "('127.0.0.1', 1)",
        "user": None,
        "stage": "data",
        "sender": DR,
        "recipients": ((GMAIL, "ordinary"),),
        "action": "accept",
        "rule": None,
        "smtp_code": 250,
        "enhanced_code": "2.0.0",
        "routes": ("mssante", "ordinary"),
        "upstream": None,
        "size_in": 2000,
        "size_out": 5000,
        "message_id": None,
        "signature_added": False,
        "duration": 0.1,
    }
    fields.update(changes)
    return DecisionEvent(**fields)  # type: ignore[arg-type]


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_labels_stay_bounded_and_registries_are_separate() -> None:
    first, second = Metrics(), Metrics()  # the default registry would refuse a second one
    first.decision(_event())
    first.decision(_event(stage="rcpt", action="reject", rule="Evil rule x@y.fr", routes=()))
    first.decision(_event(stage="mail", action="tempfail", rule="client", routes=()))
    first.decision(_event(action="weird", rule=GMAIL, routes=("elsewhere",)))
    first.relay("mars", -1.0, "exploded")
    first.connection(True, refused=True)
    first.connection(True)
    assert _value(first, "mssgate_messages_total", action="accept", rule="none",
                  route="mssante+ordinary") == 1  # fmt: skip
    assert _value(first, "mssgate_messages_total", action="other", rule="other",
                  route="other") == 1  # fmt: skip
    assert _value(first, "mssgate_refusals_total", stage="rcpt", rule="other") == 1
    assert _value(first, "mssgate_refusals_total", stage="mail", rule="client") == 1
    assert _value(first, "mssgate_upstream_total", route="other", outcome="other") == 1
    assert _value(first, "mssgate_upstream_seconds_sum", route="other", outcome="other") == 0
    assert _value(first, "mssgate_connections_total", result="refused") == 1
    assert _value(first, "mssgate_connections_open") == 1
    assert _value(first, "mssgate_message_bytes_bucket", direction="in", le="1024.0") == 0
    assert _value(first, "mssgate_message_bytes_bucket", direction="in", le="4096.0") == 2
    assert _value(first, "mssgate_message_bytes_bucket", direction="out", le="+Inf") == 1
    assert _value(second, "mssgate_connections_open") == 0
    assert b"@" not in first.exposition()
