"""Messages sent upstream before they are decided, over real SMTP: on the MSSanté route (inside
the trust space) a big message goes while it comes in (mssgate.ahead) and any message as soon
as it is in; the upstream finally holds exactly what the filter decided, once, whatever
happened on the way (a refusal, a rewrite the beginning did not predict, dots, bare line
endings, a client that leaves). An ordinary upstream gets nothing of a message's content
before its acceptance."""

from __future__ import annotations

import asyncio
import base64
import random
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from mssgate import ahead
from mssgate.decide import Draft, decide, draft, judge
from mssgate.model import Action, Decision, Envelope, Verdict
from mssgate.policy import Policy
from tests.conftest import Stack, corpus_files, running_stack
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

DR = "dr.martin@cabinet-gare.fr"
BAL = "alice.martin@medecin.mssante.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
COPY = "cabinet.gare@cabinet.mssante.fr"
GMAIL = "patient.ami@gmail.com"
SIZE = 3 * ahead.START  # well past the point where sending ahead starts


def big_message(
    sender: str, to: str, tail_text: str = "", size: int = SIZE, tail_part: str = ""
) -> bytes:
    """A text part, a base64 attachment of about ``size`` bytes, then (optionally) one more
    text part or ``tail_part`` (headers and body): the signature's place is at the top, the
    tail comes last."""
    blob = random.Random(7).randbytes(size * 3 // 4)
    b64 = base64.encodebytes(blob).decode().replace("\n", "\r\n")
    if tail_text:
        tail_part = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{tail_text}"
    tail = f"--b1\r\n{tail_part}\r\n" if tail_part else ""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Imagerie\r\nMessage-ID: <big@cabinet-gare.fr>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour,\r\nci-joint.\r\n"
        '--b1\r\nContent-Type: application/pdf; name="cr.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{b64}{tail}--b1--\r\n"
    ).encode()


@pytest.fixture(params=[False, True], ids=["one-at-a-time", "pipelining"])
async def bstack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The gateway with two capture upstreams, with and without PIPELINING."""
    async with running_stack(pipelining=request.param) as s:
        yield s


def decided(stack: Stack, sender: str, rcpts: list[str], raw: bytes) -> bytes:
    """What the filter relays for this message, computed directly."""
    decision = decide(stack.policy, Envelope(sender, tuple(rcpts)), raw)
    assert decision.action is Action.ACCEPT
    (delivery,) = decision.deliveries
    return delivery.message


def _seen_by(upstream: CaptureUpstream, text: bytes) -> bool:
    """Whether these bytes reached the upstream's socket at all (delivered or not)."""
    return text in b"".join(upstream.reads)


async def test_signed_big_message_arrives_exactly_as_decided(
    bstack: Stack, sent_ahead: list[int]
) -> None:
    """On the ordinary route a big message goes upstream once decided, signed, whole."""
    raw = big_message(DR, GMAIL)
    result = await send(bstack.port, DR, [GMAIL], raw)
    assert result.code == 250, result.text
    assert sent_ahead == []  # an ordinary upstream: nothing before the decision
    (received,) = bstack.ordinary.received
    assert received.data == decided(bstack, DR, [GMAIL], raw)
    assert b"X-MSSGate-Signature: added" in received.data


async def test_mssante_big_message_byte_for_byte(bstack: Stack, sent_ahead: list[int]) -> None:
    raw = big_message(BAL, CONFRERE)
    result = await send(bstack.port, BAL, [CONFRERE], raw)
    assert result.code == 250, result.text
    assert sent_ahead
    (received,) = bstack.mssante.received
    assert received.data == raw
    assert received.rcpt_tos == [CONFRERE, COPY]


async def test_forward_at_the_end_never_reaches_the_ordinary_upstream(
    bstack: Stack, sent_ahead: list[int]
) -> None:
    """A big message whose end forwards a message received from an MSSanté address to an
    ordinary one: refused, and not one byte of its content reached the ordinary upstream
    (not even undelivered: the health data stays inside the trust space)."""
    forward = (
        "Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
        f"From: {CONFRERE}\r\nTo: {DR}\r\nSubject: resultats\r\n\r\nHbA1c 7,2 %."
    )
    raw = big_message(DR, GMAIL, tail_part=forward)
    result = await send(bstack.port, DR, [GMAIL], raw)
    assert result.code is not None and result.code >= 500, result.text
    assert sent_ahead == []
    assert bstack.delivered() == 0
    assert not _seen_by(bstack.ordinary, b"HbA1c")
    assert not _seen_by(bstack.ordinary, b"Imagerie")  # (the subject: nothing of it at all)
    after = await send(bstack.port, DR, [GMAIL], big_message(DR, GMAIL))
    assert after.code == 250
    assert len(bstack.ordinary.received) == 1


