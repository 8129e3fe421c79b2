"""Change tracking by triggers: the keys each write touches, logged by PostgreSQL.

On by default (SYNC_CHANGE_TRACKING: ``*``, a list of tables, or ``off``): a
site installs, on each table a delta run reads from it (sender) or writes
into it (receiver), four
statement-level triggers (AFTER INSERT, UPDATE and DELETE with transition
tables, AFTER TRUNCATE). They log the key of every row a statement touched,
with the writing transaction's top-level id (``pg_current_xact_id()``, the
same inside savepoints), into ``dbsync_change_log`` in the table's schema;
``dbsync_change_tracking`` holds one row per tracked table: its *epoch*
(the id of the transaction that installed the triggers), the horizon the
log is complete from (pruning raises it), and the horizons its readers last
asked from.

A state (shared.data.sender.changes) taken in a snapshot that sees the
table's epoch row carries that epoch. Every transaction that snapshot does
not see wrote the table after the triggers were in place (creating a trigger
waits for every transaction that holds a write lock on the table), so its
keys are in the log with an id at or after the state's horizon (which may
be older than the epoch: another session's long transaction holds it back). A later
snapshot lists the keys changed since the state from the log alone, with no
scan of the table, while (``covers``): the epoch is the same (the triggers
were not dropped and made again), the four triggers exist and fire always
(``ENABLE ALWAYS``: also for logical replication's apply and
``session_replication_role = replica``), the table's file is the same (no
TRUNCATE, VACUUM FULL, CLUSTER or rewriting ALTER: TRUNCATE empties a file
in place only when the file was made by its own transaction, after any
state that names it), and the log still reaches back to the horizon. (The
TRUNCATE trigger's entry, a null key, is only a trace for people.) What it relies on and
cannot check: nobody disables the triggers and enables them again between
two runs (``ALTER TABLE ... DISABLE TRIGGER``), and nobody writes the log.

The trigger function runs as its owner (SECURITY DEFINER), so other roles
writing the table need no rights on the log. The log is pruned below the
oldest horizon a reader of the last PRUNE_DAYS asked from; a reader whose
horizon is older than what is left compares by ``xmin`` instead.

``tidy`` (beat's expire job) takes the triggers, the log's rows and the mark
off a table that no reader asked about for PRUNE_DAYS (or that the site no
longer tracks), and the two tables and the functions off a schema when no
table is tracked in it any more: nothing of it is left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from shared.data.schema import TableInfo, quote, quote_text
from shared.data.sender.fingerprints import (
    FINGERPRINT_SETTINGS,
    TEXT_HASHING,
    Hashing,
    Unsupported,
    check_columns,
    row_hash,
)

log = logging.getLogger("dbsync.tracking")

LOG_TABLE = "dbsync_change_log"
MARK_TABLE = "dbsync_change_tracking"
TABLES = frozenset((LOG_TABLE, MARK_TABLE))
FUNCTION = "dbsync_log_change"
TRIGGERS = {
    "dbsync_track_insert": "AFTER INSERT ON {t} REFERENCING NEW TABLE AS dbsync_new",
    "dbsync_track_update": (
        "AFTER UPDATE ON {t} REFERENCING OLD TABLE AS dbsync_old"
        " NEW TABLE AS dbsync_new"
    ),
    "dbsync_track_delete": "AFTER DELETE ON {t} REFERENCING OLD TABLE AS dbsync_old",
    "dbsync_track_truncate": "AFTER TRUNCATE ON {t}",
}
PRUNE_DAYS = 7
INSTALL_LOCK_TIMEOUT = "2s"  # the longest an install waits for a lock
# When an install last failed in this process, by table: the next try waits
# RETRY_AFTER seconds (a try behind a long write holds the table's new
# writers for up to INSTALL_LOCK_TIMEOUT; a receiver's calls must not repeat
# that at will).
_FAILED: dict[str, float] = {}  # by database URL and table
RETRY_AFTER = 600
_PLAIN = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")

_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION {s}.{f}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $dbsync$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {s}.{log} (table_oid, key) VALUES (TG_RELID, NULL);
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.{log} (table_oid, key) SELECT TG_RELID, {k}::bigint FROM dbsync_new;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.{log} (table_oid, key) SELECT TG_RELID, {k}::bigint FROM dbsync_old;
  ELSE
    INSERT INTO {s}.{log} (table_oid, key) SELECT TG_RELID, k
      FROM (SELECT {k}::bigint AS k FROM dbsync_new
            UNION SELECT {k}::bigint FROM dbsync_old) AS keys;
  END IF;
  RETURN NULL;
END
$dbsync$
"""


