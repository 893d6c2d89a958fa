"""Fault injection over real SMTP on 127.0.0.1: clients -> mssgate -> misbehaving upstreams.

The invariant every case checks: a message the client was told ``250`` reached its upstream
exactly once, and every other message (refused, temp-failed, or cut off by the client) reached
no upstream at all. The upstreams are :class:`tests.faulty_upstream.FaultyUpstream`: careful
MTAs that commit a message only when their final 250 reaches an open connection.

A module-wide :class:`Ledger` records, for every message (identified by a unique marker header
and Message-ID), what the client was told and what each upstream committed; each case asserts
its own messages are clean, and the module prints one summary line when it ends::

    fault suite: sent=N accepted=N delivered=N lost=0 duplicated=0 wrongly_delivered=0
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from mssgate import server
from mssgate.config import load_policy
from mssgate.decide import Draft, draft, judge
from mssgate.holder import PolicyHolder
from mssgate.model import Envelope, Route
from mssgate.policy import Policy
from mssgate.relay import RelayRegistry
from mssgate.server import DraftFn, Gateway, JudgeFn
from tests.conftest import make_policy, policy_yaml
from tests.faulty_upstream import Faults, FaultyUpstream, Stage
from tests.messages import message
from tests.smtp_peers import LOOPBACK, SendResult, send

BAL = "alice.martin@medecin.mssante.fr"
COPY = "cabinet.gare@cabinet.mssante.fr"
"""Added by the policy's copy rule to what ``BAL`` sends on the MSSanté route."""
DR = "dr.martin@cabinet-gare.fr"
CONFRERE = "jean.confrere@medecin.mssante.fr"
GMAIL = "patient.ami@gmail.com"
GMAIL2 = "autre.ami@gmail.com"

MSSANTE = Route.MSSANTE.value
ORDINARY = Route.ORDINARY.value

BUDGET = 0.5
"""The route ``timeout`` of the slow-upstream cases (seconds)."""
SLOW = BUDGET + 1.0
"""How long a slow upstream takes at its slow stage: well past the budget."""

MARKER_HEADER = "X-Fault-Marker"
CRASH_HEADER = "X-Fault-Crash: yes"
_MARKER = re.compile(rb"^X-Fault-Marker: (\S+)\r?$", re.MULTILINE)
SIGNED = b"X-MSSGate-Signature: added"

# -- the ledger --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts over a set of messages (see the module docstring for their meaning)."""

    sent: int = 0
    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    wrongly_delivered: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts (and problems) to these."""
        for f in fields(self):
            if f.name != "problems":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.problems.extend(other.problems)

    @property
    def clean(self) -> bool:
        """True when nothing was lost, duplicated or wrongly delivered."""
        return self.lost == self.duplicated == self.wrongly_delivered == 0

    def line(self) -> str:
        """The counts in the summary line's form."""
        return (
            f"sent={self.sent} accepted={self.accepted} delivered={self.delivered} "
            f"lost={self.lost} duplicated={self.duplicated} "
            f"wrongly_delivered={self.wrongly_delivered}"
        )


@dataclass
class Sent:
    """One message a client sent, and what it was told (None: the client cut off)."""

    marker: str
    routes: tuple[str, ...]
    """The route(s) it must reach when accepted (two for a message split per route)."""
    code: int | None = None


