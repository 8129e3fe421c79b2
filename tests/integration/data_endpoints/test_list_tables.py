"""list-tables: the offered tables with counts, sizes, keys, references and checksums."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import text

from shared.context import Site
from tests.helpers import (
    call,
    enable,
    items,
    offering_sender,
    sender_row,
)

# ================================================================== list-tables


def _md5_text(lines: list[str]) -> str:
    return hashlib.md5("".join(sorted(lines)).encode()).hexdigest()


def _md5(site: Site, name: str) -> str:
    """PhoenixKit's checksum of the table, computed here in a UTC session."""
    with site.db.data_engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        digest = conn.exec_driver_sql(
            f"SELECT md5(string_agg(t::text, '' ORDER BY t::text)) FROM {name} t"
        ).scalar_one()
    return "empty" if digest is None else str(digest)


def _checksum(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(
            json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        )
    return digest.hexdigest()


def _size(site: Site, name: str) -> int:
    with site.db.data_engine.connect() as conn:
        return conn.execute(
            text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
            {"t": f"public.{name}"},
        ).scalar_one()


def test_list_tables(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents", "dt_children", "dt_nopk", "dt_words")
    enable(site)
    token_hash = offering_sender(site)
    catalog = site.catalog()
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    expected = [
        {
            "name": "dt_children",
            "row_count": 21,
            "primary_key": ["parent_id", "seq"],
            "depends_on": ["dt_parents"],
        },
        {"name": "dt_items", "row_count": 10, "primary_key": ["id"], "depends_on": []},
        {"name": "dt_nopk", "row_count": 3, "primary_key": [], "depends_on": []},
        {"name": "dt_parents", "row_count": 3, "primary_key": ["id"], "depends_on": []},
        {"name": "dt_words", "row_count": 3, "primary_key": ["w"], "depends_on": []},
    ]
    for t in expected:
        t["size_bytes"] = _size(site, t["name"])
        t["checksum"] = _md5(site, t["name"])
    assert r.json == {"success": True, "tables": expected}
    # the protocol's checksum is PhoenixKit's: md5 of the rows' text, in text order
    assert r.json["tables"][4]["checksum"] == _md5_text(
        ["(alpha)", "(beta)", "(gamma)"]
    )
    assert catalog.checksum("dt_items") == _checksum(items(1, 10))  # dbsync's own
    assert sender_row(site, token_hash).last_connected_at is not None
    # filtered by the connection's rules; own tables never appear, even when allowed
    ruled = offering_sender(
        site,
        allowed_tables=[
            "dt_items",
            "dt_parents",
            "dbsync_connections",
            "alembic_version",
            "dbsync_settings",
        ],
        excluded_tables=["dt_parents"],
    )
    r = call(client, "list-tables", ruled)
    assert r.status_code == 200
    assert r.json == {"success": True, "tables": [expected[1]]}
    excluded = offering_sender(site, excluded_tables=["dt_children", "dt_words"])
    assert r.status_code == 200
    assert call(client, "list-tables", excluded).json == {
        "success": True,
        "tables": [expected[1], expected[2], expected[3]],
    }
    nothing = offering_sender(site, allowed_tables=["dbsync_connections"])
    assert call(client, "list-tables", nothing).json == {"success": True, "tables": []}


def test_list_tables_never_offers_the_service_tables(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    assert r.json == {"success": True, "tables": []}


@pytest.mark.parametrize("settings_env", [{"SYNC_CHECKSUM_ROW_LIMIT": "5"}])
def test_list_tables_checksum_is_null_above_the_row_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "tables": [
            {
                "name": "dt_items",
                "row_count": 10,
                "size_bytes": _size(site, "dt_items"),
                "primary_key": ["id"],
                "depends_on": [],
                "checksum": None,
            },
            {
                "name": "dt_parents",
                "row_count": 3,
                "size_bytes": _size(site, "dt_parents"),
                "primary_key": ["id"],
                "depends_on": [],
                "checksum": _md5_text(
                    [
                        "(1,one)",
                        "(2,two)",
                        "(3,three)",
                    ]
                ),
            },
        ],
    }
