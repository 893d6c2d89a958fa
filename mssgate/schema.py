"""The policy file's schema: what IT may write in the YAML, validated by pydantic.

Every model forbids unknown keys: a typo in a security policy must be an error, never a rule
silently switched off. Cross-field checks that need the address classifier (a redirect must
target an MSSanté address, a preferred BAL must be an MSSanté BAL...) live in
:func:`mssgate.policy.compile_policy`, which reports them with the same field paths.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]


class StrictModel(BaseModel):
    """Base of every policy model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def check_template(template: str, allowed: frozenset[str]) -> str:
    """Refuse a reply or signature template that names an unknown ``{variable}``."""
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in allowed:
            known = ", ".join("{" + v + "}" for v in sorted(allowed)) or "aucune"
            raise ValueError(f"variable inconnue {{{name}}} (variables possibles : {known})")
    return template


def allowing(*names: str) -> Callable[[str], str]:
    """A validator that accepts templates using only the given ``{variables}``."""
    allowed = frozenset(names)

    def validate(value: str) -> str:
        return check_template(value, allowed)

    return validate


AddressText = Annotated[str, AfterValidator(allowing("address", "suggestion"))]
MixedText = Annotated[str, AfterValidator(allowing("mssante", "ordinary"))]
TrustText = Annotated[
    str, AfterValidator(allowing("sender", "mssante", "ordinary", "preferred_bal"))
]
ForwardText = Annotated[str, AfterValidator(allowing("origin", "ordinary"))]
AddressOnlyText = Annotated[str, AfterValidator(allowing("address"))]
PatientsText = Annotated[str, AfterValidator(allowing("patients"))]
PlainText = Annotated[str, AfterValidator(allowing())]
RouteText = Annotated[str, AfterValidator(allowing("route"))]
UpstreamText = Annotated[str, AfterValidator(allowing("route", "upstream"))]
MaxText = Annotated[str, AfterValidator(allowing("max"))]
RuleText = Annotated[str, AfterValidator(allowing("rule"))]
SenderText = Annotated[str, AfterValidator(allowing("user", "address"))]


# ---------------------------------------------------------------------------------------------
# Listener and routes


class ListenTLS(StrictModel):
    """The listener's certificate: STARTTLS on the main port, optionally implicit TLS."""

    cert_file: NonEmptyStr
    key_file: NonEmptyStr
    implicit_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """A second port where the connection starts in TLS (port 465 style); 0 picks one."""
    required: bool = True
    """Clients that are not on loopback must STARTTLS before MAIL FROM."""
    min_version: Literal["1.2", "1.3"] = "1.2"


class AuthFailures(StrictModel):
    """Failed AUTH attempts from one client address: slowed down, then refused."""

    free_attempts: Annotated[int, Field(ge=0, le=100)] = 2
    """Failures answered at once; after that each answer waits ``delay`` seconds more."""
    delay: Annotated[float, Field(ge=0, le=60)] = 2.0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 6
    """Failures after which AUTH is refused to that address until ``window`` has passed."""
    window: Annotated[float, Field(gt=0)] = 900.0


