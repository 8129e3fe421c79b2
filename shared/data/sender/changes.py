"""What changed in a table since a snapshot horizon, from PostgreSQL's ``xmin``.

Both sides of a delta run use it: the sender for ``table-fingerprints``'
``changes`` field, the receiver over its own rows.

A *state* is taken inside the caller's REPEATABLE READ transaction: the
snapshot's xmin as a 64-bit transaction id (every transaction not visible
in that snapshot has an id at or above it), the table's file node and its
vacuum counts. Given an earlier state, ``changed_rows`` lists ``[KEY,
hash]`` of the rows whose ``xmin`` is at or after the earlier horizon: one
sequential scan, only the changed rows hashed. The 32-bit ``xmin`` is
compared with ``age()``, modulo 2^32, against the span from the horizon to
the snapshot's xmax (see ``_written_since``); the span stays under 2^30.
``print_and_changed`` counts those rows in the scan that takes the key print
(below), so a side with nothing changed scans its table once.

An earlier state is *usable* only when nothing can have hidden a change
from ``xmin``: same file node (no TRUNCATE, VACUUM FULL, CLUSTER, COPY
FREEZE into a new file), no manual VACUUM since (it may freeze with
``vacuum_freeze_min_age`` 0), and autovacuum runs only while the horizon
is younger than ``vacuum_freeze_min_age`` on PostgreSQL before 16 (which
freezes tuple by tuple below that age; 16 freezes whole pages, so any
vacuum there makes the state unusable). Otherwise the caller compares the
whole table.

``key_print`` is the table's count and exact sum of a 64-bit hash of each
key (``hashint8``), for single-column integer keys: deletes leave no
``xmin``, so key sets are compared this way, and ``key_buckets`` narrows a
difference to buckets of ``BUCKET`` consecutive key values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from shared.data import wire
from shared.data.schema import TableInfo, quote_text
from shared.data.sender.fingerprints import (
    FINGERPRINT_SETTINGS,
    TEXT_HASHING,
    Hashing,
    Unsupported,
    check_columns,
    row_hash,
)
from shared.data.sender.pages import _pg_select_expr, _pg_tuple_encoder

BUCKET = 64
SHIFT = 6  # key >> SHIFT is key div BUCKET, rounded down
MAX_CHANGED = 64_000  # changed rows one answer may list; more: compare whole
MAX_SPAN = 1 << 30
WRAP = 1 << 32
INT_MAX = (1 << 31) - 1  # age() of a frozen or special id


def columns_mark(schema: Any) -> str | None:
    """A digest of a table-schema payload's columns and primary key: equal
    marks, equal answers to what a delta run reads of the schema."""
    if not isinstance(schema, dict):
        return None
    part = {"columns": schema.get("columns"), "primary_key": schema.get("primary_key")}
    return hashlib.sha256(wire.canonical_json(part).encode()).hexdigest()


def int_array(values: Sequence[int]) -> str:
    """An array literal of integers, to pass as text and cast to bigint[]:
    PostgreSQL reads it far faster than a driver's ARRAY[...] of 10,000
    parameters (one expression each)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def keyed_by_int(info: TableInfo) -> bool:
    return len(info.primary_key) == 1 and info.pk_columns[0].kind == "int"


def state(conn: Connection, info: TableInfo | None) -> dict[str, Any]:
    """This transaction's horizon, and the table's file node and vacuum counts."""
    row = conn.execute(
        text(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            " current_setting('server_version_num')::int,"
            " current_setting('vacuum_freeze_min_age')::bigint"
        )
    ).one()
    out: dict[str, Any] = {"xid": int(row[0])}
    if info is not None:
        out.update(table_marks(conn, info))
    out["_xmax"], out["_version"], out["_freeze_age"] = (
        int(row[1]),
        int(row[2]),
        int(row[3]),
    )
    return out


def table_marks(conn: Connection, info: TableInfo) -> dict[str, Any]:
    row = conn.execute(
        text(
            "SELECT pg_relation_filenode(c.oid)::text,"
            " coalesce(s.vacuum_count, -1), coalesce(s.autovacuum_count, -1),"
            " coalesce(array_to_string(c.reloptions, ','), '')"
            " FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid"
            " WHERE c.oid = CAST(:t AS regclass)"
        ),
        {"t": info.qualified_text},
    ).one()
    return {
        "node": str(row[0]),
        "vacuums": int(row[1]),
        "autovacuums": int(row[2]),
        "_freeze_option": "freeze_min_age" in str(row[3]),
    }


