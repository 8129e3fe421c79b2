"""The rows written since a horizon, from ``xmin``: exact bounds, own writers
left out, and the key print with the count of changed rows in one scan."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text

from shared.data.schema import TableInfo, Tables
from shared.data.sender import changes
from shared.data.sender.fingerprints import Unsupported
from tests.helpers import ScratchDatabases, run

WRAP = 1 << 32


@pytest.fixture
def engine(scratch_db_factory: ScratchDatabases) -> Engine:
    engine = scratch_db_factory.engine()
    run(engine, "CREATE TABLE t (id bigint PRIMARY KEY, label text)")
    return engine


def _info(engine: Engine) -> TableInfo:
    return Tables(engine, schema="public").describe("t")


def _write(engine: Engine, *statements: str) -> int:
    """Run the statements in one transaction; its 64-bit id."""
    with engine.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)
        return int(conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())


@contextmanager
def _snapshot(engine: Engine) -> Iterator[tuple[Connection, dict[str, Any]]]:
    """A REPEATABLE READ transaction and its state (its first statement)."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn, changes.state(conn, None)


def _writers(engine: Engine) -> list[int]:
    """Four transactions: rows 1-10, an update of 3, a new row 20, an update
    of 5."""
    return [
        _write(engine, "INSERT INTO t SELECT g, 'r' FROM generate_series(1, 10) g"),
        _write(engine, "UPDATE t SET label = 'x' WHERE id = 3"),
        _write(engine, "INSERT INTO t VALUES (20, 'new')"),
        _write(engine, "UPDATE t SET label = 'y' WHERE id = 5"),
    ]


def _keys(engine: Engine, info: TableInfo, since: int, **kw: Any) -> list[int] | None:
    with _snapshot(engine) as (conn, now):
        try:
            listed = changes.changed_rows(conn, info, {"xid": since}, now, None, **kw)
        except Unsupported:
            return None
    return sorted(int(k) for k, _ in listed)


def test_rows_written_at_or_after_the_horizon_are_listed_and_no_others(
    engine: Engine,
) -> None:
    info = _info(engine)
    x1, x2, x3, x4 = _writers(engine)
    assert _keys(engine, info, x1) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20]
    # The horizon is inclusive: a row its transaction wrote is listed, a row
    # written one id before is not.
    assert _keys(engine, info, x2) == [3, 5, 20]
    assert _keys(engine, info, x2 + 1) == [5, 20]
    assert _keys(engine, info, x3) == [5, 20]
    assert _keys(engine, info, x4) == [5]
    assert _keys(engine, info, x4 + 1) == []
    with _snapshot(engine) as (conn, now):
        # Nothing since this snapshot's own xmax (an empty span).
        assert changes.changed_rows(conn, info, {"xid": now["_xmax"]}, now, None) == []
        # Each listed row with its hash, as hashes_of gives it.
        listed = changes.changed_rows(conn, info, {"xid": x2}, now, None)
        hashes = changes.hashes_of(conn, info, [3, 5, 20], ["id", "label"])
    assert sorted(listed) == [[k, hashes[k]] for k in (3, 5, 20)]


def test_own_writers_are_left_out_by_their_32_bit_ids(engine: Engine) -> None:
    info = _info(engine)
    x1, x2, x3, x4 = _writers(engine)
    assert _keys(engine, info, x2, exclude=[x3]) == [3, 5]
    assert _keys(engine, info, x2, exclude=[x3 + WRAP, x4]) == [3]
    assert _keys(engine, info, x1, exclude=[x1, x2, x3, x4]) == []
    assert _keys(engine, info, x2, exclude=[x1]) == [3, 5, 20]


def test_rows_of_the_scanning_transaction_are_not_listed(engine: Engine) -> None:
    info = _info(engine)
    x1 = _writers(engine)[0]
    with _snapshot(engine) as (conn, now):
        # Written after the snapshot by this transaction (its id, at or
        # above the snapshot's xmax, is what age() now counts from).
        conn.execute(text("INSERT INTO t VALUES (99, 'mine')"))
        listed = changes.changed_rows(conn, info, {"xid": x1}, now, None)
        printed, count = changes.print_and_changed(conn, info, {"xid": x1}, now)
    assert sorted(int(k) for k, _ in listed) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20]
    assert (printed[0], count) == (12, 11)


def test_the_condition_is_the_span_modulo_2_32_around_the_wrap(engine: Engine) -> None:
    """The condition on synthetic ids against ``(x - horizon) mod 2^32 <
    span``: the bounds, the special ids, ids 2^31 away, random ids."""
    with _snapshot(engine) as (conn, now):
        xmax = now["_xmax"]
        age_xmax = int(conn.execute(text(f"SELECT age('{xmax % WRAP}'::xid)")).one()[0])
        n = (xmax + age_xmax) % WRAP  # what age() counts from
        if n > 1 << 30:
            pytest.skip("this cluster's ids are too far on to place a wrapped window")
        windows = [
            (xmax - 1000, xmax),  # the usual one, before N
            (WRAP - 100, WRAP + 50),  # across the wrap of the 32-bit ids
            (WRAP - 100, WRAP - 100),  # empty
        ]
        picker = random.Random(14)
        for h, x in windows:
            where, params = changes._written_since(conn, {"xid": h}, {"_xmax": x})
            ids = {h - 1, h, h + 1, x - 1, x, x + 1, 0, 1, 2, 3, n, n + 1}
            ids |= {n + (1 << 31) - 1, n + (1 << 31), n + (1 << 31) + 1}
            ids |= {picker.randrange(WRAP) for _ in range(300)}
            ids |= {h + picker.randrange(x - h + 1) for _ in range(50)}
            ids = {i % WRAP for i in ids}
            got = conn.execute(
                text(
                    "SELECT u.x::text::bigint FROM unnest(CAST(:ids AS xid[])) AS u(x)"
                    f" WHERE {where.replace('xmin', 'u.x')} ORDER BY 1"
                ),
                {**params, "ids": changes.int_array(sorted(ids))},
            ).all()
            expected = sorted(i for i in ids if i >= 3 and (i - h) % WRAP < x - h)
            assert [int(r[0]) for r in got] == expected
        assert len(expected) == 0  # (the last window is empty)
        # A window across the wrap holds ids on both sides of it.
        where, params = changes._written_since(
            conn, {"xid": WRAP - 100}, {"_xmax": WRAP + 50}
        )
        got = conn.execute(
            text(
                "SELECT u.x::text::bigint FROM unnest(CAST(:ids AS xid[])) AS u(x)"
                f" WHERE {where.replace('xmin', 'u.x')} ORDER BY 1"
            ),
            {**params, "ids": "{2,3,49,50,4294967195,4294967196,4294967295}"},
        ).all()
        assert [int(r[0]) for r in got] == [3, 49, 4294967196, 4294967295]


