"""Scheduled syncs: pull a receiver connection's tables every so often, by beat.

Beat calls ``tick`` every SYNC_SYNCS_TICK_SECONDS. For each sync it first
notes how its last run (a receive transfer) ended, then starts a new run if
the sync is due, not paused, and its last run has ended: one sync never runs
twice at once. The next run is due ``every_seconds`` after this one started,
counted from now, so runs missed while the site was down make one run when
it returns, not one each. A run that fails (or leaves the table differing
from the sender) counts a failure: the next run waits the interval plus an
exponential backoff (SYNC_RETRY_BASE_SECONDS doubling, at most
SYNC_RETRY_MAX_SECONDS), and the sync shows the run's error until a run
succeeds.

A sync in cursor mode keeps each table's high-water mark (``meta["marks"]``),
taken from a run's transfer when the run ends; the next run pulls only the
rows beyond it (shared.data.receiver.cursor_mode).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.backoff import backoff
from shared.context import Site
from shared.control import audit
from shared.data.receiver import cursor_mode, pulls
from shared.db import parse_uuid, utcnow
from shared.errors import ErrorKind, SyncError
from shared.state.models import STRATEGIES, Connection, Sync, Transfer, TransferTable

log = logging.getLogger("dbsync.syncs")

MODES = ("delta", "full", "cursor")
MIN_EVERY_SECONDS = 1
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> int:
    """Seconds of an interval written ``90``, ``30s``, ``15m``, ``2h`` or ``1d``."""
    match = re.fullmatch(r"\s*(\d{1,7})\s*([smhd]?)\s*", text or "")
    if not match:
        raise SyncError(
            ErrorKind.BAD_REQUEST, "--every takes a number with s, m, h or d (15m)"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < MIN_EVERY_SECONDS:
        raise SyncError(ErrorKind.BAD_REQUEST, "--every must be at least 1 second")
    return seconds


def create(
    session: Session,
    conn: Connection,
    tables: Iterable[str],
    *,
    all_tables: bool,
    every_seconds: int,
    strategy: str | None,
    mode: str,
    mirror_deletes: bool,
    cursor_column: str | None,
    evolve: bool = False,
    actor: str = "operator",
    look_back: str | None = None,
    sender_columns: dict[str, list[dict[str, Any]]] | None = None,
) -> Sync:
    """A new sync, due at once.

    Cursor mode needs ``sender_columns``: the columns of each table named
    (or, with ``all_tables``, of every table offered) from the sender's
    table-schema, for the cursor column to be checked on each (the caller
    asks the sender: no call to a peer is made here).
    """
    if conn.direction != "receiver":
        raise SyncError(ErrorKind.BAD_REQUEST, "Only a receiver connection can sync")
    names = [t.strip() for t in tables if t and t.strip()]
    if bool(names) == bool(all_tables):
        raise SyncError(ErrorKind.BAD_REQUEST, "Name the tables to sync, or use --all")
    refused = sorted(set(names) & pulls.PROTECTED_TABLES)
    if refused:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            f"Refusing to sync into this service's own tables: {', '.join(refused)}",
        )
    strategy = strategy or "overwrite"
    if strategy not in STRATEGIES:
        raise SyncError(
            ErrorKind.BAD_REQUEST, f"strategy must be one of {', '.join(STRATEGIES)}"
        )
    if mode not in MODES:
        raise SyncError(
            ErrorKind.BAD_REQUEST, f"mode must be one of {', '.join(MODES)}"
        )
    meta: dict[str, Any] = {"evolve": evolve}
    if mode == "cursor":
        meta.update(_cursor_options(strategy, cursor_column, look_back, sender_columns))
    elif cursor_column or look_back is not None:
        raise SyncError(
            ErrorKind.BAD_REQUEST, "--cursor-column and --look-back need --mode cursor"
        )
    sync = Sync(
        id=uuid.uuid4(),
        connection_id=conn.id,
        tables=names,
        all_tables=all_tables,
        every_seconds=every_seconds,
        strategy=strategy,
        mode=mode,
        mirror_deletes=mirror_deletes,
        cursor_column=cursor_column if mode == "cursor" else None,
        paused=False,
        next_run_at=utcnow(),
        failures=0,
        runs=0,
        meta=meta,
    )
    session.add(sync)
    session.flush()
    audit.record(
        session,
        actor,
        "sync.created",
        conn,
        sync_id=str(sync.id),
        tables=names or ["*"],
    )
    return sync


def _cursor_options(
    strategy: str,
    column: str | None,
    look_back: str | None,
    sender_columns: dict[str, list[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """Check a cursor sync's options; its look-back, as kept on the sync."""
    if not column:
        raise SyncError(ErrorKind.BAD_REQUEST, "--mode cursor needs --cursor-column")
    if strategy == "append":
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            "--strategy append cannot go with --mode cursor"
            " (rows pulled again would be added again)",
        )
    if sender_columns is None:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            "--mode cursor needs the sender's table schemas to check the column",
        )
    if not sender_columns:
        raise SyncError(ErrorKind.BAD_REQUEST, "The sender offers no table to sync")
    kinds = cursor_mode.check_columns(column, sender_columns, look_back)
    if look_back is None:
        # The default of the column's kind, when every table agrees on one.
        defaults = {cursor_mode.DEFAULT_LOOK_BACK.get(k, "0") for k in kinds.values()}
        look_back = defaults.pop() if len(defaults) == 1 else None
    return {"look_back": look_back.strip() if look_back else look_back, "marks": {}}


