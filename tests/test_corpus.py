"""Every real-world message of ../shared/corpus through `explain` and through the wire.

Each gets a clean decision (no crash); where the signature is added, every other part is
byte-identical; on the MSSanté route the message is relayed byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mssgate.cli import main
from mssgate.decide import decide, may_go_ahead
from mssgate.mime import parse_message
from mssgate.model import Action, Envelope, Route
from mssgate.policy import Policy
from tests.conftest import Stack, corpus_files, make_policy
from tests.mime_samples import assert_byte_identity
from tests.smtp_peers import send

FILES = corpus_files()
pytestmark = pytest.mark.skipif(not FILES, reason="../shared/corpus is not beside the repo")
IDS = [p.name for p in FILES]

DR = "dr.martin@cabinet-gare.fr"
BAL = "alice.martin@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"
CONFRERE = "jean.confrere@medecin.mssante.fr"


def _as_sent(path: Path) -> bytes:
    """The message as a mail client's SMTP layer sends it: every line ends with CRLF.

    Some corpus files mix CRLF headers with bare-LF bodies; SMTP has no bare LF on the wire.
    """
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_corpus_explain_json(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "--mail-from", DR, "--rcpt", GMAIL, "--json", str(path)])
    result = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert result["action"] in ("accept", "reject")
    assert result["reply"][:3] == str(result["smtp_code"])
    if result["action"] == "reject":
        assert result["rule"] and result["enhanced_code"].startswith("5.")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_corpus_signature_keeps_every_other_byte(policy: Policy, path: Path) -> None:
    raw = path.read_bytes()
    decision = decide(policy, Envelope(DR, (GMAIL,)), raw)
    if decision.action is not Action.ACCEPT:
        assert decision.rule is not None
        return
    (delivery,) = decision.deliveries
    assert delivery.route is Route.ORDINARY
    if delivery.signature_added:
        assert_byte_identity(raw, delivery.message)
    else:
        assert delivery.message == raw
    if path.name.startswith("dkim-") or path.name == "rfc-8463.eml":
        assert not delivery.signature_added  # a rewrite would break the DKIM signature


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_corpus_mssante_route_is_byte_for_byte(policy: Policy, path: Path) -> None:
    raw = path.read_bytes()
    message = parse_message(raw)
    decision = decide(policy, Envelope(BAL, (CONFRERE,)), raw)
    if decision.action is Action.ACCEPT:
        (delivery,) = decision.deliveries
        assert delivery.route is Route.MSSANTE and delivery.message == raw
    else:
        # Only because the message's own To/Cc name ordinary addresses (the quiz's rule).
        assert decision.rule in ("mixed_recipients", "trust_space", "forwards"), decision
        assert message.header("to") or message.header("cc") or message.header("from")


@pytest.mark.parametrize("path", FILES, ids=IDS)
async def test_corpus_over_the_wire(stack: Stack, path: Path) -> None:
    raw = _as_sent(path)
    expected = decide(stack.policy, Envelope(DR, (GMAIL,)), raw)
    result = await send(stack.port, DR, [GMAIL], raw)
    if expected.action is not Action.ACCEPT:
        assert result.code == expected.smtp_code
        assert stack.delivered() == 0
        return
    assert result.error is None, result
    (got,) = stack.ordinary.received
    assert got.data == expected.deliveries[0].message
    if expected.signature_added:
        assert b"X-MSSGate-Signature: added" in got.data
        assert_byte_identity(raw, got.data)


UNSIGNED = "signature:\n  enabled: false\n"


@pytest.mark.parametrize("path", FILES, ids=IDS)
@pytest.mark.parametrize("signature", [True, False], ids=["signing", "no-signature"])
def test_routes_that_may_go_ahead_relay_the_bytes_received(path: Path, signature: bool) -> None:
    """The listener writes a message upstream before the decision only on the routes
    ``may_go_ahead`` names: the MSSanté route alone, on which an accepted message is relayed
    exactly as received, signatures on or off. Never the ordinary route, even when it would
    relay the message unchanged: its upstream is outside the trust space."""
    policy = make_policy(extra="" if signature else UNSIGNED)
    raw = _as_sent(path)
    assert may_go_ahead(Route.MSSANTE)
    assert not may_go_ahead(Route.ORDINARY)
    for sender, rcpt in ((BAL, CONFRERE), (DR, GMAIL)):
        decision = decide(policy, Envelope(sender, (rcpt,)), raw)
        for delivery in decision.deliveries:
            if may_go_ahead(delivery.route):
                assert delivery.message == raw
