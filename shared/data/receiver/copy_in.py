"""Write pulled rows into a PostgreSQL table through COPY, with a conflict strategy.

Every page a PostgreSQL receiver pulls ends here: a bulk page's COPY bytes
as they arrive (shared.data.receiver.bulk_in), and a JSON page rendered as
COPY text by shared.data.receiver.rendering (``import_rows``). The rows go
into a temporary staging table and one set-based statement per strategy
applies them; or, when the target should hold none of their keys, straight
into the target. Rows the database rejects send the page through smaller
statements, down to one row, so the rest still lands. The caller's
transaction, which also saves the checkpoint, is never committed here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from shared.data.ddl import db_error_text
from shared.data.receiver import rendering
from shared.data.receiver.pages import ImportRefused, PageResult
from shared.data.schema import (
    PG_READ_SETTINGS,
    ColumnInfo,
    TableInfo,
    quote,
    quote_driver,
)

_READ_SIZE = 1024 * 1024  # what COPY FROM asks of its source at a time
_FALLBACK_BATCH = 1000  # rows per statement once a page has been rejected
_TYPMOD = re.compile(r"\(\d+(?:,\s*-?\d+)?\)")
_FIXED_LENGTH = re.compile(r"^(character|bit)(?=$|\[)")


class BrokeOff(Exception):
    """A page's body ended before the rows its headers announced.

    Nothing of the page stays (the caller's transaction must be rolled
    back); the page is worth fetching again.
    """


class Rejected(Exception):
    """The page's bytes could not be applied as asked; fetch it again staged.

    ``as_text`` asks for the text format too (binary data the database
    refused). The caller's transaction must be rolled back.
    """

    def __init__(self, message: str, *, as_text: bool = False) -> None:
        super().__init__(message)
        self.as_text = as_text


def pg_upsert_sql(
    info: TableInfo, columns: list[ColumnInfo], strategy: str, source: str
) -> str:
    """INSERT from ``source``, RETURNING true per created row, false per updated.

    psycopg2 SQL: ``source`` is placed as given, identifiers have % doubled.
    """
    cols = ", ".join(quote_driver(c.name) for c in columns)
    always = any(c.identity == "always" for c in columns)
    overriding = " OVERRIDING SYSTEM VALUE" if always else ""
    head = f"INSERT INTO {info.qualified_driver} AS t ({cols}){overriding} {source}"
    if strategy == "append":
        return head + " RETURNING true"
    pk = ", ".join(quote_driver(n) for n in info.primary_key)
    if strategy == "skip":
        return head + f" ON CONFLICT ({pk}) DO NOTHING RETURNING true"
    others = [c for c in columns if c.name not in info.primary_key]
    if not others:  # nothing to change, but the conflict must still be seen
        sets = [
            f"{quote_driver(n)} = EXCLUDED.{quote_driver(n)}" for n in info.primary_key
        ]
    elif strategy == "overwrite":
        sets = [
            f"{quote_driver(c.name)} = EXCLUDED.{quote_driver(c.name)}" for c in others
        ]
    else:
        sets = [
            f"{quote_driver(c.name)} = COALESCE(EXCLUDED.{quote_driver(c.name)}, t.{quote_driver(c.name)})"
            for c in others
        ]
    # xmax is 0 on a row version this statement inserted, and set on one it updated.
    return (
        head
        + f" ON CONFLICT ({pk}) DO UPDATE SET {', '.join(sets)}"
        + " RETURNING (t.xmax = 0)"
    )


def bump_sequence(cursor: Any, info: TableInfo) -> None:
    """Move a serial/identity key's sequence past keys written explicitly."""
    if len(info.primary_key) != 1:
        return
    col = info.pk_columns[0]
    if col.identity is None and not (col.default or "").startswith("nextval("):
        return
    cursor.execute(
        f"SELECT setval(s.seq, m.mx) FROM"
        f" (SELECT pg_get_serial_sequence(%s, %s) AS seq) s,"
        f" (SELECT max({quote_driver(col.name)}) AS mx FROM {info.qualified_driver}) m"
        f" WHERE s.seq IS NOT NULL AND m.mx IS NOT NULL"
        f" AND m.mx > COALESCE(pg_sequence_last_value(s.seq::regclass), 0)",
        (info.qualified, col.name),
    )


def unbounded_type(sql_type: str) -> str:
    """``sql_type`` without its length or precision, to cast staged text to.

    The assignment to the column then enforces lengths the way an INSERT of
    the value would: an explicit cast to varchar(n) would cut the text short,
    and a bare ``character`` or ``bit`` means length 1, so those become
    ``bpchar`` and ``bit varying``.
    """
    base = _TYPMOD.sub("", sql_type)
    return _FIXED_LENGTH.sub(
        lambda m: "bpchar" if m.group(1) == "character" else "bit varying", base
    )


