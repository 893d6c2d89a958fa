"""mssgate between real mail software, all on 127.0.0.1.

- **Postfix in front** (a structure's relay): a private Postfix instance configured from
  ``deploy/postfix/main.cf`` with ``relayhost = [127.0.0.1]:<mssgate>``; mail is submitted to
  Postfix and must come out of mssgate's upstreams (signed), or be refused by mssgate and then
  bounced by Postfix to the sender, with nothing delivered to the recipients.
- **msmtp** (the submission client of many Linux mail programs) talking to mssgate directly with
  STARTTLS and AUTH PLAIN, as a doctor's mail program would.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import Stack, running_stack
from tests.messages import message
from tests.postfix_instance import PostfixInstance, available
from tests.smtp_peers import LOOPBACK, have, wait_for
from tests.test_security import (
    BAL,
    CABINET_BAL,
    CONFRERE,
    PASSWORDS,
    SecureStack,
    secure_stack,
)
from tests.tls_material import TlsFiles, make_tls_files

OUTLOOK = "secretariatCabinetXX@outlook.fr"
GMAIL = "ami@gmail.com"
DR_MARTIN = "dr.martin@cabinet-gare.fr"

pytestmark = pytest.mark.external


# =============================================================================================
# Postfix in front of mssgate


@asynccontextmanager
async def postfix_in_front(tmp_path: Path) -> AsyncIterator[tuple[Stack, PostfixInstance]]:
    """mssgate with two capture upstreams, and a private Postfix relaying to it."""
    reason = available()
    if reason:
        pytest.skip(reason)
    async with running_stack() as stack:
        postfix = PostfixInstance(tmp_path, stack.port)
        try:
            await asyncio.to_thread(postfix.start)
            print(f"\nPostfix started in {postfix.start_seconds:.2f}s")
            yield stack, postfix
        finally:
            await asyncio.to_thread(postfix.stop)
            pid = postfix.master_pid
            postfix.cleanup()
            assert pid is None or not Path(f"/proc/{pid}/cmdline").read_bytes().strip(b"\0")


def submit(port: int, mail_from: str, rcpts: Sequence[str], data: bytes) -> dict[str, object]:
    """Submit to Postfix's smtpd with smtplib (blocking; run in a thread)."""
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.ehlo("poste.structure.test")
        return dict(client.sendmail(mail_from, list(rcpts), data))


async def test_postfix_relays_through_mssgate_which_signs(tmp_path: Path) -> None:
    async with postfix_in_front(tmp_path) as (stack, postfix):
        refused = await asyncio.to_thread(
            submit, postfix.port, DR_MARTIN, [GMAIL], message(DR_MARTIN, GMAIL)
        )
        assert refused == {}
        assert await wait_for(lambda: bool(stack.ordinary.received)), postfix.log()
        assert await wait_for(lambda: bool(postfix.log_lines(r"status=sent")))
        queue = await asyncio.to_thread(postfix.queue)
        log = postfix.log()

    (got,) = stack.ordinary.received
    assert stack.mssante.received == []
    assert (got.mail_from, got.rcpt_tos) == (DR_MARTIN, [GMAIL])
    assert b"X-MSSGate-Signature: added" in got.data
    assert BAL.encode() in got.data  # the preferred MSSanté address, in the body
    assert b"by relais.structure.test (Postfix)" in got.data  # it did go through Postfix
    (sent,) = [line for line in log.splitlines() if "status=sent" in line]
    assert f"relay=127.0.0.1[127.0.0.1]:{stack.port}" in sent
    assert "250 2.0.0 Message transmis (ordinary)" in sent
    assert queue == []
    # deploy/postfix/main.cf, as run here, draws no warning from Postfix.
    assert [line for line in log.splitlines() if "warning:" in line] == []


def bounced_lines(log: str) -> list[str]:
    """The maillog lines of recipients Postfix gave up on."""
    return [line for line in log.splitlines() if "status=bounced" in line]


def recipients_in(lines: list[str]) -> set[str]:
    """The ``to=<...>`` addresses named in maillog lines."""
    return {
        part[len("to=<") : -len(">,")]
        for line in lines
        for part in line.split()
        if part.startswith("to=<")
    }


async def test_postfix_bounces_a_mixed_message_that_mssgate_refuses(tmp_path: Path) -> None:
    """The seeds' quiz sent through the structure's Postfix: mssgate refuses it (550 5.7.1) at
    RCPT and again at end of DATA, so Postfix does not retry but bounces both recipients at
    once, and no recipient gets anything.

    The bounce itself (``MAIL FROM:<>``, ``From: MAILER-DAEMON@relais...``) is addressed to the
    sender's MSSanté BAL and goes to mssgate too, which refuses it under ``trust_space`` (an
    ordinary sender writing into the trust space); Postfix then drops it, a bounce of a bounce
    (``notify_classes`` has no ``2bounce``). The refusal is visible in Postfix's log and in
    mssgate's audit trail, not in the sender's mailbox (see deploy/NOTES.md)."""
    data = message(BAL, f"{CONFRERE}, {OUTLOOK}")
    async with postfix_in_front(tmp_path) as (stack, postfix):
        refused = await asyncio.to_thread(submit, postfix.port, BAL, [CONFRERE, OUTLOOK], data)
        assert refused == {}  # Postfix queued it: the refusal comes later, from its relayhost
        assert await wait_for(lambda: len(bounced_lines(postfix.log())) >= 3), postfix.log()
        assert await wait_for(lambda: not postfix.queue(), 30), postfix.log()
        log = postfix.log()

    print("\n" + "\n".join(bounced_lines(log)))
    original, bounce = [], []
    for line in bounced_lines(log):
        assert f"relay=127.0.0.1[127.0.0.1]:{stack.port}" in line
        assert "dsn=5.7.1" in line and "said: 550 5.7.1 Envoi refuse" in line
        (bounce if f"to=<{BAL}>" in line else original).append(line)
    assert recipients_in(original) == {CONFRERE, OUTLOOK}
    assert all("[regle mixed_recipients]" in line for line in original)
    assert any("(in reply to RCPT TO command)" in line for line in original)
    assert any("(in reply to end of DATA command)" in line for line in original)
    assert "status=deferred" not in log  # a 5xx is final: no retry
    assert "sender non-delivery notification" in log
    (refused_bounce,) = bounce
    assert "[regle trust_space]" in refused_bounce
    # Nothing reached anyone: not the recipients, not (through mssgate) the bounce.
    assert stack.delivered() == 0


