"""Run the rules in a fixed order and turn the outcome into a Decision.

Pure: the same policy, envelope and bytes always give the same decision. The server calls
:func:`check_sender` at MAIL FROM, :func:`check_recipient` at each RCPT TO (so that a mail
client shows the refusal at once) and, once the message is in, :func:`decide`, in its two
steps: :func:`draft` (read the message, prepare what each route would be given) and
:func:`judge` (the message rules on what was read).
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass, replace

from mssgate.mime import add_signature, parse_message
from mssgate.model import Action, Classification, Decision, Delivery, Envelope, Route, Verdict
from mssgate.policy import Policy
from mssgate.rules import Rule
from mssgate.rules.addresses import check_lookalikes, check_syntax
from mssgate.rules.forwards import check_forwards
from mssgate.rules.mixing import check_mixed_recipients
from mssgate.rules.patients import check_patient_addresses, check_patient_messages
from mssgate.rules.senders import check_sender_authorization
from mssgate.rules.trust_space import check_trust_space
from mssgate.texts import render
from mssgate.transaction import Transaction, build_transaction, in_trust_space

SENDER_RULES: tuple[Rule, ...] = (check_syntax, check_sender_authorization, check_lookalikes)
ENVELOPE_RULES: tuple[Rule, ...] = (
    check_syntax,
    check_sender_authorization,
    check_lookalikes,
    check_patient_addresses,
    check_mixed_recipients,
    check_trust_space,
)
# Forwards before the trust space: a redirect keeps the original MSSanté From, and the
# forwards rule's text says what really happened.
MESSAGE_RULES: tuple[Rule, ...] = (
    check_syntax,
    check_sender_authorization,
    check_lookalikes,
    check_patient_addresses,
    check_mixed_recipients,
    check_forwards,
    check_trust_space,
    check_patient_messages,
)


ADDRESS_ONLY_RULES: frozenset[Rule] = frozenset(ENVELOPE_RULES)
"""The message rules that read the addresses alone (envelope, header From, To and Cc), never
the message's content (the envelope rules, which also run at RCPT): their answers for the
same addresses are the policy's to remember."""


def _tagged(policy: Policy, verdict: Verdict) -> Verdict:
    """The refusal's text followed by the rule's name (for IT's support)."""
    tag = render(policy.document.messages.rule_tag, rule=verdict.rule)
    return replace(verdict, reply=verdict.reply + tag)


def _first_verdict(rules: tuple[Rule, ...], policy: Policy, tx: Transaction) -> Verdict | None:
    """The first rule's refusal, tagged with the rule's name."""
    for rule in rules:
        verdict = rule(policy, tx)
        if verdict is not None:
            return _tagged(policy, verdict)
    return None


def _message_verdict(policy: Policy, tx: Transaction) -> Verdict | None:
    """:data:`MESSAGE_RULES` in their order, as :func:`_first_verdict`; the answers of the
    :data:`ADDRESS_ONLY_RULES` come from the policy's memory when these addresses were seen."""
    envelope = tx.envelope
    key = (
        "message addresses",
        envelope.mail_from,
        envelope.rcpt_tos,
        envelope.auth_user,
        envelope.mail_options,
        tuple(c.address for c in tx.header_from),
        tuple(c.address for c in tx.visible),
    )
    known = policy.recall(key, lambda: {rule: rule(policy, tx) for rule in ADDRESS_ONLY_RULES})
    for rule in MESSAGE_RULES:
        verdict = known[rule] if rule in known else rule(policy, tx)
        if verdict is not None:
            return _tagged(policy, verdict)
    return None


def check_sender(policy: Policy, mail_from: str, auth_user: str | None = None) -> Verdict | None:
    """The refusal of a MAIL FROM address, or None when it may go on."""
    envelope = Envelope(mail_from=mail_from, rcpt_tos=(), auth_user=auth_user)
    return policy.recall(
        ("sender", mail_from, auth_user),
        lambda: _first_verdict(SENDER_RULES, policy, build_transaction(policy, envelope)),
    )


def check_recipient(policy: Policy, envelope: Envelope, rcpt: str) -> Verdict | None:
    """The refusal of one more RCPT TO, given the recipients already accepted."""
    rcpt_tos = (*envelope.rcpt_tos, rcpt)
    key = ("recipients", envelope.mail_from, rcpt_tos, envelope.auth_user, envelope.mail_options)
    return policy.recall(
        key,
        lambda: _first_verdict(
            ENVELOPE_RULES, policy, build_transaction(policy, replace(envelope, rcpt_tos=rcpt_tos))
        ),
    )


def route_of(policy: Policy, address: str) -> Route:
    """The route a recipient's mail takes: MSSanté (and patients) or ordinary."""
    return Route.MSSANTE if in_trust_space(policy, policy.classify(address)) else Route.ORDINARY


def may_go_ahead(route: Route) -> bool:
    """True when the upstream of ``route`` may be given a message before it is decided (the
    final dot still waits for the decision): only the MSSanté route, whose upstream is inside
    the trust space and takes the message exactly as received. An ordinary upstream gets a
    message's content only once it is accepted: what the rules refuse to let out of the trust
    space (a forwarded MSSanté message...) must not reach it, even undelivered."""
    return route is Route.MSSANTE