class ListenConfig(StrictModel):
    """Where mssgate accepts mail from the practice's clients, and its limits."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 2525
    """0 picks a free port (tests)."""
    hostname: NonEmptyStr = "mssgate.localdomain"
    """The name in the 220 banner and in EHLO towards the upstreams."""
    client_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Networks allowed to relay through mssgate without AUTH."""
    trust_loopback: bool = True
    """Clients on this machine may relay without AUTH (a cabinet's single computer)."""
    tls: ListenTLS | None = None
    auth_without_tls_on_loopback: bool = False
    """Offer AUTH on loopback connections without TLS (tests, a local submission agent)."""
    max_message_size: Annotated[int, Field(ge=1024)] = 35 * 1024 * 1024
    max_recipients: Annotated[int, Field(ge=1, le=10000)] = 100
    max_header_size: Annotated[int, Field(ge=1024)] = 256 * 1024
    max_line_length: Annotated[int, Field(ge=1000, le=1024 * 1024)] = 8192
    """Longest line accepted in DATA, CRLF included (RFC 5321 says 1000; clients exceed it)."""
    max_inflight_bytes: Annotated[int, Field(ge=1024 * 1024)] = 512 * 1024 * 1024
    """Memory for messages in flight, all sessions together (each message counts three times
    its size: read, rewritten, being relayed); past it, new DATA gets ``452`` (try later) and
    a message that would cross it is refused with ``452``."""
    max_connections: Annotated[int, Field(ge=1, le=100000)] = 200
    max_connections_per_client: Annotated[int, Field(ge=1, le=100000)] = 20
    client_timeout: Annotated[float, Field(gt=0)] = 300.0
    """Seconds a client may take for one command (and stay idle between two)."""
    data_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Seconds a client may take to send the whole message after DATA."""
    auth_failures: AuthFailures = AuthFailures()

    @field_validator("host")
    @classmethod
    def _host_is_an_ip(cls, value: str) -> str:
        if value == "localhost":
            return "127.0.0.1"
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError("adresse IP attendue (ex. 127.0.0.1 ou 0.0.0.0)") from exc
        return value

    @property
    def is_loopback_only(self) -> bool:
        """True when the listener accepts connections from this machine only."""
        return ipaddress.ip_address(self.host).is_loopback


class TLSMode(StrEnum):
    """How the connection to an upstream is secured."""

    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class UpstreamConfig(StrictModel):
    """An SMTP server that mssgate relays to."""

    host: NonEmptyStr
    port: Port = 587
    tls: TLSMode = TLSMode.STARTTLS
    username_env: str | None = None
    """Name of the environment variable holding the login (never the login in clear)."""
    password_env: str | None = None
    """Name of the environment variable holding the password."""
    password_file: str | None = None
    """A file holding the password (e.g. a container secret), read at start."""
    username: str | None = None
    """The login, when it is not a secret (the password never goes here)."""
    timeout: Annotated[float, Field(gt=0, le=600)] = 60.0
    """Budget in seconds of one whole upstream transaction (connect to end of DATA)."""
    ca_file: str | None = None
    """CA certificates to verify the upstream with (e.g. IGC-Santé), instead of the system's."""
    client_cert: str | None = None
    """Certificate presented to the upstream (MSSanté operators authenticate software so)."""
    client_key: str | None = None
    verify: bool = True
    """Verify the upstream's certificate and host name. ``false`` is logged at every start."""
    min_tls_version: Literal["1.2", "1.3"] = "1.2"
    reuse_connections: bool = True
    """Keep connections warm between messages (a new MAIL FROM on the same connection)."""
    max_idle_connections: Annotated[int, Field(ge=0, le=1000)] = 16
    idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds a warm connection may wait unused before it is closed."""

    @model_validator(mode="after")
    def _credentials_consistent(self) -> UpstreamConfig:
        if self.password_env and self.password_file:
            raise ValueError("password_env et password_file sont exclusifs")
        has_user = bool(self.username_env or self.username)
        has_password = bool(self.password_env or self.password_file)
        if has_user != has_password:
            raise ValueError("un identifiant exige un mot de passe, et inversement")
        if self.username_env and self.username:
            raise ValueError("username et username_env sont exclusifs")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert et client_key vont ensemble")
        if self.tls is TLSMode.NONE and (self.client_cert or self.ca_file):
            raise ValueError("un certificat n'a de sens qu'avec tls: starttls ou implicit")
        return self


class RouteConfig(StrictModel):
    """One route: a real upstream, or a local outbox directory (demo, tests)."""

    upstream: UpstreamConfig | None = None
    outbox: str | None = None
    """Directory where each relayed message is written as one .eml file."""

    @model_validator(mode="after")
    def _exactly_one_target(self) -> RouteConfig:
        if (self.upstream is None) == (self.outbox is None):
            raise ValueError("une route a soit 'upstream', soit 'outbox' (un seul des deux)")
        return self


class RoutesConfig(StrictModel):
    """The two routes: MSSanté mail goes to the operator, ordinary mail elsewhere."""

    mssante: RouteConfig
    ordinary: RouteConfig


# ---------------------------------------------------------------------------------------------
# Domains


class NationalListConfig(StrictModel):
    """The ANS national list of MSSanté domains (XML), as a file IT refreshes."""

    file: NonEmptyStr
    last_good: str | None = None
    """Where the last list that loaded is kept; used when a new copy is broken or shrank."""
    max_loss: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """A new copy that lost more than this share of domains is refused."""


class DomainsConfig(StrictModel):
    """Extensions of the trust space, and exceptions to the lookalike check."""

    mssante: tuple[NonEmptyStr, ...] = ()
    """Extra domains IT declares MSSanté (beyond ``*.mssante.fr`` and Apicrypt v2)."""
    allow_list_file: str | None = None
    """A file of extra MSSanté domains, one a line, ``#`` comments."""
    national_list: NationalListConfig | None = None
    not_lookalikes: tuple[NonEmptyStr, ...] = ()
    """Ordinary domains that resemble MSSanté ones but are real (never refused as lookalikes)."""


