"""Real third-party peers: swaks as the client, Postfix's smtp-sink as the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mssgate.decide import decide
from mssgate.model import Envelope
from mssgate.policy import Policy
from mssgate.relay import build_relays
from mssgate.server import Gateway
from tests.conftest import Stack, make_policy
from tests.messages import message
from tests.smtp_peers import LOOPBACK, SmtpSink, have, send, swaks

pytestmark = pytest.mark.skipif(
    not (have("swaks") and have("smtp-sink")),
    reason="swaks and smtp-sink come from Debian's packages: run scripts/system-deps.sh",
)

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
OUTLOOK = "secretariatCabinetXX@outlook.fr"
GMAIL = "patient.ami@gmail.com"


@asynccontextmanager
async def sink_gateway(*sink_args: str) -> AsyncIterator[tuple[Gateway, SmtpSink, Policy]]:
    """mssgate whose two routes both go to one smtp-sink."""
    async with SmtpSink(*sink_args) as sink:
        policy = make_policy(sink.port, sink.port)
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with Gateway(lambda: policy, relays, host=LOOPBACK, port=0) as gateway:
            yield gateway, sink, policy


async def test_swaks_ordinary_mail_is_signed_on_the_wire(stack: Stack) -> None:
    code, out = await swaks(
        stack.port,
        "--from",
        DR,
        "--to",
        GMAIL,
        "--header",
        "Subject: Rendez-vous",
        "--body",
        "Bonjour, je confirme le rendez-vous.",
    )
    assert code == 0, out
    assert "250 2.0.0" in out
    (got,) = stack.ordinary.received
    assert b"X-MSSGate-Signature: added" in got.data
    assert BAL.encode() in got.data


async def test_swaks_quiz_mixed_recipients_refused(stack: Stack) -> None:
    code, out = await swaks(stack.port, "--from", BAL, "--to", f"{CONFRERE},{OUTLOOK}")
    assert code != 0
    assert "550 5.7.1" in out
    assert stack.delivered() == 0


async def test_swaks_lookalike_refused_with_suggestion(stack: Stack) -> None:
    code, out = await swaks(stack.port, "--from", BAL, "--to", "x@interop-mssante.apycrypt.org")
    assert code != 0
    assert "x@interop-mssante.apicrypt.org" in out
    assert stack.delivered() == 0


async def test_smtp_sink_receives_the_signed_message() -> None:
    async with sink_gateway() as (gateway, sink, _):
        result = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
        assert result.error is None
        code, out = await swaks(gateway.port, "--from", BAL, "--to", CONFRERE)
        assert code == 0, out
        dumps = sink.messages()
    assert len(dumps) == 2
    signed = [d for d in dumps if b"X-MSSGate-Signature: added" in d]
    assert len(signed) == 1 and BAL.encode() in signed[0]


async def test_smtp_sink_soft_reject_on_data_is_4xx() -> None:
    async with sink_gateway("-r", "DATA") as (gateway, _sink, _):
        result = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code is not None and 400 <= result.code < 500


async def test_smtp_sink_hard_reject_on_rcpt_is_5xx() -> None:
    async with sink_gateway("-f", "RCPT") as (gateway, sink, _):
        result = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
        assert sink.messages() == []
    assert result.code is not None and 500 <= result.code < 600
    assert GMAIL in result.text


@pytest.mark.parametrize("route", ["mssante", "ordinary"])
async def test_smtp_sink_receives_a_big_message_whole(route: str) -> None:
    """A big message into Postfix's smtp-sink: on the MSSanté route it goes while it comes in
    (PIPELINING, then the lines as they arrive), on the ordinary one once decided and
    signed; either way the sink holds it whole, once."""
    from tests.test_send_ahead import BAL, CONFRERE, big_message

    sender, rcpt = (BAL, CONFRERE) if route == "mssante" else (DR, GMAIL)
    raw = big_message(sender, rcpt)
    async with sink_gateway() as (gateway, sink, policy):
        result = await send(gateway.port, sender, [rcpt], raw)
        assert result.error is None, result
        dumps = sink.messages()
    expected = decide(policy, Envelope(sender, (rcpt,)), raw).deliveries[0].message
    assert len(dumps) == 1
    # (smtp-sink writes its own X- lines first, LF line ends, and a blank line at the end)
    dumped = dumps[0].replace(b"\r\n", b"\n").rstrip(b"\n")
    assert dumped.endswith(b"\n" + expected.replace(b"\r\n", b"\n").rstrip(b"\n"))
    assert (b"X-MSSGate-Signature: added" in dumps[0]) is (route == "ordinary")
