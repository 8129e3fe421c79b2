"""Read JSON pull-data pages: keyset pages of wire-encoded rows, and unkeyed tables.

Rows leave here already in their wire form (``shared.data.wire``). On PostgreSQL
the SELECT does the cheap part of the encoding: intervals, numerics, JSON and
types psycopg2 does not know are read as text, with ``IntervalStyle =
iso_8601`` and ``TimeZone = UTC`` set for the reading transaction only. The
preview and the checksum read rows with the same reader and encoders.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Result, text

from shared.data import wire
from shared.data.keyset import BadCursor, Keyset, Since, binds, column_list
from shared.data.schema import (
    PG_READ_SETTINGS,
    ColumnInfo,
    NoPrimaryKey,
    TableInfo,
    Tables,
    quote_text,
)

# Element kinds psycopg2 cannot turn into Python values inside an array (it
# hands back the array's text); such arrays are read as text[].
_TEXT_ARRAY_ELEMENTS = frozenset(
    {"interval", "uuid", "enum", "other", "json", "numeric"}
)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: list[Any] | None
    has_more: bool


@dataclass(frozen=True)
class PageExtent:
    """Where a keyset page lies, found without reading its rows.

    ``after`` holds the decoded key values the page starts after (None for the
    first page); the page is the next ``count`` rows in key order.
    """

    after: list[Any] | None
    count: int
    next_cursor: list[Any] | None
    has_more: bool


def fetch_page(
    tables: Tables,
    table: str,
    *,
    after: list[Any] | None,
    limit: int,
    for_body: bool = False,
    max_bytes: int | None = None,
    until: list[Any] | None = None,
    since: Since | None = None,
) -> Page:
    """One page of wire-encoded rows in primary-key order (keyset paging).

    With ``max_bytes`` the page also ends before the row that would take it
    past that many bytes (``row_bytes``: about their size on the wire), one
    row at least; rows are read from a server-side cursor as they are
    encoded, so a page of large values never sits in memory whole.

    With ``for_body`` (PostgreSQL), json values are pre-encoded
    ``orjson.Fragment``s, for a response body that orjson writes: it saves
    parsing each value only to write it again.

    ``after`` is the ``next_cursor`` of the previous page: the wire-encoded
    key of its last row (see ``shared.data.keyset``). ``since`` keeps only
    the rows whose cursor column is beyond a value (paging stays on the key).

    A table without a primary key has no order that survives concurrent
    writes (``ctid`` moves on update), so it is served only when it fits
    in one page: all rows, ``has_more`` false. A larger one raises
    NoPrimaryKey rather than risk losing or doubling rows.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    info = tables.describe(table)
    if not info.primary_key:
        return _fetch_unkeyed(tables, info, after, limit, until, since)
    pk = info.pk_columns
    keyset = Keyset.after_cursor(info, after, pg=tables.pg, until=until, since=since)
    sql = keyset.select(select_list(tables, info), limit=int(limit) + 1)
    with reader(tables) as conn:
        if max_bytes is None:
            rows = encode_all(
                tables, info, conn.execute(text(sql), keyset.params), for_body
            )
            has_more = len(rows) > limit
            rows = rows[:limit]
        else:
            streamed = conn.execution_options(stream_results=True, max_row_buffer=100)
            rows, has_more = _encode_within(
                tuple_encoder(tables, info, for_body),
                streamed.execute(text(sql), keyset.params),
                limit,
                max_bytes,
            )
    cursor = [rows[-1][c.name] for c in pk] if has_more else None
    return Page(rows=rows, next_cursor=cursor, has_more=has_more)