async def test_refused_at_the_end_nothing_reaches_anyone(sent_ahead: list[int]) -> None:
    """On the MSSanté route the beginning went ahead; the filter refuses the message for
    what its end holds: the upstream never gets the final dot, and keeps nothing."""

    def refuse_marked(policy: Policy, drafted: Draft) -> Decision:
        if b"REFUS-FINAL" in drafted.deliveries[0].message[-4096:]:
            return Decision.refuse(Verdict("test_rule", 550, "5.7.1", "refusé à la fin"))
        return judge(policy, drafted)

    async with running_stack(judge_fn=refuse_marked, pipelining=True) as stack:
        raw = big_message(BAL, CONFRERE, tail_text="REFUS-FINAL")
        result = await send(stack.port, BAL, [CONFRERE], raw)
        assert result.code == 550, result.text
        assert sent_ahead
        await asyncio.sleep(0.05)
        assert stack.delivered() == 0
        after = await send(stack.port, BAL, [CONFRERE], big_message(BAL, CONFRERE))
        assert after.code == 250
        assert len(stack.mssante.received) == 1


async def test_rewrite_not_predicted_goes_the_usual_way(sent_ahead: list[int]) -> None:
    """The whole message is relayed with other bytes at its top than its beginning was (a
    filter whose answer changes with the end): what went ahead is dropped with its
    connection, and the message decided is delivered, once."""

    def late_change(policy: Policy, drafted: Draft) -> Decision:
        decision = judge(policy, drafted)
        if not drafted.deliveries[0].message.endswith(b"--b1--\r\n"):
            return decision  # a beginning: the usual answer
        (delivery,) = decision.deliveries
        changed = replace(delivery, message=b"X-Late: 1\r\n" + delivery.message)
        return replace(decision, deliveries=(changed,))

    async with running_stack(judge_fn=late_change, pipelining=True) as stack:
        raw = big_message(BAL, CONFRERE)
        result = await send(stack.port, BAL, [CONFRERE], raw)
        assert result.code == 250, result.text
        assert sent_ahead
        (received,) = stack.mssante.received
        assert received.data == b"X-Late: 1\r\n" + raw


