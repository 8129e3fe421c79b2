"""Checksum offered tables and summarise them for list-tables.

Two checksums. ``checksum`` (dbsync's own) is defined on wire values
(canonical JSON lines in key order), not on how either database stores
them: it compares a PostgreSQL copy with a SQLite one. list-tables sends
PhoenixKit's instead, ``md5(string_agg(t::text, '' ORDER BY t::text))``
("empty" for no rows), so that a PhoenixKit receiver's "differs" marker
compares like with like; it is computed in the database and kept until the
table changes (``pg_md5``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, text

from shared.data import wire
from shared.data.schema import TableInfo, Tables, quote_text
from shared.data.sender.pages import reader, select_list, tuple_encoder


def checksum(tables: Tables, table: str) -> str:
    """SHA-256 hex over the rows in key order, one canonical JSON line each.

    Rows are streamed (a server-side cursor on PostgreSQL). Text keys are
    ordered by code point (``COLLATE "C"``, SQLite's BINARY) so the
    digest does not depend on the database's collation. A table without
    a key hashes its lines sorted, in memory; the row limit bounds it.
    """
    info = tables.describe(table)
    digest = hashlib.sha256()
    encode = tuple_encoder(tables, info)
    collate = ' COLLATE "C"' if tables.pg else " COLLATE BINARY"
    order = ", ".join(
        quote_text(c.name) + (collate if c.kind == "text" else "")
        for c in info.pk_columns
    )
    sql = f"SELECT {select_list(tables, info)} FROM {info.qualified_text}"
    if order:
        sql += f" ORDER BY {order}"
    with reader(tables) as conn:
        result = conn.execution_options(stream_results=True).execute(text(sql))
        lines: Iterator[str] = (
            wire.canonical_json(encode(row)) for row in result.yield_per(2000)
        )
        if not order:
            lines = iter(sorted(lines))
        for line in lines:
            digest.update(line.encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()


def table_summaries(
    tables: Tables, names: Iterable[str], *, checksum_row_limit: int
) -> list[dict[str, Any]]:
    """The list-tables entries for these tables, in the order given.

    A table of more than ``checksum_row_limit`` rows gets no checksum: the
    listing would take as long as reading the table.
    """
    out = []
    for name in names:
        info = tables.describe(name)
        with tables.engine.connect() as conn:
            rows: int = conn.execute(
                text(f"SELECT count(*) FROM {info.qualified_text}")
            ).scalar_one()
            size = _size_bytes(tables, conn, info)
        out.append(
            {
                "name": name,
                "row_count": rows,
                "size_bytes": size,
                "primary_key": list(info.primary_key),
                "depends_on": sorted(
                    {fk["references_table"] for fk in info.foreign_keys} - {name}
                ),
                "checksum": (
                    pg_md5(tables, info, rows) if rows <= checksum_row_limit else None
                ),
            }
        )
    return out


# (database, table) -> (what the table looked like, its md5); one per process.
_md5_cache: dict[tuple[str, str], tuple[tuple[Any, ...], str]] = {}
_md5_lock = threading.Lock()
MD5_CACHE_ENTRIES = 10_000

# What changes when a table's rows change: its file (TRUNCATE, VACUUM FULL,
# ALTER ... TYPE), its statistics counters, which each backend reports at
# the latest when it has been idle for a few seconds.
_TABLE_STATE = """
SELECT c.relfilenode, s.n_tup_ins, s.n_tup_upd, s.n_tup_del
FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.oid = CAST(:t AS regclass)
"""


def pg_md5(tables: Tables, info: TableInfo, rows: int) -> str | None:
    """PhoenixKit's checksum of a table of ``rows`` rows (None off PostgreSQL).

    ``md5(string_agg(t::text, '' ORDER BY t::text))`` in a UTC session,
    "empty" for no rows. Kept per process until the table's file, its
    insert/update/delete counters or its row count change: a listing
    re-reads only the tables that changed. PostgreSQL reports another
    session's counters when that session commits and has not reported in
    the last second, or once it has been idle 10 s: an update that changes
    no row count may show that much later.
    """
    if not tables.pg:
        return None
    if rows == 0:
        return "empty"
    cache_key = (str(tables.engine.url), info.qualified)
    with tables.engine.begin() as conn:
        state = (
            *conn.execute(text(_TABLE_STATE), {"t": info.qualified}).one(),
            rows,
        )
        with _md5_lock:
            cached = _md5_cache.get(cache_key)
        if cached is not None and cached[0] == state:
            return cached[1]
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        conn.exec_driver_sql("SET LOCAL DateStyle = 'ISO, MDY'")
        conn.exec_driver_sql("SET LOCAL IntervalStyle = 'postgres'")
        digest: str | None = conn.execute(
            text(
                "SELECT md5(string_agg(t::text, '' ORDER BY t::text))"
                f" FROM {info.qualified_text} AS t"
            )
        ).scalar_one()
    found = "empty" if digest is None else str(digest)
    with _md5_lock:
        if len(_md5_cache) >= MD5_CACHE_ENTRIES:
            _md5_cache.clear()
        _md5_cache[cache_key] = (state, found)
    return found


def _size_bytes(tables: Tables, conn: Connection, info: TableInfo) -> int | None:
    if tables.pg:
        return int(
            conn.execute(
                text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                {"t": info.qualified},
            ).scalar_one()
        )
    try:  # dbstat is compiled into most SQLite builds, not all
        size: int | None = conn.exec_driver_sql(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = ?", (info.name,)
        ).scalar_one()
    except Exception:
        conn.rollback()
        return None
    return int(size) if size is not None else None