def page_extent(
    tables: Tables,
    conn: Connection,
    table: str,
    *,
    after: list[Any] | None,
    limit: int,
    until: list[Any] | None = None,
    since: Since | None = None,
) -> PageExtent:
    """Count the keyset page after ``after`` and find its next cursor.

    For bulk formats, which stream the page's rows themselves: run it in
    the transaction (same snapshot) that reads them, on a connection with
    ``PG_READ_SETTINGS``, so the cursor encodes exactly as ``fetch_page``'s.
    One index walk of ``limit`` keys; the rows are not read.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    info = tables.describe(table)
    if not info.primary_key:
        raise NoPrimaryKey(info.name, f"Table {info.name} has no primary key")
    pk = info.pk_columns
    keyset = Keyset.after_cursor(info, after, pg=tables.pg, until=until, since=since)
    keys = ", ".join(_pg_select_expr(c) for c in pk) if tables.pg else column_list(pk)
    values = keyset.after
    # The page's last key and, if there is one, the key after it.
    ends = conn.execute(
        text(keyset.select(keys, limit=2, offset=int(limit) - 1)), keyset.params
    ).all()
    if len(ends) == 2:
        encode = tuple_encoder(tables, TableInfo(info.name, pk, info.primary_key))
        cursor = list(encode(ends[0]).values())
        return PageExtent(values, limit, cursor, True)
    if ends:
        return PageExtent(values, limit, None, False)
    count: int = conn.execute(text(keyset.count()), keyset.params).scalar_one()
    return PageExtent(values, int(count), None, False)


def high_water(tables: Tables, info: TableInfo, column: str) -> Any:
    """The largest value of ``column`` in the table now, wire-encoded (None:
    no row has one): a ``since`` pull's high-water mark.

    Read before the pull's first page, in its own statement: every row that
    page and the later ones skip for being at or below the mark was
    committed by then (or commits late, which the receiver's look-back is
    for)."""
    col = info.column(column)
    one = TableInfo(info.name, [col], [])
    expr = _pg_select_expr(col) if tables.pg else quote_text(col.name)
    with reader(tables) as conn:
        row = conn.execute(
            text(
                f"SELECT {expr} FROM {info.qualified_text}"
                f" WHERE {quote_text(col.name)} IS NOT NULL"
                f" ORDER BY {quote_text(col.name)} DESC LIMIT 1"
            )
        ).first()
    return None if row is None else tuple_encoder(tables, one)(row)[col.name]


def row_bytes(row: Sequence[Any]) -> int:
    """About the bytes a row read with ``select_list`` takes on the wire: text
    as it is, binary as base64, anything else a few bytes."""
    size = 2
    for value in row:
        if isinstance(value, str):
            size += len(value) + 4
        elif isinstance(value, (bytes, bytearray, memoryview)):
            size += len(value) * 4 // 3 + 32
        else:
            size += 12
    return size


def _encode_within(
    encode: Callable[[Sequence[Any]], dict[str, Any]],
    result: Result[Any],
    limit: int,
    max_bytes: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Encode rows of ``result`` up to ``limit`` rows and ``max_bytes``; and
    whether rows are left."""
    rows: list[dict[str, Any]] = []
    size = 0
    for row in result:
        if len(rows) >= limit:
            return rows, True
        size += row_bytes(row)
        if rows and size > max_bytes:
            return rows, True
        rows.append(encode(row))
    return rows, False


def _fetch_unkeyed(
    tables: Tables,
    info: TableInfo,
    after: list[Any] | None,
    limit: int,
    until: list[Any] | None = None,
    since: Since | None = None,
) -> Page:
    if after is not None or until is not None:
        raise BadCursor("a table without a primary key has a single page")
    params: dict[str, Any] = {}
    where = ""
    if since is not None and since.value is not None:
        holder = binds([since.column], "s", params, [since.value], pg=tables.pg)
        where = f" WHERE {quote_text(since.column.name)} > {holder}"
    with reader(tables) as conn:
        count: int = conn.execute(
            text(f"SELECT count(*) FROM {info.qualified_text}{where}"), params
        ).scalar_one()
        if count > limit:
            raise NoPrimaryKey(
                info.name,
                f"Table {info.name} has no primary key and more rows ({count})"
                f" than one page ({limit}); it cannot be paged safely",
            )
        rows = encode_all(
            tables,
            info,
            conn.execute(
                text(
                    f"SELECT {select_list(tables, info)}"
                    f" FROM {info.qualified_text}{where}"
                ),
                params,
            ),
        )
    rows.sort(key=wire.canonical_json)
    return Page(rows=rows, next_cursor=None, has_more=False)


# --- reading and encoding rows ------------------------------------------------------


def reader(tables: Tables) -> _Reader:
    """A read-only transaction on the data database, for reading wire rows."""
    return _Reader(tables.engine, tables.pg)


def select_list(tables: Tables, info: TableInfo) -> str:
    """The SELECT list that reads every column of ``info`` for its encoder."""
    if not tables.pg:
        return column_list(info.columns)
    return ", ".join(_pg_select_expr(c) for c in info.columns)


