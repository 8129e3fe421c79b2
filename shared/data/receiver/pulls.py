"""Pull tables from a sender into the data database, page by page, resumably.

A transfer names the tables; the pull orders them by foreign-key dependency,
creates missing ones from the sender's schema when allowed, and then, table by
table, lets a page source (shared.data.receiver.sources: COPY data between two
PostgreSQL sites, JSON rows otherwise) feed the writer
(shared.data.receiver.writer), recording progress as it goes. The page and its
checkpoint commit together in the data database (see
shared.data.receiver.checkpoints), so a killed worker resumes exactly where the
last commit left it.

While a run works it holds the transfer's lease, which a heartbeat thread
renews every few seconds whatever the page length (``Lease``). A worker that
dies stops renewing, so its lease lapses within SYNC_PULL_LEASE_SECONDS and
another worker takes the transfer up (``orphaned``, ``due``). A worker whose
lease was taken over writes no further page: each page's transaction checks
that the checkpoint is still the one this run loaded and that the lease is
still its own before it commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection as DbConnection
from sqlalchemy import CursorResult, exists, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from shared.backoff import backoff
from shared.context import Site
from shared.control import audit
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.data import copy_format, ddl, wire
from shared.data.receiver import bulk_in, checkpoints, cursor_mode, sources, verify
from shared.data.receiver import copy_in as copyin
from shared.data.receiver.pages import ImportRefused, Page, PageResult, check_append
from shared.data.receiver.sources import CopySource, JsonSource, Sender
from shared.data.receiver.writer import Writer
from shared.data.schema import TableInfo, TableNotFound, plain_name, quote_driver
from shared.data.sender import tracking
from shared.db import after_commit, utcnow
from shared.errors import ErrorKind, SyncError
from shared.state.models import (
    OWN_TABLES,
    STRATEGIES,
    Connection,
    Transfer,
    TransferTable,
)
from shared.untrusted import safe_text

log = logging.getLogger("dbsync.pulls")

TERMINAL = ("completed", "failed", "cancelled")
PROTECTED_TABLES = frozenset(
    OWN_TABLES | tracking.TABLES | {checkpoints.CHECKPOINT_TABLE, "alembic_version"}
)


class PullFailed(Exception):
    """A permanent failure: the transfer ends with this message."""


class LeaseLost(Exception):
    """Another worker holds the transfer now: this run stops without writing."""


@dataclass(frozen=True)
class Outcome:
    state: str
    retry_in: float | None = None


MAX_BIGINT = 2**63 - 1
MAX_CURSOR_BYTES = 64 * 1024  # a keyset cursor is one row's key, however wide


@dataclass(frozen=True)
class Offered:
    """One table of a sender's list-tables answer, as far as a pull uses it."""

    name: str
    depends_on: list[str]
    row_count: int | None
    checksum: str | None = None  # PhoenixKit's md5 of the rows' text, or "empty"


def from_phoenixkit(answer: dict[str, Any]) -> bool:
    """Whether a list-tables answer is PhoenixKit's: its entries carry no
    ``primary_key`` (dbsync's always do), and its pull-data pages never say
    whether more follows."""
    tables = answer.get("tables")
    return (
        isinstance(tables, list)
        and bool(tables)
        and all(isinstance(t, dict) and "primary_key" not in t for t in tables)
    )


def _is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def offered_tables(answer: dict[str, Any]) -> dict[str, Offered]:
    """The tables of a list-tables answer by name; PullFailed if it is malformed.

    The answer is the sender's to choose: every field a pull uses is checked
    for its shape here, so that a wrong one fails the transfer with the
    reason instead of escaping from the run as a crash.
    """
    tables = answer.get("tables")
    if not isinstance(tables, list):
        raise PullFailed("list-tables: the sender's answer has no list of tables")
    offered: dict[str, Offered] = {}
    for entry in tables:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        name = entry["name"]
        if not plain_name(name):
            raise PullFailed(
                f"list-tables: the sender offers a table named {name[:80]!r},"
                " which this site does not take"
            )
        depends_on = entry.get("depends_on")
        if depends_on is None:
            depends_on = []
        if not isinstance(depends_on, list) or not all(
            isinstance(d, str) for d in depends_on
        ):
            raise PullFailed(
                f"list-tables: depends_on of {name} is not a list of table names"
            )
        rows = entry.get("row_count")
        if rows is not None and (type(rows) is not int or not 0 <= rows <= MAX_BIGINT):
            raise PullFailed(
                f"list-tables: row_count of {name} is not a count"
                f" ({safe_text(repr(rows), 40)})"
            )
        checksum = entry.get("checksum")
        if not (
            isinstance(checksum, str) and (checksum == "empty" or _is_md5(checksum))
        ):
            checksum = None
        offered[name] = Offered(name, depends_on, rows, checksum)
    return offered


# -- creating a transfer (operator side) -----------------------------------------