def public(st: dict[str, Any]) -> dict[str, Any]:
    """The state as stored and sent (without this run's working values)."""
    return {k: v for k, v in st.items() if not k.startswith("_")}


def usable(since: Any, now: dict[str, Any]) -> bool:
    """Whether rows changed after ``since`` are exactly those ``xmin`` shows."""
    if not isinstance(since, dict):
        return False
    try:
        xid, node = int(since["xid"]), str(since["node"])
        vacuums, autovacuums = int(since["vacuums"]), int(since["autovacuums"])
    except (KeyError, TypeError, ValueError):
        return False
    span = now["_xmax"] - xid
    if not 0 <= span < MAX_SPAN or node != now["node"] or vacuums != now["vacuums"]:
        return False
    if vacuums < 0 or autovacuums < 0:
        return False
    if autovacuums != now["autovacuums"]:
        # PostgreSQL 15 and before freeze a tuple only below the freeze age.
        young = span < now["_freeze_age"] and not now["_freeze_option"]
        return now["_version"] < 160000 and young
    return True


def _written_since(
    conn: Connection,
    since: dict[str, Any],
    now: dict[str, Any],
    exclude: Sequence[int] = (),
) -> tuple[str, dict[str, Any]]:
    """The condition on ``xmin`` of the rows written by the transactions from
    ``since``'s horizon up to ``now``'s snapshot xmax (``exclude``: 64-bit ids
    of transactions whose rows to leave out), with its parameters.

    It is run in the transaction that took ``now`` (as a scan from ``now``
    must be). ``age(x)`` is ``(int32)(N - x)`` for a normal id, INT_MAX for a
    frozen or special one (0, 1, 2), where N is the transaction's own id if
    it has one, else the next id to assign when ``age()`` is first called in
    it; N is then the same for the rest of the transaction
    (GetStableLatestTransactionId). Let A = age(horizon), B = age(xmax),
    span = xmax - horizon (64-bit; 0 <= span < MAX_SPAN by ``usable``, checked
    again). A snapshot's xmin and xmax are normal ids (a horizon sent by a
    peer that is not has age INT_MAX: refused below), so A = N - horizon and
    B = N - xmax modulo 2^32. When A - B == span as plain integers and
    A < INT_MAX (checked here, or Unsupported), for a normal id x:

        B < age(x) <= A  <=>  (x - horizon) mod 2^32 < span

    (=>: age(x) = A - d with 0 <= d < span, and age(x) = N - x modulo 2^32,
    so x = horizon + d; <=: then N - x = A - d modulo 2^32 and A - d lies in
    (B, A], inside the int32 range, so age(x) is A - d.) A frozen or special
    id has age INT_MAX > A: not listed; such an xmin was never written after
    the horizon. So the rows are exactly those whose xmin lies in [horizon,
    xmax) modulo 2^32 (what ``(xmin::text::bigint - h) % 2^32 < span`` took,
    at a fraction of its cost: no text conversion), with no assumption on N
    but that one transaction. The check fails only when N is about 2^31
    transactions past the horizon, which PostgreSQL's wraparound limits and
    MAX_SPAN leave no room for; the caller then compares the whole table.

    The lower bound (``age(x) > B``) is not there for speed: a one-sided
    ``age(x) <= A`` also takes every id that 32-bit arithmetic puts after N,
    i.e. frozen rows written more than 2^31 transactions ago (their raw xmin
    is kept). Those extra rows would be fetched for nothing by a receiver
    (``changed_rows``: it fetches every row it lists) or make a run
    "too many rows changed" (the count of ``print_and_changed``), and
    ``xids_since`` must have none: its ids are left out of the next run's
    changes here, so an extra one outside [horizon, xmax) would hide a later
    write by a transaction with that 32-bit id.
    """
    xid = int(since["xid"])
    span = int(now["_xmax"]) - xid
    params: dict[str, Any] = {
        "h": str(xid % WRAP),
        "x": str(int(now["_xmax"]) % WRAP),
    }
    row = conn.execute(
        text("SELECT age(CAST(:h AS xid)), age(CAST(:x AS xid))"), params
    ).one()
    a, b = int(row[0]), int(row[1])
    if not (0 <= span < MAX_SPAN and a - b == span and a < INT_MAX):
        raise Unsupported("the horizon is too far from this transaction's ids")
    where = "age(xmin) <= age(CAST(:h AS xid)) AND age(xmin) > age(CAST(:x AS xid))"
    if exclude:
        # xid equality is the 32-bit ids' (what xmin::text::bigint compared).
        where += " AND NOT (xmin = ANY(CAST(:own AS xid[])))"
        params["own"] = int_array(sorted({int(x) % WRAP for x in exclude}))
    return where, params


