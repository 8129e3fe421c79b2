"""Move pull-data pages as PostgreSQL COPY data when both sites run PostgreSQL.

JSON rows cost two to four times what the database's own COPY does (see the
bulk copy measurements), so a PostgreSQL receiver asks for a bulk format:
``pg_copy_binary`` when every column has the same built-in type on both
sides, ``pg_copy_text`` otherwise.

Sender (``open_page``): one keyset query fixes the page (its row count and
next cursor), then ``COPY (SELECT ... LIMIT count) TO STDOUT`` streams its
rows, both on one REPEATABLE READ snapshot. A thread runs the COPY into a
bounded queue that the web server drains, so memory stays flat whatever the
page size.

Receiver (``apply_page``): the HTTP body goes straight into ``COPY ... FROM
STDIN`` through shared.data.receiver.copy_in: into a temporary staging table, then one
set-based statement for the conflict strategy; or, when the target is known
to hold no conflicting row, straight into the target.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from shared.data import wire
from shared.data.catalog import (
    PG_READ_SETTINGS,
    Catalog,
    PageExtent,
    TableInfo,
    quote,
)
from shared.data.receiver import copy_in as copyin
from shared.data.receiver import importer

log = logging.getLogger("dbsync.bulk")

BINARY = "pg_copy_binary"
TEXT = "pg_copy_text"
COPY_FORMATS = {BINARY: "binary", TEXT: "text"}
MEDIA_TYPES = {
    BINARY: "application/vnd.dbsync.pgcopy",
    TEXT: "text/vnd.dbsync.pgcopy",
}
ACCEPT = f"{MEDIA_TYPES[BINARY]}, {MEDIA_TYPES[TEXT]}, application/json"

_CHUNK = 256 * 1024  # bytes per chunk handed to the web server
_QUEUED_CHUNKS = 8  # at most this many chunks wait in memory per page
_HEADER_BUDGET = 8 * 1024  # metadata beyond this goes as a JSON page instead
# Built-in type OIDs are fixed in PostgreSQL's catalog and equal on every
# server; binary COPY of arrays (and records) carries them.
_FIRST_NON_BUILTIN_OID = 10_000
_SENDER_SETTINGS = (
    PG_READ_SETTINGS
    + "; SET LOCAL bytea_output = 'hex'; SET LOCAL extra_float_digits = 1"
)


class BadPage(Exception):
    """A bulk answer whose metadata does not describe the page asked for."""


class StreamAborted(Exception):
    """The COPY behind a streamed page failed after its headers were sent."""


def _pct(name: str) -> str:
    """A quoted identifier inside psycopg2 SQL, where % starts a placeholder."""
    return quote(name).replace("%", "%%")


def _pct_table(info: TableInfo) -> str:
    return info.qualified.replace("%", "%%")


def _utf8(conn: Connection) -> bool:
    driver = conn.connection.driver_connection
    return getattr(driver, "encoding", None) in ("UTF8", "UNICODE")


# --- sender ----------------------------------------------------------------------


def can_serve(catalog: Catalog, table: str) -> bool:
    """Whether pages of ``table`` can go as COPY data: PostgreSQL, with a key."""
    return catalog.dialect == "postgresql" and bool(catalog.describe(table).primary_key)


def open_page(
    engine: Engine,
    catalog: Catalog,
    table: str,
    *,
    after: list[Any] | None,
    limit: int,
    wire_format: str,
) -> CopyPage | None:
    """Fix the page after ``after`` and prepare its COPY stream.

    Returns None when the page cannot travel this way after all (metadata
    too large for headers, a connection that is not UTF-8); the caller then
    answers with a JSON page. Raises what ``Catalog.page_extent`` raises.
    """
    info = catalog.describe(table)
    conn = engine.connect()
    try:
        if not _utf8(conn):
            conn.close()
            return None
        conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql(_SENDER_SETTINGS)
        extent = catalog.page_extent(conn, table, after=after, limit=limit)
        sql = _copy_out_sql(conn, info, extent, COPY_FORMATS[wire_format])
        page = CopyPage(conn, info, wire_format, extent, sql)
    except BaseException:
        conn.close()
        raise
    if sum(len(k) + len(v) for k, v in page.headers.items()) > _HEADER_BUDGET or not (
        page.table.isascii()
    ):
        page.close()
        return None
    return page


def _copy_out_sql(
    conn: Connection, info: TableInfo, extent: PageExtent, copy_format: str
) -> str:
    pk = info.pk_columns
    order = ", ".join(_pct(c.name) for c in pk)
    params: list[Any] = []
    if extent.count == 0:
        where = " WHERE false"
    elif extent.after is None:
        where = ""
    else:
        holders = ", ".join(f"CAST(%s AS {c.type})" for c in pk)
        where = f" WHERE ({order}) > ({holders})"
        params = [wire.pg_param(v, c.kind) for v, c in zip(extent.after, pk)]
    # LIMIT on the snapshot the extent was counted on gives exactly its rows.
    select = (
        f"SELECT {', '.join(_pct(c.name) for c in info.columns)}"
        f" FROM {_pct_table(info)}{where} ORDER BY {order} LIMIT {int(extent.count)}"
    )
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        sql = cur.mogrify(f"COPY ({select}) TO STDOUT (FORMAT {copy_format})", params)
    finally:
        cur.close()
    return bytes(sql).decode("utf-8")


class CopyPage:
    """A bulk pull-data page: its metadata, and its COPY bytes as an iterable.

    The web server iterates it once and then closes it. The COPY runs in a
    thread that starts on the first chunk asked for and fills a bounded
    queue; closing early stops it. The database connection is released
    either way (invalidated when the COPY did not finish).
    """

    def __init__(
        self,
        conn: Connection,
        info: TableInfo,
        wire_format: str,
        extent: PageExtent,
        sql: str,
    ) -> None:
        self.table = info.name
        self.format = wire_format
        self.columns = [c.name for c in info.columns]
        self.count = extent.count
        self.has_more = extent.has_more
        self.next_cursor = extent.next_cursor
        self._conn: Connection | None = conn
        self._sql = sql
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-Sync-Table": self.table,
            "X-Sync-Format": self.format,
            "X-Sync-Columns": json.dumps(self.columns),
            "X-Sync-Count": str(self.count),
            "X-Sync-Has-More": "true" if self.has_more else "false",
            "X-Sync-Next-Cursor": json.dumps(self.next_cursor, separators=(",", ":")),
        }

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._produce, name=f"copy-{self.table}", daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            # Raising mid-body makes the server cut the chunked response, so
            # the receiver sees a truncated page and rolls it back.
            raise StreamAborted(f"COPY of {self.table} failed: {item}") from item
        return item

    def close(self) -> None:
        if self._thread is None:
            self._release(ok=True)
            return
        self._stop.set()
        self._thread.join(timeout=30)

    def _produce(self) -> None:
        writer = _QueueWriter(self._queue, self._stop)
        ok = False
        try:
            assert self._conn is not None
            cur = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cur.copy_expert(self._sql, writer)
                copied = cur.rowcount
            finally:
                cur.close()
            if copied != self.count:
                raise StreamAborted(f"COPY gave {copied} rows, {self.count} announced")
            writer.flush()
            writer.put(_END)
            ok = True
        except _Stopped:
            pass
        except Exception as ex:
            log.warning("COPY of %s failed: %s", self.table, ex)
            try:
                writer.put(ex)
            except _Stopped:
                pass
        finally:
            self._release(ok)

    def _release(self, ok: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not ok:
                # The connection may still be inside the COPY: never pool it.
                conn.invalidate()
            conn.close()
        except Exception as ex:
            log.warning("releasing the COPY connection failed: %s", ex)


_END = object()


class _Stopped(Exception):
    """The consumer went away; the COPY stops."""


class _QueueWriter:
    """What ``copy_expert`` writes to: gathers rows into chunks for the queue."""

    def __init__(self, q: queue.Queue[Any], stop: threading.Event) -> None:
        self._queue = q
        self._stop = stop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            chunk = b"".join(self._parts)
            self._parts, self._size = [], 0
            self.put(chunk)

    def put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


# --- receiver --------------------------------------------------------------------


@dataclass(frozen=True)
class IncomingPage:
    """The metadata of a bulk page as its headers give it."""

    format: str
    columns: list[str]
    count: int
    has_more: bool
    next_cursor: list[Any] | None


def is_bulk(media_type: str) -> bool:
    return media_type in MEDIA_TYPES.values()


def read_headers(
    headers: Mapping[str, str], media_type: str, table: str, asked: str
) -> IncomingPage:
    """Parse and check a bulk answer's headers; BadPage if they do not fit."""
    fmt = headers.get("x-sync-format")
    if fmt != asked or MEDIA_TYPES.get(fmt) != media_type:
        raise BadPage(f"format {fmt!r} as {media_type!r}, asked {asked!r}")
    if headers.get("x-sync-table") != table:
        raise BadPage("answer for another table")
    try:
        columns = json.loads(headers.get("x-sync-columns", ""))
        count = int(headers.get("x-sync-count", ""))
        cursor = json.loads(headers.get("x-sync-next-cursor", "null"))
    except ValueError as ex:
        raise BadPage(str(ex)) from None
    more = headers.get("x-sync-has-more")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and c for c in columns)
        or len(set(columns)) != len(columns)
        or count < 0
        or more not in ("true", "false")
        or not (cursor is None or isinstance(cursor, list))
    ):
        raise BadPage("invalid page metadata")
    has_more = more == "true" and cursor is not None
    return IncomingPage(fmt, columns, count, has_more, cursor)