def get(session: Session, sync_id: str) -> Sync:
    key = parse_uuid(sync_id)
    sync = session.get(Sync, key) if key is not None else None
    if sync is None:
        raise SyncError(ErrorKind.NOT_FOUND, f"No sync {sync_id}")
    return sync


def every(session: Session) -> list[Sync]:
    return list(session.scalars(select(Sync).order_by(Sync.created_at)))


def describe(session: Session, sync: Sync) -> dict[str, Any]:
    def iso(v: dt.datetime | None) -> str | None:
        return v.isoformat() if v else None

    conn = session.get(Connection, sync.connection_id)
    return {
        "id": str(sync.id),
        "connection_id": str(sync.connection_id),
        "connection": conn.name if conn else None,
        "tables": ["*"] if sync.all_tables else sync.tables,
        "every_seconds": sync.every_seconds,
        "strategy": sync.strategy,
        "mode": sync.mode,
        "mirror_deletes": sync.mirror_deletes,
        "cursor_column": sync.cursor_column,
        "look_back": (sync.meta or {}).get("look_back"),
        "high_water_mark": (sync.meta or {}).get("marks")
        if sync.mode == "cursor"
        else None,
        "evolve": bool((sync.meta or {}).get("evolve")),
        "state": "paused"
        if sync.paused
        else ("backing off" if sync.failures else "active"),
        "paused": sync.paused,
        "next_run_at": iso(sync.next_run_at),
        "last_run_at": iso(sync.last_run_at),
        "last_transfer_id": str(sync.last_transfer_id)
        if sync.last_transfer_id
        else None,
        "last_status": sync.last_status,
        "last_error": sync.last_error,
        "failures": sync.failures,
        "runs": sync.runs,
    }


def set_paused(session: Session, sync: Sync, paused: bool) -> None:
    sync.paused = paused
    if not paused and sync.next_run_at < utcnow():
        sync.next_run_at = utcnow()
    audit.record(
        session,
        "operator",
        "sync.paused" if paused else "sync.resumed",
        None,
        sync_id=str(sync.id),
    )


def run_now(session: Session, sync: Sync) -> None:
    """Make the sync due now (beat starts it at its next tick, after any run
    in progress has ended); a paused sync stays paused."""
    sync.next_run_at = utcnow()
    sync.failures = 0


def delete(session: Session, sync: Sync) -> None:
    audit.record(session, "operator", "sync.deleted", None, sync_id=str(sync.id))
    session.delete(sync)


