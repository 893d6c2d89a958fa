"""The audit trail: one JSON line per decision, INS pseudonymised, rotated safely."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mssgate.audit import AuditTrail, ReadStats, iso_time, read_audit, scrub
from mssgate.events import DecisionEvent, Observers
from mssgate.model import Route
from mssgate.privacy import pseudonymise
from mssgate.relay import build_relays
from mssgate.schema import AuditConfig
from mssgate.server import Gateway
from tests.conftest import make_policy
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

KEY = b"cle-de-test-des-pseudonymes"
INS = "279035121518989"
PATIENT = f"{INS}@patient.mssante.fr"
BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"

KEYS = [
    "time",
    "session",
    "peer",
    "user",
    "stage",
    "sender",
    "recipients",
    "rule",
    "action",
    "routes",
    "smtp_code",
    "enhanced_code",
    "upstream",
    "size_in",
    "size_out",
    "message_id",
    "signature_added",
    "duration_ms",
]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

ACCEPT = DecisionEvent(
    time=1740816902.127,  # 2025-03-01T08:15:02.127Z
    session="a1b2c3d4e5f6",
    peer="('127.0.0.1', 50412)",
    user=None,
    stage="data",
    sender=BAL,
    recipients=((CONFRERE, "mssante"), (PATIENT, "patient")),
    action="accept",
    rule=None,
    smtp_code=250,
    enhanced_code="2.0.0",
    routes=("mssante",),
    upstream=f"250 2.0.0 Ok: queued as 4F2A; <{PATIENT}> ok",
    size_in=1834,
    size_out=1834,
    message_id=f"<{INS}.20250301@medecin.mssante.fr>",
    signature_added=False,
    duration=0.0423,
)
REJECT = replace(
    ACCEPT,
    stage="rcpt",
    sender=BAL,
    recipients=((GMAIL, "ordinary"),),
    action="reject",
    rule="mixed_recipients",
    smtp_code=550,
    enhanced_code="5.7.1",
    routes=(),
    upstream=None,
    size_in=0,
    size_out=0,
    message_id=None,
    duration=0.0,
)
TEMPFAIL = replace(
    ACCEPT,
    sender=DR,
    recipients=((GMAIL, "ordinary"),),
    action="tempfail",
    rule="upstream",
    smtp_code=451,
    enhanced_code="4.3.0",
    routes=("ordinary",),
    upstream=f"451 4.3.0 try later (NIR {INS[:13]})",
    size_out=0,
    message_id="<test@cabinet-gare.fr>",
    signature_added=True,
    duration=1.5,
)


def lines_of(path: Path) -> list[str]:
    """Every line of a file (newline kept off)."""
    return path.read_text(encoding="utf-8").splitlines()


def event(i: int, **changes: object) -> DecisionEvent:
    """A distinct event, its number in ``session``."""
    return replace(ACCEPT, session=f"s{i:06d}", **changes)  # type: ignore[arg-type]


def test_accept_reject_tempfail_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path)), KEY)
    for e in (ACCEPT, REJECT, TEMPFAIL):
        trail.decision(e)
    trail.close()
    text = path.read_text(encoding="utf-8")
    assert INS not in text and INS[:13] not in text
    lines = text.splitlines()
    assert len(lines) == 3 and text.endswith("\n")
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record) == KEYS
        assert ISO_MS.match(record["time"])
    accept, reject, tempfail = records
    pseudonym = pseudonymise(PATIENT, KEY)
    assert pseudonym.startswith("ins-") and pseudonym.endswith("@patient.mssante.fr")
    assert accept == {
        "time": "2025-03-01T08:15:02.127Z",
        "session": "a1b2c3d4e5f6",
        "peer": "('127.0.0.1', 50412)",
        "user": None,
        "stage": "data",
        "sender": BAL,
        "recipients": [
            {"address": CONFRERE, "class": "mssante"},
            {"address": pseudonym, "class": "patient"},
        ],
        "rule": None,
        "action": "accept",
        "routes": ["mssante"],
        "smtp_code": 250,
        "enhanced_code": "2.0.0",
        "upstream": f"250 2.0.0 Ok: queued as 4F2A; <{pseudonym}> ok",
        "size_in": 1834,
        "size_out": 1834,
        "message_id": f"<{pseudonymise(INS, KEY)}.20250301@medecin.mssante.fr>",
        "signature_added": False,
        "duration_ms": 42.3,
    }
    assert (reject["stage"], reject["action"], reject["rule"]) == (
        "rcpt",
        "reject",
        "mixed_recipients",
    )
    assert reject["recipients"] == [{"address": GMAIL, "class": "ordinary"}]
    assert (reject["smtp_code"], reject["enhanced_code"], reject["routes"]) == (550, "5.7.1", [])
    assert (tempfail["action"], tempfail["smtp_code"], tempfail["rule"]) == (
        "tempfail",
        451,
        "upstream",
    )
    assert tempfail["upstream"] == f"451 4.3.0 try later (NIR {pseudonymise(INS[:13], KEY)})"
    assert tempfail["signature_added"] is True and tempfail["duration_ms"] == 1500.0


def test_pseudonyms_depend_on_the_key(tmp_path: Path) -> None:
    one, two = io.StringIO(), io.StringIO()
    AuditTrail(AuditConfig(), b"key-one", stream=one).decision(ACCEPT)
    AuditTrail(AuditConfig(), b"key-two", stream=two).decision(ACCEPT)
    first = json.loads(one.getvalue())["recipients"][1]["address"]
    second = json.loads(two.getvalue())["recipients"][1]["address"]
    assert first != second and INS not in first + second


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1740816902.1279) == "2025-03-01T08:15:02.127Z"


def test_dash_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    trail = AuditTrail(AuditConfig(file="-"), KEY)
    trail.decision(REJECT)
    trail.close()  # standard output stays open
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["rule"] == "mixed_recipients"
    print("still open")
    assert capsys.readouterr().out == "still open\n"


def test_only_decisions_are_written() -> None:
    stream = io.StringIO()
    trail = AuditTrail(AuditConfig(), KEY, stream=stream)
    trail.connection(True)
    trail.connection(False, refused=True)
    trail.relay("mssante", 0.2, "ok")
    trail.reload(False)
    assert stream.getvalue() == ""
    trail.decision(ACCEPT)
    assert stream.getvalue().count("\n") == 1 and trail.lines == 1


def test_global_logging_config_does_not_touch_the_trail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path)), KEY)
    logging.disable(logging.CRITICAL)
    try:
        trail.decision(ACCEPT)
    finally:
        logging.disable(logging.NOTSET)
    with caplog.at_level(logging.DEBUG):
        trail.decision(REJECT)
    trail.close()
    assert len(lines_of(path)) == 2
    assert not any(PATIENT in r.getMessage() for r in caplog.records)
    assert not any(r.name.startswith("mssgate.audit") for r in caplog.records)


def test_a_write_error_reaches_the_observers_log(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    trail = AuditTrail(AuditConfig(), KEY, stream=stream)
    stream.close()
    with pytest.raises(ValueError):
        trail.decision(ACCEPT)
    with caplog.at_level(logging.ERROR, logger="mssgate.events"):
        Observers([trail]).decision(ACCEPT)  # logged, never raised into the gateway
    assert "AuditTrail failed on decision" in caplog.text


async def test_gateway_decisions_reach_the_audit_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path)), KEY)
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port)
        routes = {
            Route.MSSANTE: policy.document.routes.mssante,
            Route.ORDINARY: policy.document.routes.ordinary,
        }
        relays = build_relays(routes, "mssgate.test", {})
        async with Gateway(
            lambda: policy, relays, host=LOOPBACK, port=0, observers=Observers([trail])
        ) as gateway:
            ok = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
            patient = await send(gateway.port, BAL, [PATIENT], message(BAL, PATIENT))
            mixed = await send(gateway.port, BAL, [PATIENT, GMAIL], message(BAL, PATIENT))
            ordinary.behaviour.data_reply = "451 4.3.0 try later"
            later = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
    trail.close()
    assert (ok.code, patient.code, mixed.code, later.code) == (250, 250, 550, 451)
    assert mssante.received and INS in mssante.received[0].rcpt_tos[0]  # really sent to it
    text = path.read_text(encoding="utf-8")
    assert INS not in text
    # The accepted message and the refused one (at RCPT only the refused gmail is named).
    assert text.count(pseudonymise(PATIENT, KEY)) == 2
    records = list(read_audit(text.splitlines()))
    assert [(r["stage"], r["action"], r["rule"], r["routes"]) for r in records] == [
        ("data", "accept", None, ["ordinary"]),
        ("data", "accept", None, ["mssante"]),
        ("rcpt", "reject", "mixed_recipients", []),
        ("data", "reject", "mixed_recipients", []),
        ("data", "tempfail", "upstream", ["ordinary"]),
    ]
    first, to_patient = records[0], records[1]
    assert first["signature_added"] is True and first["size_out"] > first["size_in"] > 0
    assert first["message_id"] == "<test@cabinet-gare.fr>" and "127.0.0.1" in first["peer"]
    assert to_patient["recipients"] == [{"address": pseudonymise(PATIENT, KEY), "class": "patient"}]
    assert all(list(r) == KEYS and ISO_MS.match(r["time"]) for r in records)
    assert len({r["session"] for r in records}) == 4  # one SMTP connection per send
    assert records[2]["session"] == records[3]["session"]


def test_rotation_keeps_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    max_bytes = 4000
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=max_bytes, backups=100), KEY)
    for i in range(500):
        trail.decision(event(i))
    trail.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert len(files) > 20
    sessions: list[str] = []
    for file in files:
        assert file.stat().st_size <= max_bytes  # checked before each line: never cut
        raw = file.read_bytes()
        assert raw.endswith(b"\n")
        for line in raw.decode("utf-8").splitlines():
            record = json.loads(line)  # every line whole, in every file
            sessions.append(record["session"])
    assert sorted(sessions) == [f"s{i:06d}" for i in range(500)]
    # Oldest first: the highest backup number holds the first lines.
    ordered = [tmp_path / "audit.jsonl"] + [tmp_path / f"audit.jsonl.{n}" for n in range(1, 200)]
    chronological = [
        json.loads(line)["session"]
        for file in reversed([f for f in ordered if f.exists()])
        for line in lines_of(file)
    ]
    assert chronological == [f"s{i:06d}" for i in range(500)]


def test_rotation_keeps_only_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=3000, backups=3), KEY)
    for i in range(200):
        trail.decision(event(i))
    trail.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    last = json.loads(lines_of(path)[-1])
    assert last["session"] == "s000199"


def test_no_rotation_reopens_after_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=0), KEY)
    for i in range(3):
        trail.decision(event(i))
    path.rename(tmp_path / "audit.jsonl.1")  # what logrotate does (without copytruncate)
    for i in range(3, 5):
        trail.decision(event(i))
    trail.close()
    assert [json.loads(x)["session"] for x in lines_of(tmp_path / "audit.jsonl.1")] == [
        "s000000",
        "s000001",
        "s000002",
    ]
    assert [json.loads(x)["session"] for x in lines_of(path)] == ["s000003", "s000004"]


async def test_concurrent_tasks_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=20000, backups=1000), KEY)
    long_upstream = "250 2.0.0 " + "x" * 3000  # lines far longer than a pipe's atomic write

    async def client(task: int) -> None:
        for i in range(20):
            trail.decision(event(task * 1000 + i, upstream=long_upstream))
            await asyncio.sleep(0)

    await asyncio.gather(*(client(t) for t in range(50)))
    trail.close()
    sessions = [
        json.loads(line)["session"]
        for file in tmp_path.glob("audit.jsonl*")
        for line in lines_of(file)
    ]
    assert sorted(sessions) == sorted(f"s{t * 1000 + i:06d}" for t in range(50) for i in range(20))


def test_concurrent_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=50000, backups=1000), KEY)
    start = threading.Barrier(8)
    long_upstream = "250 2.0.0 " + "y" * 5000

    def writer(n: int) -> None:
        start.wait()
        for i in range(150):
            trail.decision(event(n * 1000 + i, upstream=long_upstream))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trail.close()
    stats = ReadStats()
    records = [
        r for file in tmp_path.glob("audit.jsonl*") for r in read_audit(lines_of(file), stats)
    ]
    assert stats.invalid == 0 and stats.blank == 0
    assert sorted(r["session"] for r in records) == sorted(
        f"s{n * 1000 + i:06d}" for n in range(8) for i in range(150)
    )
    assert all(r["upstream"] == long_upstream for r in records)


def test_read_audit_skips_blank_and_truncated_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path)), KEY)
    for e in (ACCEPT, REJECT, TEMPFAIL):
        trail.decision(e)
    trail.close()
    whole = path.read_bytes()
    cut = whole[: len(whole) - 40]  # the last line cut short (a crash mid-write)
    text = cut.decode("utf-8") + "\n\n   \n"
    text = text.replace("\n", "\n\n", 1) + '["not", "an", "object"]\n'
    stats = ReadStats()
    records = list(read_audit(io.StringIO(text), stats))
    assert [r["action"] for r in records] == ["accept", "reject"]
    assert (stats.records, stats.invalid, stats.blank) == (2, 2, 3)
    # Without stats, the same records.
    assert list(read_audit(text.splitlines())) == records


def test_scrubbing_long_upstream_texts_stays_linear() -> None:
    # An upstream's answer without "@" once made the address pattern quadratic (a ReDoS).
    texts = ["x" * 1_000_000, "a@" * 300_000, ("b" * 60 + " ") * 20_000]
    started = time.monotonic()
    for text in texts:
        assert scrub(text, KEY) == text
    assert time.monotonic() - started < 2
    assert scrub(f"550 5.1.1 <{PATIENT}>: unknown; NIR {INS[:13]}", KEY) == (
        f"550 5.1.1 <{pseudonymise(PATIENT, KEY)}>: unknown; NIR {pseudonymise(INS[:13], KEY)}"
    )
