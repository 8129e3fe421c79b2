"""Keep tables in sync: delta pulls by range fingerprints, verification, and
scheduled syncs run by beat, between two real sites driven through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from shared.data.sender.offer import Catalog
from tests.e2e.conftest import SiteProcesses, field, pair
from tests.helpers import ScratchDatabases, eventually

pytestmark = pytest.mark.e2e

ENV = {
    "SYNC_PULL_LEASE_SECONDS": "4",
    "SYNC_SYNCS_TICK_SECONDS": "1",
    "SYNC_PULL_MAX_ATTEMPTS": "3",
    "SYNC_CHANGE_TRACKING": "tracked",
}
ITEMS = """
CREATE TABLE items (id bigint PRIMARY KEY, name text, qty integer, price numeric(10,2),
                    at timestamptz, doc jsonb);
INSERT INTO items SELECT g, 'item ' || g, g % 97, (g * 1.5)::numeric(10,2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute',
       jsonb_build_object('g', g)
FROM generate_series(1, :n) g;
"""


def checksum(site: SiteProcesses, table: str) -> str:
    engine = create_engine(site.db_url)
    try:
        return Catalog(engine, checksum_row_limit=10**9).checksum(table)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[SiteProcesses, SiteProcesses]]:
    work: Path = tmp_path_factory.mktemp("syncs")
    sender = SiteProcesses(
        "sender", work, module_db_factory.create("e2e_sync_send"), 13, **ENV
    )
    receiver = SiteProcesses(
        "receiver", work, module_db_factory.create("e2e_sync_recv"), 14, **ENV
    )
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        # Fingerprint descents make several calls a run: no rate limit here.
        pair(sender, receiver, "--rate-limit", "100000")
        sender.sql(ITEMS, n=20_000)
        yield sender, receiver
    except BaseException:
        print(sender.logs())
        print(receiver.logs())
        raise
    finally:
        sender.close()
        receiver.close()


def pull(receiver: SiteProcesses, *args: str) -> dict[str, Any]:
    result = receiver.cli(
        "pull", field(receiver, "id"), *args, "--wait", "--json", check=False
    )
    data = json.loads(result.stdout)
    assert data["status"] == "completed", data
    return data


def test_verification_catches_a_planted_difference_and_delta_repairs_it(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    first = pull(receiver, "items", "--create-missing")
    assert first["records_created"] == 20_000
    assert first["verification"] == {"items": {"status": "verified"}}
    assert first["error"] is None

    # A changed row, a deleted row and an extra row at the receiver.
    receiver.sql("UPDATE items SET qty = -1 WHERE id = 5000")
    receiver.sql("INSERT INTO items (id, name) VALUES (30000, 'extra')")
    # A pull that keeps local rows (skip) cannot level them: verification says so.
    kept = pull(receiver, "items", "--strategy", "skip")
    assert kept["records_created"] == 0
    check = kept["verification"]["items"]
    assert check["status"] == "differs"
    assert kept["error"].startswith("Verification: items differ(s) from the sender")
    after, until = check["first_range"]["after"], check["first_range"]["until"]
    # The first differing range found holds the changed row 5000.
    assert (after is None or after[0] < 5000) and (until is None or until[0] >= 5000)

    receiver.sql("DELETE FROM items WHERE id = 12000")  # and a row missing
    repaired = pull(
        receiver,
        "items",
        "--mode",
        "delta",
        "--mirror-deletes",
        "--strategy",
        "overwrite",
    )
    assert repaired["verification"] == {"items": {"status": "verified"}}
    assert repaired["error"] is None
    delta = repaired["delta"]["items"]
    assert delta["mode"] == "delta" and delta["equal_before"] is False
    assert delta["deleted"] == 1
    # Only the two rows that differ moved (compared row by row in their range).
    assert delta["rows_pulled"] == 2
    assert repaired["records_created"] == 1  # row 12000 back
    assert repaired["records_updated"] == 1  # row 5000
    assert receiver.sql("SELECT qty FROM items WHERE id = 5000") == [(5000 % 97,)]
    assert receiver.sql("SELECT count(*) FROM items WHERE id = 30000") == [(0,)]
    assert checksum(receiver, "items") == checksum(sender, "items")

    # No change: the run compares, moves nothing, and says so.
    calm = pull(receiver, "items", "--mode", "delta", "--mirror-deletes")
    assert calm["delta"]["items"]["equal_before"] is True
    assert calm["delta"]["items"]["rows_pulled"] == 0
    assert calm["records_transferred"] == 0
    assert calm["delta"]["items"]["from"] == "xmin"
    assert calm["verification"] == {"items": {"status": "verified"}}

    # From xmin: the last run verified, so this one lists only the rows
    # changed on either side since it (and compares key sets by buckets).
    sender.sql("UPDATE items SET qty = qty + 1000 WHERE id IN (10, 15000)")
    sender.sql("DELETE FROM items WHERE id = 7000")
    sender.sql("INSERT INTO items (id, name, qty) VALUES (50000, 'new', 7)")
    receiver.sql("UPDATE items SET qty = -2 WHERE id = 6000")
    receiver.sql("DELETE FROM items WHERE id = 13000")
    receiver.sql("INSERT INTO items (id, name) VALUES (30001, 'extra')")
    quick = pull(
        receiver,
        "items",
        "--mode",
        "delta",
        "--mirror-deletes",
        "--strategy",
        "overwrite",
    )
    assert quick["verification"] == {"items": {"status": "verified"}}
    assert quick["error"] is None
    moved = quick["delta"]["items"]
    assert moved["from"] == "xmin"
    # At least the rows changed (more when another transaction of the
    # cluster held the horizon back: those compare equal and do not move).
    assert moved["changed_there"] >= 3 and moved["changed_here"] >= 2
    # 10, 15000 and 50000 from the sender; 6000 and 13000 put back.
    assert moved["rows_pulled"] == 5
    assert moved["deleted"] == 2  # 7000 (gone at the sender), 30001 (extra)
    assert receiver.sql("SELECT qty FROM items WHERE id IN (6000, 10) ORDER BY id") == [
        (10 % 97 + 1000,),
        (6000 % 97,),
    ]
    assert checksum(receiver, "items") == checksum(sender, "items")


def test_change_tracking_lists_the_changes_of_both_sides_from_their_logs(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    sender.sql(ITEMS.replace("items", "tracked"), n=3_000)
    first = pull(receiver, "tracked", "--create-missing", "--mode", "full")
    assert first["verification"] == {"tracked": {"status": "verified"}}
    triggers = (
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tracked'::regclass"
        " AND tgname LIKE 'dbsync_track_%' AND tgenabled = 'A'"
    )
    assert sender.sql(triggers) == [(4,)] and receiver.sql(triggers) == [(4,)]

    def delta() -> dict[str, Any]:
        return pull(
            receiver,
            "tracked",
            "--mode",
            "delta",
            "--mirror-deletes",
            "--strategy",
            "overwrite",
        )

    # At the sender: an update inside a savepoint, a delete, an insert, a key
    # moved; here: a changed, a deleted and an extra row.
    sender.sql(
        "SAVEPOINT s; UPDATE tracked SET qty = -7 WHERE id = 10; RELEASE SAVEPOINT s;"
        " DELETE FROM tracked WHERE id = 20;"
        " INSERT INTO tracked (id, name) VALUES (9000, 'new');"
        " UPDATE tracked SET id = 9001 WHERE id = 30"
    )
    receiver.sql(
        "UPDATE tracked SET qty = -1 WHERE id = 40; DELETE FROM tracked WHERE id = 50;"
        " INSERT INTO tracked (id, name) VALUES (9500, 'extra')"
    )
    run = delta()
    assert run["verification"] == {"tracked": {"status": "verified"}}
    assert run["error"] is None
    moved = run["delta"]["tracked"]
    assert moved["there"] == "log" and moved["here"] == "log"
    assert moved["from"] == "log"
    assert moved["changed_there"] == 5 and moved["changed_here"] == 3
    assert moved["rows_pulled"] == 5  # 10, 9000, 9001; 40 and 50 put back
    assert moved["deleted"] == 3  # 20 and 30 (gone at the sender), 9500 (extra)
    assert checksum(receiver, "tracked") == checksum(sender, "tracked")

    # No change: nothing moves (keys are listed again only while another
    # session's transaction holds the horizon back: they compare equal).
    calm = delta()
    assert calm["verification"] == {"tracked": {"status": "verified"}}
    moved = calm["delta"]["tracked"]
    assert moved["equal_before"] is True and moved["rows_pulled"] == 0
    assert moved["from"] == "log"

    # TRUNCATE empties the log's promise: the next run compares the whole
    # table (and still levels it), the one after uses the logs again.
    sender.sql(
        "TRUNCATE tracked; INSERT INTO tracked (id, name) SELECT g, 'again'"
        " FROM generate_series(1, 100) g"
    )
    again = delta()
    assert again["verification"] == {"tracked": {"status": "verified"}}
    assert "there" not in again["delta"]["tracked"]
    assert checksum(receiver, "tracked") == checksum(sender, "tracked")
    sender.sql("UPDATE tracked SET qty = 3 WHERE id = 7")
    last = delta()
    assert last["delta"]["tracked"]["there"] == "log"
    assert last["delta"]["tracked"]["rows_pulled"] == 1
    assert checksum(receiver, "tracked") == checksum(sender, "tracked")


def sync_json(receiver: SiteProcesses, *args: str) -> Any:
    return receiver.cli_json("syncs", *args)


def settled_after(
    receiver: SiteProcesses, sync_id: str, since: float, timeout: float = 90
) -> dict[str, Any]:
    """The sync once a run started after ``since`` (epoch) has ended."""

    def check() -> dict[str, Any] | None:
        data = sync_json(receiver, "show", sync_id)
        started = data["last_run_at"]
        if started is None or data["last_status"] == "running":
            return None
        from datetime import datetime

        if datetime.fromisoformat(started).timestamp() <= since:
            return None
        return data

    return eventually(check, timeout=timeout)


def test_a_sync_every_5s_mirrors_inserts_updates_and_deletes(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    rid = field(receiver, "id")
    created = sync_json(
        receiver, "create", rid, "items", "--every", "5s", "--mirror-deletes"
    )
    sid = created["id"]
    assert (created["mode"], created["strategy"], created["every_seconds"]) == (
        "delta",
        "overwrite",
        5,
    )
    try:
        for round_ in range(2):
            base = 40_000 + round_ * 100
            sender.sql(
                "INSERT INTO items (id, name, qty) SELECT g, 'new', 1"
                " FROM generate_series(:a, :b) g",
                a=base,
                b=base + 9,
            )
            sender.sql(
                "UPDATE items SET name = name || ' upd' WHERE id % 1000 = :r", r=round_
            )
            sender.sql(
                "DELETE FROM items WHERE id BETWEEN :a AND :b",
                a=100 + round_ * 50,
                b=120 + round_ * 50,
            )
            mark = time.time()
            data = settled_after(receiver, sid, mark)
            assert data["last_status"] == "completed", data
            assert data["last_error"] is None
            assert checksum(receiver, "items") == checksum(sender, "items")
        runs = receiver.cli_json("transfers", "list")
        mine = [t for t in runs if t["direction"] == "receive"]
        assert len(mine) >= 3  # each run is a transfer

        paused = sync_json(receiver, "pause", sid)
        assert paused["state"] == "paused"
        time.sleep(2)  # a run started before the pause ends
        count = sync_json(receiver, "show", sid)["runs"]
        time.sleep(7)
        assert sync_json(receiver, "show", sid)["runs"] == count

        assert sync_json(receiver, "resume", sid)["state"] == "active"
        mark = time.time()
        sync_json(receiver, "run", sid)
        assert settled_after(receiver, sid, mark)["last_status"] == "completed"
    finally:
        assert sync_json(receiver, "delete", sid) == {"id": sid, "deleted": True}
    assert sync_json(receiver, "list") == []
    missing = receiver.cli("syncs", "show", sid, check=False)
    assert missing.returncode == 1 and f"No sync {sid}" in missing.stderr


def test_a_sync_whose_sender_is_down_backs_off_and_catches_up(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    rid = field(receiver, "id")
    sid = sync_json(
        receiver, "create", rid, "items", "--every", "2s", "--mirror-deletes"
    )["id"]
    try:
        settled_after(receiver, sid, time.time() - 60)
        sender.stop("web")
        sender.sql("UPDATE items SET qty = 7777 WHERE id = 777")
        sender.sql("DELETE FROM items WHERE id = 778")

        def failing() -> dict[str, Any] | None:
            data = sync_json(receiver, "show", sid)
            return data if data["failures"] >= 1 else None

        down = eventually(failing, timeout=120)
        assert down["state"] == "backing off"
        assert down["last_status"] == "failed"
        assert down["last_error"]
        sender.start(worker=False, beat=False)
        mark = time.time()
        data = settled_after(receiver, sid, mark, timeout=120)
        assert data["last_status"] == "completed", data
        assert data["failures"] == 0 and data["last_error"] is None
        assert receiver.sql("SELECT qty FROM items WHERE id = 777") == [(7777,)]
        assert checksum(receiver, "items") == checksum(sender, "items")
    finally:
        sync_json(receiver, "delete", sid)


def test_syncs_converge_with_a_concurrent_writer(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    rid = field(receiver, "id")
    sid = sync_json(
        receiver, "create", rid, "items", "--every", "1s", "--mirror-deletes"
    )["id"]
    stop = threading.Event()

    def write() -> None:
        engine = create_engine(sender.db_url)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                with engine.begin() as conn:
                    conn.execute(
                        text("UPDATE items SET qty = :n WHERE id = :k"),
                        {"n": n, "k": 1 + (n * 7919) % 20_000},
                    )
                    conn.execute(
                        text("INSERT INTO items (id, name) VALUES (:k, 'w')"),
                        {"k": 100_000 + n},
                    )
                    conn.execute(
                        text("DELETE FROM items WHERE id = :k"),
                        {"k": 2000 + n},
                    )
                time.sleep(0.02)
        finally:
            engine.dispose()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(12)
    finally:
        stop.set()
        writer.join()
    try:
        runs = sync_json(receiver, "show", sid)["runs"]
        assert runs >= 2  # runs went on while the writer wrote
        data = settled_after(receiver, sid, time.time(), timeout=120)
        assert data["last_status"] == "completed", data
        assert checksum(receiver, "items") == checksum(sender, "items")
    finally:
        sync_json(receiver, "delete", sid)


def test_schema_drift_is_reported_and_evolve_adds_new_columns(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    sender.sql(
        "CREATE TABLE gadgets (id integer PRIMARY KEY, name text);"
        " INSERT INTO gadgets SELECT g, 'g' || g FROM generate_series(1, 300) g"
    )
    pull(receiver, "gadgets", "--create-missing")
    sender.sql("ALTER TABLE gadgets ADD COLUMN color text")
    sender.sql("UPDATE gadgets SET color = 'red' WHERE id % 3 = 0")
    args = ("gadgets", "--mode", "delta", "--mirror-deletes", "--strategy", "overwrite")

    reported = pull(receiver, *args)
    assert reported["drift"] == {"gadgets": {"added": ["color"]}}
    # Without --evolve the table keeps its columns; the shared ones are equal.
    assert reported["verification"] == {"gadgets": {"status": "verified"}}
    assert receiver.sql(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'gadgets' AND column_name = 'color'"
    ) == [(0,)]

    evolved = pull(receiver, *args, "--evolve")
    assert evolved["drift"] == {"gadgets": {"added": ["color"]}}
    assert evolved["verification"] == {"gadgets": {"status": "verified"}}
    assert receiver.sql("SELECT count(*) FROM gadgets WHERE color = 'red'") == [(100,)]
    assert checksum(receiver, "gadgets") == checksum(sender, "gadgets")

    sender.sql("ALTER TABLE gadgets ALTER COLUMN name TYPE varchar(40)")
    result = receiver.cli(
        "pull",
        field(receiver, "id"),
        *args,
        "--evolve",
        "--wait",
        "--json",
        check=False,
    )
    failed = json.loads(result.stdout)
    assert result.returncode == 1
    assert failed["status"] == "failed"
    assert failed["error"] == (
        "gadgets: columns dropped [] or retyped ['name'] at the sender;"
        " only added columns evolve"
    )
    assert failed["drift"]["gadgets"]["retyped"] == [
        {"column": "name", "sender": "character varying(40)", "here": "text"}
    ]


EVENTS = """
CREATE TABLE events (id bigserial PRIMARY KEY, body text,
                     updated_at timestamptz NOT NULL);
"""


def test_a_cursor_sync_moves_only_the_rows_whose_column_advanced(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    sender.sql(EVENTS)
    receiver.sql(EVENTS)
    sender.sql(
        "INSERT INTO events (body, updated_at) SELECT 'e' || g,"
        " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'"
        " FROM generate_series(1, 500) g"
    )
    rid = field(receiver, "id")
    args = ("create", rid, "events", "--every", "3s", "--mode", "cursor")
    refused = receiver.cli("syncs", *args, "--cursor-column", "body", check=False)
    assert refused.returncode == 1
    assert (
        "--cursor-column body: events.body is text, not an integer, numeric, date"
        " or timestamp column" in refused.stderr
    )
    every = receiver.cli(
        "syncs", *args[:2], "--all", *args[3:], "--cursor-column", "updated_at",
        check=False,
    )  # fmt: skip
    assert every.returncode == 1
    assert "--cursor-column updated_at: " in every.stderr
    assert "items has no column updated_at" in every.stderr
    assert receiver.cli_json("syncs", "list") == []
    created = sync_json(receiver, *args, "--cursor-column", "updated_at")
    sid = created["id"]
    assert (created["mode"], created["cursor_column"], created["look_back"]) == (
        "cursor",
        "updated_at",
        "1m",
    )
    assert created["high_water_mark"] == {}

    def started(transfer: dict[str, Any]) -> float:
        return dt.datetime.fromisoformat(transfer["created_at"]).timestamp()

    def runs_of_the_sync() -> list[dict[str, Any]]:
        found = [
            t
            for t in receiver.cli_json("transfers", "list")
            if t["sync_id"] == sid and t["status"] in ("completed", "failed")
        ]
        return sorted(found, key=started)

    try:
        first = eventually(lambda: runs_of_the_sync() or None, timeout=60)[0]
        assert first["records_transferred"] == 500
        assert first["cursor"]["events"]["after"] is None  # no mark: every row
        assert first["verification"] == {"events": {"status": "verified"}}
        sync_json(receiver, "pause", sid)

        def idle() -> dict[str, Any] | None:
            data = sync_json(receiver, "show", sid)
            return data if data["last_status"] != "running" else None

        shown = eventually(idle)
        # Initial rows are a minute apart: the mark is row 500's.
        assert shown["high_water_mark"] == {"events": "2024-01-01T08:20:00+00:00"}

        sender.sql(
            "INSERT INTO events (body, updated_at) VALUES"
            " ('new1', '2024-02-01 00:01+00'), ('new2', '2024-02-01 00:02+00'),"
            " ('new3', '2024-02-01 00:03+00');"
            " UPDATE events SET body = 'upd', updated_at = '2024-02-01 00:10+00'"
            " WHERE id IN (10, 20);"
            " UPDATE events SET body = 'not advanced' WHERE id = 30"
        )
        mark = time.time()
        sync_json(receiver, "resume", sid)
        run = eventually(
            lambda: next((t for t in runs_of_the_sync() if started(t) > mark), None)
        )
        # The new and advanced rows, and row 500 (within the 1m look-back).
        assert (run["records_transferred"], run["records_created"]) == (6, 3)
        assert run["records_updated"] == 3
        assert run["cursor"]["events"]["after"] == "2024-01-01T08:19:00+00:00"
        assert run["cursor"]["events"]["high_water"] == "2024-02-01T00:10:00+00:00"
        # Row 30's column did not advance: not seen, and the run does not read clean.
        assert run["verification"]["events"]["status"] == "differs"
        expected = sender.sql("SELECT * FROM events WHERE id <> 30 ORDER BY id")
        assert receiver.sql("SELECT * FROM events WHERE id <> 30 ORDER BY id") == (
            expected
        )
        assert receiver.sql("SELECT body FROM events WHERE id = 30") == [("e30",)]
    finally:
        sync_json(receiver, "delete", sid)
