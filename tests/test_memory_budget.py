"""Memory stays bounded under concurrency: past the in-flight budget, new DATA gets 452."""

from __future__ import annotations

import asyncio

from tests.conftest import running_stack
from tests.messages import message
from tests.smtp_peers import send

DR = "dr.martin@cabinet-gare.fr"
GMAIL = "patient.ami@gmail.com"
MIB = 1024 * 1024


async def test_inflight_budget_answers_452_and_bounds_memory() -> None:
    budget = 8 * MIB
    body = ("x" * 76 + "\n") * (2 * MIB // 77)  # about 2 MiB of text
    raw = message(DR, GMAIL, body=body)
    async with running_stack(listen_extra=f"  max_inflight_bytes: {budget}\n", timeout=30) as stack:
        stack.ordinary.behaviour.data_delay = 0.5  # keep messages in flight together
        results = await asyncio.gather(*(send(stack.port, DR, [GMAIL], raw) for _ in range(12)))
        codes = sorted(r.code or 0 for r in results)
        assert set(codes) <= {250, 452}, codes
        assert codes.count(452) >= 1 and codes.count(250) >= 1
        assert len(stack.ordinary.received) == codes.count(250)
        assert stack.gateway.budget.used == 0  # everything released
        # 12 x 2 MiB offered at once: what the sessions held together never crossed the budget
        # (the process's RSS under 100 x 5 MB is measured by the benchmark, bench/).
        assert 0 < stack.gateway.budget.peak <= budget
        # and the gateway takes new mail once the rush is over
        stack.ordinary.behaviour.data_delay = 0
        again = await send(stack.port, DR, [GMAIL], raw)
        assert again.code == 250
