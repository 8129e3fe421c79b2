"""JSON pages applied through COPY text on real PostgreSQL: exact values, escapes,
rows that fail alone, duplicate keys, and the direct copy's fallback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine

from shared.data.receiver.copy_in import unbounded_type
from shared.data.receiver.writer import import_page
from shared.data.sender.offer import Catalog
from tests.helpers import ScratchDatabases, run, select_rows


@pytest.fixture
def db(scratch_db_factory: ScratchDatabases) -> Engine:
    return scratch_db_factory.engine("copyin")


def apply(
    engine: Engine,
    table: str,
    rows: list[dict[str, Any]],
    strategy: str,
    direct: bool = False,
) -> tuple[int, int, int, int, list[dict[str, Any]]]:
    info = Catalog(engine).describe(table)
    with engine.begin() as conn:
        r = import_page(conn, info, rows, strategy, direct=direct)
    return r.created, r.updated, r.skipped, r.failed, r.errors


TRICKY = [
    "tab\there",
    "line\nbreak",
    "cr\rhere",
    "back\\slash",
    "\\N",
    "\\.",
    "",
    " lead and trail ",
    "é ✓ 🎉 日本",
    "nbsp\u00a0and\u2028sep",
    "\x01\x1f",
]


@pytest.mark.parametrize("direct", [False, True])
def test_text_that_copy_would_read_specially_is_stored_exactly(
    db: Engine, direct: bool
) -> None:
    run(db, "CREATE TABLE t (id integer PRIMARY KEY, v text, tags text[])")
    rows = [{"id": i, "v": v, "tags": [v, None]} for i, v in enumerate(TRICKY)]
    rows.append({"id": 99, "v": None, "tags": None})
    assert apply(db, "t", rows, "skip", direct=direct) == (len(rows), 0, 0, 0, [])
    stored = select_rows(db, "SELECT id, v, tags FROM t ORDER BY id")
    assert stored == [(i, v, [v, None]) for i, v in enumerate(TRICKY)] + [
        (99, None, None)
    ]


def test_values_off_the_fast_paths_decode_as_the_wire_rules_say(db: Engine) -> None:
    run(
        db,
        "CREATE TABLE t (id bigint PRIMARY KEY, n numeric(8,2), f double precision,"
        " b boolean, d date, ts timestamp, tz timestamptz, u uuid, j jsonb, js json,"
        " c character(4), v varchar(3))",
    )
    uid = "0f8e7d6c-5b4a-4938-a716-554433221100"
    rows = [
        # The common wire forms.
        {
            "id": 1,
            "n": "12.50",
            "f": 1.5,
            "b": True,
            "d": "2024-02-29",
            "ts": "2024-01-02T03:04:05.5",
            "tz": "2024-01-02T03:04:05+02:00",
            "u": uid,
            "j": {"a": [1, "x\\y"]},
            "js": {"b": 1, "a": 2},
            "c": "ab",
            "v": "xyz",
        },
        # Other spellings the decoder takes: each must land as the same value.
        {
            "id": "2",
            "n": 7,
            "f": 3,
            "b": "yes",
            "d": "2024-02-29T10:00:00",
            "ts": "2024-01-02T05:04:05.5+02:00",
            "tz": "2024-01-02 01:04:05",
            "u": uid.upper(),
            "j": {"__dbsync_json_null__": True},
            "js": {"__dbsync_json_null__": True},
            "c": None,
            "v": None,
        },
        {
            "id": 3,
            "n": "007.5",
            "f": "NaN",
            "b": 0,
            "d": None,
            "ts": None,
            "tz": "2024-01-02T01:04:05Z",
            "u": "{" + uid + "}",
            "j": 12345678901234567890123,
            "js": [1, 2.5],
            "c": "abcd",
            "v": "",
        },
        {
            "id": 4,
            "n": "\u0661\u0662",
            "f": None,
            "b": None,
            "d": None,
            "ts": None,
            "tz": None,
            "u": None,
            "j": None,
            "js": None,
            "c": None,
            "v": None,
        },
    ]
    assert apply(db, "t", rows, "overwrite") == (4, 0, 0, 0, [])
    assert select_rows(
        db,
        "SELECT id, n::text, f::text, b, d::text, ts::text, tz::text, u::text,"
        " j::text, js::text, c, v FROM t ORDER BY id",
    ) == [
        (
            1,
            "12.50",
            "1.5",
            True,
            "2024-02-29",
            "2024-01-02 03:04:05.5",
            "2024-01-02 01:04:05+00",
            uid,
            '{"a": [1, "x\\\\y"]}',
            '{"b": 1, "a": 2}',
            "ab  ",
            "xyz",
        ),
        (
            2,
            "7.00",
            "3",
            True,
            "2024-02-29",
            "2024-01-02 03:04:05.5",
            "2024-01-02 01:04:05+00",
            uid,
            "null",
            "null",
            None,
            None,
        ),
        (
            3,
            "7.50",
            "NaN",
            False,
            None,
            None,
            "2024-01-02 01:04:05+00",
            uid,
            "12345678901234567890123",
            "[1, 2.5]",
            "abcd",
            "",
        ),
        (4, "12.00", None, None, None, None, None, None, None, None, None, None),
    ]


def test_a_bad_value_fails_its_row_alone_in_the_decoders_words(db: Engine) -> None:
    run(
        db,
        "CREATE TABLE t (id integer PRIMARY KEY, v text, d date, at timestamptz,"
        " n numeric, k varchar(2))",
    )
    surrogate = json.loads('"\\ud800"')  # the standard library lets one through
    rows = [
        {"id": 1, "v": "ok", "d": "2024-02-29", "at": None, "n": "1", "k": "a"},
        {"id": 2, "v": "nul\x00here", "d": None, "at": None, "n": None, "k": None},
        {"id": 3, "v": "x", "d": "2023-02-29", "at": None, "n": None, "k": None},
        {
            "id": 4,
            "v": "x",
            "d": None,
            "at": "2024-01-02T25:00:00",
            "n": None,
            "k": None,
        },
        {"id": 5, "v": surrogate, "d": None, "at": None, "n": None, "k": None},
        {"id": 6, "v": "x", "d": None, "at": None, "n": "1e3", "k": "abc"},
        {"id": 7, "v": "x", "d": None, "at": None, "n": "12abc", "k": None},
        {"id": 8, "v": 8, "d": None, "at": None, "n": None, "k": None},
    ]
    created, updated, skipped, failed, errors = apply(db, "t", rows, "skip")
    assert (created, updated, skipped, failed) == (2, 0, 0, 6)
    assert errors == [
        {"key": [2], "error": "v: contains a NUL character"},
        {"key": [3], "error": 'd: expected an ISO 8601 date, got "2023-02-29"'},
        {
            "key": [4],
            "error": 'at: expected an ISO 8601 timestamp, got "2024-01-02T25:00:00"',
        },
        {"key": [5], "error": "v: not valid text (an unpaired surrogate)"},
        {"key": [7], "error": 'n: expected a decimal number, got "12abc"'},
        {"key": [6], "error": "value too long for type character varying(2)"},
    ]
    assert select_rows(db, "SELECT id, v, d::text, n::text FROM t ORDER BY id") == [
        (1, "ok", "2024-02-29", "1"),
        (8, "8", None, None),
    ]


def test_the_last_row_of_a_key_wins_and_earlier_ones_are_skipped(db: Engine) -> None:
    run(
        db,
        "CREATE TABLE t (id integer, k text, v text, PRIMARY KEY (id, k))",
        "INSERT INTO t VALUES (1, 'a', 'old')",
    )
    rows = [
        {"id": 1, "k": "a", "v": "first"},
        {"id": 2, "k": "b", "v": "first"},
        {"id": 1, "k": "a", "v": "second"},
        {"id": "2", "k": "b", "v": "second"},  # the same key, another spelling
        {"id": 2, "k": "c", "v": "only"},
    ]
    assert apply(db, "t", rows, "overwrite") == (2, 1, 2, 0, [])
    assert select_rows(db, "SELECT * FROM t ORDER BY id, k") == [
        (1, "a", "second"),
        (2, "b", "second"),
        (2, "c", "only"),
    ]


def test_a_direct_copy_that_meets_a_key_already_there_is_staged_instead(
    db: Engine,
) -> None:
    run(
        db,
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t VALUES (2, 'mine')",
    )
    rows = [{"id": i, "v": f"r{i}"} for i in range(1, 5)]
    assert apply(db, "t", rows, "skip", direct=True) == (3, 0, 1, 0, [])
    assert select_rows(db, "SELECT * FROM t ORDER BY id") == [
        (1, "r1"),
        (2, "mine"),
        (3, "r3"),
        (4, "r4"),
    ]
    run(db, "TRUNCATE t")
    assert apply(db, "t", rows, "merge", direct=True) == (4, 0, 0, 0, [])
    assert select_rows(db, "SELECT count(*) FROM t") == [(4,)]


def test_staged_text_is_cast_to_the_type_without_its_length() -> None:
    assert unbounded_type("character(5)") == "bpchar"
    assert unbounded_type("character(5)[]") == "bpchar[]"
    assert unbounded_type("character varying(3)") == "character varying"
    assert unbounded_type("bit(3)") == "bit varying"
    assert unbounded_type("bit varying(4)") == "bit varying"
    assert unbounded_type("numeric(12,2)") == "numeric"
    assert unbounded_type("timestamp(3) with time zone") == "timestamp with time zone"
    assert unbounded_type("text") == "text"
