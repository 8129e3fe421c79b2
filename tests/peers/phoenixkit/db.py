"""Keep the stand-in's state where PhoenixKit keeps it: in the app's own database.

PhoenixKit's Sync module lives inside the host app and stores its connections,
transfers and settings in tables of the app's database, schema ``public``,
beside the app's data (facts file §2.1, §2.2, §2.3). The stand-in does the
same, in one PostgreSQL database: so its list-tables offers its own
``phoenix_kit_sync_connections`` and ``phoenix_kit_settings`` exactly as
PhoenixKit's does (§1.9).

What is the stand-in's and not PhoenixKit's (its app config and the test
switches) lives in a separate schema, ``standin``, which no PhoenixKit query
looks at.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

# §2.1 phoenix_kit_sync_connections, every column the facts list (the user
# foreign keys are kept as plain uuid columns: there is no users table here).
# §2.2 phoenix_kit_sync_transfers (connection_uuid ON DELETE SET NULL).
# §2.3 settings live in phoenix_kit_settings, one row per key.
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS phoenix_kit_settings (
    uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key varchar(255) NOT NULL UNIQUE,
    value text,
    date_added timestamp NOT NULL DEFAULT now(),
    date_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS phoenix_kit_sync_connections (
    uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(255) NOT NULL,
    direction varchar(10) NOT NULL,
    site_url varchar(255) NOT NULL,
    auth_token varchar(255),
    auth_token_hash varchar(255),
    status varchar(20) NOT NULL DEFAULT 'pending',
    approval_mode varchar(20) DEFAULT 'require_approval',
    allowed_tables varchar[] NOT NULL DEFAULT '{}',
    excluded_tables varchar[] NOT NULL DEFAULT '{}',
    auto_approve_tables varchar[] NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    max_downloads integer,
    downloads_used integer NOT NULL DEFAULT 0,
    max_records_total bigint,
    records_downloaded bigint NOT NULL DEFAULT 0,
    max_records_per_request integer NOT NULL DEFAULT 10000,
    rate_limit_requests_per_minute integer NOT NULL DEFAULT 60,
    download_password_hash varchar(255),
    ip_whitelist varchar[] NOT NULL DEFAULT '{}',
    allowed_hours_start integer,
    allowed_hours_end integer,
    default_conflict_strategy varchar(20) DEFAULT 'skip',
    auto_sync_enabled boolean NOT NULL DEFAULT false,
    auto_sync_tables varchar[] NOT NULL DEFAULT '{}',
    auto_sync_interval_minutes integer NOT NULL DEFAULT 60,
    approved_at timestamptz,
    suspended_at timestamptz,
    revoked_at timestamptz,
    suspended_reason varchar(255),
    revoked_reason varchar(255),
    last_connected_at timestamptz,
    last_transfer_at timestamptz,
    total_transfers integer NOT NULL DEFAULT 0,
    total_records_transferred bigint NOT NULL DEFAULT 0,
    total_bytes_transferred bigint NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    approved_by_uuid uuid,
    suspended_by_uuid uuid,
    revoked_by_uuid uuid,
    created_by_uuid uuid,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS phoenix_kit_sync_connections_site_direction_uidx
    ON phoenix_kit_sync_connections (site_url, direction);
CREATE INDEX IF NOT EXISTS phoenix_kit_sync_connections_status_index
    ON phoenix_kit_sync_connections (status);
CREATE INDEX IF NOT EXISTS phoenix_kit_sync_connections_direction_index
    ON phoenix_kit_sync_connections (direction);
CREATE INDEX IF NOT EXISTS phoenix_kit_sync_connections_expires_at_index
    ON phoenix_kit_sync_connections (expires_at);
CREATE TABLE IF NOT EXISTS phoenix_kit_sync_transfers (
    uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    direction varchar(10) NOT NULL,
    session_code varchar(20),
    remote_site_url varchar(255),
    table_name varchar(255) NOT NULL,
    records_requested integer NOT NULL DEFAULT 0,
    records_transferred integer NOT NULL DEFAULT 0,
    records_created integer NOT NULL DEFAULT 0,
    records_updated integer NOT NULL DEFAULT 0,
    records_skipped integer NOT NULL DEFAULT 0,
    records_failed integer NOT NULL DEFAULT 0,
    bytes_transferred bigint NOT NULL DEFAULT 0,
    conflict_strategy varchar(20),
    status varchar(20) NOT NULL DEFAULT 'pending',
    requires_approval boolean NOT NULL DEFAULT false,
    approved_at timestamptz,
    denied_at timestamptz,
    approval_expires_at timestamptz,
    denial_reason varchar(255),
    requester_ip varchar(255),
    requester_user_agent varchar(255),
    error_message text,
    started_at timestamptz,
    completed_at timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}',
    connection_uuid uuid REFERENCES phoenix_kit_sync_connections(uuid)
        ON DELETE SET NULL,
    approved_by_uuid uuid,
    denied_by_uuid uuid,
    initiated_by_uuid uuid,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE SCHEMA IF NOT EXISTS standin;
CREATE TABLE IF NOT EXISTS standin.config (key text PRIMARY KEY, value text NOT NULL);
"""