def start(
    session: Session,
    site: Site,
    conn: Connection,
    tables: Iterable[str],
    *,
    all_tables: bool = False,
    strategy: str | None = None,
    create_missing: bool | None = None,
    actor: str = "operator",
    sync: dict[str, Any] | None = None,
) -> Transfer:
    """Create a receive transfer and hand it to a pull worker after commit.

    ``sync`` holds the run's options (shared.data.receiver.verify): mode,
    mirror_deletes, and the scheduled sync it belongs to, if any.
    """
    if conn.direction != "receiver":
        raise SyncError(ErrorKind.BAD_REQUEST, "Only a receiver connection can pull")
    if conn.status != "active":
        raise SyncError(ErrorKind.CONFLICT, f"Connection is {conn.status}, not active")
    names = [t.strip() for t in tables if t and t.strip()]
    if not names and not all_tables:
        raise SyncError(ErrorKind.BAD_REQUEST, "Name the tables to pull, or use --all")
    strategy = strategy or conn.default_conflict_strategy or "skip"
    if strategy not in STRATEGIES:
        raise SyncError(
            ErrorKind.BAD_REQUEST, f"strategy must be one of {', '.join(STRATEGIES)}"
        )
    refused = sorted(set(names) & PROTECTED_TABLES)
    if refused:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            f"Refusing to pull into this service's own tables: {', '.join(refused)}",
        )
    transfer = Transfer(
        id=uuid.uuid4(),
        direction="receive",
        connection_id=conn.id,
        connection_name=conn.name,
        remote_site_url=conn.site_url,
        status="pending",
        conflict_strategy=strategy,
        create_missing=conn.create_missing_tables
        if create_missing is None
        else create_missing,
        meta={"requested_tables": names, "all_tables": all_tables, **(sync or {})},
    )
    session.add(transfer)
    session.flush()
    audit.record(
        session,
        actor,
        "transfer.created",
        conn,
        transfer_id=str(transfer.id),
        tables=names or ["*"],
        strategy=strategy,
    )
    transfer_id = str(transfer.id)
    after_commit(session, lambda: site.dispatcher.run_pull(transfer_id))
    return transfer


# -- running a transfer (worker side) --------------------------------------------


def claim(site: Site, transfer_id: uuid.UUID, owner: str) -> bool:
    """Take the transfer's lease unless a live worker holds it."""
    now = utcnow()
    until = now + dt.timedelta(seconds=site.settings.pull_lease_seconds)
    with site.db.session() as session:
        # An UPDATE answers with a CursorResult, which has the row count.
        result = cast(
            "CursorResult[Any]",
            session.execute(
                update(Transfer)
                .where(
                    Transfer.id == transfer_id,
                    Transfer.status.not_in(TERMINAL),
                    (Transfer.lease_until.is_(None))
                    | (Transfer.lease_until < now)
                    | (Transfer.lease_owner == owner),
                )
                .values(lease_owner=owner, lease_until=until)
            ),
        )
        return result.rowcount == 1


def _renew(
    conn: DbConnection | Session, site: Site, tid: uuid.UUID, owner: str
) -> bool:
    """Extend the lease if this owner still holds it on an unfinished transfer."""
    until = utcnow() + dt.timedelta(seconds=site.settings.pull_lease_seconds)
    result = cast(
        "CursorResult[Any]",
        conn.execute(
            update(Transfer)
            .where(
                Transfer.id == tid,
                Transfer.lease_owner == owner,
                Transfer.status.not_in(TERMINAL),
            )
            .values(lease_until=until)
        ),
    )
    return result.rowcount == 1


class Lease:
    """The lease of one run, renewed by a heartbeat thread while the run works.

    Renewing after each page let a long page outlast the lease, and forced a
    long lease, so a dead worker's pull waited minutes. The heartbeat keeps a
    short lease held whatever the page length; ``check`` is the fence a page
    passes before it commits.
    """

    def __init__(self, site: Site, transfer_id: uuid.UUID, owner: str) -> None:
        self.site = site
        self.transfer_id = transfer_id
        self.owner = owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{transfer_id}", daemon=True
        )

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def renew(self) -> bool:
        """Renew the lease now; note its loss when another owner took it."""
        with self.site.db.session() as session:
            held = _renew(session, self.site, self.transfer_id, self.owner)
        if not held:
            self.lost.set()
        return held

    def stop_if_lost(self) -> None:
        """Raise LeaseLost if the heartbeat found the lease taken over."""
        if self.lost.is_set():
            raise LeaseLost(f"transfer {self.transfer_id} is held by another worker")

    def check(self, conn: DbConnection | None = None) -> None:
        """Raise LeaseLost unless this run still holds the lease (renewing it).

        Given the page's connection and the state living in the data
        database, the check is part of the page's transaction: its UPDATE
        holds the transfer's row until the page commits.
        """
        self.stop_if_lost()
        if conn is not None and self.site.db.data_engine is self.site.db.engine:
            held = _renew(conn, self.site, self.transfer_id, self.owner)
            if not held:
                self.lost.set()
        else:
            held = self.renew()
        if not held:
            raise LeaseLost(f"transfer {self.transfer_id} is held by another worker")

    def _beat(self) -> None:
        interval = self.site.settings.pull_heartbeat_interval
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    log.warning(
                        "transfer %s: lease taken over, stopping", self.transfer_id
                    )
                    return
            except SQLAlchemyError as ex:
                # A missed beat is not a lost lease: the next one may land,
                # and the page's own check decides before anything commits.
                log.warning("transfer %s: lease not renewed: %s", self.transfer_id, ex)