def test_a_horizon_age_cannot_place_is_refused(engine: Engine) -> None:
    info = _info(engine)
    _writers(engine)
    with _snapshot(engine) as (conn, now):
        xmax = now["_xmax"]
        age_xmax = int(conn.execute(text(f"SELECT age('{xmax % WRAP}'::xid)")).one()[0])
        n = xmax + age_xmax
        # A window that ends 2^31 + 50 ids before N: its ages cross from
        # INT_MAX to INT_MIN; one whose horizon is a special id (age INT_MAX).
        h = n - (1 << 31) - 50
        for since, upto in (
            ({"xid": h}, {"_xmax": h + 100}),
            ({"xid": 2 * WRAP + 2}, {"_xmax": 2 * WRAP + 3}),
        ):
            with pytest.raises(Unsupported):
                changes._written_since(conn, since, upto)
        with pytest.raises(Unsupported):
            changes.changed_rows(
                conn, info, {"xid": h}, {**now, "_xmax": h + 100}, None
            )
        with pytest.raises(Unsupported):
            changes.changed_and_print(
                conn, info, {"xid": h}, {**now, "_xmax": h + 100}, None
            )


def _scans(conn: Connection) -> Callable[[], list[str]]:
    """The statements run on ``conn`` from now on that read table t."""
    seen: list[str] = []

    def note(*args: Any) -> None:
        statement = str(args[2])
        if '"t"' in statement:
            seen.append(statement)

    event.listen(conn, "before_cursor_execute", note)
    return lambda: seen


def test_the_key_print_and_the_count_of_changed_rows_in_one_scan(
    engine: Engine,
) -> None:
    info = _info(engine)
    x1, x2, x3, x4 = _writers(engine)
    with _snapshot(engine) as (conn, now):
        printed = changes.key_print(conn, info)
        assert printed == [
            11,
            str(
                conn.execute(
                    text("SELECT sum(hashint8(id)) FROM t WHERE id <= 10 OR id = 20")
                ).scalar_one()
            ),
        ]
        for since, exclude, count in (
            (x1, [], 11),
            (x2, [], 3),
            (x2, [x3], 2),
            (x3, [x3, x4], 0),
            (x4 + 1, [], 0),
            (now["_xmax"], [], 0),
        ):
            got = changes.print_and_changed(
                conn, info, {"xid": since}, now, exclude=exclude
            )
            assert got == (printed, count)
            listed = changes.changed_rows(
                conn, info, {"xid": since}, now, None, exclude=exclude
            )
            assert len(listed) == count


def test_changed_and_print_lists_rows_only_when_some_changed(engine: Engine) -> None:
    info = _info(engine)
    x1, x2, x3, x4 = _writers(engine)
    with _snapshot(engine) as (conn, now):
        printed = changes.key_print(conn, info)
        scans = _scans(conn)
        # Nothing changed: one scan.
        assert changes.changed_and_print(conn, info, {"xid": x4 + 1}, now, None) == (
            [],
            printed,
        )
        assert len(scans()) == 1
        # Changes: the count, then the listing (as changed_rows lists them).
        rows, again = changes.changed_and_print(
            conn, info, {"xid": x2}, now, ["id", "label"], exclude=[x3]
        )
        assert again == printed and len(scans()) == 3
        assert rows == changes.changed_rows(
            conn, info, {"xid": x2}, now, ["id", "label"], exclude=[x3]
        )
        assert sorted(int(k) for k, _ in rows) == [3, 5]
        # More than the limit: no listing, the print still (one scan).
        assert changes.changed_and_print(
            conn, info, {"xid": x2}, now, None, limit=2
        ) == (None, printed)
        assert len(scans()) == 5
        assert (
            changes.changed_and_print(conn, info, {"xid": x2}, now, None, limit=3)[0]
            is not None
        )
        # Unknown columns: Unsupported before any scan, as changed_rows.
        before = len(scans())
        with pytest.raises(Unsupported):
            changes.changed_and_print(conn, info, {"xid": x2}, now, ["nope"])
        assert len(scans()) == before


def test_the_writers_since_a_horizon(engine: Engine) -> None:
    info = _info(engine)
    x1, x2, x3, x4 = _writers(engine)
    with _snapshot(engine) as (conn, _):
        assert changes.xids_since(conn, info, {"xid": x2}) == [x2, x3, x4]
        assert changes.xids_since(conn, info, {"xid": x2 + 1}) == [x3, x4]
        assert changes.xids_since(conn, info, {"xid": x1}, limit=3) is None
        assert changes.xids_since(conn, info, {"xid": x1}, limit=4) == [x1, x2, x3, x4]