@pytest.mark.parametrize(
    "late",
    ["..cachee\r\n", "ligne nue\n", "retour\r chariot\r\n"],
    ids=["stuffed-dot", "bare-lf", "bare-cr"],
)
async def test_late_dots_and_line_endings_are_relayed_right(bstack: Stack, late: str) -> None:
    """A line starting with a dot, or a bare line ending, after sending ahead began: the
    upstream gets the message the filter read (unstuffed, every line ending CRLF)."""
    raw = big_message(BAL, CONFRERE, tail_text="fin")
    wire = raw.replace(b"fin\r\n", late.encode() + b"fin\r\n")
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(_send_paced, bstack.port, BAL, CONFRERE, wire + b".\r\n", 0)
    assert code == 250
    (received,) = bstack.mssante.received
    expected = wire.replace(b"\r\n..", b"\r\n.").replace(b"\r\n", b"\n")
    expected = expected.replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert received.data == expected


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole SMTP reply (the last line of a multi-line one)."""
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


async def test_client_leaving_midway_leaves_nothing(bstack: Stack, sent_ahead: list[int]) -> None:
    raw = big_message(BAL, CONFRERE)
    reader, writer = await asyncio.open_connection(LOOPBACK, bstack.port)
    await _reply(reader)  # the banner
    for command in (b"EHLO client.test", f"MAIL FROM:<{BAL}>", f"RCPT TO:<{CONFRERE}>", b"DATA"):
        writer.write((command if isinstance(command, bytes) else command.encode()) + b"\r\n")
        reply = await _reply(reader)
    assert reply.startswith(b"354")
    writer.write(raw[: len(raw) * 2 // 3])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await asyncio.sleep(0.3)
    assert sent_ahead
    assert bstack.delivered() == 0
    again = await send(bstack.port, BAL, [CONFRERE], big_message(BAL, CONFRERE))
    assert again.code == 250
    assert len(bstack.mssante.received) == 1


async def test_nothing_goes_ahead_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """With more DATA transfers at once than the gateway sends ahead for, messages go the
    usual way, and all arrive."""
    from mssgate import server

    monkeypatch.setattr(server, "AHEAD_MAX_TRANSFERS", 0)
    async with running_stack() as stack:
        raw = big_message(BAL, CONFRERE)
        results = await asyncio.gather(*(send(stack.port, BAL, [CONFRERE], raw) for _ in range(3)))
        assert [r.code for r in results] == [250, 250, 250]
        assert [r.data for r in stack.mssante.received] == [raw] * 3
        assert stack.mssante.received[0].rcpt_tos == [CONFRERE, COPY]


# -- the whole message written ahead of the decision, on a byte-for-byte route ------------------


def _crlf(raw: bytes) -> bytes:
    """A corpus file as it travels: every line ending CRLF, the last one too."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def _stuffed(message: bytes) -> bytes:
    """The DATA payload of a CRLF message (leading dots doubled, final dot)."""
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def _send_paced(port: int, sender: str, rcpt: str, payload: bytes, pause: float) -> int:
    """DATA, then ``pause`` seconds before these exact bytes (dot-stuffed by the caller, bare
    line endings kept, final dot included): with a pause, the upstream has said 354 by then."""
    with smtplib.SMTP(LOOPBACK, port, timeout=20) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt(rcpt)
        code, _ = client.docmd("DATA")
        assert code == 354
        time.sleep(pause)
        client.send(payload)
        code, _ = client.getreply()
        return code


CORPUS_SAMPLE = [p for p in corpus_files() if p.stat().st_size < 100_000]


@pytest.mark.parametrize("path", CORPUS_SAMPLE, ids=[p.stem for p in CORPUS_SAMPLE])
@pytest.mark.parametrize("route", ["mssante", "ordinary"])
async def test_message_goes_upstream_before_the_decision_on_the_mssante_route_only(
    bstack: Stack, sent_ahead: list[int], path: Path, route: str
) -> None:
    """A real-world message on the MSSanté route is written to the opened upstream
    transaction before the decision, as received: accepted, only the final dot is left to
    send, and the upstream holds the message, once; refused (its own To/Cc name ordinary
    addresses), the upstream never gets the final dot and keeps nothing. On the ordinary
    route nothing of it goes before the decision, and a refused one never reaches the
    upstream's socket."""
    sender, rcpt = (BAL, CONFRERE) if route == "mssante" else (DR, GMAIL)
    raw = _crlf(path.read_bytes())
    dot_free = not raw.startswith(b".") and b"\r\n." not in raw
    drafted = draft(bstack.policy, Envelope(sender, (rcpt,), dot_free=dot_free), raw)
    decision = judge(bstack.policy, drafted)
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(_send_paced, bstack.port, sender, rcpt, _stuffed(raw), 0.05)
    assert code == decision.smtp_code
    if decision.action is Action.ACCEPT:
        (received,) = bstack.delivered_messages()
        assert received.data == decision.deliveries[0].message
    else:
        await asyncio.sleep(0.05)
        assert bstack.delivered() == 0
    # Only the MSSanté route takes a message before its decision; and lines starting with a
    # dot would need stuffing again on the way out: those go the usual way, after it.
    (delivery,) = drafted.deliveries
    ahead = route == "mssante" and delivery.dot_free
    assert sent_ahead == ([len(delivery.message)] if ahead else [])
    if route == "ordinary" and decision.action is not Action.ACCEPT:
        assert not _seen_by(bstack.ordinary, raw[-200:].strip())