def function_name(info: TableInfo) -> str:
    """The trigger function of tables keyed by ``info``'s key column name: its
    statements name the column, so PL/pgSQL plans them once per trigger
    (a function that built them with EXECUTE planned them on every write,
    twice the cost of a one-row UPDATE)."""
    key = info.pk_columns[0].name
    return f"{FUNCTION}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _schema(info: TableInfo) -> str:
    schema = info.schema or "public"
    if not _PLAIN.match(schema):
        raise Unsupported(f"schema {schema!r} is not a plain name")
    return quote_text(schema)


def trackable(conn: Connection | Engine, info: TableInfo) -> bool:
    """PostgreSQL 13 or later, a key of one integer column, a plain schema."""
    version = getattr(conn.dialect, "server_version_info", None) or (0,)
    return (
        conn.dialect.name == "postgresql"
        and tuple(version) >= (13,)
        and len(info.primary_key) == 1
        and info.pk_columns[0].kind == "int"
        and "$" not in info.pk_columns[0].name  # it goes in a $dbsync$ body
        and bool(_PLAIN.match(info.schema or "public"))
    )


def _installed(conn: Connection, info: TableInfo) -> bool:
    """Whether the four triggers are on the table, firing always, with an epoch."""
    exists: bool = conn.execute(
        text("SELECT to_regclass(:m) IS NOT NULL"),
        {"m": f'"{info.schema or "public"}".{MARK_TABLE}'},
    ).scalar_one()
    if not exists:
        return False
    firing: int = conn.execute(
        text(
            "SELECT count(*) FROM pg_trigger"
            " WHERE tgrelid = CAST(:t AS regclass) AND tgname = ANY(:names)"
            " AND tgenabled = 'A' AND tgfoid = to_regprocedure(:f)"
        ),
        {
            "t": info.qualified_text,
            "names": list(TRIGGERS),
            "f": f"{_schema(info)}.{function_name(info)}()",
        },
    ).scalar_one()
    if firing != len(TRIGGERS):
        return False
    return (
        conn.execute(
            text(
                f"SELECT 1 FROM {_schema(info)}.{MARK_TABLE}"
                " WHERE table_oid = CAST(:t AS regclass)"
            ),
            {"t": info.qualified_text},
        ).first()
        is not None
    )


def ensure(engine: Engine, info: TableInfo) -> bool:
    """Track ``info``'s table, installing the triggers when they are missing;
    False when it cannot be (the reason is logged)."""
    if not trackable(engine, info):
        return False
    which = f"{engine.url.render_as_string(hide_password=True)} {info.qualified_text}"
    failed = _FAILED.get(which)
    try:
        with engine.connect() as conn:
            if _installed(conn, info):
                return True
        if failed is not None and time.monotonic() - failed < RETRY_AFTER:
            return False  # not tried again so soon: it may stall the table's writers
        with engine.begin() as conn:
            _install(conn, info)
    except (SQLAlchemyError, Unsupported) as ex:
        # Warned once a table and process: a role that may not add triggers
        # would otherwise warn at every run (the runs compare by xmin).
        _FAILED[which] = time.monotonic()
        (log.info if failed is not None else log.warning)(
            "change tracking of %s not installed: %s", info.name, ex
        )
        return False
    _FAILED.pop(which, None)
    log.info("change tracking installed on %s", info.name)
    return True


