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

The receiver's half is shared.data.receiver.bulk_in.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from shared.data.copy_format import COPY_FORMATS, MEDIA_TYPES, utf8
from shared.data.keyset import Keyset, Since, column_list
from shared.data.schema import PG_READ_SETTINGS, TableInfo, Tables, quote_text
from shared.data.sender.pages import PageExtent, page_extent

log = logging.getLogger("dbsync.bulk")


_CHUNK = 256 * 1024  # bytes per chunk handed to the web server
_QUEUED_CHUNKS = 8  # at most this many chunks wait in memory per page
_HEADER_BUDGET = 8 * 1024  # metadata beyond this goes as a JSON page instead
_SENDER_SETTINGS = (
    PG_READ_SETTINGS
    + "; SET LOCAL bytea_output = 'hex'; SET LOCAL extra_float_digits = 1"
)


class StreamAborted(Exception):
    """The COPY behind a streamed page failed after its headers were sent."""


def can_serve(tables: Tables, table: str) -> bool:
    """Whether pages of ``table`` can go as COPY data: PostgreSQL, with a key."""
    return tables.dialect == "postgresql" and bool(tables.describe(table).primary_key)


def open_page(
    engine: Engine,
    tables: Tables,
    table: str,
    *,
    after: list[Any] | None,
    limit: int,
    wire_format: str,
    max_bytes: int | None = None,
    until: list[Any] | None = None,
    since: Since | None = None,
    since_answer: dict[str, Any] | None = None,
) -> CopyPage | None:
    """Fix the page after ``after`` (of the rows ``since`` keeps) and prepare
    its COPY stream; ``since_answer`` goes in its X-Sync-Since header.

    Returns None when the page cannot travel this way after all (metadata
    too large for headers, a connection that is not UTF-8); the caller then
    answers with a JSON page. Raises what ``pages.page_extent`` raises.
    """
    info = tables.describe(table)
    conn = engine.connect()
    try:
        if not utf8(conn):
            conn.close()
            return None
        conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql(_SENDER_SETTINGS)
        if max_bytes is not None:
            limit = _rows_within(conn, tables, info, after, limit, max_bytes, since)
        extent = page_extent(
            tables, conn, table, after=after, limit=limit, until=until, since=since
        )
        sql = _copy_out_sql(conn, info, extent, COPY_FORMATS[wire_format], since)
        page = CopyPage(conn, info, wire_format, extent, sql)
        page.since = since_answer
    except BaseException:
        conn.close()
        raise
    if sum(len(k) + len(v) for k, v in page.headers.items()) > _HEADER_BUDGET or not (
        page.table.isascii()
    ):
        page.close()
        return None
    return page


_SAMPLE_ROWS = 100


def _rows_within(
    conn: Connection,
    tables: Tables,
    info: TableInfo,
    after: list[Any] | None,
    limit: int,
    max_bytes: int,
    since: Since | None = None,
) -> int:
    """The rows of a page of at most ``limit`` that fit ``max_bytes``, by the
    text size of the page's first rows (a sample: a COPY page is streamed,
    so the sender's memory never depends on it; the budget keeps a page of
    wide rows within what a receiver takes)."""
    keyset = Keyset.after_cursor(info, after, pg=True, since=since)
    # The table's name alone in the SELECT list is its whole row.
    size = f"octet_length({quote_text(info.name)}::text) AS n"
    sample = keyset.select(size, limit=min(limit, _SAMPLE_ROWS))
    average = conn.execute(
        text(f"SELECT avg(n) FROM ({sample}) s"), keyset.params
    ).scalar()
    if not average:
        return limit
    return max(1, min(limit, int(max_bytes // float(average))))


def _copy_out_sql(
    conn: Connection,
    info: TableInfo,
    extent: PageExtent,
    copy_format: str,
    since: Since | None = None,
) -> str:
    """The COPY of exactly the extent's rows, as one driver-ready statement.

    It is the keyset page JSON pages read, rendered for psycopg2 by the
    connection's dialect (placeholders, doubled percent signs) and bound by
    psycopg2 here, because COPY takes no parameters.
    """
    keyset = Keyset.after_key(info, extent.after, pg=True, since=since)
    # LIMIT on the snapshot the extent was counted on gives exactly its rows
    # (none for an empty extent: LIMIT 0 reads nothing).
    select = keyset.select(column_list(info.columns), limit=extent.count)
    return _bound_copy(conn, select, copy_format, keyset.params)


def _bound_copy(
    conn: Connection, select: str, copy_format: str, params: dict[str, Any]
) -> str:
    """``COPY (select) TO STDOUT`` with ``params`` bound in by psycopg2."""
    copy = text(f"COPY ({select}) TO STDOUT (FORMAT {copy_format})")
    compiled = copy.compile(dialect=conn.dialect)
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # None only once closed
    try:
        sql = cur.mogrify(compiled.string, compiled.construct_params(params))
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
        self.since: dict[str, Any] | None = None  # pull-data's since, answered

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def headers(self) -> dict[str, str]:
        since = {}
        if self.since is not None:
            since["X-Sync-Since"] = json.dumps(self.since, separators=(",", ":"))
        return {
            **since,
            **_page_headers(
                self.table,
                self.format,
                self.columns,
                self.count,
                self.has_more,
                self.next_cursor,
            ),
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
            cur = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # None only once closed
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


def _page_headers(
    table: str,
    wire_format: str,
    columns: list[str],
    count: int,
    has_more: bool,
    next_cursor: Any,
) -> dict[str, str]:
    """A bulk page's metadata, as the receiver's bulk_in.read_headers reads it."""
    return {
        "X-Sync-Table": table,
        "X-Sync-Format": wire_format,
        "X-Sync-Columns": json.dumps(columns),
        "X-Sync-Count": str(count),
        "X-Sync-Has-More": "true" if has_more else "false",
        "X-Sync-Next-Cursor": json.dumps(next_cursor, separators=(",", ":")),
    }


@dataclass(frozen=True)
class KeysCopy:
    """A ``pull-keys`` answer as COPY data, read whole: the rows of at most
    one JSON page's worth of keys, held as bytes (smaller than those rows
    as JSON would be)."""

    table: str
    format: str
    columns: list[str]
    count: int
    body: bytes

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def headers(self) -> dict[str, str]:
        return _page_headers(
            self.table, self.format, self.columns, self.count, False, None
        )


def keys_copy(
    engine: Engine, info: TableInfo, keys: Any, wire_format: str
) -> KeysCopy | None:
    """The rows of ``keys`` (values of ``info``'s one key column, as the
    driver binds them to an array of its type) in key order, as COPY data
    read whole: the count is the COPY's own. None when the page cannot
    travel this way (a connection that is not UTF-8, a table name not
    ASCII)."""
    if not info.name.isascii():
        return None
    col = info.pk_columns[0]
    key = quote_text(col.name)
    select = (
        f"SELECT {column_list(info.columns)} FROM {info.qualified_text}"
        f" WHERE {key} = ANY(CAST(:keys AS {col.type}[])) ORDER BY {key}"
    )
    with engine.connect() as conn:
        if not utf8(conn):
            return None
        with conn.begin():
            conn.exec_driver_sql(_SENDER_SETTINGS)
            sql = _bound_copy(conn, select, COPY_FORMATS[wire_format], {"keys": keys})
            buffer = io.BytesIO()
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # open connection
            try:
                cur.copy_expert(sql, buffer)
                count = int(cur.rowcount)
            finally:
                cur.close()
    return KeysCopy(
        info.name, wire_format, [c.name for c in info.columns], count, buffer.getvalue()
    )


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
