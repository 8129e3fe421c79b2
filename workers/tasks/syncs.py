"""The beat job that starts scheduled syncs (shared.data.receiver.syncs)."""

from __future__ import annotations

from shared import dispatch
from shared.data.receiver import syncs
from workers.base import SiteTask
from workers.celery_app import app


@app.task(name=dispatch.RUN_SYNCS, bind=True, acks_late=True, time_limit=60)
def run_syncs(self: SiteTask) -> int:
    return syncs.tick(self.runtime.site)