class Ledger:
    """What clients were told and what upstreams committed, over the whole module."""

    def __init__(self) -> None:
        self.total = Tally()
        self.known_bugs: list[tuple[str, Tally]] = []
        self._numbers = itertools.count(1)

    def marker(self) -> str:
        """A new unique message marker."""
        return f"fault-{next(self._numbers):04d}"

    def settle(
        self,
        case: str,
        sent: Iterable[Sent],
        upstreams: Mapping[str, FaultyUpstream],
        *,
        known_bug: bool = False,
    ) -> Tally:
        """Count ``sent`` against what ``upstreams`` (route name -> upstream) committed."""
        commits: dict[str, list[str]] = {}
        for route, upstream in upstreams.items():
            for committed in upstream.committed:
                for marker in _MARKER.findall(committed.data):
                    commits.setdefault(marker.decode(), []).append(route)
        tally = Tally()
        for s in sent:
            got = commits.get(s.marker, [])
            tally.sent += 1
            tally.accepted += s.code == 250
            tally.delivered += bool(got)
            if len(got) > len(set(got)):
                tally.duplicated += 1
                tally.problems.append(f"{s.marker}: committed {len(got)} times {got}")
            if s.code == 250 and sorted(set(got)) != sorted(s.routes):
                tally.lost += 1
                tally.problems.append(f"{s.marker}: told 250, committed to {got}, not {s.routes}")
            if s.code != 250 and got:
                tally.wrongly_delivered += 1
                tally.problems.append(f"{s.marker}: told {s.code}, yet committed to {got}")
        self.total.add(tally)
        if known_bug:
            self.known_bugs.append((case, tally))
        return tally

    def summary(self) -> list[str]:
        """The summary line, then one line per known bug (xfail case) that it includes."""
        lines = [f"fault suite: {self.total.line()}"]
        lines += [
            f"fault suite: of which known bug (xfail) {case}: {t.line()}"
            for case, t in self.known_bugs
            if not t.clean
        ]
        return lines


@pytest.fixture(scope="module", autouse=True)
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """The module's ledger; its summary line is printed when the module ends."""
    book = Ledger()
    yield book
    lines = book.summary()
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    # What capsys.disabled() does: the line goes to the terminal, not to captured output.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write("\n")  # after the progress dots
            for line in lines:
                reporter.write_line(line)
        else:  # without the terminal reporter (e.g. -p no:terminal)
            print("\n".join(lines), file=sys.__stdout__, flush=True)


# -- messages and clients ------------------------------------------------------------------------


def fault_message(
    marker: str,
    sender: str,
    to: str,
    *,
    size: int = 0,
    extra_headers: str = "",
    dots: bool = True,
) -> bytes:
    """A message carrying ``marker`` (header and Message-ID), with lines that need dot-stuffing
    (unless ``dots`` is False).

    ``size`` pads the body to at least that many bytes.
    """
    body = "Bonjour,\n.une ligne qui commence par un point\n..\n.\nFin du compte rendu.\n"
    if not dots:
        body = "Bonjour,\nFin du compte rendu.\n"
    if size:
        filler = "Ligne de remplissage du compte rendu, 0123456789 abcdefghij.\n"
        body += filler * (size // len(filler) + 1)
    headers = f"{MARKER_HEADER}: {marker}" + (f"\n{extra_headers}" if extra_headers else "")
    raw = message(sender, to, body=body, extra_headers=headers)
    return raw.replace(b"<test@cabinet-gare.fr>", f"<{marker}@faults.test>".encode())


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) SMTP reply; its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("gateway closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def abandon_mid_data(
    port: int, sender: str, rcpts: Sequence[str], raw: bytes, keep: int
) -> None:
    """A raw client: MAIL, RCPT, DATA, the first ``keep`` bytes of the payload, then hang up."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        assert await _reply(reader) == 220
        for command, expected in (
            ("EHLO client.test", 250),
            (f"MAIL FROM:<{sender}>", 250),
            *((f"RCPT TO:<{r}>", 250) for r in rcpts),
            ("DATA", 354),
        ):
            writer.write(command.encode() + b"\r\n")
            assert await _reply(reader) == expected, command
        stuffed = re.sub(rb"(?m)^\.", b"..", raw)
        writer.write(stuffed[:keep])
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


# -- the stack ---------------------------------------------------------------------------------


@dataclass
class FaultStack:
    """A gateway on 127.0.0.1 routing to two faulty upstreams, and this case's messages."""

    gateway: Gateway
    upstreams: dict[str, FaultyUpstream]
    ledger: Ledger
    case: str
    holder: PolicyHolder | None = None
    registry: RelayRegistry = field(default_factory=lambda: RelayRegistry({}))
    sent: list[Sent] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The gateway's port."""
        return self.gateway.port

    @property
    def mssante(self) -> FaultyUpstream:
        """The MSSanté operator's upstream."""
        return self.upstreams[MSSANTE]

    @property
    def ordinary(self) -> FaultyUpstream:
        """The ordinary mail provider's upstream."""
        return self.upstreams[ORDINARY]

    def new(self, routes: Sequence[str]) -> Sent:
        """Register a message about to be sent, expected on ``routes`` if accepted."""
        entry = Sent(self.ledger.marker(), tuple(routes))
        self.sent.append(entry)
        return entry

    async def send(
        self,
        sender: str,
        rcpts: Sequence[str],
        routes: Sequence[str],
        *,
        to: str | None = None,
        size: int = 0,
        extra_headers: str = "",
        dots: bool = True,
    ) -> tuple[Sent, SendResult, bytes]:
        """Send one marked message with smtplib; record what the client was told."""
        entry = self.new(routes)
        raw = fault_message(
            entry.marker,
            sender,
            to or ", ".join(rcpts),
            size=size,
            extra_headers=extra_headers,
            dots=dots,
        )
        result = await send(self.port, sender, rcpts, raw)
        entry.code = result.code
        return entry, result, raw

    async def settle(self, *, known_bug: bool = False) -> Tally:
        """Wait for the upstreams to finish, then count this case's messages."""
        await asyncio.sleep(0.05)
        await self.registry.close()  # warm connections end, so every upstream session ends
        for upstream in self.upstreams.values():
            await upstream.quiesce()
        return self.ledger.settle(self.case, self.sent, self.upstreams, known_bug=known_bug)

    async def assert_clean(self, *, known_bug: bool = False) -> Tally:
        """Settle and assert lost == duplicated == wrongly_delivered == 0."""
        tally = await self.settle(known_bug=known_bug)
        assert tally.clean, f"{self.case}: {tally.line()}: {tally.problems}"
        return tally


