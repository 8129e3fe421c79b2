"""Fixed-window counters shared by every web process, kept in the state database.

Each call runs in its own short transaction so a refusal that rolls back the
request still counts.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.state.models import Counter


def ensure(session: Session, key: str) -> None:
    """Make sure the counter row exists, whoever else is making it right now.

    Two first requests at once would otherwise both insert it and one would
    fail on the key (a 500 for the first concurrent pages of a connection).
    """
    dialect = session.get_bind().dialect.name
    fresh = {"key": key, "window_start": utcnow(), "count": 0}
    if dialect == "postgresql":
        session.execute(
            pg_insert(Counter)
            .values(fresh)
            .on_conflict_do_nothing(index_elements=["key"])
        )
    elif dialect == "sqlite":
        session.execute(
            sqlite_insert(Counter)
            .values(fresh)
            .on_conflict_do_nothing(index_elements=["key"])
        )


def _load(session: Session, key: str, window: int) -> Counter:
    now = utcnow()
    dialect = session.get_bind().dialect.name
    # Callers racing on a new key then all lock the same row.
    ensure(session, key)
    stmt = select(Counter).where(Counter.key == key)
    if dialect == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        row = Counter(key=key, window_start=now, count=0)
        session.add(row)
    elif row.window_start + dt.timedelta(seconds=window) <= now:
        row.window_start = now
        row.count = 0
    return row


def retry_after(engine: Engine, key: str, limit: int, window: int) -> int | None:
    """Seconds until the window resets when ``limit`` is already reached, else None."""
    with Session(engine) as session:
        row = session.get(Counter, key)
        if row is None:
            return None
        remaining = (
            row.window_start + dt.timedelta(seconds=window) - utcnow()
        ).total_seconds()
        if remaining <= 0 or row.count < limit:
            return None
        return max(1, int(remaining + 0.999))


def hit(engine: Engine, key: str, window: int) -> tuple[int, int]:
    """Count one event; return (count in window, seconds left in window)."""
    with Session(engine) as session, session.begin():
        row = _load(session, key, window)
        row.count += 1
        left = (
            row.window_start + dt.timedelta(seconds=window) - utcnow()
        ).total_seconds()
        return row.count, max(1, int(left + 0.999))


def take(engine: Engine, key: str, limit: int, window: int) -> int | None:
    """Count one request if the window has room; else return seconds to wait."""
    with Session(engine) as session, session.begin():
        row = _load(session, key, window)
        left = (
            row.window_start + dt.timedelta(seconds=window) - utcnow()
        ).total_seconds()
        if row.count >= limit:
            return max(1, int(left + 0.999))
        row.count += 1
        return None


def give_back(engine: Engine, key: str) -> None:
    """Return one count taken by ``take`` (the event turned out not to count)."""
    with Session(engine) as session, session.begin():
        stmt = select(Counter).where(Counter.key == key)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = session.scalar(stmt)
        if row is not None and row.count > 0:
            row.count -= 1


def take_all(engine: Engine, limits: list[tuple[str, int, int]]) -> int | None:
    """``take`` for several (key, limit, window) in one transaction: each is
    counted only if all have room; else the seconds to wait for the first
    that has none."""
    with Session(engine) as session, session.begin():
        # Locked in key order, so two callers never wait on each other in turn.
        rows = {key: _load(session, key, window) for key, _, window in sorted(limits)}
        for key, limit, window in limits:
            row = rows[key]
            if row.count >= limit:
                left = (
                    row.window_start + dt.timedelta(seconds=window) - utcnow()
                ).total_seconds()
                return max(1, int(left + 0.999))
        for row in rows.values():
            row.count += 1
        return None
