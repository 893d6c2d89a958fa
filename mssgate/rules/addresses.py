"""Addresses that are malformed or imitate the trust space (lookalikes, Apicrypt v1, typos).

DOMAIN.md's traps (``mssanté.fr``, ``apycrypt``, ``mssante.com``...) are refused with a
"did you mean" suggestion before anything leaves.
"""

from __future__ import annotations

from mssgate.model import Classification, InvalidReason, Verdict
from mssgate.policy import Policy
from mssgate.texts import render
from mssgate.transaction import Transaction

RULE_SYNTAX = "syntax"
RULE_LOOKALIKE = "lookalike"


def check_syntax(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse an envelope address that is not an address at all (never switchable)."""
    for c in (*([tx.sender] if tx.sender else []), *tx.recipients):
        if c.reason is InvalidReason.SYNTAX:
            text = render(policy.document.messages.syntax, address=c.address)
            return Verdict(RULE_SYNTAX, 553, "5.1.3", text, (c.address,))
    return None


def lookalike_reply(policy: Policy, c: Classification) -> str:
    """The refusal text for one lookalike, Apicrypt v1 or unknown MSSanté address."""
    texts = policy.document.rules.addresses
    if c.reason is InvalidReason.APICRYPT_V1 and c.suggestion:
        template = texts.reply_apicrypt_v1
    elif c.reason is InvalidReason.UNKNOWN_MSSANTE_DOMAIN:
        template = (
            texts.reply_unknown_domain_suggestion if c.suggestion else texts.reply_unknown_domain
        )
    else:
        template = texts.reply_lookalike if c.suggestion else texts.reply_lookalike_no_suggestion
    return render(template, address=c.address, suggestion=c.suggestion or "")


def check_lookalikes(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse a sender or recipient whose domain imitates an MSSanté domain."""
    if not policy.document.rules.addresses.enabled:
        return None
    for c in (*tx.senders, *tx.all_recipients):
        if c.reason in (
            InvalidReason.LOOKALIKE,
            InvalidReason.APICRYPT_V1,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
        ):
            enhanced = "5.1.2" if c.reason is InvalidReason.UNKNOWN_MSSANTE_DOMAIN else "5.7.1"
            return Verdict(RULE_LOOKALIKE, 550, enhanced, lookalike_reply(policy, c), (c.address,))
    return None
