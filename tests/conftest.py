"""Shared fixtures: the corpus, test policies, and a gateway wired to real upstream servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mssgate.config import load_policy_text
from mssgate.decide import draft, judge
from mssgate.policy import Policy
from mssgate.relay import PreparedTransaction, build_relays
from mssgate.server import DraftFn, Gateway, JudgeFn
from tests.smtp_peers import LOOPBACK, CaptureUpstream, Received

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def corpus_files() -> list[Path]:
    """Every real-world message of ../shared/corpus (empty when the folder is absent)."""
    return sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []


PEOPLE = """
people:
  - id: martin
    name: Dr Alice Martin
    rpps: "10001234567"
    bals: [alice.martin@medecin.mssante.fr]
    practices:
      - place: Cabinet médical de la Gare
        preferred_bal: alice.martin@medecin.mssante.fr
        addresses: [dr.martin@cabinet-gare.fr]
  - id: durand
    name: Dr Bruno Durand
    rpps: "10007654321"
    practices:
      - place: Cabinet médical de la Gare
        preferred_bal: bruno.durand@medecin.mssante.fr
        addresses: [dr.durand@cabinet-gare.fr]
  - id: sophie
    name: Sophie Leroy
    practices:
      - place: Cabinet médical de la Gare
        preferred_bal: cabinet.gare@cabinet.mssante.fr
        addresses: [secretariat@cabinet-gare.fr]
shared_bals:
  - address: cabinet.gare@cabinet.mssante.fr
    kind: cabinet
    place: Cabinet médical de la Gare
    principal: martin
    co_holders: [martin, durand]
    delegates: [sophie]
redirects:
  - from: alice.martin@medecin.mssante.fr
    to: cabinet.gare@cabinet.mssante.fr
    kind: copy
"""


def policy_yaml(
    mssante_port: int = 2601,
    ordinary_port: int = 2602,
    extra: str = "",
    timeout: float = 5,
    listen_extra: str = "",
) -> str:
    """A cabinet's policy whose two routes go to upstreams on 127.0.0.1 without TLS."""
    return f"""
version: 1
listen:
  host: 127.0.0.1
  port: 0
  hostname: mssgate.test
  client_timeout: 60
{listen_extra}routes:
  mssante:
    upstream: {{host: {LOOPBACK}, port: {mssante_port}, tls: none, timeout: {timeout}}}
  ordinary:
    upstream: {{host: {LOOPBACK}, port: {ordinary_port}, tls: none, timeout: {timeout}}}
{PEOPLE}
{extra}
"""


def make_policy(
    mssante_port: int = 2601,
    ordinary_port: int = 2602,
    extra: str = "",
    timeout: float = 5,
    listen_extra: str = "",
) -> Policy:
    """Compile :func:`policy_yaml`."""
    text = policy_yaml(mssante_port, ordinary_port, extra, timeout, listen_extra)
    return load_policy_text(text, "test.yaml").policy


@pytest.fixture
def policy() -> Policy:
    """The test cabinet's policy (routes unused by pure tests)."""
    return make_policy()


@dataclass
class Stack:
    """A gateway with its two real upstreams."""

    gateway: Gateway
    mssante: CaptureUpstream
    ordinary: CaptureUpstream
    policy: Policy

    @property
    def port(self) -> int:
        """The gateway's listening port."""
        return self.gateway.port

    def delivered(self) -> int:
        """How many messages the upstreams accepted in all."""
        return len(self.mssante.received) + len(self.ordinary.received)

    def delivered_messages(self) -> list[Received]:
        """What the upstreams accepted, the MSSanté one's first."""
        return [*self.mssante.received, *self.ordinary.received]


@asynccontextmanager
async def running_stack(
    extra: str = "",
    draft_fn: DraftFn = draft,
    judge_fn: JudgeFn = judge,
    ordinary_port: int | None = None,
    timeout: float = 5,
    listen_extra: str = "",
    pipelining: bool = False,
) -> AsyncIterator[Stack]:
    """Two capture upstreams and a gateway routing to them, all on 127.0.0.1.

    ``ordinary_port`` points the ordinary route elsewhere (a closed port: upstream down).
    """
    async with (
        CaptureUpstream(pipelining=pipelining) as mssante,
        CaptureUpstream(pipelining=pipelining) as ordinary,
    ):
        policy = make_policy(
            mssante.port, ordinary_port or ordinary.port, extra, timeout, listen_extra
        )
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        gateway = Gateway(
            lambda: policy,
            relays,
            host=LOOPBACK,
            port=0,
            draft_fn=draft_fn,
            judge_fn=judge_fn,
        )
        async with gateway:
            yield Stack(gateway, mssante, ordinary, policy)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A running gateway with two capture upstreams."""
    async with running_stack() as s:
        yield s


@pytest.fixture
def sent_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes written upstream ahead of a decision (the real method runs; this only shows
    the path taken)."""
    sizes: list[int] = []
    real = PreparedTransaction.send_ahead

    def spy(self: PreparedTransaction, piece: bytes | memoryview) -> None:
        sizes.append(len(piece))
        real(self, piece)

    monkeypatch.setattr(PreparedTransaction, "send_ahead", spy)
    yield sizes
