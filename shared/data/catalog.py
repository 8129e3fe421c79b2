"""Describe, page, preview and checksum the tables a site offers from its data database.

The data database is a SQLAlchemy Engine on PostgreSQL or SQLite. Table and
column names reach SQL only after they were found in the database's own
catalog (an offered table and its real columns), and always quoted; values
always travel as bound parameters.

Rows leave here already in their wire form (``shared.data.wire``). On PostgreSQL
the SELECT does the cheap part of the encoding: intervals, numerics, JSON and
types psycopg2 does not know are read as text, with ``IntervalStyle =
iso_8601`` and ``TimeZone = UTC`` set for the reading transaction only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Result, text

from shared.data import wire
from shared.errors import SyncError

ALWAYS_EXCLUDED = frozenset({"alembic_version"})
EXCLUDED_PREFIXES = ("pg_", "sqlite_", "celery_", "kombu_")

# Element kinds psycopg2 cannot turn into Python values inside an array (it
# hands back the array's text); such arrays are read as text[].
_TEXT_ARRAY_ELEMENTS = frozenset(
    {"interval", "uuid", "enum", "other", "json", "numeric"}
)


class TableNotFound(SyncError):
    """The name is not one of the offered tables."""

    def __init__(self, table: str) -> None:
        super().__init__("not_found", "Table not found", extra={"table": table})
        self.table = table


class BadCursor(SyncError):
    """An ``after`` cursor that is not the key of a row of this table.

    The message is the detail (what is wrong); the caller words the answer.
    """

    def __init__(self, detail: str) -> None:
        super().__init__("bad_request", detail)


class BadFilter(SyncError):
    """An ``ids`` / ``id_start`` / ``id_end`` value that does not fit the key.

    The message is the detail (what is wrong); the caller words the answer.
    """

    def __init__(self, detail: str) -> None:
        super().__init__("bad_request", detail)


class NoPrimaryKey(SyncError):
    """A table without a primary key cannot be paged without risking lost rows."""

    def __init__(self, table: str, detail: str) -> None:
        super().__init__("conflict", detail, extra={"table": table})
        self.table = table


@dataclass(frozen=True)
class ColumnInfo:
    """One column: its SQL type as a PostgreSQL receiver can write it, and its kind.

    ``identity`` is "always" or "by default" for identity columns (and SQLite
    rowid keys); ``generated`` marks computed columns, which are sent but
    never written.
    """

    name: str
    type: str
    kind: str
    nullable: bool
    primary_key: bool
    default: str | None
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None
    identity: str | None = None
    generated: bool = False


@dataclass(frozen=True)
class TableInfo:
    """What the catalog knows about one table."""

    name: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    unique: list[list[str]] = field(default_factory=list)
    schema: str | None = None
    dialect: str = "postgresql"

    def column(self, name: str) -> ColumnInfo:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def pk_columns(self) -> list[ColumnInfo]:
        return [self.column(name) for name in self.primary_key]

    @property
    def qualified(self) -> str:
        """The quoted, schema-qualified name for SQL."""
        if self.schema:
            return f"{quote(self.schema)}.{quote(self.name)}"
        return quote(self.name)


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


# Session settings the wire encoding relies on (and that COPY text output
# shares): ISO dates and intervals, instants in UTC.
PG_READ_SETTINGS = (
    "SET LOCAL intervalstyle = 'iso_8601'; SET LOCAL timezone = 'UTC';"
    " SET LOCAL datestyle = 'ISO, YMD'"
)


def quote(identifier: str) -> str:
    """Quote an identifier for PostgreSQL and SQLite alike."""
    return '"' + identifier.replace('"', '""') + '"'


class Catalog:
    """Offer the tables of one data database, read-only.

    Tables are described once per Catalog (build one per request or per pull).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None = None,
        excluded: Iterable[str] = (),
        checksum_row_limit: int = 100_000,
    ) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._schema = (schema or "public") if self._pg else None
        self._excluded = frozenset(excluded) | ALWAYS_EXCLUDED
        self._checksum_row_limit = checksum_row_limit
        self._described: dict[str, TableInfo] = {}

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    # --- tables --------------------------------------------------------------

    def offered_tables(self) -> list[str]:
        """Base tables of the schema, minus the excluded and system ones, sorted."""
        with self._engine.connect() as conn:
            return self._offered(conn)

    def _offered(self, conn: Connection) -> list[str]:
        if self._pg:
            names = conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')"
                    " AND NOT c.relispartition"
                ),
                {"schema": self._schema},
            ).scalars()
        else:
            names = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).scalars()
        return sorted(n for n in names if self.is_offerable(n))

    def is_offerable(self, name: str) -> bool:
        """Whether a table of this name may be offered (or written) at all."""
        return name not in self._excluded and not name.startswith(EXCLUDED_PREFIXES)

    def describe(self, table: str) -> TableInfo:
        """Describe an offered table; anything else raises TableNotFound."""
        if table in self._described:
            return self._described[table]
        with self._engine.connect() as conn:
            if not isinstance(table, str) or table not in self._offered(conn):
                raise TableNotFound(str(table))
            info = (
                self._describe_pg(conn, table)
                if self._pg
                else _describe_sqlite(conn, table)
            )
        self._described[table] = info
        return info

    def _describe_pg(self, conn: Connection, table: str) -> TableInfo:
        oid = conn.execute(
            text(
                "SELECT c.oid FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = :schema AND c.relname = :table"
            ),
            {"schema": self._schema, "table": table},
        ).scalar_one()
        params = {"oid": oid, "schema": self._schema, "table": table}
        keys = conn.execute(_PG_CONSTRAINTS, params).all()
        primary_key = next((list(k.cols) for k in keys if k.contype == "p"), [])
        columns = []
        for r in conn.execute(_PG_COLUMNS, params):
            kind = _pg_kind(r.base, r.base_type)
            if r.category == "A" and r.elem is not None:
                kind = "array:" + _pg_kind(r.elem, r.elem_type)
            default = r.default
            identity = {"a": "always", "d": "by default"}.get(r.identity or "")
            if identity and r.sequence:
                default = f"nextval('{r.sequence}'::regclass)"
            generated = r.generated == "s"
            columns.append(
                ColumnInfo(
                    name=r.name,
                    type=r.type,
                    kind=kind,
                    nullable=not r.notnull,
                    primary_key=r.name in primary_key,
                    default=None if generated else default,
                    max_length=r.max_length,
                    precision=r.precision,
                    scale=r.scale,
                    identity=identity,
                    generated=generated,
                )
            )
        return TableInfo(
            name=table,
            columns=columns,
            primary_key=primary_key,
            foreign_keys=[
                {
                    "columns": list(k.cols),
                    "references_table": k.ref_table,
                    "references_columns": list(k.ref_cols),
                }
                for k in keys
                if k.contype == "f"
            ],
            unique=[list(k.cols) for k in keys if k.contype == "u"],
            schema=self._schema,
            dialect="postgresql",
        )

    def schema_payload(self, table: str) -> dict[str, Any]:
        """The table-schema payload of PROTOCOL.md."""
        info = self.describe(table)
        return {
            "columns": [
                {
                    "name": c.name,
                    "type": c.type,
                    "nullable": c.nullable,
                    "primary_key": c.primary_key,
                    "default": c.default,
                    "max_length": c.max_length,
                    "precision": c.precision,
                    "scale": c.scale,
                }
                for c in info.columns
            ],
            "primary_key": list(info.primary_key),
            "foreign_keys": [dict(fk) for fk in info.foreign_keys],
            "unique": [list(u) for u in info.unique],
        }

    def table_summaries(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The list-tables entries for these tables, in the order given."""
        out = []
        for name in names:
            info = self.describe(name)
            with self._engine.connect() as conn:
                rows = conn.execute(
                    text(f"SELECT count(*) FROM {_table(info)}")
                ).scalar_one()
                size = self._size_bytes(conn, info)
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
                        self.checksum(name)
                        if rows <= self._checksum_row_limit
                        else None
                    ),
                }
            )
        return out

    def _size_bytes(self, conn: Connection, info: TableInfo) -> int | None:
        if self._pg:
            return int(
                conn.execute(
                    text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                    {"t": info.qualified},
                ).scalar_one()
            )
        try:  # dbstat is compiled into most SQLite builds, not all
            size = conn.exec_driver_sql(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = ?", (info.name,)
            ).scalar_one()
        except Exception:
            conn.rollback()
            return None
        return int(size) if size is not None else None

    # --- reading rows ----------------------------------------------------------

    def fetch_page(
        self, table: str, *, after: list[Any] | None, limit: int, for_body: bool = False
    ) -> Page:
        """One page of wire-encoded rows in primary-key order (keyset paging).

        With ``for_body`` (PostgreSQL), json values are pre-encoded
        ``orjson.Fragment``s, for a response body that orjson writes: it saves
        parsing each value only to write it again.

        ``after`` is the ``next_cursor`` of the previous page: the wire-encoded
        key of its last row. Keys are compared as a row value, so composite
        keys page correctly and a row is never skipped or repeated while keys
        are not rewritten.

        A table without a primary key has no order that survives concurrent
        writes (``ctid`` moves on update), so it is served only when it fits
        in one page: all rows, ``has_more`` false. A larger one raises
        NoPrimaryKey rather than risk losing or doubling rows.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        info = self.describe(table)
        if not info.primary_key:
            return self._fetch_unkeyed(info, after, limit)
        pk = info.pk_columns
        where = ""
        params: dict[str, Any] = {}
        if after is not None:
            values = self._decode_cursor(after, pk)
            where = f" WHERE ({_cols(pk)}) > ({self._params(pk, 'k', params, values)})"
        sql = (
            f"SELECT {self._select_list(info)} FROM {_table(info)}{where}"
            f" ORDER BY {_cols(pk)} LIMIT {int(limit) + 1}"
        )
        with self._reader() as conn:
            rows = self._encode_all(info, conn.execute(text(sql), params), for_body)
        has_more = len(rows) > limit
        rows = rows[:limit]
        cursor = [rows[-1][c.name] for c in pk] if has_more else None
        return Page(rows=rows, next_cursor=cursor, has_more=has_more)

    def page_extent(
        self, conn: Connection, table: str, *, after: list[Any] | None, limit: int
    ) -> PageExtent:
        """Count the keyset page after ``after`` and find its next cursor.

        For bulk formats, which stream the page's rows themselves: run it in
        the transaction (same snapshot) that reads them, on a connection with
        ``PG_READ_SETTINGS``, so the cursor encodes exactly as ``fetch_page``'s.
        One index walk of ``limit`` keys; the rows are not read.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        info = self.describe(table)
        if not info.primary_key:
            raise NoPrimaryKey(info.name, f"Table {info.name} has no primary key")
        pk = info.pk_columns
        where = ""
        params: dict[str, Any] = {}
        values = None
        if after is not None:
            values = self._decode_cursor(after, pk)
            where = f" WHERE ({_cols(pk)}) > ({self._params(pk, 'k', params, values)})"
        keys = ", ".join(_pg_select_expr(c) for c in pk) if self._pg else _cols(pk)
        # The page's last key and, if there is one, the key after it.
        ends = conn.execute(
            text(
                f"SELECT {keys} FROM {_table(info)}{where} ORDER BY {_cols(pk)}"
                f" LIMIT 2 OFFSET {int(limit) - 1}"
            ),
            params,
        ).all()
        if len(ends) == 2:
            encode = self._tuple_encoder(TableInfo(info.name, pk, info.primary_key))
            cursor = list(encode(ends[0]).values())
            return PageExtent(values, limit, cursor, True)
        if ends:
            return PageExtent(values, limit, None, False)
        count = conn.execute(
            text(f"SELECT count(*) FROM {_table(info)}{where}"), params
        ).scalar_one()
        return PageExtent(values, int(count), None, False)

    def _fetch_unkeyed(
        self, info: TableInfo, after: list[Any] | None, limit: int
    ) -> Page:
        if after is not None:
            raise BadCursor("a table without a primary key has a single page")
        with self._reader() as conn:
            count = conn.execute(
                text(f"SELECT count(*) FROM {_table(info)}")
            ).scalar_one()
            if count > limit:
                raise NoPrimaryKey(
                    info.name,
                    f"Table {info.name} has no primary key and more rows ({count})"
                    f" than one page ({limit}); it cannot be paged safely",
                )
            rows = self._encode_all(
                info,
                conn.execute(
                    text(f"SELECT {self._select_list(info)} FROM {_table(info)}")
                ),
            )
        rows.sort(key=wire.canonical_json)
        return Page(rows=rows, next_cursor=None, has_more=False)

    def preview(
        self,
        table: str,
        *,
        limit: int,
        offset: int = 0,
        ids: Sequence[Any] | None = None,
        id_start: Any = None,
        id_end: Any = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Rows for a human to look at, in primary-key order, with has_more.

        ``ids`` and the inclusive ``id_start``/``id_end`` range apply to the
        first primary-key column. A table without a key previews in storage
        order and takes no filter.
        """
        if limit < 1 or offset < 0:
            raise ValueError("limit must be positive and offset not negative")
        info = self.describe(table)
        filters: list[str] = []
        params: dict[str, Any] = {}
        if ids is not None or id_start is not None or id_end is not None:
            if not info.primary_key:
                raise BadFilter("the table has no primary key")
            first = info.pk_columns[0]
            if ids is not None:
                if not ids:
                    return [], False
                values = [_decode_filter(v, first) for v in ids]
                holders = self._params([first] * len(values), "i", params, values)
                filters.append(f"{_ident(first.name)} IN ({holders})")
            if id_start is not None:
                holder = self._params(
                    [first], "s", params, [_decode_filter(id_start, first)]
                )
                filters.append(f"{_ident(first.name)} >= {holder}")
            if id_end is not None:
                holder = self._params(
                    [first], "e", params, [_decode_filter(id_end, first)]
                )
                filters.append(f"{_ident(first.name)} <= {holder}")
        where = f" WHERE {' AND '.join(filters)}" if filters else ""
        order = f" ORDER BY {_cols(info.pk_columns)}" if info.primary_key else ""
        sql = (
            f"SELECT {self._select_list(info)} FROM {_table(info)}{where}{order}"
            f" LIMIT {int(limit) + 1} OFFSET {int(offset)}"
        )
        with self._reader() as conn:
            rows = self._encode_all(info, conn.execute(text(sql), params))
        return rows[:limit], len(rows) > limit

    def checksum(self, table: str) -> str:
        """SHA-256 hex over the rows in key order, one canonical JSON line each.

        Rows are streamed (a server-side cursor on PostgreSQL). Text keys are
        ordered by code point (``COLLATE "C"``, SQLite's BINARY) so the
        digest does not depend on the database's collation. A table without
        a key hashes its lines sorted, in memory; the row limit bounds it.
        """
        info = self.describe(table)
        digest = hashlib.sha256()
        encode = self._tuple_encoder(info)
        collate = ' COLLATE "C"' if self._pg else " COLLATE BINARY"
        order = ", ".join(
            _ident(c.name) + (collate if c.kind == "text" else "")
            for c in info.pk_columns
        )
        sql = f"SELECT {self._select_list(info)} FROM {_table(info)}"
        if order:
            sql += f" ORDER BY {order}"
        with self._reader() as conn:
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

    # --- helpers ---------------------------------------------------------------

    def _reader(self) -> _Reader:
        return _Reader(self._engine, self._pg)

    def _select_list(self, info: TableInfo) -> str:
        if not self._pg:
            return _cols(info.columns)
        return ", ".join(_pg_select_expr(c) for c in info.columns)

    def _tuple_encoder(
        self, info: TableInfo, for_body: bool = False
    ) -> Callable[[Sequence[Any]], dict[str, Any]]:
        if self._pg:
            return _pg_tuple_encoder(info, for_body)
        plan = [(c.name, wire.encoder_for(c.kind)) for c in info.columns]

        def encode(row: Sequence[Any]) -> dict[str, Any]:
            return {
                name: None if value is None else fn(value)
                for (name, fn), value in zip(plan, row)
            }

        return encode

    def _encode_all(
        self, info: TableInfo, result: Result[Any], for_body: bool = False
    ) -> list[dict[str, Any]]:
        encode = self._tuple_encoder(info, for_body)
        return [encode(row) for row in result.all()]

    def _params(
        self,
        columns: Sequence[ColumnInfo],
        prefix: str,
        params: dict[str, Any],
        values: list[Any],
    ) -> str:
        """Bind decoded key values; on PostgreSQL cast each to its column's type."""
        holders = []
        for i, (col, value) in enumerate(zip(columns, values)):
            name = f"{prefix}{i}"
            if self._pg:
                params[name] = wire.pg_param(value, col.kind)
                holders.append(f"CAST(:{name} AS {col.type})")
            else:
                params[name] = wire.sqlite_param(value, col.kind)
                holders.append(f":{name}")
        return ", ".join(holders)

    def _decode_cursor(self, after: Any, pk: list[ColumnInfo]) -> list[Any]:
        if not isinstance(after, list) or len(after) != len(pk):
            raise BadCursor(f"expected a list of {len(pk)} key value(s)")
        values = []
        for value, col in zip(after, pk):
            if value is None:
                raise BadCursor(f"{col.name}: a key value cannot be null")
            try:
                values.append(wire.decode_value(value, col.kind, col.name))
            except wire.WireError as ex:
                raise BadCursor(str(ex)) from None
        return values


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


def _ident(name: str) -> str:
    """A quoted identifier inside ``text()`` SQL, where a bare colon starts a bind."""
    return quote(name).replace(":", "\\:")


def _table(info: TableInfo) -> str:
    if info.schema:
        return f"{_ident(info.schema)}.{_ident(info.name)}"
    return _ident(info.name)


def _cols(columns: Sequence[ColumnInfo]) -> str:
    return ", ".join(_ident(c.name) for c in columns)


def _decode_filter(value: Any, col: ColumnInfo) -> Any:
    if value is None:
        raise BadFilter(f"{col.name}: null is not a key value")
    try:
        return wire.decode_value(value, col.kind, col.name)
    except wire.WireError as ex:
        raise BadFilter(str(ex)) from None


# --- PostgreSQL ------------------------------------------------------------------

_PG_KINDS = {
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "numeric": "numeric",
    "float4": "float",
    "float8": "float",
    "bool": "bool",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "citext": "text",
    "date": "date",
    "time": "time",
    "timetz": "timetz",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "bytea": "bytea",
    "json": "json",
    "jsonb": "json",
}


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
        return wire.encode_value(parsed, kind)  # type: ignore[no-any-return]

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


def _pg_kind(typname: str, typtype: str | None) -> str:
    if typtype == "e":
        return "enum"
    return _PG_KINDS.get(typname, "other")


def _pg_select_expr(col: ColumnInfo) -> str:
    name = _ident(col.name)
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


_PG_COLUMNS = text(
    """
    SELECT a.attname AS name,
           format_type(
               CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
               CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
           ) AS type,
           b.typname AS base, b.typtype AS base_type, b.typcategory AS category,
           e.typname AS elem, e.typtype AS elem_type,
           a.attnotnull AS notnull,
           pg_get_expr(d.adbin, d.adrelid) AS default,
           a.attidentity AS identity, a.attgenerated AS generated,
           CASE WHEN a.attidentity <> '' THEN pg_get_serial_sequence(
               quote_ident(:schema) || '.' || quote_ident(:table), a.attname
           ) END AS sequence,
           ic.character_maximum_length AS max_length,
           ic.numeric_precision AS precision, ic.numeric_scale AS scale
    FROM pg_attribute a
    JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_type b
      ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LEFT JOIN information_schema.columns ic
           ON ic.table_schema = :schema AND ic.table_name = :table
          AND ic.column_name = a.attname
    WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum
    """
)

_PG_CONSTRAINTS = text(
    """
    SELECT con.contype, con.conname,
           ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                 ORDER BY k.i) AS cols,
           fc.relname::text AS ref_table,
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                 ORDER BY k.i) AS ref_cols
    FROM pg_constraint con
    LEFT JOIN pg_class fc ON fc.oid = con.confrelid
    WHERE con.conrelid = :oid AND con.contype IN ('p', 'u', 'f')
    ORDER BY con.contype, con.conname
    """
)


# --- SQLite ----------------------------------------------------------------------

_SQLITE_NAMED_KINDS = {
    "BOOLEAN": "bool",
    "BOOL": "bool",
    "DATE": "date",
    "TIME": "time",
    "TIMETZ": "timetz",
    "DATETIME": "timestamp",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "INTERVAL": "interval",
    "UUID": "uuid",
    "JSON": "json",
    "JSONB": "json",
}

_PG_TYPE_FOR_KIND = {
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "text": "text",
    "date": "date",
    "time": "time without time zone",
    "timetz": "time with time zone",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "interval": "interval",
    "uuid": "uuid",
    "bytea": "bytea",
    "json": "jsonb",
    "other": "text",
}

_DECLARED = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$"
)


