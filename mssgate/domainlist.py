"""The domain lists that define the trust space: the ANS national list and IT's allow-list.

Pure parsing of bytes or text already read by the caller. A list that defines who may receive
health data must be refused whole rather than half-read: copies of the national list seen in
the wild were truncated, so a malformed or sharply shrunk list raises :class:`DomainListError`
and the caller keeps the previous one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from mssgate.classify import normalize_domain

__all__ = [
    "NATIONAL_LIST_NAMESPACE",
    "DomainListError",
    "check_not_shrunk",
    "parse_allow_list",
    "parse_national_list",
]

NATIONAL_LIST_NAMESPACE = "https://listeblanche.mssante.fr/schema"
"""The XML namespace of the ANS national list (a copy without namespace is also accepted)."""

_ROOT = "ListeBlancheMSSante"
# DTDs are never needed by the list and are how entity-expansion bombs get in.
_DECLARATION = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)


class DomainListError(ValueError):
    """A domain list that must not be used (malformed, truncated, shrunk, invalid entry)."""


def _split_tag(tag: object) -> tuple[str | None, str]:
    """``{namespace}name`` -> (namespace, name); comments and processing instructions -> ""."""
    if not isinstance(tag, str):
        return None, ""
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return None, tag


def parse_national_list(data: bytes) -> frozenset[str]:
    """Parse the ANS national list (XML) into the set of its normalised domains.

    Raises :class:`DomainListError` when the XML is not well formed (a truncated copy), holds
    a DOCTYPE or ENTITY declaration, has the wrong root, no ``DateDeGeneration``, no
    ``Domaine``, or a ``Nom`` that is not a valid domain.
    """
    if not data.strip():
        raise DomainListError("liste nationale MSSanté vide (national list is empty)")
    # Checked on the bytes and without NULs, so that a UTF-16/32 copy cannot hide a DTD.
    if _DECLARATION.search(data) or _DECLARATION.search(data.replace(b"\x00", b"")):
        raise DomainListError(
            "liste nationale MSSanté refusée : déclaration DOCTYPE/ENTITY interdite "
            "(DOCTYPE/ENTITY declarations are refused)"
        )
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DomainListError(
            f"liste nationale MSSanté illisible, XML mal formé (copie tronquée ?) : {exc} "
            "(national list is not well-formed XML)"
        ) from exc
    namespace, name = _split_tag(root.tag)
    if name != _ROOT or namespace not in (None, NATIONAL_LIST_NAMESPACE):
        raise DomainListError(
            f"liste nationale MSSanté : racine {root.tag!r} inattendue, {_ROOT!r} attendue "
            f"dans l'espace de noms {NATIONAL_LIST_NAMESPACE!r} (wrong root element)"
        )

    def children(element: ET.Element, wanted: str) -> list[ET.Element]:
        return [child for child in element if _split_tag(child.tag) == (namespace, wanted)]

    dates = children(root, "DateDeGeneration")
    if not dates or not (dates[0].text or "").strip():
        raise DomainListError(
            "liste nationale MSSanté sans DateDeGeneration (no DateDeGeneration element)"
        )
    entries = children(root, "Domaine")
    if not entries:
        raise DomainListError("liste nationale MSSanté sans aucun Domaine (zero domains)")
    domains: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        names = children(entry, "Nom")
        raw = (names[0].text or "").strip() if names else ""
        if not raw:
            raise DomainListError(
                f"liste nationale MSSanté : Domaine n°{position} sans Nom "
                f"(Domaine #{position} has no Nom)"
            )
        domain = normalize_domain(raw)
        if domain is None:
            raise DomainListError(
                f"liste nationale MSSanté : Domaine n°{position}, nom de domaine invalide "
                f"{raw!r} (invalid domain)"
            )
        domains.add(domain)
    return frozenset(domains)


def check_not_shrunk(
    new: frozenset[str], previous: frozenset[str] | None, max_loss: float = 0.2
) -> None:
    """Refuse a list that lost more than ``max_loss`` of the previous one's domains."""
    if not 0.0 <= max_loss < 1.0:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss!r}")
    if previous is None:
        return
    if len(new) < len(previous) * (1.0 - max_loss):
        raise DomainListError(
            f"liste de domaines refusée : {len(new)} domaines contre {len(previous)} "
            f"précédemment, perte de plus de {max_loss:.0%} (list shrank from {len(previous)} "
            f"to {len(new)} domains)"
        )


def parse_allow_list(text: str) -> frozenset[str]:
    """Parse IT's allow-list: one domain a line, ``#`` comments and blank lines ignored.

    Raises :class:`DomainListError` naming the line of an invalid domain.
    """
    domains: set[str] = set()
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        domain = normalize_domain(value) if len(value.split()) == 1 else None
        if domain is None:
            raise DomainListError(
                f"liste de domaines autorisés, ligne {number} : domaine invalide {value!r} "
                f"(line {number}: invalid domain)"
            )
        domains.add(domain)
    return frozenset(domains)
