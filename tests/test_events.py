"""The events the gateway reports (the audit trail's and the metrics' only source)."""

from __future__ import annotations

from pathlib import Path

from mssgate.config import load_policy
from mssgate.events import DecisionEvent, Observers
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
