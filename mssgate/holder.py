"""The policy in force, swapped atomically when IT reloads it (SIGHUP).

A transaction pins the policy it started with (at MAIL FROM), so a reload never judges a
message by half of one policy and half of another. An invalid new policy is refused: its
errors are logged and the previous one stays in force.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from mssgate.config import ConfigError, LoadedPolicy, load_policy
from mssgate.events import Observers
from mssgate.policy import Policy

log = logging.getLogger("mssgate.policy")


class PolicyHolder:
    """Holds the current policy; :meth:`reload` validates a new one before swapping."""

    def __init__(
        self,
        loaded: LoadedPolicy,
        path: str | Path | None = None,
        observers: Observers | None = None,
        check: Callable[[Policy], object] | None = None,
    ) -> None:
        self._loaded = loaded
        self.path = path
        self.observers = observers or Observers()
        self.check = check
        """Run on a new policy before it is swapped in (e.g. its routes' secrets can be read);
        a ValueError refuses the reload."""
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def policy(self) -> Policy:
        """The policy in force now."""
        return self._loaded.policy

    @property
    def source(self) -> str:
        """Where the policy in force came from."""
        return self._loaded.source

    def __call__(self) -> Policy:
        return self._loaded.policy

    def reload(self) -> bool:
        """Load the policy file again; True when the new policy is now in force."""
        try:
            loaded = load_policy(self.path, previous=self._loaded.policy)
            if self.check is not None:
                self.check(loaded.policy)
        except (ConfigError, ValueError) as exc:
            self.failed_reloads += 1
            errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            log.error("policy reload refused, previous policy kept: %s", "; ".join(errors))
            self.observers.reload(False)
            return False
        for warning in loaded.warnings:
            log.warning("policy: %s", warning)
        self._loaded = loaded  # one reference swap: atomic for every reader
        self.reloads += 1
        log.info("policy reloaded from %s", loaded.source)
        self.observers.reload(True)
        return True
