"""Checksum offered tables and summarise them for list-tables.

A checksum is what two sites compare to know a copy is exact, so it is
defined on wire values (canonical JSON lines in key order), not on how
either database stores them.
"""

from __future__ import annotations

import hashlib
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
                    checksum(tables, name) if rows <= checksum_row_limit else None
                ),
            }
        )
    return out


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
