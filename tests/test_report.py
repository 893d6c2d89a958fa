"""The usage report: indicators on a generated month of audit trail, text, HTML in Chromium."""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from mssgate import cli
from mssgate.audit import AuditTrail, ReadStats, read_audit
from mssgate.events import DecisionEvent
from mssgate.privacy import pseudonymise
from mssgate.report import DayCounts, Indicators, compute_indicators, render_html, render_text
from mssgate.report_cli import add_report_parser
from mssgate.schema import AuditConfig

KEY = b"cle-du-rapport"
START = datetime(2025, 3, 1, tzinfo=UTC)
DAYS = 30

BAL = "alice.martin@medecin.mssante.fr"
CABINET = "cabinet.gare@cabinet.mssante.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
DURAND = "dr.durand@cabinet-gare.fr"
SECRETARIAT = "secretariat@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"
LABO = "resultats@labo-ville.fr"
PATIENTS = ("279035121518989@patient.mssante.fr", "146026322000196@patient.mssante.fr")
BAD_INS = "288091234567823@patient.mssante.fr"


def colleague(k: int) -> str:
    """The ordinary address of the k-th colleague (each signs k messages in the month)."""
    return f"collegue{k:02d}@cabinet-gare.fr"


@dataclass
class Generator:
    """A month of a cabinet's decisions, as the gateway would emit them."""

    events: list[DecisionEvent] = field(default_factory=list)
    sessions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def session(self) -> str:
        """A new SMTP connection's identifier."""
        return f"{next(self.sessions):012x}"

    @staticmethod
    def at(day: int, slot: int, seconds: float = 0.0) -> float:
        """Time of a send: day ``day``, from 08:00 UTC, one slot every 4 minutes."""
        moment = START + timedelta(days=day, hours=8, minutes=4 * slot, seconds=seconds)
        return moment.timestamp()

    def emit(
        self,
        when: float,
        session: str,
        stage: str,
        sender: str,
        recipients: tuple[tuple[str, str], ...],
        action: str,
        rule: str | None = None,
        routes: tuple[str, ...] = (),
        signature: bool = False,
    ) -> None:
        """One decision."""
        code, enhanced = {
            "accept": (250, "2.0.0"),
            "reject": (550, "5.7.1"),
            "tempfail": (451, "4.3.0"),
        }[action]
        size = 2400 if stage == "data" else 0
        self.events.append(
            DecisionEvent(
                time=when,
                session=session,
                peer=f"('192.168.1.{20 + len(self.events) % 7}', {40000 + len(self.events)})",
                user=None,
                stage=stage,
                sender=sender,
                recipients=recipients,
                action=action,
                rule=rule,
                smtp_code=code,
                enhanced_code=enhanced,
                routes=routes,
                upstream="2.0.0 Ok: queued" if action == "accept" else None,
                size_in=size,
                size_out=size + (180 if signature else 0) if action == "accept" else 0,
                message_id=f"<{len(self.events)}@cabinet-gare.fr>" if stage == "data" else None,
                signature_added=signature,
                duration=0.05 if stage == "data" else 0.0,
            )
        )

    def accepted(
        self, when: float, sender: str, recipients: tuple[tuple[str, str], ...], route: str
    ) -> None:
        """A message relayed on one route (ordinary mail from a known address is signed)."""
        signed = route == "ordinary" and sender != SECRETARIAT
        self.emit(
            when, self.session(), "data", sender, recipients, "accept", None, (route,), signed
        )


