"""Property: whatever the recipients and the rules switched on, no delivery ever mixes
MSSanté and ordinary recipients, and every delivery goes to the route of its recipients."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssgate.decide import decide
from mssgate.model import Action, AddressClass, Envelope, Route
from tests.conftest import make_policy
from tests.messages import forwarded_attachment, message

MSSANTE = [
    "alice.martin@medecin.mssante.fr",
    "service@ch-lemans.mssante.fr",
    "prenom.nom@interop-mssante.apicrypt.org",
    "279035121518989@patient.mssante.fr",
    "146026322000196@patient.mssante.fr",
    "X@PRO.MSSANTE.FR",
]
ORDINARY = ["dr.martin@cabinet-gare.fr", "a@gmail.com", "secretariat@outlook.fr", "b@orange.fr"]
TRAPS = [
    "x@medecin.mssanté.fr",
    "x@xn--mssant-bva.fr",
    "x@apycrypt.org",
    "x@apicrypt.org",
    "x@mssante.com",
    "288091234567823@patient.mssante.fr",
]
ADDRESSES = MSSANTE + ORDINARY + TRAPS
RULES = ["addresses", "mixed_recipients", "trust_space", "forwards", "patients"]

POLICIES = {}


def _policy(off: frozenset[str]):  # type: ignore[no-untyped-def]
    if off not in POLICIES:
        extra = "rules:\n" + "".join(f"  {r}: {{enabled: false}}\n" for r in sorted(off))
        POLICIES[off] = make_policy(extra=extra if off else "")
    return POLICIES[off]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=st.sampled_from([*ADDRESSES, ""]),
    rcpts=st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=6),
    visible=st.lists(st.sampled_from(ADDRESSES), max_size=3),
    off=st.frozensets(st.sampled_from(RULES)),
    forward=st.sampled_from([None, *ADDRESSES]),
)
def test_no_delivery_ever_mixes_the_trust_space(
    sender: str, rcpts: list[str], visible: list[str], off: frozenset[str], forward: str | None
) -> None:
    policy = _policy(off)
    header_from = sender or "dr.martin@cabinet-gare.fr"
    to = ", ".join(visible) or "undisclosed-recipients:;"
    raw = forwarded_attachment(header_from, to, forward) if forward else message(header_from, to)
    decision = decide(policy, Envelope(sender, tuple(rcpts)), raw)
    if decision.action is not Action.ACCEPT:
        assert decision.deliveries == ()
        assert 400 <= decision.smtp_code < 600
        return
    delivered = [r for d in decision.deliveries for r in d.recipients]
    assert set(rcpts) <= set(delivered)
    for delivery in decision.deliveries:
        kinds = {policy.classify(r).kind for r in delivery.recipients}
        inside = kinds & {AddressClass.MSSANTE, AddressClass.PATIENT}
        outside = kinds & {AddressClass.ORDINARY}
        assert not (inside and outside), delivery.recipients
        if delivery.route is Route.ORDINARY:
            assert not inside
        assert delivery.route is Route.MSSANTE or not delivery.signature_added or not inside
    if "mixed_recipients" not in off:
        assert len(decision.deliveries) == 1
