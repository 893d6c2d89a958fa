"""The envelope commands as mail clients send them, recognised in their plain form (pure).

Nearly every ``MAIL FROM`` and ``RCPT TO`` a gateway sees is one line such as
``MAIL FROM:<dr.martin@cabinet.fr> SIZE=20480 BODY=8BITMIME``: an address of the common
``dot-atom@domain`` form, and parameters the gateway knows. The server answers those as soon
as the line arrives (:meth:`mssgate.server.GatewaySMTP.data_received`); anything else
(quoted local parts, source routes, unknown or repeated parameters, ``SMTPUTF8``, non-ASCII,
several lines at once...) goes the usual way, through aiosmtpd's parser, which gives the same
answers to these plain forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 512
"""The longest command line taken here, line ending included (RFC 5321 4.5.3.1.4)."""

_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LINE = re.compile(
    rb"(MAIL FROM|RCPT TO):[ ]?<("
    + _ATEXT
    + rb"(?:\."
    + _ATEXT
    + rb")*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>((?: +[!-~]+)*) *\r\n",
    re.IGNORECASE,
)
_SIZE = re.compile(rb"SIZE=([0-9]{1,20})", re.IGNORECASE)
_BODY = frozenset({b"BODY=7BIT", b"BODY=8BITMIME"})


@dataclass(frozen=True, slots=True)
class EnvelopeCommand:
    """One plain ``MAIL FROM`` or ``RCPT TO`` line."""

    verb: str
    """``MAIL`` or ``RCPT``."""
    address: str
    options: tuple[str, ...]
    """The parameters upper-cased, as aiosmtpd hands them to the handler."""
    size: int | None
    """``SIZE=`` of a MAIL FROM, when given."""

    def __init__(self, verb: str, address: str, options: tuple[str, ...], size: int | None) -> None:
        # (Written out: see mssgate.model.)
        object.__setattr__(self, "verb", verb)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "size", size)


def envelope_command(line: bytes, local_part_limit: int = 0) -> EnvelopeCommand | None:
    """``line`` (one command line with its CRLF) as an :class:`EnvelopeCommand`, or None
    when it is anything but the plain form described in this module's docstring.

    ``local_part_limit``: a longer local part is not taken here (0: no limit), so that the
    usual parser refuses it with its own reply.
    """
    if len(line) > MAX_LINE or not line.isascii():
        return None
    found = _LINE.fullmatch(line)
    if found is None:
        return None
    verb = b"MAIL" if found.group(1)[:1] in b"Mm" else b"RCPT"
    address = found.group(2)
    if local_part_limit and len(address.rpartition(b"@")[0]) > local_part_limit:
        return None
    params = found.group(3).upper().split()
    size: int | None = None
    if params:
        if verb == b"RCPT":
            return None  # (no RCPT parameter is known: aiosmtpd answers 555)
        body_seen = False
        for param in params:
            sized = _SIZE.fullmatch(param)
            if sized is not None and size is None:
                size = int(sized.group(1))
            elif param in _BODY and not body_seen:
                body_seen = True
            else:
                return None
    return EnvelopeCommand(
        verb.decode(),
        address.decode(),
        tuple(p.decode() for p in params),
        size,
    )