def _install(conn: Connection, info: TableInfo) -> None:
    s, t = _schema(info), info.qualified_text
    # CREATE TRIGGER waits for the table's writers to finish and holds every
    # new writer behind it meanwhile: it gives up soon instead (the run
    # compares by xmin, the next one tries again).
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{INSTALL_LOCK_TIMEOUT}'")
    _lock(conn)
    if _installed(conn, info):
        return
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {s}.{LOG_TABLE} (table_oid oid NOT NULL,"
        " key bigint, xid xid8 NOT NULL DEFAULT pg_current_xact_id())"
    )
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {LOG_TABLE}_by_xid ON {s}.{LOG_TABLE}"
        " (table_oid, xid)"
    )
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {s}.{MARK_TABLE} (table_oid oid PRIMARY KEY,"
        " epoch text NOT NULL, complete_since xid8 NOT NULL,"
        " readers jsonb NOT NULL DEFAULT '{}',"
        " installed_at timestamptz NOT NULL DEFAULT now())"
    )
    conn.exec_driver_sql(  # (marks made before installed_at was kept)
        f"ALTER TABLE {s}.{MARK_TABLE} ADD COLUMN IF NOT EXISTS"
        " installed_at timestamptz NOT NULL DEFAULT now()"
    )
    function = function_name(info)
    body = _FUNCTION_SQL.format(
        s=s, f=function, log=LOG_TABLE, k=quote(info.pk_columns[0].name)
    )
    conn.exec_driver_sql(body.replace("%", "%%"))
    for name, when in TRIGGERS.items():
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {info.qualified}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {name} {when.format(t=info.qualified)}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {s}.{function}()"
        )
        conn.exec_driver_sql(
            f"ALTER TABLE {info.qualified} ENABLE ALWAYS TRIGGER {name}"
        )
    conn.execute(
        text(
            f"INSERT INTO {s}.{MARK_TABLE} (table_oid, epoch, complete_since)"
            " VALUES (CAST(:t AS regclass), pg_current_xact_id()::text, '1')"
            " ON CONFLICT (table_oid) DO UPDATE SET epoch = EXCLUDED.epoch,"
            " complete_since = EXCLUDED.complete_since, readers = '{}',"
            " installed_at = now()"
        ),
        {"t": t},
    )


def epoch(conn: Connection, info: TableInfo) -> str | None:
    """The table's epoch as the caller's snapshot sees it, when its triggers
    are in place now; None otherwise."""
    if not trackable(conn, info) or not _installed(conn, info):
        return None
    return _mark(conn, info)[0]


def _mark(conn: Connection, info: TableInfo) -> tuple[str | None, int]:
    row = conn.execute(
        text(
            f"SELECT epoch, complete_since::text FROM {_schema(info)}.{MARK_TABLE}"
            " WHERE table_oid = CAST(:t AS regclass)"
        ),
        {"t": info.qualified_text},
    ).first()
    return (None, 0) if row is None else (str(row[0]), int(row[1]))


def covers(conn: Connection, info: TableInfo, since: Any, now: dict[str, Any]) -> bool:
    """Whether the log lists every key changed after ``since`` (module doc);
    ``now`` is the state of the caller's snapshot."""
    if not isinstance(since, dict) or not isinstance(since.get("epoch"), str):
        return False
    if now.get("epoch") != since["epoch"] or since.get("node") != now.get("node"):
        return False
    try:
        horizon = int(since["xid"])
    except (KeyError, TypeError, ValueError):
        return False
    current, complete_since = _mark(conn, info)
    return current == since["epoch"] and horizon >= complete_since


