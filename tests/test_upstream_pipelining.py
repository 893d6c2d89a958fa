"""Relaying to an upstream that offers PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write,
with the same all-or-nothing answers as one command at a time; and the upstream transaction
opened ahead, while the client is still sending the message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mssgate import relay
from mssgate.model import Route
from mssgate.server import GatewayHandler, TransactionState
from tests.conftest import Stack, running_stack
from tests.messages import inline_forward, message
from tests.smtp_peers import send, wait_for

DR = "dr.martin@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"
OTHER = "ami2@gmail.com"
CONFRERE = "jean.confrere@medecin.mssante.fr"


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


async def test_envelope_opened_ahead_is_dropped_when_the_filter_refuses(pstack: Stack) -> None:
    """The upstream said 354 while the message came in; the filter refuses it: the upstream
    connection is closed without a final dot, and nothing reaches anyone."""
    refused = await send(pstack.port, DR, [GMAIL], inline_forward(DR, GMAIL, CONFRERE))
    assert refused.code is not None and refused.code >= 500
    # Opened ahead (the opening may still be on its way to the upstream when the client
    # has its refusal: the loop gets a few turns to bring it there).
    assert await wait_for(
        lambda: any(r.startswith(b"MAIL FROM:") for r in pstack.ordinary.reads), 5
    )
    assert pstack.delivered() == 0
    accepted = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert accepted.code == 250, accepted.text
    assert len(pstack.ordinary.received) == 1


async def test_envelope_opened_ahead_too_long_ago_is_not_trusted(
    pstack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its age limit, the prepared transaction is closed and a fresh one made: the
    message is delivered once."""
    monkeypatch.setattr(relay, "PREPARED_MAX_AGE", -1.0)
    for _ in range(2):
        result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
        assert result.code == 250, result.text
    assert len(pstack.ordinary.received) == 2


async def test_upstream_refusal_seen_ahead_is_the_answer(pstack: Stack) -> None:
    """A recipient refused while the message was still coming in: the client gets that
    refusal after its final dot, and the upstream is not asked a second time."""
    pstack.ordinary.behaviour.rcpt_replies[GMAIL] = "550 5.1.1 No such user"
    result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 550 and "No such user" in result.text
    asked = b"".join(pstack.ordinary.reads).count(b"RCPT TO:")
    assert asked == 1


async def _line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 10)


async def test_client_answered_once_as_soon_as_the_upstream_accepted(pstack: Stack) -> None:
    """The 250 is written when the upstream's 250 is read, ahead of the delivery's unwinding:
    it carries the upstream's answer, and no second reply follows it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", pstack.port)
    try:
        assert (await _line(reader)).startswith(b"220")
        writer.write(b"HELO client.example\r\n")
        assert (await _line(reader)).startswith(b"250")
        for command in (f"MAIL FROM:<{DR}>", f"RCPT TO:<{GMAIL}>"):
            writer.write(command.encode() + b"\r\n")
            assert (await _line(reader)).startswith(b"250")
        writer.write(b"DATA\r\n")
        assert (await _line(reader)).startswith(b"354")
        writer.write(message(DR, GMAIL) + b".\r\n")
        answer = await _line(reader)
        assert answer.startswith(b"250 2.0.0 ") and b" ; " in answer, answer
        # The next reply is the next command's: an unknown command gets its 500.
        writer.write(b"XYZZY\r\n")
        assert (await _line(reader)).startswith(b"500")
        writer.write(b"QUIT\r\n")
        assert (await _line(reader)).startswith(b"221")
    finally:
        writer.close()
    assert len(pstack.ordinary.received) == 1


async def test_upstream_refusal_of_the_message_is_the_client_s_only_reply(pstack: Stack) -> None:
    pstack.ordinary.behaviour.data_reply = "554 5.7.1 Rejected by the upstream"
    result = await send(pstack.port, DR, [GMAIL], message(DR, GMAIL))
    assert result.code == 554 and "Rejected by the upstream" in result.text
    assert pstack.delivered() == 0


class _Opened:
    """What an opened upstream transaction is asked before the decision."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_rest(self, message: bytes) -> bool:
        self.sent.append(message)
        return True


@pytest.mark.parametrize("route", [Route.ORDINARY, Route.MSSANTE])
async def test_a_354_already_received_is_read_before_the_decision(route: Route) -> None:
    """The upstream's 354, once read by the loop, reaches the opening task a turn or two
    later: those turns are given before deciding (so that an accepted message goes upstream
    at once), on either route; only the MSSanté route's upstream gets the message then."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[None] = loop.create_future()
    opened = _Opened()

    async def opening() -> _Opened:
        await reply
        return opened

    task = loop.create_task(opening())
    await asyncio.sleep(0)  # (the task waits for the upstream's 354)
    loop.call_soon(reply.set_result, None)  # the 354 read: the task is woken next turn
    envelope = TransactionState()
    envelope.prepared[route] = task  # type: ignore[assignment]
    envelope.dot_free = True
    await GatewayHandler._write_ahead(envelope, b"Subject: x\r\n\r\nBonjour\r\n")
    assert task.done()
    assert opened.sent == ([b"Subject: x\r\n\r\nBonjour\r\n"] if route is Route.MSSANTE else [])
