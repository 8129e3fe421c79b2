"""Wire values, canonical JSON, and the catalog and importer on SQLite."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine

from shared.data import wire
from shared.data.ddl import UnsafeSchema, create_table
from shared.data.keyset import BadCursor
from shared.data.receiver.pages import AppendNotSupported
from shared.data.receiver.writer import import_page
from shared.data.schema import TableNotFound, sqlite_kind
from shared.data.sender.offer import Catalog
from shared.data.wire import WireError, canonical_json, decode_value, encode_value

UTC = dt.UTC


def through_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("value", "kind", "wire_value"),
    [
        (7, "int", 7),
        (
            Decimal("12345678901234567890.123456789"),
            "numeric",
            "12345678901234567890.123456789",
        ),
        (Decimal("0.000000000000000001"), "numeric", "0.000000000000000001"),
        (Decimal("1.50"), "numeric", "1.50"),
        (Decimal("-0.00"), "numeric", "-0.00"),
        (Decimal("NaN"), "numeric", "NaN"),
        (Decimal("Infinity"), "numeric", "Infinity"),
        ("10.50", "numeric", "10.50"),
        (math.nan, "float", "NaN"),
        (math.inf, "float", "Infinity"),
        (-math.inf, "float", "-Infinity"),
        (1e308, "float", 1e308),
        (True, "bool", True),
        (1, "bool", True),
        (dt.date(2024, 2, 29), "date", "2024-02-29"),
        (dt.time(23, 59, 59, 999999), "time", "23:59:59.999999"),
        (
            dt.time(12, 34, 56, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
            "timetz",
            "12:34:56+05:30",
        ),
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
            "timestamp",
            "2024-01-02T03:04:05.123456",
        ),
        (
            dt.datetime(
                2024,
                1,
                2,
                3,
                4,
                5,
                tzinfo=dt.timezone(dt.timedelta(hours=-7, minutes=-30)),
            ),
            "timestamptz",
            "2024-01-02T10:34:05+00:00",
        ),
        ("P1Y2M3DT4H5M6.5S", "interval", "P1Y2M3DT4H5M6.5S"),
        (
            dt.timedelta(days=-1, seconds=3600, microseconds=5),
            "interval",
            "PT-22H-59M-59.999995S",
        ),
        (dt.timedelta(0), "interval", "PT0S"),
        (
            uuid.UUID("0F8E7D6C-5B4A-4938-A716-554433221100"),
            "uuid",
            "0f8e7d6c-5b4a-4938-a716-554433221100",
        ),
        (
            "0F8E7D6C-5B4A-4938-A716-554433221100",
            "uuid",
            "0f8e7d6c-5b4a-4938-a716-554433221100",
        ),
        (memoryview(b"\x00\xff"), "bytea", {"__phoenix_kit_binary__": "AP8="}),
        (b"", "bytea", {"__phoenix_kit_binary__": ""}),
        ({"a": [1, None]}, "json", {"a": [1, None]}),
        ('{"a": 1}', "json", {"a": 1}),
        ([[1, None], [3, 4]], "array:int", [[1, None], [3, 4]]),
        ([Decimal("1.10"), None], "array:numeric", ["1.10", None]),
        ([math.nan, -0.0], "array:float", ["NaN", -0.0]),
        ([b"\x01"], "array:bytea", [{"__phoenix_kit_binary__": "AQ=="}]),
        ("happy", "enum", "happy"),
        ("192.168.0.1/32", "other", "192.168.0.1/32"),
    ],
)
def test_encode_value_gives_exact_wire_values(
    value: Any, kind: str, wire_value: Any
) -> None:
    encoded = encode_value(value, kind)
    assert encoded == wire_value
    assert type(encoded) is type(wire_value)
    assert through_json(encoded) == wire_value
    assert encode_value(None, kind) is None


def test_negative_zero_survives_json() -> None:
    assert str(through_json(encode_value(-0.0, "float"))) == "-0.0"


def test_timedelta_durations_are_what_postgresql_reads() -> None:
    assert wire.timedelta_to_iso(
        dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    ) == ("P1DT2H3M4.5S")
    assert wire.timedelta_to_iso(-dt.timedelta(hours=1)) == "PT-1H"


@pytest.mark.parametrize(
    ("value", "kind", "decoded"),
    [
        (7, "int", 7),
        ("-12", "int", -12),
        (3.0, "int", 3),
        (
            "12345678901234567890.123456789",
            "numeric",
            Decimal("12345678901234567890.123456789"),
        ),
        (2, "numeric", Decimal(2)),
        ("NaN", "float", math.nan),
        ("-Infinity", "float", -math.inf),
        (1e308, "float", 1e308),
        (5, "float", 5.0),
        ("abc", "text", "abc"),
        (12, "text", "12"),
        ("f", "bool", False),
        (1, "bool", True),
        ("2024-02-29", "date", dt.date(2024, 2, 29)),
        (
            "12:34:56+05:30",
            "timetz",
            dt.time(12, 34, 56, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
        ),
        (
            "2024-01-02T03:04:05Z",
            "timestamptz",
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        (
            "2024-01-02T03:04:05",
            "timestamptz",
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        ("2024-01-02T05:04:05+02:00", "timestamp", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("P-1Y-2M3DT-4H-5M-6.5S", "interval", "P-1Y-2M3DT-4H-5M-6.5S"),
        ("PT0S", "interval", "PT0S"),
        (
            "0F8E7D6C-5B4A-4938-A716-554433221100",
            "uuid",
            "0f8e7d6c-5b4a-4938-a716-554433221100",
        ),
        # PhoenixKit's uuids: 16 raw bytes, wrapped, or as text when valid UTF-8
        (
            {"__phoenix_kit_binary__": "D4+tW9nLRp+hZXCGdyiVDg=="},
            "uuid",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ),
        ("AAAAAAAAAAAAAAAA", "uuid", "41414141-4141-4141-4141-414141414141"),
        ({"__phoenix_kit_binary__": "AP8="}, "bytea", b"\x00\xff"),
        ("plain", "bytea", b"plain"),
        ("just a string", "json", "just a string"),
        ([["a", None]], "array:text", [["a", None]]),
        (["1.5", None], "array:numeric", [Decimal("1.5"), None]),
    ],
)
def test_decode_value_by_the_receivers_kind(
    value: Any, kind: str, decoded: Any
) -> None:
    result = decode_value(value, kind)
    if isinstance(decoded, float) and math.isnan(decoded):
        assert math.isnan(result)
    else:
        assert result == decoded
        assert type(result) is type(decoded)


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        ("abc", "int", 'expected an integer, got "abc"'),
        (True, "int", "expected an integer, got a boolean"),
        (1.5, "int", "expected an integer, got 1.5"),
        ("1,5", "numeric", 'expected a decimal number, got "1,5"'),
        ("sNaN", "numeric", "signalling NaN is not a number PostgreSQL knows"),
        ("nan", "float", 'expected a number, got "nan"'),
        ("maybe", "bool", 'expected a boolean, got "maybe"'),
        ("2024-02-30", "date", 'expected an ISO 8601 date, got "2024-02-30"'),
        (20240101, "date", "expected an ISO 8601 date, got 20240101"),
        ("1 day", "interval", 'expected an ISO 8601 duration, got "1 day"'),
        ("P", "interval", 'expected an ISO 8601 duration, got "P"'),
        ("not-a-uuid", "uuid", 'expected a UUID, got "not-a-uuid"'),
        (
            {"__phoenix_kit_binary__": "AP8="},
            "uuid",
            'expected a UUID, got {"__phoenix_kit_binary__": "AP8="}',
        ),
        ({"__phoenix_kit_binary__": "%%%"}, "bytea", "invalid base64 in binary value"),
        ({"a": 1}, "text", 'expected a string, got {"a": 1}'),
        ("{1,2}", "array:int", 'expected a list, got "{1,2}"'),
        (["x"], "array:int", 'expected an integer, got "x"'),
    ],
)
def test_invalid_values_raise_wire_error_naming_the_column(
    value: Any, kind: str, message: str
) -> None:
    with pytest.raises(WireError) as info:
        decode_value(value, kind, "col")
    assert info.value.column == "col"
    assert info.value.message == message
    assert str(info.value) == f"col: {message}"


def test_decode_row_takes_only_the_given_columns() -> None:
    class Col:
        def __init__(self, name: str, kind: str) -> None:
            self.name, self.kind = name, kind

    columns = [Col("id", "int"), Col("at", "date"), Col("gone", "text")]
    row = {"id": "5", "at": "2024-01-01", "extra": 1}
    assert wire.decode_row(row, columns) == {
        "id": 5,
        "at": dt.date(2024, 1, 1),
        "gone": None,
    }
    with pytest.raises(WireError) as info:
        wire.decode_row({"id": "x"}, columns)
    assert info.value.column == "id"


def test_canonical_json_is_compact_sorted_and_keeps_unicode() -> None:
    obj = {"b": [1, 2.5, 1e308, -0.0], "a": {"z": None, "é": "🎉"}, "A": True}
    assert canonical_json(obj) == (
        '{"A":true,"a":{"z":null,"é":"🎉"},"b":[1,2.5,1e+308,-0.0]}'
    )
    assert canonical_json(obj) == json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_pg_params_keep_what_driver_adaptation_loses() -> None:
    assert wire.pg_param(-0.0, "float") == "-0.0"
    assert wire.pg_param(math.inf, "float") == "Infinity"
    assert wire.pg_param(Decimal("1E-18"), "numeric") == "0.000000000000000001"
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert wire.pg_param(dt.time(12, 0, tzinfo=tz), "timetz") == "12:00:00+05:30"
    assert wire.pg_param({"a": "é"}, "json") == '{"a": "é"}'
    assert wire.pg_param("x", "json") == '"x"'
    assert wire.pg_param([['a"b', None], ["c\\d", ""]], "array:text") == (
        '{{"a\\"b",NULL},{"c\\\\d",""}}'
    )
    assert wire.pg_param([True, False], "array:bool") == '{"t","f"}'
    assert wire.pg_param([b"\x00\xff"], "array:bytea") == '{"\\\\x00ff"}'
    assert wire.pg_param([], "array:int") == "{}"


finite_floats = st.floats(allow_nan=False)
# PostgreSQL text never holds NUL, and the decoder refuses it (tested apart).
pg_text = st.text(alphabet=st.characters(exclude_characters="\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.one_of(
        st.tuples(st.integers(), st.just("int")),
        st.tuples(st.floats(), st.just("float")),
        st.tuples(st.decimals(allow_nan=True, allow_infinity=True), st.just("numeric")),
        st.tuples(pg_text, st.just("text")),
        st.tuples(st.binary(), st.just("bytea")),
        st.tuples(st.datetimes(timezones=st.timezones()), st.just("timestamptz")),
        st.tuples(st.times(), st.just("time")),
        # The database hands json over as its text.
        st.tuples(json_values.map(json.dumps), st.just("json")),
        st.tuples(
            st.lists(st.lists(st.integers() | st.none(), min_size=2, max_size=2)),
            st.just("array:int"),
        ),
    )
)
def test_encode_decode_encode_is_stable(pair: tuple[Any, str]) -> None:
    value, kind = pair
    if kind == "numeric" and isinstance(value, Decimal) and value.is_snan():
        return
    encoded = through_json(encode_value(value, kind))
    decoded = decode_value(encoded, kind)
    if kind == "json":  # stored, json comes back from the database as its text
        decoded = wire.pg_param(decoded, "json")
    assert encode_value(decoded, kind) == encoded


# --- SQLite catalog and importer ---------------------------------------------------


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    with engine.begin() as conn:
        for sql in (
            "CREATE TABLE alembic_version (v TEXT)",
            "CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY)",
            "CREATE TABLE kombu_message (id INTEGER PRIMARY KEY)",
            "CREATE TABLE sync_connections (id INTEGER PRIMARY KEY)",
            (
                "CREATE TABLE authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(40)"
                " NOT NULL UNIQUE, born DATE, score REAL DEFAULT 0, price NUMERIC(12,2),"
                " active BOOLEAN, photo BLOB, extra JSON)"
            ),
            (
                "CREATE TABLE books (author_id INTEGER REFERENCES authors, seq INTEGER,"
                " title TEXT CHECK (title <> 'bad'), PRIMARY KEY (author_id, seq))"
            ),
        ):
            conn.exec_driver_sql(sql)
        conn.exec_driver_sql(
            "INSERT INTO authors (name, born, score, price, active, photo, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("Ann", "1970-01-02", 1.5, "10.50", 1, b"\x00\x01", '{"k": [1, 2]}'),
                ("Bob", None, None, None, 0, None, None),
            ],
        )
        conn.exec_driver_sql(
            "INSERT INTO books VALUES (?, ?, ?)",
            [(a, s, f"t{a}-{s}") for a in (1, 2) for s in range(1, 6)],
        )
    yield engine
    engine.dispose()


def test_sqlite_catalog_offers_describes_and_encodes(lite: Engine) -> None:
    catalog = Catalog(lite, excluded={"sync_connections"})
    assert catalog.offered_tables() == ["authors", "books"]
    with pytest.raises(TableNotFound):
        catalog.describe("sqlite_sequence")
    authors = catalog.describe("authors")
    assert [(c.name, c.type, c.kind) for c in authors.columns] == [
        ("id", "bigint", "int"),
        ("name", "character varying(40)", "text"),
        ("born", "date", "date"),
        ("score", "double precision", "float"),
        ("price", "numeric(12,2)", "numeric"),
        ("active", "boolean", "bool"),
        ("photo", "bytea", "bytea"),
        ("extra", "jsonb", "json"),
    ]
    assert authors.column("id").identity == "by default"
    assert authors.column("name").nullable is False
    assert authors.unique == [["name"]]
    books = catalog.describe("books")
    assert books.primary_key == ["author_id", "seq"]
    assert books.foreign_keys == [
        {
            "columns": ["author_id"],
            "references_table": "authors",
            "references_columns": ["id"],
        }
    ]
    page = catalog.fetch_page("authors", after=None, limit=10)
    assert page.rows[0] == {
        "id": 1, "name": "Ann", "born": "1970-01-02", "score": 1.5,
        "price": "10.5",  # NUMERIC affinity stored "10.50" as the REAL 10.5
        "active": True, "photo": {"__phoenix_kit_binary__": "AAE="},
        "extra": {"k": [1, 2]},
    }  # fmt: skip
    summary = catalog.table_summaries(["books"])[0]
    assert summary["row_count"] == 10 and summary["depends_on"] == ["authors"]
    assert summary["checksum"] is None  # PhoenixKit's md5 is PostgreSQL's


def test_sqlite_pages_composite_keys(lite: Engine) -> None:
    catalog = Catalog(lite)
    keys, after = [], None
    while True:
        page = catalog.fetch_page("books", after=after, limit=3)
        keys += [(r["author_id"], r["seq"]) for r in page.rows]
        if not page.has_more:
            break
        after = through_json(page.next_cursor)
    assert keys == [(a, s) for a in (1, 2) for s in range(1, 6)]
    with pytest.raises(BadCursor):
        catalog.fetch_page("books", after=[1], limit=3)
    rows, more = catalog.preview("books", limit=2, offset=1, id_start=2)
    assert [(r["author_id"], r["seq"]) for r in rows] == [
        (2, 2),
        (2, 3),
    ] and more is True


def test_sqlite_import_strategies_count_exactly(lite: Engine) -> None:
    info = Catalog(lite).describe("books")
    page = [
        {"author_id": 1, "seq": 1, "title": None},
        {"author_id": 1, "seq": 2, "title": "new"},
        {"author_id": 1, "seq": 9, "title": "nine"},
        {"author_id": 1, "seq": 9, "title": "NINE"},
        {"author_id": 2, "seq": 9, "title": "bad"},
        {"author_id": "x", "seq": 9, "title": "x"},
    ]
    with lite.connect() as conn, conn.begin():
        merged = import_page(conn, info, page, "merge")
    assert (merged.created, merged.updated, merged.skipped, merged.failed) == (
        1,
        2,
        1,
        2,
    )
    assert [e["key"] for e in merged.errors] == [["x", 9], [2, 9]]
    assert merged.errors[1]["error"] == "CHECK constraint failed: title <> 'bad'"
    with lite.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT seq, title FROM books WHERE author_id = 1 AND seq IN (1, 2, 9) ORDER BY seq"
        ).all()
    assert [tuple(r) for r in rows] == [(1, "t1-1"), (2, "new"), (9, "NINE")]
    with lite.begin() as conn:
        skipped = import_page(conn, info, page[:3], "skip")
        assert (skipped.created, skipped.skipped) == (0, 3)
        over = import_page(conn, info, page[:1], "overwrite")
        assert (over.created, over.updated) == (0, 1)
        title = conn.exec_driver_sql(
            "SELECT title FROM books WHERE author_id = 1 AND seq = 1"
        ).scalar()
        assert title is None
        with pytest.raises(AppendNotSupported):
            import_page(conn, info, page[:1], "append")


def test_sqlite_append_and_create_table(lite: Engine) -> None:
    catalog = Catalog(lite)
    payload = catalog.schema_payload("authors")
    with lite.begin() as conn:
        created = import_page(
            conn,
            catalog.describe("authors"),
            [{"id": 1, "name": "Cat", "price": "1.10"}],
            "append",
        )
        assert created.created == 1
        # A declared NUMERIC column has SQLite's numeric affinity, which turns
        # "1.10" into the REAL 1.1; tables create_table makes keep TEXT.
        assert conn.exec_driver_sql(
            "SELECT id, price FROM authors WHERE name = 'Cat'"
        ).one() == (
            3,
            1.1,
        )
    with lite.begin() as conn:
        creation = create_table(conn, "authors2", payload, existing_tables={"authors"})
    assert creation.statements == [
        (
            'CREATE TABLE "authors2" (\n'
            '  "id" INTEGER,\n'
            '  "name" TEXT NOT NULL,\n'
            '  "born" DATE,\n'
            '  "score" REAL DEFAULT 0,\n'
            '  "price" TEXT,\n'
            '  "active" BOOLEAN,\n'
            '  "photo" BLOB,\n'
            '  "extra" JSON,\n'
            '  PRIMARY KEY ("id"),\n'
            '  UNIQUE ("name")\n'
            ")"
        )
    ]
    copy = Catalog(lite).describe("authors2")
    rows = catalog.fetch_page("authors", after=None, limit=10).rows
    with lite.begin() as conn:
        result = import_page(conn, copy, rows, "overwrite")
    assert result.created == 3
    assert Catalog(lite).checksum("authors2") == catalog.checksum("authors")


def test_create_table_keeps_only_safe_sql(lite: Engine) -> None:
    payload = {
        "columns": [
            {
                "name": "id",
                "type": "integer",
                "nullable": False,
                "primary_key": True,
                "default": "nextval('x_id_seq'::regclass)",
            },
            {
                "name": "a",
                "type": "numeric",
                "nullable": True,
                "primary_key": False,
                "default": "'0'::numeric",
                "precision": 10,
                "scale": 3,
            },
            {
                "name": "b",
                "type": "character varying",
                "max_length": 12,
                "default": "'it''s'::character varying",
            },
            {"name": "c", "type": "timestamp(6) with time zone", "default": "now()"},
            {"name": "d", "type": "mood", "default": "'ok'::mood"},
            {"name": "e", "type": "text", "default": "upper('x')"},
            {"name": "f", "type": "integer", "default": "(-1)"},
            {"name": "g", "type": "boolean", "default": "true"},
            {"name": "h", "type": "integer[]", "default": "'{}'::integer[]"},
        ],
        "primary_key": ["id"],
        "foreign_keys": [
            {
                "columns": ["f"],
                "references_table": "missing",
                "references_columns": ["id"],
            }
        ],
        "unique": [],
    }
    with lite.begin() as conn:
        creation = create_table(conn, "safe", payload, existing_tables=set())
    assert creation.statements[0].splitlines()[1:-1] == [
        '  "id" INTEGER,',
        "  \"a\" TEXT DEFAULT '0',",
        "  \"b\" TEXT DEFAULT 'it''s',",
        '  "c" TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,',
        "  \"d\" TEXT DEFAULT 'ok',",
        '  "e" TEXT,',
        '  "f" INTEGER DEFAULT -1,',
        '  "g" BOOLEAN DEFAULT TRUE,',
        "  \"h\" JSON DEFAULT '{}',",
        '  PRIMARY KEY ("id")',
    ]
    assert creation.warnings == [
        "d: type 'mood' stored as text",
        "e: default \"upper('x')\" not kept",
        (
            "foreign key {'columns': ['f'], 'references_table': 'missing',"
            " 'references_columns': ['id']} not kept: referenced table is missing"
        ),
    ]
    with lite.begin() as conn, pytest.raises(UnsafeSchema):
        create_table(conn, "safe", payload, existing_tables={"safe"})


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"columns": [{"name": "x y", "type": "text"}]}, id="odd-name"),
        pytest.param(
            {"columns": [{"name": "x", "type": "text"}], "primary_key": ["nope"]},
            id="key-not-a-column",
        ),
        pytest.param({"columns": []}, id="no-columns"),
        pytest.param(
            {"columns": [{"name": "x", "type": "text"}, {"name": "x", "type": "int"}]},
            id="a-column-twice",
        ),
    ],
)
def test_create_table_refuses_an_unsafe_payload(
    lite: Engine, bad: dict[str, Any]
) -> None:
    with lite.begin() as conn, pytest.raises(UnsafeSchema):
        create_table(conn, "unsafe", bad, existing_tables=set())


def test_sqlite_kinds_follow_declared_names_then_affinity() -> None:
    declared = ["INTEGER", "BIGINT", "VARCHAR(10)", "CLOB", "BLOB", "", "DOUBLE"]
    assert [sqlite_kind(t) for t in declared] == [
        "int", "int", "text", "text", "bytea", "other", "float",
    ]  # fmt: skip
    declared = ["DECIMAL(5,2)", "DATETIME", "INTERVAL", "JSON", "BOOLEAN"]
    assert [sqlite_kind(t) for t in declared] == [
        "numeric", "timestamp", "interval", "json", "bool",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 123456789012345678901234, "b": [1, -98765432109876543210]}',
        "12345678901234567890123",
        '{"s": "digits 12345678901234567890123 in a string", "n": 1.5}',
        '{"huge": 1e400, "tiny": -0}',
        '[{"k": "x\\\\y\\u00e9"}, null, true]',
    ],
)
def test_json_is_parsed_exactly_whichever_parser_reads_it(text: str) -> None:
    expected = json.loads(text)
    for source in (text, text.encode()):
        parsed = wire.parse_json(source)
        assert parsed == expected
        assert json.dumps(parsed) == json.dumps(expected)  # no int turned float
    with pytest.raises(ValueError):
        wire.parse_json(b"{not json")


def test_a_uuid_goes_to_phoenixkit_as_its_16_bytes_wrapped() -> None:
    sent = wire.uuid_as_binary("0f8fad5b-d9cb-469f-a165-70867728950e")
    assert sent == {"__phoenix_kit_binary__": "D4+tW9nLRp+hZXCGdyiVDg=="}
    assert decode_value(sent, "uuid") == "0f8fad5b-d9cb-469f-a165-70867728950e"