def run(site: Site, client: PeerClient, transfer_id: str, owner: str) -> Outcome:
    tid = uuid.UUID(transfer_id)
    if not claim(site, tid, owner):
        return Outcome("busy")
    with Lease(site, tid, owner) as lease:
        try:
            return _run(site, client, tid, lease)
        except LeaseLost as ex:
            log.warning("%s; this run stops", ex)
            _release(site, tid, owner)
            return Outcome("superseded")
        except Exception as ex:
            # Whatever a sender's answer or this site's database did, the run
            # ends in a recorded outcome: a task that raised left its
            # transfer running, to be taken up by the sweep again and again.
            log.exception("transfer %s: unexpected error", tid)
            try:
                return _wait(site, tid, owner, describe_error(ex), None, "Pull failed")
            except LeaseLost as lost:
                log.warning("%s; this run stops", lost)
                return Outcome("superseded")


def describe_error(ex: BaseException) -> str:
    """An unexpected error as a transfer shows it: its type and first line."""
    lines = str(ex).strip().splitlines()
    return f"{type(ex).__name__}: {lines[0]}" if lines else type(ex).__name__


def _release(site: Site, tid: uuid.UUID, owner: str) -> None:
    """Let the lease lapse now if this run still holds it, for the sweep to see."""
    with site.db.session() as session:
        session.execute(
            update(Transfer)
            .where(Transfer.id == tid, Transfer.lease_owner == owner)
            .values(lease_until=utcnow())
        )


def _run(site: Site, client: PeerClient, tid: uuid.UUID, lease: Lease) -> Outcome:
    owner = lease.owner
    with site.db.session() as session:
        transfer = session.get_one(Transfer, tid)
        conn = (
            session.get(Connection, transfer.connection_id)
            if transfer.connection_id
            else None
        )
        if conn is None:
            _fail(session, transfer, "Connection was deleted")
            return Outcome("failed")
        if conn.status != "active":
            _fail(session, transfer, f"Connection is {conn.status} on this site")
            return Outcome("failed")
        if transfer.attempts >= site.settings.pull_max_attempts:
            # Runs that died without a word (a killed worker, a database that
            # went away while recording) still spend their attempts.
            last = transfer.error_message or "no run finished"
            _fail(
                session,
                transfer,
                f"Gave up after {transfer.attempts} attempts: {last}",
            )
            return Outcome("failed")
        transfer.status = "running"
        transfer.started_at = transfer.started_at or utcnow()
        transfer.attempts += 1
        job = _Job(
            site,
            client,
            lease,
            transfer.id,
            conn.site_url,
            conn.peer_prefix,
            conn.auth_token_hash,
            transfer.conflict_strategy or "skip",
            transfer.create_missing,
        )
    try:
        job.plan()
        job.pull_all()
    except PeerUnavailable as ex:
        return _wait(site, tid, owner, str(ex), ex.retry_after)
    except copyin.BrokeOff as ex:
        return _wait(site, tid, owner, str(ex), None)
    except PullFailed as ex:
        with site.db.session() as session:
            _fail(session, _held(session, tid, owner), str(ex))
        return Outcome("failed")
    with site.db.session() as session:
        transfer = _held(session, tid, owner)
        transfer.status = "completed"
        transfer.completed_at = utcnow()
        transfer.eta_seconds = 0
        transfer.lease_owner = transfer.lease_until = None
        audit.record(
            session,
            "system",
            "transfer.completed",
            None,
            transfer_id=str(tid),
            created=transfer.records_created,
            updated=transfer.records_updated,
            skipped=transfer.records_skipped,
            failed=transfer.records_failed,
        )
    return Outcome("completed")


def _held(session: Session, tid: uuid.UUID, owner: str) -> Transfer:
    """The transfer, locked, if this run still holds its lease; else LeaseLost."""
    transfer = session.scalars(
        select(Transfer).where(Transfer.id == tid).with_for_update()
    ).one()
    if transfer.lease_owner != owner:
        raise LeaseLost(f"transfer {tid} is held by another worker")
    return transfer


