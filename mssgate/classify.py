"""Address classification: is an address inside the MSSanté trust space?

Pure functions on plain data. An address is split, its domain normalised to lower-case ASCII
(IDNA 2008 with UTS46 mapping), then classified as an MSSanté mailbox (BAL), a patient's
citizen address, an ordinary address, or refused (:class:`~mssgate.model.InvalidReason`) with,
when one is known, the address the user probably meant.

Lookalikes are the heart of the matter: training material shows real people typing
``medecin.mssanté.fr`` (an IDN: another domain), ``interop-mssante.apycrypt.org`` or
``msante.fr``. Such a domain is refused with a "did you mean" rather than silently treated as
ordinary mail, so that health data is never sent to a domain that merely resembles the trust
space.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import idna

from mssgate.model import AddressClass, Classification, InvalidReason

__all__ = [
    "APICRYPT_V2_DOMAINS",
    "MSSANTE_SUFFIX",
    "PATIENT_DOMAIN",
    "DomainSets",
    "classify_address",
    "classify_all",
    "ins_key_is_valid",
    "is_mssante_domain",
    "normalize_domain",
    "split_address",
    "suggest_domain",
]

MSSANTE_SUFFIX = ".mssante.fr"
"""Every professional MSSanté domain ends with this (ASCII, lower case)."""
PATIENT_DOMAIN = "patient.mssante.fr"
"""The patients' citizen mailboxes (Mon Espace Santé)."""
APICRYPT_INTEROP = "interop-mssante.apicrypt.org"
APICRYPT_V2_DOMAINS = frozenset({APICRYPT_INTEROP, "mssante.apicrypt.org"})
"""Apicrypt version 2: inside the trust space (and on the national list)."""
_APICRYPT_V1_REGISTERED = frozenset({"apicrypt.org", "apicrypt.fr"})


@dataclass(frozen=True, slots=True)
class DomainSets:
    """Which domains are in the trust space, as configured by IT."""

    extra_mssante: frozenset[str] = frozenset()
    """ASCII lower-case domains IT adds (policy or allow-list file)."""
    national: frozenset[str] | None = None
    """The ANS national list when loaded (ASCII lower-case), else None."""
    lookalike_exceptions: frozenset[str] = frozenset()
    """Ordinary domains IT declares are NOT lookalikes (e.g. a real ``masante.fr``)."""

    def __hash__(self) -> int:
        # (The generated one's value, hashed at every classification's cache lookup: the
        # generated method runs interpreted in the compiled build.)
        return hash((self.extra_mssante, self.national, self.lookalike_exceptions))


# --------------------------------------------------------------------------------------------
# Syntax
# --------------------------------------------------------------------------------------------

_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
# Unicode categories never allowed in an address: controls, format (bidi overrides, zero
# width), surrogates, private use, unassigned, separators (spaces, line/paragraph separators).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_MAX_LOCAL_OCTETS = 64
_MAX_DOMAIN_OCTETS = 253
_MAX_INPUT = 1024


def _unwrap(text: str) -> str:
    """The address without surrounding spaces/tabs and one pair of angle brackets."""
    stripped = text.strip(" \t")
    if len(stripped) >= 2 and stripped[0] == "<" and stripped[-1] == ">":
        stripped = stripped[1:-1].strip(" \t")
    return stripped


def _is_printable_char(char: str) -> bool:
    """True for a character that may appear in an address at all (no control, no space)."""
    if char.isascii():
        return 0x21 <= ord(char) <= 0x7E
    return unicodedata.category(char) not in _FORBIDDEN_CATEGORIES


def _valid_dot_string(local: str) -> bool:
    """RFC 5321 Dot-string, extended with UTF-8 atoms (RFC 6531)."""
    atoms = local.split(".")
    for atom in atoms:
        if not atom:
            return False
        for char in atom:
            if char.isascii():
                if char not in _ATEXT_ASCII:
                    return False
            elif not _is_printable_char(char):
                return False
    return True


def _quoted_local_end(text: str) -> int | None:
    """Index just after the closing quote of a quoted local part starting at 0, or None."""
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text):
                return None
            escaped = text[index + 1]
            if escaped.isascii() and not 0x20 <= ord(escaped) <= 0x7E:
                return None
            index += 2
            continue
        if char == '"':
            return index + 1
        if char.isascii():
            # qtextSMTP: printable ASCII and the space.
            if not 0x20 <= ord(char) <= 0x7E:
                return None
        elif not _is_printable_char(char):
            return None
        index += 1
    return None


