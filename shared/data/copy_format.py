"""The bulk pull-data formats both sides name: wire names, COPY formats, media types."""

from __future__ import annotations

from sqlalchemy import Connection

BINARY = "pg_copy_binary"
TEXT = "pg_copy_text"
COPY_FORMATS = {BINARY: "binary", TEXT: "text"}
MEDIA_TYPES = {
    BINARY: "application/vnd.dbsync.pgcopy",
    TEXT: "text/vnd.dbsync.pgcopy",
}
ACCEPT = f"{MEDIA_TYPES[BINARY]}, {MEDIA_TYPES[TEXT]}, application/json"


def is_bulk(media_type: str) -> bool:
    return media_type in MEDIA_TYPES.values()


def utf8(conn: Connection) -> bool:
    """Whether COPY data can pass this connection unconverted (it speaks UTF-8)."""
    driver = conn.connection.driver_connection
    return getattr(driver, "encoding", None) in ("UTF8", "UNICODE")
