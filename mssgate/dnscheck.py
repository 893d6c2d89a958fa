"""Does a recipient domain exist? An MX (else A/AAAA) lookup with dnspython, cached.

A doctor who types ``@gmial.com`` or ``@medecn.mssante.fr`` should get a refusal before the
message is relayed, not a bounce hours later. :class:`DomainChecker` answers, for one domain:

* :attr:`DomainStatus.EXISTS` -- MX records; or, when the domain has no MX, an A or AAAA record
  (the implicit MX of RFC 5321, section 5.1);
* :attr:`DomainStatus.MISSING` -- NXDOMAIN; a "null MX" (RFC 7505: the domain accepts no mail);
  no MX, no A and no AAAA; or a name that cannot exist (empty, a label over 63 octets...);
* :attr:`DomainStatus.TEMPFAIL` -- anything else: timeout, SERVFAIL, REFUSED, no reachable
  nameserver, an unexpected error. DNS trouble never becomes a pass nor a permanent refusal,
  and :meth:`DomainChecker.check` never raises.

Each check is bounded by ``DnsCheckConfig.timeout`` (dnspython's ``lifetime``, shared by the
MX, A and AAAA queries, and an ``asyncio.timeout`` guard). Answers are cached (EXISTS for
``cache_ttl`` seconds, MISSING for ``negative_ttl``, TEMPFAIL never), and concurrent checks of
one uncached domain share one lookup. This module does I/O; it is not part of the pure core.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from mssgate.schema import DnsCheckConfig

log = logging.getLogger("mssgate.dnscheck")

MAX_CACHE_ENTRIES = 10_000
"""Bound of the answer cache; the oldest entry is evicted first."""


class DomainStatus(StrEnum):
    """The answer of a domain check."""

    EXISTS = "exists"
    MISSING = "missing"
    TEMPFAIL = "tempfail"


def parse_nameserver(entry: str) -> tuple[str, int]:
    """Split a ``DnsCheckConfig.nameservers`` entry into (IP address, port).

    Accepted: ``"192.0.2.53"``, ``"192.0.2.53:5353"``, ``"2001:db8::53"``, ``"[2001:db8::53]"``,
    ``"[2001:db8::53]:5353"``. The port defaults to 53. Raises :class:`ValueError` otherwise.
    """
    text = entry.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid nameserver {entry!r}")
        if rest:
            port_text = rest[1:]
        if ipaddress.ip_address(_checked_address(host, entry)).version != 6:
            raise ValueError(f"invalid nameserver {entry!r}: brackets are for IPv6 addresses")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # an IPv4 address, or an IPv6 address without a port
    address = _checked_address(host, entry)
    port = 53
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit():
            raise ValueError(f"invalid nameserver {entry!r}: bad port")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid nameserver {entry!r}: port out of range")
    return address, port


def _checked_address(host: str, entry: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"invalid nameserver {entry!r}: not an IP address") from None


def _is_null_mx(answer: dns.resolver.Answer) -> bool:
    """RFC 7505: a single MX record of preference 0 whose exchange is the root."""
    records = list(answer)
    if len(records) != 1:
        return False
    record = records[0]
    return isinstance(record, MX) and record.preference == 0 and record.exchange == dns.name.root


class DomainChecker:
    """Checks that recipient domains exist, with a cache and shared in-flight lookups."""

    def __init__(
        self, config: DnsCheckConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Prepare a checker; raises :class:`ValueError` on a malformed nameserver entry.

        ``clock`` only dates the cache entries (tests inject a fake one).
        """
        self._config = config
        self._clock = clock
        self._nameservers = [parse_nameserver(entry) for entry in config.nameservers]
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: OrderedDict[str, tuple[DomainStatus, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[DomainStatus]] = {}

    def cache_size(self) -> int:
        """Number of cached answers (expired ones included until they are next looked at)."""
        return len(self._cache)

    async def check(self, domain: str) -> DomainStatus:
        """Whether ``domain`` (lower-case ASCII, punycode applied) can receive mail.

        Never raises (except :class:`asyncio.CancelledError` when the caller is cancelled);
        takes at most about ``config.timeout`` seconds.
        """
        try:
            key = domain.strip().lower().rstrip(".")
            cached = self._cached(key)
            if cached is not None:
                return cached
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._lookup_and_store(key))
                self._inflight[key] = task
            # A caller that gives up (cancelled) must not cancel the lookup others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("DNS check failed unexpectedly; answering tempfail")
            return DomainStatus.TEMPFAIL

    def _cached(self, key: str) -> DomainStatus | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        status, expires = entry
        if self._clock() < expires:
            return status
        del self._cache[key]
        return None

    def _store(self, key: str, status: DomainStatus) -> None:
        if status is DomainStatus.EXISTS:
            ttl = self._config.cache_ttl
        elif status is DomainStatus.MISSING:
            ttl = self._config.negative_ttl
        else:
            return
        if ttl <= 0:
            return
        self._cache.pop(key, None)
        self._cache[key] = (status, self._clock() + ttl)
        while len(self._cache) > MAX_CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _lookup_and_store(self, key: str) -> DomainStatus:
        try:
            try:
                async with asyncio.timeout(self._config.timeout):
                    status = await self._lookup(key)
            except TimeoutError:
                log.info("DNS check of %s: timed out after %ss", key, self._config.timeout)
                status = DomainStatus.TEMPFAIL
            except Exception:
                log.exception("DNS check of %s failed unexpectedly; answering tempfail", key)
                status = DomainStatus.TEMPFAIL
            self._store(key, status)
            return status
        finally:
            self._inflight.pop(key, None)

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(address, port)
                    for address, port in self._nameservers
                ]
            else:
                # Reads /etc/resolv.conf; raises when there is no usable configuration, in
                # which case the next check tries again.
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = self._config.timeout
            self._resolver = resolver
        return self._resolver

    async def _lookup(self, key: str) -> DomainStatus:
        try:
            qname = dns.name.from_text(key)
        except dns.exception.DNSException:
            return DomainStatus.MISSING  # a name that cannot exist (empty label, too long...)
        if qname == dns.name.root:
            return DomainStatus.MISSING
        resolver = self._get_resolver()
        deadline = time.monotonic() + self._config.timeout

        async def query(rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
            # The MX, A and AAAA queries share one lifetime (dnspython raises LifetimeTimeout).
            remaining = max(deadline - time.monotonic(), 0.001)
            return await resolver.resolve(qname, rdtype, search=False, lifetime=remaining)

        try:
            answer = await query(dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN:
            return DomainStatus.MISSING
        except dns.resolver.NoAnswer:
            pass
        except dns.exception.DNSException as error:
            return self._tempfail(key, "MX", error)
        else:
            return DomainStatus.MISSING if _is_null_mx(answer) else DomainStatus.EXISTS

        # No MX: the domain's address, if any, is its implicit MX (RFC 5321, 5.1).
        failed: list[tuple[str, dns.exception.DNSException]] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                await query(rdtype)
            except dns.resolver.NXDOMAIN:
                return DomainStatus.MISSING  # deleted between the two queries
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as error:
                failed.append((rdtype.name, error))
                continue
            return DomainStatus.EXISTS
        if failed:
            return self._tempfail(key, failed[0][0], failed[0][1])
        return DomainStatus.MISSING

    @staticmethod
    def _tempfail(key: str, rdtype: str, error: dns.exception.DNSException) -> DomainStatus:
        log.info("DNS check of %s: %s query failed (%s)", key, rdtype, type(error).__name__)
        return DomainStatus.TEMPFAIL
