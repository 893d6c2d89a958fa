"""What the gateway reports to its observers (audit trail, metrics): plain frozen values.

The server emits these at one place each; observers subscribe. An observer that fails is
logged and never changes what happens to a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("mssgate.events")


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """One decision on one message (or on an envelope refused before DATA)."""

    time: float
    """Seconds since the epoch, when the decision was answered."""
    session: str
    """Identifier of the SMTP connection."""
    peer: str
    user: str | None
    stage: str
    """``mail``, ``rcpt`` or ``data``: where the client got the answer."""
    sender: str
    recipients: tuple[tuple[str, str], ...]
    """(address, class) pairs; addresses as given (observers pseudonymise)."""
    action: str
    """``accept``, ``reject`` or ``tempfail``."""
    rule: str | None
    smtp_code: int
    enhanced_code: str
    routes: tuple[str, ...]
    upstream: str | None
    """The upstream's answer (accepted text or failure), when it was asked."""
    size_in: int
    size_out: int
    message_id: str | None
    signature_added: bool
    duration: float
    """Seconds from DATA's end to the answer (decision plus relay)."""


class Observer(Protocol):
    """Receives the gateway's events; every method must be quick and must not block."""

    def decision(self, event: DecisionEvent) -> None:
        """A message (or envelope) was decided and answered."""

    def connection(self, opened: bool, refused: bool = False) -> None:
        """A client connection opened (or was refused by a limit), or closed."""

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        """An upstream transaction ended: ``ok``, ``tempfail`` or ``permfail``."""

    def reload(self, ok: bool) -> None:
        """A policy reload was attempted."""


class Observers:
    """Fans events out to several observers; a failing observer is logged and skipped."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        """Subscribe one more observer."""
        self.observers.append(observer)

    def _each(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("observer %s failed on %s", type(observer).__name__, method)

    def decision(self, event: DecisionEvent) -> None:
        """Forward a decision."""
        self._each("decision", event)

    def connection(self, opened: bool, refused: bool = False) -> None:
        """Forward a connection event."""
        self._each("connection", opened, refused)

    def relay(self, route: str, seconds: float, outcome: str) -> None:
        """Forward an upstream transaction's outcome."""
        self._each("relay", route, seconds, outcome)

    def reload(self, ok: bool) -> None:
        """Forward a reload attempt."""
        self._each("reload", ok)


REPORT_HOLD = 0.01
"""Seconds a report may wait for a moment when the gateway has nothing else to do."""

_TIMER_SLACK = 0.001
"""A timer may fire up to a millisecond early (the loop counts in milliseconds)."""


class HeldReports:
    """Observer calls held until the gateway has time for them, then made in order.

    A client that is quick to follow up (the next MAIL FROM right after the 250) would
    otherwise wait for the audit line and the metrics of its previous message. They are made
    once a message has been written upstream (the gateway then waits for the upstream's
    reply, its longest wait), when a connection ends, at shutdown, or after ``REPORT_HOLD``
    seconds at most.
    """

    def __init__(self, hold: float = REPORT_HOLD) -> None:
        self.hold = hold
        self._calls: list[tuple[Callable[..., None], tuple[object, ...]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._since = 0.0
        """The loop's time when the oldest call held was added."""
        self._queued = False

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: Callable[..., None], *args: object) -> None:
        """Hold one call (made with ``args``), after those already held."""
        if not self._calls:
            loop = asyncio.get_running_loop()
            self._since = loop.time()
            if self._timer is None or self._timer_loop is not loop:
                # One timer for many messages: it stays armed when the calls are made
                # earlier, and looks again when it fires (not one timer made and cancelled
                # per message). (A timer left on a loop that has since stopped is not one.)
                self._timer = loop.call_at(self._since + self.hold, self._expire)
                self._timer_loop = loop
        self._calls.append((call, args))

    def soon(self) -> None:
        """Make the held calls as soon as the loop is free (the gateway is about to wait)."""
        if self._calls and not self._queued:
            self._queued = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _expire(self) -> None:
        """The timer: the held calls once the oldest waited ``hold`` seconds, else later."""
        self._timer = None
        if not self._calls:
            return
        loop = asyncio.get_running_loop()
        due = self._since + self.hold
        if loop.time() >= due - _TIMER_SLACK:
            self.flush()
        else:
            self._timer = loop.call_at(due, self._expire)

    def flush(self) -> None:
        """Make every held call now, in order (a failing one is logged and skipped)."""
        self._queued = False
        calls, self._calls = self._calls, []
        for call, args in calls:
            try:
                call(*args)
            except Exception:
                log.exception("report %s failed", getattr(call, "__name__", call))
