"""Tasks on the ``peer`` queue: notices, verification, expiry and the sweep."""

from __future__ import annotations

import logging

from shared.control import healing, notices
from shared.data.receiver import pulls
from workers.celery_app import app, runtime

log = logging.getLogger("dbsync.tasks")


@app.task(
    name="dbsync.deliver_notice",
    bind=True,
    acks_late=True,
    # The horizon stored with each notice bounds the retries, not a count.
    max_retries=None,
    time_limit=120,
)
def deliver_notice(self, notice_id: int) -> str:  # type: ignore[no-untyped-def]
    outcome = notices.deliver(runtime.site, runtime.peer, notice_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state


@app.task(name="dbsync.sweep_notices", acks_late=True, time_limit=60)
def sweep_notices() -> int:
    ids = notices.due(runtime.site, grace_seconds=runtime.settings.outbox_sweep_seconds)
    for notice_id in ids:
        runtime.site.dispatcher.deliver_notice(notice_id)
    stalled = pulls.due(
        runtime.site, grace_seconds=runtime.settings.outbox_sweep_seconds
    )
    for transfer_id in stalled:
        runtime.site.dispatcher.run_pull(transfer_id)
    return len(ids) + len(stalled)


@app.task(name="dbsync.verify_all", acks_late=True, time_limit=60)
def verify_all() -> int:
    ids = healing.verifiable(runtime.site)
    for connection_id in ids:
        verify_connection.apply_async(
            args=[connection_id], queue=runtime.settings.peer_queue
        )
    return len(ids)


@app.task(name="dbsync.verify_connection", acks_late=True, time_limit=120)
def verify_connection(connection_id: str) -> str:
    return healing.verify(runtime.site, runtime.peer, connection_id)


@app.task(name="dbsync.expire_connections", acks_late=True, time_limit=60)
def expire_connections() -> int:
    return healing.expire(runtime.site)