def changed_rows(
    conn: Connection,
    info: TableInfo,
    since: dict[str, Any],
    now: dict[str, Any],
    columns: Sequence[str] | None,
    *,
    exclude: Sequence[int] = (),
    limit: int = MAX_CHANGED,
    hashing: Hashing = TEXT_HASHING,
) -> list[list[Any]]:
    """``[KEY, hash]`` of the rows whose xmin is at or after ``since``'s horizon
    (``exclude``: 64-bit ids of transactions whose rows to leave out).

    Unsupported when more than ``limit`` rows changed.
    """
    names = check_columns(info, columns)
    conn.exec_driver_sql(FINGERPRINT_SETTINGS)
    pk = info.pk_columns[0]
    encode = _pg_tuple_encoder(TableInfo(info.name, [pk], info.primary_key))
    where, params = _written_since(conn, since, now, exclude)
    rows = conn.execute(
        text(
            f"SELECT {_pg_select_expr(pk)}, {row_hash(info, names, hashing)}::text"
            f" FROM {info.qualified_text} WHERE {where} LIMIT :lim"
        ),
        {**params, "lim": limit + 1},
    ).all()
    if len(rows) > limit:
        raise Unsupported(f"more than {limit} rows changed")
    return [[encode((r[0],))[pk.name], str(r[1])] for r in rows]


def print_and_changed(
    conn: Connection,
    info: TableInfo,
    since: dict[str, Any],
    now: dict[str, Any],
    *,
    exclude: Sequence[int] = (),
) -> tuple[list[Any], int]:
    """``key_print`` and how many rows ``changed_rows`` would list, from one
    scan (in the transaction that took ``now``, as ``changed_rows``)."""
    conn.exec_driver_sql(FINGERPRINT_SETTINGS)
    where, params = _written_since(conn, since, now, exclude)
    key = quote_text(info.pk_columns[0].name)
    row = conn.execute(
        text(
            f"SELECT count(*), coalesce(sum(hashint8({key}::bigint)), 0)::text,"
            f" count(*) FILTER (WHERE {where}) FROM {info.qualified_text}"
        ),
        params,
    ).one()
    return [int(row[0]), str(row[1])], int(row[2])


def changed_and_print(
    conn: Connection,
    info: TableInfo,
    since: dict[str, Any],
    now: dict[str, Any],
    columns: Sequence[str] | None,
    *,
    exclude: Sequence[int] = (),
    limit: int = MAX_CHANGED,
    hashing: Hashing = TEXT_HASHING,
) -> tuple[list[list[Any]] | None, list[Any]]:
    """``changed_rows`` (None when more than ``limit`` rows changed) and
    ``key_print``: one scan, and a second that lists the rows only when some
    changed (both in one snapshot: the count is the listing's length).

    Unsupported as ``changed_rows`` otherwise (unknown columns, a horizon
    ``_written_since`` refuses), before any scan.
    """
    check_columns(info, columns)
    printed, count = print_and_changed(conn, info, since, now, exclude=exclude)
    if count > limit:
        return None, printed
    if count == 0:
        return [], printed
    rows = changed_rows(
        conn, info, since, now, columns, exclude=exclude, limit=limit, hashing=hashing
    )
    return rows, printed


def xids_since(
    conn: Connection, info: TableInfo, since: dict[str, Any], limit: int = 20_000
) -> list[int] | None:
    """The (32-bit) ids of the transactions that wrote the rows changed since
    ``since``'s horizon; None when more than ``limit`` (or ``_written_since``
    refuses the horizon)."""
    now = state(conn, info)
    try:
        where, params = _written_since(conn, since, now)
    except Unsupported:
        return None
    rows = conn.execute(
        text(
            f"SELECT DISTINCT xmin::text::bigint FROM {info.qualified_text}"
            f" WHERE {where} LIMIT :lim"
        ),
        {**params, "lim": limit + 1},
    ).all()
    return None if len(rows) > limit else sorted(int(r[0]) for r in rows)