@asynccontextmanager
async def fault_stack(
    ledger: Ledger,
    case: str,
    *,
    mssante: Faults | None = None,
    ordinary: Faults | None = None,
    ordinary_down: bool = False,
    timeout: float = 1.0,
    extra: str = "",
    draft_fn: DraftFn = draft,
    judge_fn: JudgeFn = judge,
    policy_file: Path | None = None,
) -> AsyncIterator[FaultStack]:
    """Two faulty upstreams and a gateway routing to them, all on 127.0.0.1.

    With ``policy_file``, the policy is written there, loaded with ``load_policy`` and served
    through a :class:`PolicyHolder` (``stack.holder``), as ``mssgate serve`` does.
    """
    async with (
        FaultyUpstream(MSSANTE, mssante) as up_mssante,
        FaultyUpstream(ORDINARY, ordinary, down=ordinary_down) as up_ordinary,
    ):
        holder: PolicyHolder | None = None
        if policy_file is not None:
            policy_file.write_text(
                policy_yaml(up_mssante.port, up_ordinary.port, extra, timeout), "utf-8"
            )
            holder = PolicyHolder(load_policy(policy_file), policy_file)
            policy = holder.policy
        else:
            policy = make_policy(up_mssante.port, up_ordinary.port, extra, timeout)
        # As `mssgate serve` does: relays follow the policy in force (reloads included).
        registry = RelayRegistry({})

        def fixed() -> Policy:
            return policy

        current = holder if holder is not None else fixed
        gateway = Gateway(
            current,
            registry.relays_for,
            host=LOOPBACK,
            port=0,
            draft_fn=draft_fn,
            judge_fn=judge_fn,
        )
        async with gateway:
            yield FaultStack(
                gateway,
                {MSSANTE: up_mssante, ORDINARY: up_ordinary},
                ledger,
                case,
                holder,
                registry,
            )
        await registry.close()


@pytest.fixture
def case(request: pytest.FixtureRequest) -> str:
    """This test's name, for the ledger."""
    return str(request.node.name)


def is_4xx(code: int | None) -> bool:
    """True for a temporary failure."""
    return code is not None and 400 <= code < 500


