"""The peer API as an OpenAPI 3.1 document, served at ``{prefix}/sync/api/openapi.json``.

Written from PROTOCOL.md (the wire contract) and kept honest by a schemathesis
run against a live site (tests/integration/test_openapi.py): every answer a
fuzzed request gets must be a documented status with a body of its schema.
"""

from __future__ import annotations

from typing import Any

import falcon

JSON = "application/json"
ERROR_STATUSES = {
    "400": "Malformed body, a missing or wrong-typed field (named in `error`)",
    "401": "Unknown connection, or a password required or wrong",
    "403": "Not allowed: mode, status, expiry, IP, hours, limits or table rules",
    "404": "No such connection or table",
    "409": "Conflicts with the connection's state",
    "413": "Request body too large",
    "429": "Throttled or over the rate limit; see Retry-After",
    "503": "Module disabled, or no pull-data slot free; see Retry-After",
}
STRING = {"type": "string"}
TOKEN_HASH = {
    "type": "string",
    "maxLength": 128,
    "description": "lower-case hex SHA-256 of the connection's token",
}
URL = {"type": "string", "maxLength": 2048}
TABLE_NAME = {"type": "string", "maxLength": 255}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before asking again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _obj(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _ok(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema = _obj(
        ["success", *(required if required is not None else list(props))],
        {"success": {"const": True}, **props},
    )
    return {"content": {JSON: {"schema": schema}}}


def _errors(statuses: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        answer: dict[str, Any] = {
            "description": ERROR_STATUSES[status],
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in ("429", "503"):
            answer["headers"] = RETRY_AFTER
        out[status] = answer
    return out


def _post(
    summary: str,
    body: dict[str, Any],
    ok: dict[str, Any],
    statuses: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": {
                "200": {"description": "Done", **ok},
                **_errors(sorted({"400", "413", "503", *statuses})),
                **(extra or {}),
            },
        }
    }


CONTROL = ["401", "403", "404", "409", "429"]
DATA = ["401", "403", "404", "429"]
VALUE: dict[str, Any] = {}  # any JSON value: rows are wire-encoded by column type

COLUMN = _obj(
    ["name", "type", "nullable", "primary_key"],
    {
        "name": STRING,
        "type": STRING,
        "nullable": {"type": "boolean"},
        "primary_key": {"type": "boolean"},
        "default": {"type": ["string", "null"]},
        "max_length": {"type": ["integer", "null"]},
        "precision": {"type": ["integer", "null"]},
        "scale": {"type": ["integer", "null"]},
    },
)
COPY_HEADERS = {
    "X-Sync-Table": {"description": "The table", "schema": STRING},
    "X-Sync-Format": {
        "description": "pg_copy_binary or pg_copy_text",
        "schema": {"enum": ["pg_copy_binary", "pg_copy_text"]},
    },
    "X-Sync-Columns": {"description": "JSON list of column names", "schema": STRING},
    "X-Sync-Count": {
        "description": "Rows in the body",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Sync-Has-More": {
        "description": "Whether a next page exists",
        "schema": {"enum": ["true", "false"]},
    },
    "X-Sync-Next-Cursor": {
        "description": "JSON: the wire-encoded key of the page's last row (the next `after`)",
        "schema": STRING,
    },
}


def document(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this site's peer API under ``prefix``."""
    api = f"{prefix}/sync/api"
    peer_body = _obj(
        ["sender_url", "auth_token_hash"],
        {"sender_url": URL, "auth_token_hash": TOKEN_HASH},
    )
    table_body = _obj(
        ["auth_token_hash", "table_name"],
        {"auth_token_hash": TOKEN_HASH, "table_name": TABLE_NAME},
    )
    paths: dict[str, Any] = {
        f"{api}/status": {
            "get": {
                "summary": "Whether this site accepts connections (never gated)",
                "responses": {
                    "200": {
                        "description": "The module's state",
                        **_ok(
                            {
                                "enabled": {"type": "boolean"},
                                "incoming_mode": {
                                    "enum": [
                                        "auto_accept",
                                        "require_approval",
                                        "require_password",
                                        "deny_all",
                                    ]
                                },
                                "password_required": {"type": "boolean"},
                                "accepting_connections": {"type": "boolean"},
                                "protocol": {"const": 1},
                            }
                        ),
                    }
                },
            }
        },
        f"{api}/register-connection": _post(
            "A sender registers a connection with this receiver",
            _obj(
                ["sender_url", "connection_name", "auth_token"],
                {
                    "sender_url": URL,
                    "connection_name": {"type": "string", "maxLength": 255},
                    "auth_token": {"type": "string", "maxLength": 512},
                    "password": {"type": "string", "maxLength": 1024},
                },
            ),
            _ok(
                {
                    "message": STRING,
                    "connection_status": {"enum": ["active", "pending"]},
                    "connection_uuid": {"type": "string", "format": "uuid"},
                }
            ),
            CONTROL,
        ),
        f"{api}/get-connection-status": _post(
            "A receiver asks the status of its sender connection",
            _obj(
                ["receiver_url", "auth_token_hash"],
                {"receiver_url": URL, "auth_token_hash": TOKEN_HASH},
            ),
            _ok({"status": STRING, "name": STRING}),
            CONTROL,
        ),
        f"{api}/update-status": _post(
            "A peer mirrors its status decision here",
            _obj(
                ["sender_url", "auth_token_hash", "status"],
                {
                    "sender_url": URL,
                    "auth_token_hash": TOKEN_HASH,
                    "status": {"enum": ["active", "suspended", "revoked"]},
                },
            ),
            _ok({"message": STRING}),
            CONTROL,
        ),
        f"{api}/delete-connection": _post(
            "A peer deleted its side; this site deletes its own",
            peer_body,
            _ok({"message": STRING}),
            CONTROL,
        ),
        f"{api}/verify-connection": _post(
            "Whether this site still knows the connection (self-healing)",
            peer_body,
            _ok({"exists": {"const": True}}),
            CONTROL,
            {
                "404": {
                    "description": "Unknown here",
                    "content": {
                        JSON: {
                            "schema": {
                                "allOf": [
                                    {"$ref": "#/components/schemas/Error"},
                                    {"properties": {"exists": {"const": False}}},
                                ]
                            }
                        }
                    },
                }
            },
        ),
        f"{api}/list-tables": _post(
            "The tables this connection may pull",
            _obj(["auth_token_hash"], {"auth_token_hash": TOKEN_HASH}),
            _ok(
                {
                    "tables": {
                        "type": "array",
                        "items": _obj(
                            ["name", "row_count", "primary_key", "checksum"],
                            {
                                "name": STRING,
                                "row_count": {"type": "integer"},
                                "size_bytes": {"type": ["integer", "null"]},
                                "primary_key": {"type": "array", "items": STRING},
                                "depends_on": {"type": "array", "items": STRING},
                                "checksum": {"type": ["string", "null"]},
                            },
                        ),
                    }
                }
            ),
            DATA,
        ),
        f"{api}/table-schema": _post(
            "A table's columns and keys, enough to create it",
            table_body,
            _ok(
                {
                    "table": STRING,
                    "schema": _obj(
                        ["columns", "primary_key"],
                        {
                            "columns": {"type": "array", "items": COLUMN},
                            "primary_key": {"type": "array", "items": STRING},
                            "foreign_keys": {"type": "array"},
                            "unique": {"type": "array"},
                        },
                    ),
                }
            ),
            DATA,
        ),
        f"{api}/table-records": _post(
            "A preview of rows in primary-key order",
            _obj(
                ["auth_token_hash", "table_name"],
                {
                    "auth_token_hash": TOKEN_HASH,
                    "table_name": TABLE_NAME,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                    "offset": {"type": "integer", "minimum": 0},
                    "ids": {"type": "array"},
                    "id_start": {"type": ["string", "integer", "number"]},
                    "id_end": {"type": ["string", "integer", "number"]},
                },
            ),
            _ok(
                {
                    "table": STRING,
                    "records": {"type": "array", "items": {"type": "object"}},
                    "limit": {"type": "integer"},
                    "offset": {"type": "integer"},
                    "has_more": {"type": "boolean"},
                }
            ),
            DATA,
        ),
        f"{api}/pull-data": _post(
            "One page of a table: JSON, or a streamed PostgreSQL COPY body",
            _obj(
                ["auth_token_hash", "table_name"],
                {
                    "auth_token_hash": TOKEN_HASH,
                    "table_name": TABLE_NAME,
                    "conflict_strategy": {"type": "string", "maxLength": 32},
                    "after": {
                        "type": "array",
                        "description": "The previous page's next_cursor",
                    },
                    "limit": {"type": "integer", "minimum": 1},
                    "format": {
                        "type": "string",
                        "maxLength": 32,
                        "description": "pg_copy_binary or pg_copy_text asks for COPY data; anything else means JSON",
                    },
                },
            ),
            {
                "headers": COPY_HEADERS,
                "content": {
                    **_ok(
                        {
                            "table": STRING,
                            "data": {"type": "array", "items": {"type": "object"}},
                            "count": {"type": "integer"},
                            "has_more": {"type": "boolean"},
                            "next_cursor": {"type": ["array", "null"]},
                        }
                    )["content"],
                    "application/vnd.dbsync.pgcopy": {
                        "schema": {"type": "string", "format": "binary"}
                    },
                    "text/vnd.dbsync.pgcopy": {"schema": STRING},
                },
            },
            DATA,
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dbsync peer API",
            "version": "1",
            "description": "The calls sites make to each other (PROTOCOL.md). "
            "Every error body is {success: false, error, ...extras}. COPY answers "
            "of pull-data carry their metadata in X-Sync-* headers.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _obj(
                    ["success", "error"],
                    {
                        "success": {"const": False},
                        "error": STRING,
                        "fields": {"type": "array", "items": STRING},
                    },
                )
            }
        },
    }


class OpenAPI:
    """``GET {prefix}/sync/api/openapi.json``: the document, no token needed."""

    def __init__(self, prefix: str) -> None:
        self._doc = document(prefix)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._doc
