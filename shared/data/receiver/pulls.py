"""Pull tables from a sender into the data database, page by page, resumably.

A transfer names the tables; the worker orders them by foreign-key dependency,
creates missing ones from the sender's schema when allowed, and imports each
page with one set-based statement for its strategy. Between two PostgreSQL
sites pages travel as COPY data (shared.data.sender.copy_out), otherwise as JSON rows
(shared.data.receiver.importer). The page and its checkpoint commit together in the data
database (see shared.data.receiver.checkpoints), so a killed worker resumes exactly where
the last commit left it.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from shared.context import Site
from shared.control import audit
from shared.control.peer import (
    PeerClient,
    PeerRefused,
    PeerResponse,
    PeerStream,
    PeerUnavailable,
    RateLimited,
)
from shared.data import copy_format
from shared.data.receiver import bulk_in, checkpoints, importer
from shared.data.receiver import copy_in as copyin
from shared.data.schema import TableNotFound
from shared.db import after_commit, utcnow
from shared.errors import SyncError
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
class JsonPage:
    """One JSON pull-data page as received."""

    rows: list[dict[str, Any]]
    next_cursor: Any
    has_more: bool
    size: int


def _json_page(answer: PeerResponse, size: int) -> JsonPage:
    if answer.status != 200 or answer.body.get("success") is not True:
        raise PullFailed(answer.error)
    rows = answer.body.get("data")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PullFailed("Invalid response from remote site")
    next_cursor = answer.body.get("next_cursor")
    has_more = answer.body.get("has_more") is True and next_cursor is not None
    return JsonPage(rows, next_cursor, has_more, size)


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
        raise SyncError("bad_request", "Only a receiver connection can pull")
    if conn.status != "active":
        raise SyncError("conflict", f"Connection is {conn.status}, not active")
    names = [t.strip() for t in tables if t and t.strip()]
    if not names and not all_tables:
        raise SyncError("bad_request", "Name the tables to pull, or use --all")
    strategy = strategy or conn.default_conflict_strategy or "skip"
    if strategy not in STRATEGIES:
        raise SyncError(
            "bad_request", f"strategy must be one of {', '.join(STRATEGIES)}"
        )
    refused = sorted(set(names) & PROTECTED_TABLES)
    if refused:
        raise SyncError(
            "bad_request",
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
        result = session.execute(
            update(Transfer)
            .where(
                Transfer.id == transfer_id,
                Transfer.status.not_in(TERMINAL),
                (Transfer.lease_until.is_(None))
                | (Transfer.lease_until < now)
                | (Transfer.lease_owner == owner),
            )
            .values(lease_owner=owner, lease_until=until)
        )
        return result.rowcount == 1


def run(site: Site, client: PeerClient, transfer_id: str, owner: str) -> Outcome:
    tid = uuid.UUID(transfer_id)
    if not claim(site, tid, owner):
        return Outcome("busy")
    with site.db.session() as session:
        transfer = session.get(Transfer, tid)
        assert transfer is not None
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
    except PullFailed as ex:
        with site.db.session() as session:
            _fail(session, session.get(Transfer, tid), str(ex))
        return Outcome("failed")
    with site.db.session() as session:
        transfer = session.get(Transfer, tid)
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
        transfer = session.get(Transfer, tid)
        if transfer.attempts >= s.pull_max_attempts:
            _fail(session, transfer, f"Sender unreachable: {error}")
            return Outcome("failed")
        delay = min(
            s.retry_max_seconds, s.retry_base_seconds * 2 ** (transfer.attempts - 1)
        )
        if hint:
            delay = max(delay, min(hint, s.retry_max_seconds))
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
        self.client = client
        self.owner = owner
        self.transfer_id = transfer_id
        self.site_url = site_url
        self.token_hash = token_hash
        self.strategy = strategy
        self.create_missing = create_missing
        self.catalog = site.catalog()
        self.run_started = utcnow()
        self.rows_this_run = 0
        self._schemas: dict[str, Any] = {}

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # A 429 is the sender pacing us: wait as told and go on, without
        # spending one of the transfer's attempts. Other transient failures
        # end this run; the task retries it later from the checkpoint.
        try:
            resp = _pacing()(
                self.client.post,
                self.site_url,
                endpoint,
                {"auth_token_hash": self.token_hash, **body},
            )
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
            transfer = session.get(Transfer, self.transfer_id)
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
            transfer = session.get(Transfer, self.transfer_id)
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

    def target(self, name: str) -> importer.TableInfo:
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
                importer.create_table(
                    conn,
                    name,
                    schema,
                    existing_tables=set(self.catalog.offered_tables()),
                )
            except importer.ImportRefused as ex:
                raise PullFailed(f"Cannot create {name}: {ex}") from None
        self.catalog = self.site.catalog()
        log.info("created table %s from the sender's schema", name)
        return self.catalog.describe(name)

    def pull_table(self, name: str) -> None:
        info = self.target(name)
        if self.strategy == "append":
            try:
                importer.check_append(info)
            except importer.ImportRefused as ex:
                raise PullFailed(str(ex)) from None
        cp = checkpoints.load(self.site.db.data_engine, str(self.transfer_id), name)
        self._progress(name, cp, status="running")
        plan = self._bulk_plan(name, info)
        if plan is None:
            self._pull_json(name, info, cp)
            return
        while not cp.done:
            body: dict[str, Any] = {
                "table_name": name,
                "conflict_strategy": self.strategy,
                "format": plan.wire_format,
                "limit": self.site.settings.bulk_page_rows,
            }
            if cp.cursor is not None:
                body["after"] = cp.cursor
            try:
                rows = self._pull_page(name, info, cp, body, plan)
            except copyin.Rejected as ex:
                # Nothing of the page was kept: ask for it again, staged.
                log.info("%s; fetching the page again", ex)
                plan = bulk_in.Plan(
                    copy_format.TEXT if ex.as_text else plan.wire_format, False
                )
                continue
            self.rows_this_run += rows
            self._progress(name, cp, status="completed" if cp.done else "running")

    def _pull_json(
        self, name: str, info: importer.TableInfo, cp: checkpoints.Checkpoint
    ) -> None:
        """Pull JSON pages, fetching each while the one before it is written.

        The sender encodes a page while this site writes the previous one,
        so a pull takes about the longer of the two rather than their sum.
        A page fetched ahead of a failure is dropped: the next run asks for
        it again from the checkpoint.
        """
        direct = self._copies_like_insert(info)
        with (
            _quick_thread_switches(),
            ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="dbsync-fetch"
            ) as ahead,
        ):
            upcoming = (
                ahead.submit(self._fetch_json, name, cp.cursor) if not cp.done else None
            )
            while upcoming is not None:
                # Parsed here, not in the fetching thread: the two would only
                # take turns at the interpreter lock, and that thread's socket
                # reads would wait behind the parse.
                status, content, size = upcoming.result()
                page = _json_page(PeerResponse.parse(status, content), size)
                del content  # parsed: only one page's body and rows at a time
                upcoming = (
                    ahead.submit(self._fetch_json, name, page.next_cursor)
                    if page.has_more
                    else None
                )
                try:
                    self._apply_json(name, info, cp, page, direct)
                except BaseException:
                    if upcoming is not None:
                        upcoming.cancel()
                    raise
                self.rows_this_run += len(page.rows)
                self._progress(name, cp, status="completed" if cp.done else "running")
                del page

    def _copies_like_insert(self, info: importer.TableInfo) -> bool:
        """Whether JSON pages may be copied straight into an empty target."""
        engine = self.site.db.data_engine
        if self.strategy == "append" or engine.dialect.name != "postgresql":
            return False
        with engine.connect() as conn:
            return copyin.copies_like_insert(conn, info)

    def _fetch_json(self, name: str, cursor: Any) -> tuple[int, bytes, int]:
        """Ask for the JSON page after ``cursor``: its status, body and size."""
        body: dict[str, Any] = {"table_name": name, "conflict_strategy": self.strategy}
        if cursor is not None:
            body["after"] = cursor
        with self._open("pull-data", body) as resp:
            content = resp.read()
            return resp.status, content, resp.bytes_read

    def _apply_json(
        self,
        name: str,
        info: importer.TableInfo,
        cp: checkpoints.Checkpoint,
        page: JsonPage,
        direct: bool,
    ) -> None:
        """Write one JSON page with its checkpoint in one transaction."""
        with self.site.db.data_engine.begin() as conn:
            direct = direct and _nothing_in_the_way(conn, info, cp)
            try:
                result = importer.import_page(
                    conn, info, page.rows, self.strategy, direct=direct
                )
            except importer.ImportRefused as ex:
                raise PullFailed(f"{name}: {ex}") from None
            _advance(
                conn,
                cp,
                result,
                len(page.rows),
                page.next_cursor,
                page.has_more,
                page.size,
            )

    def _bulk_plan(self, name: str, info: importer.TableInfo) -> bulk_in.Plan | None:
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

    def _pull_page(
        self,
        name: str,
        info: importer.TableInfo,
        cp: checkpoints.Checkpoint,
        body: dict[str, Any],
        plan: bulk_in.Plan,
    ) -> int:
        """Fetch one bulk page and apply it with its checkpoint in one transaction."""
        engine = self.site.db.data_engine
        with self._open("pull-data", body) as resp:
            if copy_format.is_bulk(resp.media_type):
                try:
                    incoming = bulk_in.read_headers(
                        resp.headers, resp.media_type, name, body["format"]
                    )
                except bulk_in.BadPage as ex:
                    raise PullFailed(
                        f"Invalid response from remote site ({ex})"
                    ) from None
                with engine.begin() as conn:
                    direct = plan.direct and _nothing_in_the_way(conn, info, cp)
                    try:
                        result = bulk_in.apply_page(
                            conn,
                            info,
                            incoming,
                            resp.iter_bytes(),
                            self.strategy,
                            direct=direct,
                        )
                    except importer.ImportRefused as ex:
                        raise PullFailed(f"{name}: {ex}") from None
                    _advance(
                        conn,
                        cp,
                        result,
                        incoming.count,
                        incoming.next_cursor,
                        incoming.has_more,
                        resp.bytes_read,
                    )
                return incoming.count
            page = _json_page(resp.response(), resp.bytes_read)
        # Asked for COPY data, answered with JSON: a table the sender cannot
        # serve as COPY data (see data_api.pull_data).
        self._apply_json(name, info, cp, page, direct=False)
        return len(page.rows)

    def _open(self, endpoint: str, body: dict[str, Any]) -> PeerStream:
        """POST for a streamed answer, waiting out the sender's pacing like ``call``."""
        try:
            return _pacing()(
                self.client.post_stream,
                self.site_url,
                endpoint,
                {"auth_token_hash": self.token_hash, **body},
                copy_format.ACCEPT,
            )
        except PeerRefused as ex:
            raise PullFailed(str(ex)) from None

    def _progress(self, name: str, cp: checkpoints.Checkpoint, status: str) -> None:
        """Mirror the checkpoint into the state database and renew the lease."""
        now = utcnow()
        with self.site.db.session() as session:
            tt = session.scalar(
                select(TransferTable).where(
                    TransferTable.transfer_id == self.transfer_id,
                    TransferTable.table_name == name,
                )
            )
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
            transfer = session.get(Transfer, self.transfer_id)
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