def _wait(
    site: Site,
    tid: uuid.UUID,
    owner: str,
    error: str,
    hint: float | None,
    final: str = "Sender unreachable",
) -> Outcome:
    """Schedule the next run, or fail the transfer (``final``: why) after its last."""
    s = site.settings
    error = safe_text(error, 500)
    with site.db.session() as session:
        transfer = _held(session, tid, owner)
        if transfer.attempts >= s.pull_max_attempts:
            _fail(session, transfer, f"{final}: {error}")
            return Outcome("failed")
        delay = backoff(
            transfer.attempts, s.retry_base_seconds, s.retry_max_seconds, hint=hint
        )
        transfer.status = "retrying"
        transfer.error_message = f"waiting to retry: {error}"[:500]
        # The lease now marks when to try again, so the sweep leaves it alone.
        transfer.lease_owner = None
        transfer.lease_until = utcnow() + dt.timedelta(seconds=delay)
    return Outcome("retrying", delay)


def _fail(session: Session, transfer: Transfer, message: str) -> None:
    message = safe_text(message, 2000)
    transfer.status = "failed"
    transfer.error_message = message
    transfer.completed_at = utcnow()
    transfer.lease_owner = transfer.lease_until = None
    session.execute(
        update(TransferTable)
        .where(
            TransferTable.transfer_id == transfer.id,
            TransferTable.status != "completed",
        )
        .values(status="failed")
    )
    audit.record(
        session,
        "system",
        "transfer.failed",
        None,
        reason=message[:500],
        transfer_id=str(transfer.id),
    )
    log.warning("transfer failed id=%s error=%s", transfer.id, safe_text(message, 200))