@functools.lru_cache(maxsize=1024)
def _signature_texts(
    text: str, html_template: str, name: str, place: str, preferred_bal: str
) -> tuple[str, str]:
    """A sender's signature, as text and as an HTML fragment (its values escaped)."""
    values = {"name": name, "place": place, "preferred_bal": preferred_bal}
    escaped = {k: html.escape(v) for k, v in values.items()}
    return render(text, **values), render(html_template, **escaped)


def _sign(policy: Policy, tx: Transaction, raw: bytes) -> tuple[bytes, bool, bool, str]:
    """The ordinary-route bytes, with the preferred-address signature where it applies:
    (bytes, signature added, no line starts with a dot that did not already, note)."""
    settings = policy.document.signature
    if not settings.enabled:
        return raw, False, True, "signature: disabled"
    profile = policy.profile_for(*(c.address for c in tx.senders))
    if profile is None:
        return raw, False, True, "signature: sender unknown to the policy"
    text, html_fragment = _signature_texts(
        settings.text, settings.html, profile.name, profile.place, profile.preferred_bal
    )
    assert tx.message is not None
    result = add_signature(
        tx.message,
        text,
        html_fragment,
        already_present=profile.preferred_bal,
        marker=(settings.marker_header, "added"),
        skip_dkim_signed=settings.skip_dkim_signed,
    )
    return result.message, result.added, result.dot_safe, f"signature: {result.reason}"


def recipients_by_route(
    policy: Policy, envelope: Envelope, classified: tuple[Classification, ...] | None = None
) -> tuple[tuple[Route, tuple[str, ...]], ...]:
    """Who each route will be asked to deliver to if the message is accepted: the MSSanté
    route's recipients with the sender's copies, then the ordinary route's. Depends on the
    envelope alone, so the listener can open the upstream transaction while the message is
    still coming in (:func:`decide` uses the same answer)."""
    return policy.recall(
        ("routes", envelope.mail_from, envelope.rcpt_tos),
        lambda: _plan_routes(policy, envelope, classified),
    )


def _plan_routes(
    policy: Policy, envelope: Envelope, classified: tuple[Classification, ...] | None
) -> tuple[tuple[Route, tuple[str, ...]], ...]:
    if classified is None:
        classified = tuple(policy.classify(r) for r in envelope.rcpt_tos)
    pairs = tuple(zip(classified, envelope.rcpt_tos, strict=True))
    inside = tuple(r for c, r in pairs if in_trust_space(policy, c))
    outside = tuple(r for c, r in pairs if not in_trust_space(policy, c))
    plan: list[tuple[Route, tuple[str, ...]]] = []
    if inside:
        extra = policy.copies.get(envelope.mail_from.lower(), ())
        known = {r.lower() for r in inside}
        plan.append((Route.MSSANTE, inside + tuple(c for c in extra if c not in known)))
    if outside:
        plan.append((Route.ORDINARY, outside))
    return tuple(plan)


@dataclass(frozen=True, slots=True)
class Draft:
    """A message read and its deliveries prepared, before the message rules ran: what each
    route would be given if the message is accepted (see :func:`judge`)."""

    tx: Transaction
    message_id: str | None
    deliveries: tuple[Delivery, ...]
    notes: tuple[str, ...]

    def __init__(
        self,
        tx: Transaction,
        message_id: str | None,
        deliveries: tuple[Delivery, ...],
        notes: tuple[str, ...],
    ) -> None:
        # (Written out: see mssgate.model.)
        object.__setattr__(self, "tx", tx)
        object.__setattr__(self, "message_id", message_id)
        object.__setattr__(self, "deliveries", deliveries)
        object.__setattr__(self, "notes", notes)


def draft(policy: Policy, envelope: Envelope, raw: bytes) -> Draft:
    """Read a message and prepare its deliveries (routes, signature), deciding nothing yet:
    :func:`judge` runs the rules on the result."""
    message = parse_message(raw)
    tx = build_transaction(policy, envelope, message)
    planned = dict(recipients_by_route(policy, envelope, tx.recipients))
    inside = planned.get(Route.MSSANTE, ())
    outside = planned.get(Route.ORDINARY, ())
    deliveries: list[Delivery] = []
    notes: list[str] = []
    if inside:
        deliveries.append(Delivery(Route.MSSANTE, inside, raw, dot_free=envelope.dot_free))
    if outside:
        signed, added, dot_safe, note = _sign(policy, tx, raw)
        notes.append(note)
        deliveries.append(
            Delivery(
                Route.ORDINARY,
                outside,
                signed,
                signature_added=added,
                dot_free=envelope.dot_free and dot_safe,
            )
        )
    return Draft(tx, message.header("message-id"), tuple(deliveries), tuple(notes))


def judge(policy: Policy, drafted: Draft) -> Decision:
    """Run the message rules: refuse, or accept with the drafted deliveries."""
    tx = drafted.tx
    verdict = _message_verdict(policy, tx)
    if verdict is not None:
        return Decision.refuse(verdict, recipients=tx.recipients, message_id=drafted.message_id)
    routes = " + ".join(d.route.value for d in drafted.deliveries)
    return Decision(
        action=Action.ACCEPT,
        smtp_code=250,
        enhanced_code="2.0.0",
        reply=render(policy.document.messages.accepted, route=routes),
        deliveries=drafted.deliveries,
        notes=drafted.notes,
        recipients=tx.recipients,
        message_id=drafted.message_id,
    )


def decide(policy: Policy, envelope: Envelope, raw: bytes) -> Decision:
    """Accept (with the deliveries to make), or refuse, one message."""
    return judge(policy, draft(policy, envelope, raw))