RATE_LIMIT_WAITS = 120
FETCH_SWITCH_INTERVAL = 0.0005  # seconds


@contextmanager
def _quick_thread_switches() -> Iterator[None]:
    """Hand the interpreter between threads every 0.5 ms instead of 5 ms.

    The fetching thread reads a page in dozens of socket reads, each needing
    the interpreter lock that the writing thread holds while it renders rows:
    at the default interval each read may wait 5 ms, up to a third of a
    second for a 4 MB page, which is about as long as writing one.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, FETCH_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _pacing() -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(RateLimited),
        wait=_retry_after_wait,
        stop=stop_after_attempt(RATE_LIMIT_WAITS),
        reraise=True,
    )


def _nothing_in_the_way(
    conn: Any, info: importer.TableInfo, cp: checkpoints.Checkpoint
) -> bool:
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
    conn: Any,
    cp: checkpoints.Checkpoint,
    result: importer.PageResult,
    rows: int,
    next_cursor: Any,
    has_more: bool,
    size: int,
) -> None:
    """Count a page into the checkpoint and save it in the page's transaction."""
    cp.pages += 1
    cp.rows_done += rows
    cp.created += result.created
    cp.updated += result.updated
    cp.skipped += result.skipped
    cp.failed += result.failed
    cp.bytes_done += size
    room = checkpoints.MAX_KEPT_ERRORS - len(cp.errors)
    if room > 0:
        cp.errors.extend(result.errors[:room])
    cp.cursor = next_cursor if has_more else cp.cursor
    cp.done = not has_more
    checkpoints.save(conn, cp)


def _retry_after_wait(state: Any) -> float:
    ex = state.outcome.exception() if state.outcome else None
    hint = getattr(ex, "retry_after", None) or 1.0
    return float(min(max(hint, 0.5), 60.0))


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
