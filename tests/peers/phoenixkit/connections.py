"""PhoenixKit's connection records: lookups, creation, status changes.

Follows the facts file §2.1 (table, validation on create, self-connection
guard, status semantics, table_allowed?) and §5 (token, SSRF guard).
Nothing here enforces a state machine: PhoenixKit's changesets do not (§2.1).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
from typing import Any
from urllib.parse import urlsplit

import psycopg2

from tests.peers.phoenixkit.db import Database, uuid7

CONFLICT_STRATEGIES = ("skip", "overwrite", "merge", "append")
STATUSES = ("pending", "active", "suspended", "revoked", "expired")


class InvalidConnection(Exception):
    """A changeset error: the row is not written (the message says why)."""


def utc_now() -> dt.datetime:
    """PhoenixKit's UtilsDate.utc_now(): UTC, truncated to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def generate_token() -> str:
    """§5: 32 random bytes, URL-safe Base64 without padding (43 characters)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def hash_token(token: str) -> str:
    """§5: SHA-256, lower-case hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def table_allowed(conn: dict[str, Any], table: str) -> bool:
    """§2.1 helper semantics: not excluded, and in the allow-list if it has one."""
    excluded = conn.get("excluded_tables") or []
    allowed = conn.get("allowed_tables") or []
    return table not in excluded and (not allowed or table in allowed)


# -- §5 SSRF guard on site_url (Connection.validate_base_url) -------------------------


def url_error(url: Any, allow_internal: bool) -> str | None:
    """The changeset error for ``url``, or None when it passes."""
    if url is None or url == "":
        return None  # validate_required reports it instead
    if not isinstance(url, str):
        return "must be a string"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must use http or https scheme"
    host = parts.hostname
    if not host:
        return "must include a hostname"
    if allow_internal:
        return None
    if host.endswith(".local"):
        return "cannot point at .local mDNS hostnames (set allow_internal_urls if you need this)"
    if host == "localhost":
        return "cannot point at localhost (set allow_internal_urls if you need this)"
    if _internal_ip(host):
        return (
            "cannot point at private/loopback/link-local addresses "
            "(set allow_internal_urls if you need this)"
        )
    return None


# §5: the IP literal ranges the guard refuses.
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "::/128", "::1/128", "fe80::/10", "fc00::/7",
    )
)  # fmt: skip


def _internal_ip(host: str) -> bool:
    # Only strict literals are parsed; "2130706433", "0x7f.0.0.1", "127.1"
    # pass, the known gap of §5.
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in INTERNAL_NETWORKS)


def same_site(url_a: str, url_b: str) -> bool:
    """§2.1 self-connection guard: (scheme, host, port) after trimming and lower-casing."""

    def key(url: str) -> tuple[Any, ...]:
        url = url.rstrip("/").lower()
        parts = urlsplit(url)
        if not parts.hostname:
            return (None, url, None)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return (parts.scheme, parts.hostname, port)

    return key(url_a) == key(url_b)


# -- the table ------------------------------------------------------------------------


class Connections:
    """The phoenix_kit_sync_connections table of one stand-in."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, uuid: str) -> dict[str, Any] | None:
        return self._db.one(
            "SELECT * FROM phoenix_kit_sync_connections WHERE uuid::text = %s", (uuid,)
        )

    def list(self, direction: str | None = None) -> list[dict[str, Any]]:
        if direction:
            return self._db.rows(
                "SELECT * FROM phoenix_kit_sync_connections WHERE direction = %s "
                "ORDER BY inserted_at, uuid",
                (direction,),
            )
        return self._db.rows(
            "SELECT * FROM phoenix_kit_sync_connections ORDER BY inserted_at, uuid"
        )

    def find_by_hash_and_direction(
        self, token_hash: str, direction: str
    ) -> dict[str, Any] | None:
        """Connections.find_by_hash_and_direction/2 (repo.one)."""
        return self._one(
            "SELECT * FROM phoenix_kit_sync_connections "
            "WHERE auth_token_hash = %s AND direction = %s",
            (token_hash, direction),
        )

    def find_by_site_url_and_hash(
        self, site_url: str, token_hash: str
    ) -> dict[str, Any] | None:
        """Connections.find_by_site_url_and_hash/2: any direction (§1.5)."""
        return self._one(
            "SELECT * FROM phoenix_kit_sync_connections "
            "WHERE site_url = %s AND auth_token_hash = %s",
            (site_url, token_hash),
        )

    def find_by_site_url(self, site_url: str, direction: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM phoenix_kit_sync_connections "
            "WHERE site_url = %s AND direction = %s",
            (site_url, direction),
        )

    def _one(self, sql: str, params: Any) -> dict[str, Any] | None:
        rows = self._db.rows(sql, params)
        if len(rows) > 1:  # Ecto.MultipleResultsError
            raise RuntimeError("expected at most one result but got several")
        return rows[0] if rows else None

    def insert(self, attrs: dict[str, Any], token: str | None) -> dict[str, Any]:
        """Connection.changeset/2 + insert (§2.1 "Validation on create").

        Raises InvalidConnection on a changeset error (including the unique
        index on (site_url, direction)).
        """
        for field in ("name", "direction", "site_url"):
            if attrs.get(field) in (None, ""):
                raise InvalidConnection(f"{field} can't be blank")
        error = url_error(attrs["site_url"], self._db.allow_internal_urls())
        if error:
            raise InvalidConnection(f"site_url {error}")
        if attrs["direction"] not in ("sender", "receiver"):
            raise InvalidConnection("direction is invalid")
        if attrs.get("status", "pending") not in STATUSES:
            raise InvalidConnection("status is invalid")
        row = dict(attrs)
        row["uuid"] = str(uuid7())
        if isinstance(token, str) and token:
            row["auth_token_hash"] = hash_token(token)
        row.setdefault("metadata", {})
        row["metadata"] = json.dumps(row["metadata"])
        now = utc_now()
        row["inserted_at"] = row["updated_at"] = now
        names = ", ".join(row)
        marks = ", ".join(["%s"] * len(row))
        try:
            self._db.execute(
                f"INSERT INTO phoenix_kit_sync_connections ({names}) VALUES ({marks})",
                list(row.values()),
            )
        except psycopg2.errors.UniqueViolation:
            raise InvalidConnection("site_url has already been taken") from None
        created = self.get(row["uuid"])
        assert created is not None
        return created

    def update(self, uuid: Any, **changes: Any) -> dict[str, Any] | None:
        """Write ``changes`` (and updated_at); return the row after."""
        if "metadata" in changes:
            changes["metadata"] = json.dumps(changes["metadata"])
        changes["updated_at"] = utc_now()
        sets = ", ".join(f"{k} = %s" for k in changes)
        self._db.execute(
            f"UPDATE phoenix_kit_sync_connections SET {sets} WHERE uuid = %s",
            [*changes.values(), str(uuid)],
        )
        return self.get(str(uuid))

    def delete(self, uuid: Any) -> bool:
        return (
            self._db.execute(
                "DELETE FROM phoenix_kit_sync_connections WHERE uuid = %s", (str(uuid),)
            )
            == 1
        )
