"""Tasks on the ``peer`` queue: notices, verification, expiry and the sweep."""

from __future__ import annotations

from shared import dispatch
from shared.control import healing, health, notices
from shared.data.receiver import pulls
from shared.data.sender import handlers as sender_handlers
from shared.data.sender import tracking
from workers.base import SiteTask
from workers.celery_app import app
from workers.tasks.pull import take_up_orphans


@app.task(
    name=dispatch.DELIVER_NOTICE,
    bind=True,
    acks_late=True,
    # The horizon stored with each notice bounds the retries, not a count.
    max_retries=None,
    time_limit=120,
)
def deliver_notice(self: SiteTask, notice_id: int) -> str:
    rt = self.runtime
    return self.conclude(notices.deliver(rt.site, rt.peer, notice_id))


@app.task(name=dispatch.SWEEP_NOTICES, bind=True, acks_late=True, time_limit=60)
def sweep_notices(self: SiteTask) -> int:
    site = self.runtime.site
    grace = site.settings.outbox_sweep_seconds
    ids = notices.due(site, grace_seconds=grace)
    for notice_id in ids:
        site.dispatcher.deliver_notice(notice_id)
    stalled = pulls.due(site, grace_seconds=grace)
    for transfer_id in stalled:
        site.dispatcher.run_pull(transfer_id)
    orphans = take_up_orphans(site)
    health.record(site.db, self.name)
    return len(ids) + len(stalled) + orphans


@app.task(name=dispatch.VERIFY_ALL, bind=True, acks_late=True, time_limit=60)
def verify_all(self: SiteTask) -> int:
    site = self.runtime.site
    ids = healing.verifiable(site)
    for connection_id in ids:
        verify_connection.apply_async(
            args=[connection_id], queue=site.settings.peer_queue
        )
    health.record(site.db, self.name)
    return len(ids)


@app.task(name=dispatch.VERIFY_CONNECTION, bind=True, acks_late=True, time_limit=120)
def verify_connection(self: SiteTask, connection_id: str) -> str:
    return healing.verify(self.runtime.site, self.runtime.peer, connection_id)


@app.task(name=dispatch.EXPIRE_CONNECTIONS, bind=True, acks_late=True, time_limit=60)
def expire_connections(self: SiteTask) -> int:
    site = self.runtime.site
    expired = healing.expire(site)
    healing.drop_unconfirmed(site)
    with site.db.session() as session:
        sender_handlers.close_stale_send_transfers(
            session, site.settings.send_idle_seconds
        )
    # Change tracking no reader uses any more, or the site no longer wants.
    tracking.tidy(site.db.data_engine, site.settings.tracks_changes)
    health.record(site.db, self.name)
    return expired
