"""Catalog, wire and importer on real PostgreSQL: exact values, pages, strategies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from shared.data.ddl import UnsafeSchema, create_table
from shared.data.keyset import BadCursor
from shared.data.receiver.pages import AppendNotSupported, ImportRefused, check_append
from shared.data.receiver.writer import import_page
from shared.data.schema import NoPrimaryKey, TableNotFound
from shared.data.sender.offer import Catalog
from shared.data.sender.preview import BadFilter
from tests.datasets import ALL_BYTES, EVERYTHING, UID
from tests.helpers import ScratchDatabases, as_text, b64, run


@pytest.fixture
def db_a(scratch_db_factory: ScratchDatabases) -> Engine:
    return scratch_db_factory.engine("dp_a")


@pytest.fixture
def db_b(scratch_db_factory: ScratchDatabases) -> Engine:
    return scratch_db_factory.engine("dp_b")


def test_every_type_round_trips_between_two_databases(
    db_a: Engine, db_b: Engine
) -> None:
    run(db_a, EVERYTHING)
    source = Catalog(db_a, excluded={"sync_connections"})
    assert source.offered_tables() == ["everything"]

    page = source.fetch_page("everything", after=None, limit=100)
    assert page.has_more is False and page.next_cursor is None
    wire_rows = json.loads(json.dumps(page.rows, ensure_ascii=False))
    assert wire_rows == page.rows
    r1, r2, r3, _r4, r5 = wire_rows

    assert (r1["c_small"], r1["c_int"], r1["c_big"]) == (32767, 2147483647, -(2**63))
    assert r1["c_num"] == "12345678901234567890.123456789"
    assert r2["c_num"] == "0.000000000000000001"
    assert r3["c_num"] == "NaN"
    assert (r1["c_num_scaled"], r2["c_num_scaled"], r3["c_num_scaled"]) == (
        "1234567890.12",
        "-0.50",
        "0.00",
    )
    assert (r1["c_real"], r1["c_double"]) == ("NaN", "Infinity")
    assert r2["c_real"] == "-Infinity"
    assert r2["c_double"] == 0.0 and str(r2["c_double"]) == "-0.0"
    assert (r3["c_real"], r3["c_double"]) == (3.25, 1e308)
    assert r1["c_text"] == "héllo wörld ✓ 🎉 日本" and r2["c_text"] == ""
    assert (r1["c_char"], r2["c_char"]) == ("ab   ", "abcde")
    assert (r1["c_bool"], r2["c_bool"], r3["c_bool"]) == (True, False, None)
    assert (r1["c_date"], r2["c_date"]) == ("2024-02-29", "0001-01-01")
    assert (r1["c_time"], r2["c_time"]) == ("23:59:59.999999", "00:00:00")
    assert (r1["c_timetz"], r2["c_timetz"]) == ("12:34:56+05:30", "00:00:00-03:00")
    assert r1["c_ts"] == "2024-01-02T03:04:05.123456"
    assert r1["c_tstz"] == "2024-01-02T01:04:05+00:00"
    assert r2["c_tstz"] == "2024-07-01T06:30:00+00:00"
    assert r1["c_interval"] == "P1Y2M3DT4H5M6.5S"
    assert r2["c_interval"] == "P-1Y-2M3DT-4H-5M-6.5S"
    assert r3["c_interval"] == "PT0S"
    assert r1["c_uuid"] == UID and r2["c_uuid"] == UID
    assert r1["c_bytea"] == b64(ALL_BYTES) and r2["c_bytea"] == b64(b"")
    assert r1["c_json"] == {"b": 1, "a": [1, 2.5, "x"]}
    assert r2["c_json"] == "just a string"
    assert r3["c_json"] == {"__dbsync_json_null__": True}  # JSON null, not SQL NULL
    assert r5["c_json"] is None
    assert r1["c_jsonb"] == {"a": {"b": [1, {"c": None}]}, "z": "ü"}
    assert r2["c_jsonb"] == [] and r3["c_jsonb"] == {"k": 1.5e-7}
    assert r1["c_int_arr"] == [] and r2["c_int_arr"] == [1, None, 3]
    assert r3["c_int_arr"] == [[1, 2], [3, 4]]
    assert r1["c_text_arr"] == [["a", "b"], ["c", None]]
    assert r2["c_text_arr"] == ['with "quote"', "back\\slash", "", None, "a,b"]
    assert (r1["c_mood"], r2["c_mood"]) == ("happy", "sad")
    assert r5 == {
        "id": 5,
        "c_text": "",
        **{k: None for k in r5 if k not in ("id", "c_text")},
    }

    payload = json.loads(json.dumps(source.schema_payload("everything")))
    by_name = {c["name"]: c for c in payload["columns"]}
    assert payload["primary_key"] == ["id"]
    assert by_name["c_num_scaled"]["type"] == "numeric(12,2)"
    assert (by_name["c_num_scaled"]["precision"], by_name["c_num_scaled"]["scale"]) == (
        12,
        2,
    )
    assert by_name["c_varchar"]["type"] == "character varying(40)"
    assert by_name["c_varchar"]["max_length"] == 40
    assert by_name["c_text_arr"]["type"] == "text[]"
    assert by_name["c_tstz"]["type"] == "timestamp with time zone"
    assert by_name["c_tstz"]["default"] == "now()"
    assert by_name["c_mood"]["type"] == "mood"
    assert (
        by_name["c_text"]["nullable"] is False
        and by_name["c_text"]["default"] == "''::text"
    )

    with db_b.begin() as conn:
        created = create_table(conn, "everything", payload, existing_tables=set())
    assert created.warnings == ["c_mood: type 'mood' stored as text"]
    target = Catalog(db_b).describe("everything")
    types_a = {c.name: c.type for c in source.describe("everything").columns}
    types_b = {c.name: c.type for c in target.columns}
    assert types_b == {**types_a, "c_mood": "text"}
    assert target.column("c_text").default == "''::text"
    assert target.column("c_tstz").default == "now()"

    with db_b.begin() as conn:
        result = import_page(conn, target, wire_rows, "overwrite")
    assert (result.created, result.updated, result.skipped, result.failed) == (
        5,
        0,
        0,
        0,
    )

    columns = [c.name for c in target.columns]
    jsonish = {"c_json", "c_jsonb"}
    expected = as_text(db_a, "everything", columns, jsonish)
    # A JSON null in a json column stays a JSON null, distinct from SQL NULL.
    assert expected[2][columns.index("c_json")] == "null"
    assert expected[4][columns.index("c_json")] is None
    assert as_text(db_b, "everything", columns, jsonish) == expected
    assert (
        Catalog(db_b).fetch_page("everything", after=None, limit=100).rows == page.rows
    )
    assert Catalog(db_b).checksum("everything") == source.checksum("everything")

    with db_b.begin() as conn:  # the same page again changes nothing and counts updates
        again = import_page(conn, target, wire_rows, "overwrite")
    assert (again.created, again.updated) == (0, 5)
    assert Catalog(db_b).checksum("everything") == source.checksum("everything")


def test_dates_and_timestamps_are_spelled_as_isoformat_writes_them(
    db_a: Engine,
) -> None:
    run(
        db_a,
        "CREATE TABLE moments (id integer PRIMARY KEY, d date, ts timestamp,"
        " tz timestamptz)",
        "INSERT INTO moments VALUES"
        " (1, '2024-02-29', '2024-01-02 03:04:05', '2024-01-02 03:04:05+02'),"
        " (2, '0001-01-01', '2024-01-02 03:04:05.5', '2024-01-02 03:04:05.000001+00'),"
        " (3, 'infinity', 'infinity', 'infinity'),"
        " (4, '-infinity', '-infinity', '-infinity'),"
        " (5, '0999-12-31', '0999-12-31 23:59:59.123', '0999-12-31 23:59:59.1234+00')",
    )
    with db_a.connect() as conn:  # a session time zone the catalog must not follow
        name = conn.exec_driver_sql("SELECT current_database()").scalar()
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'")
        conn.commit()
    db_a.dispose()
    rows = Catalog(db_a).fetch_page("moments", after=None, limit=10).rows
    assert [(r["d"], r["ts"], r["tz"]) for r in rows] == [
        ("2024-02-29", "2024-01-02T03:04:05", "2024-01-02T01:04:05+00:00"),
        (
            "0001-01-01",
            "2024-01-02T03:04:05.500000",
            "2024-01-02T03:04:05.000001+00:00",
        ),
        (
            "9999-12-31",
            "9999-12-31T23:59:59.999999",
            "9999-12-31T23:59:59.999999+00:00",
        ),
        ("0001-01-01", "0001-01-01T00:00:00", "0001-01-01T00:00:00+00:00"),
        (
            "0999-12-31",
            "0999-12-31T23:59:59.123000",
            "0999-12-31T23:59:59.123400+00:00",
        ),
    ]
    extent_rows = Catalog(db_a).fetch_page("moments", after=[2], limit=1)
    assert extent_rows.next_cursor == [3]


def test_composite_key_pages_return_every_row_once_in_order(db_a: Engine) -> None:
    run(
        db_a,
        "CREATE TABLE pairs (a integer, b text, v integer, PRIMARY KEY (a, b))",
        "INSERT INTO pairs SELECT i / 7, 'k' || (i %% 7), i FROM generate_series(0, 2502) i",
    )
    with db_a.connect() as conn:
        expected = [
            list(r)
            for r in conn.exec_driver_sql("SELECT a, b FROM pairs ORDER BY a, b")
        ]
    catalog = Catalog(db_a)
    seen, after, pages = [], None, 0
    while True:
        page = catalog.fetch_page("pairs", after=after, limit=100)
        pages += 1
        seen.extend([r["a"], r["b"]] for r in page.rows)
        if not page.has_more:
            assert page.next_cursor is None
            break
        assert page.next_cursor == [page.rows[-1]["a"], page.rows[-1]["b"]]
        after = json.loads(json.dumps(page.next_cursor))
    assert pages == 26 and len(seen) == 2503
    assert seen == expected

    for bad in (["x"], [1, None], ["abc", "k0"], "1,k0", [1, "k0", 2]):
        with pytest.raises(BadCursor):
            catalog.fetch_page("pairs", after=bad, limit=100)  # type: ignore[arg-type]
    with pytest.raises(BadCursor) as info:
        catalog.fetch_page("pairs", after=["abc", "k0"], limit=100)
    assert str(info.value) == 'a: expected an integer, got "abc"'

    with pytest.raises(TableNotFound):
        catalog.fetch_page("pg_class", after=None, limit=10)
    with pytest.raises(TableNotFound):
        catalog.describe('pairs"; DROP TABLE pairs; --')


def test_table_without_key_is_served_only_as_one_page(db_a: Engine) -> None:
    run(
        db_a, "CREATE TABLE loose (v integer)", "INSERT INTO loose VALUES (3), (1), (2)"
    )
    catalog = Catalog(db_a)
    page = catalog.fetch_page("loose", after=None, limit=3)
    assert page.rows == [{"v": 1}, {"v": 2}, {"v": 3}] and page.has_more is False
    with pytest.raises(NoPrimaryKey):
        catalog.fetch_page("loose", after=None, limit=2)
    with pytest.raises(BadCursor):
        catalog.fetch_page("loose", after=[1], limit=10)
    with db_a.begin() as conn, pytest.raises(ImportRefused) as refused:
        import_page(conn, catalog.describe("loose"), [{"v": 4}], "skip")
    assert str(refused.value) == (
        "Table loose has no primary key: a new row cannot be told from one already there"
    )


def test_preview_filters_on_the_first_key_column(db_a: Engine) -> None:
    run(
        db_a,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text)",
        "INSERT INTO items SELECT i, 'n' || i FROM generate_series(1, 30) i",
    )
    catalog = Catalog(db_a)
    rows, more = catalog.preview("items", limit=5, offset=10)
    assert [r["id"] for r in rows] == [11, 12, 13, 14, 15] and more is True
    rows, more = catalog.preview("items", limit=10, offset=0, ids=[30, "2", 99])
    assert (
        rows == [{"id": 2, "name": "n2"}, {"id": 30, "name": "n30"}] and more is False
    )
    rows, more = catalog.preview("items", limit=3, offset=0, id_start=28, id_end=40)
    assert [r["id"] for r in rows] == [28, 29, 30] and more is False
    with pytest.raises(BadFilter):
        catalog.preview("items", limit=3, ids=["abc"])


def test_summaries_and_schema_describe_keys_and_references(db_a: Engine) -> None:
    run(
        db_a,
        "CREATE TABLE parents (id serial PRIMARY KEY, code text UNIQUE)",
        "CREATE TABLE children (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " parent_id integer REFERENCES parents (id), note varchar(10),"
        " doubled integer GENERATED ALWAYS AS (parent_id * 2) STORED)",
        "CREATE TABLE alembic_version (v text)",
        "CREATE TABLE sync_connections (id integer)",
        "INSERT INTO parents (code) VALUES ('a'), ('b')",
        "INSERT INTO children (parent_id, note) VALUES (1, 'x')",
    )
    catalog = Catalog(db_a, excluded={"sync_connections"}, checksum_row_limit=1)
    assert catalog.offered_tables() == ["children", "parents"]
    summaries = {s["name"]: s for s in catalog.table_summaries(["parents", "children"])}
    assert (
        summaries["parents"]["row_count"] == 2
        and summaries["parents"]["checksum"] is None
    )
    assert summaries["children"]["depends_on"] == ["parents"]
    assert len(summaries["children"]["checksum"]) == 32  # PhoenixKit's md5
    assert summaries["children"]["size_bytes"] > 0
    payload = catalog.schema_payload("children")
    assert payload["foreign_keys"] == [
        {
            "columns": ["parent_id"],
            "references_table": "parents",
            "references_columns": ["id"],
        }
    ]
    assert (
        payload["columns"][0]["default"]
        == "nextval('public.children_id_seq'::regclass)"
    )
    assert catalog.schema_payload("parents")["unique"] == [["code"]]
    info = catalog.describe("children")
    assert info.column("id").identity == "always" and info.column("doubled").generated

    with db_a.begin() as conn:
        creation = create_table(
            conn,
            "children_copy",
            payload,
            existing_tables=set(catalog.offered_tables()),
            pull_tables={"parents", "children_copy"},
        )
    assert creation.warnings == []
    copy = Catalog(db_a).describe("children_copy")
    assert copy.column("id").identity == "by default"
    assert copy.foreign_keys == payload["foreign_keys"]
    with db_a.begin() as conn:
        result = import_page(
            conn,
            copy,
            catalog.fetch_page("children", after=None, limit=10).rows,
            "skip",
        )
    assert (result.created, result.ignored_columns) == (1, [])
    with db_a.begin() as conn:
        conn.exec_driver_sql("INSERT INTO children_copy (parent_id) VALUES (2)")
        ids = (
            conn.exec_driver_sql("SELECT id FROM children_copy ORDER BY id")
            .scalars()
            .all()
        )
    assert ids == [1, 2]

    with db_a.begin() as conn, pytest.raises(UnsafeSchema):
        create_table(conn, 'x"; DROP TABLE parents; --', payload, existing_tables=set())


TARGET = (
    (
        "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, qty integer"
        " CHECK (qty >= 0), note text)"
    ),
    "INSERT INTO t VALUES (1, 'a', 1, 'x'), (2, 'b', 2, 'y'), (3, 'c', NULL, 'z')",
)
PAGE: list[dict[str, Any]] = [
    {"id": 2, "name": "B2", "qty": None, "note": "y2"},
    {"id": 3, "name": "c", "qty": 30, "note": None},
    {"id": 4, "name": "d", "qty": 4, "note": None},
    {"id": 5, "name": "e", "qty": None, "note": "n5"},
    {"id": 5, "name": "E", "qty": 5, "note": "n5b"},
    {"id": 6, "name": "f", "qty": 6, "note": "f", "extra": 1},
]
NEW = [(4, "d", 4, None), (5, "E", 5, "n5b"), (6, "f", 6, "f")]


@pytest.mark.parametrize(
    ("strategy", "counts", "existing"),
    [
        (
            "skip",
            (3, 0, 3, 0),
            [(1, "a", 1, "x"), (2, "b", 2, "y"), (3, "c", None, "z")],
        ),
        (
            "overwrite",
            (3, 2, 1, 0),
            [(1, "a", 1, "x"), (2, "B2", None, "y2"), (3, "c", 30, None)],
        ),
        (
            "merge",
            (3, 2, 1, 0),
            [(1, "a", 1, "x"), (2, "B2", 2, "y2"), (3, "c", 30, "z")],
        ),
    ],
)
def test_conflict_strategies_count_and_write_exactly(
    db_a: Engine, strategy: str, counts: tuple[int, ...], existing: list[tuple]
) -> None:
    run(db_a, *TARGET)
    info = Catalog(db_a).describe("t")
    with db_a.begin() as conn:
        result = import_page(conn, info, PAGE, strategy)
    assert (result.created, result.updated, result.skipped, result.failed) == counts
    assert result.ignored_columns == ["extra"] and result.errors == []
    with db_a.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM t ORDER BY id")]
    assert rows == existing + NEW


def test_rejected_rows_fail_alone_and_the_rest_lands(db_a: Engine) -> None:
    run(db_a, *TARGET)
    info = Catalog(db_a).describe("t")
    page = [
        {"id": 7, "name": "bad", "qty": -1, "note": None},
        {"id": 8, "name": "ok", "qty": 8, "note": None},
        {"id": 9, "name": "nan", "qty": "abc", "note": None},
        {"id": 2, "name": "B2", "qty": 20, "note": None},
        {"id": 10, "name": None, "qty": 1, "note": None},
    ]
    with db_a.begin() as conn:
        result = import_page(conn, info, page, "overwrite")
        conn.exec_driver_sql(
            "CREATE TABLE checkpoint_moved (x integer)"
        )  # caller's work
    assert (result.created, result.updated, result.skipped, result.failed) == (
        1,
        1,
        0,
        3,
    )
    assert result.errors == [
        {"key": [9], "error": 'qty: expected an integer, got "abc"'},
        {
            "key": [7],
            "error": 'new row for relation "t" violates check constraint "t_qty_check"',
        },
        {
            "key": [10],
            "error": 'null value in column "name" of relation "t" violates not-null constraint',
        },
    ]
    with db_a.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM t ORDER BY id")]
        assert (
            conn.exec_driver_sql("SELECT count(*) FROM checkpoint_moved").scalar() == 0
        )
    assert rows == [
        (1, "a", 1, "x"),
        (2, "B2", 20, None),
        (3, "c", None, "z"),
        (8, "ok", 8, None),
    ]


def test_import_never_commits_the_callers_transaction(db_a: Engine) -> None:
    run(db_a, *TARGET)
    info = Catalog(db_a).describe("t")
    with db_a.connect() as conn, conn.begin() as tx:
        result = import_page(conn, info, PAGE[:3], "overwrite")
        tx.rollback()
    assert result.created == 1
    with db_a.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 3


def test_append_lets_the_database_choose_keys(db_a: Engine) -> None:
    run(
        db_a,
        "CREATE TABLE notes (id serial PRIMARY KEY, body text)",
        "INSERT INTO notes (body) VALUES ('local 1'), ('local 2')",
        *TARGET,
        "CREATE TABLE pairs (a integer, b integer, PRIMARY KEY (a, b))",
    )
    catalog = Catalog(db_a)
    with db_a.begin() as conn:
        result = import_page(
            conn,
            catalog.describe("notes"),
            [{"id": 1, "body": "r1"}, {"id": 2, "body": "r2"}],
            "append",
        )
    assert (result.created, result.updated, result.skipped, result.failed) == (
        2,
        0,
        0,
        0,
    )
    with db_a.connect() as conn:
        rows = [
            tuple(r) for r in conn.exec_driver_sql("SELECT * FROM notes ORDER BY id")
        ]
    assert rows == [(1, "local 1"), (2, "local 2"), (3, "r1"), (4, "r2")]

    assert check_append(catalog.describe("notes")).name == "id"
    for table in ("t", "pairs"):
        with db_a.begin() as conn, pytest.raises(AppendNotSupported):
            import_page(
                conn, catalog.describe(table), [{"id": 1, "a": 1, "b": 1}], "append"
            )
    with pytest.raises(AppendNotSupported) as refused:
        check_append(catalog.describe("t"))
    assert str(refused.value) == (
        "append needs a primary key the database generates; t.id has no default,"
        " identity or sequence (use skip, overwrite or merge)"
    )


def test_explicit_keys_move_the_sequence_past_them(db_a: Engine) -> None:
    run(
        db_a,
        "CREATE TABLE serials (id serial PRIMARY KEY, body text)",
        "CREATE TABLE idents (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)",
    )
    catalog = Catalog(db_a)
    for table in ("serials", "idents"):
        with db_a.begin() as conn:
            result = import_page(
                conn,
                catalog.describe(table),
                [{"id": 10, "body": "ten"}, {"id": 11, "body": "eleven"}],
                "overwrite",
            )
        assert result.created == 2
        with db_a.begin() as conn:
            new_id = conn.exec_driver_sql(
                f"INSERT INTO {table} (body) VALUES ('local') RETURNING id"
            ).scalar()
        assert new_id == 12


def test_checksum_is_the_same_on_postgresql_and_sqlite(
    db_a: Engine, tmp_path: Any
) -> None:
    rows = [
        (1, "ä", 1.5, b"\x00\xff", "10.50"),
        (2, None, 1e308, b"", "-0.01"),
        (3, "日本 🎉", -2.25, None, None),
        (10, "", 0.1, bytes(range(256)), "99999.99"),
    ]
    keys = [("B",), ("a",), ("ä",), ("Z",), ("_",)]
    run(
        db_a,
        "CREATE TABLE m (id bigint PRIMARY KEY, name text, score double precision,"
        " data bytea, amount numeric(12,2))",
        "CREATE TABLE k (code text PRIMARY KEY)",
    )
    lite = create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    with lite.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE m (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB,"
            " amount TEXT)"
        )
        conn.exec_driver_sql("CREATE TABLE k (code TEXT PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO m VALUES (?, ?, ?, ?, ?)", rows)
        conn.exec_driver_sql("INSERT INTO k VALUES (?)", keys)
    with db_a.begin() as conn:
        conn.execute(
            text("INSERT INTO m VALUES (:i, :n, :s, :d, CAST(:a AS numeric))"),
            [dict(zip("insda", r)) for r in rows],
        )
        conn.execute(text("INSERT INTO k VALUES (:c)"), [{"c": k[0]} for k in keys])
    pg, sq = Catalog(db_a), Catalog(lite)
    try:
        for table in ("m", "k"):
            assert pg.checksum(table) == sq.checksum(table)
        assert (
            pg.fetch_page("m", after=None, limit=10).rows
            == sq.fetch_page("m", after=None, limit=10).rows
        )
        assert pg.checksum("m") != Catalog(db_a).checksum("k")
    finally:
        lite.dispose()


def test_identifiers_with_percent_colon_and_quote_are_safe(db_a: Engine) -> None:
    run(
        db_a,
        'CREATE TABLE "odd %%s:x ""q""" ("k:ey" integer PRIMARY KEY, "50%% off" text,'
        ' "a""b" interval)',
        "INSERT INTO \"odd %%s:x \"\"q\"\"\" VALUES (1, 'one', '1 mon'), (2, 'two', NULL)",
    )
    catalog = Catalog(db_a)
    (name,) = catalog.offered_tables()
    assert name == 'odd %s:x "q"'
    first = catalog.fetch_page(name, after=None, limit=1)
    assert first.rows == [{"k:ey": 1, "50% off": "one", 'a"b': "P1M"}]
    second = catalog.fetch_page(name, after=first.next_cursor, limit=1)
    assert second.rows == [{"k:ey": 2, "50% off": "two", 'a"b': None}]
    assert catalog.preview(name, limit=5, ids=[2])[0] == second.rows
    before = catalog.checksum(name)
    with db_a.begin() as conn:
        result = import_page(
            conn,
            catalog.describe(name),
            [
                {"k:ey": 2, "50% off": None, 'a"b': "P-1Y2DT-3H"},
                {"k:ey": 3, "50% off": "3%"},
            ],
            "merge",
        )
    assert (result.created, result.updated) == (1, 1)
    rows = Catalog(db_a).fetch_page(name, after=None, limit=5).rows
    assert rows[1:] == [
        {"k:ey": 2, "50% off": "two", 'a"b': "P-1Y2DT-3H"},
        {"k:ey": 3, "50% off": "3%", 'a"b': None},
    ]
    assert Catalog(db_a).checksum(name) != before
