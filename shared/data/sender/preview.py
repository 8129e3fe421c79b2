"""Show rows for a person to look at: a window of a table, optionally filtered by key.

The table-records endpoint answers with these; unlike pull pages they page by
offset (a person browses, nothing is copied) and filter on the first key column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from shared.data import wire
from shared.data.keyset import binds, column_list
from shared.data.schema import ColumnInfo, Tables, quote_text
from shared.data.sender.pages import encode_all, reader, select_list
from shared.errors import ErrorKind, SyncError


class BadFilter(SyncError):
    """An ``ids`` / ``id_start`` / ``id_end`` value that does not fit the key.

    The message is the detail (what is wrong); the caller words the answer.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorKind.BAD_REQUEST, detail)


def preview(
    tables: Tables,
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
    info = tables.describe(table)
    pg = tables.pg
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
            holders = binds([first] * len(values), "i", params, values, pg=pg)
            filters.append(f"{quote_text(first.name)} IN ({holders})")
        if id_start is not None:
            holder = binds(
                [first], "s", params, [_decode_filter(id_start, first)], pg=pg
            )
            filters.append(f"{quote_text(first.name)} >= {holder}")
        if id_end is not None:
            holder = binds([first], "e", params, [_decode_filter(id_end, first)], pg=pg)
            filters.append(f"{quote_text(first.name)} <= {holder}")
    where = f" WHERE {' AND '.join(filters)}" if filters else ""
    order = f" ORDER BY {column_list(info.pk_columns)}" if info.primary_key else ""
    sql = (
        f"SELECT {select_list(tables, info)} FROM {info.qualified_text}{where}{order}"
        f" LIMIT {int(limit) + 1} OFFSET {int(offset)}"
    )
    with reader(tables) as conn:
        rows = encode_all(tables, info, conn.execute(text(sql), params))
    return rows[:limit], len(rows) > limit


def _decode_filter(value: Any, col: ColumnInfo) -> Any:
    if value is None:
        raise BadFilter(f"{col.name}: null is not a key value")
    try:
        decoded = wire.decode_value(value, col.kind, col.name)
        wire.check_key_range(decoded, col)
    except wire.WireError as ex:
        raise BadFilter(str(ex)) from None
    return decoded