# ---------------------------------------------------------------------------------------------
# People and BALs


class Practice(StrictModel):
    """A place of practice (situation d'exercice) and the BAL advertised there."""

    place: NonEmptyStr
    preferred_bal: NonEmptyStr
    """The preferred MSSanté address shown in this place's ordinary mail."""
    addresses: tuple[NonEmptyStr, ...] = ()
    """Ordinary sender addresses used at this place."""


class Person(StrictModel):
    """A professional (with an RPPS/ADELI number) or a staff member (secretary...)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    name: NonEmptyStr
    rpps: Annotated[str, Field(pattern=r"^[0-9]{9,11}$")] | None = None
    """RPPS (11 digits) or ADELI (9 digits) number; required for co-holders."""
    bals: tuple[NonEmptyStr, ...] = ()
    """Nominative MSSanté BALs of this person."""
    practices: tuple[Practice, ...] = ()


class BalKind(StrEnum):
    """The kinds of shared MSSanté mailboxes."""

    CABINET = "cabinet"
    ORGANISATIONAL = "organisational"
    APPLICATIVE = "applicative"


class SharedBal(StrictModel):
    """An organisational, cabinet or applicative BAL and who holds it."""

    address: NonEmptyStr
    kind: BalKind
    place: str | None = None
    principal: str | None = None
    """Id of the principal co-holder (who alone creates and deletes the BAL)."""
    co_holders: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    addresses: tuple[NonEmptyStr, ...] = ()
    """Ordinary addresses of this service whose mail advertises this BAL."""

    @model_validator(mode="after")
    def _holders(self) -> SharedBal:
        if len(self.co_holders) > 20:
            raise ValueError(f"{len(self.co_holders)} cotitulaires : 20 au plus par BAL")
        if len(set(self.co_holders)) != len(self.co_holders):
            raise ValueError("un cotitulaire est cité deux fois")
        if self.kind is BalKind.CABINET and not self.co_holders:
            raise ValueError("une BAL de cabinet a au moins un cotitulaire")
        if self.co_holders and self.principal is None:
            raise ValueError("'principal' manquant : l'un des cotitulaires est principal")
        if self.principal is not None and self.principal not in self.co_holders:
            raise ValueError(f"le principal {self.principal!r} n'est pas un cotitulaire")
        both = set(self.co_holders) & set(self.delegates)
        if both:
            raise ValueError(f"à la fois cotitulaire et délégataire : {sorted(both)}")
        return self


class User(StrictModel):
    """A login for SMTP AUTH, tied to a person whose BALs and addresses it may send as."""

    login: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]
    person: str | None = None
    """Id of the person (``people``): their BALs, their practices' addresses, and the shared
    BALs where they are a co-holder or a delegate become this user's allowed senders."""
    password_hash: Annotated[str, Field(pattern=r"^\$argon2(id|i|d)\$")]
    """An argon2 hash (``mssgate hash-password``); never the password itself."""
    senders: tuple[NonEmptyStr, ...] = ()
    """Further sender addresses this user may use (an applicative BAL...)."""