@dataclass(frozen=True)
class Plan:
    """How a receiver pulls one table: the format it asks for, whether it may
    COPY straight into the target."""

    wire_format: str
    direct: bool


def plan(
    conn: Connection, info: TableInfo, sender_schema: Any, strategy: str
) -> Plan | None:
    """Choose the bulk format for ``info`` from the sender's table-schema.

    Binary needs every sender column here with the same type, a built-in
    one (binary COPY is exact about types). Copying straight into the target
    also needs every sender column writable here, a strategy that keys rows
    (not append), and a table COPY treats like INSERT (no rules, no row
    security). None when this connection cannot take COPY data (not UTF-8).
    """
    if not _utf8(conn):
        return None
    columns = sender_schema.get("columns") if isinstance(sender_schema, dict) else None
    sent = {
        c.get("name"): c.get("type")
        for c in columns or []
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(
            "SELECT a.attname, a.atttypid < %s AND t.typelem < %s"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = CAST(%s AS regclass) AND a.attnum > 0"
            " AND NOT a.attisdropped",
            (_FIRST_NON_BUILTIN_OID, _FIRST_NON_BUILTIN_OID, info.qualified),
        )
        builtin = dict(cur.fetchall())
    finally:
        cur.close()
    here = {c.name: c for c in info.columns}
    binary = bool(sent) and all(
        name in here and here[name].type == kind and builtin.get(name)
        for name, kind in sent.items()
    )
    writable = bool(sent) and all(
        name in here and not here[name].generated for name in sent
    )
    direct = writable and strategy != "append" and copyin.copies_like_insert(conn, info)
    return Plan(BINARY if binary else TEXT, direct)


def table_is_empty(conn: Connection, info: TableInfo) -> bool:
    return not conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT 1 FROM {_pct_table(info)})"
    ).scalar()


def apply_page(
    conn: Connection,
    info: TableInfo,
    page: IncomingPage,
    chunks: Iterable[bytes],
    strategy: str,
    *,
    direct: bool = False,
) -> importer.PageResult:
    """COPY one bulk page into ``info``'s table with a conflict strategy.

    Counts follow ``import_page``: ``created + updated + skipped + failed ==
    page.count``. With ``direct`` the rows go straight into the target, for a
    target that should hold none of their keys; if it does (or refuses a row)
    this raises Rejected and the page must be fetched again and staged.
    Raises ImportRefused when the page cannot apply to this table at all,
    PeerUnavailable when the body breaks off or falls short of its count.
    """
    if strategy not in importer.STRATEGIES:
        raise ValueError(f"unknown conflict strategy {strategy!r}")
    columns, ignored = importer.choose_columns(info, page.columns, strategy)
    result = importer.PageResult(ignored_columns=ignored)
    source = copyin.CopySource(COPY_FORMATS[page.format], page.columns, page.count)
    applier = copyin.CopyApplier(conn, info, source, columns, strategy, result)
    if direct and not ignored:
        applier.copy_direct(chunks)
    else:
        applier.copy_staged(chunks)
    return result
