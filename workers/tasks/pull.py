"""Tasks on the ``pull`` queue: table pulls, long and heavy."""

from __future__ import annotations

import os
import socket

from shared.data.receiver import pulls
from workers.celery_app import app, runtime

OWNER = f"{socket.gethostname()}:{os.getpid()}"


@app.task(
    name="dbsync.run_pull",
    bind=True,
    acks_late=True,
    # Each run resumes from the checkpoints; attempts are bounded by
    # SYNC_PULL_MAX_ATTEMPTS on the transfer itself.
    max_retries=None,
    time_limit=6 * 3600,
)
def run_pull(self, transfer_id: str) -> str:  # type: ignore[no-untyped-def]
    outcome = pulls.run(
        runtime.site, runtime.peer, transfer_id, f"{OWNER}:{self.request.id}"
    )
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state