class _Job:
    """One run of one transfer; rebuilt from the checkpoints on every run."""

    def __init__(
        self,
        site: Site,
        client: PeerClient,
        lease: Lease,
        transfer_id: uuid.UUID,
        site_url: str,
        peer_prefix: str | None,
        token_hash: str,
        strategy: str,
        create_missing: bool,
    ):
        self.site = site
        self.sender = Sender(client, site_url, token_hash, peer_prefix)
        self.lease = lease
        self.transfer_id = transfer_id
        self.strategy = strategy
        self.create_missing = create_missing
        self.catalog = site.catalog()
        self.run_started = utcnow()
        self.rows_this_run = 0
        self._schemas: dict[str, Any] = {}
        # The tables of this transfer: the only ones a created table may
        # reference (never this site's other tables).
        self.pull_tables: frozenset[str] = frozenset()
        self._cursors_seen: set[tuple[str, str]] = set()

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # A 429 is the sender pacing us: the sender waits as told and goes on,
        # without spending one of the transfer's attempts. Other transient
        # failures end this run; the task retries it later from the checkpoint.
        try:
            resp = self.sender.post(endpoint, body)
        except PeerRefused as ex:
            raise PullFailed(str(ex)) from None
        if resp.status != 200 or resp.body.get("success") is not True:
            if resp.status == 200 and not isinstance(resp.body.get("error"), str):
                raise PullFailed(f"{endpoint}: the sender's answer is not valid")
            raise PullFailed(resp.error)
        return resp.body

    def plan(self) -> None:
        with self.site.db.session() as session:
            if (
                session.scalar(
                    select(TransferTable.id)
                    .where(TransferTable.transfer_id == self.transfer_id)
                    .limit(1)
                )
                is not None
            ):
                return
            transfer = session.get_one(Transfer, self.transfer_id)
            requested = list(transfer.meta.get("requested_tables") or [])
            all_tables = bool(transfer.meta.get("all_tables"))
        known = verify.known_tables(self, requested, all_tables)
        if known is not None:
            ordered, phoenixkit, offered = known, False, {}
        else:
            answer = self.call("list-tables", {})
            offered = offered_tables(answer)
            phoenixkit = from_phoenixkit(answer)
            if all_tables:
                names = sorted(n for n in offered if n not in PROTECTED_TABLES)
            else:
                missing = [n for n in requested if n not in offered]
                if missing:
                    raise PullFailed(f"Sender does not offer: {', '.join(missing)}")
                names = requested
            ordered = dependency_order(names, {n: offered[n].depends_on for n in names})
        with self.site.db.session() as session:
            transfer = session.get_one(Transfer, self.transfer_id)
            expected = 0
            for position, name in enumerate(ordered):
                rows = offered[name].row_count if name in offered else None
                expected += rows or 0
                session.add(
                    TransferTable(
                        transfer_id=self.transfer_id,
                        table_name=name,
                        position=position,
                        rows_expected=rows,
                    )
                )
            transfer.records_expected = min(expected, MAX_BIGINT)
            transfer.meta = {**transfer.meta, "tables": ordered}
            if phoenixkit:
                transfer.meta = {
                    **transfer.meta,
                    "phoenixkit": True,
                    "checksums": {n: offered[n].checksum for n in ordered},
                }

    def pull_all(self) -> None:
        checkpoints.ensure_table(self.site.db.data_engine)
        with self.site.db.session() as session:
            tables = list(
                session.scalars(
                    select(TransferTable)
                    .where(TransferTable.transfer_id == self.transfer_id)
                    .order_by(TransferTable.position)
                )
            )
        self.pull_tables = frozenset(tt.table_name for tt in tables)
        with self.site.db.session() as session:
            meta = session.get_one(Transfer, self.transfer_id).meta
        self.phoenixkit = bool(meta.get("phoenixkit"))
        self.checksums: dict[str, str | None] = meta.get("checksums") or {}
        self.expected = {tt.table_name: tt.rows_expected for tt in tables}
        for tt in tables:
            if tt.status == "completed":
                continue
            started = time.monotonic()
            if verify.delta_table(self, tt.table_name):
                log.info(
                    "%s: delta run %.2f s",
                    safe_text(tt.table_name, 100),
                    time.monotonic() - started,
                )
                continue
            compared = time.monotonic()
            self.pull_table(tt.table_name)
            pulled = time.monotonic()
            verify.after_full(self, tt.table_name)
            log.info(
                "%s: before the pull %.2f s, pull %.2f s, after it %.2f s",
                safe_text(tt.table_name, 100),
                compared - started,
                pulled - compared,
                time.monotonic() - pulled,
            )
        started = time.monotonic()
        verify.verify_all(self, [tt.table_name for tt in tables])
        log.info("verification %.2f s", time.monotonic() - started)

    def target(self, name: str) -> TableInfo:
        if name in PROTECTED_TABLES:
            raise PullFailed(f"Refusing to write into this service's own table {name}")
        try:
            return self.catalog.describe(name)
        except TableNotFound:
            pass
        if not self.catalog.is_offerable(name):
            raise PullFailed(f"Refusing to write into protected table {name}")
        if not self.create_missing:
            raise PullFailed(
                f"Table {name} does not exist on this site "
                "(pull with --create-missing to create it)"
            )
        schema = self.call("table-schema", {"table_name": name}).get("schema")
        if not isinstance(schema, dict):
            raise PullFailed(f"Sender sent no schema for {name}")
        self._schemas[name] = schema
        with self.site.db.data_engine.begin() as conn:
            try:
                ddl.create_table(
                    conn,
                    name,
                    schema,
                    existing_tables=set(self.catalog.offered_tables()),
                    pull_tables=self.pull_tables,
                )
            except ddl.UnsafeSchema as ex:
                raise PullFailed(f"Cannot create {name}: {ex}") from None
        self.catalog = self.site.catalog()
        log.info("created table %s from the sender's schema", name)
        return self.catalog.describe(name)

    def pull_table(self, name: str) -> None:
        """Feed the table's pages from its source to its writer, each page
        with its checkpoint in one transaction, until the sender has no more."""
        info = self.target(name)
        if self.strategy == "append":
            try:
                check_append(info)
            except ImportRefused as ex:
                raise PullFailed(str(ex)) from None
        cp = checkpoints.load(self.site.db.data_engine, str(self.transfer_id), name)
        if cp.pages == 0 and not cp.done:
            verify.before_full(self, name, info)
        self._progress(name, cp, status="running")
        writer = Writer(info, self.strategy)
        writer.txids = verify.own_txids(self, name)
        since = None if cp.done else cursor_mode.since_for(self, name, info)
        try:
            with self._source(name, info, since) as source:
                while not cp.done:
                    try:
                        page = self._write(source, writer, cp)
                    except copyin.Rejected as ex:
                        # Nothing of the page was kept: ask for it again, staged.
                        log.info("%s; fetching the page again", safe_text(str(ex), 300))
                        source.restage(as_text=ex.as_text)
                        continue
                    self.rows_this_run += page.count
                    cursor_mode.seen(self, name, source)
                    self._progress(
                        name, cp, status="completed" if cp.done else "running"
                    )
                    del page  # written: only one page's rows at a time
                cursor_mode.finish(self, name, source)
        except (PeerRefused, sources.BadAnswer) as ex:
            raise PullFailed(str(ex)) from None
        except ImportRefused as ex:
            raise PullFailed(f"{name}: {ex}") from None
        if self.phoenixkit:
            self._check_whole(name, info, cp)

    def _check_whole(
        self, name: str, info: TableInfo, cp: checkpoints.Checkpoint
    ) -> None:
        """PullFailed, with the numbers, unless every row PhoenixKit listed came.

        A PhoenixKit sender's pages say nothing of the rows still to come:
        the rows received are held to list-tables' row_count, and the table,
        when it holds exactly that many rows, to its md5 checksum computed
        here as PhoenixKit computes it.
        """
        expected = self.expected.get(name)
        problem = None
        if expected is not None and cp.rows_done < expected:
            problem = (
                f"received {cp.rows_done} of the {expected} rows the sender listed"
            )
        else:
            want = self.checksums.get(name)
            got = _md5_if_count(self.site.db.data_engine, info, expected)
            if want is not None and got is not None and got != want:
                problem = f"the table's md5 checksum {got} is not the sender's {want}"
        if problem is None:
            return
        self._progress(name, cp, status="failed")
        raise PullFailed(f"{name} is incomplete: {problem}")

    def _write(
        self,
        source: CopySource | JsonSource,
        writer: Writer,
        cp: checkpoints.Checkpoint,
    ) -> Page:
        """Fetch the page after the checkpoint and write it with the checkpoint
        advanced, in one transaction of the data database."""
        self.lease.stop_if_lost()
        with (
            source.page(cp.cursor) as page,
            self.site.db.data_engine.begin() as conn,
        ):
            seen = self._check_cursor(page, cp)
            expected = self.expected.get(cp.table_name)
            if not page.has_more or (
                # The next page should be the last: the sender's scan then
                # runs while this site writes the last two.
                expected is not None and cp.rows_done + 2 * page.count >= expected
            ):
                verify.prefetch(self, cp.table_name)
            # Fence: the checkpoint must still be the one this run loaded
            # (its row stays locked to the end of the page), and the lease
            # still this run's, or a worker that stalled past its lease would
            # write a page its successor writes too.
            _hold(conn, cp)
            direct = source.may_go_direct(page) and _nothing_in_the_way(
                conn, writer.info, cp
            )
            result = writer.apply(conn, page, direct=direct)
            try:
                _advance(conn, cp, result, page)
            except IntegrityError:
                raise LeaseLost(
                    f"another worker wrote the first page of {cp.table_name}"
                ) from None
            self.lease.check(conn)
        if seen is not None:  # committed: a page fetched again may repeat it
            self._cursors_seen.add(seen)
        return page

    def _check_cursor(
        self, page: Page, cp: checkpoints.Checkpoint
    ) -> tuple[str, str] | None:
        """PullFailed unless a page that says more follows moves the pull on;
        the cursor's key, to remember once the page is committed.

        The sender's cursor decides what is asked next: one that repeats, or
        goes back to where the pull was, or a page that says more follows
        without a row, would have a pull ask for pages forever.
        """
        if not page.has_more:
            return None
        table = cp.table_name
        if page.count == 0:
            raise PullFailed(f"{table}: the sender sent an empty page and more to come")
        cursor = page.next_cursor
        if not _plain_cursor(cursor):
            raise PullFailed(f"{table}: the sender's cursor is not a key")
        key = wire.canonical_json(cursor)
        if len(key) > MAX_CURSOR_BYTES:
            raise PullFailed(f"{table}: the sender's cursor is too long")
        if cursor == cp.cursor or (table, key) in self._cursors_seen:
            raise PullFailed(
                f"{table}: the sender's cursor repeats (page {cp.pages + 1})"
            )
        if _goes_back(cp.cursor, cursor):
            raise PullFailed(
                f"{table}: the sender's cursor goes back (page {cp.pages + 1})"
            )
        return table, key

    def _source(
        self, name: str, info: TableInfo, since: dict[str, Any] | None = None
    ) -> CopySource | JsonSource:
        """Where the table's pages come from: table-records from a PhoenixKit
        sender, COPY data when this site's data database takes it, JSON rows
        otherwise; with ``since`` (cursor mode) only the rows it keeps."""
        if self.phoenixkit:
            # PhoenixKit orders by its first key column, falling back to "id".
            key = info.primary_key[0] if info.primary_key else "id"
            kinds = {c.name: c.kind for c in info.columns}
            return sources.RecordsSource(
                self.sender, name, self.strategy, key, kinds.get(key, "other")
            )
        plan = self._bulk_plan(name, info)
        if plan is not None:
            return CopySource(
                self.sender,
                name,
                self.strategy,
                plan,
                self.site.settings.bulk_page_rows,
                since,
            )
        return JsonSource(
            self.sender,
            name,
            self.strategy,
            direct=self._copies_like_insert(info),
            since=since,
        )

    def _copies_like_insert(self, info: TableInfo) -> bool:
        """Whether JSON pages may be copied straight into an empty target."""
        engine = self.site.db.data_engine
        if self.strategy == "append" or engine.dialect.name != "postgresql":
            return False
        with engine.connect() as conn:
            return copyin.copies_like_insert(conn, info)

    def _bulk_plan(self, name: str, info: TableInfo) -> bulk_in.Plan | None:
        """The COPY format to ask for, when this site's data database takes one."""
        engine = self.site.db.data_engine
        wanted = self.site.settings.pull_format
        if wanted == "json" or engine.dialect.name != "postgresql":
            return None
        schema = self._schemas.get(name)
        if schema is None:
            try:
                schema = self.call("table-schema", {"table_name": name}).get("schema")
            except PullFailed as ex:
                # Without the sender's types only the text format is safe.
                log.info(
                    "no schema for %s (%s): asking for text COPY",
                    name,
                    safe_text(str(ex), 300),
                )
        with engine.connect() as conn:
            plan = bulk_in.plan(conn, info, schema, self.strategy)
        if plan is not None and wanted == copy_format.TEXT:
            plan = bulk_in.Plan(copy_format.TEXT, plan.direct)
        log.info("pulling %s as %s", name, plan.wire_format if plan else "json")
        return plan

    def _progress(self, name: str, cp: checkpoints.Checkpoint, status: str) -> None:
        """Mirror the checkpoint into the state database while the lease is ours."""
        now = utcnow()
        with self.site.db.session() as session:
            transfer = _held(session, self.transfer_id, self.lease.owner)
            tt = session.scalars(
                select(TransferTable).where(
                    TransferTable.transfer_id == self.transfer_id,
                    TransferTable.table_name == name,
                )
            ).one()
            tt.status = status
            tt.cursor = cp.cursor
            tt.pages_done, tt.rows_done = cp.pages, cp.rows_done
            tt.created, tt.updated, tt.skipped, tt.failed = (
                cp.created,
                cp.updated,
                cp.skipped,
                cp.failed,
            )
            tt.errors = cp.errors
            tt.started_at = tt.started_at or now
            if status == "completed":
                tt.finished_at = now
            session.flush()
            totals = (
                session.execute(
                    select(TransferTable).where(
                        TransferTable.transfer_id == self.transfer_id
                    )
                )
                .scalars()
                .all()
            )
            transfer.records_transferred = sum(t.rows_done for t in totals)
            transfer.records_created = sum(t.created for t in totals)
            transfer.records_updated = sum(t.updated for t in totals)
            transfer.records_skipped = sum(t.skipped for t in totals)
            transfer.records_failed = sum(t.failed for t in totals)
            elapsed = (now - self.run_started).total_seconds()
            if elapsed > 0 and self.rows_this_run:
                rate = self.rows_this_run / elapsed
                transfer.rows_per_second = round(rate, 1)
                left = max(0, transfer.records_expected - transfer.records_transferred)
                transfer.eta_seconds = round(left / rate, 1) if rate else None
            transfer.error_message = None
            transfer.status = "running"


