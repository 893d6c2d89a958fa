"""Table tests of the pure decision core: the seeds' rules, one row per situation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mssgate.decide import check_recipient, check_sender, decide
from mssgate.model import Action, Envelope, Route
from mssgate.policy import Policy
from tests.conftest import make_policy
from tests.messages import forwarded_attachment, inline_forward, message

DR_MARTIN_BAL = "alice.martin@medecin.mssante.fr"
DR_MARTIN = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
CHU = "service@ch-lemans.mssante.fr"
APICRYPT2 = "prenom.nom@interop-mssante.apicrypt.org"
OUTLOOK = "secretariatCabinetXX@outlook.fr"
GMAIL = "patient.ami@gmail.com"
PATIENT_A = "279035121518989@patient.mssante.fr"
PATIENT_B = "146026322000196@patient.mssante.fr"
PATIENT_BAD_KEY = "288091234567823@patient.mssante.fr"


@dataclass(frozen=True)
class Row:
    """One situation: who sends what to whom, and what must happen."""

    name: str
    mail_from: str
    rcpts: tuple[str, ...]
    raw: bytes
    action: Action
    rule: str | None = None
    routes: tuple[Route, ...] = ()
    signature: bool = False
    reply_has: tuple[str, ...] = ()


def _msg(sender: str, rcpts: tuple[str, ...], **kw: str) -> bytes:
    return message(sender, ", ".join(rcpts), **kw)


ROWS = [
    Row(
        "MSSanté BAL to a colleague's BAL",
        DR_MARTIN_BAL,
        (CONFRERE,),
        _msg(DR_MARTIN_BAL, (CONFRERE,)),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "MSSanté BAL to a hospital service and Apicrypt v2",
        DR_MARTIN_BAL,
        (CHU, APICRYPT2),
        _msg(DR_MARTIN_BAL, (CHU, APICRYPT2)),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "the seeds' quiz: MSSanté recipient with outlook.fr in copy (envelope)",
        DR_MARTIN_BAL,
        (CONFRERE, OUTLOOK),
        _msg(DR_MARTIN_BAL, (CONFRERE,), cc=OUTLOOK),
        Action.REJECT,
        rule="mixed_recipients",
        reply_has=(CONFRERE, OUTLOOK),
    ),
    Row(
        "the quiz again: outlook.fr only in the visible Cc header",
        DR_MARTIN_BAL,
        (CONFRERE,),
        _msg(DR_MARTIN_BAL, (CONFRERE,), cc=OUTLOOK),
        Action.REJECT,
        rule="mixed_recipients",
        reply_has=(OUTLOOK,),
    ),
    Row(
        "MSSanté BAL writing to gmail leaves the trust space",
        DR_MARTIN_BAL,
        (GMAIL,),
        _msg(DR_MARTIN_BAL, (GMAIL,)),
        Action.REJECT,
        rule="trust_space",
        reply_has=(DR_MARTIN_BAL, GMAIL),
    ),
    Row(
        "ordinary address writing to a BAL gets the hint of its own BAL",
        DR_MARTIN,
        (CONFRERE,),
        _msg(DR_MARTIN, (CONFRERE,)),
        Action.REJECT,
        rule="trust_space",
        reply_has=(CONFRERE, DR_MARTIN_BAL),
    ),
    Row(
        "unknown ordinary address writing to a BAL",
        "someone@laposte.net",
        (CONFRERE,),
        _msg("someone@laposte.net", (CONFRERE,)),
        Action.REJECT,
        rule="trust_space",
        reply_has=(CONFRERE,),
    ),
    Row(
        "ordinary mail from a known sender gets the preferred-BAL signature",
        DR_MARTIN,
        (GMAIL,),
        _msg(DR_MARTIN, (GMAIL,)),
        Action.ACCEPT,
        routes=(Route.ORDINARY,),
        signature=True,
    ),
    Row(
        "ordinary mail from an unknown sender goes unsigned",
        "someone@laposte.net",
        (GMAIL,),
        _msg("someone@laposte.net", (GMAIL,)),
        Action.ACCEPT,
        routes=(Route.ORDINARY,),
    ),
    Row(
        "lookalike: medecin.mssanté.fr (an IDN) with a suggestion",
        DR_MARTIN_BAL,
        ("jean.confrere@medecin.mssanté.fr",),
        _msg(DR_MARTIN_BAL, ("jean.confrere@medecin.mssanté.fr",)),
        Action.REJECT,
        rule="lookalike",
        reply_has=("jean.confrere@medecin.mssante.fr",),
    ),
    Row(
        "lookalike: apycrypt",
        DR_MARTIN_BAL,
        ("prenom.nom@interop-mssante.apycrypt.org",),
        _msg(DR_MARTIN_BAL, ("prenom.nom@interop-mssante.apycrypt.org",)),
        Action.REJECT,
        rule="lookalike",
        reply_has=(APICRYPT2,),
    ),
    Row(
        "Apicrypt v1 is not MSSanté",
        DR_MARTIN_BAL,
        ("prenom.nom@apicrypt.org",),
        _msg(DR_MARTIN_BAL, ("prenom.nom@apicrypt.org",)),
        Action.REJECT,
        rule="lookalike",
        reply_has=("Apicrypt v1", APICRYPT2),
    ),
    Row(
        "a professional writes to a patient",
        DR_MARTIN_BAL,
        (PATIENT_A,),
        _msg(DR_MARTIN_BAL, (PATIENT_A,)),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "a patient and a professional in the same message (allowed since 2021)",
        DR_MARTIN_BAL,
        (PATIENT_A, CONFRERE),
        _msg(DR_MARTIN_BAL, (PATIENT_A, CONFRERE)),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "a patient address with a bad INS key",
        DR_MARTIN_BAL,
        (PATIENT_BAD_KEY,),
        _msg(DR_MARTIN_BAL, (PATIENT_BAD_KEY,)),
        Action.REJECT,
        rule="patients",
        reply_has=(PATIENT_BAD_KEY,),
    ),
    Row(
        "two patients in visible To would see each other's INS",
        DR_MARTIN_BAL,
        (PATIENT_A, PATIENT_B),
        _msg(DR_MARTIN_BAL, (PATIENT_A, PATIENT_B)),
        Action.REJECT,
        rule="patients",
        reply_has=(PATIENT_A, PATIENT_B),
    ),
    Row(
        "two patients in Bcc (envelope only) are fine",
        DR_MARTIN_BAL,
        (PATIENT_A, PATIENT_B),
        message(DR_MARTIN_BAL, "undisclosed-recipients:;"),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "a [FIN] closing message with a body",
        DR_MARTIN_BAL,
        (PATIENT_A,),
        _msg(DR_MARTIN_BAL, (PATIENT_A,), subject="[FIN] suivi", body="Au revoir"),
        Action.REJECT,
        rule="patients",
    ),
    Row(
        "a [FIN] closing message with an empty body",
        DR_MARTIN_BAL,
        (PATIENT_A,),
        _msg(DR_MARTIN_BAL, (PATIENT_A,), subject="[FIN] suivi", body=""),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "forwarding (attached) a message from a BAL to gmail",
        DR_MARTIN,
        (GMAIL,),
        forwarded_attachment(DR_MARTIN, GMAIL, CONFRERE),
        Action.REJECT,
        rule="forwards",
        reply_has=(CONFRERE, GMAIL),
    ),
    Row(
        "forwarding (inline, Thunderbird in French) a message from a BAL to gmail",
        DR_MARTIN,
        (GMAIL,),
        inline_forward(DR_MARTIN, GMAIL, CONFRERE),
        Action.REJECT,
        rule="forwards",
        reply_has=(CONFRERE,),
    ),
    Row(
        "forwarding a BAL's message to another BAL is fine",
        DR_MARTIN_BAL,
        (CHU,),
        forwarded_attachment(DR_MARTIN_BAL, CHU, CONFRERE),
        Action.ACCEPT,
        routes=(Route.MSSANTE,),
    ),
    Row(
        "redirect (Resent-From a BAL) to an ordinary address",
        DR_MARTIN,
        (GMAIL,),
        message(CONFRERE, DR_MARTIN, extra_headers=f"Resent-From: {DR_MARTIN_BAL}"),
        Action.REJECT,
        rule="forwards",
        reply_has=(DR_MARTIN_BAL,),
    ),
    Row(
        "a CDA document (X-MSS-CODECDA) to an ordinary address",
        DR_MARTIN,
        (GMAIL,),
        message(DR_MARTIN, GMAIL, extra_headers="X-MSS-CODECDA: 11488-4"),
        Action.REJECT,
        rule="forwards",
    ),
    Row(
        "forwarding an ordinary message to an ordinary address is fine",
        DR_MARTIN,
        (GMAIL,),
        forwarded_attachment(DR_MARTIN, GMAIL, "ami@orange.fr"),
        Action.ACCEPT,
        routes=(Route.ORDINARY,),
        signature=True,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision_table(policy: Policy, row: Row) -> None:
    decision = decide(policy, Envelope(row.mail_from, row.rcpts), row.raw)
    assert decision.action is row.action, decision.reply
    assert decision.rule == row.rule
    assert tuple(d.route for d in decision.deliveries) == row.routes
    assert decision.signature_added is row.signature
    for text in row.reply_has:
        assert text in decision.reply
    if row.action is Action.REJECT:
        assert decision.smtp_code == 550 or decision.smtp_code == 553
        assert decision.enhanced_code.startswith("5.")
        assert decision.deliveries == ()


def test_copy_rule_adds_the_secretariat_bal(policy: Policy) -> None:
    decision = decide(
        policy, Envelope(DR_MARTIN_BAL, (CONFRERE,)), _msg(DR_MARTIN_BAL, (CONFRERE,))
    )
    (delivery,) = decision.deliveries
    assert delivery.recipients == (CONFRERE, "cabinet.gare@cabinet.mssante.fr")


def test_mssante_route_keeps_every_byte(policy: Policy) -> None:
    raw = _msg(DR_MARTIN_BAL, (CONFRERE,), extra_headers="X-MSS-NIL: Logiciel 1.0")
    decision = decide(policy, Envelope(DR_MARTIN_BAL, (CONFRERE,)), raw)
    assert decision.deliveries[0].message == raw


def test_signature_names_the_preferred_bal_of_the_place(policy: Policy) -> None:
    decision = decide(
        policy,
        Envelope("secretariat@cabinet-gare.fr", (GMAIL,)),
        _msg("secretariat@cabinet-gare.fr", (GMAIL,)),
    )
    out = decision.deliveries[0].message
    assert b"cabinet.gare@cabinet.mssante.fr" in out
    assert b"X-MSSGate-Signature: added" in out


def test_signature_never_twice(policy: Policy) -> None:
    first = decide(policy, Envelope(DR_MARTIN, (GMAIL,)), _msg(DR_MARTIN, (GMAIL,)))
    again = decide(policy, Envelope(DR_MARTIN, (GMAIL,)), first.deliveries[0].message)
    assert again.action is Action.ACCEPT
    assert not again.signature_added
    assert again.deliveries[0].message == first.deliveries[0].message


def test_switched_off_mixing_never_mixes_deliveries() -> None:
    policy = make_policy(
        extra="rules:\n  mixed_recipients: {enabled: false}\n  trust_space: {enabled: false}\n"
    )
    decision = decide(policy, Envelope(DR_MARTIN, (CONFRERE, GMAIL)), _msg(DR_MARTIN, (CONFRERE,)))
    assert decision.action is Action.ACCEPT
    by_route = {d.route: d.recipients for d in decision.deliveries}
    assert by_route == {Route.MSSANTE: (CONFRERE,), Route.ORDINARY: (GMAIL,)}


def test_switched_off_rule_lets_the_message_through() -> None:
    policy = make_policy(extra="rules:\n  forwards: {enabled: false}\n")
    raw = forwarded_attachment(DR_MARTIN, GMAIL, CONFRERE)
    assert decide(policy, Envelope(DR_MARTIN, (GMAIL,)), raw).action is Action.ACCEPT


def test_reply_texts_come_from_the_policy() -> None:
    policy = make_policy(
        extra="rules:\n  mixed_recipients:\n    reply: 'Pas de melange : {mssante} / {ordinary}'\n"
    )
    decision = decide(
        policy, Envelope(DR_MARTIN_BAL, (CONFRERE, GMAIL)), _msg(DR_MARTIN_BAL, (CONFRERE,))
    )
    assert decision.reply == f"Pas de melange : {CONFRERE} / {GMAIL} [règle mixed_recipients]"


def test_rcpt_time_checks_follow_the_accepted_recipients(policy: Policy) -> None:
    envelope = Envelope(DR_MARTIN_BAL, (CONFRERE,))
    verdict = check_recipient(policy, envelope, OUTLOOK)
    assert verdict is not None and verdict.rule == "mixed_recipients"
    assert check_recipient(policy, envelope, CHU) is None
    assert check_sender(policy, "alice@medecin.mssante.com") is not None
    assert check_sender(policy, DR_MARTIN) is None


def test_null_sender_is_judged_by_its_header_from(policy: Policy) -> None:
    raw = _msg(DR_MARTIN_BAL, (GMAIL,))
    decision = decide(policy, Envelope("", (GMAIL,)), raw)
    assert decision.action is Action.REJECT and decision.rule == "trust_space"


def _nested(depth: int, inner: bytes) -> bytes:
    """``inner`` wrapped in ``depth`` levels of multipart/mixed."""
    raw = inner
    for level in range(depth):
        b = f"b{level}".encode()
        raw = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + b"\r\n"
            + raw
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    return raw


def test_a_structure_too_deep_to_verify_fails_closed(policy: Policy) -> None:
    hidden = forwarded_attachment(DR_MARTIN, GMAIL, CONFRERE).split(b"\r\n\r\n", 1)[1]
    inner = b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n' + hidden
    raw = f"From: {DR_MARTIN}\r\nTo: {GMAIL}\r\nSubject: x\r\nMIME-Version: 1.0\r\n".encode()
    raw += _nested(40, inner)
    decision = decide(policy, Envelope(DR_MARTIN, (GMAIL,)), raw)
    assert decision.action is Action.REJECT and decision.rule == "forwards"
    # The same forward at a depth the parser reads is named precisely.
    shallow = f"From: {DR_MARTIN}\r\nTo: {GMAIL}\r\nSubject: x\r\n".encode() + _nested(3, inner)
    decision = decide(policy, Envelope(DR_MARTIN, (GMAIL,)), shallow)
    assert decision.rule == "forwards" and CONFRERE in decision.reply


def test_base64_encoded_attached_message_fails_closed(policy: Policy) -> None:
    import base64

    inner = base64.encodebytes(f"From: {CONFRERE}\r\nSubject: r\r\n\r\nHbA1c\r\n".encode())
    raw = (
        (
            f"From: {DR_MARTIN}\r\nTo: {GMAIL}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
            "Content-Type: text/plain\r\n\r\nVoir PJ\r\n--x\r\nContent-Type: message/rfc822\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + inner
        + b"--x--\r\n"
    )
    decision = decide(policy, Envelope(DR_MARTIN, (GMAIL,)), raw)
    assert decision.action is Action.REJECT and decision.rule == "forwards"


def test_deliveries_are_dot_free_only_when_the_listener_said_so(policy: Policy) -> None:
    """The relay skips the dot-stuffing scan only on bytes known to have no line starting
    with a dot: the received ones (when the listener saw none) and a signature that adds
    none."""
    raw = _msg(DR_MARTIN_BAL, (CONFRERE,))
    told = decide(policy, Envelope(DR_MARTIN_BAL, (CONFRERE,), dot_free=True), raw)
    assert told.deliveries[0].dot_free
    untold = decide(policy, Envelope(DR_MARTIN_BAL, (CONFRERE,)), raw)
    assert not untold.deliveries[0].dot_free
    signed = decide(policy, Envelope(DR_MARTIN, (GMAIL,), dot_free=True), _msg(DR_MARTIN, (GMAIL,)))
    assert signed.signature_added and signed.deliveries[0].dot_free
    assert b"\r\n." not in signed.deliveries[0].message


def test_remembered_address_verdicts_never_hide_a_content_rule(policy: Policy) -> None:
    """The policy remembers what the address rules said of these addresses; the rules that
    read the content run on every message, in their place in the order."""
    envelope = Envelope(mail_from=DR_MARTIN, rcpt_tos=(GMAIL,))
    plain = message(DR_MARTIN, GMAIL)
    forward = forwarded_attachment(DR_MARTIN, GMAIL, CONFRERE)
    for _ in range(2):
        assert decide(policy, envelope, plain).action is Action.ACCEPT
        refused = decide(policy, envelope, forward)
        assert refused.action is Action.REJECT and refused.rule == "forwards"
    # A refusal of the addresses comes first, from the memory as the first time.
    mixed = Envelope(mail_from=DR_MARTIN, rcpt_tos=(GMAIL, CONFRERE))
    first = decide(policy, mixed, forwarded_attachment(DR_MARTIN, f"{GMAIL}, {CONFRERE}", CONFRERE))
    again = decide(policy, mixed, forwarded_attachment(DR_MARTIN, f"{GMAIL}, {CONFRERE}", CONFRERE))
    assert first.rule == again.rule == "mixed_recipients"
    assert first.reply == again.reply
