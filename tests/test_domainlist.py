"""Tests for the ANS national list and IT's allow-list parsers."""

from __future__ import annotations

import pytest

from mssgate.classify import DomainSets, classify_address
from mssgate.domainlist import (
    NATIONAL_LIST_NAMESPACE,
    DomainListError,
    check_not_shrunk,
    parse_allow_list,
    parse_national_list,
)
from mssgate.model import AddressClass, InvalidReason

OPERATOR_DOMAINS = [
    "medecin.mssante.fr",
    "pharmacien.mssante.fr",
    "infirmier.mssante.fr",
    "sage-femme.mssante.fr",
    "chirurgien-dentiste.mssante.fr",
    "masseur-kinesitherapeute.mssante.fr",
    "pro.mssante.fr",
    "ch-lemans.mssante.fr",
    "chu-rennes.mssante.fr",
    "chu-nantes.mssante.fr",
    "aphp.mssante.fr",
    "hcl.mssante.fr",
    "ap-hm.mssante.fr",
    "chu-bordeaux.mssante.fr",
    "chu-lille.mssante.fr",
    "ght-sarthe.mssante.fr",
    "esante-bretagne.mssante.fr",
    "sante-paysdelaloire.mssante.fr",
    "grades-occitanie.mssante.fr",
    "clinique-du-parc.mssante.fr",
    "ehpad-les-tilleuls.mssante.fr",
    "labo-biomed.mssante.fr",
    "imagerie-ouest.mssante.fr",
    "centre-sante-nord.mssante.fr",
    "cabinet-radiologie.mssante.fr",
    "patient.mssante.fr",
    "interop-mssante.apicrypt.org",
    "mssante.apicrypt.org",
]
MIXED_CASE_ENTRY = "Hopital-Exemple.MSSante.fr"


def _domaine(name: str, index: int) -> str:
    return (
        "  <Domaine>\n"
        f"    <Nom>{name}</Nom>\n"
        f"    <Description>Opérateur n°{index} &amp; co</Description>\n"
        f"    <DNCertificatOperateur>CN=mss.op{index}.fr,OU=318751275100020,O=OP{index},"
        "C=FR</DNCertificatOperateur>\n"
        "    <DateMAJ>2025-03-14T09:12:00</DateMAJ>\n"
        "  </Domaine>\n"
    )


