"""Beat on a Redis broker lives through a restart of that Redis.

A Redis without persistence forgets beat's lock and schedule when it restarts;
redbeat's scheduler then raised LockNotOwnedError and beat exited, so nothing
re-sent what the restart lost. The end-to-end proof is in
tests/e2e/test_faults.py; this drives the scheduler itself, tick by tick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import beat
from redbeat.schedulers import acquire_distributed_beat_lock

from shared import dispatch
from tests.e2e.faults import RedisServer
from tests.helpers import make_settings
from workers.beat_scheduler import BROKER_RETRY_SECONDS, BrokerScheduler
from workers.celery_app import create_app


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


JOBS = {dispatch.VERIFY_ALL, dispatch.EXPIRE_CONNECTIONS, dispatch.SWEEP_NOTICES}


def sends_jobs(scheduler: BrokerScheduler, server: RedisServer) -> None:
    """Tick as beat does until verify, expiry and the sweep are on the queue."""
    deadline = time.monotonic() + 10
    while not JOBS <= set(server.queued("t.peer")):
        assert time.monotonic() < deadline, server.queued("t.peer")
        time.sleep(min(scheduler.tick(), 0.2))


def test_beat_takes_its_lock_and_schedule_again_after_redis_restarts(
    own_redis: RedisServer,
) -> None:
    settings = make_settings(
        "sqlite://",
        SYNC_BROKER_URL=f"{own_redis.url}/0",
        SYNC_QUEUE_PREFIX="t.",
        SYNC_VERIFY_INTERVAL_SECONDS="1",
        SYNC_EXPIRE_INTERVAL_SECONDS="1",
        SYNC_OUTBOX_SWEEP_SECONDS="1",
    )
    app = create_app(settings)
    # As `celery beat` builds it: the scheduler named by the configuration.
    service = beat.Service(app=app, scheduler_cls=app.conf.beat_scheduler)
    scheduler = service.scheduler
    assert isinstance(scheduler, BrokerScheduler)
    acquire_distributed_beat_lock(sender=service)  # as at beat's start
    client = redis.Redis.from_url(own_redis.url)
    try:
        schedule = scheduler.app.redbeat_conf.schedule_key
        assert scheduler.tick() > 0
        assert scheduler.lock.owned()
        installed = client.zcard(schedule)  # our 3 jobs and celery's own
        assert installed >= 3
        sends_jobs(scheduler, own_redis)

        own_redis.stop()
        assert scheduler.tick() == BROKER_RETRY_SECONDS
        own_redis.start()
        assert client.zcard(schedule) == 0 and own_redis.queued("t.peer") == []
        assert scheduler.tick() == 0.0  # the lock is gone: take it at once
        assert scheduler.tick() > 0
        assert scheduler.lock.owned()
        assert client.zcard(schedule) == installed
        sends_jobs(scheduler, own_redis)
    finally:
        client.close()
        scheduler.close()
