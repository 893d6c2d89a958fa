"""The mssgate command: check, explain (JSON and output), and serve on the demo policy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mssgate.cli import main
from tests.conftest import ROOT
from tests.messages import message
from tests.smtp_peers import LOOPBACK, free_port, have, swaks

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"
OUTLOOK = "secretariatCabinetXX@outlook.fr"


def test_check_valid_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "config" / "clinique.yaml")]) == 0
    assert "politique valide" in capsys.readouterr().out


def test_check_invalid_policy_prints_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nroutes:\n  mssante: {outbox: a}\n  ordinary: {outbox: b}\nrulez: {}\n"
    )
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:5: rulez: clé inconnue" in err


def _eml(tmp_path: Path, raw: bytes) -> str:
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    return str(path)


def test_explain_json_accept_with_signature_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.eml"
    code = main(
        [
            "explain",
            "--mail-from",
            DR,
            "--rcpt",
            GMAIL,
            "--json",
            "--output",
            str(out),
            _eml(tmp_path, message(DR, GMAIL)),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["action"] == "accept"
    assert result["smtp_code"] == 250 and result["enhanced_code"] == "2.0.0"
    assert result["rule"] is None and result["route"] == "ordinary"
    assert result["signature_added"] is True
    assert result["reply"].startswith("250 2.0.0 ")
    assert BAL.encode() in out.read_bytes()


def test_explain_json_reject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "--mail-from",
            BAL,
            "--rcpt",
            "x@medecin.mssante.fr",
            "--rcpt",
            OUTLOOK,
            "--json",
            _eml(tmp_path, message(BAL, "x@medecin.mssante.fr", cc=OUTLOOK)),
        ]
    )
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["action"], result["smtp_code"], result["enhanced_code"]) == (
        "reject",
        550,
        "5.7.1",
    )
    assert result["rule"] == "mixed_recipients" and result["route"] is None
    assert result["signature_added"] is False
    assert OUTLOOK in result["reply"]


def test_explain_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "--mail-from",
            BAL,
            "--rcpt",
            "x@apycrypt.org",
            _eml(tmp_path, message(BAL, "x")),
        ]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "reject" in out and "vouliez-vous dire" in out


@pytest.mark.skipif(not have("swaks"), reason="swaks comes from Debian's packages")
async def test_serve_without_argument_runs_the_demo(tmp_path: Path) -> None:
    """`mssgate serve` on the embedded demo: swaks sends, the message lands in the outbox."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mssgate",
        "serve",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"{LOOPBACK}:{port}".encode() in banner, banner
        code, out = await swaks(port, "--from", DR, "--to", GMAIL, "--body", "Bonjour")
        assert code == 0, out
        code, out = await swaks(port, "--from", BAL, "--to", GMAIL)
        assert code != 0 and "550 5.7.1" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    files = list((tmp_path / "mssgate-outbox" / "ordinary").glob("*.eml"))
    assert len(files) == 1
    data = files[0].read_bytes()
    assert data.startswith(f"Return-Path: <{DR}>\r\nDelivered-To: {GMAIL}\r\n".encode())
    assert BAL.encode() in data
    assert not (tmp_path / "mssgate-outbox" / "mssante").exists()


_ALLOCATION_CYCLES = """
import resource, sys
from mssgate.memory import tune_allocator

tuned = tune_allocator() if sys.argv[1] == "tuned" else None

def one_message():
    # As a 5 MB message is held: the bytes read, the message joined, the signed copy.
    read = bytes(5_000_000)
    joined = read + b"x"
    signed = joined + b"y"
    del read, joined, signed

for _ in range(3):
    one_message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_message()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(tuned, faults)
"""


def _faults_per_message(mode: str) -> tuple[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATION_CYCLES, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    tuned, faults = done.stdout.split()
    return tuned, float(faults)


def test_big_message_buffers_reuse_memory_the_process_has() -> None:
    """Once the gateway is started, a 5 MB message's three copies come from memory the process
    already has: no page faults message after message (each costs processor time)."""
    tuned, faults = _faults_per_message("tuned")
    if tuned != "True":
        pytest.skip("not glibc: the C library's own allocator settings stay")
    pages = 3 * 5_000_000 // 4096
    assert faults < pages / 50, f"{faults} page faults per message, for {pages} pages held"