def _md5_if_count(engine: Any, info: TableInfo, count: int | None) -> str | None:
    """PhoenixKit's checksum of the table (in a UTC session), when it holds
    ``count`` rows; None otherwise or off PostgreSQL."""
    if engine.dialect.name != "postgresql" or count is None:
        return None
    table = quote_driver(info.name)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        if conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() != count:
            return None
        digest = conn.exec_driver_sql(
            f"SELECT md5(string_agg(t::text, '' ORDER BY t::text)) FROM {table} t"
        ).scalar()
    return "empty" if digest is None else str(digest)


def _nothing_in_the_way(conn: Any, info: TableInfo, cp: checkpoints.Checkpoint) -> bool:
    """Whether a page may be copied straight into the target.

    True while this table's pull has only created rows, starting from an
    empty table. It is a prediction, not a promise: if a row is in the way
    after all (someone else wrote one) the COPY fails, nothing of the page
    stays, and the page is fetched again and staged.
    """
    if cp.failed or cp.created != cp.rows_done:
        return False
    return cp.pages > 0 or bulk_in.table_is_empty(conn, info)


def _plain_cursor(cursor: Any) -> bool:
    """Whether a cursor is what a keyset cursor is: a list of key values, each
    a JSON scalar that a database can hold (finite, text without NUL)."""
    if not isinstance(cursor, list) or not cursor:
        return False
    for value in cursor:
        if isinstance(value, str):
            if "\x00" in value or not _utf8(value):
                return False
        elif isinstance(value, float):
            if not math.isfinite(value):
                return False
        elif isinstance(value, int):
            if not -MAX_BIGINT - 1 <= value <= MAX_BIGINT:
                return False
        elif value is not None:
            return False
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate
        return False
    return True