# The stand-in's own configuration (standin.config). PhoenixKit reads these
# from its application config, not from the database (§2.3 "Other app
# config", §1.1, §3.2, §5); the stand-in keeps them in its database so its
# server and its client commands, separate processes, read the same values.
CONFIG_DEFAULTS: dict[str, str] = {
    # §1.1: routes sit under the host's PhoenixKit URL prefix, default /phoenix_kit.
    "url_prefix": "/phoenix_kit",
    # §3.2: config :phoenix_kit_sync, remote_url_prefix. Unset (this
    # sentinel) mirrors the local prefix; "" or "/" means no prefix.
    "remote_url_prefix": "(unset)",
    # §5: config :phoenix_kit_sync, allow_internal_urls.
    "allow_internal_urls": "false",
    # Test switch, not PhoenixKit: leave out every Nth row of each pull-data
    # and table-records answer (by integer id where there is one; "0" = off),
    # so a receiver's checks can be shown to notice rows lost on the way.
    "drop_every": "0",
}

# §2.3: setting keys and their defaults.
SETTING_DEFAULTS: dict[str, str] = {
    "sync_enabled": "false",
    "sync_incoming_mode": "require_approval",
    "sync_incoming_password": "",
}

INCOMING_MODES = ("auto_accept", "require_approval", "require_password", "deny_all")


def plain_url(url: str) -> str:
    """A libpq URL from an SQLAlchemy one (``postgresql+psycopg2://`` and friends)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def uuid7() -> uuid.UUID:
    """A UUIDv7, as PhoenixKit's ``uuid_generate_v7()`` default makes (§2.1)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


class Database:
    """A small pool of psycopg2 connections to the stand-in's database."""

    def __init__(self, url: str, max_connections: int = 8) -> None:
        self.url = plain_url(url)
        self._pool = psycopg2.pool.ThreadedConnectionPool(1, max_connections, self.url)

    def close(self) -> None:
        self._pool.closeall()

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[Any]:
        """A pooled connection, in UTC; committed on success, rolled back on error."""
        conn = self._pool.getconn()
        try:
            conn.autocommit = autocommit
            with conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
            if not autocommit:
                conn.commit()
            yield conn
            if not autocommit:
                conn.commit()
        except BaseException:
            if not conn.closed and not autocommit:
                conn.rollback()
            raise
        finally:
            self._pool.putconn(conn, close=bool(conn.closed))

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with (
            self.connection() as conn,
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()] if cur.description else []

    def one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def execute(self, sql: str, params: Any = None) -> int:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    # -- schema, settings, config ----------------------------------------------

    def install(self) -> None:
        """Create PhoenixKit's tables and the stand-in's config (idempotent)."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7241)")
            cur.execute(SCHEMA_SQL)

    def setting(self, key: str) -> str | None:
        """A phoenix_kit_settings value; any read error counts as unset (§2.3)."""
        try:
            row = self.one(
                "SELECT value FROM phoenix_kit_settings WHERE key = %s", (key,)
            )
        except psycopg2.Error:
            return None
        if row is None:
            return SETTING_DEFAULTS.get(key)
        return row["value"]

    def set_setting(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO phoenix_kit_settings (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
            "date_updated = now()",
            (key, value),
        )

    def config(self, key: str) -> str:
        row = self.one("SELECT value FROM standin.config WHERE key = %s", (key,))
        return row["value"] if row else CONFIG_DEFAULTS[key]

    def set_config(self, key: str, value: str) -> None:
        if key not in CONFIG_DEFAULTS:
            raise KeyError(f"unknown stand-in config key {key!r}")
        self.execute(
            "INSERT INTO standin.config (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    # §2.3: sync_enabled is a boolean; any read error counts as false.
    def enabled(self) -> bool:
        return (self.setting("sync_enabled") or "").lower() == "true"

    def incoming_mode(self) -> str:
        return self.setting("sync_incoming_mode") or "require_approval"

    def url_prefix(self) -> str:
        return normalize_prefix(self.config("url_prefix"))

    def remote_url_prefix(self) -> str:
        """§3.2: the configured remote prefix, else the local one, normalised."""
        configured = self.config("remote_url_prefix")
        if configured == CONFIG_DEFAULTS["remote_url_prefix"]:
            return self.url_prefix()
        return normalize_prefix(configured)

    def allow_internal_urls(self) -> bool:
        return self.config("allow_internal_urls").lower() == "true"

    def drop_every(self) -> int:
        return int(self.config("drop_every") or 0)


def normalize_prefix(prefix: str) -> str:
    """§3.2: leading ``/`` ensured, trailing ``/`` removed, ``""``/``"/"`` -> no prefix."""
    cleaned = prefix.strip().rstrip("/")
    if not cleaned:
        return ""
    return cleaned if cleaned.startswith("/") else "/" + cleaned


def as_json(value: Any) -> str:
    return json.dumps(value, default=str)