def generate() -> list[DecisionEvent]:
    """30 days from 2025-03-01; the expected figures are worked out in the tests below."""
    g = Generator()
    for day in range(DAYS):
        slot = itertools.count()
        # 6 accepted MSSanté messages a day; a patient among the recipients every other day.
        for k in range(6):
            recipients: tuple[tuple[str, str], ...] = ((CONFRERE, "mssante"),)
            if k == 0 and day % 4 == 0:
                recipients = ((PATIENTS[0], "patient"), (CONFRERE, "mssante"))
            elif k == 0 and day % 4 == 2:
                recipients = ((PATIENTS[1], "patient"),)
            g.accepted(g.at(day, next(slot)), BAL if k % 2 else CABINET, recipients, "mssante")
        # Ordinary mail: Dr Martin (signed, 3 a day), the secretariat (unsigned, 1 a day).
        for _ in range(3):
            g.accepted(g.at(day, next(slot)), DR, ((GMAIL, "ordinary"),), "ordinary")
        g.accepted(g.at(day, next(slot)), SECRETARIAT, ((LABO, "ordinary"),), "ordinary")
        # Twelve colleagues: colleague k signs k messages in the month.
        for k in range(1, 13):
            for j in range(k):
                if (2 * k + j) % DAYS == day:
                    g.accepted(
                        g.at(day, next(slot)), colleague(k), ((LABO, "ordinary"),), "ordinary"
                    )
        if day % 3 == 0:  # mixed: refused at RCPT, the client goes on to DATA (refused too)
            s, t = g.session(), g.at(day, next(slot))
            g.emit(t + 5, s, "rcpt", BAL, ((GMAIL, "ordinary"),), "reject", "mixed_recipients")
            # The DATA answer comes after the next client's message (sessions interleave).
            g.emit(
                t + 360,
                s,
                "data",
                BAL,
                ((CONFRERE, "mssante"), (GMAIL, "ordinary")),
                "reject",
                "mixed_recipients",
            )
        if day % 5 == 0:  # ordinary sender to an MSSanté BAL: refused at RCPT, client gives up
            s, t = g.session(), g.at(day, next(slot))
            g.emit(t, s, "rcpt", DURAND, ((CONFRERE, "mssante"),), "reject", "trust_space")
        if day % 7 == 0:  # a forwarded MSSanté message, refused at DATA
            t = g.at(day, next(slot))
            g.emit(
                t, g.session(), "data", SECRETARIAT, ((GMAIL, "ordinary"),), "reject", "forwards"
            )
        if day % 10 == 0:  # a bad INS key at RCPT, then DATA refused as "refused earlier"
            s, t = g.session(), g.at(day, next(slot))
            g.emit(t, s, "rcpt", BAL, ((BAD_INS, "invalid"),), "reject", "patients")
            g.emit(t + 2, s, "data", BAL, ((BAD_INS, "invalid"),), "reject", "refused_earlier")
        if day in (1, 2):  # two lookalike recipients in one envelope; the client gives up
            s, t = g.session(), g.at(day, next(slot))
            g.emit(
                t, s, "rcpt", BAL, (("jean@medecin.mssanté.fr", "invalid"),), "reject", "lookalike"
            )
            g.emit(t + 1, s, "rcpt", BAL, (("x@apicrypt.org", "invalid"),), "reject", "lookalike")
        if day == 4:  # an unknown workstation
            g.emit(g.at(day, next(slot)), g.session(), "mail", "", (), "reject", "client")
        if day == 12:  # the ordinary provider is down twice
            for _ in range(2):
                t = g.at(day, next(slot))
                g.emit(t, g.session(), "data", DR, ((GMAIL, "ordinary"),), "tempfail", "upstream")
        if day == 13:  # DNS unreachable at RCPT; the client gives up
            t = g.at(day, next(slot))
            g.emit(t, g.session(), "rcpt", DR, ((GMAIL, "ordinary"),), "tempfail", "dns_check")
        if day == 20:  # one connection, two stopped sends: RCPT refused, then MAIL refused
            s, t = g.session(), g.at(day, next(slot))
            g.emit(t, s, "rcpt", DURAND, ((CONFRERE, "mssante"),), "reject", "trust_space")
            g.emit(t + 3, s, "mail", BAL, (), "reject", "sender_authorization")
    return sorted(g.events, key=lambda e: e.time)


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated month written through the real audit trail, plus damaged lines."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=0), KEY)
    for event in generate():
        trail.decision(event)
    trail.close()
    with path.open("a", encoding="utf-8") as out:
        out.write("\n")
        out.write('{"time": "hier", "stage": "data", "action": "accept"}\n')  # unreadable time
        out.write('{"time": "2025-03-30T23:59:59.000Z", "stage": "da')  # cut short
    return path


def records_of(path: Path, stats: ReadStats | None = None) -> list[dict[str, object]]:
    """The readable records of an audit file."""
    with path.open(encoding="utf-8") as lines:
        return list(read_audit(lines, stats))


def run_report(argv: list[str]) -> int:
    """``mssgate report ...`` through ``mssgate.cli.main`` once wired, else through our parser."""
    probe = cli.build_parser()
    commands = next(a.choices for a in probe._actions if isinstance(a, argparse._SubParsersAction))
    if "report" in commands:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="mssgate")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_the_log_holds_no_ins(audit_file: Path) -> None:
    text = audit_file.read_text(encoding="utf-8")
    for patient in (*PATIENTS, BAD_INS):
        assert patient.split("@")[0] not in text
        assert pseudonymise(patient, KEY) in text
    stats = ReadStats()
    records = records_of(audit_file, stats)
    assert (stats.records, stats.blank, stats.invalid) == (len(generate()) + 1, 1, 1)
    assert len(records) == 398 + 27 + 1


