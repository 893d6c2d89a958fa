"""The compiled policy: the validated document plus the lookups a decision needs.

:func:`compile_policy` is pure: config.py reads the files (YAML, domain lists) and hands their
contents here. Checks that need the address classifier (a preferred BAL must be an MSSanté
address, a redirect must stay in the trust space...) are done here and reported with the field
path, so that config.py can name the file and the line.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from mssgate.classify import DomainSets, classify_address, normalize_domain
from mssgate.model import AddressClass, Classification, Route
from mssgate.schema import PolicyDocument, RouteConfig

Location = tuple[str | int, ...]
_T = TypeVar("_T")
MEMO_SIZE = 4096
"""Answers a policy keeps (:meth:`Policy.recall`): a structure's senders and usual
recipients, many times over."""


class PolicyError(ValueError):
    """A policy that must not load, with every problem and where it is."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{dotted(loc)}: {msg}" for loc, msg in problems))


def dotted(loc: Location) -> str:
    """A field path as IT reads it: ``people.0.practices.1.preferred_bal``."""
    return ".".join(str(p) for p in loc) or "(racine)"


@dataclass(frozen=True, slots=True)
class SenderProfile:
    """What the signature of an ordinary sender advertises."""

    name: str
    place: str
    preferred_bal: str


@dataclass(frozen=True, slots=True)
class UserAccount:
    """An SMTP AUTH login and the sender addresses it may use."""

    login: str
    password_hash: str
    allowed_senders: frozenset[str]
    """Lower-cased addresses: own BALs, practices' addresses, held or delegated shared BALs."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy ready for decisions: the document and its precomputed lookups."""

    document: PolicyDocument
    domains: DomainSets
    profiles: Mapping[str, SenderProfile] = field(default_factory=lambda: MappingProxyType({}))
    """Lower-cased ordinary sender address -> what its signature advertises."""
    copies: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """Lower-cased MSSanté sender -> MSSanté addresses that get a copy of what it sends."""
    users: Mapping[str, UserAccount] = field(default_factory=lambda: MappingProxyType({}))
    """Login -> account."""
    memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)
    """Answers of pure functions of this policy already computed (:meth:`recall`)."""

    def route_configs(self) -> dict[Route, RouteConfig]:
        """Each route's configuration, keyed by route."""
        routes = self.document.routes
        return {Route.MSSANTE: routes.mssante, Route.ORDINARY: routes.ordinary}

    def classify(self, address: str) -> Classification:
        """Classify one address with this policy's domain lists (memoised by the classifier)."""
        return classify_address(address, self.domains)

    def recall(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """What ``compute`` (a pure function of this policy and of what ``key`` names) gave
        the last time for ``key``, or its answer now, kept: the same senders and recipients
        come back message after message. The memory is bounded: it is emptied when full."""
        if key in self.memo:
            return self.memo[key]  # type: ignore[no-any-return]
        answer = compute()
        if len(self.memo) >= MEMO_SIZE:
            self.memo.clear()
        self.memo[key] = answer
        return answer

    def profile_for(self, *senders: str) -> SenderProfile | None:
        """The signature profile of the first sender address the policy knows."""
        for sender in senders:
            profile = self.profiles.get(sender.strip().lower())
            if profile is not None:
                return profile
        return None


def _domain_set(
    values: tuple[str, ...], loc: Location, problems: list[tuple[Location, str]]
) -> frozenset[str]:
    result = set()
    for i, value in enumerate(values):
        domain = normalize_domain(value)
        if domain is None:
            problems.append(((*loc, i), f"domaine invalide : {value!r}"))
        else:
            result.add(domain)
    return frozenset(result)


def compile_policy(
    document: PolicyDocument,
    *,
    national: frozenset[str] | None = None,
    allow_list: frozenset[str] = frozenset(),
) -> Policy:
    """Check the cross-field rules of a document and build its lookups.

    Raises :class:`PolicyError` listing every problem found, each with its field path.
    """
    problems: list[tuple[Location, str]] = []
    domains = DomainSets(
        extra_mssante=_domain_set(document.domains.mssante, ("domains", "mssante"), problems)
        | allow_list,
        national=national,
        lookalike_exceptions=_domain_set(
            document.domains.not_lookalikes, ("domains", "not_lookalikes"), problems
        ),
    )

    def expect(address: str, kinds: tuple[AddressClass, ...], loc: Location, what: str) -> str:
        found = classify_address(address, domains)
        if found.kind not in kinds:
            hint = f" (vouliez-vous dire {found.suggestion} ?)" if found.suggestion else ""
            problems.append((loc, f"{address} : {what}{hint}"))
        return found.normalized.lower()

    mssante = (AddressClass.MSSANTE,)
    ordinary = (AddressClass.ORDINARY,)
    profiles: dict[str, SenderProfile] = {}
    seen_at: dict[str, Location] = {}

    def add_profile(address: str, loc: Location, profile: SenderProfile) -> None:
        key = expect(address, ordinary, loc, "une adresse ordinaire (non MSSanté) est attendue")
        if key in seen_at:
            problems.append((loc, f"{address} est déjà rattachée à {dotted(seen_at[key])}"))
            return
        seen_at[key] = loc
        profiles[key] = profile

    for i, person in enumerate(document.people):
        for j, own_bal in enumerate(person.bals):
            expect(own_bal, mssante, ("people", i, "bals", j), "une BAL MSSanté est attendue")
        for j, practice in enumerate(person.practices):
            loc: Location = ("people", i, "practices", j)
            preferred = practice.preferred_bal
            expect(preferred, mssante, (*loc, "preferred_bal"), "une BAL MSSanté est attendue")
            profile = SenderProfile(person.name, practice.place, preferred)
            for k, address in enumerate(practice.addresses):
                add_profile(address, (*loc, "addresses", k), profile)

    for i, bal in enumerate(document.shared_bals):
        loc = ("shared_bals", i)
        expect(bal.address, mssante, (*loc, "address"), "une BAL MSSanté est attendue")
        profile = SenderProfile(bal.place or bal.address, bal.place or "", bal.address)
        for k, address in enumerate(bal.addresses):
            add_profile(address, (*loc, "addresses", k), profile)

    copies: dict[str, list[str]] = {}
    for i, redirect in enumerate(document.redirects):
        loc = ("redirects", i)
        source = expect(
            redirect.from_, mssante, (*loc, "from"), "la source doit être une BAL MSSanté"
        )
        target = expect(
            redirect.to,
            mssante,
            (*loc, "to"),
            "une redirection ou une copie doit viser une adresse MSSanté "
            "(une redirection vers un mail « classique » ne fonctionnera pas)",
        )
        if redirect.kind == "copy":
            copies.setdefault(source, []).append(target)

    users = _user_accounts(document, domains, problems)
    if problems:
        raise PolicyError(problems)
    return Policy(
        document=document,
        domains=domains,
        profiles=MappingProxyType(profiles),
        copies=MappingProxyType({k: tuple(v) for k, v in copies.items()}),
        users=MappingProxyType(users),
    )


def _person_senders(document: PolicyDocument) -> dict[str, set[str]]:
    """Person id -> the addresses that person may send as."""
    senders: dict[str, set[str]] = {p.id: set() for p in document.people}
    for person in document.people:
        own = senders[person.id]
        own.update(b.lower() for b in person.bals)
        for practice in person.practices:
            own.update(a.lower() for a in practice.addresses)
    for bal in document.shared_bals:
        for who in (*bal.co_holders, *bal.delegates):
            senders[who].add(bal.address.lower())
            senders[who].update(a.lower() for a in bal.addresses)
    return senders


def _user_accounts(
    document: PolicyDocument, domains: DomainSets, problems: list[tuple[Location, str]]
) -> dict[str, UserAccount]:
    by_person = _person_senders(document)
    accounts: dict[str, UserAccount] = {}
    for i, user in enumerate(document.users):
        allowed = set(by_person.get(user.person, set()) if user.person else set())
        for j, address in enumerate(user.senders):
            found = classify_address(address, domains)
            if found.kind is AddressClass.INVALID:
                problems.append((("users", i, "senders", j), f"{address} : adresse invalide"))
            allowed.add(address.lower())
        if not allowed:
            problems.append((("users", i), f"{user.login} ne peut envoyer en tant que personne"))
        accounts[user.login] = UserAccount(user.login, user.password_hash, frozenset(allowed))
    return accounts
