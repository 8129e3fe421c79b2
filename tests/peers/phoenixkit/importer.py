"""Write pulled rows into the app's tables as PhoenixKit's HTTP import paths do.

Facts file §3.4: path A (``insert_record`` per row, used by the single-table
"precise" pull) and path B (``import_single_record_with_remap``, used by the
bulk "Sync data" flow). Each row is one autocommitted INSERT whose values went
through ``Prepare.value/3`` (§4 "Import-side decoding") and are bound the way
Postgrex binds them (values.bind): a term Postgrex refuses, or a row
PostgreSQL refuses, is counted as an error and the rest go on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from tests.peers.phoenixkit import tables, values
from tests.peers.phoenixkit.db import Database
from tests.peers.phoenixkit.values import ColType


class NoPrimaryKey(Exception):
    """RepoHelper.get_pk_column/1 raised ArgumentError (§3.4 A)."""


@dataclass
class ImportResult:
    imported: int = 0
    skipped: int = 0
    errors: int = 0
    error_sample: str | None = None
    remap: dict[tuple[str, Any], Any] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "skipped": self.skipped,
            "errors": self.errors,
        }

    def add(self, outcome: str | tuple[str, str]) -> None:
        """accumulate_import_result/2."""
        if outcome == "ok":
            self.imported += 1
        elif outcome == "skipped":
            self.skipped += 1
        else:
            if self.error_sample is None and isinstance(outcome, tuple):
                self.error_sample = outcome[1]
            self.errors += 1


def _quote(name: str) -> str:
    # PhoenixKit splices record keys between double quotes unescaped; the
    # stand-in escapes them, so a hostile key cannot reach its own SQL.
    return '"' + str(name).replace('"', '""') + '"'


class Importer:
    """The receiver's writes into its own database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # One import holds one autocommitted connection and remembers each
        # table's key and column types (PhoenixKit asks again for every row;
        # the answers are the same, only slower).
        self._cur: Any = None
        self._keys: dict[str, str | NoPrimaryKey] = {}
        self._types: dict[str, dict[str, ColType]] = {}

    @contextmanager
    def _session(self) -> Iterator[None]:
        if self._cur is not None:
            yield
            return
        with self._db.connection(autocommit=True) as conn, conn.cursor() as cur:
            self._cur = cur
            try:
                yield
            finally:
                self._cur = None
                self._keys.clear()
                self._types.clear()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._session():
            yield self._cur

    # -- schema lookups PhoenixKit makes --------------------------------------------

    def pk_column(self, table: str) -> str:
        """RepoHelper.get_pk_column/1: the single key column, else ArgumentError."""
        if table not in self._keys or self._cur is None:
            try:
                self._keys[table] = self._find_pk(table)
            except NoPrimaryKey as ex:
                self._keys[table] = ex
        found = self._keys[table]
        if isinstance(found, NoPrimaryKey):
            raise found
        return found

    def _find_pk(self, table: str) -> str:
        rows = self._db.rows(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
            (table,),
        )
        if not rows:
            raise NoPrimaryKey(
                f"no primary key found for table {values.inspect(table)} "
                "(table doesn't exist or has no primary key)"
            )
        if len(rows) > 1:
            cols = ", ".join(r["attname"] for r in rows)
            raise NoPrimaryKey(
                f"table {values.inspect(table)} has a composite primary key ({cols}); "
                "get_pk_column/1 only supports single-column PKs"
            )
        return str(rows[0]["attname"])

    def numeric_columns(self, table: str) -> list[str]:
        """Prepare.numeric_columns/1 (see values.NUMERIC_TYPE_WORDS)."""
        if not self._db.rows(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = 'public' "
            "AND tablename = %s",
            (table,),
        ):
            return []
        return [
            r["column_name"]
            for r in self._db.rows(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
            if r["data_type"] in values.NUMERIC_TYPE_WORDS
        ]

    def foreign_key_columns(self, table: str) -> list[dict[str, str]]:
        """SchemaInspector.get_foreign_key_columns/2."""
        return self._db.rows(
            """
            SELECT a.attname AS column, r.relname AS referenced_table,
                   a2.attname AS referenced_column
            FROM pg_constraint c
            JOIN pg_class t ON c.conrelid = t.oid
            JOIN pg_namespace n ON t.relnamespace = n.oid
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(c.conkey)
            JOIN pg_class r ON c.confrelid = r.oid
            JOIN pg_attribute a2 ON a2.attrelid = r.oid AND a2.attnum = ANY(c.confkey)
            WHERE c.contype = 'f' AND n.nspname = 'public' AND t.relname = %s
            """,
            (table,),
        )

    def unique_columns(self, table: str) -> list[list[str]]:
        """SchemaInspector.get_unique_columns/2: non-key unique indexes' columns."""
        groups: dict[int, list[str]] = {}
        for row in self._db.rows(
            """
            SELECT i.indexrelid::bigint AS idx, a.attname
            FROM pg_index i
            JOIN pg_class t ON i.indrelid = t.oid
            JOIN pg_namespace n ON t.relnamespace = n.oid
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey)
            WHERE i.indisunique AND NOT i.indisprimary
              AND n.nspname = 'public' AND t.relname = %s
            ORDER BY i.indexrelid, a.attnum
            """,
            (table,),
        ):
            groups.setdefault(row["idx"], []).append(row["attname"])
        return [groups[k] for k in sorted(groups)]

    def _column_types(self, cur: Any, table: str) -> dict[str, ColType]:
        if table in self._types:
            return self._types[table]
        cur.execute("SELECT to_regclass(%s)::oid", (_quote(table),))
        relid = cur.fetchone()[0]
        found = (
            {}
            if relid is None
            else {c.name: c for c in values.column_types(cur, relid)}
        )
        self._types[table] = found
        return found

    # -- §3.4 A: insert_record -----------------------------------------------------

    def insert_record(
        self, table: str, record: Any, strategy: str, numeric_cols: list[str]
    ) -> str | tuple[str, str]:
        """One row: "ok", "skipped", or ("error", reason)."""
        if not isinstance(record, dict):
            return "error", "not a map"
        try:
            pk = self.pk_column(table)
        except NoPrimaryKey as ex:
            return "error", str(ex)
        if strategy == "append":
            record = {k: v for k, v in record.items() if k != pk}
        columns = list(record)
        if strategy == "overwrite":
            sets = ", ".join(
                f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in columns if c != pk
            )
            on_conflict = f"ON CONFLICT ({_quote(pk)}) DO UPDATE SET {sets}"
        elif strategy == "append":
            on_conflict = ""
        else:  # skip, merge (merge is skip here) and anything else
            on_conflict = "ON CONFLICT DO NOTHING"
        with self._cursor() as cur:
            types = self._column_types(cur, table)
            marks, params = [], []
            try:
                for c in columns:
                    value = values.prepare(record[c], c, numeric_cols)
                    col = types.get(c)
                    if col is None:  # PostgreSQL refuses the statement first
                        mark, param = "%s", None
                    else:
                        mark, param = values.bind(value, col)
                    marks.append(mark)
                    params.append(param)
            except values.EncodeError as ex:
                return "error", str(ex)
            except values.PgTextError as ex:
                return "error", str(ex)
            sql = (
                f"INSERT INTO {_quote(table)} ({', '.join(_quote(c) for c in columns)}) "
                f"VALUES ({', '.join(marks)}) {on_conflict}"
            )
            try:
                cur.execute(sql, params)
            except psycopg2.Error as ex:
                return "error", tables.PgError(ex).bracketed()
            return "ok" if cur.rowcount == 1 else "skipped"

    def import_table_data(
        self, table: str, data: list[Any], strategy: str
    ) -> ImportResult:
        """§3.4 A over every row (the single-table pull)."""
        numeric_cols = self.numeric_columns(table)
        result = ImportResult()
        with self._session():
            for record in data:
                result.add(self.insert_record(table, record, strategy, numeric_cols))
        return result

    # -- §3.4 B: import with FK remap -------------------------------------------------

    def import_table_data_with_remap(
        self,
        table: str,
        data: list[Any],
        strategy: str,
        remap: dict[tuple[str, Any], Any],
    ) -> ImportResult:
        """§3.4 B. Raises NoPrimaryKey (not rescued in PhoenixKit: the table's
        task dies) when the table is missing or has no single-column key."""
        with self._session():
            return self._import_with_remap(table, data, strategy, remap)

    def _import_with_remap(
        self,
        table: str,
        data: list[Any],
        strategy: str,
        remap: dict[tuple[str, Any], Any],
    ) -> ImportResult:
        pk = self.pk_column(table)
        fk_columns = self.foreign_key_columns(table)
        unique_sets = self.unique_columns(table)
        numeric_cols = self.numeric_columns(table)
        result = ImportResult(remap=dict(remap))
        for record in data:
            record_pk = record.get(pk) if isinstance(record, dict) else None
            if self._pk_exists(table, pk, record_pk):
                # Skipped whatever the strategy (§3.4 B step 1).
                result.skipped += 1
                continue
            local = self._match_by_unique(table, pk, record, unique_sets)
            if local is not None:
                result.remap[(table, _stringify(record_pk))] = _stringify(local)
                result.skipped += 1
                continue
            remapped = self._apply_fk_remap(record, fk_columns, result.remap)
            result.add(self.insert_record(table, remapped, strategy, numeric_cols))
        return result

    def _pk_exists(self, table: str, pk: str, value: Any) -> bool:
        """check_pk_exists/4: any failure counts as "no"."""
        try:
            found = self._lookup(table, pk, [(pk, value)])
        except Exception:
            return False
        return found is not None

    def _match_by_unique(
        self, table: str, pk: str, record: Any, unique_sets: list[list[str]]
    ) -> Any:
        if not isinstance(record, dict):
            return None
        for cols in unique_sets:
            idents = [table, pk, *cols]
            if not all(tables.valid_identifier(i) for i in idents):
                continue
            pairs = [(c, record.get(c)) for c in cols]
            if any(v is None for _c, v in pairs):
                continue
            try:
                found = self._lookup(table, pk, pairs)
            except Exception:
                continue
            if found is not None:
                return found
        return None

    def _lookup(self, table: str, pk: str, pairs: list[tuple[str, Any]]) -> Any:
        """SELECT "pk" FROM "t" WHERE "c" = $1 ... LIMIT 1, values via Prepare.value/1.

        Returns the local key as Postgrex gives it, or None.
        """
        with self._cursor() as cur:
            types = self._column_types(cur, table)
            where, params = [], []
            for col, value in pairs:
                mark, param = values.bind(values.prepare_key(value), types[col])
                where.append(f"{_quote(col)} = {mark}")
                params.append(param)
            pk_type = types[pk]
            text_pk = f"{_quote(pk)}::{'text[]' if pk_type.elem else 'text'}"
            cur.execute(
                f"SELECT {text_pk} FROM {_quote(table)} WHERE {' AND '.join(where)} LIMIT 1",
                params,
            )
            row = cur.fetchone()
        return None if row is None else values.decode_value(row[0], pk_type)

    def _apply_fk_remap(
        self,
        record: Any,
        fk_columns: list[dict[str, str]],
        remap: dict[tuple[str, Any], Any],
    ) -> Any:
        """apply_fk_remap/3: only string FK values are looked up (§3.4 B caveat)."""
        if not isinstance(record, dict) or not fk_columns:
            return record
        out = dict(record)
        for fk in fk_columns:
            value = out.get(fk["column"])
            if value is not None and value is not False and isinstance(value, str):
                local = remap.get((fk["referenced_table"], value))
                if local is not None:
                    out[fk["column"]] = local
        return out


def _stringify(pk: Any) -> Any:
    """stringify_pk/1: a binary stays itself, anything else is inspect/1'd."""
    if isinstance(pk, (str, bytes)):
        return pk
    return values.inspect(pk)


def create_table(db: Database, table: str, schema_def: Any) -> str | None:
    """SchemaInspector.create_table/3 from a fetched schema; an error text or None.

    It reads ``name``/``type``/``nullable``/``primary_key`` keys, so a
    PhoenixKit HTTP table-schema (``column_name``/``data_type``/...) yields
    columns with no name and no type (§1.11 "Format mismatch").
    """
    if not tables.valid_identifier(table):
        return ":invalid_table_name"
    if not isinstance(schema_def, dict):
        schema_def = {}
    columns = schema_def.get("columns") or []
    primary_key = schema_def.get("primary_key") or []
    defs = ",\n  ".join(_column_sql(c if isinstance(c, dict) else {}) for c in columns)
    pk = (
        f",\n  PRIMARY KEY ({', '.join(str(p) for p in primary_key)})"
        if primary_key
        else ""
    )
    sql = f'CREATE TABLE "public"."{table}" (\n  {defs}{pk}\n)'
    try:
        db.execute(sql)
    except psycopg2.Error as ex:
        return tables.PgError(ex).inspect()
    return None


def _column_sql(column: dict[str, Any]) -> str:
    name = column.get("name")
    ctype = _map_type(column.get("type"))
    null = "" if column.get("nullable") else " NOT NULL"
    if column.get("primary_key") and ctype in ("bigint", "integer"):
        ctype = "bigserial" if ctype == "bigint" else "serial"
    return f'"{"" if name is None else name}" {"" if ctype is None else ctype}{null}'


def _map_type(ctype: Any) -> Any:
    if ctype == "character varying":
        return "varchar(255)"
    if isinstance(ctype, str) and ctype.startswith("character varying("):
        return (
            "varchar(" + re.sub(r"\)+$", "", ctype[len("character varying(") :]) + ")"
        )
    if ctype == "timestamp without time zone":
        return "timestamp"
    if ctype == "timestamp with time zone":
        return "timestamptz"
    return ctype
