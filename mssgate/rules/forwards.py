"""Redirects and forwards of MSSanté content go to MSSanté addresses only.

"Une redirection vers un mail « classique » ne fonctionnera pas." A message carries MSSanté
content when it is a redirect (``Resent-*``) or forward of a message from an MSSanté address
(attached or inline), quotes one, or carries the MSSanté document markers (``X-MSS-CODECDA``,
``X-MSS-INS``, an ``IHE_XDM.ZIP``). Such a message is refused when any recipient is ordinary,
and so is a message whose structure could not be looked into (nested too deep, an encoded
container).
"""

from __future__ import annotations

from mssgate.mime import forward_origins, has_mssante_markers, structure_is_opaque
from mssgate.model import Verdict
from mssgate.policy import Policy
from mssgate.texts import list_addresses, render
from mssgate.transaction import Transaction, in_trust_space, is_ordinary

RULE = "forwards"
MARKERS = "document MSSanté (X-MSS-*, IHE_XDM.ZIP)"


def check_forwards(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse MSSanté content (redirected, forwarded, quoted, CDA) sent outside the trust space."""
    rule = policy.document.rules.forwards
    if not rule.enabled or tx.message is None:
        return None
    outside = [c.address for c in tx.all_recipients if is_ordinary(policy, c)]
    if not outside:
        return None
    origin: str | None = None
    for found in forward_origins(tx.message):
        if in_trust_space(policy, policy.classify(found.address)):
            origin = found.address
            break
    if origin is None and has_mssante_markers(tx.message):
        origin = MARKERS
    if origin is None and structure_is_opaque(tx.message):
        # Fail closed: what could not be looked into may be a forwarded MSSanté message.
        text = render(rule.reply_unverifiable, ordinary=list_addresses(outside))
        return Verdict(RULE, 550, "5.7.1", text, tuple(outside))
    if origin is None:
        return None
    text = render(rule.reply, origin=origin, ordinary=list_addresses(outside))
    return Verdict(RULE, 550, "5.7.1", text, tuple(outside))