# -- the cases ---------------------------------------------------------------------------------


async def test_healthy_upstreams_commit_once_byte_for_byte(ledger: Ledger, case: str) -> None:
    """The baseline: both routes accept; dot-stuffed lines arrive unstuffed, exactly once."""
    async with fault_stack(ledger, case) as stack:
        _, result, raw = await stack.send(BAL, [CONFRERE], [MSSANTE])
        assert result.code == 250
        _, ordinary, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert ordinary.code == 250
        await stack.assert_clean()
        (got,) = stack.mssante.committed
        assert got.data == raw
        assert got.rcpt_tos == (CONFRERE, COPY)
        (signed,) = stack.ordinary.committed
        assert SIGNED in signed.data


async def test_upstream_down(ledger: Ledger, case: str) -> None:
    """A closed port: 451 4.4.1, nothing anywhere; the other route keeps working."""
    async with fault_stack(ledger, case, ordinary_down=True) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert result.code == 451
        assert result.text.startswith("4.4.1")
        _, other, _ = await stack.send(BAL, [CONFRERE], [MSSANTE])
        assert other.code == 250
        tally = await stack.assert_clean()
        assert (tally.accepted, tally.delivered) == (1, 1)


@pytest.mark.parametrize(
    "stage",
    [
        "greeting",
        "ehlo",
        "mail",
        "rcpt",
        "data",
        "after_dot",
    ],
)
async def test_upstream_slow_past_the_budget(ledger: Ledger, case: str, stage: Stage) -> None:
    """Slower than the route's timeout at ``stage``: 451 4.4.2 and no commit."""
    faults = Faults(delay={stage: SLOW})
    async with fault_stack(ledger, case, ordinary=faults, timeout=BUDGET) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert result.code == 451
        assert result.text.startswith("4.4.2")
        await stack.assert_clean()
        assert stack.ordinary.committed == []


async def test_upstream_slow_within_the_budget(ledger: Ledger, case: str) -> None:
    """Slow at every stage but within the budget in all: accepted and delivered once."""
    stages: tuple[Stage, ...] = ("greeting", "ehlo", "mail", "rcpt", "data", "after_dot")
    faults = Faults(delay=dict.fromkeys(stages, 0.05))
    async with fault_stack(ledger, case, ordinary=faults, timeout=2.0) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert result.code == 250
        tally = await stack.assert_clean()
        assert tally.delivered == 1


async def test_upstream_slow_at_quit_after_commit(ledger: Ledger, case: str) -> None:
    """Committed, then slow to answer QUIT: the client must be told 250 (it was delivered)."""
    faults = Faults(delay={"quit": SLOW})
    async with fault_stack(ledger, case, ordinary=faults, timeout=BUDGET) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        await stack.assert_clean()
        assert result.code == 250


@pytest.mark.parametrize(
    ("stage", "after_bytes"),
    [
        ("greeting", 0),
        ("ehlo", 0),
        ("mail", 0),
        ("rcpt", 0),
        ("data", 0),
        ("payload", 1),
        ("payload", 300),
        ("payload", 40_000),
        ("after_dot", 0),
    ],
)
async def test_upstream_drops_the_connection(
    ledger: Ledger, case: str, stage: Stage, after_bytes: int
) -> None:
    """The upstream hangs up at ``stage`` (mid-DATA: after ``after_bytes``): 4xx, no commit."""
    faults = Faults(drop_at=stage, drop_after_bytes=after_bytes)
    async with fault_stack(ledger, case, ordinary=faults) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY], size=64 * 1024)
        assert is_4xx(result.code), result
        await stack.assert_clean()
        assert stack.ordinary.committed == []


async def test_upstream_drops_at_quit_after_commit(ledger: Ledger, case: str) -> None:
    """A hang-up after the final 250 changes nothing: told 250, delivered once."""
    async with fault_stack(ledger, case, ordinary=Faults(drop_at="quit")) as stack:
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert result.code == 250
        tally = await stack.assert_clean()
        assert tally.delivered == 1


