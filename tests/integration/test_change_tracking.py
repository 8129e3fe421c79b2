"""Change tracking by triggers: what the log lists, and when it may vouch."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text

from shared.data.schema import TableInfo, Tables
from shared.data.sender import changes, tracking
from tests.helpers import ScratchDatabases, run


@pytest.fixture
def engine(scratch_db_factory: ScratchDatabases) -> Engine:
    engine = scratch_db_factory.engine()
    run(
        engine,
        "CREATE TABLE t (id bigint PRIMARY KEY, label text)",
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g",
    )
    return engine


def _info(engine: Engine) -> TableInfo:
    return Tables(engine, schema="public").describe("t")


def _state(engine: Engine, info: TableInfo) -> dict[str, Any]:
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            now = changes.state(conn, info)
            mark = tracking.epoch(conn, info)
    return {**now, "epoch": mark} if mark is not None else now


def _listed(
    engine: Engine, info: TableInfo, since: dict[str, Any], **kw: Any
) -> list[list[Any]] | None:
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            now = changes.state(conn, info)
            mark = tracking.epoch(conn, info)
            if mark is not None:
                now["epoch"] = mark
            if not tracking.covers(conn, info, changes.public(since), now):
                return None
            return tracking.changed_rows(conn, info, since, None, limit=1000, **kw)


def test_the_log_lists_every_key_written_since_a_state(engine: Engine) -> None:
    info = _info(engine)
    assert tracking.ensure(engine, info) is True
    assert tracking.ensure(engine, info) is True  # installed once
    since = _state(engine, info)
    assert since["epoch"]
    run(
        engine,
        "SAVEPOINT s; UPDATE t SET label = 'x' WHERE id = 1; RELEASE SAVEPOINT s",
    )
    run(engine, "DELETE FROM t WHERE id = 2", "UPDATE t SET id = 300 WHERE id = 3")
    run(engine, "INSERT INTO t VALUES (200, 'new')")
    listed = _listed(engine, info, since)
    assert listed is not None
    # Deleted keys (and a key moved away) have no hash.
    assert [(k, h is None) for k, h in listed] == [
        (1, False),
        (2, True),
        (3, True),
        (200, False),
        (300, False),
    ]
    # A writer's own transactions (by top-level id) are left out.
    own = run_returning_xid(engine, "UPDATE t SET label = 'mine' WHERE id = 50")
    later = [k for k, _ in _listed(engine, info, since, exclude=[own]) or []]
    assert 50 not in later
    # Nothing new since a fresh state (another session's transaction on the
    # shared cluster may hold its horizon back: then the same keys again).
    fresh = _listed(engine, info, _state(engine, info))
    assert fresh is not None and {k for k, _ in fresh} <= {1, 2, 3, 50, 200, 300}


def run_returning_xid(engine: Engine, statement: str) -> int:
    with engine.begin() as conn:
        conn.execute(text(statement))
        return int(conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())


def test_the_log_does_not_vouch_after_truncate_or_new_triggers(engine: Engine) -> None:
    info = _info(engine)
    assert tracking.ensure(engine, info)
    since = _state(engine, info)
    untracked = _state(engine, info)
    untracked.pop("epoch")
    assert _listed(engine, info, untracked) is None  # a state without an epoch
    # Triggers disabled: nothing vouches until they are made again (new epoch).
    run(engine, "ALTER TABLE t DISABLE TRIGGER dbsync_track_update")
    assert _listed(engine, info, since) is None
    assert tracking.ensure(engine, info)
    assert _listed(engine, info, since) is None
    fresh = _state(engine, info)
    assert fresh["epoch"] != since["epoch"] and _listed(engine, info, fresh) == []
    run(engine, "TRUNCATE t")
    assert _listed(engine, info, fresh) is None


def test_other_roles_write_without_rights_on_the_log(engine: Engine) -> None:
    info = _info(engine)
    assert tracking.ensure(engine, info)
    since = _state(engine, info)
    role = f"dbsync_writer_{uuid.uuid4().hex[:8]}"
    run(engine, f"CREATE ROLE {role}", f"GRANT SELECT, UPDATE ON t TO {role}")
    try:
        run(engine, f"SET LOCAL ROLE {role}", "UPDATE t SET label = 'a' WHERE id = 9")
    finally:
        run(engine, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    assert [k for k, _ in _listed(engine, info, since) or []] == [9]


def test_the_log_is_pruned_below_its_readers_horizons(engine: Engine) -> None:
    info = _info(engine)
    assert tracking.ensure(engine, info)
    state = _state(engine, info)
    first = run_returning_xid(engine, "UPDATE t SET label = 'a' WHERE id = 1")
    second = run_returning_xid(engine, "UPDATE t SET label = 'b' WHERE id = 2")
    since_first, since_second = {**state, "xid": first}, {**state, "xid": second}
    tracking.note_reader(engine, info, "a", first)
    tracking.note_reader(engine, info, "b", second)
    # Reader a still needs what follows its horizon: nothing is pruned.
    assert [k for k, _ in _listed(engine, info, since_first) or []] == [1, 2]
    tracking.note_reader(engine, info, "a", second)
    # Both are past key 1's change now: it is pruned, and a state from
    # before is no longer vouched for.
    assert _listed(engine, info, since_first) is None
    assert [k for k, _ in _listed(engine, info, since_second) or []] == [2]


def test_tables_it_cannot_track(scratch_db_factory: ScratchDatabases) -> None:
    engine = scratch_db_factory.engine()
    run(engine, "CREATE TABLE u (code text PRIMARY KEY)")
    info = Tables(engine, schema="public").describe("u")
    assert tracking.trackable(engine, info) is False
    assert tracking.ensure(engine, info) is False


def test_a_key_column_of_any_name_is_logged_by_its_own_function(
    scratch_db_factory: ScratchDatabases,
) -> None:
    engine = scratch_db_factory.engine()
    run(
        engine,
        'CREATE TABLE odd ("Row Id" integer PRIMARY KEY, "it\'s" text)',
        "INSERT INTO odd SELECT g, 'v' FROM generate_series(1, 5) g",
        "CREATE TABLE plain (id bigint PRIMARY KEY, v text)",
    )
    tables = Tables(engine, schema="public")
    odd, plain = tables.describe("odd"), tables.describe("plain")
    assert tracking.ensure(engine, odd) and tracking.ensure(engine, plain)
    assert tracking.function_name(odd) != tracking.function_name(plain)
    with engine.connect() as conn:
        since = changes.state(conn, odd)
    run(
        engine,
        """UPDATE odd SET "it's" = 'w' WHERE "Row Id" = 2""",
        """UPDATE odd SET "Row Id" = 50 WHERE "Row Id" = 3""",
        """DELETE FROM odd WHERE "Row Id" = 4""",
        "INSERT INTO plain VALUES (7, 'x')",
    )
    with engine.connect() as conn:
        logged = conn.execute(
            text(
                "SELECT table_oid::regclass::text, key FROM dbsync_change_log"
                " WHERE xid >= CAST(:h AS text)::xid8 ORDER BY 1, 2"
            ),
            {"h": str(since["xid"])},
        ).all()
    assert [tuple(r) for r in logged] == [
        ("odd", 2),
        ("odd", 3),
        ("odd", 4),
        ("odd", 50),
        ("plain", 7),
    ]


def test_triggers_of_an_earlier_function_are_made_again(engine: Engine) -> None:
    # Earlier versions logged through one function that built its statements
    # with EXECUTE; a table still on it is installed again (a new epoch).
    info = _info(engine)
    assert tracking.ensure(engine, info)
    before = _state(engine, info)
    run(
        engine,
        "CREATE FUNCTION dbsync_log_change() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NULL; END $$",
        "DROP TRIGGER dbsync_track_insert ON t",
        "CREATE TRIGGER dbsync_track_insert AFTER INSERT ON t"
        " FOR EACH STATEMENT EXECUTE FUNCTION dbsync_log_change()",
        "ALTER TABLE t ENABLE ALWAYS TRIGGER dbsync_track_insert",
    )
    assert _listed(engine, info, before) is None
    assert tracking.ensure(engine, info)
    after = _state(engine, info)
    assert after["epoch"] != before["epoch"]
    run(engine, "INSERT INTO t VALUES (500, 'new')")
    assert [k for k, _ in _listed(engine, info, after) or []] == [500]


def test_an_install_behind_a_long_write_gives_up_without_holding_writers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "INSTALL_LOCK_TIMEOUT", "300ms")
    info = _info(engine)
    with engine.connect() as writer, writer.begin():
        writer.execute(text("UPDATE t SET label = 'busy' WHERE id = 1"))
        started = time.monotonic()
        assert tracking.ensure(engine, info) is False
        assert time.monotonic() - started < 5
    # Not tried again for RETRY_AFTER: a receiver's calls cannot make it
    # stall the table's writers over and over.
    assert tracking.ensure(engine, info) is False
    assert _leftovers(engine)["triggers"] == 0
    monkeypatch.setattr(tracking, "RETRY_AFTER", 0)
    assert tracking.ensure(engine, info) is True


def _leftovers(engine: Engine) -> dict[str, Any]:
    """What of change tracking is in the database."""
    with engine.connect() as conn:
        return {
            "triggers": conn.execute(
                text(
                    "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'dbsync_track%'"
                )
            ).scalar_one(),
            "functions": conn.execute(
                text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'dbsync_log%'")
            ).scalar_one(),
            "tables": sorted(
                conn.execute(
                    text(
                        "SELECT relname FROM pg_class WHERE relkind = 'r'"
                        " AND relname LIKE 'dbsync_change%'"
                    )
                ).scalars()
            ),
        }


def test_remove_takes_every_trace_off(engine: Engine) -> None:
    run(engine, "CREATE TABLE u (uid bigint PRIMARY KEY)", "INSERT INTO u VALUES (1)")
    info = _info(engine)
    other = Tables(engine, schema="public").describe("u")
    assert tracking.ensure(engine, info) and tracking.ensure(engine, other)
    run(engine, "UPDATE t SET label = 'x' WHERE id = 1", "DELETE FROM u")
    assert [(e["table"], e["readers"]) for e in tracking.tracked_tables(engine)] == [
        ("t", {}),
        ("u", {}),
    ]
    assert tracking.remove(engine, "public", "t") is True
    # u keeps its triggers, its function, its mark and its log rows.
    assert _leftovers(engine) == {
        "triggers": 4,
        "functions": 1,
        "tables": ["dbsync_change_log", "dbsync_change_tracking"],
    }
    with engine.connect() as conn:
        logged = conn.execute(
            text("SELECT table_oid::regclass::text, key FROM dbsync_change_log")
        ).all()
    assert [tuple(r) for r in logged] == [("u", 1)]
    assert tracking.remove(engine, "public", "t") is False  # not tracked now
    run(engine, "UPDATE t SET label = 'y' WHERE id = 2")  # no trigger: no log
    assert tracking.remove(engine, "public", "u") is True
    assert _leftovers(engine) == {"triggers": 0, "functions": 0, "tables": []}
    assert tracking.tracked_tables(engine) == []
    assert tracking.remove(engine, "public", "u") is False
    # And it goes on again as new.
    assert tracking.ensure(engine, info) is True
    assert _leftovers(engine)["triggers"] == 4


def test_tidy_takes_tracking_off_what_nobody_reads(engine: Engine) -> None:
    run(
        engine,
        "CREATE TABLE u (id bigint PRIMARY KEY)",
        "CREATE TABLE w (id bigint PRIMARY KEY)",
        "CREATE TABLE gone (id bigint PRIMARY KEY)",
    )
    tables = Tables(engine, schema="public")
    for name in ("t", "u", "w", "gone"):
        assert tracking.ensure(engine, tables.describe(name)) is True
    old = int(time.time()) - (tracking.PRUNE_DAYS + 1) * 86_400
    recent = int(time.time()) - 3600
    # t: installed long ago, its only reader gone for longer than PRUNE_DAYS.
    # u: installed long ago, read an hour ago. w: installed just now, unread.
    run(
        engine,
        "UPDATE dbsync_change_tracking SET installed_at = now() - interval '8 days'"
        " WHERE table_oid IN ('t'::regclass, 'u'::regclass)",
        "UPDATE dbsync_change_tracking SET readers = jsonb_build_object("
        f"'receiver:a', jsonb_build_array(1, {old})) WHERE table_oid = 't'::regclass",
        "UPDATE dbsync_change_tracking SET readers = jsonb_build_object("
        f"'receiver:b', jsonb_build_array(1, {recent})) WHERE table_oid = 'u'::regclass",
        "DROP TABLE gone",
    )
    assert tracking.tidy(engine, lambda name: True) == ["t"]
    assert [e["table"] for e in tracking.tracked_tables(engine)] == ["u", "w"]
    assert _leftovers(engine)["triggers"] == 8
    # A table the site no longer names (SYNC_CHANGE_TRACKING) goes at once.
    assert tracking.tidy(engine, lambda name: name == "u") == ["w"]
    assert [e["table"] for e in tracking.tracked_tables(engine)] == ["u"]
    assert tracking.tidy(engine, lambda name: False) == ["u"]
    assert _leftovers(engine) == {"triggers": 0, "functions": 0, "tables": []}
    assert tracking.tidy(engine, lambda name: False) == []