def tuple_encoder(
    tables: Tables, info: TableInfo, for_body: bool = False
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Turn a row read with ``select_list`` into its wire-encoded dict."""
    if tables.pg:
        return _pg_tuple_encoder(info, for_body)
    plan = [(c.name, wire.encoder_for(c.kind)) for c in info.columns]

    def encode(row: Sequence[Any]) -> dict[str, Any]:
        return {
            name: None if value is None else fn(value)
            for (name, fn), value in zip(plan, row)
        }

    return encode


def encode_all(
    tables: Tables, info: TableInfo, result: Result[Any], for_body: bool = False
) -> list[dict[str, Any]]:
    """Every row of ``result``, wire-encoded."""
    encode = tuple_encoder(tables, info, for_body)
    return [encode(row) for row in result.all()]


class _Reader:
    """A read-only transaction, on PostgreSQL with the settings encoding relies on."""

    def __init__(self, engine: Engine, pg: bool) -> None:
        self._engine = engine
        self._pg = pg
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        conn = self._engine.connect()
        if self._pg:
            conn.exec_driver_sql(PG_READ_SETTINGS)
        self._conn = conn
        return conn

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        self._conn.rollback()
        self._conn.close()


# --- PostgreSQL ------------------------------------------------------------------

# Kinds whose values psycopg2 hands over, as ``_pg_select_expr`` selects
# them, already in their wire form: int, bool, str.
_PG_AS_SELECTED = frozenset(
    {"int", "bool", "text", "enum", "numeric", "interval", "uuid", "other"}
)
# Kinds selected as text (under PG_READ_SETTINGS: ISO dates, UTC) and
# respelled the way datetime.isoformat writes them, which is cheaper than
# building datetime objects.
_PG_TEXT_TEMPORAL = frozenset({"date", "timestamp", "timestamptz"})
_INFINITE = {
    "date": ("9999-12-31", "0001-01-01"),
    "timestamp": ("9999-12-31T23:59:59.999999", "0001-01-01T00:00:00"),
    "timestamptz": ("9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00+00:00"),
}  # psycopg2 reads infinity as datetime.max and -infinity as datetime.min


def _pg_temporal_text(kind: str) -> Callable[[str], str]:
    """PostgreSQL's text of a ``kind`` value -> its wire spelling (isoformat)."""
    tail = "+00" if kind == "timestamptz" else ""  # UTC, as PG_READ_SETTINGS reads
    zone = "+00:00" if tail else ""
    whole = 19 + len(tail)  # "2015-01-01 00:00:37+00"
    late, early = _INFINITE[kind]

    def respell(text: str) -> str:
        if kind == "date":
            if len(text) == 10 and text[4:5] == "-":
                return text
        elif text[10:11] == " " and text[4:5] == "-" and text.endswith(tail):
            if len(text) == whole:
                return f"{text[:10]}T{text[11:19]}{zone}"
            fraction = text[20 : len(text) - len(tail)]
            if text[19:20] == "." and fraction.isdigit() and len(fraction) <= 6:
                # PostgreSQL drops a fraction's trailing zeros; isoformat keeps six.
                return f"{text[:10]}T{text[11:19]}.{fraction.ljust(6, '0')}{zone}"
        if text == "infinity":
            return late
        if text == "-infinity":
            return early
        # Anything else (another offset, a year beyond 9999, BC) as a driver
        # value would go; fromisoformat refuses what datetime cannot hold.
        parsed = (dt.date if kind == "date" else dt.datetime).fromisoformat(text)
        return wire.encode_value(parsed, kind)  # str for these kinds

    return respell


def _json_fragment(text: str) -> Any:
    """A json column's text as it goes into a response body, unparsed."""
    if text.strip() == "null":
        return {wire.JSON_NULL_MARKER: True}
    return orjson.Fragment(text)


def _pg_encoder(kind: str, for_body: bool) -> Callable[[Any], Any] | None:
    """How a PostgreSQL value of ``kind``, as selected, becomes its wire form;
    None when it already is."""
    if kind in _PG_AS_SELECTED:
        return None
    if kind in _PG_TEXT_TEMPORAL:
        return _pg_temporal_text(kind)
    if kind == "json" and for_body:
        return _json_fragment
    return wire.encoder_for(kind)


def _pg_tuple_encoder(
    info: TableInfo, for_body: bool = False
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Encode PostgreSQL rows, calling an encoder only where a kind needs one."""
    names = [c.name for c in info.columns]
    fixes = [
        (c.name, i, fn)
        for i, c in enumerate(info.columns)
        if (fn := _pg_encoder(c.kind, for_body)) is not None
    ]

    def encode(row: Sequence[Any]) -> dict[str, Any]:
        out = dict(zip(names, row))
        for name, i, fn in fixes:
            value = row[i]
            if value is not None:
                out[name] = fn(value)
        return out

    return encode


def _pg_select_expr(col: ColumnInfo) -> str:
    name = quote_text(col.name)
    kind = col.kind
    if (
        kind in ("interval", "numeric", "json", "other", "uuid")
        or kind in _PG_TEXT_TEMPORAL
    ):
        return f"{name}::text"
    if wire.is_array(kind):
        inner = kind
        while wire.is_array(inner):
            inner = wire.element_kind(inner)
        if inner in _TEXT_ARRAY_ELEMENTS:
            return f"{name}::text[]"
    return name
