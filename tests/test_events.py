"""The events the gateway reports (the audit trail's and the metrics' only source)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mssgate.config import load_policy
from mssgate.events import DecisionEvent, HeldReports, Observers
from mssgate.holder import PolicyHolder
from mssgate.relay import build_relays
from mssgate.server import Gateway
from tests.conftest import make_policy, policy_yaml
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"


class Recorder:
    """An observer that keeps everything."""

    def __init__(self) -> None:
        self.decisions: list[DecisionEvent] = []
        self.connections: list[tuple[bool, bool]] = []
        self.relays: list[tuple[str, float, str]] = []
        self.reloads: list[bool] = []

    def decision(self, event: DecisionEvent) -> None:
        self.decisions.append(event)

    def connection(self, opened: bool, refused: bool = False) -> None:
        self.connections.append((opened, refused))

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        self.relays.append((route, seconds, outcome))

    def reload(self, ok: bool) -> None:
        self.reloads.append(ok)


class Broken:
    """An observer that fails on everything: mail must flow regardless."""

    def decision(self, event: DecisionEvent) -> None:
        raise RuntimeError("disk full")

    def connection(self, opened: bool, refused: bool = False) -> None:
        raise RuntimeError("disk full")

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        raise RuntimeError("disk full")

    def reload(self, ok: bool) -> None:
        raise RuntimeError("disk full")


async def test_every_decision_is_reported() -> None:
    recorder = Recorder()
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port)
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        observers = Observers([Broken(), recorder])
        async with Gateway(
            lambda: policy, relays, host=LOOPBACK, port=0, observers=observers
        ) as gateway:
            ok = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
            mixed = await send(gateway.port, BAL, [CONFRERE, GMAIL], message(BAL, CONFRERE))
            ordinary.behaviour.data_reply = "451 4.3.0 try later"
            later = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
    assert (ok.code, mixed.code, later.code) == (250, 550, 451)
    stages = [(e.stage, e.action, e.rule) for e in recorder.decisions]
    assert stages == [
        ("data", "accept", None),
        ("rcpt", "reject", "mixed_recipients"),
        ("data", "reject", "mixed_recipients"),
        ("data", "tempfail", "upstream"),
    ]
    first = recorder.decisions[0]
    assert first.routes == ("ordinary",) and first.signature_added
    assert first.message_id == "<test@cabinet-gare.fr>"
    assert first.recipients == ((GMAIL, "ordinary"),)
    assert first.size_out > first.size_in > 0 and first.smtp_code == 250
    assert first.enhanced_code == "2.0.0"
    assert recorder.decisions[2].recipients == ((CONFRERE, "mssante"), (GMAIL, "ordinary"))
    assert [r[2] for r in recorder.relays] == ["ok", "tempfail"]
    assert recorder.connections.count((True, False)) == 3
    assert recorder.connections.count((False, False)) == 3


def test_reloads_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml())
    recorder = Recorder()
    holder = PolicyHolder(load_policy(path), path, Observers([recorder]))
    assert holder.reload()
    path.write_text("version: 1\nroutes: {}\n")
    assert not holder.reload()
    assert recorder.reloads == [True, False]
    assert holder.policy.document.routes.mssante.upstream is not None


async def test_held_reports_wait_until_asked_then_keep_their_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[str] = []
    held = HeldReports(hold=60.0)

    def broken() -> None:
        raise RuntimeError("disk full")

    held.add(made.append, "first")
    held.add(broken)
    held.add(made.append, "second")
    await asyncio.sleep(0.01)
    assert made == [] and len(held) == 3  # not asked yet: still held
    held.soon()
    held.soon()  # (one flush for both)
    assert made == []  # made once the loop is free, not inside the caller's step
    await asyncio.sleep(0)
    assert made == ["first", "second"] and len(held) == 0
    assert "report broken failed" in caplog.text
    held.soon()  # nothing held: nothing scheduled
    await asyncio.sleep(0)
    assert made == ["first", "second"]


async def test_held_reports_are_made_after_the_hold_at_most() -> None:
    made: list[int] = []
    held = HeldReports(hold=0.02)
    held.add(made.append, 1)
    await asyncio.sleep(0.2)
    assert made == [1]
    held.add(made.append, 2)
    held.flush()  # (shutdown: at once)
    assert made == [1, 2]
    await asyncio.sleep(0.05)
    assert made == [1, 2]  # (the timer, still armed, found nothing to make)


def test_held_reports_keep_their_bound_on_a_new_loop() -> None:
    made: list[int] = []
    held = HeldReports(hold=0.02)

    async def hold_one(value: int, wait: float) -> None:
        held.add(made.append, value)
        await asyncio.sleep(wait)

    asyncio.run(hold_one(1, 0.0))  # (the loop stops with its timer still armed)
    assert made == []
    held.flush()
    asyncio.run(hold_one(2, 0.2))
    assert made == [1, 2]


async def test_one_timer_serves_many_messages_and_each_call_keeps_its_bound() -> None:
    made: list[int] = []
    held = HeldReports(hold=0.2)
    held.add(made.append, 1)
    timer = held._timer
    held.flush()  # (the upstream wait came first)
    await asyncio.sleep(0.1)
    held.add(made.append, 2)
    assert held._timer is timer  # not a timer made and cancelled per message
    await asyncio.sleep(0.15)  # (the timer fired at 0.2 s: too early for the call of 0.1 s)
    assert made == [1]
    await asyncio.sleep(0.2)
    assert made == [1, 2]


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole SMTP reply (its last line)."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "connection closed"
        if line[3:4] != b"-":
            return line


async def _codes(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The codes of the next ``count`` replies."""
    return [(await _reply(reader))[:3] for _ in range(count)]


