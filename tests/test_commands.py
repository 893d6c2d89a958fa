"""Plain MAIL FROM / RCPT TO lines answered as they arrive: the same answers as aiosmtpd's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from mssgate.commands import MAX_LINE, EnvelopeCommand, envelope_command
from mssgate.relay import build_relays
from mssgate.server import Gateway, GatewaySMTP
from tests.conftest import make_policy
from tests.smtp_peers import LOOPBACK, CaptureUpstream

DR = "dr.martin@cabinet-gare.fr"
BAL = "alice.martin@medecin.mssante.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"MAIL FROM:<{DR}>\r\n", EnvelopeCommand("MAIL", DR, (), None)),
        (f"mail from: <{DR}>\r\n", EnvelopeCommand("MAIL", DR, (), None)),
        (
            f"MAIL FROM:<{DR}> size=2048 body=8bitmime  \r\n",
            EnvelopeCommand("MAIL", DR, ("SIZE=2048", "BODY=8BITMIME"), 2048),
        ),
        (
            f"MAIL FROM:<{DR}> BODY=7BIT\r\n",
            EnvelopeCommand("MAIL", DR, ("BODY=7BIT",), None),
        ),
        (f"RCPT TO:<{GMAIL}>\r\n", EnvelopeCommand("RCPT", GMAIL, (), None)),
        (
            "Rcpt To:<O'Neil+x@Example-1.fr>\r\n",
            EnvelopeCommand("RCPT", "O'Neil+x@Example-1.fr", (), None),
        ),
    ],
)
def test_plain_envelope_commands_are_recognised(line: str, expected: EnvelopeCommand) -> None:
    assert envelope_command(line.encode()) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<>\r\n",  # (the null sender)
        b'MAIL FROM:<"dr martin"@cabinet-gare.fr>\r\n',
        b"MAIL FROM:<@relay.fr:dr.martin@cabinet-gare.fr>\r\n",
        b"MAIL FROM:dr.martin@cabinet-gare.fr\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> SMTPUTF8\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> BODY=BINARYMIME\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> SIZE=1 SIZE=2\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> SIZE=big\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> AUTH=<>\r\n",
        b"MAIL FROM:<dr.martin@cabinet-gare.fr> BODY=7BIT BODY=8BITMIME\r\n",
        b"RCPT TO:<patient.ami@gmail.com> NOTIFY=NEVER\r\n",
        "RCPT TO:<jean@médecin.fr>\r\n".encode(),
        b"RCPT TO:<patient.ami@gmail.com>\n",  # (a bare line feed)
        b"RCPT TO:<patient.ami@gmail.com>",  # (no line end yet)
        b"RCPT TO:<a@b.fr>\r\nRCPT TO:<c@d.fr>\r\n",  # (two commands at once)
        b"MAIL  FROM:<dr.martin@cabinet-gare.fr>\r\n",
        b"MAIL FROM:<dr..martin@cabinet-gare.fr>\r\n",
        b"VRFY <dr.martin@cabinet-gare.fr>\r\n",
        b"RCPT TO:<" + b"a" * 300 + b"@" + b"b" * 300 + b".fr>\r\n",
    ],
)
def test_anything_else_is_left_to_the_usual_parser(line: bytes) -> None:
    assert envelope_command(line) is None


def test_the_line_and_local_part_limits_hold() -> None:
    local = "a" * 64
    line = f"RCPT TO:<{local}@cabinet-gare.fr>\r\n".encode()
    assert envelope_command(line, local_part_limit=64) is not None
    assert envelope_command(line, local_part_limit=63) is None
    domain = ".".join(["d" * 60] * 8) + ".fr"
    at_limit = f"RCPT TO:<{'a' * (MAX_LINE - 13 - len(domain))}@{domain}>\r\n".encode()
    assert len(at_limit) == MAX_LINE and envelope_command(at_limit) is not None
    assert envelope_command(at_limit.replace(b"<", b"<a")) is None


SCRIPT = [
    f"RCPT TO:<{GMAIL}>",  # before MAIL: 503
    f"MAIL FROM:<{DR}> SIZE=999999999999",  # over the size limit: 552
    "MAIL FROM:<alice.martin@medecin-mssante.fr>",  # a lookalike sender: refused
    f"MAIL FROM:<{BAL}> BODY=8BITMIME SIZE=2000",
    f"MAIL FROM:<{BAL}>",  # nested: 503
    f"RCPT TO:<{CONFRERE}>",
    f"RCPT TO:<{GMAIL}>",  # mixed with the MSSanté recipient: refused
    f"RCPT TO:<{CONFRERE}> NOTIFY=NEVER",  # no RCPT parameter known: 555
    "RSET",
    f"MAIL FROM:<{DR}>",
    f"RCPT TO:<{GMAIL}>",
    "RSET",
]


class CountingGateway(Gateway):
    """A gateway that keeps its sessions, to read how they answered."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sessions: list[GatewaySMTP] = []

    def _protocol(self, implicit_tls: bool) -> GatewaySMTP:
        session = super()._protocol(implicit_tls)
        self.sessions.append(session)
        return session


