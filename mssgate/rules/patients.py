"""Messages to patients: a valid INS, no patient sees another's INS, [FIN] closes empty.

A patient address is ``<matricule INS>@patient.mssante.fr``; a typo in the matricule sends
health data to another person, hence the key check before anything leaves.
"""

from __future__ import annotations

from mssgate.mime import body_is_empty
from mssgate.model import AddressClass, InvalidReason, Verdict
from mssgate.policy import Policy
from mssgate.texts import list_addresses, render
from mssgate.transaction import Transaction, effective_kind

RULE = "patients"


def check_patient_addresses(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse a patient address whose INS matricule is malformed or has a wrong key."""
    texts = policy.document.rules.patients
    if not texts.enabled:
        return None
    for c in tx.all_recipients:
        if c.reason is InvalidReason.INS_KEY:
            return Verdict(RULE, 550, "5.1.1", render(texts.reply_invalid_ins, address=c.address))
        if c.reason is InvalidReason.INS_FORMAT:
            return Verdict(RULE, 550, "5.1.3", render(texts.reply_ins_format, address=c.address))
    return None


def check_patient_messages(policy: Policy, tx: Transaction) -> Verdict | None:
    """Refuse several patients in visible To/Cc, and a [FIN] message with a body."""
    texts = policy.document.rules.patients
    if not texts.enabled or tx.message is None:
        return None
    patients = [c.address for c in tx.visible if effective_kind(policy, c) is AddressClass.PATIENT]
    if len(set(p.lower() for p in patients)) > 1:
        text = render(texts.reply_several_patients, patients=list_addresses(patients))
        return Verdict(RULE, 550, "5.7.1", text, tuple(patients))
    to_patient = any(effective_kind(policy, c) is AddressClass.PATIENT for c in tx.all_recipients)
    subject = tx.message.header("subject") or ""
    if to_patient and "[FIN]" in subject.upper() and not body_is_empty(tx.message):
        return Verdict(RULE, 550, "5.7.1", render(texts.reply_fin_not_empty))
    return None