def _goes_back(before: Any, after: list[Any]) -> bool:
    """Whether an integer keyset cursor moved backwards (or did not move).

    Only integer keys are compared: text and other keys order by the
    sender's collation, which this site does not know; a cycle among those
    is caught as a repeat.
    """
    if not isinstance(before, list) or len(before) != len(after):
        return False
    if not all(type(v) is int for v in [*before, *after]):
        return False
    return tuple(after) <= tuple(before)


def _hold(conn: DbConnection, cp: checkpoints.Checkpoint) -> None:
    """Lock the table's checkpoint row as this run loaded it, or raise LeaseLost.

    A checkpoint that moved on, or appeared, since means another worker wrote
    a page of this table: this run's view is stale and it must stop.
    """
    table = checkpoints.checkpoints
    key = (table.c.transfer_id == cp.transfer_id) & (
        table.c.table_name == cp.table_name
    )
    if cp.stored:
        result = cast(
            "CursorResult[Any]",
            conn.execute(
                table.update()
                .where(key, table.c.pages == cp.pages)
                .values(pages=table.c.pages)
            ),
        )
        moved = result.rowcount != 1
    else:
        moved = bool(conn.scalar(select(exists().where(key))))
    if moved:
        raise LeaseLost(f"another worker wrote a page of {cp.table_name}")


