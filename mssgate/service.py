"""The running gateway, assembled: policy holder, relays, observers, listeners, watchers.

``mssgate serve`` is this module plus signal handling. It is kept apart from the CLI so that
tests can start the whole service in their own loop, exactly as it runs in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from mssgate.audit import AuditTrail
from mssgate.config import LoadedPolicy
from mssgate.events import Observers
from mssgate.holder import PolicyHolder
from mssgate.metrics import HealthState, Metrics, MetricsServer
from mssgate.relay import RelayRegistry
from mssgate.server import Gateway

log = logging.getLogger("mssgate.service")


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file changed: inode, size, modification time (None if absent)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Service:
    """Everything ``mssgate serve`` runs, started and stopped in order."""

    def __init__(
        self,
        loaded: LoadedPolicy,
        path: str | Path | None,
        *,
        host: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        policy = loaded.policy
        document = policy.document
        self.registry = RelayRegistry(env)
        self.registry.relays_for(policy)  # a missing secret stops the start here
        self.metrics = Metrics()
        self.health = HealthState()
        self.observers = Observers([self.metrics])
        key_env = document.privacy.pseudonym_key_env
        self.pseudonym_key = env.get(key_env, "").encode() or os.urandom(32)
        self.audit: AuditTrail | None = None
        if document.audit is not None:
            self.audit = AuditTrail(document.audit, self.pseudonym_key)
            self.observers.add(self.audit)
        self.path = Path(path) if path is not None else None
        self.holder = PolicyHolder(
            loaded, self.path, observers=self.observers, check=self.registry.relays_for
        )
        self.gateway = Gateway(
            self.holder,
            self.registry.relays_for,
            host=host,
            port=port,
            pseudonym_key=self.pseudonym_key,
            observers=self.observers,
        )
        self.metrics_server: MetricsServer | None = None
        if document.metrics is not None:
            self.metrics_server = MetricsServer(document.metrics, self.metrics, self.health)
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Health endpoint first (it answers during start-up), then the SMTP listeners."""
        if self.metrics_server is not None:
            await self.metrics_server.start()
        await self.gateway.start()
        reload = self.holder.policy.document.reload
        if self.path is not None and reload.watch:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(self.path, reload.interval)
            )
        self.health.ready = True

    async def _watch(self, path: Path, interval: float) -> None:
        """Reload the policy when its file changes (an editor's save, a ConfigMap update)."""
        seen = file_signature(path)
        while True:
            await asyncio.sleep(interval)
            now = file_signature(path)
            if now is not None and now != seen:
                seen = now
                log.info("policy file changed: reloading")
                self.holder.reload()

    def reload(self) -> bool:
        """Reload the policy now (SIGHUP)."""
        return self.holder.reload()

    async def stop(self) -> None:
        """Not ready first (for the orchestrator), then listeners, relays, endpoints, audit."""
        self.health.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self.gateway.stop()
        await self.registry.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.audit is not None:
            self.audit.close()