REFUSALS = {
    4: "452 4.3.1 Insufficient system storage",
    5: "554 5.7.1 Rejected by operator policy",
}


@pytest.mark.parametrize("klass", [4, 5])
@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "after_dot"])
async def test_upstream_refuses(ledger: Ledger, case: str, stage: str, klass: int) -> None:
    """An upstream 4xx/5xx at MAIL, at RCPT (one recipient of two), at DATA or after the dot.

    The client gets the same class with the upstream's enhanced code and text; nothing is
    delivered to anyone (at RCPT, the gateway RSETs and never sends DATA).
    """
    reply = REFUSALS[klass]
    faults = Faults(
        mail_reply=reply if stage == "mail" else None,
        rcpt_replies={GMAIL2: reply} if stage == "rcpt" else {},
        data_reply=reply if stage == "data" else None,
        final_reply=reply if stage == "after_dot" else None,
    )
    async with fault_stack(ledger, case, ordinary=faults) as stack:
        _, result, _ = await stack.send(DR, [GMAIL, GMAIL2], [ORDINARY])
        assert result.code is not None and result.code // 100 == klass, result
        enhanced, text = reply[4:].split(" ", 1)
        assert result.text.startswith(enhanced) and text in result.text
        if stage == "rcpt":
            assert GMAIL2 in result.text
            assert stack.ordinary.saw("RSET") == 1
            assert stack.ordinary.saw("DATA") == 0
        await stack.assert_clean()
        assert stack.ordinary.committed == []


@pytest.mark.parametrize("klass", [4, 5])
async def test_upstream_refuses_the_policy_copy_recipient(
    ledger: Ledger, case: str, klass: int
) -> None:
    """The copy recipient the policy adds is refused upstream: the whole message is refused."""
    faults = Faults(rcpt_replies={COPY: REFUSALS[klass]})
    async with fault_stack(ledger, case, mssante=faults) as stack:
        _, result, _ = await stack.send(BAL, [CONFRERE], [MSSANTE])
        assert result.code is not None and result.code // 100 == klass, result
        assert COPY in result.text
        await stack.assert_clean()
        assert stack.mssante.committed == []


BIG_FAULTS: dict[str, tuple[Faults, int]] = {
    "slow_mail": (Faults(delay={"mail": 0.3}), 250),
    "slow_data": (Faults(delay={"data": 0.3}), 250),
    "drop_mid_payload": (Faults(drop_at="payload", drop_after_bytes=400_000), 451),
    "refused_after_dot": (Faults(final_reply="554 5.7.1 Rejected by operator policy"), 554),
    "deferred_after_dot": (Faults(final_reply="452 4.3.1 Insufficient system storage"), 452),
    "too_slow_after_dot": (Faults(delay={"after_dot": 3.0}), 451),
}


@pytest.mark.parametrize("fault", sorted(BIG_FAULTS))
async def test_big_message_sent_ahead_meets_upstream_faults(
    ledger: Ledger,
    case: str,
    fault: str,
    monkeypatch: pytest.MonkeyPatch,
    sent_ahead: list[int],
) -> None:
    """A 1 MB MSSanté message goes upstream while it comes in (mssgate.ahead): whatever the upstream
    does meanwhile, the client is told 250 only for a message delivered once, and anything
    else is delivered nowhere."""
    monkeypatch.setattr(server, "AHEAD_WAIT", 0.05)  # a slow upstream: not waited for long
    faults, code = BIG_FAULTS[fault]
    async with fault_stack(ledger, case, mssante=faults, timeout=2.0) as stack:
        _, result, _ = await stack.send(BAL, [CONFRERE], [MSSANTE], size=1_000_000, dots=False)
        assert result.code == code, result
        tally = await stack.assert_clean()
        assert tally.delivered == (1 if code == 250 else 0)
    # The upstream slow to open: nothing went ahead; otherwise most of the message did.
    assert (sum(sent_ahead) > 500_000) is (fault not in ("slow_mail", "slow_data"))


