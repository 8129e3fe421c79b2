"""Describe the tables of a data database: their columns, keys and kinds, and quote names.

The data database is a SQLAlchemy Engine on PostgreSQL or SQLite. Table and
column names reach SQL only after they were found in the database's own
catalog (an offered table and its real columns), and always quoted: this
module is the one place that quotes them. Both sides describe tables here:
the sender to offer and read them, the receiver to write into its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from shared.errors import ErrorKind, SyncError

ALWAYS_EXCLUDED = frozenset({"alembic_version"})
EXCLUDED_PREFIXES = ("pg_", "sqlite_", "celery_", "kombu_")
# A Phoenix application's tables that hold credentials or machinery: session
# tokens, PhoenixKit's settings (its plaintext incoming password), its sync
# connections (bearer token hashes), Oban's jobs, Ecto's migrations. Not
# offered unless the operator names one in SYNC_OFFER_SENSITIVE_TABLES.
SENSITIVE_TABLES = frozenset(
    {"phoenix_kit_user_tokens", "phoenix_kit_settings", "schema_migrations"}
)
SENSITIVE_PREFIXES = ("phoenix_kit_sync_", "oban_")

# Session settings the wire encoding relies on (and that COPY text output
# shares): ISO dates and intervals, instants in UTC. Both sides set them: the
# sender to read values, the receiver to read COPY text as it was written.
PG_READ_SETTINGS = (
    "SET LOCAL intervalstyle = 'iso_8601'; SET LOCAL timezone = 'UTC';"
    " SET LOCAL datestyle = 'ISO, YMD'"
)


# --- quoting ---------------------------------------------------------------------

MAX_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer name is cut short


def plain_name(name: object) -> bool:
    """Whether a table or column name a peer sent may stand for one of ours.

    PostgreSQL keeps 63 bytes of a name and no NUL; a control character (a
    trailing newline, an escape sequence) would make a name that looks like
    another one, so such names are refused outright, not cleaned.
    """
    return (
        isinstance(name, str)
        and name.isprintable()
        and 0 < len(name.encode("utf-8")) <= MAX_NAME_BYTES
    )


def quote(identifier: str) -> str:
    """Quote an identifier for PostgreSQL and SQLite alike, in SQL run as written."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_text(identifier: str) -> str:
    """A quoted identifier inside ``text()`` SQL, where a bare colon starts a bind."""
    return quote(identifier).replace(":", "\\:")


def quote_driver(identifier: str) -> str:
    """A quoted identifier inside psycopg2 SQL, where % starts a placeholder."""
    return quote(identifier).replace("%", "%%")


# --- errors ----------------------------------------------------------------------


class TableNotFound(SyncError):
    """The name is not one of the offered tables."""

    def __init__(self, table: str) -> None:
        super().__init__(ErrorKind.NOT_FOUND, "Table not found", extra={"table": table})
        self.table = table


class NoPrimaryKey(SyncError):
    """A table without a primary key cannot be paged without risking lost rows."""

    def __init__(self, table: str, detail: str) -> None:
        super().__init__(ErrorKind.CONFLICT, detail, extra={"table": table})
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
        """The quoted, schema-qualified name for SQL run as written."""
        return self._qualified(quote)

    @property
    def qualified_text(self) -> str:
        """The qualified name inside ``text()`` SQL (see ``quote_text``)."""
        return self._qualified(quote_text)

    @property
    def qualified_driver(self) -> str:
        """The qualified name inside psycopg2 SQL (see ``quote_driver``)."""
        return self._qualified(quote_driver)

    def _qualified(self, quoter: Callable[[str], str]) -> str:
        if self.schema:
            return f"{quoter(self.schema)}.{quoter(self.name)}"
        return quoter(self.name)


_INHERITANCE = """
WITH RECURSIVE d(root, oid) AS (
    SELECT inhparent, inhrelid FROM pg_inherits
    UNION SELECT d.root, i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.oid
)
SELECT p.relname, cn.nspname, c.relname
FROM d
JOIN pg_class p ON p.oid = d.root
JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class c ON c.oid = d.oid
JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE pn.nspname = :schema AND NOT c.relispartition
ORDER BY 1, 2, 3
"""


class Tables:
    """Describe the offered tables of one data database, read-only.

    Tables are described once per instance (build one per request or per pull).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None = None,
        excluded: Iterable[str] = (),
        sensitive_offered: Iterable[str] = (),
    ) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self._schema = (schema or "public") if self.pg else None
        self._excluded = frozenset(excluded) | ALWAYS_EXCLUDED
        self._sensitive_offered = frozenset(sensitive_offered)
        self._described: dict[str, TableInfo] = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def offered_tables(self) -> list[str]:
        """Base tables of the schema, minus the excluded and system ones, sorted."""
        with self.engine.connect() as conn:
            return self._offered(conn)

    def _offered(self, conn: Connection) -> list[str]:
        names: Iterable[str]
        if self.pg:
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
        return sorted(filter(self.is_offerable, names))

    def inheritance(self) -> dict[str, list[str]]:
        """Each table of the schema that others inherit from, with every
        table whose rows a plain SELECT of it also reads (children,
        grandchildren; partitions, never offered apart, left out). A table
        of another schema is named ``schema.table``."""
        if not self.pg:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(text(_INHERITANCE), {"schema": self._schema}).all()
        found: dict[str, list[str]] = {}
        for parent, child_schema, child in rows:
            name = child if child_schema == self._schema else f"{child_schema}.{child}"
            found.setdefault(str(parent), []).append(str(name))
        return found

    def is_offerable(self, name: str) -> bool:
        """Whether a table of this name may be offered (or written) at all."""
        if name in self._excluded or name.startswith(EXCLUDED_PREFIXES):
            return False
        sensitive = name in SENSITIVE_TABLES or name.startswith(SENSITIVE_PREFIXES)
        return not sensitive or name in self._sensitive_offered

    def describe(self, table: str) -> TableInfo:
        """Describe an offered table; anything else raises TableNotFound."""
        if table in self._described:
            return self._described[table]
        with self.engine.connect() as conn:
            if not isinstance(table, str) or table not in self._offered(conn):
                raise TableNotFound(str(table))
            info = (
                self._describe_pg(conn, table)
                if self.pg
                else _describe_sqlite(conn, table)
            )
        self._described[table] = info
        return info

    def _describe_pg(self, conn: Connection, table: str) -> TableInfo:
        oid: int = conn.execute(
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


def _pg_kind(typname: str, typtype: str | None) -> str:
    if typtype == "e":
        return "enum"
    return _PG_KINDS.get(typname, "other")


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
           CASE WHEN fc.relnamespace = (SELECT relnamespace FROM pg_class
                                        WHERE oid = :oid)
                THEN fc.relname::text
                ELSE format('%s.%s', fc.relnamespace::regnamespace, fc.relname)
           END AS ref_table,
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
    r"\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*",
    re.ASCII,
)


def sqlite_kind(declared: str) -> str:
    """The kind of a SQLite column from its declared type (names, then affinity)."""
    upper = (declared or "").strip().upper()
    match = _DECLARED.fullmatch(upper)
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
    match = _DECLARED.fullmatch(declared or "")
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
