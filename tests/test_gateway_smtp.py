"""The gateway over real SMTP on 127.0.0.1: smtplib client -> mssgate -> aiosmtpd upstreams."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Stack, running_stack
from tests.messages import forwarded_attachment, inline_forward, message
from tests.smtp_peers import LOOPBACK, free_port, send

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
OUTLOOK = "secretariatCabinetXX@outlook.fr"
GMAIL = "patient.ami@gmail.com"
PATIENT_A = "279035121518989@patient.mssante.fr"
PATIENT_B = "146026322000196@patient.mssante.fr"


async def test_mssante_mail_goes_to_the_mssante_upstream_byte_for_byte(stack: Stack) -> None:
    raw = message(BAL, CONFRERE, extra_headers="X-MSS-NIL: Logiciel 1.0")
    result = await send(stack.port, BAL, [CONFRERE], raw)
    assert result.error is None
    (got,) = stack.mssante.received
    assert got.data == raw
    assert got.rcpt_tos == [CONFRERE, "cabinet.gare@cabinet.mssante.fr"]
    assert stack.ordinary.received == []


async def test_ordinary_mail_gets_the_signature_on_the_wire(stack: Stack) -> None:
    raw = message(DR, GMAIL)
    result = await send(stack.port, DR, [GMAIL], raw)
    assert result.error is None
    (got,) = stack.ordinary.received
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["X-MSSGate-Signature"] == "added"
    body = parsed.get_content()
    assert "Pour les professionnels équipés d'une Messagerie Sécurisée MSSanté" in body
    assert BAL in body
    assert stack.mssante.received == []


async def test_quiz_mixed_recipients_nothing_is_delivered(stack: Stack) -> None:
    # smtplib goes on to DATA with the accepted recipient after the refused RCPT.
    raw = message(BAL, CONFRERE, cc=OUTLOOK)
    result = await send(stack.port, BAL, [CONFRERE, OUTLOOK], raw)
    assert isinstance(result.error, smtplib.SMTPDataError)
    assert result.code == 550
    assert stack.delivered() == 0


async def test_mixed_refusal_text_names_both_sides_at_rcpt() -> None:
    async with running_stack() as stack:

        def transcript() -> tuple[int, bytes]:
            with smtplib.SMTP(LOOPBACK, stack.port, timeout=10) as c:
                c.ehlo("client.test")
                c.mail(BAL)
                assert c.rcpt(CONFRERE)[0] == 250
                return c.rcpt(OUTLOOK)

        code, text = await asyncio.to_thread(transcript)
    assert code == 550
    assert text.startswith(b"5.7.1 ")
    assert CONFRERE.encode() in text and OUTLOOK.encode() in text
    assert text.isascii() and len(text) < 500


async def test_visible_cc_mixing_refused_at_data(stack: Stack) -> None:
    result = await send(stack.port, BAL, [CONFRERE], message(BAL, CONFRERE, cc=OUTLOOK))
    assert result.code == 550 and OUTLOOK in result.text
    assert stack.delivered() == 0


async def test_trust_space_both_ways(stack: Stack) -> None:
    out = await send(stack.port, BAL, [GMAIL], message(BAL, GMAIL))
    assert out.code == 550
    assert BAL in out.text and GMAIL in out.text
    into = await send(stack.port, DR, [CONFRERE], message(DR, CONFRERE))
    assert into.code == 550
    assert BAL in into.text  # the hint: use your own BAL
    assert stack.delivered() == 0


async def test_forwards_of_mssante_content_refused(stack: Stack) -> None:
    for raw in (
        forwarded_attachment(DR, GMAIL, CONFRERE),
        inline_forward(DR, GMAIL, CONFRERE),
        message(CONFRERE, DR, extra_headers=f"Resent-From: {BAL}"),
    ):
        result = await send(stack.port, DR, [GMAIL], raw)
        assert result.code == 550, result
        assert "MSSant" in result.text
    assert stack.delivered() == 0


async def test_patients(stack: Stack) -> None:
    bad = await send(stack.port, BAL, ["288091234567823@patient.mssante.fr"], message(BAL, "x"))
    assert bad.code == 550 and "INS" in bad.text
    two = await send(
        stack.port, BAL, [PATIENT_A, PATIENT_B], message(BAL, f"{PATIENT_A}, {PATIENT_B}")
    )
    assert two.code == 550
    fin = await send(stack.port, BAL, [PATIENT_A], message(BAL, PATIENT_A, subject="[FIN]"))
    assert fin.code == 550
    assert stack.delivered() == 0
    ok = await send(stack.port, BAL, [PATIENT_A], message(BAL, PATIENT_A, subject="[FIN]", body=""))
    assert ok.error is None
    assert len(stack.mssante.received) == 1


async def test_lookalike_reply_is_ascii_with_suggestion(stack: Stack) -> None:
    result = await send(
        stack.port,
        BAL,
        ["jean.confrere@medecin.mssanté.fr"],
        message(BAL, CONFRERE),
        mail_options=["SMTPUTF8"],
    )
    assert result.code == 550
    assert "jean.confrere@medecin.mssante.fr" in result.text
    assert stack.delivered() == 0


async def test_250_only_after_the_upstream_accepted(stack: Stack) -> None:
    stack.ordinary.behaviour.data_delay = 0.5
    result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.error is None
    (got,) = stack.ordinary.received
    assert got.at <= result.at  # the upstream had it before the client heard 250


@pytest.fixture(params=[False, True], ids=["one-at-a-time", "pipelining"])
async def either(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The gateway with upstreams that do, or do not, offer PIPELINING."""
    async with running_stack(pipelining=request.param) as s:
        yield s