async def test_refused_after_going_ahead_reaches_no_one(sent_ahead: list[int]) -> None:
    """The message was upstream before the filter refused it: the upstream never gets the
    final dot, keeps nothing, and the next message goes through on a fresh connection."""
    refuse_once = [True]

    def refusing(policy: Policy, drafted: Draft) -> Decision:
        if refuse_once.pop() if refuse_once else False:
            verdict = Verdict("test_rule", 550, "5.7.1", "refusé après coup")
            return Decision.refuse(verdict)
        return judge(policy, drafted)

    raw = b"From: " + BAL.encode() + b"\r\nTo: " + CONFRERE.encode() + b"\r\n\r\nCR joint.\r\n"
    async with running_stack(judge_fn=refusing, pipelining=True) as stack:
        async with asyncio.timeout(30):
            first = await asyncio.to_thread(
                _send_paced, stack.port, BAL, CONFRERE, _stuffed(raw), 0.2
            )
        assert first == 550
        assert sent_ahead  # it had gone upstream
        await asyncio.sleep(0.2)
        assert stack.delivered() == 0
        async with asyncio.timeout(30):
            second = await asyncio.to_thread(
                _send_paced, stack.port, BAL, CONFRERE, _stuffed(raw), 0.2
            )
        assert second == 250
        assert [r.data for r in stack.mssante.received] == [raw]


async def test_final_dot_alone_after_the_whole_message_went_ahead(
    bstack: Stack, sent_ahead: list[int]
) -> None:
    """Every line of a big MSSanté message went ahead while it came in; the client's final
    dot comes alone, later: only the dot is left to send, and nothing is added."""
    raw = big_message(BAL, CONFRERE)

    def paced() -> int:
        with smtplib.SMTP(LOOPBACK, bstack.port, timeout=20) as client:
            client.ehlo()
            client.mail(BAL)
            client.rcpt(CONFRERE)
            assert client.docmd("DATA")[0] == 354
            client.send(raw)
            time.sleep(0.3)
            client.send(b".\r\n")
            return client.getreply()[0]

    async with asyncio.timeout(30):
        code = await asyncio.to_thread(paced)
    assert code == 250
    assert sum(sent_ahead) == len(raw)
    (received,) = bstack.mssante.received
    assert received.data == raw


async def test_bare_cr_found_as_the_message_comes_in(bstack: Stack, sent_ahead: list[int]) -> None:
    """Bare CRs are looked for as the message comes in: an innocent one on the MSSanté route
    is relayed made CRLF, once. A message for the ordinary route smuggling a forward of
    MSSanté content behind bare CRs is refused, and nothing of it reached that upstream."""
    smuggled = (
        f"From: {DR}\r\nTo: {GMAIL}\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\rContent-Type: text/plain\r\rPour info.\r"
        "--b1\rContent-Type: message/rfc822\rContent-Disposition: attachment\r\r"
        f"From: {CONFRERE}\rTo: {DR}\rSubject: resultats\r\rHbA1c 7,2 %.\r--b1--\r\r\n"
    ).encode()
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(
            _send_paced, bstack.port, DR, GMAIL, smuggled + b".\r\n", 0.05
        )
    assert code >= 500
    assert sent_ahead == []
    await asyncio.sleep(0.05)
    assert bstack.delivered() == 0
    assert not _seen_by(bstack.ordinary, b"HbA1c")

    innocent = f"From: {BAL}\r\nTo: {CONFRERE}\r\n\r\nLigne\rsuite.\r\n".encode()
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(
            _send_paced, bstack.port, BAL, CONFRERE, innocent + b".\r\n", 0.05
        )
    assert code == 250
    (received,) = bstack.mssante.received
    assert received.data == innocent.replace(b"Ligne\rsuite", b"Ligne\r\nsuite")


async def test_big_message_with_a_late_bare_cr(bstack: Stack, sent_ahead: list[int]) -> None:
    """A bare CR at the end of a big message whose beginning already went ahead: nothing
    more goes ahead, and the upstream gets the message made CRLF, once."""
    raw = big_message(BAL, CONFRERE, tail_text="Fin du\rcompte rendu.\r\n")
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(_send_paced, bstack.port, BAL, CONFRERE, raw + b".\r\n", 0)
    assert code == 250
    assert sent_ahead
    (received,) = bstack.mssante.received
    assert sum(sent_ahead) < len(raw)
    assert received.data == raw.replace(b"du\rcompte", b"du\r\ncompte")
