"""Tasks on the ``pull`` queue: table pulls, long and heavy."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from shared import dispatch
from shared.context import Site
from shared.data.receiver import pulls
from workers.base import SiteTask
from workers.celery_app import app

log = logging.getLogger("dbsync.tasks")


@app.task(
    name=dispatch.RUN_PULL,
    bind=True,
    acks_late=True,
    # Each run resumes from the checkpoints; attempts are bounded by
    # SYNC_PULL_MAX_ATTEMPTS on the transfer itself.
    max_retries=None,
    time_limit=6 * 3600,
)
def run_pull(self: SiteTask, transfer_id: str) -> str:
    rt = self.runtime
    return self.conclude(pulls.run(rt.site, rt.peer, transfer_id, self.lease_owner))


def take_up_orphans(site: Site, *, every_held: bool = False) -> int:
    """Queue a run of every pull whose worker stopped renewing its lease.

    Each run is due when the lease lapses: its claim then succeeds if the
    holder is dead and finds the lease renewed if it was only slow.
    """
    orphans = pulls.orphaned(site, every_held=every_held)
    for transfer_id, lapses_in in orphans:
        # A second more, so the claim comes after the lapse, not on its edge.
        countdown = lapses_in + 1 if lapses_in else 0
        run_pull.apply_async(
            args=[transfer_id], queue=site.settings.pull_queue, countdown=countdown
        )
    if orphans:
        log.info("taking up %d pull(s) whose worker stopped", len(orphans))
    return len(orphans)


@worker_ready.connect
def _take_up_orphans_at_start(sender: Any = None, **_kwargs: Any) -> None:
    # A worker that starts is often the replacement of one that died: it
    # takes up that worker's pulls now, not a sweep interval later.
    queues = getattr(getattr(sender, "app", app).amqp.queues, "consume_from", None)
    site = run_pull.runtime.site
    if queues is not None and site.settings.pull_queue not in queues:
        return
    try:
        take_up_orphans(site, every_held=True)
        for transfer_id in pulls.due(site, grace_seconds=0):
            site.dispatcher.run_pull(transfer_id)
    except Exception as ex:
        # Failing here must not stop the worker: beat's sweep finds them too.
        log.warning("could not look for orphaned pulls at start: %s", ex)