def split_address(text: str) -> tuple[str, str] | None:
    """Split ``local@domain`` into its two parts, or None when the address is malformed.

    Surrounding spaces and one pair of angle brackets are accepted. Whitespace, control
    characters (CR/LF: header injection), ``<>,;`` and a second ``@`` are refused outside a
    quoted local part. The parts are returned as written (the domain is not normalised).
    """
    address = _unwrap(text)
    if not address or len(address) > _MAX_INPUT:
        return None
    if address.startswith('"'):
        end = _quoted_local_end(address)
        if end is None or end == 2 or address[end : end + 1] != "@":
            return None
        local, domain = address[:end], address[end + 1 :]
    else:
        if address.count("@") != 1:
            return None
        local, domain = address.split("@")
        if not _valid_dot_string(local):
            return None
    if not domain or len(local.encode("utf-8")) > _MAX_LOCAL_OCTETS:
        return None
    if "@" in domain or any(c in '<>,;"\\' or not _is_printable_char(c) for c in domain):
        return None
    return local, domain


# --------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------

_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _valid_ascii_domain(domain: str) -> bool:
    """A lower-case ASCII host name with at least two labels and a non-numeric TLD."""
    if not domain or len(domain) > _MAX_DOMAIN_OCTETS:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return False
    return all(_LDH_LABEL.fullmatch(label) for label in labels)


def _decode_punycode(label: str) -> str | None:
    """The Unicode form of one ``xn--`` label (no IDNA validation), or None."""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return None
    # A label that decodes to pure ASCII was never a valid A-label.
    return decoded if decoded and not decoded.isascii() else None


def _to_ascii(unicode_domain: str) -> str | None:
    """IDNA 2008 + UTS46 (non-transitional); IDNA 2003 when 2008 refuses (emoji, ``ab--``)."""
    try:
        return idna.encode(unicode_domain, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return unicode_domain.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None


def normalize_domain(domain: str) -> str | None:
    """Any case, Unicode or punycode, optional trailing dot -> lower-case ASCII, or None."""
    if not domain or len(domain) > _MAX_INPUT:
        return None
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or any(not _is_printable_char(c) for c in domain):
        return None
    labels: list[str] = []
    for label in domain.split("."):
        if label[:4].lower() == "xn--":
            decoded = _decode_punycode(label)
            if decoded is None:
                return None
            labels.append(decoded)
        else:
            labels.append(label)
    unicode_domain = ".".join(labels)
    if unicode_domain.isascii():
        ascii_domain: str | None = unicode_domain.lower()
    else:
        ascii_domain = _to_ascii(unicode_domain)
        if ascii_domain is not None:
            ascii_domain = ascii_domain.lower().removesuffix(".")
    if ascii_domain is None or not _valid_ascii_domain(ascii_domain):
        return None
    return ascii_domain


def _to_unicode(ascii_domain: str) -> str:
    """The Unicode form of a normalised domain (``xn--`` labels decoded, nothing validated)."""
    labels = []
    for label in ascii_domain.split("."):
        decoded = _decode_punycode(label) if label.startswith("xn--") else None
        labels.append(decoded if decoded is not None else label)
    return ".".join(labels)


def is_mssante_domain(ascii_domain: str, domains: DomainSets) -> bool:
    """True when a normalised domain is inside the trust space (national list if loaded)."""
    domain = ascii_domain.lower().removesuffix(".")
    if domain in domains.extra_mssante or domain in APICRYPT_V2_DOMAINS:
        return True
    if domain == PATIENT_DOMAIN:
        return True
    if not domain.endswith(MSSANTE_SUFFIX):
        return False
    return domains.national is None or domain in domains.national


# --------------------------------------------------------------------------------------------
# INS (patients)
# --------------------------------------------------------------------------------------------

_INS_FORMAT = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}", re.IGNORECASE)


def _ins_format_ok(matricule: str) -> bool:
    """15 characters: the 13-character NIR (Corsica ``2A``/``2B`` allowed) and a 2-digit key."""
    return matricule.isascii() and _INS_FORMAT.fullmatch(matricule) is not None