def national_xml(
    names: list[str],
    *,
    namespace: str | None = NATIONAL_LIST_NAMESPACE,
    root: str = "ListeBlancheMSSante",
    with_date: bool = True,
) -> bytes:
    """A realistic ANS list with the given ``Nom`` entries."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    date = "  <DateDeGeneration>2025-03-15T02:00:01</DateDeGeneration>\n" if with_date else ""
    body = "".join(_domaine(name, i) for i, name in enumerate(names, start=1))
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{xmlns}>\n{date}{body}</{root}>\n'
    return text.encode("utf-8")


REALISTIC = national_xml([*OPERATOR_DOMAINS, MIXED_CASE_ENTRY, "pro.mssante.fr"])


def test_realistic_national_list() -> None:
    domains = parse_national_list(REALISTIC)
    assert len(domains) == len(OPERATOR_DOMAINS) + 1 == 29  # duplicate counted once
    assert "hopital-exemple.mssante.fr" in domains  # the mixed-case entry, normalised
    assert MIXED_CASE_ENTRY not in domains
    assert {"patient.mssante.fr", "interop-mssante.apicrypt.org", "mssante.apicrypt.org"} <= (
        domains
    )
    assert all(d == d.lower() and d.isascii() for d in domains)


def test_national_list_without_namespace_is_accepted() -> None:
    assert parse_national_list(national_xml(OPERATOR_DOMAINS, namespace=None)) == frozenset(
        OPERATOR_DOMAINS
    )


def test_national_list_feeds_the_classifier() -> None:
    domains = DomainSets(national=parse_national_list(REALISTIC))
    assert classify_address("x@Hopital-Exemple.mssante.fr", domains).kind is AddressClass.MSSANTE
    unknown = classify_address("x@medecn.mssante.fr", domains)
    assert unknown.reason is InvalidReason.UNKNOWN_MSSANTE_DOMAIN
    assert unknown.suggestion == "x@medecin.mssante.fr"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (REALISTIC[: len(REALISTIC) // 2], "XML"),  # truncated mid-element
        (REALISTIC[: REALISTIC.rindex(b"</ListeBlancheMSSante>")], "XML"),  # root never closed
        (REALISTIC.replace(b"<Nom>pro.mssante.fr</Nom>", b"<Nom>pro.mssante.fr</Nim>"), "XML"),
        (b"", "vide"),
        (b"   \n", "vide"),
        (b"not xml at all", "XML"),
        (national_xml(OPERATOR_DOMAINS, root="WhiteList"), "racine"),
        (national_xml(OPERATOR_DOMAINS, namespace="https://example.org/other"), "racine"),
        (national_xml(OPERATOR_DOMAINS, with_date=False), "DateDeGeneration"),
        (national_xml([]), "Domaine"),
        (national_xml(["*.mssante.fr"]), "*.mssante.fr"),  # no wildcards
        (national_xml(["medecin.mssante.fr", "bad domain.fr"]), "n°2"),
        (national_xml(["medecin.mssante.fr", ""]), "sans Nom"),
        (
            national_xml(["medecin.mssante.fr"]).replace(
                b"<Nom>medecin.mssante.fr</Nom>", b"<Description>sans nom</Description>"
            ),
            "sans Nom",
        ),
    ],
)
def test_unusable_national_lists_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(DomainListError, match=message.replace("*", r"\*")):
        parse_national_list(data)


@pytest.mark.parametrize(
    "prologue",
    [
        b'<!DOCTYPE ListeBlancheMSSante [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n',
        b"<!doctype ListeBlancheMSSante>\n",
        b'<!DOCTYPE ListeBlancheMSSante SYSTEM "http://example.org/evil.dtd">\n',
    ],
)
def test_doctype_and_entities_are_refused(prologue: bytes) -> None:
    xml_declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n'
    data = REALISTIC.replace(xml_declaration, xml_declaration + prologue)
    with pytest.raises(DomainListError, match="DOCTYPE"):
        parse_national_list(data)


def test_doctype_hidden_in_utf16_is_refused() -> None:
    text = REALISTIC.decode("utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    text = text.replace("?>\n", '?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n', 1)
    with pytest.raises(DomainListError, match="DOCTYPE"):
        parse_national_list(text.encode("utf-16"))


def test_a_utf16_copy_without_doctype_is_read() -> None:
    text = REALISTIC.decode("utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert parse_national_list(text.encode("utf-16")) == parse_national_list(REALISTIC)


def test_an_xml_comment_is_not_a_declaration() -> None:
    data = REALISTIC.replace(b"<DateDeGeneration>", b"<!-- export ANS --><DateDeGeneration>")
    assert len(parse_national_list(data)) == 29


# --- shrink check ----------------------------------------------------------------------------

PREVIOUS = frozenset(f"op{i}.mssante.fr" for i in range(100))


@pytest.mark.parametrize(
    ("new_size", "previous", "max_loss", "refused"),
    [
        (100, PREVIOUS, 0.2, False),
        (120, PREVIOUS, 0.2, False),  # growth is fine
        (80, PREVIOUS, 0.2, False),  # exactly the tolerated loss
        (79, PREVIOUS, 0.2, True),
        (50, PREVIOUS, 0.2, True),  # a truncated copy
        (0, PREVIOUS, 0.2, True),
        (95, PREVIOUS, 0.0, True),
        (95, PREVIOUS, 0.05, False),
        (1, None, 0.2, False),  # first load: nothing to compare with
    ],
)
def test_check_not_shrunk(
    new_size: int, previous: frozenset[str] | None, max_loss: float, refused: bool
) -> None:
    new = frozenset(f"op{i}.mssante.fr" for i in range(new_size))
    if refused:
        with pytest.raises(DomainListError, match=rf"{new_size}.*100|100.*{new_size}"):
            check_not_shrunk(new, previous, max_loss)
    else:
        check_not_shrunk(new, previous, max_loss)


def test_shrunk_national_list_is_refused_against_the_previous_one() -> None:
    previous = parse_national_list(REALISTIC)
    shrunk = parse_national_list(national_xml(OPERATOR_DOMAINS[:10]))
    with pytest.raises(DomainListError, match=r"10.*29"):
        check_not_shrunk(shrunk, previous)


@pytest.mark.parametrize("max_loss", [-0.1, 1.0, 2.0])
def test_check_not_shrunk_rejects_a_nonsense_tolerance(max_loss: float) -> None:
    with pytest.raises(ValueError, match="max_loss"):
        check_not_shrunk(PREVIOUS, PREVIOUS, max_loss)


# --- IT's allow-list -------------------------------------------------------------------------

ALLOW_LIST = """\ufeff# Domaines MSSanté ajoutés par le service informatique
# (opérateurs récents, pas encore sur la liste nationale)

nouvel-operateur.mssante.fr
Clinique-Exemple.MSSANTE.fr.   # casse et point final tolérés
   bal.clinique-exemple.fr
médecins-réunis.fr
nouvel-operateur.mssante.fr
"""


def test_allow_list_with_comments() -> None:
    assert parse_allow_list(ALLOW_LIST) == frozenset(
        {
            "nouvel-operateur.mssante.fr",
            "clinique-exemple.mssante.fr",
            "bal.clinique-exemple.fr",
            "xn--mdecins-runis-bhbi.fr",
        }
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# rien\n   # toujours rien\n"])
def test_empty_allow_list(text: str) -> None:
    assert parse_allow_list(text) == frozenset()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("medecin.mssante.fr\nnot a domain\n", 2),
        ("# ok\n\nmedecin.mssante.fr\n*.mssante.fr\n", 4),
        ("jean@medecin.mssante.fr\n", 1),
        ("localhost\n", 1),
        ("a..fr\n", 1),
        ("medecin.mssante.fr\r\nbad_domain.fr\r\n", 2),
    ],
)
def test_allow_list_names_the_bad_line(text: str, line: int) -> None:
    with pytest.raises(DomainListError, match=rf"ligne {line}\b.*line {line}\b"):
        parse_allow_list(text)
