"""The whole service as `mssgate serve` runs it: the policy file watched and reloaded under a
stream of messages, the audit trail and the metrics endpoint fed by the same events."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from mssgate.config import load_policy
from mssgate.service import Service
from tests.conftest import policy_yaml
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

DR = "dr.martin@cabinet-gare.fr"
BAL = "alice.martin@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"
PATIENT = "279035121518989@patient.mssante.fr"
SIGNED = b"X-MSSGate-Signature: added"


def service_policy(mssante: int, ordinary: int, audit: Path, signature: bool = True) -> str:
    """The test cabinet with audit, metrics and a fast file watch."""
    extra = (
        f"audit: {{file: '{audit}'}}\n"
        "metrics: {host: 127.0.0.1, port: 0}\n"
        "reload: {watch: true, interval: 0.1}\n"
        + ("" if signature else "signature: {enabled: false}\n")
    )
    return policy_yaml(mssante, ordinary, extra)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET an endpoint of the metrics server."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_file_watch_reload_under_a_stream_of_messages(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    path = tmp_path / "policy.yaml"
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        path.write_text(service_policy(mssante.port, ordinary.port, audit))
        service = Service(load_policy(path), path, host=LOOPBACK, port=0, env={})
        assert service.metrics_server is not None
        await service.start()
        try:
            port = service.gateway.port
            metrics_port = service.metrics_server.port
            assert (await asyncio.to_thread(scrape, metrics_port, "/readyz"))[0] == 200
            stop = asyncio.Event()
            told: list[int] = []

            async def stream() -> None:
                while not stop.is_set():
                    result = await send(port, DR, [GMAIL], message(DR, GMAIL))
                    told.append(result.code or 0)

            streams = [asyncio.create_task(stream()) for _ in range(3)]
            await asyncio.sleep(0.3)
            # An invalid policy: refused, the old one (signature on) stays in force.
            path.write_text("version: 1\nroutes: {mssante: {outbox: x}}\n")
            await asyncio.sleep(0.5)
            before = len(ordinary.received)
            assert before > 0 and all(SIGNED in m.data for m in ordinary.received)
            # A valid one without the signature: in force within a few watch intervals.
            path.write_text(service_policy(mssante.port, ordinary.port, audit, signature=False))
            for _ in range(50):
                await asyncio.sleep(0.1)
                if ordinary.received and SIGNED not in ordinary.received[-1].data:
                    break
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*streams)
            # A patient message for the audit trail's pseudonym.
            assert (await send(port, BAL, [PATIENT], message(BAL, PATIENT))).code == 250
            status, text = await asyncio.to_thread(scrape, metrics_port)
        finally:
            await service.stop()
    # Every message told 250 arrived once; each was judged by one whole policy.
    assert told and set(told) == {250}
    assert len(ordinary.received) == len(told)
    signed = [SIGNED in m.data for m in ordinary.received]
    flip = signed.index(False)
    assert all(signed[:flip]) and not any(signed[flip:])  # never a mix after the switch
    assert service.holder.failed_reloads >= 1 and service.holder.reloads >= 1
    assert status == 200
    assert 'mssgate_policy_reloads_total{result="failed"}' in text
    assert 'mssgate_policy_reloads_total{result="ok"}' in text
    # One audit line per decision, the patient's INS never in clear.
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(told) + 1
    assert {line["action"] for line in lines} == {"accept"}
    assert "279035121518989" not in audit.read_text()
    assert lines[-1]["recipients"][0]["class"] == "patient"