def ins_key_is_valid(matricule: str) -> bool:
    """True when a 15-character INS matricule is well formed and its key is right.

    Key = 97 - (NIR mod 97), with Corsica's department ``2A``/``2B`` read as 19/18.
    """
    if not _ins_format_ok(matricule):
        return False
    upper = matricule.upper()
    department = {"2A": "19", "2B": "18"}.get(upper[5:7], upper[5:7])
    nir = int(upper[:5] + department + upper[7:13])
    return int(upper[13:]) == 97 - nir % 97


# --------------------------------------------------------------------------------------------
# Lookalikes and suggestions
# --------------------------------------------------------------------------------------------

# Letters that render like Latin ones (Cyrillic/Greek) and ligatures NFKD does not split.
_CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "у": "y",
        "х": "x",
        "і": "i",
        "ѕ": "s",
        "т": "t",
        "м": "m",
        "н": "h",
        "α": "a",
        "ε": "e",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "ι": "i",
        "ß": "ss",
        "æ": "ae",
        "œ": "oe",
        "ø": "o",
        "đ": "d",
        "ł": "l",
        "ı": "i",
    }
)
# Visual skeleton for typing tricks: "rn" reads as "m", digits as letters.
_SKELETON_DIGITS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t"})


def _fold(text: str) -> str:
    """Lower case, accents dropped (NFKD minus combining marks), confusable letters mapped."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.translate(_CONFUSABLES)


def _skeleton(label: str) -> str:
    """What a label looks like to a hurried reader."""
    return label.replace("rn", "m").translate(_SKELETON_DIGITS)


def _distance(a: str, b: str, bound: int) -> int:
    """Optimal-string-alignment edit distance (transpositions count 1), capped at bound + 1."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, previous2[j - 2] + 1)
            current[j] = best
        if min(current) > bound:
            return bound + 1
        previous2, previous = previous, current
    return min(previous[-1], bound + 1)


def _label_distance(label: str, target: str, bound: int) -> int:
    """Distance of a label to a target, as typed or as it looks."""
    return min(_distance(label, target, bound), _distance(_skeleton(label), target, bound))


def _looks_like_mssante(label: str) -> bool:
    """A label that is "mssante" misspelt (``msante``, ``massante``, ``ms-sante``...).

    Distance 2 only counts when the label starts with "m" and still has "sant", so that
    ``sante`` and ``esante`` (distance 2, real health domains) stay ordinary.
    """
    if label == "mssante":
        return False
    distance = _label_distance(label, "mssante", 2)
    if distance <= 1:
        return True
    skeleton = _skeleton(label)
    return distance == 2 and skeleton.startswith("m") and "sant" in skeleton


def _mssante_in_label(label: str) -> int | None:
    """Where "mssante" (or a near miss starting with "m") is embedded in a longer label."""
    if label == "mssante":
        return None
    found = label.find("mssante")
    if found >= 0:
        return found
    # A near miss must start a word of its own ("medecin-msante"): inside a word, "masante"
    # is too often a real name ("pharmasante").
    skeleton = _skeleton(label)
    for start, char in enumerate(skeleton):
        if char != "m" or (start > 0 and skeleton[start - 1] not in "-_"):
            continue
        for size in (6, 7, 8):
            window = skeleton[start : start + size]
            if len(window) == size and _distance(window, "mssante", 1) <= 1:
                return _map_index(label, start)
    return None


def _map_index(label: str, skeleton_index: int) -> int:
    """Index in a label of a position in its skeleton (only "rn" -> "m" shifts positions)."""
    index = 0
    seen = 0
    while seen < skeleton_index and index < len(label):
        index += 2 if label.startswith("rn", index) else 1
        seen += 1
    return index


def _mssante_prefix(labels: list[str]) -> tuple[bool, list[str]]:
    """Whether labels imitate ``<prefix>.mssante.fr``, and the prefix labels the user meant."""
    for index, label in enumerate(labels):
        if label == "mssante":
            # Misplaced (mssante.com, mssante.fr.example.com) or the bare zone "mssante.fr",
            # which holds no mailbox.
            return True, labels[:index]
        if _looks_like_mssante(label):
            return True, labels[:index]
        embedded = _mssante_in_label(label)
        if embedded is not None:
            head = label[:embedded].strip("-_")
            return True, labels[:index] + ([head] if head else [])
    return False, []


