"""Frozen values shared by the pure core and the I/O shell.

Nothing here does I/O; every value is immutable so that a decision taken for one message can
never be changed by another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AddressClass(StrEnum):
    """What an address is for the MSSanté trust space."""

    MSSANTE = "mssante"
    """A professional or organisational MSSanté mailbox (BAL)."""
    PATIENT = "patient"
    """A patient's citizen address, ``<matricule INS>@patient.mssante.fr``."""
    ORDINARY = "ordinary"
    """Any other, well-formed address (gmail, a clinic's own domain...)."""
    INVALID = "invalid"
    """Malformed, a lookalike of an MSSanté domain, a bad INS key, an unknown MSSanté domain."""


class InvalidReason(StrEnum):
    """Why an address was classified :attr:`AddressClass.INVALID`."""

    SYNTAX = "syntax"
    LOOKALIKE = "lookalike"
    APICRYPT_V1 = "apicrypt_v1"
    INS_FORMAT = "ins_format"
    INS_KEY = "ins_key"
    UNKNOWN_MSSANTE_DOMAIN = "unknown_mssante_domain"


@dataclass(frozen=True, slots=True)
class Classification:
    """The class of one address, with the reason and a suggestion when it is refused."""

    address: str
    """The address as written by the client (no angle brackets)."""
    normalized: str
    """``local@domain`` with the domain in lower-case ASCII (IDNA/punycode); the raw text if
    the address could not be parsed."""
    kind: AddressClass
    reason: InvalidReason | None = None
    suggestion: str | None = None
    """A full address the user probably meant ("did you mean ...?"), when one is known."""

    def __init__(
        self,
        address: str,
        normalized: str,
        kind: AddressClass,
        reason: InvalidReason | None = None,
        suggestion: str | None = None,
    ) -> None:
        # (The records of this module write their __init__ out: the one dataclasses
        # generates runs interpreted in the compiled build, ten times slower;
        # tests/test_records.py keeps each the same as the generated one.)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "normalized", normalized)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "suggestion", suggestion)

    @property
    def in_trust_space(self) -> bool:
        """True for MSSanté professional and patient addresses."""
        return self.kind in (AddressClass.MSSANTE, AddressClass.PATIENT)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope of one transaction, as the client gave it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    auth_user: str | None = None
    mail_options: tuple[str, ...] = ()
    """ESMTP parameters of MAIL FROM (``BODY=8BITMIME``, ``SMTPUTF8``...)."""
    dot_free: bool = False
    """True when the listener saw that no line of the message starts with a dot: the bytes
    relayed unchanged need no dot-stuffing scan on the way out."""

    def __init__(
        self,
        mail_from: str,
        rcpt_tos: tuple[str, ...],
        auth_user: str | None = None,
        mail_options: tuple[str, ...] = (),
        dot_free: bool = False,
    ) -> None:
        object.__setattr__(self, "mail_from", mail_from)
        object.__setattr__(self, "rcpt_tos", rcpt_tos)
        object.__setattr__(self, "auth_user", auth_user)
        object.__setattr__(self, "mail_options", mail_options)
        object.__setattr__(self, "dot_free", dot_free)

    @property
    def smtputf8(self) -> bool:
        """True when the client asked for SMTPUTF8 on MAIL FROM."""
        return any(opt.upper() == "SMTPUTF8" for opt in self.mail_options)


class Action(StrEnum):
    """What happens to a message."""

    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


class Route(StrEnum):
    """The two upstream routes: one inside the trust space, one for ordinary mail."""

    MSSANTE = "mssante"
    ORDINARY = "ordinary"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's refusal of a message (or of one recipient at RCPT time)."""

    rule: str
    smtp_code: int
    enhanced_code: str
    reply: str
    """The human text, possibly non-ASCII; the server makes it a valid SMTP reply line."""
    addresses: tuple[str, ...] = ()

    def __init__(
        self,
        rule: str,
        smtp_code: int,
        enhanced_code: str,
        reply: str,
        addresses: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "smtp_code", smtp_code)
        object.__setattr__(self, "enhanced_code", enhanced_code)
        object.__setattr__(self, "reply", reply)
        object.__setattr__(self, "addresses", addresses)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One upstream transaction: a route, its recipients and the bytes to send."""

    route: Route
    recipients: tuple[str, ...]
    message: bytes
    signature_added: bool = False
    dot_free: bool = False
    """True when no line of ``message`` starts with a dot (no dot-stuffing to do)."""

    def __init__(
        self,
        route: Route,
        recipients: tuple[str, ...],
        message: bytes,
        signature_added: bool = False,
        dot_free: bool = False,
    ) -> None:
        object.__setattr__(self, "route", route)
        object.__setattr__(self, "recipients", recipients)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "signature_added", signature_added)
        object.__setattr__(self, "dot_free", dot_free)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the policy for one message."""

    action: Action
    smtp_code: int
    enhanced_code: str
    reply: str
    rule: str | None = None
    deliveries: tuple[Delivery, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """Why something did not happen (e.g. no signature: the message is signed)."""
    recipients: tuple[Classification, ...] = ()
    """The envelope recipients as classified (for the audit trail)."""
    message_id: str | None = None

    def __init__(
        self,
        action: Action,
        smtp_code: int,
        enhanced_code: str,
        reply: str,
        rule: str | None = None,
        deliveries: tuple[Delivery, ...] = (),
        notes: tuple[str, ...] = (),
        recipients: tuple[Classification, ...] = (),
        message_id: str | None = None,
    ) -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "smtp_code", smtp_code)
        object.__setattr__(self, "enhanced_code", enhanced_code)
        object.__setattr__(self, "reply", reply)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "deliveries", deliveries)
        object.__setattr__(self, "notes", notes)
        object.__setattr__(self, "recipients", recipients)
        object.__setattr__(self, "message_id", message_id)

    @property
    def signature_added(self) -> bool:
        """True when a preferred-address signature was added to at least one delivery."""
        return any(d.signature_added for d in self.deliveries)

    @classmethod
    def refuse(
        cls,
        verdict: Verdict,
        action: Action = Action.REJECT,
        recipients: tuple[Classification, ...] = (),
        message_id: str | None = None,
    ) -> Decision:
        """A refusal decision from a rule's verdict."""
        return cls(
            action=action,
            smtp_code=verdict.smtp_code,
            enhanced_code=verdict.enhanced_code,
            reply=verdict.reply,
            rule=verdict.rule,
            recipients=recipients,
            message_id=message_id,
        )
