"""Fuzzing the pure core with hypothesis: hostile bytes and addresses never make it raise,
and every decision it takes is coherent (right codes, right recipients, valid reply lines)."""

from __future__ import annotations

from collections import Counter
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssgate.decide import check_recipient, check_sender, decide
from mssgate.model import Action, Decision, Envelope, Route, Verdict
from mssgate.policy import Policy
from mssgate.texts import smtp_reply
from mssgate.transaction import in_trust_space
from tests.conftest import corpus_files, make_policy
from tests.hostile_corpus import (
    BROKEN_BOUNDARIES,
    bad_base64,
    bare_cr_inside_lines,
    bare_lf,
    bogus_charset,
    eight_bit,
    nested_multiparts,
    nul_bytes,
)
from tests.messages import forwarded_attachment, inline_forward, message

BAL = "alice.martin@medecin.mssante.fr"
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "ami@gmail.com"
PATIENT = "279035121518989@patient.mssante.fr"

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

ENVELOPES = [
    Envelope(DR, (GMAIL,)),
    Envelope(BAL, (CONFRERE,)),
    Envelope(BAL, (PATIENT,)),
    Envelope(DR, (GMAIL, "b@orange.fr")),
    Envelope("", (CONFRERE,)),
    Envelope(BAL, (CONFRERE, GMAIL)),
    Envelope(DR, (GMAIL,), mail_options=("BODY=8BITMIME", "SMTPUTF8")),
]
"""Envelopes of every kind: ordinary, MSSanté, patient, null sender, mixed, SMTPUTF8."""


@cache
def _policy() -> Policy:
    return make_policy()


@cache
def _seeds() -> tuple[bytes, ...]:
    """Real corpus messages, the hand-written ones and the hostile builders' output."""
    real = tuple(p.read_bytes() for p in corpus_files() if p.stat().st_size < 200_000)
    made = (
        message(DR, GMAIL),
        message(BAL, CONFRERE, cc=GMAIL),
        forwarded_attachment(DR, GMAIL, CONFRERE),
        inline_forward(DR, GMAIL, CONFRERE),
        nested_multiparts(DR, GMAIL, 40),
        bad_base64(DR, GMAIL, "text"),
        bogus_charset(DR, GMAIL, '"utf-8\x00"'),
        nul_bytes(DR, GMAIL),
        bare_lf(DR, GMAIL),
        bare_cr_inside_lines(DR, GMAIL),
        eight_bit(DR, GMAIL),
        *(build(DR, GMAIL) for build in BROKEN_BOUNDARIES.values()),
    )
    return real + made


def assert_reply_line(code: int, enhanced: str, text: str) -> None:
    """``smtp_reply`` makes one valid line: ≤ 510 octets, no CR/LF, ASCII unless utf8."""
    for utf8 in (False, True):
        line = smtp_reply(code, enhanced, text, utf8=utf8)
        encoded = line.encode("utf-8")
        assert len(encoded) <= 510, len(encoded)
        assert "\r" not in line and "\n" not in line
        assert line.startswith(f"{code} ")
        if not utf8:
            assert line.isascii(), line


def assert_coherent(policy: Policy, envelope: Envelope, raw: bytes, decision: Decision) -> None:
    """An ACCEPT delivers to exactly the envelope's recipients (plus the policy's copies on the
    MSSanté route), each on its own route; a refusal has matching codes and delivers nothing."""
    assert_reply_line(decision.smtp_code, decision.enhanced_code, decision.reply)
    if decision.action is Action.ACCEPT:
        assert decision.smtp_code == 250 and decision.enhanced_code.startswith("2.")
        assert decision.rule is None
        routes = [d.route for d in decision.deliveries]
        assert len(routes) == len(set(routes)) >= 1
        copies = {c.lower() for c in policy.copies.get(envelope.mail_from.lower(), ())}
        inside = [r for r in envelope.rcpt_tos if in_trust_space(policy, policy.classify(r))]
        outside = [r for r in envelope.rcpt_tos if r not in inside]
        delivered: Counter[str] = Counter()
        for delivery in decision.deliveries:
            recipients = list(delivery.recipients)
            if delivery.route is Route.MSSANTE:
                assert delivery.message == raw  # byte for byte
                assert recipients[: len(inside)] == inside
                extra = recipients[len(inside) :]
                assert {r.lower() for r in extra} <= copies
                assert not {r.lower() for r in extra} & {r.lower() for r in inside}
                recipients = inside
            else:
                assert recipients == outside
                if not delivery.signature_added:
                    assert delivery.message == raw
            delivered.update(recipients)
        assert delivered == Counter(envelope.rcpt_tos)
    elif decision.action is Action.REJECT:
        assert 500 <= decision.smtp_code < 600
        assert decision.enhanced_code.startswith("5.")
        assert decision.rule
        assert decision.deliveries == ()
    else:
        assert 400 <= decision.smtp_code < 500
        assert decision.enhanced_code.startswith("4.")
        assert decision.deliveries == ()


def assert_verdict(verdict: Verdict | None) -> None:
    """A refusal at MAIL or RCPT time: a 4xx/5xx with a matching enhanced code and a rule."""
    if verdict is None:
        return
    assert 400 <= verdict.smtp_code < 600
    assert verdict.enhanced_code.startswith(f"{verdict.smtp_code // 100}.")
    assert verdict.rule
    assert_reply_line(verdict.smtp_code, verdict.enhanced_code, verdict.reply)


