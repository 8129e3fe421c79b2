"""Apply pages of pulled rows to a target table; create missing tables from a schema.

``import_page`` runs inside the caller's transaction (the caller advances its
checkpoint in the same one) and never commits. On PostgreSQL a page is
rendered as COPY text and applied through shared.data.receiver.copy_in (staging table, one
set-based statement per strategy, smaller statements down to one row only
when the database rejects it). On SQLite it is one executemany upsert, row
by row in savepoints only when that is rejected, so a bad row fails alone and
the rest of the page still lands.

Counting rules, so ``created + updated + skipped + failed == len(rows)``:

- A row whose values do not decode for the target's columns is failed.
- Duplicate keys inside one page: the last occurrence wins (it is the one
  written); each earlier occurrence is counted as skipped.
- skip: rows whose key exists are skipped. overwrite / merge: they are
  updated, even when no value changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from shared.data import wire
from shared.data.receiver import copy_in as copyin
from shared.data.receiver.copy_in import ImportRefused, PageResult, db_error_text
from shared.data.schema import ColumnInfo, TableInfo, quote

STRATEGIES = ("skip", "overwrite", "merge", "append")


class AppendNotSupported(ImportRefused):
    """``append`` needs a single-column key that the database generates."""


class UnsafeSchema(ImportRefused):
    """A table-schema payload this site will not turn into SQL."""


@dataclass
class _Entry:
    """One decoded row ready to bind, with the key to report it by."""

    key: Any
    params: tuple[Any, ...]


def import_page(
    conn: Connection,
    table_info: TableInfo,
    rows: Sequence[Mapping[str, Any]],
    strategy: str,
    *,
    direct: bool = False,
) -> PageResult:
    """Apply wire rows to ``table_info``'s table with a conflict strategy.

    Values are decoded by the target's own column kinds; incoming columns the
    target lacks (or computes itself) are ignored and listed once in
    ``ignored_columns``. Raises ImportRefused (AppendNotSupported for
    append) when the strategy cannot apply to this table at all, e.g. a
    table without a primary key. ``direct`` (PostgreSQL) copies straight
    into a target expected to hold none of the rows' keys.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown conflict strategy {strategy!r}")
    result = PageResult()
    incoming = dict.fromkeys(chain.from_iterable(rows))  # every name, first seen first
    columns, result.ignored_columns = choose_columns(
        table_info, list(incoming), strategy, check_keys=bool(rows)
    )
    pk = table_info.pk_columns
    if not rows:
        return result
    if conn.dialect.name == "postgresql":
        copyin.import_rows(
            conn, table_info, columns, rows, strategy, result, direct=direct
        )
        return result

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
        _SqliteApply(conn, table_info, columns, strategy, result).run(entries)
    return result


def choose_columns(
    info: TableInfo, incoming: Sequence[str], strategy: str, *, check_keys: bool = True
) -> tuple[list[ColumnInfo], list[str]]:
    """The target columns a page writes (in table order) and the incoming ones ignored.

    Incoming columns the target lacks or computes itself are ignored. Raises
    ImportRefused (AppendNotSupported for append) when the strategy cannot
    apply to this table at all; ``check_keys`` also requires the key columns
    among the incoming ones.
    """
    names = set(incoming)
    writable = {c.name for c in info.columns if not c.generated}
    ignored = sorted(n for n in names if n not in writable)
    columns = [c for c in info.columns if c.name in writable and c.name in names]
    if strategy == "append":
        key_col = check_append(info)
        columns = [c for c in columns if c.name != key_col.name]
        if not columns:
            raise AppendNotSupported(
                f"Rows for {info.name} carry no column besides the key"
            )
        return columns, ignored
    if not info.primary_key:
        raise ImportRefused(
            f"Table {info.name} has no primary key: a new row cannot be"
            " told from one already there",
        )
    missing = [n for n in info.primary_key if n not in names]
    if check_keys and missing:
        raise ImportRefused(f"Rows for {info.name} lack key column(s) {missing}")
    return columns, ignored


