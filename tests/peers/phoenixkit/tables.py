"""Read the app's tables as PhoenixKit's sender and its SchemaInspector do.

Every query here follows one the facts file describes, including its quirks:
table names spliced unquoted (they passed the identifier regex, so they are
safe, but a mixed-case name then fails), ``SELECT *`` with no order for
pull-data, the first primary-key column (or ``id``) as the only order of
table-records, the checksum over ``t::text``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errorcodes

from tests.peers.phoenixkit import values
from tests.peers.phoenixkit.values import ColType, DecodeFailure, EncodeError

# §5 "SQL safety" / §1.10: every dynamic identifier must match this.
IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# §1.9 checksum: skipped for tables above 10,000 rows.
CHECKSUM_MAX_ROWS = 10_000


def valid_identifier(name: Any) -> bool:
    return isinstance(name, str) and IDENTIFIER.match(name) is not None


class PgError(Exception):
    """A PostgreSQL error as Postgrex reports it ({:error, %Postgrex.Error{}})."""

    def __init__(self, ex: psycopg2.Error) -> None:
        code = psycopg2.errorcodes.lookup(ex.pgcode) if ex.pgcode else "unknown"
        message = (ex.diag.message_primary or str(ex)).strip()
        super().__init__(message)
        self.code = code.lower()
        self.message = message

    def inspect(self) -> str:
        """An approximation of inspect(%Postgrex.Error{}) (§1.12's 500 text)."""
        return (
            "%Postgrex.Error{message: nil, postgres: %{code: :"
            f'{self.code}, message: {values.inspect(self.message)}, severity: "ERROR"}}, '
            "connection_id: nil, query: nil}"
        )

    def bracketed(self) -> str:
        """§3.4 A: the first import error is logged as "[sqlstate] message"."""
        return f"[{self.code}] {self.message}"


@dataclass(frozen=True)
class TableInfo:
    name: str
    row_count: int
    size_bytes: int
    checksum: str | None
    depends_on: list[str]

    def wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "row_count": self.row_count,
            "size_bytes": self.size_bytes,
            "checksum": self.checksum,
            "depends_on": self.depends_on,
        }


# §1.9 "Table source": information_schema.tables, schema public, BASE TABLE,
# minus names LIKE 'schema_%' and 'pg_%' (LIKE, so "_" matches any one
# character), joined to pg_class on the name alone, sorted by name.
SYNCABLE_SQL = """
SELECT t.table_name AS name, pg_total_relation_size(c.oid) AS size_bytes
FROM information_schema.tables t
JOIN pg_class c ON c.relname = t.table_name
WHERE t.table_schema = 'public'
  AND t.table_type = 'BASE TABLE'
  AND t.table_name NOT LIKE 'schema_%'
  AND t.table_name NOT LIKE 'pg_%'
ORDER BY t.table_name
"""

# §1.9 depends_on: referenced tables of each public table's foreign keys,
# distinct, ordered (self references included).
FOREIGN_KEYS_SQL = """
SELECT DISTINCT t.relname AS table_name, r.relname AS referenced_table
FROM pg_constraint c
JOIN pg_class t ON c.conrelid = t.oid
JOIN pg_class r ON c.confrelid = r.oid
JOIN pg_namespace n ON t.relnamespace = n.oid
WHERE c.contype = 'f' AND n.nspname = 'public'
ORDER BY t.relname, r.relname
"""


def syncable_tables(cur: Any) -> list[TableInfo]:
    """§1.9: every offered table with its count, size, checksum and dependencies."""
    cur.execute(SYNCABLE_SQL)
    listed = cur.fetchall()
    cur.execute(FOREIGN_KEYS_SQL)
    depends: dict[str, list[str]] = {}
    for table, referenced in cur.fetchall():
        depends.setdefault(table, []).append(referenced)
    return [
        TableInfo(
            name,
            row_count(cur, name),
            int(size),
            checksum(cur, name),
            depends.get(name, []),
        )
        for name, size in listed
    ]


