"""Tell whether this site can do its work: databases, broker, migrations, beat.

Orchestrators ask ``/readyz`` and operators ask ``dbsync status``; both run
these checks. Each runs in its own thread under one deadline, so a dependency
that hangs answers as a failure instead of hanging the probe.

Beat itself writes nothing anyone reads, so every job it drives records its
run in ``dbsync_beat_heartbeats`` and beat records its start there. A job is
late once it has not run for ``MISSED_INTERVALS`` of its intervals. A job that
has not run since beat started counts as on time for as long, so a fresh or
restarted site is ready as soon as beat is up; a site whose beat never started
is not ready.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from sqlalchemy import Engine, Table, create_engine, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import NullPool

from shared import dispatch
from shared.context import Site
from shared.db import Database, utcnow
from shared.settings import Settings
from shared.state.models import BeatHeartbeat

log = logging.getLogger("dbsync.health")

MISSED_INTERVALS = 3
BEAT_STARTED = "beat_started"
"""The heartbeat row beat writes when it starts (not a job)."""


def beat_jobs(settings: Settings) -> dict[str, int]:
    """Each job beat drives, by task name, with its interval in seconds.

    The beat schedule is built from this, so the check and the schedule agree.
    """
    return {
        dispatch.VERIFY_ALL: settings.verify_interval_seconds,
        dispatch.EXPIRE_CONNECTIONS: settings.expire_interval_seconds,
        dispatch.SWEEP_NOTICES: settings.outbox_sweep_seconds,
    }


def record(db: Database, job: str) -> None:
    """Note that ``job`` ran (or beat started) now; concurrent writers both count."""
    table = BeatHeartbeat.__table__
    assert isinstance(table, Table)
    now = utcnow()
    with db.engine.begin() as conn:
        insert = (
            postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        )
        stmt = insert(table).values(job=job, last_run_at=now, runs=1)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[table.c.job],
                set_={"last_run_at": now, "runs": table.c.runs + 1},
            )
        )


@dataclass(frozen=True)
class Check:
    """One check's outcome: its name, whether it passed, why not, and details."""

    name: str
    ok: bool
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": "ok" if self.ok else "fail"}
        if self.detail:
            body["detail"] = self.detail
        return {**body, **self.facts}


@dataclass(frozen=True)
class Report:
    """Every check of one readiness question, in a fixed order."""

    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ready" if self.ready else "not_ready"}
        if not self.ready:
            body["failing"] = self.failing
        body["checks"] = {c.name: c.body() for c in self.checks}
        return body


def _select_one(engine: Engine) -> Check:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return Check("", True)


def _broker(settings: Settings, timeout: float) -> Check:
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            client.ping()
        finally:
            client.close()
    elif url.startswith("sqla+"):
        engine = create_engine(url.removeprefix("sqla+"), poolclass=NullPool)
        try:
            _select_one(engine)
        finally:
            engine.dispose()
    else:
        from kombu import Connection

        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    return Check("", True)


@cache
def _code_heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    from shared.state.migrate import MIGRATIONS

    return frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


def _migrations(engine: Engine) -> Check:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        current = frozenset(MigrationContext.configure(conn).get_current_heads())
    expected = _code_heads()
    facts = {"database": sorted(current), "expected": sorted(expected)}
    if current == expected:
        return Check("", True, facts=facts)
    return Check(
        "",
        False,
        f"database at {', '.join(sorted(current)) or 'no revision'}, this code"
        f" needs {', '.join(sorted(expected))}: run `dbsync db upgrade`",
        facts,
    )


def beat_check(
    engine: Engine, settings: Settings, now: dt.datetime | None = None
) -> Check:
    """Pass when every beat job ran within its last ``MISSED_INTERVALS`` intervals."""
    now = now or utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(BeatHeartbeat.job, BeatHeartbeat.last_run_at, BeatHeartbeat.runs)
        ).all()
    seen = {job: (at, runs) for job, at, runs in rows}
    started = seen.get(BEAT_STARTED, (None, 0))[0]
    jobs: dict[str, dict[str, Any]] = {}
    late: list[str] = []
    for job, interval in beat_jobs(settings).items():
        last, runs = seen.get(job, (None, 0))
        allowed = dt.timedelta(seconds=MISSED_INTERVALS * interval)
        since = max((t for t in (last, started) if t is not None), default=None)
        on_time = since is not None and now - since <= allowed
        jobs[job] = {
            "state": "ok" if on_time else "late",
            "interval_seconds": interval,
            "last_run_at": last.isoformat() if last else None,
            "runs": runs,
        }
        if not on_time:
            ago = f"{int((now - last).total_seconds())} s ago" if last else "never"
            late.append(f"{job} last ran {ago} (every {interval} s)")
    facts = {
        "started_at": started.isoformat() if started else None,
        "jobs": jobs,
    }
    if not late:
        return Check("", True, facts=facts)
    if started is None and not any(job in seen for job in jobs):
        detail = "beat has never started on this site"
    else:
        detail = (
            f"beat has missed {MISSED_INTERVALS} intervals: {'; '.join(late)};"
            " is `dbsync beat` running, with a worker on the peer queue?"
        )
    return Check("", False, detail, facts)


def readiness(site: Site) -> Report:
    """Run every check at once, each bounded by ``health_timeout_seconds``."""
    settings = site.settings
    timeout = float(settings.health_timeout_seconds)
    checks: dict[str, Callable[[], Check]] = {
        "state_database": lambda: _select_one(site.db.engine),
        "data_database": lambda: _select_one(site.db.data_engine),
        "broker": lambda: _broker(settings, timeout),
        "migrations": lambda: _migrations(site.db.engine),
        "beat": lambda: beat_check(site.db.engine, settings),
    }
    # Not a context manager: leaving one waits for every thread, and a hung
    # dependency must not hold the answer past the deadline.
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="health")
    try:
        futures = {name: pool.submit(fn) for name, fn in checks.items()}
        wait(futures.values(), timeout=timeout)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    results = []
    for name, future in futures.items():
        if not future.done():
            results.append(Check(name, False, f"no answer within {timeout:g} s"))
            continue
        error = future.exception()
        if error is not None:
            log.warning("health check %s failed: %s", name, error)
            results.append(Check(name, False, _first_line(error)))
            continue
        results.append(replace(future.result(), name=name))
    return Report(results)


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    message = str(orig if orig is not None else error).strip()
    first = message.splitlines()[0] if message else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