def changed_rows(
    conn: Connection,
    info: TableInfo,
    since: dict[str, Any],
    columns: Sequence[str] | None,
    *,
    exclude: Sequence[int] = (),
    limit: int,
    hashing: Hashing = TEXT_HASHING,
) -> list[list[Any]]:
    """``[KEY, hash]`` of each key logged at or after ``since``'s horizon,
    hash None when the table no longer has the key (``exclude``: 64-bit ids
    of transactions whose keys to leave out). Unsupported when more than
    ``limit`` keys changed."""
    names = check_columns(info, columns)
    conn.exec_driver_sql(FINGERPRINT_SETTINGS)
    key = quote_text(info.pk_columns[0].name)
    where = (
        "table_oid = CAST(:t AS regclass) AND xid >= CAST(:h AS text)::xid8"
        " AND key IS NOT NULL"
    )
    params: dict[str, Any] = {
        "t": info.qualified_text,
        "h": str(int(since["xid"])),
        "lim": limit + 1,
    }
    if exclude:
        where += " AND NOT (xid = ANY(CAST(CAST(:own AS text[]) AS xid8[])))"
        params["own"] = [str(int(x)) for x in sorted(set(exclude))]
    rows = conn.execute(
        text(
            "SELECT c.dbsync_changed_key,"
            f" CASE WHEN t.{key} IS NULL THEN NULL"
            f" ELSE ({row_hash(info, names, hashing)})::text END"
            f" FROM (SELECT DISTINCT key AS dbsync_changed_key"
            f" FROM {_schema(info)}.{LOG_TABLE} WHERE {where} LIMIT :lim) AS c"
            f" LEFT JOIN {info.qualified_text} AS t"
            f" ON t.{key} = c.dbsync_changed_key ORDER BY 1"
        ),
        params,
    ).all()
    if len(rows) > limit:
        raise Unsupported(f"more than {limit} rows changed")
    return [[int(r[0]), None if r[1] is None else str(r[1])] for r in rows]


def note_reader(engine: Engine, info: TableInfo, reader: str, horizon: int) -> None:
    """Keep the horizon ``reader`` asked from, and prune the log below the
    oldest horizon of the readers seen in the last PRUNE_DAYS."""
    now = int(time.time())
    try:
        with engine.begin() as conn:
            row = conn.execute(
                text(
                    f"SELECT readers, complete_since::text FROM {_schema(info)}."
                    f"{MARK_TABLE} WHERE table_oid = CAST(:t AS regclass) FOR UPDATE"
                ),
                {"t": info.qualified_text},
            ).first()
            if row is None:
                return
            readers = {
                k: v
                for k, v in dict(row[0] or {}).items()
                if isinstance(v, list) and now - int(v[1]) < PRUNE_DAYS * 86_400
            }
            readers[reader] = [horizon, now]
            oldest = min(int(v[0]) for v in readers.values())
            complete_since = max(int(row[1]), oldest)
            conn.execute(
                text(
                    f"UPDATE {_schema(info)}.{MARK_TABLE}"
                    " SET readers = CAST(:r AS jsonb),"
                    " complete_since = CAST(:c AS text)::xid8"
                    " WHERE table_oid = CAST(:t AS regclass)"
                ),
                {
                    "r": _json(readers),
                    "c": str(complete_since),
                    "t": info.qualified_text,
                },
            )
            if complete_since > int(row[1]):
                conn.execute(
                    text(
                        f"DELETE FROM {_schema(info)}.{LOG_TABLE}"
                        " WHERE table_oid = CAST(:t AS regclass)"
                        " AND xid < CAST(:c AS text)::xid8"
                    ),
                    {"c": str(complete_since), "t": info.qualified_text},
                )
    except SQLAlchemyError as ex:  # pruning can wait for the next call
        log.info("change log of %s not pruned: %s", info.name, ex)


def remove(engine: Engine, schema: str, table: str) -> bool:
    """Take change tracking off ``schema.table``: its triggers, its mark and
    its log's rows (and the schema's tables and functions when no other
    table is tracked there). True when it was tracked; False also when it
    could not be done now (the reason is logged; the next call tries again).
    """
    if not _PLAIN.match(schema):
        return False
    s = quote_text(schema)
    qualified = f"{s}.{quote_text(table)}"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{INSTALL_LOCK_TIMEOUT}'")
            _lock(conn)
            if conn.execute(
                text("SELECT to_regclass(:m) IS NULL"), {"m": f"{s}.{MARK_TABLE}"}
            ).scalar_one():
                return False
            oid = conn.execute(
                text("SELECT to_regclass(:t)::oid"), {"t": qualified}
            ).scalar_one()
            if oid is not None:
                for name in TRIGGERS:
                    conn.exec_driver_sql(
                        f"DROP TRIGGER IF EXISTS {name} ON {qualified}"
                    )
            was = _forget(conn, schema, oid)
        if was:
            log.info("change tracking removed from %s", table)
        return was
    except SQLAlchemyError as ex:
        log.warning("change tracking of %s not removed: %s", table, ex)
        return False


