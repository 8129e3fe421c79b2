"""Name the workers' tasks and queues, and the broker options, in one place.

The web front, the CLI and the workers all talk to the same broker; each
builds its own Celery object (nothing below ``shared/`` imports Celery) from
``celery_config``, so an option such as the visibility timeout is set once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from shared.settings import Settings

DELIVER_NOTICE = "dbsync.deliver_notice"
SWEEP_NOTICES = "dbsync.sweep_notices"
VERIFY_ALL = "dbsync.verify_all"
VERIFY_CONNECTION = "dbsync.verify_connection"
EXPIRE_CONNECTIONS = "dbsync.expire_connections"
RUN_PULL = "dbsync.run_pull"
RUN_SYNCS = "dbsync.run_syncs"

# Longer than the longest retry countdown, or Redis redelivers in a loop.
REDIS_VISIBILITY_TIMEOUT_SECONDS = 7200


def queues(settings: Settings) -> tuple[str, ...]:
    """Every queue a worker of this site consumes; the first is the default."""
    return (settings.peer_queue, settings.pull_queue)


def broker_options(settings: Settings) -> dict[str, Any]:
    """The broker transport options every Celery object of this site uses."""
    if settings.broker_url.startswith("redis"):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_SECONDS}
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration shared by the workers and those who enqueue."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
    }
    options = broker_options(settings)
    if options:
        config["broker_transport_options"] = options
    return config


class Dispatcher(Protocol):
    def deliver_notice(self, notice_id: int) -> None: ...

    def run_pull(self, transfer_id: str) -> None: ...


SendTask = Callable[[str, list[object], str], None]
"""Put a task on the broker: ``send(task_name, args, queue)``."""


class QueueDispatcher:
    """Route each kind of work to its task and queue; ``send`` puts it on the broker."""

    def __init__(self, settings: Settings, send: SendTask) -> None:
        self._settings = settings
        self._send = send

    def deliver_notice(self, notice_id: int) -> None:
        self._send(DELIVER_NOTICE, [notice_id], self._settings.peer_queue)

    def run_pull(self, transfer_id: str) -> None:
        self._send(RUN_PULL, [transfer_id], self._settings.pull_queue)


class DeferredDispatcher:
    """Enqueue nothing; the beat sweep picks durable work up from the database.

    Used where no broker is wired (unit tests); every notice is in the outbox
    table anyway, so nothing is lost, only delayed until the next sweep.
    """

    def __init__(self) -> None:
        self.notices: list[int] = []
        self.pulls: list[str] = []

    def deliver_notice(self, notice_id: int) -> None:
        self.notices.append(notice_id)

    def run_pull(self, transfer_id: str) -> None:
        self.pulls.append(transfer_id)