def import_rows(
    conn: Connection,
    info: TableInfo,
    columns: list[ColumnInfo],
    rows: Sequence[Mapping[str, Any]],
    strategy: str,
    result: PageResult,
    *,
    direct: bool = False,
) -> None:
    """Apply wire rows, decoded by the target's column kinds, through COPY.

    Counts go into ``result``. ``direct`` copies straight into the target
    when it should hold none of the rows' keys; if one is there after all,
    the page is staged instead.
    """
    keep = (
        None
        if strategy == "append"
        else rendering.last_of_each_key(info, columns, rows, result)
    )
    if keep == []:
        return
    rendered = rendering.RenderedRows(info, columns, rows, keep)
    source = CopySource("text", [c.name for c in columns], None)
    applier = CopyApplier(conn, info, source, columns, strategy, result)
    if direct and strategy != "append":
        unrendered = PageResult()  # counted only if the direct copy stands
        savepoint = conn.begin_nested()
        try:
            applier.copy_direct(rendered.chunks(unrendered))
        except Rejected:
            savepoint.rollback()
        else:
            savepoint.commit()
            result.add_failures(unrendered)
            return
    applier.copy_staged(rendered.chunks(result))


def copies_like_insert(conn: Connection, info: TableInfo) -> bool:
    """Whether COPY into the table acts like INSERT: no rules, no row security."""
    return not conn.exec_driver_sql(
        "SELECT relhasrules OR relrowsecurity FROM pg_class"
        " WHERE oid = CAST(%(t)s AS regclass)",
        {"t": info.qualified},
    ).scalar()


# --- COPY into the table ----------------------------------------------------------


@dataclass(frozen=True)
class CopySource:
    """What COPY data holds: its format (text or binary), columns and row count."""

    copy_format: str
    columns: list[str]
    count: int | None  # rows it must hold; None when this site made the data


