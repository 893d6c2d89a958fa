"""The facts about one transaction that the rules read, computed once.

Every address is classified once here; every rule then reads these values instead of asking
the classifier or the MIME reader again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mssgate.mime import ParsedMessage, header_addresses
from mssgate.model import AddressClass, Classification, Envelope, InvalidReason
from mssgate.policy import Policy

LOOKALIKE_REASONS = frozenset(
    {InvalidReason.LOOKALIKE, InvalidReason.APICRYPT_V1, InvalidReason.UNKNOWN_MSSANTE_DOMAIN}
)
INS_REASONS = frozenset({InvalidReason.INS_FORMAT, InvalidReason.INS_KEY})


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message (or, at RCPT time, one envelope so far) as the rules see it."""

    envelope: Envelope
    sender: Classification | None
    """MAIL FROM, or None for the null sender ``<>``."""
    header_from: tuple[Classification, ...]
    recipients: tuple[Classification, ...]
    """Envelope recipients (RCPT TO), in order."""
    visible: tuple[Classification, ...]
    """Header To and Cc addresses (what every recipient sees)."""
    message: ParsedMessage | None
    senders: tuple[Classification, ...] = ()
    """MAIL FROM and header From together."""
    all_recipients: tuple[Classification, ...] = ()
    """Envelope and visible header recipients, each address once."""

    def __init__(
        self,
        envelope: Envelope,
        sender: Classification | None,
        header_from: tuple[Classification, ...],
        recipients: tuple[Classification, ...],
        visible: tuple[Classification, ...],
        message: ParsedMessage | None,
        senders: tuple[Classification, ...] = (),
        all_recipients: tuple[Classification, ...] = (),
    ) -> None:
        # (Written out: see mssgate.model.)
        object.__setattr__(self, "envelope", envelope)
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "header_from", header_from)
        object.__setattr__(self, "recipients", recipients)
        object.__setattr__(self, "visible", visible)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "senders", senders)
        object.__setattr__(self, "all_recipients", all_recipients)


def build_transaction(
    policy: Policy, envelope: Envelope, message: ParsedMessage | None = None
) -> Transaction:
    """Classify the envelope and, when the message is there, its From, To and Cc."""
    classify = policy.classify
    sender = classify(envelope.mail_from) if envelope.mail_from else None
    header_from: tuple[Classification, ...] = ()
    visible: tuple[Classification, ...] = ()
    if message is not None:
        header_from = _readable(policy, header_addresses(message, ("from",)))
        visible = _readable(policy, header_addresses(message, ("to", "cc")))
    recipients = tuple(classify(r) for r in envelope.rcpt_tos)
    unique: dict[str, Classification] = {}
    for c in (*recipients, *visible):
        unique.setdefault(c.normalized.lower(), c)
    return Transaction(
        envelope=envelope,
        sender=sender,
        header_from=header_from,
        recipients=recipients,
        visible=visible,
        message=message,
        senders=((sender,) if sender else ()) + header_from,
        all_recipients=tuple(unique.values()),
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _readable(policy: Policy, addresses: tuple[str, ...]) -> tuple[Classification, ...]:
    """Header addresses as a mail client would show them.

    Control characters (a NUL, a stray CR) are removed before classifying, so that they can't
    hide a visible MSSanté address from the rules; what is still not an address
    ("undisclosed-recipients:;") is not a recipient.
    """
    found = []
    for address in addresses:
        c = policy.classify(address)
        if c.reason is InvalidReason.SYNTAX:
            cleaned = _CONTROL.sub("", address)
            if cleaned == address:
                continue
            c = policy.classify(cleaned)
            if c.reason is InvalidReason.SYNTAX:
                continue
        found.append(c)
    return tuple(found)


def effective_kind(policy: Policy, c: Classification) -> AddressClass:
    """The class a rule acts on, once switched-off rules are taken into account.

    A lookalike whose rule is off is an ordinary address (it is not in the trust space); a
    patient address with a bad INS key whose rule is off is still a patient address.
    """
    if c.kind is not AddressClass.INVALID:
        return c.kind
    if c.reason in LOOKALIKE_REASONS and not policy.document.rules.addresses.enabled:
        return AddressClass.ORDINARY
    if c.reason in INS_REASONS and not policy.document.rules.patients.enabled:
        return AddressClass.PATIENT
    return AddressClass.INVALID


def in_trust_space(policy: Policy, c: Classification) -> bool:
    """True when the address is an MSSanté or patient address for the rules."""
    return effective_kind(policy, c) in (AddressClass.MSSANTE, AddressClass.PATIENT)


def is_ordinary(policy: Policy, c: Classification) -> bool:
    """True when the address is outside the trust space for the rules."""
    return effective_kind(policy, c) is AddressClass.ORDINARY
