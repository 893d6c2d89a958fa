"""The recipient-domain check, against a real DNS server of the tests' own on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import dns.resolver
import pytest

from mssgate import dnscheck
from mssgate.dnscheck import DomainChecker, DomainStatus, parse_nameserver
from mssgate.schema import DnsCheckConfig
from tests.dns_server import DnsServer

ZONE: dict[str, dict[str, list[str]]] = {
    "gmail.com": {"MX": ["5 gmail-smtp-in.l.google.com.", "10 alt1.gmail-smtp-in.l.google.com."]},
    "medecin.mssante.fr": {"MX": ["10 mx.mssante.fr."], "A": ["192.0.2.10"]},
    "null-mx.fr": {"MX": ["0 ."], "A": ["192.0.2.2"]},
    "a-only.fr": {"A": ["192.0.2.1"]},
    "aaaa-only.fr": {"AAAA": ["2001:db8::1"]},
    "nothing.fr": {"TXT": ['"v=spf1 -all"']},
    "big.fr": {"MX": [f"{i} mx{i}.a-very-long-mail-exchanger-name.big.fr." for i in range(40)]},
}
FAST = 0.5  # seconds: the timeout of the checks that are expected to time out


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    async with DnsServer(
        ZONE, servfail={"servfail.fr"}, silent={"silent.fr"}, refused={"refused.fr"}
    ) as running:
        yield running


def make_checker(*nameservers: str, clock: Any = time.monotonic, **settings: Any) -> DomainChecker:
    config = DnsCheckConfig(nameservers=nameservers, **{"timeout": 2.0, **settings})
    return DomainChecker(config, clock=clock)


def closed_udp_port() -> int:
    """A port of 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    ("domain", "expected", "asked"),
    [
        ("gmail.com", DomainStatus.EXISTS, ["MX"]),
        ("medecin.mssante.fr", DomainStatus.EXISTS, ["MX"]),
        ("null-mx.fr", DomainStatus.MISSING, ["MX"]),  # RFC 7505: accepts no mail, A or not
        ("gmial.com", DomainStatus.MISSING, ["MX"]),  # NXDOMAIN
        ("medecn.mssante.fr", DomainStatus.MISSING, ["MX"]),  # NXDOMAIN
        ("a-only.fr", DomainStatus.EXISTS, ["MX", "A"]),  # implicit MX
        ("aaaa-only.fr", DomainStatus.EXISTS, ["MX", "A", "AAAA"]),
        ("nothing.fr", DomainStatus.MISSING, ["MX", "A", "AAAA"]),
        ("servfail.fr", DomainStatus.TEMPFAIL, ["MX"]),
        ("refused.fr", DomainStatus.TEMPFAIL, ["MX"]),
    ],
)
async def test_answers(
    server: DnsServer, domain: str, expected: DomainStatus, asked: list[str]
) -> None:
    checker = make_checker(server.nameserver)
    assert await checker.check(domain) is expected
    assert server.queries == [(domain, rdtype) for rdtype in asked]


async def test_large_answer_falls_back_to_tcp(server: DnsServer) -> None:
    checker = make_checker(server.nameserver)
    assert await checker.check("big.fr") is DomainStatus.EXISTS
    assert server.tcp_queries == 1  # the UDP answer was truncated; dnspython retried over TCP


async def test_silent_server_times_out_as_tempfail(server: DnsServer) -> None:
    checker = make_checker(server.nameserver, timeout=FAST)
    started = time.monotonic()
    assert await checker.check("silent.fr") is DomainStatus.TEMPFAIL
    elapsed = time.monotonic() - started
    assert FAST * 0.8 <= elapsed < 2
    assert checker.cache_size() == 0


async def test_unreachable_nameserver_is_tempfail() -> None:
    checker = make_checker(f"127.0.0.1:{closed_udp_port()}", timeout=FAST)
    started = time.monotonic()
    assert await checker.check("gmail.com") is DomainStatus.TEMPFAIL
    assert time.monotonic() - started < 2


