"""Tasks on the ``pull`` queue: table pulls, long and heavy."""

from __future__ import annotations

from shared import dispatch
from shared.data.receiver import pulls
from workers.base import SiteTask
from workers.celery_app import app


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
