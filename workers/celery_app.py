"""The Celery app, its configuration, queues and beat schedule.

``celery -A workers.celery_app`` needs a module-level app, so one is made here
from the environment's settings; the runtime tasks use (database, peer client)
is not: ``SiteTask`` builds it in the process that runs them.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

from shared import dispatch
from shared.data.receiver import sources
from shared.settings import Settings
from workers.base import SiteTask

log = logging.getLogger("dbsync.workers")


def _every(task: str, seconds: int) -> dict[str, Any]:
    return {"task": task, "schedule": float(seconds), "options": {"expires": seconds}}


def create_app(settings: Settings | None = None) -> Celery:
    """The workers' app for these settings (read from ``SYNC_*`` when not given)."""
    if settings is None:
        settings = Settings.from_env()
        settings.ensure_home()
    celery = Celery("dbsync", task_cls=SiteTask, include=["workers.tasks"])
    celery.conf.update(
        dispatch.celery_config(settings),
        task_default_queue=dispatch.queues(settings)[0],
        task_queues=[
            Queue(q, Exchange(q, type="direct"), routing_key=q)
            for q in dispatch.queues(settings)
        ],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            "verify-connections": _every(
                dispatch.VERIFY_ALL, settings.verify_interval_seconds
            ),
            "expire-connections": _every(
                dispatch.EXPIRE_CONNECTIONS, settings.expire_interval_seconds
            ),
            "sweep-notices": _every(
                dispatch.SWEEP_NOTICES, settings.outbox_sweep_seconds
            ),
        },
        beat_schedule_filename=f"{settings.home}/celerybeat-schedule",
    )
    return celery


app = create_app()


@worker_process_init.connect
def _dispose_inherited_pools(**_kwargs: Any) -> None:
    SiteTask.after_fork()


@worker_process_init.connect
def _freeze_startup_heap(**_kwargs: Any) -> None:
    # What the process inherited lives as long as it: full collections need
    # not walk it again on every page of rows a pull builds.
    gc.freeze()


@worker_process_init.connect
def _quick_thread_switches(**_kwargs: Any) -> None:
    # Process-wide, so set once here rather than from inside a pull: a JSON
    # pull's fetch thread must get the interpreter lock quickly between
    # socket reads (measured in tune_for_pulls' docstring). Tasks of the peer
    # queue are short HTTP calls and do not mind.
    sources.tune_for_pulls()
