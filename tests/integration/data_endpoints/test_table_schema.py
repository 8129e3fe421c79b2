"""table-schema: a table's columns, keys, references and unique constraints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from falcon import testing

from shared.context import Site
from tests.helpers import (
    call,
    enable,
    offering_sender,
)

# ================================================================== table-schema


def test_table_schema(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "table-schema", token_hash, table="dt_children")
    assert r.status_code == 200

    def col(
        name: str,
        type_: str,
        nullable: bool,
        pk: bool,
        default: str | None = None,
        max_length: int | None = None,
        precision: int | None = None,
        scale: int | None = None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "type": type_,
            "nullable": nullable,
            "primary_key": pk,
            "default": default,
            "max_length": max_length,
            "precision": precision,
            "scale": scale,
        }

    assert r.json == {
        "success": True,
        "table": "dt_children",
        "schema": {
            "columns": [
                col("parent_id", "integer", False, True, precision=32, scale=0),
                col("seq", "integer", False, True, precision=32, scale=0),
                col("code", "character varying(40)", False, False, max_length=40),
                col("price", "numeric(10,2)", True, False, precision=10, scale=2),
                col("qty", "integer", False, False, default="0", precision=32, scale=0),
            ],
            "primary_key": ["parent_id", "seq"],
            "foreign_keys": [
                {
                    "columns": ["parent_id"],
                    "references_table": "dt_parents",
                    "references_columns": ["id"],
                }
            ],
            "unique": [["code"]],
        },
    }
    r = call(client, "table-schema", token_hash, table="dt_parents")
    assert r.json["schema"]["foreign_keys"] == []
    assert r.json["schema"]["unique"] == []
    assert r.json["schema"]["primary_key"] == ["id"]
