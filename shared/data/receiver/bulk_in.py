"""Take a bulk (COPY data) pull-data page: check its headers, plan the format, apply it.

The HTTP body goes straight into ``COPY ... FROM STDIN`` through
shared.data.receiver.copy_in: into a temporary staging table, then one
set-based statement for the conflict strategy; or, when the target is known to
hold no conflicting row, straight into the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from shared.data.copy_format import BINARY, COPY_FORMATS, MEDIA_TYPES, TEXT, utf8
from shared.data.receiver import copy_in as copyin
from shared.data.receiver.pages import IncomingPage, PageResult, choose_columns
from shared.data.schema import TableInfo, plain_name
from shared.data.wire import parse_json
from shared.state.models import STRATEGIES

# Built-in type OIDs are fixed in PostgreSQL's catalog and equal on every
# server; binary COPY of arrays (and records) carries them.
_FIRST_NON_BUILTIN_OID = 10_000


class BadPage(Exception):
    """A bulk answer whose metadata does not describe the page asked for."""


def read_headers(
    headers: Mapping[str, str], media_type: str, table: str, asked: str
) -> IncomingPage:
    """Parse and check a bulk answer's headers; BadPage if they do not fit."""
    fmt = headers.get("x-sync-format")
    if fmt != asked or MEDIA_TYPES.get(fmt) != media_type:
        raise BadPage(f"format {fmt!r} as {media_type!r}, asked {asked!r}")
    if headers.get("x-sync-table") != table:
        raise BadPage("answer for another table")
    try:
        columns = parse_json(headers.get("x-sync-columns", ""))
        count = int(headers.get("x-sync-count", ""))
        cursor = parse_json(headers.get("x-sync-next-cursor", "null"))
    except ValueError as ex:
        raise BadPage(str(ex)[:200]) from None
    more = headers.get("x-sync-has-more")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(plain_name(c) for c in columns)
        or len(set(columns)) != len(columns)
        or count < 0
        or more not in ("true", "false")
        or not (cursor is None or isinstance(cursor, list))
    ):
        raise BadPage("invalid page metadata")
    has_more = more == "true" and cursor is not None
    return IncomingPage(fmt, columns, count, has_more, cursor)


@dataclass(frozen=True)
class Plan:
    """How a receiver pulls one table: the format it asks for, whether it may
    COPY straight into the target."""

    wire_format: str
    direct: bool


def plan(
    conn: Connection, info: TableInfo, sender_schema: Any, strategy: str
) -> Plan | None:
    """Choose the bulk format for ``info`` from the sender's table-schema.

    Binary needs every sender column here with the same type, a built-in
    one (binary COPY is exact about types). Copying straight into the target
    also needs every sender column writable here, a strategy that keys rows
    (not append), and a table COPY treats like INSERT (no rules, no row
    security). None when this connection cannot take COPY data (not UTF-8).
    """
    if not utf8(conn):
        return None
    columns = sender_schema.get("columns") if isinstance(sender_schema, dict) else None
    sent = {
        c.get("name"): c.get("type")
        for c in columns or []
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # psycopg2 connection while conn is open
    try:
        cur.execute(
            "SELECT a.attname, a.atttypid < %s AND t.typelem < %s"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = CAST(%s AS regclass) AND a.attnum > 0"
            " AND NOT a.attisdropped",
            (_FIRST_NON_BUILTIN_OID, _FIRST_NON_BUILTIN_OID, info.qualified),
        )
        builtin = dict(cur.fetchall())
    finally:
        cur.close()
    here = {c.name: c for c in info.columns}
    binary = bool(sent) and all(
        name in here and here[name].type == kind and builtin.get(name)
        for name, kind in sent.items()
    )
    writable = bool(sent) and all(
        name in here and not here[name].generated for name in sent
    )
    direct = writable and strategy != "append" and copyin.copies_like_insert(conn, info)
    return Plan(BINARY if binary else TEXT, direct)


def table_is_empty(conn: Connection, info: TableInfo) -> bool:
    return not conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT 1 FROM {info.qualified_driver})"
    ).scalar()


def apply_page(
    conn: Connection,
    info: TableInfo,
    page: IncomingPage,
    chunks: Iterable[bytes],
    strategy: str,
    *,
    direct: bool = False,
) -> PageResult:
    """COPY one bulk page into ``info``'s table with a conflict strategy.

    Counts follow shared.data.receiver.pages: ``created + updated + skipped + failed ==
    page.count``. With ``direct`` the rows go straight into the target, for a
    target that should hold none of their keys; if it does (or refuses a row)
    this raises Rejected and the page must be fetched again and staged.
    Raises ImportRefused when the page cannot apply to this table at all,
    BrokeOff when the body falls short of its count; an error reading the
    body is raised as the body raised it.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown conflict strategy {strategy!r}")
    columns, ignored = choose_columns(info, page.columns, strategy)
    result = PageResult(ignored_columns=ignored)
    source = copyin.CopySource(COPY_FORMATS[page.format], page.columns, page.count)
    applier = copyin.CopyApplier(conn, info, source, columns, strategy, result)
    if direct and not ignored:
        applier.copy_direct(chunks)
    else:
        applier.copy_staged(chunks)
    return result