class DnsCheckConfig(StrictModel):
    """Refuse recipient domains that do not exist (MX, else A/AAAA), before relaying."""

    enabled: bool = True
    nameservers: tuple[str, ...] = ()
    """``ip`` or ``ip:port``; empty: the system's resolvers."""
    timeout: Annotated[float, Field(gt=0, le=30)] = 3.0
    cache_ttl: Annotated[float, Field(ge=0)] = 3600.0
    negative_ttl: Annotated[float, Field(ge=0)] = 300.0


class PrivacyConfig(StrictModel):
    """What reaches the logs."""

    pseudonym_key_env: str = "MSSGATE_PSEUDONYM_KEY"
    """Environment variable holding the key of the INS pseudonyms in logs; unset: a random key
    per process (pseudonyms then change at each start)."""


class AuditConfig(StrictModel):
    """The audit trail: one JSON line per decision (traceability of health documents)."""

    file: NonEmptyStr = "-"
    """A file path, or ``-`` for standard output."""
    max_bytes: Annotated[int, Field(ge=0)] = 50 * 1024 * 1024
    """Rotate the file past this size (0: never; leave rotation to logrotate)."""
    backups: Annotated[int, Field(ge=0, le=1000)] = 10


class MetricsConfig(StrictModel):
    """The HTTP endpoint for Prometheus (/metrics) and orchestration (/healthz, /readyz)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9925


class ReloadConfig(StrictModel):
    """Reloading the policy when its file changes (SIGHUP always reloads)."""

    watch: bool = True
    interval: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """Seconds between two looks at the policy file's modification time."""


class Redirect(StrictModel):
    """A redirect or copy rule set up for a BAL (absence, copy to the secretariat, filter).

    ``copy`` rules are applied by mssgate: mail sent from ``from`` on the MSSanté route gets
    ``to`` as an extra recipient. ``absence`` and ``filter`` rules are set at the operator; they
    are declared here so that mssgate refuses to load a policy whose rules leave the trust space.
    """

    from_: Annotated[NonEmptyStr, Field(alias="from")]
    to: NonEmptyStr
    kind: Literal["absence", "copy", "filter"] = "copy"

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


# ---------------------------------------------------------------------------------------------
# Rules and texts


class AddressesRule(StrictModel):
    """Lookalike and unknown MSSanté domains, Apicrypt v1 (switchable)."""

    enabled: bool = True
    reply_lookalike: AddressText = (
        "Adresse refusée : {address} imite une adresse MSSanté. Vouliez-vous dire {suggestion} ?"
    )
    reply_lookalike_no_suggestion: AddressText = (
        "Adresse refusée : {address} imite une adresse MSSanté sans en être une."
    )
    reply_apicrypt_v1: AddressText = (
        "Adresse refusée : {address} est une adresse Apicrypt v1, hors MSSanté. "
        "Vouliez-vous dire {suggestion} ?"
    )
    reply_unknown_domain: AddressText = (
        "Adresse refusée : le domaine de {address} n'est pas dans la liste nationale MSSanté."
    )
    reply_unknown_domain_suggestion: AddressText = (
        "Adresse refusée : le domaine de {address} n'est pas dans la liste nationale MSSanté. "
        "Vouliez-vous dire {suggestion} ?"
    )


class MixedRecipientsRule(StrictModel):
    """MSSanté and ordinary recipients in one message (switchable)."""

    enabled: bool = True
    reply: MixedText = (
        "Envoi refusé : destinataires MSSanté ({mssante}) et non MSSanté ({ordinary}) "
        "dans le même message. Rien n'a été envoyé ; faites deux envois séparés."
    )


class TrustSpaceRule(StrictModel):
    """An MSSanté sender writes only inside the trust space, and only MSSanté BALs write to it."""

    enabled: bool = True
    reply_mssante_sender: TrustText = (
        "Envoi refusé : la BAL MSSanté {sender} ne peut écrire qu'à des adresses MSSanté "
        "(hors espace de confiance : {ordinary})."
    )
    reply_ordinary_sender: TrustText = (
        "Envoi refusé : {mssante} est une adresse MSSanté ; écrivez-lui depuis une BAL MSSanté, "
        "pas depuis {sender}."
    )
    reply_ordinary_sender_hint: TrustText = (
        "Envoi refusé : {mssante} est une adresse MSSanté ; envoyez ce message depuis votre BAL "
        "MSSanté {preferred_bal}."
    )