# -- beat ---------------------------------------------------------------------


def tick(site: Site) -> int:
    """Note ended runs (of paused syncs too) and start the runs that are due;
    how many started."""
    started = 0
    with site.db.session() as session:
        ids = list(session.scalars(select(Sync.id)))
    for sync_id in ids:
        try:
            started += _tick_one(site, sync_id)
        except Exception as ex:  # one broken sync must not stop the others
            log.warning("sync %s: %s", sync_id, ex)
    return started


def _tick_one(site: Site, sync_id: uuid.UUID) -> int:
    with site.db.session() as session:
        query = select(Sync).where(Sync.id == sync_id)
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        sync = session.scalar(query)
        if sync is None:
            return 0
        now = utcnow()
        if sync.last_transfer_id is not None:
            last = session.get(Transfer, sync.last_transfer_id)
            if last is not None and last.status not in pulls.TERMINAL:
                return 0  # never two runs of one sync at once
            if sync.last_status == "running":
                _ended(site, sync, last, now)
                if last is not None and sync.mode == "cursor":
                    _keep_marks(session, sync, last)
        if sync.paused or sync.next_run_at > now:
            return 0
        conn = session.get(Connection, sync.connection_id)
        if conn is None:
            return 0
        if conn.status != "active":
            sync.last_error = f"Connection is {conn.status}, not active"
            sync.next_run_at = now + dt.timedelta(seconds=sync.every_seconds)
            return 0
        transfer = pulls.start(
            session,
            site,
            conn,
            sync.tables,
            all_tables=sync.all_tables,
            strategy=sync.strategy,
            actor="sync",
            sync={
                "sync_id": str(sync.id),
                "mode": sync.mode,
                "mirror_deletes": sync.mirror_deletes,
                "cursor_column": sync.cursor_column,
                "evolve": bool((sync.meta or {}).get("evolve")),
                **(
                    {
                        "look_back": (sync.meta or {}).get("look_back"),
                        "cursor_marks": (sync.meta or {}).get("marks") or {},
                    }
                    if sync.mode == "cursor"
                    else {}
                ),
            },
        )
        sync.last_transfer_id = transfer.id
        sync.last_run_at = now
        sync.last_status = "running"
        sync.runs += 1
        # From now: runs missed while the site was down make one run, not many.
        sync.next_run_at = now + dt.timedelta(seconds=sync.every_seconds)
        return 1


def _keep_marks(session: Session, sync: Sync, last: Transfer) -> None:
    """Take the high-water marks of the tables the run pulled to the end.

    However the run ended (a table that failed, a verification that found a
    difference), a table it pulled to the end saw every row up to its mark:
    the next run starts there. Tables it did not finish keep their mark."""
    completed = set(
        session.scalars(
            select(TransferTable.table_name).where(
                TransferTable.transfer_id == last.id,
                TransferTable.status == "completed",
            )
        )
    )
    found = cursor_mode.marks(last.meta or {}, completed)
    if found:
        meta = dict(sync.meta or {})
        meta["marks"] = {**(meta.get("marks") or {}), **found}
        sync.meta = meta


def _ended(site: Site, sync: Sync, last: Transfer | None, now: dt.datetime) -> None:
    """Record how the last run ended; back off after a failure."""
    if last is None:
        sync.last_status, sync.last_error = "failed", "the run's transfer is gone"
    elif last.status == "completed" and not last.error_message:
        sync.last_status, sync.last_error, sync.failures = "completed", None, 0
        return
    else:
        sync.last_status = "failed" if last.status != "completed" else "differs"
        sync.last_error = last.error_message or last.status
    sync.failures += 1
    s = site.settings
    wait = backoff(sync.failures, s.retry_base_seconds, s.retry_max_seconds)
    ended = (last.completed_at if last else None) or now
    sync.next_run_at = max(
        sync.next_run_at, ended + dt.timedelta(seconds=sync.every_seconds + wait)
    )
