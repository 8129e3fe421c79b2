"""Cursor mode on the receiver: look-backs, the lower bound a run asks from,
the column check at create time, and which marks a run brings back."""

from __future__ import annotations

from typing import Any

import pytest

from shared.data.receiver import cursor_mode
from shared.data.receiver.sources import SinceSeen
from shared.data.schema import ColumnInfo
from shared.errors import SyncError


def _col(kind: str, type_: str) -> ColumnInfo:
    return ColumnInfo("c", type_, kind, True, False, None)


@pytest.mark.parametrize(
    ("mark", "kind", "type_", "look_back", "after"),
    [
        (100, "int", "bigint", None, 100),  # integers: 0 by default
        (100, "int", "bigint", "30", 70),
        ("100", "int", "integer", "5", 95),
        (-(1 << 31) + 2, "int", "integer", "5", None),  # below the type: all rows
        ("10.50", "numeric", "numeric(6,2)", "2", "8.50"),
        ("2024-01-01T00:10:00+00:00", "timestamptz", "timestamptz", None,
         "2024-01-01T00:09:00+00:00"),  # timestamps: 1m by default
        ("2024-01-01T00:10:00+00:00", "timestamptz", "timestamptz", "5m",
         "2024-01-01T00:05:00+00:00"),
        ("2024-01-01T00:10:00", "timestamp", "timestamp", "90",
         "2024-01-01T00:08:30"),
        ("2024-01-10", "date", "date", None, "2024-01-09"),  # dates: 1d
        ("2024-01-10", "date", "date", "36h", "2024-01-08"),  # whole days, rounded up
        ("0001-01-01", "date", "date", None, None),
        (None, "int", "bigint", "5", None),  # no mark: every row
        ("garbage", "int", "bigint", None, None),
    ],
)  # fmt: skip
def test_a_run_asks_from_the_mark_minus_the_look_back(
    mark: Any, kind: str, type_: str, look_back: str | None, after: Any
) -> None:
    assert cursor_mode.lower_bound(mark, _col(kind, type_), look_back) == after


@pytest.mark.parametrize(
    ("text", "kind", "problem"),
    [
        (None, "int", None),
        ("100", "int", None),
        ("5m", "timestamptz", None),
        ("90", "timestamp", None),
        ("1d", "date", None),
        ("5m", "int", "--look-back 5m is a duration; a number column takes a plain"
         " number"),
        ("-5", "int", "--look-back takes a number (100) or a duration (30s, 5m, 2h,"
         " 1d)"),
        ("1.5", "numeric", "--look-back takes a number (100) or a duration (30s, 5m,"
         " 2h, 1d)"),
    ],
)  # fmt: skip
def test_a_look_back_is_a_number_or_a_duration_by_the_columns_kind(
    text: str | None, kind: str, problem: str | None
) -> None:
    assert cursor_mode.look_back_problem(text, kind) == problem


def test_the_cursor_column_is_checked_on_every_table() -> None:
    good = {
        "a": [{"name": "id", "type": "bigint"}, {"name": "at", "type": "integer"}],
        "b": [{"name": "at", "type": "timestamp(3) with time zone"}],
        "c": [{"name": "at", "type": "numeric(12,0)"}, {"name": "x", "type": "text"}],
    }
    assert cursor_mode.check_columns("at", good, None) == {
        "a": "int",
        "b": "timestamptz",
        "c": "numeric",
    }
    bad = {
        **good,
        "d": [{"name": "id", "type": "integer"}],
        "e": [{"name": "at", "type": "text"}],
    }
    with pytest.raises(SyncError) as caught:
        cursor_mode.check_columns("at", bad, None)
    assert caught.value.message == (
        "--cursor-column at: d has no column at; e.at is text, not an integer,"
        " numeric, date or timestamp column"
    )
    with pytest.raises(SyncError) as caught:
        cursor_mode.check_columns("at", good, "5m")  # a duration for an integer
    assert caught.value.message == (
        "--look-back 5m is a duration; a number column takes a plain number"
    )


def test_a_run_brings_back_the_marks_of_tables_it_pulled_to_the_end_filtered() -> None:
    meta = {
        "cursor": {
            "done": {"after": None, "high_water": 9, "filtered": True},
            "empty": {"after": None, "high_water": None, "filtered": True},
            "unfinished": {"after": 3, "high_water": 12, "filtered": True},
            "ignored": {"after": 3, "filtered": False},
            "first_page_lost": {"after": 3},
        }
    }
    completed = {"done", "empty", "ignored", "first_page_lost"}
    assert cursor_mode.marks(meta, completed) == {"done": 9, "empty": None}
    assert cursor_mode.marks({}, completed) == {}


def test_the_sender_applied_the_filter_only_when_it_repeats_it() -> None:
    since = {"column": "at", "after": 5}
    seen = SinceSeen(since)
    body: dict[str, Any] = {}
    seen.body(body)
    assert body == {"since": since}
    seen.answer({**since, "high_water": 9}, None)
    assert (seen.first, seen.ignored) == ({**since, "high_water": 9}, False)
    seen.header('{"column":"at","after":5}', [10])
    assert seen.ignored is False
    for echo in (None, {"column": "at", "after": 4}, {"column": "id", "after": 5}):
        other = SinceSeen(since)
        other.answer(echo, None)
        assert (other.first, other.ignored) == (None, True)
    broken = SinceSeen(since)
    broken.header("{not json", None)
    assert broken.ignored is True
    off = SinceSeen(None)
    off.body(body := {})
    off.answer(None, None)
    assert (body, off.ignored) == ({}, False)


@pytest.mark.parametrize(
    ("mark", "kept"),
    [
        ("2024-01-01T00:00:00+00:00", True),
        (17, True),
        (None, True),  # an empty table: no mark, the next run asks for every row
        ("9" * 201, False),
        ("a\x00b", False),
        (True, False),
        ([1], False),
        ({"x": 1}, False),
        (float("nan"), False),
    ],
)
def test_only_a_plain_value_is_kept_as_the_mark(mark: Any, kept: bool) -> None:
    assert cursor_mode._plain_value(mark) is kept


COLUMNS = {"t": [{"name": "id", "type": "bigint"}, {"name": "at", "type": "date"}]}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"cursor_column": None}, "--mode cursor needs --cursor-column"),
        ({"strategy": "append"}, "--strategy append cannot go with --mode cursor"
         " (rows pulled again would be added again)"),
        ({"sender_columns": None}, "--mode cursor needs the sender's table schemas"
         " to check the column"),
        ({"sender_columns": {}}, "The sender offers no table to sync"),
        ({"cursor_column": "nope"}, "--cursor-column nope: t has no column nope"),
        ({"look_back": "2 weeks"}, "--look-back takes a number (100) or a duration"
         " (30s, 5m, 2h, 1d)"),
        ({"mode": "delta"}, "--cursor-column and --look-back need --mode cursor"),
    ],
)  # fmt: skip
def test_a_cursor_sync_with_bad_options_is_refused(
    options: dict[str, Any], error: str
) -> None:
    from types import SimpleNamespace

    from shared.data.receiver import syncs

    given: dict[str, Any] = {
        "all_tables": False,
        "every_seconds": 60,
        "strategy": "overwrite",
        "mode": "cursor",
        "mirror_deletes": False,
        "cursor_column": "at",
        "sender_columns": COLUMNS,
        **options,
    }
    conn: Any = SimpleNamespace(direction="receiver")
    with pytest.raises(SyncError) as caught:
        syncs.create(None, conn, ["t"], **given)  # type: ignore[arg-type]
    assert caught.value.message == error