def _advance(
    conn: Any, cp: checkpoints.Checkpoint, result: PageResult, page: Page
) -> None:
    """Count a page into the checkpoint and save it in the page's transaction."""
    cp.pages += 1
    cp.rows_done += page.count
    cp.created += result.created
    cp.updated += result.updated
    cp.skipped += result.skipped
    cp.failed += result.failed
    cp.bytes_done += page.size
    room = checkpoints.MAX_KEPT_ERRORS - len(cp.errors)
    if room > 0:
        cp.errors.extend(_kept_error(e) for e in result.errors[:room])
    cp.cursor = page.next_cursor if page.has_more else cp.cursor
    cp.done = not page.has_more
    checkpoints.save(conn, cp)


def _kept_error(error: dict[str, Any]) -> dict[str, Any]:
    """A failed row's entry as the checkpoint and the transfer keep it.

    Its key is the sender's value: kept as it came when it is small and
    storable, else as a short text, so that no key a sender makes up (huge,
    deeply nested, with NUL or an unpaired surrogate) can stop the page or
    its progress from being saved.
    """
    key = error.get("key")
    if not (_storable(key, 3) and len(wire.canonical_json(key)) <= 1000):
        key = safe_text(_short_repr(key), 200)
    return {"key": key, "error": safe_text(str(error.get("error")), 500)}


def _storable(value: Any, depth: int) -> bool:
    """Whether a JSON value a sender sent can be stored as JSON as it is."""
    if isinstance(value, str):
        return "\x00" not in value and _utf8(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, int):
        return True
    if depth == 0:
        return False
    if isinstance(value, list):
        return len(value) <= 32 and all(_storable(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 32 and all(
            _storable(k, 0) and _storable(v, depth - 1) for k, v in value.items()
        )
    return False


def _short_repr(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return repr(value if not isinstance(value, str) else value[:200])


def dependency_order(names: list[str], depends_on: dict[str, list[str]]) -> list[str]:
    """Order tables so each comes after the tables it references.

    Only references inside the set count. A cycle cannot be ordered: its tables
    keep their given order (rows whose reference is not there yet are counted
    failed and reported, never hung on).
    """
    wanted = set(names)
    done: list[str] = []
    seen: set[str] = set()
    # Depth first without recursion: a sender's chain of a thousand
    # references must not exhaust the interpreter's stack.
    for root in names:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(_references(root, depends_on, wanted)))]
        while stack:
            name, pending = stack[-1]
            dep = next((d for d in pending if d not in seen), None)
            if dep is None:
                stack.pop()
                done.append(name)
            else:
                seen.add(dep)
                stack.append((dep, iter(_references(dep, depends_on, wanted))))
    return done


def _references(
    name: str, depends_on: dict[str, list[str]], wanted: set[str]
) -> list[str]:
    return [
        d for d in sorted(set(depends_on.get(name, []))) if d in wanted and d != name
    ]


def due(site: Site, grace_seconds: float) -> list[str]:
    """Unfinished transfers nobody holds whose message may be lost.

    A pending transfer no worker claimed, or a retrying one whose time came,
    after ``grace_seconds`` more: its own message normally comes first.
    Transfers a worker held are ``orphaned``'s.
    """
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    with site.db.session() as session:
        rows = session.scalars(
            select(Transfer.id)
            .where(
                Transfer.direction == "receive",
                Transfer.status.not_in(TERMINAL),
                Transfer.lease_owner.is_(None),
                ((Transfer.lease_until.is_(None)) & (Transfer.updated_at < cutoff))
                | (Transfer.lease_until < cutoff),
            )
            .limit(100)
        )
        return [str(r) for r in rows]


def orphaned(site: Site, *, every_held: bool = False) -> list[tuple[str, float]]:
    """Held transfers whose heartbeat stopped, with the seconds until their lease lapses.

    A live run renews its lease every heartbeat interval; one that missed two
    renewals has most likely died. Taking it up when the lease lapses (not a
    sweep interval later) bounds the wait to the lease; if its worker was only
    slow, the claim then finds the lease renewed and nothing happens.
    ``every_held`` lists every held lease: a worker that starts may replace
    one that died a moment ago, before it missed a renewal.
    """
    s = site.settings
    now = utcnow()
    beats = 0 if every_held else 2
    stale = now + dt.timedelta(
        seconds=s.pull_lease_seconds - beats * s.pull_heartbeat_interval + 1
    )
    with site.db.session() as session:
        rows = session.execute(
            select(Transfer.id, Transfer.lease_until)
            .where(
                Transfer.direction == "receive",
                Transfer.status.not_in(TERMINAL),
                Transfer.lease_owner.is_not(None),
                Transfer.lease_until < stale,
            )
            .limit(100)
        ).all()
    return [
        (str(tid), max(0.0, (until - now).total_seconds()) if until else 0.0)
        for tid, until in rows
    ]