def run(envelope: Envelope, raw: bytes) -> None:
    """Decide, and check the decision is coherent."""
    policy = _policy()
    assert_coherent(policy, envelope, raw, decide(policy, envelope, raw))


# -- messages ---------------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=4096), envelope=st.sampled_from(ENVELOPES))
def test_arbitrary_bytes_never_raise(raw: bytes, envelope: Envelope) -> None:
    run(envelope, raw)


TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\r\n\r\n",
    b"--",
    b"\r\n--b1\r\n",
    b"\r\n--b1--\r\n",
    b'Content-Type: multipart/mixed; boundary="b1"\r\n',
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"; charset=x-unknown",
    b'; charset="utf-8\x00"',
    b"=?utf-8?b?!!!?=",
    b"=?x-unknown?q?=FF?=",
    f"\r\nResent-From: {CONFRERE}\r\n".encode(),
    f"\r\nCc: {CONFRERE}\r\n".encode(),
    b"\r\n-------- Message transf\xc3\xa9r\xc3\xa9 --------\r\nDe : <x@medecin.mssante.fr>\r\n",
    b"\xff\xfe\xc3",
    b"<html><body>",
    b"</body>",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with a few hostile edits: inserted tokens, flipped, cut or lost bytes."""
    raw = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["insert", "flip", "delete", "truncate", "duplicate"]))
        if kind == "insert":
            raw[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=16))
        elif kind == "flip" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del raw[at:]
        else:
            raw[at:at] = raw[at : at + draw(st.integers(1, 256))]
    return bytes(raw)


@FUZZ
@given(raw=mutated(), envelope=st.sampled_from(ENVELOPES))
def test_mutated_corpus_messages_never_raise(raw: bytes, envelope: Envelope) -> None:
    run(envelope, raw)


# -- addresses --------------------------------------------------------------------------------

HOSTILE_CHARS = st.sampled_from(["\r", "\n", "\r\n", "\x00", "\t", " ", "<", ">", '"', "@", "é"])
address_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.builds(
        lambda local, sep, domain: f"{local}{sep}{domain}",
        st.text(max_size=30) | st.sampled_from(["jean", "279035121518989", "x" * 300]),
        st.sampled_from(["@", "@@", "", "@\r\n", "\x00@"]),
        st.text(max_size=30)
        | st.sampled_from(
            [
                "medecin.mssante.fr",
                "medecin.mssanté.fr",
                "xn--mssant-bva.fr",
                "patient.mssante.fr",
                "gmail.com",
                "apicrypt.org",
                "a." * 200 + "fr",
                "[127.0.0.1]",
            ]
        ),
    ),
    st.lists(st.text(max_size=10) | HOSTILE_CHARS, max_size=12).map("".join),
    st.sampled_from([CONFRERE, BAL, DR, GMAIL, PATIENT, "é" * 5000, "a@" + "b" * 10_000]),
)


@FUZZ
@given(
    mail_from=address_text,
    rcpts=st.lists(address_text, min_size=1, max_size=4),
    utf8=st.booleans(),
)
def test_arbitrary_addresses_never_raise(mail_from: str, rcpts: list[str], utf8: bool) -> None:
    policy = _policy()
    options = ("SMTPUTF8",) if utf8 else ()
    assert_verdict(check_sender(policy, mail_from))
    assert_verdict(check_sender(policy, mail_from, auth_user="a.martin"))
    accepted: list[str] = []
    for rcpt in rcpts:
        verdict = check_recipient(policy, Envelope(mail_from, tuple(accepted), None, options), rcpt)
        assert_verdict(verdict)
        if verdict is None:
            accepted.append(rcpt)
    envelope = Envelope(mail_from, tuple(rcpts), None, options)
    raw = message(DR, GMAIL)
    assert_coherent(policy, envelope, raw, decide(policy, envelope, raw))


@FUZZ
@given(
    sender=address_text,
    to=address_text,
    rcpt=st.sampled_from([GMAIL, CONFRERE, PATIENT]),
    mail_from=st.sampled_from([DR, BAL, ""]),
)
def test_arbitrary_header_addresses_never_raise(
    sender: str, to: str, rcpt: str, mail_from: str
) -> None:
    raw = (
        f"From: {sender}\r\nTo: {to}\r\nCc: {to}, {sender}\r\nSubject: x\r\n\r\nBonjour\r\n"
    ).encode("utf-8", "surrogateescape")
    run(Envelope(mail_from, (rcpt,)), raw)


def test_seeds_include_the_real_corpus() -> None:
    """The mutation fuzzer starts from the real-world corpus when it is there."""
    files = [p for p in corpus_files() if p.stat().st_size < 200_000]
    assert len(_seeds()) >= len(files) + 10


def _bounds_as_rescanned(raw: bytes) -> None:
    from mssgate.mime import _scan_header, parse_message, walk

    for part in walk(parse_message(raw).root):
        scan = _scan_header(raw, part.header_start, part.body_start, part.header_start == 0)
        assert (part.fields_start, part.fields_end) == (scan.fields_start, scan.fields_end)
        assert (part.body_start > part.fields_end) == scan.had_blank


def test_kept_header_bounds_are_a_rescans_on_the_corpus() -> None:
    """The signature inserts fields where the parser found the header block to end (kept
    in each part, not scanned again): the same place a new scan of the part finds."""
    for path in corpus_files():
        _bounds_as_rescanned(path.read_bytes())


@FUZZ
@given(raw=mutated())
def test_kept_header_bounds_are_a_rescans_on_mutated_messages(raw: bytes) -> None:
    _bounds_as_rescanned(raw)
