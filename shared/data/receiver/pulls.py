"""Pull tables from a sender into the data database, page by page, resumably.

A transfer names the tables; the pull orders them by foreign-key dependency,
creates missing ones from the sender's schema when allowed, and then, table by
table, lets a page source (shared.data.receiver.sources: COPY data between two
PostgreSQL sites, JSON rows otherwise) feed the writer
(shared.data.receiver.writer), recording progress as it goes. The page and its
checkpoint commit together in the data database (see
shared.data.receiver.checkpoints), so a killed worker resumes exactly where the
last commit left it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from shared.backoff import backoff
from shared.context import Site
from shared.control import audit
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.data import copy_format, ddl
from shared.data.receiver import bulk_in, checkpoints, sources
from shared.data.receiver import copy_in as copyin
from shared.data.receiver.pages import ImportRefused, Page, PageResult, check_append
from shared.data.receiver.sources import CopySource, JsonSource, Sender
from shared.data.receiver.writer import Writer
from shared.data.schema import TableInfo, TableNotFound
from shared.db import after_commit, utcnow
from shared.errors import ErrorKind, SyncError
from shared.state.models import (
    OWN_TABLES,
    STRATEGIES,
    Connection,
    Transfer,
    TransferTable,
)

log = logging.getLogger("dbsync.pulls")

TERMINAL = ("completed", "failed", "cancelled")
PROTECTED_TABLES = frozenset(
    OWN_TABLES | {checkpoints.CHECKPOINT_TABLE, "alembic_version"}
)


class PullFailed(Exception):
    """A permanent failure: the transfer ends with this message."""


@dataclass(frozen=True)
class Outcome:
    state: str
    retry_in: float | None = None


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
) -> Transfer:
    """Create a receive transfer and hand it to a pull worker after commit."""
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
        meta={"requested_tables": names, "all_tables": all_tables},
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


def run(site: Site, client: PeerClient, transfer_id: str, owner: str) -> Outcome:
    tid = uuid.UUID(transfer_id)
    if not claim(site, tid, owner):
        return Outcome("busy")
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
        transfer.status = "running"
        transfer.started_at = transfer.started_at or utcnow()
        transfer.attempts += 1
        job = _Job(
            site,
            client,
            owner,
            transfer.id,
            conn.site_url,
            conn.auth_token_hash,
            transfer.conflict_strategy or "skip",
            transfer.create_missing,
        )
    try:
        job.plan()
        job.pull_all()
    except PeerUnavailable as ex:
        return _wait(site, tid, str(ex), ex.retry_after)
    except copyin.BrokeOff as ex:
        return _wait(site, tid, str(ex), None)
    except PullFailed as ex:
        with site.db.session() as session:
            _fail(session, session.get_one(Transfer, tid), str(ex))
        return Outcome("failed")
    with site.db.session() as session:
        transfer = session.get_one(Transfer, tid)
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


def _wait(site: Site, tid: uuid.UUID, error: str, hint: float | None) -> Outcome:
    s = site.settings
    with site.db.session() as session:
        transfer = session.get_one(Transfer, tid)
        if transfer.attempts >= s.pull_max_attempts:
            _fail(session, transfer, f"Sender unreachable: {error}")
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
    transfer.status = "failed"
    transfer.error_message = message[:2000]
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
    log.warning("transfer failed id=%s error=%s", transfer.id, message[:200])


class _Job:
    """One run of one transfer; rebuilt from the checkpoints on every run."""

    def __init__(
        self,
        site: Site,
        client: PeerClient,
        owner: str,
        transfer_id: uuid.UUID,
        site_url: str,
        token_hash: str,
        strategy: str,
        create_missing: bool,
    ):
        self.site = site
        self.sender = Sender(client, site_url, token_hash)
        self.owner = owner
        self.transfer_id = transfer_id
        self.strategy = strategy
        self.create_missing = create_missing
        self.catalog = site.catalog()
        self.run_started = utcnow()
        self.rows_this_run = 0
        self._schemas: dict[str, Any] = {}

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # A 429 is the sender pacing us: the sender waits as told and goes on,
        # without spending one of the transfer's attempts. Other transient
        # failures end this run; the task retries it later from the checkpoint.
        try:
            resp = self.sender.post(endpoint, body)
        except PeerRefused as ex:
            raise PullFailed(str(ex)) from None
        if resp.status != 200 or resp.body.get("success") is not True:
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
        offered = {
            t["name"]: t
            for t in self.call("list-tables", {}).get("tables", [])
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        }
        if all_tables:
            names = sorted(n for n in offered if n not in PROTECTED_TABLES)
        else:
            missing = [n for n in requested if n not in offered]
            if missing:
                raise PullFailed(f"Sender does not offer: {', '.join(missing)}")
            names = requested
        ordered = dependency_order(
            names, {n: offered[n].get("depends_on") or [] for n in names}
        )
        with self.site.db.session() as session:
            transfer = session.get_one(Transfer, self.transfer_id)
            expected = 0
            for position, name in enumerate(ordered):
                rows = offered[name].get("row_count")
                rows = rows if isinstance(rows, int) else None
                expected += rows or 0
                session.add(
                    TransferTable(
                        transfer_id=self.transfer_id,
                        table_name=name,
                        position=position,
                        rows_expected=rows,
                    )
                )
            transfer.records_expected = expected
            transfer.meta = {**transfer.meta, "tables": ordered}

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
        for tt in tables:
            if tt.status != "completed":
                self.pull_table(tt.table_name)

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
        self._progress(name, cp, status="running")
        writer = Writer(info, self.strategy)
        try:
            with self._source(name, info) as source:
                while not cp.done:
                    try:
                        page = self._write(source, writer, cp)
                    except copyin.Rejected as ex:
                        # Nothing of the page was kept: ask for it again, staged.
                        log.info("%s; fetching the page again", ex)
                        source.restage(as_text=ex.as_text)
                        continue
                    self.rows_this_run += page.count
                    self._progress(
                        name, cp, status="completed" if cp.done else "running"
                    )
                    del page  # written: only one page's rows at a time
        except (PeerRefused, sources.BadAnswer) as ex:
            raise PullFailed(str(ex)) from None
        except ImportRefused as ex:
            raise PullFailed(f"{name}: {ex}") from None

    def _write(
        self,
        source: CopySource | JsonSource,
        writer: Writer,
        cp: checkpoints.Checkpoint,
    ) -> Page:
        """Fetch the page after the checkpoint and write it with the checkpoint
        advanced, in one transaction of the data database."""
        with (
            source.page(cp.cursor) as page,
            self.site.db.data_engine.begin() as conn,
        ):
            direct = source.may_go_direct(page) and _nothing_in_the_way(
                conn, writer.info, cp
            )
            result = writer.apply(conn, page, direct=direct)
            _advance(conn, cp, result, page)
        return page

    def _source(self, name: str, info: TableInfo) -> CopySource | JsonSource:
        """Where the table's pages come from: COPY data when this site's data
        database takes it, JSON rows otherwise."""
        plan = self._bulk_plan(name, info)
        if plan is not None:
            return CopySource(
                self.sender,
                name,
                self.strategy,
                plan,
                self.site.settings.bulk_page_rows,
            )
        return JsonSource(
            self.sender, name, self.strategy, direct=self._copies_like_insert(info)
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
                log.info("no schema for %s (%s): asking for text COPY", name, ex)
        with engine.connect() as conn:
            plan = bulk_in.plan(conn, info, schema, self.strategy)
        if plan is not None and wanted == copy_format.TEXT:
            plan = bulk_in.Plan(copy_format.TEXT, plan.direct)
        log.info("pulling %s as %s", name, plan.wire_format if plan else "json")
        return plan

    def _progress(self, name: str, cp: checkpoints.Checkpoint, status: str) -> None:
        """Mirror the checkpoint into the state database and renew the lease."""
        now = utcnow()
        with self.site.db.session() as session:
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
            transfer = session.get_one(Transfer, self.transfer_id)
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
            transfer.lease_owner = self.owner
            transfer.lease_until = now + dt.timedelta(
                seconds=self.site.settings.pull_lease_seconds
            )


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
        cp.errors.extend(result.errors[:room])
    cp.cursor = page.next_cursor if page.has_more else cp.cursor
    cp.done = not page.has_more
    checkpoints.save(conn, cp)


def dependency_order(names: list[str], depends_on: dict[str, list[str]]) -> list[str]:
    """Order tables so each comes after the tables it references.

    Only references inside the set count. A cycle cannot be ordered: its tables
    keep their given order (rows whose reference is not there yet are counted
    failed and reported, never hung on).
    """
    wanted = set(names)
    done: list[str] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in visiting:
            return
        visiting.add(name)
        for dep in sorted(depends_on.get(name, [])):
            if dep in wanted and dep != name:
                visit(dep)
        visiting.discard(name)
        seen.add(name)
        done.append(name)

    for name in names:
        visit(name)
    return done


def due(site: Site, grace_seconds: float) -> list[str]:
    """Unfinished transfers whose lease lapsed: their worker died or their retry was lost."""
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    with site.db.session() as session:
        rows = session.scalars(
            select(Transfer.id)
            .where(
                Transfer.direction == "receive",
                Transfer.status.not_in(TERMINAL),
                ((Transfer.lease_until.is_(None)) & (Transfer.updated_at < cutoff))
                | (Transfer.lease_until < cutoff),
            )
            .limit(100)
        )
        return [str(r) for r in rows]