def sqlite_kind(declared: str) -> str:
    """The kind of a SQLite column from its declared type (names, then affinity)."""
    upper = (declared or "").strip().upper()
    match = _DECLARED.match(upper)
    base = match.group(1) if match else upper
    if base in _SQLITE_NAMED_KINDS:
        return _SQLITE_NAMED_KINDS[base]
    if "INT" in upper:
        return "int"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in upper:
        return "bytea"
    if not upper:
        return "other"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "float"
    return "numeric"


def _sqlite_column_type(
    declared: str, kind: str
) -> tuple[str, int | None, int | None, int | None]:
    """A PostgreSQL type for a SQLite column, with max_length, precision, scale."""
    match = _DECLARED.match(declared or "")
    first = int(match.group(2)) if match and match.group(2) else None
    second = int(match.group(3)) if match and match.group(3) else None
    if kind == "numeric":
        if first is None:
            return "numeric", None, None, None
        scale = second or 0
        return f"numeric({first},{scale})", None, first, scale
    if kind == "text" and first is not None and "CHAR" in (declared or "").upper():
        return f"character varying({first})", first, None, None
    return _PG_TYPE_FOR_KIND[kind], None, None, None


def _describe_sqlite(conn: Connection, table: str) -> TableInfo:
    name = quote(table)
    info_rows = conn.exec_driver_sql(f"PRAGMA table_info({name})").all()
    pk_rows = sorted((r.pk, r.name) for r in info_rows if r.pk)
    primary_key = [n for _, n in pk_rows]
    rowid_key = (
        len(primary_key) == 1
        and next(r.type for r in info_rows if r.name == primary_key[0]).strip().upper()
        == "INTEGER"
    )
    columns = []
    for r in info_rows:
        kind = sqlite_kind(r.type)
        sql_type, max_length, precision, scale = _sqlite_column_type(r.type, kind)
        is_rowid = rowid_key and r.name == primary_key[0]
        default = r.dflt_value
        if is_rowid and default is None:
            # A rowid key is generated like a serial; say so the way a
            # PostgreSQL receiver understands.
            default = f"nextval('{table}_{r.name}_seq'::regclass)"
        columns.append(
            ColumnInfo(
                name=r.name,
                type=sql_type,
                kind=kind,
                nullable=not (r.notnull or r.pk),
                primary_key=bool(r.pk),
                default=default,
                max_length=max_length,
                precision=precision,
                scale=scale,
                identity="by default" if is_rowid else None,
            )
        )
    foreign: dict[int, dict[str, Any]] = {}
    for fk in conn.exec_driver_sql(f"PRAGMA foreign_key_list({name})").all():
        entry = foreign.setdefault(
            fk.id,
            {"columns": [], "references_table": fk.table, "references_columns": []},
        )
        entry["columns"].append(fk._mapping["from"])
        entry["references_columns"].append(fk.to)
    for entry in foreign.values():
        if any(c is None for c in entry["references_columns"]):
            parent = conn.exec_driver_sql(
                f"PRAGMA table_info({quote(entry['references_table'])})"
            ).all()
            entry["references_columns"] = [
                n for _, n in sorted((r.pk, r.name) for r in parent if r.pk)
            ]
    unique = []
    for idx in conn.exec_driver_sql(f"PRAGMA index_list({name})").all():
        if idx.unique and idx.origin == "u":
            cols = conn.exec_driver_sql(f"PRAGMA index_info({quote(idx.name)})").all()
            unique.append([c.name for c in sorted(cols, key=lambda c: c.seqno)])
    return TableInfo(
        name=table,
        columns=columns,
        primary_key=primary_key,
        foreign_keys=[foreign[k] for k in sorted(foreign)],
        unique=sorted(unique),
        schema=None,
        dialect="sqlite",
    )