def _bind_row(
    row: Mapping[str, Any], plan: list[tuple[str, Callable[[Any], Any]]]
) -> Iterator[Any]:
    """Decode a row by the target's kinds into bind parameters, in column order."""
    for name, bind in plan:
        try:
            yield bind(row.get(name))
        except ValueError as ex:
            raise wire.WireError(name, str(ex)) from None


def check_append(info: TableInfo) -> ColumnInfo:
    """Return the generated key column ``append`` leaves to the database.

    Raises AppendNotSupported unless the primary key is one column with a
    default, identity or sequence.
    """
    if len(info.primary_key) != 1:
        raise AppendNotSupported(
            f"append needs a single-column generated primary key; {info.name} has"
            f" {'none' if not info.primary_key else 'key ' + str(info.primary_key)}"
        )
    col = info.pk_columns[0]
    if col.identity is None and col.default is None:
        raise AppendNotSupported(
            f"append needs a primary key the database generates; {info.name}.{col.name}"
            " has no default, identity or sequence (use skip, overwrite or merge)"
        )
    return col


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


# --- SQLite ----------------------------------------------------------------------


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
        if not dbapi.in_transaction:  # type: ignore[union-attr]
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


# --- creating tables -------------------------------------------------------------

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_PG_TYPE = re.compile(
    r"""^(?:
        smallint|integer|bigint|int|int2|int4|int8|smallserial|serial|bigserial|
        serial2|serial4|serial8|
        real|float4|float8|double\ precision|float(?:\(\d{1,2}\))?|
        (?:numeric|decimal)(?:\(\d{1,4}(?:,\ ?-?\d{1,4})?\))?|
        boolean|bool|text|name|citext|
        (?:character\ varying|varchar|character|char|bpchar)(?:\(\d{1,8}\))?|
        date|timetz|timestamptz|
        (?:time|timestamp)(?:\(\d\))?(?:\ with(?:out)?\ time\ zone)?|
        interval(?:\ (?:year|month|day|hour|minute|second)
                 (?:\ to\ (?:month|hour|minute|second))?)?(?:\(\d\))?|
        uuid|bytea|json|jsonb|inet|cidr|macaddr|macaddr8|money|xml|tsvector|
        bit(?:\ varying)?(?:\(\d{1,8}\))?|varbit|
        int4range|int8range|numrange|tsrange|tstzrange|daterange|point|oid
    )$""",
    re.VERBOSE,
)
_SERIALS = {
    "smallserial": "smallint", "serial2": "smallint", "serial": "integer",
    "serial4": "integer", "bigserial": "bigint", "serial8": "bigint",
}  # fmt: skip
_INTEGER_TYPES = {"smallint", "integer", "bigint", "int", "int2", "int4", "int8"}
_SIZED = {"character varying", "varchar", "character", "char"}
_CAST = re.compile(
    r"""::(?:"[^"]+"|[a-z_][a-z0-9_ ]*)(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])*$""",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_STRING = re.compile(r"^'(?:[^']|'')*'$")
_CLOCKS = {
    "now()": ("now()", "CURRENT_TIMESTAMP"),
    "current_timestamp": ("CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP"),
    "transaction_timestamp()": ("now()", "CURRENT_TIMESTAMP"),
    "current_date": ("CURRENT_DATE", "CURRENT_DATE"),
    "current_time": ("CURRENT_TIME", "CURRENT_TIME"),
    "localtimestamp": ("LOCALTIMESTAMP", "CURRENT_TIMESTAMP"),
}


@dataclass
class TableCreation:
    """The statements that created a table, and what of the schema was left out."""

    statements: list[str]
    warnings: list[str]


def create_table(
    conn: Connection,
    table_name: str,
    schema_payload: Mapping[str, Any],
    *,
    existing_tables: set[str],
) -> TableCreation:
    """Create ``table_name`` from a table-schema payload, in the caller's transaction.

    Only what is safe to write as SQL is kept:

    - names must match ``^[A-Za-z_][A-Za-z0-9_]{0,62}$`` (UnsafeSchema otherwise);
    - types must match a grammar of common PostgreSQL types; anything else
      (enums, domains, extension types) becomes ``text`` (an unknown array
      type ``text[]``; information_schema's bare ``ARRAY`` becomes ``jsonb``);
    - defaults only when constant: numbers, strings, booleans, NULL, now() /
      CURRENT_TIMESTAMP and friends. A ``nextval(...)`` default (serial,
      identity) on a single integer primary key makes the column
      ``GENERATED BY DEFAULT AS IDENTITY``; other defaults are dropped;
    - foreign keys only to tables that exist (or to this one); on PostgreSQL
      each is added on its own and skipped, with a warning, if refused.

    On SQLite types map to affinities (numerics are stored as exact TEXT;
    JSON and arrays as JSON text).
    """
    if not isinstance(table_name, str) or not NAME.match(table_name):
        raise UnsafeSchema(f"Invalid table name {table_name!r}")
    if table_name in existing_tables:
        raise UnsafeSchema(f"Table {table_name} already exists")
    pg = conn.dialect.name == "postgresql"
    warnings: list[str] = []
    columns = schema_payload.get("columns")
    if not isinstance(columns, list) or not columns:
        raise UnsafeSchema("Schema has no columns")
    names = [
        _checked_name(c.get("name") if isinstance(c, Mapping) else None)
        for c in columns
    ]
    if len(set(names)) != len(names):
        raise UnsafeSchema("Schema repeats a column name")
    primary_key = schema_payload.get("primary_key") or [
        c["name"] for c in columns if c.get("primary_key")
    ]
    primary_key = [_checked_name(n) for n in primary_key]
    if any(n not in names for n in primary_key):
        raise UnsafeSchema("Primary key names a column the schema does not have")

    lines = []
    for col in columns:
        name = col["name"]
        sql_type, generated_key, note = _column_type(
            col, single_pk=primary_key == [name], pg=pg
        )
        if note:
            warnings.append(f"{name}: {note}")
        line = f"{quote(name)} {sql_type}"
        if generated_key:
            line += " GENERATED BY DEFAULT AS IDENTITY" if pg else ""
        else:
            default, dropped = _constant_default(col.get("default"), pg)
            if default is not None:
                line += f" DEFAULT {default}"
            elif dropped:
                warnings.append(f"{name}: default {col.get('default')!r} not kept")
        if col.get("nullable") is False and name not in primary_key:
            line += " NOT NULL"
        lines.append(line)
    if primary_key:
        lines.append(f"PRIMARY KEY ({', '.join(quote(n) for n in primary_key)})")
    for group in schema_payload.get("unique") or []:
        if isinstance(group, list) and group and all(n in names for n in group):
            lines.append(
                f"UNIQUE ({', '.join(quote(_checked_name(n)) for n in group)})"
            )
    foreign = []
    for fk in schema_payload.get("foreign_keys") or []:
        clause = _foreign_key(fk, table_name, names, existing_tables)
        if clause is None:
            warnings.append(f"foreign key {fk!r} not kept: referenced table is missing")
        else:
            foreign.append(clause)
    if not pg:
        lines.extend(foreign)
    statements = [
        f"CREATE TABLE {quote(table_name)} (\n  " + ",\n  ".join(lines) + "\n)"
    ]
    # psycopg2 formats even a parameterless statement: a % in a default or a
    # name must be doubled there.
    escape: Callable[[str], str] = (lambda sql: sql.replace("%", "%%")) if pg else str
    conn.exec_driver_sql(escape(statements[0]))
    if pg:
        for clause in foreign:
            sql = f"ALTER TABLE {quote(table_name)} ADD {clause}"
            savepoint = conn.begin_nested()
            try:
                conn.exec_driver_sql(escape(sql))
            except DBAPIError as ex:
                savepoint.rollback()
                warnings.append(f"{clause} not kept: {db_error_text(ex)}")
            else:
                savepoint.commit()
                statements.append(sql)
    return TableCreation(statements, warnings)


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UnsafeSchema(f"Invalid identifier {name!r}")
    return name


def _column_type(
    col: Mapping[str, Any], *, single_pk: bool, pg: bool
) -> tuple[str, bool, str]:
    """(SQL type, whether it is a generated integer key, a note if the type changed)."""
    raw = col.get("type")
    if not isinstance(raw, str):
        raise UnsafeSchema(f"Column {col['name']} has no type")
    text = " ".join(raw.strip().lower().split())
    dims = 0
    while text.endswith("[]"):
        text, dims = text[:-2].rstrip(), dims + 1
    note = ""
    if text == "array" and dims == 0:  # information_schema's data_type for any array
        text, note = "jsonb", "array of unknown element type stored as jsonb"
    text = _with_size(text, col)
    if not _PG_TYPE.match(text):
        note = f"type {raw!r} stored as text"
        text = "text"
    serial = text in _SERIALS
    if serial:
        text = _SERIALS[text]
    default = col.get("default")
    nextval = isinstance(default, str) and default.strip().lower().startswith(
        "nextval("
    )
    generated_key = (
        single_pk and dims == 0 and text in _INTEGER_TYPES and (serial or nextval)
    )
    if pg:
        return text + "[]" * dims, generated_key, note
    return ("JSON" if dims else _sqlite_type(text)), generated_key, note


def _with_size(text: str, col: Mapping[str, Any]) -> str:
    """Add the length/precision information_schema gives apart from the type name."""
    if text in _SIZED and isinstance(col.get("max_length"), int):
        return f"{text}({col['max_length']})"
    precision, scale = col.get("precision"), col.get("scale")
    if text in ("numeric", "decimal") and isinstance(precision, int):
        return f"{text}({precision},{scale if isinstance(scale, int) else 0})"
    return text


def _sqlite_type(text: str) -> str:
    base = text.split("(")[0]
    if base in _INTEGER_TYPES or base in _SERIALS:
        return "INTEGER"
    if base in ("numeric", "decimal", "money"):
        return "TEXT"  # exact: SQLite's NUMERIC affinity would round to REAL
    if base in ("real", "float4", "float8", "double precision", "float"):
        return "REAL"
    if base in ("boolean", "bool"):
        return "BOOLEAN"
    if base == "date":
        return "DATE"
    if base in ("time", "timetz", "timestamp", "timestamptz"):
        zoned = base.endswith("tz") or text.endswith(" with time zone")
        return ("TIMESTAMP" if base.startswith("timestamp") else "TIME") + (
            "TZ" if zoned else ""
        )
    if base.startswith("interval"):
        return "INTERVAL"
    if base == "uuid":
        return "UUID"
    if base == "bytea":
        return "BLOB"
    if base in ("json", "jsonb"):
        return "JSON"
    return "TEXT"


def _constant_default(default: Any, pg: bool) -> tuple[str | None, bool]:
    """(SQL for a constant default or None, whether a default was dropped)."""
    if default is None:
        return None, False
    if isinstance(default, bool):
        return ("TRUE" if default else "FALSE"), False
    if isinstance(default, (int, float)):
        return repr(default), False
    if not isinstance(default, str):
        return None, True
    text = default.strip()
    for _ in range(5):  # peel casts and parentheses: ('x'::text), (-1)::integer
        stripped = _CAST.sub("", text).strip()
        if stripped.startswith("(") and stripped.endswith(")"):
            stripped = stripped[1:-1].strip()
        if stripped == text:
            break
        text = stripped
    lower = text.lower()
    if lower == "null":
        return None, False
    if _NUMBER.match(text) or _STRING.match(text):
        return text, False
    if lower in ("true", "false"):
        return lower.upper(), False
    if lower in _CLOCKS:
        return _CLOCKS[lower][0 if pg else 1], False
    return None, True


def _foreign_key(
    fk: Any, table_name: str, names: list[str], existing: set[str]
) -> str | None:
    if not isinstance(fk, Mapping):
        raise UnsafeSchema("Invalid foreign key")
    target = _checked_name(fk.get("references_table"))
    cols = [_checked_name(n) for n in fk.get("columns") or []]
    refs = [_checked_name(n) for n in fk.get("references_columns") or []]
    if not cols or len(cols) != len(refs) or any(n not in names for n in cols):
        raise UnsafeSchema(f"Invalid foreign key {fk!r}")
    if target not in existing and target != table_name:
        return None
    return (
        f"FOREIGN KEY ({', '.join(quote(n) for n in cols)})"
        f" REFERENCES {quote(target)} ({', '.join(quote(n) for n in refs)})"
    )
