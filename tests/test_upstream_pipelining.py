"""Relaying to an upstream that offers PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write,
with the same all-or-nothing answers as one command at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Stack, running_stack
from tests.messages import message
from tests.smtp_peers import send

DR = "dr.martin@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"
OTHER = "ami2@gmail.com"


@pytest.fixture
async def pstack() -> AsyncIterator[Stack]:
    """The gateway with two upstreams that offer PIPELINING."""
    async with running_stack(pipelining=True) as s:
        yield s


async def test_envelope_and_data_go_in_one_write(pstack: Stack) -> None:
    result = await send(pstack.port, DR, [GMAIL, OTHER], message(DR, f"{GMAIL}, {OTHER}"))
    assert result.code == 250, result.text
    (received,) = pstack.ordinary.received
    assert received.rcpt_tos == [GMAIL, OTHER]
    grouped = [r for r in pstack.ordinary.reads if r.startswith(b"MAIL FROM:")]
    assert grouped, pstack.ordinary.reads
    assert grouped[0].count(b"RCPT TO:") == 2
    assert grouped[0].endswith(b"DATA\r\n")


async def test_second_message_on_the_warm_connection(pstack: Stack) -> None:
    for _ in range(3):
        result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
        assert result.code == 250, result.text
    assert len(pstack.ordinary.received) == 3


async def test_one_recipient_refused_nothing_delivered(pstack: Stack) -> None:
    pstack.ordinary.behaviour.rcpt_replies[OTHER] = "550 5.1.1 No such user"
    result = await send(pstack.port, DR, [GMAIL, OTHER], message(DR, f"{GMAIL}, {OTHER}"))
    assert result.code == 550
    assert OTHER in result.text and "No such user" in result.text
    assert pstack.delivered() == 0
    # The next message goes through (a new connection: the refused one was dropped).
    assert (await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))).code == 250
    assert len(pstack.ordinary.received) == 1


async def test_recipient_deferred_is_4xx(pstack: Stack) -> None:
    pstack.ordinary.behaviour.rcpt_replies[GMAIL] = "450 4.2.1 Mailbox busy"
    result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 450
    assert pstack.delivered() == 0


async def test_sender_refused_is_5xx_with_its_text(pstack: Stack) -> None:
    pstack.ordinary.behaviour.mail_reply = "554 5.7.1 Sender blocked by operator"
    result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 554
    assert "Sender blocked by operator" in result.text
    assert pstack.delivered() == 0


async def test_data_refused_after_the_message_is_4xx(pstack: Stack) -> None:
    pstack.ordinary.behaviour.data_reply = "452 4.3.1 Insufficient system storage"
    result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 452
    assert pstack.delivered() == 0