@pytest.mark.parametrize("where", ["headers", "half_body", "all_but_final_dot", "dot_no_crlf"])
async def test_client_disconnects_mid_data(ledger: Ledger, case: str, where: str) -> None:
    """A client hangs up during DATA: nothing reaches anyone. The upstream transaction the
    gateway opened ahead (MAIL, RCPT, DATA while the message came in) is dropped without its
    final dot."""
    async with fault_stack(ledger, case) as stack:
        entry = stack.new([ORDINARY])
        raw = fault_message(entry.marker, DR, GMAIL, size=20_000)
        stuffed_len = len(re.sub(rb"(?m)^\.", b"..", raw))
        keep = {
            "headers": raw.index(b"\r\n\r\n") + 4,
            "half_body": stuffed_len // 2,
            "all_but_final_dot": stuffed_len,
            "dot_no_crlf": stuffed_len,
        }[where]
        if where == "dot_no_crlf":
            raw += b"."  # "<CRLF>." without the closing CRLF: not the end of the data
            keep += 1
        await abandon_mid_data(stack.port, DR, [GMAIL], raw, keep)
        entry.code = None
        await asyncio.sleep(0.3)
        await stack.assert_clean()
        assert stack.ordinary.committed == stack.mssante.committed == []
        assert stack.mssante.connections == 0
        assert stack.ordinary.connections <= 1
        assert stack.ordinary.saw("client gone during DATA") == stack.ordinary.connections
        _, after, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert after.code == 250  # the gateway is unharmed
        await stack.assert_clean()


INVALID_POLICIES: list[bytes] = [
    b"version: 1\nroutes: [\n",  # YAML syntax error
    b"- a list\n- not a mapping\n",
    b"",  # empty file
    policy_yaml(extra="rules:\n  mixed_recipient: {enabled: false}\n").encode(),  # typo key
    policy_yaml(extra="version: 1\n").encode(),  # key written twice
    policy_yaml(extra="signature:\n  text: 'voir {inconnue}'\n").encode(),  # unknown variable
    b"\xff\xfe\x00 not UTF-8",
]


async def test_policy_replaced_by_an_invalid_one_while_messages_flow(
    ledger: Ledger, case: str, tmp_path: Path
) -> None:
    """Invalid reloads are refused and the old policy stays; a valid one takes over; and the
    ~30 messages sent meanwhile by several clients are each delivered once or refused."""
    path = tmp_path / "policy.yaml"
    async with fault_stack(ledger, case, policy_file=path) as stack:
        holder = stack.holder
        assert holder is not None
        original = holder.policy
        results: list[tuple[Sent, SendResult, str]] = []

        async def client(number: int) -> None:
            for i in range(6):
                kind = (number + i) % 3
                if kind == 0:
                    sent, res, _ = await stack.send(BAL, [CONFRERE], [MSSANTE])
                elif kind == 1:
                    sent, res, _ = await stack.send(DR, [GMAIL], [ORDINARY])
                else:  # an MSSanté BAL writing to gmail: refused by trust_space
                    sent, res, _ = await stack.send(BAL, [GMAIL], [])
                results.append((sent, res, ["mssante", "ordinary", "refused"][kind]))

        async def probe() -> bytes:
            sent, res, _ = await stack.send(DR, [GMAIL], [ORDINARY])
            assert res.code == 250  # the upstream committed before the gateway said 250
            (got,) = [c.data for c in stack.ordinary.committed if sent.marker.encode() in c.data]
            return got

        async def editor() -> None:
            for content in INVALID_POLICIES:
                path.write_bytes(content)
                assert holder.reload() is False
                assert holder.policy is original
                await asyncio.sleep(0.05)
            assert SIGNED in await probe()  # the old policy (signature on) still judges
            new = policy_yaml(
                stack.mssante.port, stack.ordinary.port, "signature:\n  enabled: false\n", 1.0
            )
            path.write_text(new, "utf-8")
            await asyncio.sleep(0.05)
            assert holder.reload() is True
            assert holder.policy is not original
            assert SIGNED not in await probe()  # the new policy (no signature) is in force

        await asyncio.gather(editor(), *(client(n) for n in range(5)))

        assert holder.failed_reloads == len(INVALID_POLICIES)
        assert holder.reloads == 1
        assert len(results) == 30
        for sent, res, kind in results:
            expected = 550 if kind == "refused" else 250
            assert res.code == expected, (sent.marker, kind, res)
        tally = await stack.assert_clean()
        assert tally.sent == 32
        assert tally.accepted == tally.delivered == 22


