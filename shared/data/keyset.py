"""Say a keyset page in SQL once: a keyed table's rows after a key, in key order.

Keys are compared as a row value, ``(k1, k2) > (v1, v2)``, so composite keys
page correctly and a row is never skipped or repeated while keys are not
rewritten. The SQL is ``text()`` with named binds; the JSON page reader runs
it as it is, and COPY out renders the same statement for the driver
(``shared.data.sender.copy_out``).

A cursor is the wire-encoded key of a page's last row; ``decode_cursor`` turns
one a caller sent into key values, and ``binds`` binds them as each column's
type.

A keyset may also hold only the rows whose cursor column (``updated_at``, a
serial) is beyond a value (``Since``, pull-data's ``since`` filter): paging
stays on the key, the filter is one more term of the WHERE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.data import wire
from shared.data.schema import ColumnInfo, TableInfo, quote_text
from shared.errors import ErrorKind, SyncError


class BadCursor(SyncError):
    """An ``after`` cursor that is not the key of a row of this table.

    The message is the detail (what is wrong); the caller words the answer.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorKind.BAD_REQUEST, detail)


def decode_cursor(after: Any, pk: list[ColumnInfo]) -> list[Any]:
    """The key values of a wire-encoded cursor; BadCursor if it is not a key."""
    if not isinstance(after, list) or len(after) != len(pk):
        raise BadCursor(f"expected a list of {len(pk)} key value(s)")
    values = []
    for value, col in zip(after, pk):
        if value is None:
            raise BadCursor(f"{col.name}: a key value cannot be null")
        try:
            decoded = wire.decode_value(value, col.kind, col.name)
            wire.check_key_range(decoded, col)
        except wire.WireError as ex:
            raise BadCursor(str(ex)) from None
        values.append(decoded)
    return values


class BadSince(SyncError):
    """A ``since`` filter this table cannot take (the message is the detail)."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorKind.BAD_REQUEST, detail)


# Column kinds a cursor column may have: ordered, and advanced by writers.
CURSOR_KINDS = ("int", "numeric", "date", "timestamp", "timestamptz")
_INT_BOUNDS = {"smallint": 1 << 15, "integer": 1 << 31, "bigint": 1 << 63}


@dataclass(frozen=True)
class Since:
    """Rows whose ``column`` is beyond ``value`` (decoded; None: every row)."""

    column: ColumnInfo
    value: Any


def cursor_column_problem(col: ColumnInfo | None, name: str, *, pg: bool) -> str | None:
    """Why ``col`` cannot be a cursor column; None when it can."""
    if col is None:
        return f"no column {name}"
    if col.kind not in CURSOR_KINDS or (not pg and col.kind != "int"):
        kinds = "integer, numeric, date or timestamp" if pg else "integer"
        return f"column {name} is {col.type}, not an {kinds} column"
    return None


def decode_since(raw: Any, info: TableInfo, *, pg: bool) -> Since:
    """The ``since`` filter a caller sent: ``{"column": C, "after": VALUE}``,
    VALUE wire-encoded as C's type (null: every row); BadSince otherwise."""
    if not isinstance(raw, dict) or not isinstance(raw.get("column"), str):
        raise BadSince("expected an object with column and after")
    name = raw["column"]
    col = next((c for c in info.columns if c.name == name), None)
    problem = cursor_column_problem(col, name[:100], pg=pg)
    if problem is not None or col is None:
        raise BadSince(problem or name)
    value = raw.get("after")
    if value is None:
        return Since(col, None)
    if isinstance(value, (dict, list)):
        raise BadSince(f"{name}: expected one value")
    try:
        decoded = wire.decode_value(value, col.kind, name)
        wire.check_key_range(decoded, col)
    except wire.WireError as ex:
        raise BadSince(str(ex)) from None
    _check_bounds(decoded, col)
    return Since(col, decoded)


