"""The trust space both ways: MSSanté BALs write inside it, and only they write to it.

"Both sender and recipient must be MSSanté mailboxes." An MSSanté sender writing to an ordinary
address would take health data out; an ordinary sender writing to an MSSanté BAL is refused by
the operators anyway, so the doctor is told at once which BAL to use instead.
"""

from __future__ import annotations

from mssgate.model import Verdict
from mssgate.policy import Policy
from mssgate.texts import list_addresses, render
from mssgate.transaction import Transaction, in_trust_space, is_ordinary

RULE = "trust_space"


def check_trust_space(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse mail that crosses the trust space's border in either direction."""
    rule = policy.document.rules.trust_space
    if not rule.enabled:
        return None
    inside_senders = [c for c in tx.senders if in_trust_space(policy, c)]
    inside = [c.address for c in tx.all_recipients if in_trust_space(policy, c)]
    outside = [c.address for c in tx.all_recipients if is_ordinary(policy, c)]
    if inside_senders and outside:
        text = render(
            rule.reply_mssante_sender,
            sender=inside_senders[0].address,
            ordinary=list_addresses(outside),
            mssante=list_addresses(inside),
            preferred_bal="",
        )
        return Verdict(RULE, 550, "5.7.1", text, tuple(outside))
    if not inside_senders and inside:
        # A bounce (MAIL FROM:<>) may have no readable From either: say so.
        sender = tx.senders[0].address if tx.senders else "<> (expéditeur vide)"
        profile = policy.profile_for(*(c.address for c in tx.senders))
        template = rule.reply_ordinary_sender_hint if profile else rule.reply_ordinary_sender
        text = render(
            template,
            sender=sender,
            mssante=list_addresses(inside),
            ordinary=list_addresses(outside),
            preferred_bal=profile.preferred_bal if profile else "",
        )
        return Verdict(RULE, 550, "5.7.1", text, tuple(inside))
    return None