def _apicrypt_lookalike(labels: list[str]) -> tuple[bool, str | None]:
    """Whether labels imitate Apicrypt v2, and which of its two domains was meant."""
    registered = labels[-2:]
    sub = labels[:-2]
    imitated = False
    if len(labels) >= 2 and registered[0] == "apicrypt":
        # Right name, maybe wrong TLD: only the interop names under it are lookalikes.
        interop_like = bool(sub) and (
            _distance(".".join(sub), "interop-mssante", 3) <= 3 or _mssante_prefix(sub)[0]
        )
        imitated = interop_like or registered[1] not in ("org", "fr")
    else:
        for index, label in enumerate(labels[:-1]):
            if "apicrypt" in label or _label_distance(label, "apicrypt", 2) <= 2:
                imitated = True
                sub = labels[:index]
                break
    if not imitated:
        return False, None
    if sub and "interop" not in "".join(sub) and _distance("".join(sub), "mssante", 2) <= 2:
        return True, "mssante.apicrypt.org"
    return True, APICRYPT_INTEROP


def _lookalike(ascii_domain: str, domains: DomainSets) -> tuple[bool, str | None]:
    """Whether a domain (not in the trust space) imitates it, and the domain probably meant."""
    unicode_domain = _to_unicode(ascii_domain)
    folded = _fold(unicode_domain)
    is_idn = not unicode_domain.isascii()
    folded_ascii = normalize_domain(folded) if folded.isascii() else None
    # 1. An IDN whose accents hide a trust-space domain: medecin.mssanté.fr.
    if (
        is_idn
        and folded_ascii is not None
        and folded_ascii != ascii_domain
        and (is_mssante_domain(folded_ascii, domains) or folded_ascii.endswith(MSSANTE_SUFFIX))
    ):
        return True, folded_ascii
    labels = folded.split(".")
    # 2. Apicrypt first: "interop-mssante.apycrypt.org" also contains "mssante".
    imitated, suggestion = _apicrypt_lookalike(labels)
    if imitated:
        return True, suggestion
    imitated, prefix = _mssante_prefix(labels)
    if imitated:
        candidate = ".".join([*prefix, "mssante", "fr"]) if prefix else None
        if candidate is not None and normalize_domain(candidate) != candidate:
            candidate = None
        return True, candidate
    # 3. An IDN with an accented "santé": planetsanté.fr is not planetsante.fr.
    if is_idn:
        for label in unicode_domain.split("."):
            if not label.isascii() and "sante" in _fold(label):
                return True, folded_ascii
    return False, None


@lru_cache(maxsize=8)
def _known_by_length(national: frozenset[str], extra: frozenset[str]) -> dict[int, tuple[str, ...]]:
    """Known ``*.mssante.fr`` names (without the suffix), grouped by length, sorted."""
    names = {PATIENT_DOMAIN}
    names.update(d for d in national if d.endswith(MSSANTE_SUFFIX))
    names.update(d for d in extra if d.endswith(MSSANTE_SUFFIX))
    grouped: dict[int, list[str]] = {}
    for name in sorted(names):
        head = name.removesuffix(MSSANTE_SUFFIX)
        grouped.setdefault(len(head), []).append(head)
    return {length: tuple(heads) for length, heads in grouped.items()}


def _closest_known(ascii_domain: str, domains: DomainSets) -> str | None:
    """The known MSSanté domain nearest to an unknown one, when it is close (edit distance)."""
    if domains.national is None or not ascii_domain.endswith(MSSANTE_SUFFIX):
        return None
    head = ascii_domain.removesuffix(MSSANTE_SUFFIX)
    if "xn--" in head:
        # médecin.mssante.fr is nearest to medecin.mssante.fr, not to its punycode.
        head = _fold(_to_unicode(head))
    bound = 1 if len(head) <= 4 else 2
    grouped = _known_by_length(domains.national, domains.extra_mssante)
    best: tuple[int, float, str] | None = None
    for length in range(len(head) - bound, len(head) + bound + 1):
        for candidate in grouped.get(length, ()):
            distance = _distance(head, candidate, bound)
            if distance > bound:
                continue
            ratio = difflib.SequenceMatcher(None, head, candidate).ratio()
            key = (distance, -ratio, candidate)
            if best is None or key < best:
                best = key
    return None if best is None else best[2] + MSSANTE_SUFFIX


