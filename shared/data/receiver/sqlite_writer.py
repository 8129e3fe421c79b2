"""Write pulled rows into a SQLite table: one executemany upsert per page.

A SQLite receiver takes every page as JSON rows, decoded by the target's own
column kinds. The page goes in as one executemany upsert, row by row in
savepoints only when that is rejected, so a bad row fails alone and the rest
of the page still lands. The caller's transaction, which also saves the
checkpoint, is never committed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from shared.data import wire
from shared.data.ddl import db_error_text
from shared.data.receiver.pages import PageResult
from shared.data.schema import ColumnInfo, TableInfo, quote


@dataclass
class _Entry:
    """One decoded row ready to bind, with the key to report it by."""

    key: Any
    params: tuple[Any, ...]


def write_rows(
    conn: Connection,
    info: TableInfo,
    columns: list[ColumnInfo],
    rows: Sequence[Mapping[str, Any]],
    strategy: str,
    result: PageResult,
) -> None:
    """Apply wire rows, decoded by the target's column kinds; counts go into ``result``."""
    pk = info.pk_columns
    plan = [(c.name, wire.binder_for(c.kind, conn.dialect.name)) for c in columns]
    entries: list[_Entry] = []
    for row in rows:
        key = [row.get(c.name) for c in pk] if pk else None
        try:
            params = tuple(_bind_row(row, plan))
        except wire.WireError as ex:
            result.fail(key, str(ex))
            continue
        entries.append(_Entry(key, params))
    if strategy != "append":
        entries = _last_wins(entries, [columns.index(c) for c in pk], result)
    if entries:
        _SqliteApply(conn, info, columns, strategy, result).run(entries)


def _bind_row(
    row: Mapping[str, Any], plan: list[tuple[str, Callable[[Any], Any]]]
) -> Iterator[Any]:
    """Decode a row by the target's kinds into bind parameters, in column order."""
    for name, bind in plan:
        try:
            yield bind(row.get(name))
        except ValueError as ex:
            raise wire.WireError(name, str(ex)) from None


def _last_wins(
    entries: list[_Entry], key_idx: list[int], result: PageResult
) -> list[_Entry]:
    """Keep the last row of each key, in page order; count the others skipped."""
    last: dict[Any, int] = {}
    for i, entry in enumerate(entries):
        last[_hashable(tuple(entry.params[j] for j in key_idx))] = i
    kept = sorted(last.values())
    result.skipped += len(entries) - len(kept)
    return [entries[i] for i in kept]


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class _SqliteApply:
    """executemany upserts; counts from the keys that existed before."""

    def __init__(
        self,
        conn: Connection,
        info: TableInfo,
        columns: list[ColumnInfo],
        strategy: str,
        result: PageResult,
    ) -> None:
        self._conn = conn
        self._info = info
        self._columns = columns
        self._strategy = strategy
        self._result = result

    def run(self, entries: list[_Entry]) -> None:
        dbapi = self._conn.connection.driver_connection
        if not dbapi.in_transaction:  # type: ignore[union-attr]  # sqlite3 connection, never None here
            # pysqlite opens a transaction only before DML; a SAVEPOINT issued
            # first would become the outer transaction and RELEASE would commit.
            self._conn.exec_driver_sql("BEGIN")
        sql = self._statement()
        exists = (
            self._existing(entries) if self._strategy != "append" else lambda e: False
        )
        savepoint = self._conn.begin_nested()
        try:
            self._conn.exec_driver_sql(sql, [e.params for e in entries])
        except DBAPIError:
            savepoint.rollback()
            written = []
            for entry in entries:
                row_savepoint = self._conn.begin_nested()
                try:
                    self._conn.exec_driver_sql(sql, entry.params)
                except DBAPIError as ex:
                    row_savepoint.rollback()
                    self._result.fail(entry.key, db_error_text(ex))
                    continue
                row_savepoint.commit()
                written.append(entry)
        else:
            savepoint.commit()
            written = entries
        for entry in written:
            if not exists(entry):
                self._result.created += 1
            elif self._strategy == "skip":
                self._result.skipped += 1
            else:
                self._result.updated += 1

    def _statement(self) -> str:
        cols = ", ".join(quote(c.name) for c in self._columns)
        marks = ", ".join("?" for _ in self._columns)
        head = f"INSERT INTO {quote(self._info.name)} ({cols}) VALUES ({marks})"
        if self._strategy == "append":
            return head
        pk = ", ".join(quote(n) for n in self._info.primary_key)
        others = [c for c in self._columns if c.name not in self._info.primary_key]
        if self._strategy == "skip" or not others:
            return head + f" ON CONFLICT ({pk}) DO NOTHING"
        table = quote(self._info.name)
        if self._strategy == "overwrite":
            sets = [f"{quote(c.name)} = excluded.{quote(c.name)}" for c in others]
        else:
            sets = [
                f"{quote(c.name)} = COALESCE(excluded.{quote(c.name)},"
                f" {table}.{quote(c.name)})"
                for c in others
            ]
        return head + f" ON CONFLICT ({pk}) DO UPDATE SET {', '.join(sets)}"

    def _existing(self, entries: list[_Entry]) -> Callable[[_Entry], bool]:
        idx = [self._columns.index(c) for c in self._info.pk_columns]
        pk = ", ".join(quote(n) for n in self._info.primary_key)
        found: set[Any] = set()
        for start in range(0, len(entries), 200):
            chunk = entries[start : start + 200]
            rows = ", ".join("(" + ", ".join("?" for _ in idx) + ")" for _ in chunk)
            params = [e.params[j] for e in chunk for j in idx]
            found.update(
                tuple(r)
                for r in self._conn.exec_driver_sql(
                    f"SELECT {pk} FROM {quote(self._info.name)}"
                    f" WHERE ({pk}) IN (VALUES {rows})",
                    tuple(params),
                )
            )
        return lambda e: tuple(e.params[j] for j in idx) in found