async def test_upstream_4xx_becomes_4xx(either: Stack) -> None:
    stack = either
    stack.ordinary.behaviour.data_reply = "452 4.3.1 Insufficient system storage"
    result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 452
    assert "Insufficient system storage" in result.text
    assert stack.delivered() == 0


async def test_upstream_5xx_becomes_5xx_with_its_text(either: Stack) -> None:
    stack = either
    stack.ordinary.behaviour.mail_reply = "554 5.7.1 Sender blocked by operator"
    result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 554
    assert "Sender blocked by operator" in result.text


async def test_recipient_refused_upstream_is_never_reported_accepted(either: Stack) -> None:
    stack = either
    other = "ami2@gmail.com"
    stack.ordinary.behaviour.rcpt_replies[other] = "550 5.1.1 No such user"
    result = await send(stack.port, DR, [GMAIL, other], message(DR, f"{GMAIL}, {other}"))
    assert result.code == 550
    assert other in result.text and "No such user" in result.text
    assert stack.delivered() == 0  # all or nothing: the good recipient got nothing either


async def test_upstream_down_is_451() -> None:
    async with running_stack(ordinary_port=free_port()) as stack:
        result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 451
    assert "injoignable" in result.text


async def test_upstream_slower_than_its_budget_is_451() -> None:
    async with running_stack(timeout=0.5) as stack:
        stack.ordinary.behaviour.data_delay = 2
        result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 451
    assert "4.4.2" in result.text or "lai" in result.text


async def test_upstream_dropping_mid_data_is_4xx(stack: Stack) -> None:
    stack.ordinary.behaviour.drop_on_data = True
    result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code is not None and 400 <= result.code < 500
    assert stack.delivered() == 0


@pytest.mark.parametrize("step", ["draft", "judge"])
async def test_filter_raising_is_451_and_nothing_relayed(step: str) -> None:
    """Whichever step of the filter fails (after the drafted message went upstream, for the
    rules), the client gets a 451 and nothing is delivered."""

    def exploding(*args: object) -> Any:
        raise RuntimeError("boom")

    steps: dict[str, Any] = {f"{step}_fn": exploding}
    async with running_stack(pipelining=True, **steps) as stack:
        result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
        assert result.code == 451
        assert stack.delivered() == 0


async def test_8bitmime_and_smtputf8_are_passed_upstream(stack: Stack) -> None:
    raw = message(DR, "josé@exemple.fr", body="Été très chaud.\n")
    result = await send(
        stack.port, DR, ["josé@exemple.fr"], raw, mail_options=["BODY=8BITMIME", "SMTPUTF8"]
    )
    assert result.error is None
    (got,) = stack.ordinary.received
    assert "BODY=8BITMIME" in got.mail_options and "SMTPUTF8" in got.mail_options
    assert got.rcpt_tos == ["josé@exemple.fr"]
    assert "Été très chaud.".encode() in got.data


async def test_non_loopback_clients_need_client_networks() -> None:
    from mssgate.server import GatewayHandler

    async with running_stack() as stack:
        session = type("S", (), {"peer": ("192.0.2.10", 4000)})()
        allowed = GatewayHandler._client_allowed(stack.policy, session)  # type: ignore[arg-type]
    assert allowed is False


async def test_exception_in_a_hook_is_451_not_500(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mssgate.server

    def broken(*args: object) -> None:
        raise RuntimeError("classifier failure")

    monkeypatch.setattr(mssgate.server, "check_recipient", broken)
    result = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 451
    assert stack.delivered() == 0


async def test_recipient_domains_that_do_not_exist_are_refused() -> None:
    from tests.dns_server import DnsServer

    zone = {
        "gmail.com": {"MX": ["5 gmail-smtp-in.l.google.com."]},
        "medecin.mssante.fr": {"MX": ["10 mx.medecin.mssante.fr."]},
    }
    async with DnsServer(zone, servfail=["panne.fr"]) as dns:
        extra = f"dns_check: {{nameservers: ['{dns.nameserver}'], timeout: 1}}\n"
        async with running_stack(extra) as stack:
            typo = await send(stack.port, DR, ["ami@gmial.com"], message(DR, "ami@gmial.com"))
            assert typo.code == 550 and "gmial.com" in typo.text
            bal = "x@medecn.mssante.fr"
            typo_bal = await send(stack.port, BAL, [bal], message(BAL, bal))
            assert typo_bal.code == 550
            down = await send(stack.port, DR, ["a@panne.fr"], message(DR, "a@panne.fr"))
            assert down.code == 451  # DNS failure: temporary, never a pass or a refusal
            # one recipient's DNS failure makes the whole message temporary
            both = await send(stack.port, DR, [GMAIL, "a@panne.fr"], message(DR, GMAIL))
            assert both.code == 451
            assert stack.delivered() == 0
            ok = await send(stack.port, DR, [GMAIL], message(DR, GMAIL))
            assert ok.error is None and len(stack.ordinary.received) == 1
