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
        t["checksum"] = catalog.checksum(t["name"])
    assert r.json == {"success": True, "tables": expected}
    # the protocol's checksum: SHA-256 over sorted-key compact JSON lines, key order
    assert r.json["tables"][1]["checksum"] == _checksum(items(1, 10))
    assert r.json["tables"][4]["checksum"] == _checksum(
        [{"w": "alpha"}, {"w": "beta"}, {"w": "gamma"}]
    )
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
                "checksum": _checksum(
                    [
                        {"id": 1, "name": "one"},
                        {"id": 2, "name": "two"},
                        {"id": 3, "name": "three"},
                    ]
                ),
            },
        ],
    }
