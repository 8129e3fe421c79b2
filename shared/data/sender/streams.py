"""Bound the pull-data answers a sender serves at once: per connection and per site.

Each answer being served (a COPY page streamed, or a JSON page written) holds
a *slot*: a row of the shared counters table (``stream:<connection>:<id>``)
whose ``window_start`` is renewed while the answer is written. Slots are
counted across every web process of the site; one held by a process that
died lapses after ``ttl`` seconds without renewal. A slot is taken in the
request's own transaction, just before it commits the page's counts, behind
a guard row, so two requests never both take the last one; it is released
(one statement) once the answer is written or cut.

A PhoenixKit receiver asks one page at a time; a dbsync receiver asks at
most two at once per running pull (a JSON page is asked for while the one
before it is written). The defaults (4 per connection, 16 per site) leave
room for that and for a page asked again while the cut one is still being
closed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session

from shared.control import counters
from shared.db import utcnow
from shared.errors import ErrorKind, SyncError
from shared.state.models import Counter

log = logging.getLogger("dbsync.streams")

GUARD = "stream-guard"
PREFIX = "stream:"
RETRY_AFTER = 5


def ttl_for(stall_seconds: int) -> int:
    """How long a slot lasts without renewal: well past the longest gap
    between two writes that the stall timeout lets through."""
    return max(120, 4 * stall_seconds)


class StreamSlot:
    """One pull-data answer being served; renew while writing, release once."""

    def __init__(self, engine: Engine, key: str, ttl: int) -> None:
        self._engine = engine
        self.key = key
        self._ttl = ttl
        self._renewed = time.monotonic()
        self._released = False

    def renew(self) -> None:
        """Keep the slot (cheap to call per chunk: writes at most every ttl/4)."""
        if self._released or time.monotonic() - self._renewed < self._ttl / 4:
            return
        self._renewed = time.monotonic()
        try:
            with _autocommit(self._engine) as conn:
                conn.execute(
                    update(Counter)
                    .where(Counter.key == self.key)
                    .values(window_start=utcnow())
                )
        except Exception as ex:  # a missed renewal only lets the slot lapse early
            log.warning("renewing a stream slot failed: %s", ex)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            with _autocommit(self._engine) as conn:
                conn.execute(delete(Counter).where(Counter.key == self.key))
        except Exception as ex:  # it lapses after its ttl
            log.warning("releasing a stream slot failed: %s", ex)


def acquire(
    session: Session,
    connection_id: uuid.UUID,
    *,
    per_connection: int,
    per_site: int,
    ttl: int,
) -> StreamSlot:
    """Take a slot for one answer of ``connection_id`` in ``session``'s
    transaction, or refuse with 503.

    The slot counts once the transaction commits (the caller commits it with
    the page's counts, before the answer is written; a rollback takes it
    back). Writing the guard row first serialises takers until then (a row
    lock on PostgreSQL, the write lock on SQLite): take the slot last, just
    before the commit.
    """
    engine = session.get_bind()
    now = utcnow()
    lapsed = now - dt.timedelta(seconds=ttl)
    mine = f"{PREFIX}{connection_id}:"
    key = f"{mine}{uuid.uuid4()}"
    live = Counter.window_start >= lapsed
    bump = update(Counter).where(Counter.key == GUARD).values(count=Counter.count + 1)
    if session.execute(bump).rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        counters.ensure(session, GUARD)
        session.execute(bump)
    held = session.execute(
        select(
            func.count().filter(live),
            func.count().filter(live, Counter.key.startswith(mine, autoescape=True)),
            func.count().filter(~live),
        ).where(Counter.key.startswith(PREFIX, autoescape=True))
    ).one()
    site_held, connection_held, stale = int(held[0]), int(held[1]), int(held[2])
    if stale:
        session.execute(
            delete(Counter).where(
                Counter.key.startswith(PREFIX, autoescape=True), ~live
            )
        )
    if connection_held >= per_connection:
        raise SyncError(
            ErrorKind.BUSY,
            "Too many concurrent pull-data requests on this connection",
            retry_after=RETRY_AFTER,
        )
    if site_held >= per_site:
        raise SyncError(
            ErrorKind.BUSY,
            "Too many concurrent pull-data requests, retry later",
            retry_after=RETRY_AFTER,
        )
    session.execute(insert(Counter).values(key=key, window_start=now, count=1))
    return StreamSlot(engine, key, ttl)  # type: ignore[arg-type]  # an Engine here


def _autocommit(engine: Engine) -> Connection:
    """One statement on its own: no BEGIN/COMMIT round trips around it."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