class ForwardsRule(StrictModel):
    """Redirects and forwards of MSSanté content go to MSSanté addresses only."""

    enabled: bool = True
    reply: ForwardText = (
        "Envoi refusé : ce message transfère ou redirige un contenu MSSanté ({origin}) vers des "
        "adresses non MSSanté ({ordinary}). Transférez uniquement vers une adresse MSSanté."
    )
    reply_unverifiable: ForwardText = (
        "Envoi refusé : la structure de ce message (imbrication trop profonde ou message joint "
        "encodé) ne permet pas de vérifier qu'il ne contient pas de message MSSanté ; "
        "destinataires non MSSanté : {ordinary}."
    )


class PatientsRule(StrictModel):
    """Messages to patients (Mon Espace Santé citizen addresses)."""

    enabled: bool = True
    reply_invalid_ins: AddressOnlyText = (
        "Adresse patient refusée : {address} (la clé du matricule INS est invalide ; "
        "vérifiez le numéro)."
    )
    reply_ins_format: AddressOnlyText = (
        "Adresse patient refusée : {address} (un matricule INS a 15 caractères : NIR et clé)."
    )
    reply_several_patients: PatientsText = (
        "Envoi refusé : plusieurs patients en destinataires visibles ({patients}) ; chacun "
        "verrait le matricule INS des autres. Écrivez à chaque patient séparément."
    )
    reply_fin_not_empty: PlainText = (
        "Envoi refusé : un message de clôture [FIN] doit avoir un corps vide."
    )


class RulesConfig(StrictModel):
    """Every rule, each switchable, each with its reply texts."""

    addresses: AddressesRule = AddressesRule()
    mixed_recipients: MixedRecipientsRule = MixedRecipientsRule()
    trust_space: TrustSpaceRule = TrustSpaceRule()
    forwards: ForwardsRule = ForwardsRule()
    patients: PatientsRule = PatientsRule()


class MessagesConfig(StrictModel):
    """Texts of the replies that are not a rule's own."""

    syntax: AddressOnlyText = "Adresse invalide : {address}"
    accepted: RouteText = "Message transmis ({route})"
    tempfail: PlainText = (
        "Erreur temporaire du filtre MSSanté : rien n'a été envoyé, réessayez plus tard."
    )
    upstream_unreachable: RouteText = (
        "Serveur de messagerie {route} injoignable : rien n'a été envoyé, réessayez plus tard."
    )
    upstream_refused: UpstreamText = "Refusé par le serveur {route} : {upstream}"
    refused_earlier: AddressOnlyText = (
        "Envoi refusé : un destinataire a été refusé ({address}) ; rien n'a été envoyé."
    )
    not_allowed_client: PlainText = (
        "Relais refusé : ce poste n'est pas autorisé à utiliser mssgate."
    )
    too_many_recipients: MaxText = "Trop de destinataires ({max} au plus par message)."
    sender_not_allowed: SenderText = (
        "Expéditeur refusé : {user} n'est pas autorisé à envoyer en tant que {address}."
    )
    auth_required: PlainText = "Authentification requise (ou réseau autorisé)."
    tls_required: PlainText = "Chiffrement requis : lancez STARTTLS d'abord."
    header_too_large: PlainText = "En-têtes du message trop volumineux."
    other_route: AddressOnlyText = (
        "{address} relève de l'autre messagerie (MSSanté ou ordinaire) : envoyez-le dans un "
        "message séparé."
    )
    needs_smtputf8: AddressOnlyText = (
        "Adresse internationalisée {address} : le logiciel de messagerie doit utiliser SMTPUTF8."
    )
    busy: PlainText = "Passerelle occupée (mémoire) : rien n'a été envoyé, réessayez plus tard."
    domain_missing: AddressOnlyText = (
        "Adresse refusée : le domaine de {address} n'existe pas (faute de frappe ?)."
    )
    dns_tempfail: AddressOnlyText = (
        "Vérification du domaine de {address} impossible pour l'instant ; réessayez plus tard."
    )
    rule_tag: RuleText = " [règle {rule}]"
    """Appended to every refusal: the mail client shows which rule refused."""


