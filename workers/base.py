"""Give every task its process's runtime, a lease owner and one timed log line.

Nothing is built at import: the runtime (settings, site, peer client) is made
on a task's first use in each process, so a prefork child builds its own and
the lease owner names the process that does the work.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from celery import Task

from shared.context import Site, site_from_env
from shared.control.peer import PeerClient
from shared.control.signing import KeyRing
from shared.dispatch import QueueDispatcher
from shared.settings import Settings

log = logging.getLogger("dbsync.tasks")


@dataclass(frozen=True)
class Runtime:
    """What tasks need, built once per process."""

    settings: Settings
    site: Site
    peer: PeerClient


class Outcome(Protocol):
    """What a service returns to a task that may have to run again."""

    @property
    def state(self) -> str: ...

    @property
    def retry_in(self) -> float | None: ...


class SiteTask(Task):
    """Base of every dbsync task: the runtime, the lease owner, timing."""

    _runtime: ClassVar[Runtime | None] = None

    @property
    def runtime(self) -> Runtime:
        if SiteTask._runtime is None:
            SiteTask._runtime = self._build_runtime()
        return SiteTask._runtime

    def _build_runtime(self) -> Runtime:
        def send(name: str, args: list[object], queue: str) -> None:
            self.app.send_task(name, args=args, queue=queue)

        site = site_from_env(lambda settings: QueueDispatcher(settings, send))
        keys = KeyRing(site.db.engine)
        return Runtime(
            site.settings, site, PeerClient(site.settings, signing_keys=keys)
        )

    @classmethod
    def after_fork(cls) -> None:
        """Reset pooled connections a forked child inherited from its parent."""
        if cls._runtime is not None:
            cls._runtime.site.db.dispose(close=False)

    @property
    def lease_owner(self) -> str:
        """Who holds a lease while this run works: host, process and task run."""
        return f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"

    def conclude(self, outcome: Outcome) -> str:
        """Schedule the next attempt the service asked for, or report its state."""
        if outcome.retry_in is not None:
            raise self.retry(countdown=outcome.retry_in)
        return outcome.state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = "raised"
        try:
            value = super().__call__(*args, **kwargs)
            result = "returned"
            return value
        finally:
            log.info(
                "task=%s id=%s %s seconds=%.3f",
                self.name,
                self.request.id,
                result,
                time.perf_counter() - started,
            )
