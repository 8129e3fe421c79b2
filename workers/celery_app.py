"""The Celery app, its configuration, queues and beat schedule.

``celery -A workers.celery_app`` needs a module-level app, so one is made here
from the environment's settings; the runtime tasks use (database, peer client)
is not: ``SiteTask`` builds it in the process that runs them.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler
from celery.signals import (
    beat_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
)
from kombu import Exchange, Queue

from shared import dispatch
from shared import logging as site_logging
from shared.control import health
from shared.data.receiver import sources
from shared.db import Database
from shared.settings import Settings
from workers.base import SiteTask

log = logging.getLogger("dbsync.workers")


# How often beat wakes at most, whatever its jobs' intervals. On Redis it renews
# its lock on each wake; the lock lasts BEAT_LOCK_WAKES wakes (at least
# BEAT_MIN_LOCK_SECONDS), so a beat killed without releasing it holds back a
# restarted or standby beat for that long at most: 30 s with the defaults,
# within one notice-sweep interval.
BEAT_MAX_WAKE_SECONDS = 10
BEAT_LOCK_WAKES = 3
BEAT_MIN_LOCK_SECONDS = 30


def _every(task: str, seconds: int) -> dict[str, Any]:
    return {"task": task, "schedule": float(seconds), "options": {"expires": seconds}}


class FileScheduler(PersistentScheduler):
    """Celery's file scheduler that first makes the folder its file goes in.

    Without a Redis broker beat keeps its schedule in a file under the site's
    home; nothing else creates that folder when the databases are not SQLite.
    """

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


def beat_config(settings: Settings) -> dict[str, Any]:
    """Where beat keeps its schedule and how often it wakes, for this broker.

    With Redis the schedule and a lock live on the broker (celery-redbeat), under
    a key prefix per site, so beat needs no folder and two beats of one site
    never both send; beat lives through a restart of Redis
    (workers.beat_scheduler). Other brokers keep Celery's file under the
    site's home.
    """
    jobs = health.beat_jobs(settings)
    wake = max(1, min(BEAT_MAX_WAKE_SECONDS, *jobs.values()))
    config: dict[str, Any] = {
        "beat_schedule": {
            "verify-connections": _every(
                dispatch.VERIFY_ALL, jobs[dispatch.VERIFY_ALL]
            ),
            "expire-connections": _every(
                dispatch.EXPIRE_CONNECTIONS, jobs[dispatch.EXPIRE_CONNECTIONS]
            ),
            "sweep-notices": _every(
                dispatch.SWEEP_NOTICES, jobs[dispatch.SWEEP_NOTICES]
            ),
            "run-syncs": _every(dispatch.RUN_SYNCS, settings.syncs_tick_seconds),
        },
        "beat_max_loop_interval": wake,
    }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        config.update(
            beat_scheduler="workers.beat_scheduler:BrokerScheduler",
            redbeat_redis_url=settings.broker_url,
            redbeat_key_prefix=f"{settings.queue_prefix}redbeat",
            # The broker's transport options are not the client's; said
            # outright, or redbeat warns at every start that it will stop
            # falling back to them.
            redbeat_redis_options={},
            redbeat_lock_timeout=max(BEAT_MIN_LOCK_SECONDS, BEAT_LOCK_WAKES * wake),
        )
    else:
        config.update(
            beat_scheduler="workers.celery_app:FileScheduler",
            beat_schedule_filename=str(Path(settings.home) / "celerybeat-schedule"),
        )
    return config


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
        **beat_config(settings),
    )
    return celery


app = create_app()


@beat_init.connect
def _record_beat_start(**_kwargs: Any) -> None:
    # Readiness counts a job that has not run yet as on time for three of its
    # intervals after this; a site with no such row says beat never started.
    settings = Settings.from_env()
    db = Database(settings.database_url, settings.data_database_url)
    try:
        health.record(db, health.BEAT_STARTED)
    except Exception as ex:  # beat must run even when the state database is down
        log.warning("beat: could not record its start: %s", ex)
    finally:
        db.dispose()


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


if site_logging.log_format() == "json":
    # Configured now, before the worker warns of anything on its way up, and
    # connected only for JSON: a receiver of setup_logging replaces Celery's
    # own configuration of its loggers (the plain format keeps Celery's).
    @setup_logging.connect
    def _json_logging(loglevel: Any = None, **_kwargs: Any) -> None:
        site_logging.configure_logging()

    site_logging.configure_logging()


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    site_logging.bind(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect
def _unbind_task(**_kwargs: Any) -> None:
    site_logging.unbind()
