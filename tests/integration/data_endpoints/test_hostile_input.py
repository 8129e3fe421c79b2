"""Hostile input to the data endpoints: out-of-range keys, odd strings, bodies that
are not JSON objects, and a sweep of generated bodies; a 4xx, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.context import Site
from tests.helpers import (
    API,
    ENDPOINTS,
    INVALID_JSON,
    TOO_LARGE,
    case_id,
    enable,
    err,
    offering_sender,
    post,
)


def _answers(
    client: testing.TestClient,
    endpoint: str,
    token_hash: str,
    table: str,
    cases: list[dict[str, Any]],
) -> list[tuple[int, Any]]:
    out = []
    for extra in cases:
        r = post(
            client,
            endpoint,
            {"auth_token_hash": token_hash, "table_name": table, **extra},
        )
        out.append(
            (r.status_code, r.json.get("field") if r.status_code == 400 else r.json)
        )
    return out


def test_key_values_beyond_the_column_type_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """A filter or cursor value that is an integer, but not an `integer`, is bad input.

    Found: PostgreSQL raises "integer out of range" on the CAST and the
    request ends in 500 "Internal server error".
    """
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    preview_cases = [
        {"ids": [99999999999]},
        {"id_start": 2**40},
        {"id_end": "99999999999999999999"},
        {"ids": [1e20]},
    ]
    assert (
        _answers(client, "table-records", token_hash, "dt_rows", preview_cases)
        == [(400, None)] * 4
    )
    pull_cases = [
        {"after": [99999999999]},
        {"after": [2**40]},
        {"after": ["99999999999999999999"]},
        {"after": [1e20]},
    ]
    assert (
        _answers(client, "pull-data", token_hash, "dt_rows", pull_cases)
        == [(400, "after")] * 4
    )


def test_integer_fields_given_as_odd_digit_strings_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """PhoenixKit sends limits as numeric strings; odd ones must not crash.

    Found: shared/validation.py check_value accepts any str whose
    .strip().lstrip("-").isdigit() is true and calls int() on it, which raises
    ValueError (-> 500) for "\u00b2" (isdigit but not decimal), "--5", and
    more than 4300 digits.
    """
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    cases = [{"limit": "\u00b2"}, {"offset": "--5"}, {"limit": "1" * 5000}]
    assert _answers(client, "table-records", token_hash, "dt_rows", cases) == [
        (400, "limit"),
        (400, "offset"),
        (400, "limit"),
    ]
    assert _answers(
        client, "pull-data", token_hash, "dt_rows", [{"limit": "\u00b2"}]
    ) == [(400, "limit")]


def test_text_keys_with_a_nul_character_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """Top-level strings are checked for NUL; values inside `ids` and `after` are not.

    Found: psycopg2 refuses NUL in a bound string with ValueError -> 500.
    """
    tables("dt_words")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    cases = [
        {"ids": ["a\x00b"]},
        {"ids": ["ok", "\x00"]},
        {"id_start": "a\x00"},
        {"id_end": "\x00"},
    ]
    assert _answers(client, "table-records", token_hash, "dt_words", cases) == [
        (400, None),
        (400, None),
        (400, "id_start"),
        (400, "id_end"),
    ]
    assert _answers(
        client, "pull-data", token_hash, "dt_words", [{"after": ["a\x00b"]}]
    ) == [(400, "after")]


# ================================================================== hostile bodies


NOT_JSON_OBJECTS = [
    b"",
    b"not json",
    b"[1, 2]",
    b'"str"',
    b"null",
    b"42",
    b"{",
    b"\xff\xfe",
    b'{"auth_token_hash": "a"',
    b"[" * 10_000,
    b"\x00",
    b'{"a": NaN}',
]


@pytest.mark.parametrize("raw", NOT_JSON_OBJECTS, ids=case_id)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bodies_that_are_not_json_objects(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    endpoint: str,
    raw: bytes,
) -> None:
    tables("dt_items")
    enable(site)
    offering_sender(site, rate_limit_requests_per_minute=1000)
    r = post(client, endpoint, raw)
    assert (r.status_code, r.json) == (400, INVALID_JSON), (endpoint, raw[:20])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bodies_over_the_limit_and_huge_fields(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    huge = json.dumps(
        {
            "auth_token_hash": token_hash,
            "table_name": "dt_items",
            "pad": "x" * 1_048_576,
        }
    ).encode()
    fits = json.dumps(
        {
            "auth_token_hash": token_hash,
            "table_name": "dt_items",
            "pad": "x" * 1_000_000,
        }
    ).encode()
    r = post(client, endpoint, huge)
    assert (r.status_code, r.json) == (413, TOO_LARGE), endpoint
    # a body just under the limit with a huge unknown field is fine
    assert post(client, endpoint, fits).status_code == 200
    r = post(
        client,
        endpoint,
        {"auth_token_hash": "a" * 500_000, "table_name": "t" * 500_000},
    )
    assert (r.status_code, r.json) == (
        400,
        err("Field auth_token_hash is too long", field="auth_token_hash"),
    )
    r = post(
        client,
        endpoint,
        {"auth_token_hash": token_hash, "table_name": "\x00" * 100},
    )
    expected = 200 if endpoint == "list-tables" else 400
    assert r.status_code == expected, endpoint


NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",
    "\U0001f600",
    "'; DROP TABLE dt_items; --",
    "dt_items",
    "dt_nopk",
    "dt_children",
    "dbsync_connections",
    "alembic_version",
    "NaN",
    "\u00b2",
    "--1",
    "-0",
    "1e3",
    "0x10",
    "9" * 30,
]
scalars = st.one_of(
    st.sampled_from(NASTY),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.text(max_size=8), kids, max_size=4),
    ),
    max_leaves=12,
)
huge_strings = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8"),
    st.integers(min_value=0, max_value=20_000),
)

FIELDS = {
    "list-tables": ["auth_token_hash"],
    "table-schema": ["auth_token_hash", "table_name"],
    "table-records": [
        "auth_token_hash",
        "table_name",
        "limit",
        "offset",
        "ids",
        "id_start",
        "id_end",
    ],
    "pull-data": [
        "auth_token_hash",
        "table_name",
        "conflict_strategy",
        "after",
        "limit",
    ],
}
SWEEP = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps a failing run short
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _plausible(name: str, token_hash: str) -> st.SearchStrategy[Any]:
    small_ints = st.integers(min_value=-3, max_value=30)
    numbers = st.one_of(
        small_ints, small_ints.map(str), st.integers(), st.sampled_from(NASTY)
    )
    keys = st.one_of(
        small_ints,
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.sampled_from(NASTY),
    )
    return {
        "auth_token_hash": st.sampled_from([token_hash, "0" * 64]),
        "table_name": st.sampled_from(
            [
                "dt_items",
                "dt_children",
                "dt_nopk",
                "dt_words",
                "nope",
                "dbsync_connections",
            ]
        ),
        "limit": numbers,
        "offset": numbers,
        "ids": st.lists(keys, max_size=4),
        "id_start": keys,
        "id_end": keys,
        "after": st.lists(keys, max_size=3),
        "conflict_strategy": st.sampled_from(
            ["skip", "overwrite", "merge", "append", "x"]
        ),
    }[name]


REQUIRED = {"auth_token_hash", "table_name"}


@st.composite
def bodies(draw: st.DrawFn, endpoint: str, token_hash: str) -> Any:
    """Mostly bodies that pass the early checks, so the deep paths see junk too."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.one_of(
                st.binary(max_size=50), values.map(lambda v: json.dumps(v).encode())
            )
        )
    body: dict[str, Any] = {}
    for name in FIELDS[endpoint]:
        roll = draw(st.integers(0, 19))
        if name in REQUIRED:
            if roll == 0:
                continue
            if roll == 1:
                body[name] = draw(values)
            elif roll == 2:
                body[name] = draw(huge_strings)
            elif name == "auth_token_hash":
                body[name] = token_hash
            else:
                body[name] = draw(_plausible(name, token_hash))
        elif roll < 8:
            continue
        elif roll < 11:
            body[name] = draw(values)
        else:
            body[name] = draw(_plausible(name, token_hash))
    if draw(st.booleans()):
        body.update(
            {
                k: v
                for k, v in draw(
                    st.dictionaries(st.text(max_size=8), values, max_size=3)
                ).items()
                if k not in FIELDS[endpoint]
            }
        )
    return body


def _sweep(
    site: Site, client: testing.TestClient, endpoint: str, token_hash: str
) -> None:
    @SWEEP
    @given(body=bodies(endpoint, token_hash))
    def run(body: Any) -> None:
        if isinstance(body, bytes):
            r = post(client, endpoint, body)
        else:
            r = client.simulate_post(
                f"{API}/{endpoint}",
                body=json.dumps(body, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json"},
            )
        assert r.status_code < 500, (r.status_code, r.text[:300], repr(body)[:300])
        data = json.loads(r.text)
        if r.status_code == 200:
            assert data["success"] is True
        else:
            assert 400 <= r.status_code < 500
            assert data["success"] is False and isinstance(data["error"], str), data
            assert set(data) <= {"success", "error", "fields", "field"}, data

    run()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bad_input_sweep(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    if endpoint == "list-tables":
        tables("dt_items")  # list-tables checksums every table on every call
    else:
        tables("dt_items", "dt_parents", "dt_children", "dt_nopk", "dt_words")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1_000_000)
    _sweep(site, client, endpoint, token_hash)
