"""Table tests for address classification, read like DOMAIN.md's examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.classify import (
    DomainSets,
    classify_address,
    classify_all,
    ins_key_is_valid,
    is_mssante_domain,
    normalize_domain,
    split_address,
    suggest_domain,
)
from mssgate.model import AddressClass, Classification, InvalidReason

MSSANTE = AddressClass.MSSANTE
PATIENT = AddressClass.PATIENT
ORDINARY = AddressClass.ORDINARY
INVALID = AddressClass.INVALID

NO_LIST = DomainSets()
NATIONAL = DomainSets(
    national=frozenset(
        {
            "medecin.mssante.fr",
            "pro.mssante.fr",
            "ch-lemans.mssante.fr",
            "chu-rennes.mssante.fr",
            "pharmacien.mssante.fr",
            "interop-mssante.apicrypt.org",
            "mssante.apicrypt.org",
        }
    )
)


# --- split_address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prenom.nom@medecin.mssante.fr", ("prenom.nom", "medecin.mssante.fr")),
        ("<prenom.nom@medecin.mssante.fr>", ("prenom.nom", "medecin.mssante.fr")),
        ("  <x@pro.mssante.fr>  ", ("x", "pro.mssante.fr")),
        ("####@medecin.mssante.fr", ("####", "medecin.mssante.fr")),
        ("noreply-dpi@chu.mssante.fr", ("noreply-dpi", "chu.mssante.fr")),
        ("élodie.müller@exemple.fr", ("élodie.müller", "exemple.fr")),  # SMTPUTF8
        ("jean@medecin.mssanté.fr", ("jean", "medecin.mssanté.fr")),
        ('"jean dupont"@exemple.fr', ('"jean dupont"', "exemple.fr")),
        ('"a@b"@exemple.fr', ('"a@b"', "exemple.fr")),
        ("", None),
        ("no-at-sign", None),
        ("a@", None),
        ("@b.fr", None),
        ("a b@c.fr", None),
        ("a@b c.fr", None),
        ("a@b@c.fr", None),
        ("x@y.fr\r\nBcc: z@w.fr", None),
        ("x@y.fr\n", None),
        ("x\t@y.fr", None),
        ("a,b@c.fr", None),
        ("a;b@c.fr", None),
        ("a@c.fr>", None),
        ("<<a@c.fr>>", None),
        ("Jean <a@c.fr>", None),
        (".a@c.fr", None),
        ("a.@c.fr", None),
        ("a..b@c.fr", None),
        ('""@c.fr', None),
        ('"unterminated@c.fr', None),
        ("a\u200b@c.fr", None),  # zero-width space
        ("a\u202e@c.fr", None),  # right-to-left override
        ("x" * 65 + "@c.fr", None),
    ],
)
def test_split_address(text: str, expected: tuple[str, str] | None) -> None:
    assert split_address(text) == expected


# --- normalize_domain ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("medecin.mssante.fr", "medecin.mssante.fr"),
        ("MEDECIN.MSSANTE.FR", "medecin.mssante.fr"),
        ("Medecin.MsSante.Fr.", "medecin.mssante.fr"),
        ("medecin.mssanté.fr", "medecin.xn--mssant-gva.fr"),
        ("MEDECIN.MSSANTÉ.FR", "medecin.xn--mssant-gva.fr"),
        ("medecin.XN--MSSANT-GVA.fr", "medecin.xn--mssant-gva.fr"),
        ("planetsanté.fr", "xn--planetsant-k7a.fr"),
        ("ｍｓｓａｎｔｅ．ｆｒ", "mssante.fr"),  # fullwidth: UTS46 maps it
        ("straße.de", "xn--strae-oqa.de"),  # IDNA 2008, non-transitional
        ("☕.example", "xn--53h.example"),  # IDNA 2003 fallback
        ("a" * 63 + ".fr", "a" * 63 + ".fr"),
        ("", None),
        (".", None),
        ("localhost", None),
        ("a" * 64 + ".fr", None),
        ("a..fr", None),
        ("-a.fr", None),
        ("a-.fr", None),
        ("a_b.fr", None),
        ("a b.fr", None),
        ("1.2.3.4", None),
        ("[192.0.2.1]", None),
        ("xn--.fr", None),
        ("xn--abc-.fr", None),  # "A-label" of pure ASCII
        ("xn--zz!.fr", None),
        (("a" * 60 + ".") * 5 + "fr", None),  # longer than 253
    ],
)
def test_normalize_domain(domain: str, expected: str | None) -> None:
    assert normalize_domain(domain) == expected


# --- INS key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matricule", "valid"),
    [
        ("279035121518989", True),  # DOMAIN.md test data
        ("146026322000196", True),
        ("288091234567823", False),  # official examples with a wrong key
        ("246037433000291", False),
        ("185022A01234531", True),  # Corsica: 2A read as 19 -> key 31
        ("185022a01234531", True),  # case-insensitive
        ("285092B04567858", True),  # Corsica: 2B read as 18 -> key 58
        ("185022B01234531", False),  # same digits, other Corsican department
        ("185022A01234532", False),
        ("27903512151898", False),  # 14 characters
        ("2790351215189890", False),  # 16 characters
        ("27903512151898A", False),
        ("2790A5121518989", False),
        ("١٢٣٤٥٦٧٨٩٠١٢٣٤٥", False),  # Arabic-Indic digits are not INS digits
        ("", False),
    ],
)
def test_ins_key(matricule: str, valid: bool) -> None:
    assert ins_key_is_valid(matricule) is valid


# --- classification, the domain's own examples ------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        # DOMAIN.md: recognising an MSSanté address
        ("prenom.nom@medecin.mssante.fr", MSSANTE),
        ("service@ch-lemans.mssante.fr", MSSANTE),
        ("x@pro.mssante.fr", MSSANTE),
        ("prenom.nom@interop-mssante.apicrypt.org", MSSANTE),
        ("prenom.nom@mssante.apicrypt.org", MSSANTE),
        ("etablissementXXX.serviceYYY@nomoperateur.mssante.fr", MSSANTE),
        ("noreply-dpi@chu-rennes.mssante.fr", MSSANTE),
        # the training quiz: rule 1, do not mix recipients
        ("####@medecin.mssante.fr", MSSANTE),
        ("secretariatCabinetXX@outlook.fr", ORDINARY),
        # case and trailing dot do not matter
        ("Prenom.Nom@MEDECIN.MSSANTE.FR", MSSANTE),
        ("prenom.nom@medecin.mssante.fr.", MSSANTE),
        ("<prenom.nom@Interop-MSSante.Apicrypt.org>", MSSANTE),
        # SMTPUTF8 local parts are fine
        ("élodie@medecin.mssante.fr", MSSANTE),
        ("élodie@exemple.fr", ORDINARY),
    ],
)
def test_trust_space_examples(address: str, kind: AddressClass) -> None:
    result = classify_address(address)
    assert result.kind is kind
    assert result.reason is None
    assert result.suggestion is None


@pytest.mark.parametrize(
    "domain",
    [
        "gmail.com",
        "outlook.fr",
        "hotmail.fr",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "laposte.net",
        "ch-lemans.fr",
        "sante.fr",
        "ameli.fr",
        "esante.gouv.fr",
        "cabinet-medical-dupont.fr",
        "doctolib.fr",
        "sante.gouv.fr",
        "ars.sante.fr",
        "planetsante.fr",  # the ASCII site is a real, ordinary domain
        "puissante.fr",
        "croissante.fr",
        "mutante.fr",
        "pharmasante.fr",  # "masante" inside a word is not a lookalike
        "hommesante.fr",
        "yahoo.fr",
        "icloud.com",
        "chu-rennes.fr",
        "aphp.fr",
        "medecin.fr",
    ],
)
def test_ordinary_domains_are_not_lookalikes(domain: str) -> None:
    result = classify_address(f"prenom.nom@{domain}")
    assert result == Classification(
        address=f"prenom.nom@{domain}",
        normalized=f"prenom.nom@{domain}",
        kind=ORDINARY,
    )


@pytest.mark.parametrize(
    ("domain", "suggested"),
    [
        # DOMAIN.md's traps from real training material
        ("medecin.mssanté.fr", "medecin.mssante.fr"),
        ("medecin.xn--mssant-gva.fr", "medecin.mssante.fr"),
        ("MEDECIN.XN--MSSANT-GVA.FR", "medecin.mssante.fr"),
        ("médecin.mssanté.fr", "medecin.mssante.fr"),
        ("interop-mssante.apycrypt.org", "interop-mssante.apicrypt.org"),
        ("apycrypt.org", "interop-mssante.apicrypt.org"),
        ("interopmassante.apicrypt.org", "interop-mssante.apicrypt.org"),
        ("interop-mssante.apicript.org", "interop-mssante.apicrypt.org"),
        ("interop-mssante.apicrypt.fr", "interop-mssante.apicrypt.org"),
        ("interop-mssante.apicrypt.com", "interop-mssante.apicrypt.org"),
        ("mssante.apicrypt.fr", "mssante.apicrypt.org"),
        ("apicrypt.fr.example.com", "interop-mssante.apicrypt.org"),
        ("planetsanté.fr", "planetsante.fr"),
        ("xn--planetsant-k7a.fr", "planetsante.fr"),
        ("mssante.com", None),
        ("medecin.mssante.com", "medecin.mssante.fr"),
        ("msante.fr", None),
        ("medecin.msante.fr", "medecin.mssante.fr"),
        ("massante.fr", None),
        ("medecin.massante.fr", "medecin.mssante.fr"),
        ("medecin-mssante.fr", "medecin.mssante.fr"),
        ("mssante.fr.example.com", None),
        ("medecin.mssante.fr.example.com", "medecin.mssante.fr"),
        ("mssante.fr", None),  # the bare zone holds no mailbox
        ("MSSANTE.FR", None),
        # other ways of getting it wrong
        ("medecin.ms-sante.fr", "medecin.mssante.fr"),
        ("medecin.mssnate.fr", "medecin.mssante.fr"),  # transposition
        ("medecin.rnssante.fr", "medecin.mssante.fr"),  # "rn" reads as "m"
        ("medecin.mss4nte.fr", "medecin.mssante.fr"),
        ("medecin.mssаnte.fr", "medecin.mssante.fr"),  # Cyrillic "а"
        ("medecin.mssante", "medecin.mssante.fr"),
        ("mssantefr.com", None),
        ("medecin-msante.fr", "medecin.mssante.fr"),
        ("msante-pro.fr", None),
        ("pharmamssante.fr", "pharma.mssante.fr"),
    ],
)
def test_lookalikes_are_refused_with_a_suggestion(domain: str, suggested: str | None) -> None:
    result = classify_address(f"prenom.nom@{domain}")
    assert result.kind is INVALID
    assert result.reason is InvalidReason.LOOKALIKE
    assert result.suggestion == (None if suggested is None else f"prenom.nom@{suggested}")
    assert result.normalized == f"prenom.nom@{normalize_domain(domain)}"
    assert suggest_domain(domain, NO_LIST) == suggested


@pytest.mark.parametrize(
    "domain",
    ["apicrypt.org", "apicrypt.fr", "medecin.apicrypt.org", "Dr.Martin.APICRYPT.FR"],
)
def test_apicrypt_v1_is_not_interoperable(domain: str) -> None:
    result = classify_address(f"prenom.nom@{domain}")
    assert result.kind is INVALID
    assert result.reason is InvalidReason.APICRYPT_V1
    assert result.suggestion == "prenom.nom@interop-mssante.apicrypt.org"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "<>",
        "no-at-sign",
        "a@",
        "@b.fr",
        "a b@c.fr",
        "a@b@c.fr",
        "x@y.fr\r\nBcc: z@w.fr",
        "x@y.fr\nRCPT TO:<z@w.fr>",
        "x@" + "a" * 64 + ".mssante.fr",
        "x@mssante",
        "x@localhost",
        "x@[192.0.2.1]",
        "x@medecin..mssante.fr",
        "x@-medecin.mssante.fr",
        "x@medecin_1.mssante.fr",
        "Jean Dupont <jean@medecin.mssante.fr>",
        "jean@medecin.mssante.fr, paul@medecin.mssante.fr",
        "\x00@medecin.mssante.fr",
    ],
)
def test_malformed_addresses_are_syntax_errors(address: str) -> None:
    result = classify_address(address)
    assert result.kind is INVALID
    assert result.reason is InvalidReason.SYNTAX
    assert result.suggestion is None
    assert not result.in_trust_space


# --- patients --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind", "reason", "normalized"),
    [
        ("279035121518989@patient.mssante.fr", PATIENT, None, None),
        ("146026322000196@patient.mssante.fr", PATIENT, None, None),
        ("<146026322000196@PATIENT.MSSANTE.FR>", PATIENT, None, None),
        ("185022a01234531@patient.mssante.fr", PATIENT, None, "185022A01234531@patient.mssante.fr"),
        ("285092B04567858@patient.mssante.fr", PATIENT, None, None),
        ("288091234567823@patient.mssante.fr", INVALID, InvalidReason.INS_KEY, None),
        ("246037433000291@patient.mssante.fr", INVALID, InvalidReason.INS_KEY, None),
        ("185022B01234531@patient.mssante.fr", INVALID, InvalidReason.INS_KEY, None),
        ("27903512151898@patient.mssante.fr", INVALID, InvalidReason.INS_FORMAT, None),
        ("jean.dupont@patient.mssante.fr", INVALID, InvalidReason.INS_FORMAT, None),
        ("2790-3512-1518-989@patient.mssante.fr", INVALID, InvalidReason.INS_FORMAT, None),
    ],
)
def test_patient_addresses(
    address: str, kind: AddressClass, reason: InvalidReason | None, normalized: str | None
) -> None:
    result = classify_address(address)
    assert result.kind is kind
    assert result.reason is reason
    if normalized is not None:
        assert result.normalized == normalized
    assert result.in_trust_space is (kind is PATIENT)


def test_patient_domain_is_known_even_with_a_national_list_that_forgot_it() -> None:
    result = classify_address("279035121518989@patient.mssante.fr", NATIONAL)
    assert result.kind is PATIENT


def test_patient_domain_typo_suggests_the_patient_domain_for_a_valid_ins() -> None:
    assert classify_address("279035121518989@patient.msante.fr").suggestion == (
        "279035121518989@patient.mssante.fr"
    )
    unknown = classify_address("279035121518989@patlent.mssante.fr", NATIONAL)
    assert unknown.reason is InvalidReason.UNKNOWN_MSSANTE_DOMAIN
    assert unknown.suggestion == "279035121518989@patient.mssante.fr"
    # but not for a local part that is no INS at all
    assert classify_address("jean@patlent.mssante.fr", NATIONAL).suggestion is None


# --- the national list and IT's lists --------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind", "reason", "suggestion"),
    [
        ("prenom.nom@medecin.mssante.fr", MSSANTE, None, None),
        ("prenom.nom@Medecin.MSSante.fr", MSSANTE, None, None),
        ("prenom.nom@interop-mssante.apicrypt.org", MSSANTE, None, None),
        (
            "prenom.nom@medecn.mssante.fr",
            INVALID,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
            "prenom.nom@medecin.mssante.fr",
        ),
        (
            "service@ch-lemens.mssante.fr",
            INVALID,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
            "service@ch-lemans.mssante.fr",
        ),
        (
            "x@pr.mssante.fr",
            INVALID,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
            "x@pro.mssante.fr",
        ),
        ("x@operateur-disparu.mssante.fr", INVALID, InvalidReason.UNKNOWN_MSSANTE_DOMAIN, None),
        (
            "x@médecin.mssante.fr",
            INVALID,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
            "x@medecin.mssante.fr",
        ),
        # a lookalike's suggestion is checked against the list
        (
            "prenom.nom@medecin.mssanté.fr",
            INVALID,
            InvalidReason.LOOKALIKE,
            "prenom.nom@medecin.mssante.fr",
        ),
        (
            "prenom.nom@medecn.msante.fr",
            INVALID,
            InvalidReason.LOOKALIKE,
            "prenom.nom@medecin.mssante.fr",
        ),
        ("prenom.nom@inconnu.msante.fr", INVALID, InvalidReason.LOOKALIKE, None),
        ("prenom.nom@gmail.com", ORDINARY, None, None),
    ],
)
def test_with_the_national_list_loaded(
    address: str, kind: AddressClass, reason: InvalidReason | None, suggestion: str | None
) -> None:
    result = classify_address(address, NATIONAL)
    assert (result.kind, result.reason, result.suggestion) == (kind, reason, suggestion)


def test_without_the_national_list_any_mssante_fr_domain_is_trusted() -> None:
    assert classify_address("prenom.nom@medecn.mssante.fr").kind is MSSANTE


def test_it_can_extend_the_trust_space() -> None:
    domains = DomainSets(
        extra_mssante=frozenset({"nouvel-operateur.mssante.fr", "bal.clinique-exemple.fr"}),
        national=NATIONAL.national,
    )
    assert classify_address("a@nouvel-operateur.mssante.fr", domains).kind is MSSANTE
    assert classify_address("a@BAL.Clinique-Exemple.fr", domains).kind is MSSANTE
    # an IT-added domain is also a candidate for suggestions
    typo = classify_address("a@nouvel-operater.mssante.fr", domains)
    assert typo.suggestion == "a@nouvel-operateur.mssante.fr"


def test_it_can_declare_a_real_domain_is_not_a_lookalike() -> None:
    assert classify_address("contact@masante.fr").reason is InvalidReason.LOOKALIKE
    domains = DomainSets(lookalike_exceptions=frozenset({"masante.fr"}))
    assert classify_address("contact@masante.fr", domains).kind is ORDINARY
    assert suggest_domain("masante.fr", domains) is None


@pytest.mark.parametrize(
    ("domain", "domains", "expected"),
    [
        ("medecin.mssante.fr", NO_LIST, True),
        ("medecn.mssante.fr", NO_LIST, True),
        ("medecn.mssante.fr", NATIONAL, False),
        ("MEDECIN.MSSANTE.FR.", NATIONAL, True),
        ("patient.mssante.fr", NATIONAL, True),
        ("interop-mssante.apicrypt.org", DomainSets(national=frozenset()), True),
        ("mssante.apicrypt.org", NO_LIST, True),
        ("apicrypt.org", NO_LIST, False),
        ("mssante.fr", NO_LIST, False),
        ("mssante.fr.example.com", NO_LIST, False),
        ("gmail.com", NO_LIST, False),
        ("gmail.com", DomainSets(extra_mssante=frozenset({"gmail.com"})), True),
    ],
)
def test_is_mssante_domain(domain: str, domains: DomainSets, expected: bool) -> None:
    assert is_mssante_domain(domain, domains) is expected


@pytest.mark.parametrize(
    ("domain", "domains", "expected"),
    [
        ("medecin.mssanté.fr", NO_LIST, "medecin.mssante.fr"),
        ("medecn.mssante.fr", NATIONAL, "medecin.mssante.fr"),
        ("apicrypt.fr", NO_LIST, "interop-mssante.apicrypt.org"),
        ("medecin.mssante.fr", NO_LIST, None),
        ("gmail.com", NO_LIST, None),
        ("not a domain", NO_LIST, None),
    ],
)
def test_suggest_domain(domain: str, domains: DomainSets, expected: str | None) -> None:
    assert suggest_domain(domain, domains) == expected


def test_classify_all_keeps_the_order_of_the_recipients() -> None:
    # the training quiz: an MSSanté BAL with an outlook.fr secretariat in copy
    results = classify_all(
        ["####@medecin.mssante.fr", "secretariatCabinetXX@outlook.fr", "bad"], NO_LIST
    )
    assert [r.kind for r in results] == [MSSANTE, ORDINARY, INVALID]
    assert [r.in_trust_space for r in results] == [True, False, False]
    assert classify_all([], NO_LIST) == ()


def test_normalized_keeps_the_local_part_and_lowers_the_domain() -> None:
    result = classify_address(" <Jean.DUPONT@Médecin.MSSANTE.fr> ")
    assert result.address == "Jean.DUPONT@Médecin.MSSANTE.fr"
    assert result.normalized == "Jean.DUPONT@xn--mdecin-bva.mssante.fr"
    assert result.kind is MSSANTE


def test_syntax_error_keeps_the_raw_text() -> None:
    result = classify_address("<a b@c.fr>")
    assert result.address == result.normalized == "a b@c.fr"


# --- properties ------------------------------------------------------------------------------

MSSANTE_DOMAINS = [
    "medecin.mssante.fr",
    "ch-lemans.mssante.fr",
    "pro.mssante.fr",
    "interop-mssante.apicrypt.org",
    "mssante.apicrypt.org",
]
IDN_DOMAINS = ["medecin.mssanté.fr", "médecin.mssante.fr", "planetsanté.fr"]


@settings(max_examples=500)
@given(st.text())
def test_classify_never_raises_on_arbitrary_text(text: str) -> None:
    result = classify_address(text, NATIONAL)
    assert isinstance(result, Classification)
    assert (result.reason is None) == (result.kind is not INVALID)


ADDRESSISH = st.lists(
    st.sampled_from([*'aémns.-@<>"\\ \r\n\t#xX1-2AB_çß\u200b。．', "xn--", "mssante"]),
    max_size=20,
).map("".join)


@settings(max_examples=500)
@given(ADDRESSISH, st.sampled_from([*MSSANTE_DOMAINS, *IDN_DOMAINS, "gmail.com", ""]))
def test_classify_never_raises_on_address_like_text(local: str, domain: str) -> None:
    for text in (local, f"{local}@{domain}", f"{local}{domain}"):
        result = classify_address(text)
        assert isinstance(result, Classification)
        if result.kind is not INVALID:
            assert "\r" not in result.normalized and "\n" not in result.normalized


def _case_variant(text: str, mask: list[bool]) -> str:
    return "".join(c.upper() if mask[i % len(mask)] else c.lower() for i, c in enumerate(text))


@given(
    st.sampled_from(MSSANTE_DOMAINS),
    st.lists(st.booleans(), min_size=1, max_size=30),
    st.booleans(),
)
def test_case_variants_of_an_mssante_domain_classify_identically(
    domain: str, mask: list[bool], trailing_dot: bool
) -> None:
    reference = classify_address(f"jean@{domain}", NATIONAL)
    variant = _case_variant(domain, mask) + ("." if trailing_dot else "")
    result = classify_address(f"jean@{variant}", NATIONAL)
    assert result.kind is reference.kind is MSSANTE
    assert result.normalized == reference.normalized


@given(
    st.sampled_from([*MSSANTE_DOMAINS, *IDN_DOMAINS]),
    st.lists(st.booleans(), min_size=1, max_size=30),
    st.sampled_from([NO_LIST, NATIONAL]),
)
def test_unicode_and_punycode_forms_classify_identically(
    domain: str, mask: list[bool], domains: DomainSets
) -> None:
    ascii_domain = normalize_domain(domain)
    assert ascii_domain is not None
    unicode_result = classify_address(f"jean@{_case_variant(domain, mask)}", domains)
    punycode_result = classify_address(f"jean@{_case_variant(ascii_domain, mask)}", domains)
    assert unicode_result.kind is punycode_result.kind
    assert unicode_result.reason is punycode_result.reason
    assert unicode_result.normalized == punycode_result.normalized
    assert unicode_result.suggestion == punycode_result.suggestion


@given(st.text(max_size=80))
def test_normalize_domain_is_idempotent(domain: str) -> None:
    normalized = normalize_domain(domain)
    if normalized is not None:
        assert normalized.isascii() and normalized == normalized.lower()
        assert normalize_domain(normalized) == normalized


@given(st.from_regex(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{6}", fullmatch=True))
def test_exactly_one_key_is_valid_for_each_nir(nir: str) -> None:
    valid = [key for key in range(100) if ins_key_is_valid(f"{nir}{key:02d}")]
    assert len(valid) == 1