@contextlib.asynccontextmanager
async def _gateway(observer: Recorder) -> AsyncIterator[tuple[Gateway, CaptureUpstream]]:
    """A gateway reporting to ``observer``, and its ordinary upstream."""
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port)
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with Gateway(
            lambda: policy, relays, host=LOOPBACK, port=0, observers=Observers([observer])
        ) as gateway:
            yield gateway, ordinary


@contextlib.asynccontextmanager
async def _session(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw SMTP session, greeted and past EHLO; closed at the end."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        assert (await _reply(reader)).startswith(b"220")
        writer.write(b"EHLO client.test\r\n")
        assert (await _reply(reader)).startswith(b"250")
        yield reader, writer
    finally:
        writer.close()


async def _until_reported(recorder: Recorder, count: int) -> None:
    """Wait (bounded) until ``count`` decisions reached ``recorder``."""
    for _ in range(200):
        if len(recorder.decisions) >= count:
            return
        await asyncio.sleep(0.01)


BODY = message(DR, GMAIL).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
OPEN_DATA = f"MAIL FROM:<{DR}>\r\nRCPT TO:<{GMAIL}>\r\nDATA\r\n".encode()


async def test_a_pipelined_client_gets_each_report_in_order_with_its_own_sender() -> None:
    # The report of a message is made later (HeldReports): a client that pipelines the next
    # transaction behind the message must not see its sender or its refusal mixed up.
    recorder = Recorder()
    async with _gateway(recorder) as (gateway, _), _session(gateway.port) as (reader, writer):
        writer.write(OPEN_DATA)
        assert await _codes(reader, 3) == [b"250", b"250", b"354"]
        writer.write(
            BODY
            + b".\r\n"
            + f"MAIL FROM:<{BAL}>\r\nRCPT TO:<{CONFRERE}>\r\n".encode()
            + f"RCPT TO:<{GMAIL}>\r\nQUIT\r\n".encode()
        )
        assert await _codes(reader, 5) == [b"250", b"250", b"250", b"550", b"221"]
        await _until_reported(recorder, 2)  # (the connection's end makes what is held)
    assert [(e.stage, e.action, e.sender) for e in recorder.decisions] == [
        ("data", "accept", DR),
        ("rcpt", "reject", BAL),
    ]
    assert recorder.decisions[0].time <= recorder.decisions[1].time
    assert [r[2] for r in recorder.relays] == ["ok"]


class StampedRecorder(Recorder):
    """A recorder that notes when each decision reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.made_at: list[float] = []

    def decision(self, event: DecisionEvent) -> None:
        super().decision(event)
        self.made_at.append(time.monotonic())


async def test_a_report_is_made_while_the_next_message_waits_on_the_upstream() -> None:
    recorder = StampedRecorder()
    answered: list[float] = []
    async with _gateway(recorder) as (gateway, ordinary):
        gateway.handler.held.hold = 60.0  # (no timer: only the upstream wait makes them)
        async with _session(gateway.port) as (reader, writer):
            for delay in (0.0, 0.3):
                ordinary.behaviour.data_delay = delay
                writer.write(OPEN_DATA)
                assert await _codes(reader, 3) == [b"250", b"250", b"354"]
                writer.write(BODY + b".\r\n")
                assert await _codes(reader, 1) == [b"250"]
                answered.append(time.monotonic())
                if delay == 0.0:
                    await asyncio.sleep(0.05)
                    assert recorder.decisions == []  # held: nothing asked for it yet
            writer.write(b"QUIT\r\n")
            assert await _codes(reader, 1) == [b"221"]
        await _until_reported(recorder, 2)
    assert [(e.stage, e.action) for e in recorder.decisions] == [("data", "accept")] * 2
    first_made = recorder.made_at[0]
    # The first message's report: after its 250, while the second one was with the upstream
    # (which held it 0.3 s before answering), not after the second 250.
    assert answered[0] < first_made < ordinary.received[1].at < answered[1]
    assert recorder.made_at[1] > answered[1]