SIGNATURE_VARS = ("name", "place", "preferred_bal")
SignatureText = Annotated[str, AfterValidator(allowing(*SIGNATURE_VARS))]


class SignatureConfig(StrictModel):
    """The preferred-MSSanté-address signature added to ordinary mail."""

    enabled: bool = True
    text: SignatureText = (
        "-- \nPour les professionnels équipés d'une Messagerie Sécurisée MSSanté : {preferred_bal}"
    )
    html: SignatureText = (
        '<div class="mssgate-signature"><p>-- <br>Pour les professionnels équipés d\'une '
        'Messagerie Sécurisée MSSanté : <a href="mailto:{preferred_bal}">{preferred_bal}</a>'
        "</p></div>"
    )
    """HTML fragment; variables are HTML-escaped when inserted."""
    marker_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")] = "X-MSSGate-Signature"
    skip_dkim_signed: bool = True
    """Leave a message that already carries a DKIM signature untouched (a rewrite breaks it)."""


class PolicyDocument(StrictModel):
    """The whole policy file."""

    version: Literal[1] = 1
    listen: ListenConfig = ListenConfig()
    routes: RoutesConfig
    domains: DomainsConfig = DomainsConfig()
    people: tuple[Person, ...] = ()
    shared_bals: tuple[SharedBal, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    rules: RulesConfig = RulesConfig()
    signature: SignatureConfig = SignatureConfig()
    messages: MessagesConfig = MessagesConfig()
    users: tuple[User, ...] = ()
    dns_check: DnsCheckConfig | None = None
    privacy: PrivacyConfig = PrivacyConfig()
    audit: AuditConfig | None = None
    metrics: MetricsConfig | None = None
    reload: ReloadConfig = ReloadConfig()

    @model_validator(mode="after")
    def _never_an_open_relay(self) -> PolicyDocument:
        listen = self.listen
        if not listen.is_loopback_only and not listen.client_networks and not self.users:
            raise ValueError(
                "listen : écoute sur une adresse non locale sans client_networks ni users : "
                "mssgate serait un relais ouvert"
            )
        if self.users and not listen.is_loopback_only and listen.tls is None:
            raise ValueError(
                "listen.tls : des utilisateurs (AUTH) sans TLS enverraient leurs mots de passe "
                "en clair"
            )
        return self

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> PolicyDocument:
        # aiosmtpd's idle timer covers DATA and our relay: the upstream must give up first.
        for name in ("mssante", "ordinary"):
            upstream = getattr(self.routes, name).upstream
            if upstream is not None and upstream.timeout >= self.listen.client_timeout:
                raise ValueError(
                    f"routes.{name}.upstream.timeout ({upstream.timeout} s) doit être inférieur "
                    f"à listen.client_timeout ({self.listen.client_timeout} s)"
                )
        return self

    @model_validator(mode="after")
    def _references(self) -> PolicyDocument:
        logins = [u.login for u in self.users]
        if len(set(logins)) != len(logins):
            raise ValueError("users : identifiant de connexion en double")
        ids = [p.id for p in self.people]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"identifiants de personnes en double : {dup}")
        known = set(ids)
        for user in self.users:
            if user.person is not None and user.person not in known:
                raise ValueError(f"users : {user.login} renvoie à une personne inconnue")
        with_rpps = {p.id for p in self.people if p.rpps}
        for bal in self.shared_bals:
            for who in (*bal.co_holders, *bal.delegates):
                if who not in known:
                    raise ValueError(f"BAL {bal.address} : personne inconnue {who!r}")
            for who in bal.co_holders:
                if who not in with_rpps:
                    raise ValueError(
                        f"BAL {bal.address} : le cotitulaire {who!r} n'a pas de numéro RPPS"
                    )
        return self