def _check_bounds(value: Any, col: ColumnInfo) -> None:
    """BadSince for a value the column's type cannot hold (never left to the
    database's cast, whose error would be a 500 or a vague 400)."""
    bound = _INT_BOUNDS.get(col.type)
    if col.kind == "int" and bound is not None and not -bound <= value < bound:
        raise BadSince(f"{col.name}: out of range for {col.type}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise BadSince(f"{col.name}: expected a finite number")


def binds(
    columns: Sequence[ColumnInfo],
    prefix: str,
    params: dict[str, Any],
    values: list[Any],
    *,
    pg: bool,
) -> str:
    """Bind decoded key values; on PostgreSQL cast each to its column's type."""
    holders = []
    for i, (col, value) in enumerate(zip(columns, values)):
        name = f"{prefix}{i}"
        if pg:
            params[name] = wire.pg_param(value, col.kind)
            holders.append(f"CAST(:{name} AS {col.type})")
        else:
            params[name] = wire.sqlite_param(value, col.kind)
            holders.append(f":{name}")
    return ", ".join(holders)


def column_list(columns: Sequence[ColumnInfo]) -> str:
    """Quoted column names, comma-separated, for ``text()`` SQL."""
    return ", ".join(quote_text(c.name) for c in columns)


@dataclass(frozen=True)
class Keyset:
    """The rows of a keyed table after ``after`` (decoded key values; None: all).

    ``where`` and ``params`` are the predicate and its binds; ``select`` and
    ``count`` the statements built on them.
    """

    info: TableInfo
    after: list[Any] | None
    where: str
    params: dict[str, Any]
    until: list[Any] | None = None
    since: Since | None = None

    @classmethod
    def after_cursor(
        cls,
        info: TableInfo,
        cursor: Any,
        *,
        pg: bool,
        until: Any = None,
        since: Since | None = None,
    ) -> Keyset:
        """The keyset after a cursor a caller sent (None: from the first row), up
        to and including the key ``until`` (a cursor too; None: to the last row),
        of the rows ``since`` keeps (None: all)."""
        pk = info.pk_columns
        after = None if cursor is None else decode_cursor(cursor, pk)
        upto = None if until is None else decode_cursor(until, pk)
        return cls.after_key(info, after, pg=pg, until=upto, since=since)

    @classmethod
    def after_key(
        cls,
        info: TableInfo,
        values: list[Any] | None,
        *,
        pg: bool,
        until: list[Any] | None = None,
        since: Since | None = None,
    ) -> Keyset:
        """The keyset after decoded key values (None: from the first row), up to
        and including ``until`` (None: to the last row), of the rows ``since``
        keeps (None: all)."""
        pk = info.pk_columns
        params: dict[str, Any] = {}
        terms = []
        if values is not None:
            holders = binds(pk, "k", params, values, pg=pg)
            terms.append(f"({column_list(pk)}) > ({holders})")
        if until is not None:
            holders = binds(pk, "u", params, until, pg=pg)
            terms.append(f"({column_list(pk)}) <= ({holders})")
        if since is not None and since.value is not None:
            holder = binds([since.column], "s", params, [since.value], pg=pg)
            terms.append(f"{quote_text(since.column.name)} > {holder}")
        where = f" WHERE {' AND '.join(terms)}" if terms else ""
        return cls(info, values, where, params, until, since)

    def select(self, columns: str, *, limit: int, offset: int | None = None) -> str:
        """``SELECT columns`` of the keyset in key order: ``limit`` rows, after
        skipping ``offset``."""
        sql = (
            f"SELECT {columns} FROM {self.info.qualified_text}{self.where}"
            f" ORDER BY {column_list(self.info.pk_columns)} LIMIT {int(limit)}"
        )
        return sql if offset is None else f"{sql} OFFSET {int(offset)}"

    def count(self) -> str:
        """``SELECT count(*)`` of the keyset."""
        return f"SELECT count(*) FROM {self.info.qualified_text}{self.where}"