async def test_postfix_bounce_reaches_an_ordinary_sender(tmp_path: Path) -> None:
    """An ordinary sender writing to an MSSanté BAL and a gmail address: refused by mssgate;
    Postfix's bounce, from the null sender to an ordinary address, does go out through mssgate
    (ordinary route) and carries mssgate's French refusal; the recipients get nothing."""
    data = message(DR_MARTIN, f"{CONFRERE}, {GMAIL}")
    async with postfix_in_front(tmp_path) as (stack, postfix):
        refused = await asyncio.to_thread(submit, postfix.port, DR_MARTIN, [CONFRERE, GMAIL], data)
        assert refused == {}
        assert await wait_for(lambda: bool(stack.ordinary.received)), postfix.log()
        assert await wait_for(lambda: not postfix.queue(), 30), postfix.log()
        log = postfix.log()

    assert recipients_in(bounced_lines(log)) == {CONFRERE, GMAIL}
    (bounce,) = stack.ordinary.received
    assert stack.mssante.received == []
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", [DR_MARTIN])
    parsed = email.message_from_bytes(bounce.data, policy=email.policy.default)
    assert parsed["From"].addresses[0].username.upper() == "MAILER-DAEMON"
    assert parsed.get_content_type() == "multipart/report"
    assert b"550 5.7.1 Envoi refuse" in bounce.data
    assert b"X-MSSGate-Signature" not in bounce.data  # MAILER-DAEMON is nobody's address


# =============================================================================================
# msmtp submitting to mssgate with STARTTLS and AUTH


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and certificates for 127.0.0.1."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def msmtprc(folder: Path, stack: SecureStack, login: str, password: str, sender: str) -> Path:
    """An msmtp configuration for mssgate's STARTTLS port (mode 0600, as msmtp demands)."""
    rc = folder / f"msmtprc-{login}"
    rc.write_text(
        "defaults\n"
        "tls on\n"
        "tls_starttls on\n"
        f"tls_trust_file {stack.tls.ca}\n"
        "timeout 30\n"
        "syslog off\n"
        "\n"
        "account mssgate\n"
        f"host {LOOPBACK}\n"
        f"port {stack.gateway.port}\n"
        "domain poste.cabinet.test\n"
        "auth plain\n"
        f"user {login}\n"
        f"password {password}\n"
        f"from {sender}\n"
        "\n"
        "account default : mssgate\n"
    )
    rc.chmod(0o600)
    return rc


async def msmtp(rc: Path, data: bytes, *args: str, timeout: float = 60) -> tuple[int, str]:
    """``msmtp -C rc -t`` with the message on stdin; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        "msmtp",
        "-C",
        str(rc),
        "-t",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(data), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace")


needs_msmtp = pytest.mark.skipif(not have("msmtp"), reason="msmtp is not installed")


@needs_msmtp
async def test_msmtp_sends_with_starttls_and_auth(tls: TlsFiles, tmp_path: Path) -> None:
    async with secure_stack(tls) as stack:
        rc = msmtprc(tmp_path, stack, "a.martin", PASSWORDS["a.martin"], BAL)
        code, out = await msmtp(rc, message(BAL, CONFRERE))
        assert code == 0, out
        assert await wait_for(lambda: bool(stack.mssante.received), 10)
    (got,) = stack.mssante.received
    # The policy's copy rule adds the cabinet BAL to what Dr Martin sends from her BAL.
    assert (got.mail_from, got.rcpt_tos) == (BAL, [CONFRERE, CABINET_BAL])
    assert stack.ordinary.received == []


@needs_msmtp
async def test_msmtp_with_a_wrong_password_delivers_nothing(tls: TlsFiles, tmp_path: Path) -> None:
    async with secure_stack(tls) as stack:
        rc = msmtprc(tmp_path, stack, "a.martin", "not the password", BAL)
        code, out = await msmtp(rc, message(BAL, CONFRERE))
        await asyncio.sleep(0.2)
    assert code != 0
    assert "authentication failed" in out.lower() and "535" in out, out
    assert stack.delivered() == 0


@needs_msmtp
async def test_msmtp_as_a_bal_the_user_does_not_hold(tls: TlsFiles, tmp_path: Path) -> None:
    """Sophie (the secretary) may send as the cabinet BAL, not as Dr Martin's own BAL."""
    async with secure_stack(tls) as stack:
        rc = msmtprc(tmp_path, stack, "sophie", PASSWORDS["sophie"], BAL)
        code, out = await msmtp(rc, message(BAL, CONFRERE))
        await asyncio.sleep(0.2)
    assert code != 0
    assert "550 5.7.1" in out, out
    assert f"Expediteur refuse : sophie n'est pas autorise a envoyer en tant que {BAL}" in out
    assert stack.delivered() == 0
