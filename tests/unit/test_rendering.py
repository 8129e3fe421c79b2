"""COPY-text rendering: the inline line renderer and the per-column renderer agree
exactly on a corpus of values, and both store what the full decoder would."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared.data.receiver import rendering
from shared.data.schema import ColumnInfo

HUGE_DIGITS = "9" * 2000

COMMON: list[Any] = [None, True, False, 0, -7, 2**70, 1.5, math.nan, "", " 1", "x"]
CORPUS: dict[tuple[str, str], list[Any]] = {
    ("int", "integer"): [1, -1, 10**30, "12", " 12", "1.0", 2.0, 2.5, "NaN", "1e5"],
    ("numeric", "numeric"): [
        "1", "-1", "12.50", "-0", "00012.50", "1.", ".5", "-.5", "-", "--1", "1.2.3",
        "1e5", "1E-3", " 1", "1 ", "+1", "NaN", "Infinity", "-Infinity", "sNaN",
        "١٢", "１２", "1\x00", HUGE_DIGITS, HUGE_DIGITS + "." + HUGE_DIGITS,
        Decimal("1.5"), 3, 0.1, math.inf,
    ],
    ("float", "double precision"): [
        0.0, -0.0, 1e308, 5e-324, math.inf, -math.inf, "1.5", "NaN", "Infinity", 3,
    ],
    ("text", "text"): [
        "plain", "tab\there", "back\\slash", "\\N", "é ✓ 🎉", "nul\x00", "\x01",
        "line\nbreak", "\ud800", 12, 1.5,
    ],
    ("enum", "mood"): ["happy", "sad\\", "a\tb", 3],
    ("bool", "boolean"): ["true", "t", "no", "maybe", 1, 0, 2],
    ("uuid", "uuid"): [
        "0123abcd-0123-4567-89ab-0123456789ab",
        "0123ABCD-0123-4567-89AB-0123456789AB",
        "0123abcd012345678 9ab0123456789ab".replace(" ", ""),
        "{0123abcd-0123-4567-89ab-0123456789ab}",
        "urn:uuid:0123abcd-0123-4567-89ab-0123456789ab",
        "0123abcd-0123-4567-89ab-0123456789a",
        "not a uuid",
    ],
    ("date", "date"): [
        "2001-02-03", "2001-02-30", "0001-01-01", "9999-12-31", "2001-2-3",
        "20010203", "2001-02-03T04:05:06", "2001-02-03T04:05:06+02:00",
        "٢٠٠١-٠٢-٠٣", "2001-02-03 ",
    ],
    ("timestamp", "timestamp without time zone"): [
        "2001-02-03T04:05:06", "2001-02-03T04:05:06.123456", "2001-02-03T04:05:06.1",
        "2001-02-03T04:05:06+02:00", "2001-02-03T04:05:06Z", "2001-02-03 04:05:06",
        "2001-02-03T24:00:00", "2001-02-03", "2001-02-03T04:05:06.1234567",
    ],
    ("timestamptz", "timestamp with time zone"): [
        "2001-02-03T04:05:06", "2001-02-03T04:05:06+02:00", "2001-02-03T04:05:06-09:30",
        "2001-02-03T04:05:06.5+00:00", "2001-02-03T04:05:06Z",
        "2001-02-03T04:05:06+0200", "2001-02-03T04:05:06+24:00", "2001-02-30T00:00:00",
        "2001-02-03",
    ],
    ("json", "jsonb"): [
        {"a": 1}, [1, "two", None], "text", 'quote " and \\ back', 2**70, 1.5,
        {"__dbsync_json_null__": True}, {"nested": {"x": [True, False]}},
        "nul\x00", {"k": "\ud800"}, {"a": None, "b": [1.0, math.inf]},
        [None, -math.inf], {"a": None},
    ],
    ("json", "json"): [{"a": 1}, [1, 2], "x", 2**70],
    ("interval", "interval"): ["P1D", "PT1H", "bad"],
}  # fmt: skip


def column(kind: str, sql_type: str, name: str = "c") -> ColumnInfo:
    return ColumnInfo(
        name=name,
        type=sql_type,
        kind=kind,
        nullable=True,
        primary_key=False,
        default=None,
    )


def outcome(render: Callable[[], str]) -> tuple[str, str]:
    """What a renderer did: ("text", the field) or (the error's type, its text)."""
    try:
        return "text", render()
    except ValueError as ex:
        return type(ex).__name__, str(ex)


def same_value(kind: str, sql_type: str, fast: str, full: str) -> bool:
    """Whether PostgreSQL stores the same value from the two input texts."""
    if fast == full:
        return True
    if kind == "numeric":
        a, b = Decimal(fast), Decimal(full)
        return a == b and a.as_tuple().exponent == b.as_tuple().exponent
    if kind == "float":
        return repr(float(fast)) == repr(float(full))
    if kind == "uuid":
        return uuid.UUID(fast) == uuid.UUID(full)
    if kind == "date":
        return dt.date.fromisoformat(fast) == dt.date.fromisoformat(full)
    if kind in ("timestamp", "timestamptz"):
        a, b = dt.datetime.fromisoformat(fast), dt.datetime.fromisoformat(full)
        if kind == "timestamptz":  # a naive text reads as UTC in the COPY session
            a, b = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (a, b))
        return a == b
    if kind == "json" and sql_type == "jsonb":
        return bool(
            json.loads(fast.replace("\\\\", "\\"))
            == json.loads(full.replace("\\\\", "\\"))
        )
    return fast == full


CASES = [
    pytest.param(kind, sql_type, value, id=f"{sql_type}-{i}")
    for (kind, sql_type), values in CORPUS.items()
    for i, value in enumerate(values + COMMON)
]


@pytest.mark.parametrize(("kind", "sql_type", "value"), CASES)
def test_both_paths_agree_and_store_what_the_decoder_would(
    kind: str, sql_type: str, value: Any
) -> None:
    col = column(kind, sql_type)
    inline = outcome(lambda: rendering.line_renderer([col])({"c": value}))
    closure = outcome(lambda: rendering.renderer(col)(value))
    assert inline == closure
    full = outcome(lambda: rendering.full_renderer(kind)(value))
    if full[0] != "text":
        assert closure == full  # the same failure, with the decoder's reason
    else:
        assert closure[0] == "text", closure
        assert same_value(kind, sql_type, closure[1], full[1]), (closure, full)


def test_a_missing_column_renders_as_null() -> None:
    cols = [column("int", "integer"), column("text", "text", name="d")]
    assert rendering.line_renderer(cols)({"c": 5}) == "5\t\\N"


def test_the_line_renderer_is_generated_once_per_column_set() -> None:
    cols = [column("numeric", "numeric"), column("uuid", "uuid")]
    again = [column("numeric", "numeric"), column("uuid", "uuid")]
    assert rendering.line_renderer(cols) is rendering.line_renderer(again)
    other = [column("numeric", "numeric"), column("text", "text")]
    assert rendering.line_renderer(cols) is not rendering.line_renderer(other)