async def test_next_nameserver_used_when_first_unreachable(server: DnsServer) -> None:
    """dnspython's default: each try waits 2 s, then the next nameserver, within the lifetime."""
    checker = make_checker(f"127.0.0.1:{closed_udp_port()}", server.nameserver, timeout=3.0)
    started = time.monotonic()
    assert await checker.check("gmail.com") is DomainStatus.EXISTS
    assert 1.9 < time.monotonic() - started < 3
    assert server.queries == [("gmail.com", "MX")]


async def test_asyncio_guard_bounds_a_stuck_resolver(
    server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a resolver that ignores its lifetime cannot hold a check past the timeout."""

    async def stuck(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", stuck)
    checker = make_checker(server.nameserver, timeout=0.2)
    started = time.monotonic()
    assert await checker.check("gmail.com") is DomainStatus.TEMPFAIL
    assert time.monotonic() - started < 1


async def test_unexpected_error_is_tempfail(
    server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", broken)
    checker = make_checker(server.nameserver)
    assert await checker.check("gmail.com") is DomainStatus.TEMPFAIL
    assert checker.cache_size() == 0


async def test_no_system_resolver_configuration_is_tempfail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_configuration(*args: Any, **kwargs: Any) -> None:
        raise dns.resolver.NoResolverConfiguration

    monkeypatch.setattr(dns.asyncresolver.Resolver, "__init__", no_configuration)
    checker = make_checker()  # no nameservers: the system's configuration
    assert await checker.check("gmail.com") is DomainStatus.TEMPFAIL


@pytest.mark.parametrize("domain", ["", ".", "a..fr", "x" * 64 + ".fr", ("x" * 60 + ".") * 5])
async def test_impossible_names_are_missing_without_query(server: DnsServer, domain: str) -> None:
    checker = make_checker(server.nameserver)
    assert await checker.check(domain) is DomainStatus.MISSING
    assert server.queries == []


async def test_case_and_trailing_dot_are_one_domain(server: DnsServer) -> None:
    checker = make_checker(server.nameserver)
    assert await checker.check("gmail.com") is DomainStatus.EXISTS
    assert await checker.check("GMail.COM.") is DomainStatus.EXISTS
    assert server.queries == [("gmail.com", "MX")]


# ---------------------------------------------------------------------------------------------
# Cache


async def test_positive_and_negative_answers_are_cached(server: DnsServer) -> None:
    checker = make_checker(server.nameserver)
    for _ in range(3):
        assert await checker.check("gmail.com") is DomainStatus.EXISTS
        assert await checker.check("gmial.com") is DomainStatus.MISSING
        assert await checker.check("nothing.fr") is DomainStatus.MISSING
    assert server.queries == [
        ("gmail.com", "MX"),
        ("gmial.com", "MX"),
        ("nothing.fr", "MX"),
        ("nothing.fr", "A"),
        ("nothing.fr", "AAAA"),
    ]
    assert checker.cache_size() == 3


async def test_tempfail_is_not_cached(server: DnsServer) -> None:
    checker = make_checker(server.nameserver)
    assert await checker.check("servfail.fr") is DomainStatus.TEMPFAIL
    assert await checker.check("servfail.fr") is DomainStatus.TEMPFAIL
    assert server.queries == [("servfail.fr", "MX")] * 2
    assert checker.cache_size() == 0


async def test_cache_expiry(server: DnsServer) -> None:
    clock = FakeClock()
    checker = make_checker(server.nameserver, clock=clock, cache_ttl=100, negative_ttl=10)
    await checker.check("gmail.com")
    await checker.check("gmial.com")
    clock.now += 9.9
    await checker.check("gmail.com")
    await checker.check("gmial.com")
    assert len(server.queries) == 2
    clock.now += 0.2  # the negative answer expired, not the positive one
    assert await checker.check("gmial.com") is DomainStatus.MISSING
    assert await checker.check("gmail.com") is DomainStatus.EXISTS
    assert server.queries == [("gmail.com", "MX"), ("gmial.com", "MX"), ("gmial.com", "MX")]
    clock.now += 100
    assert await checker.check("gmail.com") is DomainStatus.EXISTS
    assert server.queries[-1] == ("gmail.com", "MX")
    assert len(server.queries) == 4


async def test_zero_ttl_disables_the_cache(server: DnsServer) -> None:
    checker = make_checker(server.nameserver, cache_ttl=0, negative_ttl=0)
    for _ in range(2):
        await checker.check("gmail.com")
        await checker.check("gmial.com")
    assert len(server.queries) == 4
    assert checker.cache_size() == 0


async def test_cache_is_bounded_oldest_evicted(
    server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnscheck, "MAX_CACHE_ENTRIES", 3)
    checker = make_checker(server.nameserver)
    for domain in ("gmail.com", "gmial.com", "a-only.fr", "medecin.mssante.fr"):
        await checker.check(domain)
    assert checker.cache_size() == 3
    server.queries.clear()
    await checker.check("medecin.mssante.fr")
    await checker.check("gmial.com")
    assert server.queries == []
    await checker.check("gmail.com")  # the oldest: evicted
    assert server.queries == [("gmail.com", "MX")]


# ---------------------------------------------------------------------------------------------
# Concurrency


async def test_concurrent_checks_share_one_lookup(server: DnsServer) -> None:
    checker = make_checker(server.nameserver)
    results = await asyncio.gather(*(checker.check("gmail.com") for _ in range(20)))
    assert results == [DomainStatus.EXISTS] * 20
    assert server.queries == [("gmail.com", "MX")]


async def test_concurrent_checks_of_slow_server_share_one_lookup() -> None:
    async with DnsServer(ZONE, delay=0.1) as slow:
        checker = make_checker(slow.nameserver)
        first = asyncio.ensure_future(checker.check("a-only.fr"))
        await asyncio.sleep(0.05)  # the MX query is on its way
        results = await asyncio.gather(first, *(checker.check("a-only.fr") for _ in range(19)))
        assert results == [DomainStatus.EXISTS] * 20
        assert slow.queries == [("a-only.fr", "MX"), ("a-only.fr", "A")]


async def test_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    async with DnsServer(ZONE, delay=0.1) as slow:
        checker = make_checker(slow.nameserver)
        impatient = asyncio.ensure_future(checker.check("gmail.com"))
        patient = asyncio.ensure_future(checker.check("gmail.com"))
        await asyncio.sleep(0.02)
        impatient.cancel()
        assert await patient is DomainStatus.EXISTS
        assert impatient.cancelled()
        assert slow.queries == [("gmail.com", "MX")]
        assert await checker.check("gmail.com") is DomainStatus.EXISTS  # and it was cached
        assert len(slow.queries) == 1


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("192.0.2.53:5353", ("192.0.2.53", 5353)),
        (" 127.0.0.1:53 ", ("127.0.0.1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:DB8:0::53]:1", ("2001:db8::53", 1)),
    ],
)
def test_parse_nameserver(entry: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "ns.example.fr",
        "ns.example.fr:53",
        "192.0.2.53:",
        "192.0.2.53:0",
        "192.0.2.53:65536",
        "192.0.2.53:dns",
        "192.0.2.300",
        "[::1",
        "[::1]5353",
        "[::1]:",
        "[192.0.2.53]:53",
        "::1:5353x",
    ],
)
def test_parse_nameserver_rejects(entry: str) -> None:
    with pytest.raises(ValueError, match="invalid nameserver"):
        parse_nameserver(entry)


def test_malformed_nameserver_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid nameserver"):
        make_checker("ns.example.fr")


async def test_ipv6_nameserver_entry_configures_the_resolver() -> None:
    """Parsed into a dnspython nameserver; no IPv6 network needed (nothing is sent)."""
    checker = make_checker("[::1]:5353", "192.0.2.53")
    resolver = checker._get_resolver()
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [  # type: ignore[union-attr]
        ("::1", 5353),
        ("192.0.2.53", 53),
    ]
