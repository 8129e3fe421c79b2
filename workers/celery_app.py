"""The Celery app, its configuration, queues and beat schedule."""

from __future__ import annotations

import gc
import logging
from functools import cached_property

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from shared.context import Site
from shared.control.peer import PeerClient
from shared.db import Database
from shared.settings import Settings

log = logging.getLogger("dbsync.workers")


class Runtime:
    """What tasks need, built once per process from the environment."""

    @cached_property
    def settings(self) -> Settings:
        settings = Settings.from_env()
        settings.ensure_home()
        return settings

    @cached_property
    def site(self) -> Site:
        db = Database(self.settings.database_url, self.settings.data_database_url)
        return Site(self.settings, db, TaskDispatcher(self.settings))

    @cached_property
    def peer(self) -> PeerClient:
        return PeerClient(self.settings)


class TaskDispatcher:
    """Enqueue tasks of this app; used by the CLI, the sweep and fan-outs."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def deliver_notice(self, notice_id: int) -> None:
        app.send_task(
            "dbsync.deliver_notice", args=[notice_id], queue=self._settings.peer_queue
        )

    def run_pull(self, transfer_id: str) -> None:
        app.send_task(
            "dbsync.run_pull", args=[transfer_id], queue=self._settings.pull_queue
        )


runtime = Runtime()


def make_app(settings: Settings) -> Celery:
    celery = Celery("dbsync", broker=settings.broker_url, include=["workers.tasks"])
    celery.conf.update(
        task_default_queue=settings.peer_queue,
        task_queues=[
            Queue(q, Exchange(q, type="direct"), routing_key=q)
            for q in (settings.peer_queue, settings.pull_queue)
        ],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        beat_schedule={
            "verify-connections": {
                "task": "dbsync.verify_all",
                "schedule": float(settings.verify_interval_seconds),
                "options": {"expires": settings.verify_interval_seconds},
            },
            "expire-connections": {
                "task": "dbsync.expire_connections",
                "schedule": float(settings.expire_interval_seconds),
                "options": {"expires": settings.expire_interval_seconds},
            },
            "sweep-notices": {
                "task": "dbsync.sweep_notices",
                "schedule": float(settings.outbox_sweep_seconds),
                "options": {"expires": settings.outbox_sweep_seconds},
            },
        },
        beat_schedule_filename=f"{settings.home}/celerybeat-schedule",
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than the longest retry countdown, or Redis redelivers in a loop.
        celery.conf.broker_transport_options = {"visibility_timeout": 7200}
    return celery


app = make_app(runtime.settings)


@worker_process_init.connect
def _dispose_inherited_pools(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    if "site" in runtime.__dict__:
        runtime.site.db.dispose(close=False)


@worker_process_init.connect
def _freeze_startup_heap(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    # What the process inherited lives as long as it: full collections need
    # not walk it again on every page of rows a pull builds.
    gc.freeze()
