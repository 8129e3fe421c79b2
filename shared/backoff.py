"""Say how long to wait before trying again: exponential, capped, with jitter.

Every retry of this service that waits on its own clock (a notice to a peer,
a pull whose sender is unreachable) waits this long, so that many retries
started by one outage spread out instead of arriving together.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(
    attempts: int,
    base: float,
    cap: float,
    *,
    hint: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``attempts`` tries: ``base * 2**(attempts-1)``,
    at most ``cap``, drawn uniformly from its upper half.

    The lower half is left out so that a retry never comes at once. A
    ``hint`` from the peer (Retry-After) is a floor, itself at most ``cap``.
    ``rand`` (a uniform draw in [0, 1)) lets a test fix the jitter.
    """
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    delay = delay / 2 + rand() * delay / 2
    if hint:
        delay = max(delay, min(hint, cap))
    return delay
