"""Beat's scheduler on a Redis broker: celery-redbeat, made to outlive Redis.

Only beat imports this module, and only with a Redis broker (see
workers.celery_app.beat_config): importing redbeat hooks its lock into every
beat's start.
"""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockNotOwnedError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("dbsync.workers")

# How soon beat asks a broker that did not answer again.
BROKER_RETRY_SECONDS = 1


class BrokerScheduler(RedBeatScheduler):
    """celery-redbeat's scheduler that lives through a restart of its Redis.

    A Redis restarted without persistence forgets beat's lock and schedule:
    redbeat's next tick raised LockNotOwnedError and beat exited, so no sweep
    re-sent the notices and pulls the restart had lost. This one takes the
    lock again (waiting, like a standby at start, while another beat of the
    site holds it), installs the schedule again, and goes on. While Redis
    does not answer it waits and asks again instead of exiting.
    """

    _lock_lost = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self._lock_lost and self.lock is not None:
                self.lock.acquire()
                self._lock_lost = False
                self.setup_schedule()
                log.warning("beat: lock taken again, schedule installed again")
            return float(super().tick(*args, **kwargs))
        except LockNotOwnedError:
            log.warning("beat: its lock is gone from the broker; taking it again")
            self._lock_lost = True
            return 0.0
        except (RedisConnectionError, RedisTimeoutError) as ex:
            log.warning("beat: broker unreachable (%s); trying again", ex)
            return float(BROKER_RETRY_SECONDS)
