"""Do not mix recipients: MSSanté and ordinary addresses never share a message.

The seeds' quiz: a message to ``####@medecin.mssante.fr`` with
``secretariatCabinetXX@outlook.fr`` in copy does not go. The whole message is refused, naming
the addresses on each side; envelope recipients and visible To/Cc both count.
"""

from __future__ import annotations

from mssgate.model import Verdict
from mssgate.policy import Policy
from mssgate.texts import list_addresses, render
from mssgate.transaction import Transaction, in_trust_space, is_ordinary

RULE = "mixed_recipients"


def check_mixed_recipients(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse a message whose recipients are on both sides of the trust space."""
    rule = policy.document.rules.mixed_recipients
    if not rule.enabled:
        return None
    inside = [c.address for c in tx.all_recipients if in_trust_space(policy, c)]
    outside = [c.address for c in tx.all_recipients if is_ordinary(policy, c)]
    if inside and outside:
        text = render(rule.reply, mssante=list_addresses(inside), ordinary=list_addresses(outside))
        return Verdict(RULE, 550, "5.7.1", text, (*inside, *outside))
    return None