async def test_filter_raising_on_crafted_messages(ledger: Ledger, case: str) -> None:
    """A filter that raises on crafted messages: those get 451 4.3.0 and go nowhere; the good
    ones, sent concurrently, are delivered once."""

    def fragile_draft(policy: Policy, envelope: Envelope, raw: bytes) -> Draft:
        if f"\r\n{CRASH_HEADER}\r\n".encode() in raw:
            raise RuntimeError("filter crashed on a crafted message")
        return draft(policy, envelope, raw)

    async with fault_stack(ledger, case, draft_fn=fragile_draft) as stack:

        async def one(i: int) -> tuple[bool, SendResult]:
            crafted = i % 2 == 0
            sender, rcpt, route = (BAL, CONFRERE, MSSANTE) if i % 3 else (DR, GMAIL, ORDINARY)
            _, res, _ = await stack.send(
                sender, [rcpt], [route], extra_headers=CRASH_HEADER if crafted else ""
            )
            return crafted, res

        outcomes = await asyncio.gather(*(one(i) for i in range(12)))
        for crafted, res in outcomes:
            if crafted:
                assert res.code == 451 and res.text.startswith("4.3.0"), res
            else:
                assert res.code == 250, res
        tally = await stack.assert_clean()
        assert tally.accepted == tally.delivered == 6


SPLIT_RULES_OFF = """
rules:
  mixed_recipients: {enabled: false}
  trust_space: {enabled: false}
"""


@pytest.mark.parametrize("failing", [MSSANTE, ORDINARY])
async def test_one_route_per_message_when_the_rules_allow_both(
    ledger: Ledger, case: str, failing: str
) -> None:
    """With mixed_recipients and trust_space off, a recipient of the other route is deferred
    at RCPT (452 4.5.3): each message makes one upstream transaction, so one route's failure
    can never leave a copy delivered on the other while the client is told to retry."""
    busy = Faults(mail_reply="451 4.3.0 Try again later")
    async with fault_stack(
        ledger,
        case,
        extra=SPLIT_RULES_OFF,
        mssante=busy if failing == MSSANTE else None,
        ordinary=busy if failing == ORDINARY else None,
    ) as stack:
        _, result, _ = await stack.send(
            DR, [CONFRERE, GMAIL], [] if failing == MSSANTE else [MSSANTE]
        )
        if failing == MSSANTE:
            assert result.code == 451  # the accepted (MSSanté) part failed: nothing anywhere
        else:
            assert result.code == 250  # the MSSanté part went; GMAIL was deferred
            assert result.refused[GMAIL][0] == 452
        await stack.assert_clean()
        assert stack.ordinary.committed == []


async def test_reload_that_moves_an_upstream(ledger: Ledger, case: str, tmp_path: Path) -> None:
    """A valid reload pointing the ordinary route at a new upstream: mail goes there, once."""
    path = tmp_path / "policy.yaml"
    async with (
        fault_stack(ledger, case, policy_file=path) as stack,
        FaultyUpstream("ordinary (new)") as moved,
    ):
        assert stack.holder is not None
        old = stack.upstreams[ORDINARY]
        path.write_text(policy_yaml(stack.mssante.port, moved.port, "", 1.0), "utf-8")
        assert stack.holder.reload() is True
        stack.upstreams[ORDINARY] = moved
        stack.upstreams["ordinary, old upstream (before the reload)"] = old
        _, result, _ = await stack.send(DR, [GMAIL], [ORDINARY])
        assert result.code == 250
        await stack.assert_clean()
