"""The keyset page SQL and identifier quoting, as text() SQL and as driver SQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import psycopg2

from shared.data.keyset import BadCursor, Keyset, column_list
from shared.data.schema import ColumnInfo, TableInfo, quote, quote_driver, quote_text


def _info() -> TableInfo:
    cols = [
        ColumnInfo("k%:1", "text", "text", False, True, None),
        ColumnInfo("k2", "integer", "int", False, True, None),
        ColumnInfo('v"', "numeric", "numeric", True, False, None),
    ]
    return TableInfo("we%ird:t", cols, ["k%:1", "k2"], schema="public")


@pytest.mark.parametrize(
    ("quoter", "expected"),
    [
        (quote, '"a%b:c""d"'),
        (quote_text, '"a%b\\:c""d"'),
        (quote_driver, '"a%%b:c""d"'),
    ],
)
def test_one_quote_in_three_settings(
    quoter: Callable[[str], str], expected: str
) -> None:
    assert quoter('a%b:c"d') == expected


def test_the_qualified_name_in_each_setting() -> None:
    info = _info()
    assert info.qualified == '"public"."we%ird:t"'
    assert info.qualified_text == '"public"."we%ird\\:t"'
    assert info.qualified_driver == '"public"."we%%ird:t"'


def test_a_keyset_page_compares_the_key_as_a_row_value() -> None:
    keyset = Keyset.after_cursor(_info(), ["a", 5], pg=True)
    assert keyset.after == ["a", 5]
    assert keyset.params == {"k0": "a", "k1": 5}
    assert keyset.select(column_list(_info().columns), limit=3) == (
        'SELECT "k%\\:1", "k2", "v""" FROM "public"."we%ird\\:t"'
        ' WHERE ("k%\\:1", "k2") > (CAST(:k0 AS text), CAST(:k1 AS integer))'
        ' ORDER BY "k%\\:1", "k2" LIMIT 3'
    )
    assert keyset.count() == (
        'SELECT count(*) FROM "public"."we%ird\\:t"'
        ' WHERE ("k%\\:1", "k2") > (CAST(:k0 AS text), CAST(:k1 AS integer))'
    )


def test_the_first_page_has_no_predicate_and_an_offset_is_said() -> None:
    keyset = Keyset.after_cursor(_info(), None, pg=False)
    assert keyset.after is None and keyset.params == {}
    assert keyset.select('"k2"', limit=2, offset=0) == (
        'SELECT "k2" FROM "public"."we%ird\\:t" ORDER BY "k%\\:1", "k2" LIMIT 2 OFFSET 0'
    )


def test_the_driver_form_is_the_same_statement() -> None:
    keyset = Keyset.after_cursor(_info(), ["a", 5], pg=True)
    compiled = text(keyset.select('"k2"', limit=3)).compile(dialect=psycopg2.dialect())
    assert compiled.string == (
        'SELECT "k2" FROM "public"."we%%ird:t"'
        ' WHERE ("k%%:1", "k2") > (CAST(%(k0)s AS text), CAST(%(k1)s AS integer))'
        ' ORDER BY "k%%:1", "k2" LIMIT 3'
    )
    assert compiled.construct_params(keyset.params) == {"k0": "a", "k1": 5}


@pytest.mark.parametrize(
    ("cursor", "message"),
    [
        (["a"], "expected a list of 2 key value(s)"),
        ("a", "expected a list of 2 key value(s)"),
        (["a", None], "k2: a key value cannot be null"),
    ],
)
def test_a_bad_cursor_says_what_is_wrong(cursor: object, message: str) -> None:
    with pytest.raises(BadCursor) as caught:
        Keyset.after_cursor(_info(), cursor, pg=True)
    assert str(caught.value) == message