def _refine(suggestion: str | None, domains: DomainSets) -> str | None:
    """With the national list loaded, only suggest MSSanté domains that exist (or the nearest)."""
    if suggestion is None or not suggestion.endswith(MSSANTE_SUFFIX):
        return suggestion
    if is_mssante_domain(suggestion, domains):
        return suggestion
    return _closest_known(suggestion, domains)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DomainVerdict:
    kind: AddressClass
    reason: InvalidReason | None = None
    suggestion: str | None = None


def _classify_domain(ascii_domain: str, domains: DomainSets) -> _DomainVerdict:
    """The class of a normalised domain (the patient domain is MSSANTE here)."""
    if is_mssante_domain(ascii_domain, domains):
        return _DomainVerdict(AddressClass.MSSANTE)
    if ascii_domain.endswith(MSSANTE_SUFFIX):
        # Only reachable with the national list loaded: a typo or a dead operator.
        return _DomainVerdict(
            AddressClass.INVALID,
            InvalidReason.UNKNOWN_MSSANTE_DOMAIN,
            _closest_known(ascii_domain, domains),
        )
    if ascii_domain not in domains.lookalike_exceptions:
        imitated, suggestion = _lookalike(ascii_domain, domains)
        if imitated:
            return _DomainVerdict(
                AddressClass.INVALID, InvalidReason.LOOKALIKE, _refine(suggestion, domains)
            )
    if ".".join(ascii_domain.split(".")[-2:]) in _APICRYPT_V1_REGISTERED:
        return _DomainVerdict(AddressClass.INVALID, InvalidReason.APICRYPT_V1, APICRYPT_INTEROP)
    return _DomainVerdict(AddressClass.ORDINARY)


def classify_address(address: str, domains: DomainSets = DomainSets()) -> Classification:
    """Classify one address; never raises (malformed text is INVALID/SYNTAX).

    Results are memoised (a pure function of its two immutable arguments): a cabinet writes
    to the same few hundred addresses all day, and the lookalike checks are not free.
    """
    if len(address) > 1024:
        return _classify(address, domains)
    return _classify_cached(address, domains)


@lru_cache(maxsize=16384)
def _classify_cached(address: str, domains: DomainSets) -> Classification:
    return _classify(address, domains)


def _classify(address: str, domains: DomainSets) -> Classification:
    written = _unwrap(address)
    parts = split_address(address)
    ascii_domain = normalize_domain(parts[1]) if parts is not None else None
    if parts is None or ascii_domain is None:
        return Classification(
            address=written,
            normalized=written,
            kind=AddressClass.INVALID,
            reason=InvalidReason.SYNTAX,
        )
    local = parts[0]
    if ascii_domain == PATIENT_DOMAIN:
        matricule = local.upper() if _ins_format_ok(local) else local
        normalized = f"{matricule}@{ascii_domain}"
        if not _ins_format_ok(local):
            reason: InvalidReason | None = InvalidReason.INS_FORMAT
        elif not ins_key_is_valid(local):
            reason = InvalidReason.INS_KEY
        else:
            return Classification(written, normalized, AddressClass.PATIENT)
        return Classification(written, normalized, AddressClass.INVALID, reason)
    verdict = _classify_domain(ascii_domain, domains)
    suggestion = verdict.suggestion
    if suggestion == PATIENT_DOMAIN:
        # "Did you mean patient.mssante.fr" only makes sense for a valid INS.
        if not ins_key_is_valid(local):
            suggestion = None
        else:
            local = local.upper()
    return Classification(
        address=written,
        normalized=f"{parts[0]}@{ascii_domain}",
        kind=verdict.kind,
        reason=verdict.reason,
        suggestion=None if suggestion is None else f"{local}@{suggestion}",
    )


def classify_all(addresses: Iterable[str], domains: DomainSets) -> tuple[Classification, ...]:
    """Classify several addresses (an envelope's recipients), in order."""
    return tuple(classify_address(address, domains) for address in addresses)


def suggest_domain(domain: str, domains: DomainSets) -> str | None:
    """The domain the user probably meant ("did you mean"), or None when there is none."""
    ascii_domain = normalize_domain(domain)
    if ascii_domain is None:
        return None
    return _classify_domain(ascii_domain, domains).suggestion