def _savepoint(cur: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement whose failure must not end the transaction."""
    cur.execute("SAVEPOINT pk_stmt")
    try:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    except psycopg2.Error as ex:
        cur.execute("ROLLBACK TO SAVEPOINT pk_stmt")
        raise PgError(ex) from None
    cur.execute("RELEASE SAVEPOINT pk_stmt")
    return rows


def row_count(cur: Any, name: str) -> int:
    """§1.9 row_count: exact COUNT(*), the name unquoted; any failure counts 0."""
    if not valid_identifier(name):
        return 0
    try:
        return int(_savepoint(cur, f"SELECT COUNT(*) FROM {name}")[0][0])
    except PgError:
        return 0


def checksum(cur: Any, name: str) -> str | None:
    """§1.9 checksum: md5 of the rows' text, "empty" for none, null above 10,000.

    Computed in the current session: its TimeZone, DateStyle and the database's
    collation decide the text and the order that are hashed.
    """
    if not valid_identifier(name):
        return None
    try:
        (count,) = _savepoint(cur, f'SELECT COUNT(*) FROM "public"."{name}"')[0]
        if count == 0:
            return "empty"
        if count > CHECKSUM_MAX_ROWS:
            return None  # :too_large, which list-tables sends as null
        (digest,) = _savepoint(
            cur,
            "SELECT md5(string_agg(t::text, '' ORDER BY t::text)) "
            f'FROM "public"."{name}" AS t',
        )[0]
    except PgError:
        return None
    return "empty" if digest is None else str(digest)


def table_exists(cur: Any, name: str) -> bool:
    """§1.10: the table must exist in public (information_schema.tables: views too)."""
    cur.execute(
        "SELECT EXISTS (SELECT FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_name = %s)",
        (name,),
    )
    return bool(cur.fetchone()[0])


def _relation(cur: Any, name: str) -> tuple[int, list[ColType]]:
    """The relation an unquoted ``name`` resolves to, and its columns.

    If the unquoted name resolves to nothing (a mixed-case name), the query
    PhoenixKit would run fails: that failure is raised as PgError.
    """
    cur.execute("SELECT to_regclass(%s)::oid", (name,))
    relid = cur.fetchone()[0]
    if relid is None:
        _savepoint(cur, f"SELECT * FROM {name} LIMIT 0")
        raise AssertionError("unreachable: the relation exists after all")
    return relid, values.column_types(cur, relid)


def _read(
    cur: Any, columns: list[ColType], sql: str, params: Any
) -> list[dict[str, Any]]:
    rows = _savepoint(cur, sql, params)
    return [
        {c.name: values.decode_value(v, c) for c, v in zip(columns, row)}
        for row in rows
    ]


def fetch_rows(cur: Any, name: str, limit: int) -> list[dict[str, Any]]:
    """§1.10: ``SELECT * FROM <table> LIMIT max_records_per_request``, no order."""
    _relid, columns = _relation(cur, name)
    return _read(
        cur,
        columns,
        f"SELECT {values.select_list(columns)} FROM {name} LIMIT %s",
        (limit,),
    )


def primary_key(cur: Any, name: str) -> list[str]:
    """SchemaInspector.get_primary_key: the key columns of public.<name>, in order."""
    cur.execute(
        """
        SELECT a.attname
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indisprimary AND c.relname = %s AND n.nspname = 'public'
        ORDER BY array_position(i.indkey, a.attnum)
        """,
        (name,),
    )
    return [r[0] for r in cur.fetchall()]


def fetch_records(
    cur: Any,
    name: str,
    limit: int,
    offset: int,
    ids: Any,
    id_start: Any,
    id_end: Any,
) -> list[dict[str, Any]]:
    """§1.12: filter by the first key column (else "id"), ORDER BY it, LIMIT/OFFSET.

    Raises EncodeError when a filter value is not the term Postgrex wants for
    that column (the JSON value is bound as it came), PgError for a database
    error, DecodeFailure for a value Postgrex cannot read.
    """
    keys = primary_key(cur, name)
    pk = keys[0] if keys else "id"
    _relid, columns = _relation(cur, name)
    by_name = {c.name: c for c in columns}
    # The key column's type decides how Postgrex binds the filter values; a
    # key column that does not exist fails in PostgreSQL first.
    pk_type = by_name.get(pk)
    where, params = "", []
    if isinstance(ids, list) and ids:
        cast = f"::{pk_type.typname}[]" if pk_type is not None else ""
        where = f" WHERE {pk} = ANY(%s{cast})"
        params = [_bind_all(ids, pk_type)]
    elif id_start is not None and id_end is not None:
        where = f" WHERE {pk} >= %s AND {pk} <= %s"
        params = [_bind_one(id_start, pk_type), _bind_one(id_end, pk_type)]
    elif id_start is not None:
        where = f" WHERE {pk} >= %s"
        params = [_bind_one(id_start, pk_type)]
    elif id_end is not None:
        where = f" WHERE {pk} <= %s"
        params = [_bind_one(id_end, pk_type)]
    sql = (
        f"SELECT {values.select_list(columns)} FROM {name}{where} "
        f"ORDER BY {pk} LIMIT %s OFFSET %s"
    )
    return _read(cur, columns, sql, [*params, limit, offset])


def _bind_one(value: Any, col: ColType | None) -> Any:
    if col is None:
        return value  # the column does not exist: PostgreSQL refuses the query
    return values.bind(value, col)[1]


def _bind_all(items: list[Any], col: ColType | None) -> list[Any]:
    if col is None:
        return items
    return [None if v is None else values.bind(v, col)[1] for v in items]


def table_schema(cur: Any, name: str) -> dict[str, Any] | None:
    """§1.11: information_schema.columns of public.<name>, raw; None when none."""
    cur.execute(
        """
        SELECT column_name, data_type, is_nullable, column_default,
               character_maximum_length
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = %s
        ORDER BY ordinal_position
        """,
        (name,),
    )
    rows = cur.fetchall()
    if not rows:
        return None
    keys = (
        "column_name",
        "data_type",
        "is_nullable",
        "column_default",
        "character_maximum_length",
    )
    return {"table_name": name, "columns": [dict(zip(keys, r)) for r in rows]}


__all__ = [
    "DecodeFailure",
    "EncodeError",
    "PgError",
    "TableInfo",
    "checksum",
    "fetch_records",
    "fetch_rows",
    "primary_key",
    "row_count",
    "syncable_tables",
    "table_exists",
    "table_schema",
    "valid_identifier",
]