def _lock(conn: Connection) -> None:
    """Installs and removals of this database, one at a time (until commit)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('dbsync_tracking'))"))


def _forget(conn: Connection, schema: str, oid: int | None) -> bool:
    """Delete the mark and log rows of the table ``oid`` and drop the trigger
    functions no trigger uses; with no mark left in the schema, drop its log
    and mark tables too."""
    s = quote_text(schema)
    gone = conn.execute(
        text(f"DELETE FROM {s}.{MARK_TABLE} WHERE table_oid = :o"), {"o": oid}
    ).rowcount
    conn.execute(text(f"DELETE FROM {s}.{LOG_TABLE} WHERE table_oid = :o"), {"o": oid})
    unused: Sequence[str] = (
        conn.execute(
            text(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = :n AND left(p.proname, length(:f)) = :f"
                " AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgfoid = p.oid)"
            ),
            {"n": schema, "f": FUNCTION},
        )
        .scalars()
        .all()
    )
    for function in unused:
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function}")
    if conn.execute(
        text(f"SELECT NOT EXISTS (SELECT 1 FROM {s}.{MARK_TABLE})")
    ).scalar_one():
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {s}.{LOG_TABLE}, {s}.{MARK_TABLE}")
    return bool(gone)


def tracked_tables(engine: Engine) -> list[dict[str, Any]]:
    """Each table tracked in the data database: schema, table (None when it
    was dropped), the epoch, when installed, and its readers."""
    if engine.dialect.name != "postgresql":
        return []
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        schemas: Sequence[str] = (
            conn.execute(
                text(
                    "SELECT n.nspname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.relname = :m AND c.relkind = 'r' ORDER BY 1"
                ),
                {"m": MARK_TABLE},
            )
            .scalars()
            .all()
        )
        for schema in schemas:
            if not _PLAIN.match(schema):
                continue
            rows = conn.execute(
                text(
                    "SELECT m.table_oid, c.relname, m.epoch, m.readers,"
                    " m.installed_at, extract(epoch FROM now() - m.installed_at)"
                    f" FROM {quote_text(schema)}.{MARK_TABLE} m"
                    " LEFT JOIN pg_class c ON c.oid = m.table_oid ORDER BY 2"
                )
            ).all()
            out.extend(
                {
                    "schema": schema,
                    "table": r[1],
                    "oid": int(r[0]),
                    "epoch": str(r[2]),
                    "readers": dict(r[3] or {}),
                    "installed_at": r[4].isoformat(),
                    "age_seconds": float(r[5]),
                }
                for r in rows
            )
    return out


def tidy(engine: Engine, wanted: Callable[[str], bool]) -> list[str]:
    """Take tracking off each table no reader asked about for PRUNE_DAYS
    (installed at least that long ago), off each table ``wanted(name)`` no
    longer names, and forget tables that were dropped. The names taken off."""
    now, limit = time.time(), PRUNE_DAYS * 86_400
    removed: list[str] = []
    try:
        entries = tracked_tables(engine)
    except SQLAlchemyError as ex:  # the next call tries again
        log.info("change tracking not tidied: %s", ex)
        return removed
    for entry in entries:
        name = entry["table"]
        if name is None:  # the table was dropped: its triggers went with it
            try:
                with engine.begin() as conn:
                    _lock(conn)
                    _forget(conn, entry["schema"], entry["oid"])
            except SQLAlchemyError as ex:
                log.info("change tracking of a dropped table not forgotten: %s", ex)
            continue
        heard = [
            int(v[1])
            for v in entry["readers"].values()
            if isinstance(v, list) and len(v) > 1
        ]
        idle = entry["age_seconds"] >= limit and all(now - t >= limit for t in heard)
        if (idle or not wanted(name)) and remove(engine, entry["schema"], name):
            removed.append(name)
    return removed


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