@contextlib.asynccontextmanager
async def _gateway(listen_extra: str = "") -> AsyncIterator[CountingGateway]:
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port, listen_extra=listen_extra)
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with CountingGateway(lambda: policy, relays, host=LOOPBACK, port=0) as gateway:
            yield gateway


async def _reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "connection closed"
        lines += line
        if line[3:4] != b"-":
            return lines


async def _replies(port: int, script: list[str], split: bool) -> list[bytes]:
    """Each command's reply, one command at a time; ``split``: each line written in two
    pieces (the first one waits in aiosmtpd's reader: the usual parser answers)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        await _reply(reader)
        writer.write(b"EHLO client.test\r\n")
        await _reply(reader)
        replies = []
        for command in script:
            line = f"{command}\r\n".encode()
            if split:
                writer.write(line[:2])
                await writer.drain()
                await asyncio.sleep(0.01)
                line = line[2:]
            writer.write(line)
            replies.append(await _reply(reader))
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return replies
    finally:
        writer.close()


async def test_answers_are_the_same_as_the_usual_parsers() -> None:
    async with _gateway() as gateway:
        now = await _replies(gateway.port, SCRIPT, split=False)
        usual = await _replies(gateway.port, SCRIPT, split=True)
        fast, slow = (s._fast_commands for s in gateway.sessions)
    assert now == usual
    assert [r[:3] for r in now] == [
        b"503", b"552", b"550", b"250", b"503", b"250", b"550", b"555", b"250",
        b"250", b"250", b"250",
    ]  # fmt: skip
    # Answered as they arrived: the plain MAIL FROM / RCPT TO in a state that allows them.
    assert (fast, slow) == (6, 0)


MESSAGE = (
    f"From: {DR}\r\nTo: {GMAIL}\r\nSubject: Rendez-vous\r\nMessage-ID: <rdv@cabinet-gare.fr>\r\n"
    "\r\nBonjour,\r\nle rendez-vous est confirme.\r\n.\r\n"
)
TRANSACTIONS = [
    "DATA",  # no transaction: 503
    f"MAIL FROM:<{DR}>",
    "DATA",  # no recipient yet: 503
    f"RCPT TO:<{GMAIL}>",
    "DATA 1",  # 501
    "DATA",
    MESSAGE,
    f"MAIL FROM:<{DR}>",
    f"RCPT TO:<{GMAIL}>",
    "data",
    MESSAGE,
]


async def test_a_whole_transaction_gets_the_same_answers() -> None:
    async with _gateway() as gateway:
        now = await _replies(gateway.port, [c.removesuffix("\r\n") for c in TRANSACTIONS], False)
        usual = await _replies(gateway.port, [c.removesuffix("\r\n") for c in TRANSACTIONS], True)
        fast, slow = (s._fast_commands for s in gateway.sessions)
    assert [r[:3] for r in now] == [
        b"503", b"250", b"503", b"250", b"501", b"354", b"250", b"250", b"250", b"354", b"250",
    ]  # fmt: skip
    # (The 250s of the messages name their own upstream transactions.)
    assert [r[:4] for r in now] == [r[:4] for r in usual]
    assert (fast, slow) == (6, 0)  # 2 MAIL, 2 RCPT, 2 DATA


async def test_commands_in_one_packet_and_auth_answers_take_the_usual_way() -> None:
    async with _gateway() as gateway:
        reader, writer = await asyncio.open_connection(LOOPBACK, gateway.port)
        try:
            await _reply(reader)
            writer.write(b"EHLO client.test\r\n")
            await _reply(reader)
            writer.write(f"MAIL FROM:<{DR}>\r\nRCPT TO:<{GMAIL}>\r\nRSET\r\n".encode())
            codes = [(await _reply(reader))[:3] for _ in range(3)]
            writer.write(b"QUIT\r\n")
            await _reply(reader)
        finally:
            writer.close()
        (session,) = gateway.sessions
    assert codes == [b"250", b"250", b"250"] and session._fast_commands == 0
