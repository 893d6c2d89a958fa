"""Who may send as which address: an authenticated user only as their own BALs and addresses,
and as the shared BALs (cabinet, organisational) they hold or are a delegate of.

Both MAIL FROM and the header From are checked: a mail client shows the From, the operators
route on MAIL FROM, and a delegate must not be able to sign as a doctor with either.
"""

from __future__ import annotations

from mssgate.model import Verdict
from mssgate.policy import Policy
from mssgate.texts import render
from mssgate.transaction import Transaction

RULE = "sender_authorization"


def check_sender_authorization(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse a sender address the authenticated user is not given by the policy."""
    login = tx.envelope.auth_user
    if login is None:
        return None
    account = policy.users.get(login)
    allowed = account.allowed_senders if account is not None else frozenset()
    for c in tx.senders:
        if c.normalized.lower() not in allowed and c.address.lower() not in allowed:
            text = render(
                policy.document.messages.sender_not_allowed, user=login, address=c.address
            )
            return Verdict(RULE, 550, "5.7.1", text, (c.address,))
    return None
