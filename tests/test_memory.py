"""The process's memory settings: garbage collections made while the gateway waits."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mssgate.memory import GC_OLDER, collect_if_due, due_generation
from mssgate.relay import build_relays
from mssgate.server import Gateway
from tests.conftest import make_policy
from tests.messages import message
from tests.smtp_peers import LOOPBACK, CaptureUpstream, send

DR = "dr.martin@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((0, 0, 0), None),
        ((19_999, 19, 19), None),
        ((20_000, 0, 0), 0),
        ((25_000, 19, 0), 0),
        ((20_000, 20, 0), 1),
        ((20_000, 20, 19), 1),
        ((20_000, 20, 20), 2),
        ((20_000, 0, 20), 0),  # (the middle generation first, as CPython)
    ],
)
def test_the_due_generation_follows_cpythons_rule(
    counts: tuple[int, int, int], expected: int | None
) -> None:
    assert due_generation(counts, young=20_000, older=GC_OLDER) == expected


@pytest.fixture
def manual_collections() -> Iterator[list[int]]:
    """Automatic collections out of the way; the generations collected, in order."""
    thresholds = gc.get_threshold()
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.collect()
    gc.set_threshold(10**8, *thresholds[1:])
    gc.callbacks.append(seen)
    try:
        yield collected
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)


def test_a_collection_runs_only_when_due(manual_collections: list[int]) -> None:
    assert collect_if_due(young=10**7) is None
    kept = [[i] for i in range(5_000)]  # 5,000 new container objects, alive
    assert gc.get_count()[0] >= 5_000
    assert collect_if_due(young=4_000) == 0
    assert manual_collections == [0]
    assert gc.get_count()[0] < 100
    gc.disable()
    try:
        kept += [[i] for i in range(5_000)]
        assert collect_if_due(young=4_000) is None  # (disabled: left alone)
    finally:
        gc.enable()
    assert manual_collections == [0] and len(kept) == 10_000


async def test_a_due_collection_is_made_while_the_upstream_reads(
    manual_collections: list[int],
) -> None:
    async with CaptureUpstream() as mssante, CaptureUpstream() as ordinary:
        policy = make_policy(mssante.port, ordinary.port)
        relays = build_relays(policy.route_configs(), "mssgate.test", {})
        async with Gateway(lambda: policy, relays, host=LOOPBACK, port=0) as gateway:
            first = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
            assert first.code == 250
            quiet = list(manual_collections)
            kept = [[i] for i in range(25_000)]  # a young collection is now due
            second = await send(gateway.port, DR, [GMAIL], message(DR, GMAIL))
    assert second.code == 250 and len(ordinary.received) == 2
    assert quiet == []  # (nothing due during the first message)
    assert manual_collections[:1] == [0] and len(kept) == 25_000
