"""What may reach a log: addresses, with patients' INS numbers pseudonymised.

A patient address carries the patient's INS (social security number + key): in a log it is
replaced by a keyed hash, stable for one key, so that IT can follow one patient's messages
without learning the number. Message bodies never reach a log at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PATIENT_DOMAIN = "patient.mssante.fr"
# A NIR (13) or INS matricule (15), with Corsica's 2A/2B: whatever the domain (a typo in the
# patient domain must not put the number in clear in a log).
_INS_LIKE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2[AaBb])[0-9]{6}(?:[0-9]{2})?$")


def pseudonymise(address: str, key: bytes) -> str:
    """The address as it may be logged: ``ins-<hmac>@domain`` when it holds an INS."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if domain.lower().rstrip(".") == PATIENT_DOMAIN or _INS_LIKE.match(local):
        digest = hmac.new(key, local.upper().encode("utf-8"), hashlib.sha256).hexdigest()
        return f"ins-{digest[:16]}{at}{domain.lower()}"
    return address