def test_indicators_of_the_month(audit_file: Path) -> None:
    ind = compute_indicators(records_of(audit_file), None)
    assert (ind.first_day, ind.last_day, ind.days) == (date(2025, 3, 1), date(2025, 3, 30), 30)
    # Accepted: 6 MSSanté a day; ordinary 3 (Dr Martin) + 1 (secretariat) a day + 78 colleagues.
    assert (ind.accepted_mssante, ind.accepted_ordinary) == (180, 198)
    assert ind.accepted == 378
    assert ind.mssante_share == pytest.approx(180 / 378)
    # Refused at DATA: 10 mixed + 5 forwards + 3 patients (DATA said "refused earlier").
    assert (ind.rejected, ind.tempfailed, ind.messages) == (18, 2, 398)
    # Before DATA: 10 mixed + 6 trust + 3 patients + 4 lookalikes + 1 client + 1 DNS + 2 (day 20).
    assert ind.envelope_refusals == 27
    # Stopped before DATA: 6 trust + 2 lookalike sessions + client + 2 on day 20; DNS tempfail.
    assert (ind.refused_before_data, ind.tempfailed_before_data) == (11, 1)
    assert ind.refused_sends == 29
    assert ind.refusals_by_rule == (
        ("mixed_recipients", 10),
        ("trust_space", 7),
        ("forwards", 5),
        ("patients", 3),
        ("lookalike", 2),
        ("client", 1),
        ("sender_authorization", 1),
    )
    assert ind.top_ordinary_senders == (
        (DR, 90),
        (colleague(12), 12),
        (colleague(11), 11),
        (BAL, 10),  # mixed recipients
        (colleague(10), 10),
        (colleague(9), 9),
        (colleague(8), 8),
        (colleague(7), 7),
        (DURAND, 7),  # trust space, at RCPT
        (colleague(6), 6),
    )
    assert ind.senders_outside_total == 16  # Dr Martin, Durand, Alice's BAL, secretariat, 12
    assert (ind.patient_messages, ind.patient_refusals) == (15, 3)
    assert ind.signatures_added == 90 + 78
    assert ind.invalid == 1  # the record whose time is "hier"
    assert len(ind.per_day) == 30
    assert ind.per_day[0] == DayCounts(date(2025, 3, 1), 6, 6, 4, 0)
    assert ind.per_day[12] == DayCounts(date(2025, 3, 13), 6, 6, 1, 2)
    assert ind.per_day[13] == DayCounts(date(2025, 3, 14), 6, 6, 0, 1)
    assert ind.per_day[4] == DayCounts(date(2025, 3, 5), 6, 6, 1, 0)  # the unknown workstation
    assert sum(d.mssante for d in ind.per_day) == 180
    assert sum(d.ordinary for d in ind.per_day) == 198
    assert sum(d.refused for d in ind.per_day) == 29
    assert sum(d.tempfailed for d in ind.per_day) == 3


def test_indicators_since(audit_file: Path) -> None:
    ind = compute_indicators(records_of(audit_file), datetime(2025, 3, 16))
    assert (ind.first_day, ind.days, ind.since) == (
        date(2025, 3, 16),
        15,
        datetime(2025, 3, 16, tzinfo=UTC),
    )
    assert (ind.accepted_mssante, ind.patient_messages, ind.patient_refusals) == (90, 7, 1)
    assert ind.refusals_by_rule == (
        ("mixed_recipients", 5),
        ("trust_space", 4),
        ("forwards", 2),
        ("patients", 1),
        ("sender_authorization", 1),
    )


def test_indicators_of_nothing() -> None:
    ind = compute_indicators([], None)
    assert ind.messages == 0 and ind.mssante_share is None and ind.per_day == ()
    text = render_text(ind)
    assert "aucune décision" in text and "–" in text
    assert "<html" in render_html(ind)