class ByteReader:
    """A ``read(size)`` file over byte chunks, for COPY FROM STDIN.

    An error raised by the chunks is kept in ``error``: psycopg2 replaces it
    with a cancelled COPY, and the caller wants the original (a peer that
    went away is worth retrying).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        while not self._pending:  # an empty read means the end to COPY
            try:
                chunk = next(self._chunks, None)
            except BaseException as ex:
                self.error = ex
                raise
            if chunk is None:
                return b""
            self._pending = chunk
        if size < 0 or len(self._pending) <= size:
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class CopyApplier:
    """COPY data into one table with one strategy, counted into a PageResult."""

    def __init__(
        self,
        conn: Connection,
        info: TableInfo,
        source: CopySource,
        columns: list[ColumnInfo],
        strategy: str,
        result: PageResult,
    ) -> None:
        self._conn = conn
        self._info = info
        self._source_data = source
        self._columns = columns
        self._strategy = strategy
        self._result = result
        self._copy_format = source.copy_format
        self._dbapi_error = conn.dialect.loaded_dbapi.Error
        self._stage = quote(f"_dbsync_stage_{uuid.uuid4().hex[:12]}")
        self._failed = 0

    def _cursor(self) -> Any:
        return self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # psycopg2 connection while open

    def _copy_in(self, cur: Any, target: str, chunks: Iterable[bytes]) -> int:
        """COPY the data into ``target``; the rows copied, checked against the count."""
        cols = ", ".join(quote(n) for n in self._source_data.columns)
        reader = ByteReader(chunks)
        try:
            cur.copy_expert(
                f"COPY {target} ({cols}) FROM STDIN (FORMAT {self._copy_format})",
                reader,
                size=_READ_SIZE,
            )
        except self._dbapi_error:
            reader.raise_error()
            raise
        expected = self._source_data.count
        if expected is not None and cur.rowcount != expected:
            raise BrokeOff(
                f"pull-data: page of {self._info.name} broke off"
                f" ({cur.rowcount} of {self._source_data.count} rows)"
            )
        return int(cur.rowcount)

    def copy_direct(self, chunks: Iterable[bytes]) -> None:
        cur = self._cursor()
        try:
            cur.execute(PG_READ_SETTINGS, ())  # text input read as it was written
            try:
                copied = self._copy_in(cur, self._info.qualified, chunks)
            except self._dbapi_error as ex:
                raise Rejected(
                    f"{self._info.name}: COPY into the table refused"
                    f" ({db_error_text(ex)})"
                ) from None
            self._result.created += copied
            if copied:
                bump_sequence(cur, self._info)
        finally:
            cur.close()

    def copy_staged(self, chunks: Iterable[bytes]) -> None:
        binary = self._copy_format == "binary"
        here = {c.name: c for c in self._info.columns}
        sent = self._source_data.columns
        if binary and any(n not in here for n in sent):
            raise Rejected(
                f"{self._info.name}: a sent column is not here", as_text=True
            )
        defs = ", ".join(
            f"{quote_driver(n)} {here[n].type if binary else 'text'}" for n in sent
        )
        cur = self._cursor()
        try:
            cur.execute(PG_READ_SETTINGS, ())
            cur.execute(f"CREATE TEMP TABLE {self._stage} ({defs}) ON COMMIT DROP", ())
            try:
                staged = self._copy_in(cur, self._stage, chunks)
            except self._dbapi_error as ex:
                if binary:
                    raise Rejected(
                        f"{self._info.name}: binary COPY data refused"
                        f" ({db_error_text(ex)})",
                        as_text=True,
                    ) from None
                raise ImportRefused(
                    f"{self._info.name}: COPY data refused ({db_error_text(ex)})"
                ) from None
            written = self._apply(cur, "", ())
            if written is None:
                written = self._fallback(cur)
            created, updated = written
            result = self._result
            result.created += created
            result.updated += updated
            result.skipped += staged - created - updated - self._failed
            if created and self._strategy != "append":
                bump_sequence(cur, self._info)
            cur.execute(f"DROP TABLE {self._stage}", ())
        finally:
            cur.close()

    def _source(self, where: str) -> str:
        """SELECT the staged rows as the target's types; ``where`` filters them."""
        if self._copy_format == "binary":
            exprs = [f"s.{quote_driver(c.name)}" for c in self._columns]
        else:
            exprs = [
                f"CAST(s.{quote_driver(c.name)} AS {unbounded_type(c.type)})"
                for c in self._columns
            ]
        sql = f"SELECT {', '.join(exprs)} FROM {self._stage} s{where}"
        if self._strategy == "append":
            sql += " ORDER BY s.ctid"  # page order, as a fresh heap holds it
        return sql

    def _apply(self, cur: Any, where: str, params: Any) -> tuple[int, int] | None:
        """One set-based statement over the staged rows: (created, updated), or
        None when the database refused it (nothing of it is left)."""
        upsert = pg_upsert_sql(
            self._info, self._columns, self._strategy, self._source(where)
        )
        savepoint = self._conn.begin_nested()
        try:
            cur.execute(
                f"WITH written (created) AS ({upsert})"
                " SELECT count(*) FILTER (WHERE created),"
                " count(*) FILTER (WHERE NOT created) FROM written",
                params,
            )
            created, updated = cur.fetchone()
        except self._dbapi_error:
            savepoint.rollback()
            return None
        savepoint.commit()
        return int(created), int(updated)

    def _fallback(self, cur: Any) -> tuple[int, int]:
        """Apply a refused page in batches, and a refused batch row by row."""
        keys = ", ".join(
            f"s.{quote_driver(c.name)}::text" for c in self._info.pk_columns
        )
        ints = [c.kind == "int" for c in self._info.pk_columns]
        created = updated = 0
        after = "(0,0)"
        while True:
            cur.execute(
                f"SELECT s.ctid::text AS row_tid{', ' + keys if keys else ''}"
                f" FROM {self._stage} s WHERE s.ctid > %s::tid ORDER BY s.ctid"
                f" LIMIT {_FALLBACK_BATCH}",
                (after,),
            )
            batch = cur.fetchall()
            if not batch:
                return created, updated
            after = batch[-1][0]
            written = self._apply(
                cur, " WHERE s.ctid = ANY(%s::tid[])", ([r[0] for r in batch],)
            )
            if written is not None:
                created, updated = created + written[0], updated + written[1]
                continue
            for tid, *key in batch:
                one = self._apply_row(cur, tid)
                if isinstance(one, str):
                    self._failed += 1
                    self._result.fail(
                        [
                            int(v) if i and v is not None else v
                            for v, i in zip(key, ints)
                        ],
                        one,
                    )
                else:
                    created, updated = created + one[0], updated + one[1]

    def _apply_row(self, cur: Any, tid: str) -> tuple[int, int] | str:
        """One staged row: (created, updated), or the database's reason for refusing it."""
        upsert = pg_upsert_sql(
            self._info,
            self._columns,
            self._strategy,
            self._source(" WHERE s.ctid = %s::tid"),
        )
        savepoint = self._conn.begin_nested()
        try:
            cur.execute(upsert, (tid,))
            flags = [r[0] for r in cur.fetchall()]
        except self._dbapi_error as ex:
            savepoint.rollback()
            return db_error_text(ex)
        savepoint.commit()
        created = sum(1 for f in flags if f)
        return created, len(flags) - created
