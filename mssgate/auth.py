"""SMTP AUTH: password hashes (argon2) and the throttling of failed attempts.

Verification is CPU-bound (argon2 is slow on purpose): the server runs it in a worker thread.
The throttle is plain logic on a clock, tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
# A hash to verify against when the login is unknown, so that an unknown login takes as long
# as a wrong password (no login enumeration by timing).
_DUMMY_HASH = _HASHER.hash("mssgate: unknown login")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` for the policy's ``users[].password_hash``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown login (None) costs the same time."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass
class AuthThrottle:
    """Failed AUTH attempts per client address: free, then delayed, then refused."""

    free_attempts: int = 2
    delay: float = 2.0
    max_attempts: int = 6
    window: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def _recent(self, client: str) -> list[float]:
        now = self.clock()
        recent = [t for t in self._failures.get(client, []) if now - t < self.window]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent

    def blocked(self, client: str) -> bool:
        """True when the client has used up its attempts for now."""
        return len(self._recent(client)) >= self.max_attempts

    def delay_before_answer(self, client: str) -> float:
        """Seconds to wait before answering this client's next AUTH."""
        excess = len(self._recent(client)) - self.free_attempts
        return self.delay * excess if excess > 0 else 0.0

    def failed(self, client: str) -> None:
        """Record one failed attempt."""
        self._recent(client)
        self._failures.setdefault(client, []).append(self.clock())
        if len(self._failures) > 10000:  # bounded memory under a distributed attack
            oldest = min(self._failures, key=lambda c: self._failures[c][-1])
            del self._failures[oldest]

    def succeeded(self, client: str) -> None:
        """Forget the failures of a client that authenticated."""
        self._failures.pop(client, None)