def test_report_command_text_and_html(
    audit_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html_path = tmp_path / "rapport.html"
    assert run_report(["report", str(audit_file), "--html", str(html_path)]) == 0
    out = capsys.readouterr().out
    assert "Période : du 01/03/2025 au 30/03/2025 (30 jours, UTC)" in out
    assert re.search(r"Messages traités \(DATA\) +398\n", out)
    assert re.search(r"Part des messages acceptés passés par MSSanté +47,6 % \(180 / 378\)", out)
    assert re.search(r"Envois refusés au total +29\n", out)
    assert re.search(r"Signatures MSSanté ajoutées +168\n", out)
    assert re.search(r"Messages acceptés vers des patients +15\n", out)
    assert re.search(r"mixed_recipients +Destinataires MSSanté et ordinaires mélangés +10\n", out)
    assert re.search(r"dr\.martin@cabinet-gare\.fr +90\n", out)
    assert re.search(r"01/03/2025 +6 +6 +4 +0 +16\n", out)
    assert "Lignes ou enregistrements illisibles ignorés : 2" in out  # "hier" and the cut line
    assert f"rapport HTML écrit dans {html_path}" in out
    # Columns aligned: every row of the daily table has the same length.
    rows = [line for line in out.splitlines() if re.match(r"  \d\d/\d\d/\d{4} ", line)]
    assert len(rows) == 30 and len({len(r) for r in rows}) == 1

    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert '<html lang="fr">' in page and "<script" not in page.lower()
    assert page.count("<svg") == 2  # the daily chart and the refusals by rule
    urls = re.findall(r"""([\w:-]*)=?["']?(https?://[^"'\s<>)]*)""", page)
    for attribute, url in urls:
        assert attribute.startswith("xmlns"), f"URL externe dans le rapport : {url}"
    assert "dr.martin@cabinet-gare.fr" in page and "47,6 %" in page
    for patient in (*PATIENTS, BAD_INS):
        assert patient.split("@")[0] not in page


def test_report_since_option(audit_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_report(["report", str(audit_file), "--since", "2025-03-16"]) == 0
    out = capsys.readouterr().out
    assert "du 16/03/2025 au 30/03/2025 (15 jours, UTC)" in out


def test_report_rotated_files_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(file=str(path), max_bytes=20_000, backups=100), KEY)
    for event in generate():
        trail.decision(event)
    trail.close()
    oldest = max(tmp_path.glob("audit.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    packed = oldest.with_name(oldest.name + ".gz")  # logrotate's compress
    packed.write_bytes(gzip.compress(oldest.read_bytes()))
    os.utime(packed, ns=(oldest.stat().st_atime_ns, oldest.stat().st_mtime_ns))
    oldest.unlink()
    files = sorted(str(p) for p in tmp_path.glob("audit.jsonl*"))
    assert len(files) > 5 and any(f.endswith(".gz") for f in files)
    assert run_report(["report", *files]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Messages traités \(DATA\) +398\n", out)
    assert re.search(r"Refus avant DATA \(MAIL/RCPT\) +27\n", out)
    assert "illisibles" not in out


def test_report_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.jsonl"
    assert run_report(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"journal d'audit illisible : {missing}" in err
    assert run_report(["report", str(tmp_path)]) == 2  # a folder
    assert "journal d'audit illisible" in capsys.readouterr().err


def test_report_bad_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_report(["report", str(tmp_path / "a.jsonl"), "--since", "16/03/2025"])
    assert exit_info.value.code == 2
    assert "date invalide" in capsys.readouterr().err


def test_the_gateway_never_imports_matplotlib() -> None:
    code = (
        "import sys, mssgate.cli, mssgate.server, mssgate.audit, mssgate.report, "
        "mssgate.report_cli; print('matplotlib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


# -- The HTML page in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 2000


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and a check that it is a PNG)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "pas un PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(data[12:29]) == crc, "en-tête PNG corrompu"
    return width, height


@pytest.mark.external
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium absent")
def test_the_html_report_renders_in_chromium(audit_file: Path, tmp_path: Path) -> None:
    ind: Indicators = compute_indicators(records_of(audit_file), None)
    html_path = tmp_path / "rapport.html"
    html_path.write_text(render_html(ind), encoding="utf-8")
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        html_path.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert shot.exists(), f"pas de capture : {result.returncode} {result.stderr[-2000:]}"
    assert png_size(shot.read_bytes()) == (WIDTH, HEIGHT)
    from matplotlib.image import imread  # decodes the whole PNG (zlib, filters, CRCs)

    image = imread(shot)
    assert image.shape[:2] == (HEIGHT, WIDTH)
    rgb = (image[..., :3] * 255).round().astype("uint8")
    # Not blank: contrasted, many colours, and the charts' own colours are on screen.
    assert rgb.std() > 20
    white = (rgb == 255).all(axis=-1).mean()
    assert white < 0.97
    colours = {tuple(c) for c in rgb[::3, ::3].reshape(-1, 3).tolist()}
    assert len(colours) > 50
    for name, hex_colour in (("MSSanté", "1b7f5f"), ("ordinaire", "3b6fb6"), ("refus", "c0392b")):
        wanted = tuple(bytes.fromhex(hex_colour))
        assert ((rgb == wanted).all(axis=-1)).sum() > 500, f"couleur {name} absente"