def key_print(conn: Connection, info: TableInfo) -> list[Any]:
    """``[count, sum]`` of the table's key hashes (sum as text)."""
    key = quote_text(info.pk_columns[0].name)
    row = conn.execute(
        text(
            f"SELECT count(*), coalesce(sum(hashint8({key}::bigint)), 0)::text"
            f" FROM {info.qualified_text}"
        )
    ).one()
    return [int(row[0]), str(row[1])]


def key_buckets(
    conn: Connection, info: TableInfo, *, sums: bool = False
) -> dict[int, tuple[Any, ...]]:
    """Each non-empty bucket (key div BUCKET) -> (count, sum of key hashes),
    and with ``sums`` the exact sum of its keys too (as text)."""
    key = quote_text(info.pk_columns[0].name)
    extra = f", sum({key}::bigint)::text" if sums else ""
    rows = conn.execute(
        text(
            f"SELECT ({key}::bigint >> {SHIFT}) AS b, count(*),"
            f" sum(hashint8({key}::bigint))::text{extra} FROM {info.qualified_text}"
            " GROUP BY 1"
        )
    ).all()
    return {int(r[0]): tuple(r[1:]) for r in rows}


def key_hashes(
    conn: Connection, info: TableInfo, keys: Sequence[int]
) -> dict[int, Any]:
    """For each of these keys: ``[hashint8(key), whether the table has it]``."""
    key = quote_text(info.pk_columns[0].name)
    rows = conn.execute(
        text(
            "SELECT u.k, hashint8(u.k),"
            f" EXISTS (SELECT 1 FROM {info.qualified_text} t WHERE t.{key} = u.k)"
            " FROM unnest(CAST(:k AS bigint[])) AS u(k)"
        ),
        {"k": int_array(sorted({int(k) for k in keys}))},
    ).all()
    return {int(r[0]): [int(r[1]), bool(r[2])] for r in rows}


def xids_of(conn: Connection, info: TableInfo, keys: Sequence[int]) -> list[int]:
    """The (32-bit) ids of the transactions that wrote the rows of these keys
    (sub-transactions' own ids included: a row's xmin is its writer's)."""
    key = quote_text(info.pk_columns[0].name)
    found: set[int] = set()
    ordered = sorted({int(k) for k in keys})
    for start in range(0, len(ordered), MAX_CHANGED):
        found.update(
            int(r[0])
            for r in conn.execute(
                text(
                    f"SELECT DISTINCT xmin::text::bigint FROM {info.qualified_text}"
                    f" WHERE {key} = ANY(CAST(:k AS bigint[]))"
                ),
                {"k": int_array(ordered[start : start + MAX_CHANGED])},
            )
        )
    return sorted(found)


def at_or_after(
    xids: Sequence[int], since: dict[str, Any], now: dict[str, Any]
) -> list[int]:
    """The (32-bit) ids of ``xids`` at or after ``since``'s horizon (before
    ``now``'s xmax): the ones whose rows a scan from ``since`` lists."""
    h = int(since["xid"]) % WRAP
    span = now["_xmax"] - int(since["xid"])
    return sorted({int(x) for x in xids if (int(x) - h) % WRAP < span})


def bucket_keys(conn: Connection, info: TableInfo, buckets: Sequence[int]) -> list[int]:
    """The keys in these buckets, ascending."""
    key = quote_text(info.pk_columns[0].name)
    return [
        int(r[0])
        for r in conn.execute(
            text(
                f"SELECT t.{key} FROM {info.qualified_text} t"
                " JOIN unnest(CAST(:b AS bigint[])) AS u(b)"
                f" ON t.{key} >= u.b * {BUCKET} AND t.{key} < (u.b + 1) * {BUCKET}"
                f" ORDER BY 1"
            ),
            {"b": int_array(buckets)},
        )
    ]


def hashes_of(
    conn: Connection,
    info: TableInfo,
    keys: Sequence[int],
    columns: Sequence[str],
    hashing: Hashing = TEXT_HASHING,
) -> dict[int, str]:
    """Row hash of each of these keys that exists here."""
    names = check_columns(info, columns)
    conn.exec_driver_sql(FINGERPRINT_SETTINGS)
    pk = info.pk_columns[0]
    key = quote_text(pk.name)
    return {
        int(r[0]): str(r[1])
        for r in conn.execute(
            text(
                f"SELECT {key}, {row_hash(info, names, hashing)}::text"
                f" FROM {info.qualified_text}"
                f" WHERE {key} = ANY(CAST(:k AS {pk.type}[]))"
            ),
            {"k": int_array(keys)},
        )
    }
