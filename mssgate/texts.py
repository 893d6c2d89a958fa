"""User-facing texts: filling the policy's templates and making valid SMTP reply lines.

A reply line must be ASCII unless the client negotiated SMTPUTF8 (RFC 6531), carry no CR or LF,
and stay within 512 octets including the code and CRLF (RFC 5321 4.5.3.1.5).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_REPLY_LINE = 512
_LISTED = 4
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def list_addresses(addresses: Iterable[str], limit: int = _LISTED) -> str:
    """A short human list: ``a, b, c et 2 autres``."""
    unique = list(dict.fromkeys(addresses))
    shown = ", ".join(unique[:limit])
    rest = len(unique) - limit
    return f"{shown} et {rest} autre{'s' if rest > 1 else ''}" if rest > 0 else shown


def render(template: str, **values: str) -> str:
    """Fill a template whose variables were checked when the policy loaded."""
    return template.format_map(values)


def to_ascii(text: str) -> str:
    """Transliterate to ASCII: accents dropped, typographic signs replaced, rest as ``?``."""
    replaced = (
        text.replace("«", '"')
        .replace("»", '"')
        .replace("’", "'")
        .replace("œ", "oe")
        .replace("Œ", "OE")
        .replace("\u00a0", " ")
        .replace("\u202f", " ")
    )
    decomposed = unicodedata.normalize("NFKD", replaced)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.encode("ascii", "replace").decode("ascii")


def smtp_reply(code: int, enhanced: str, text: str, *, utf8: bool = False) -> str:
    """One valid SMTP reply line (without CRLF): ``550 5.7.1 text``.

    Control characters are folded to spaces, the text is transliterated to ASCII unless
    ``utf8``, and the line is cut (on a character boundary) to fit 512 octets with its CRLF.
    """
    prefix = f"{code} {enhanced} " if enhanced else f"{code} "
    if text.isascii() and text.isprintable() and len(prefix) + len(text) <= MAX_REPLY_LINE - 2:
        return prefix + text.strip()  # (the usual case: nothing to fold, cut or transliterate)
    clean = _CONTROL.sub(" ", text).strip()
    if not utf8:
        clean = to_ascii(clean)
    budget = MAX_REPLY_LINE - 2 - len(prefix.encode("ascii"))
    encoded = clean.encode("utf-8")
    if len(encoded) > budget:
        encoded = encoded[: budget - 3]
        clean = encoded.decode("utf-8", "ignore") + "..."
    return prefix + clean
