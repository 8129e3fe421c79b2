"""Declare the service's own tables: connections, transfers, audit, settings, outbox."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUSES = ("pending", "active", "suspended", "revoked", "expired")
# Who may have suspended a connection: this site's operator, this site's
# module switch, this site's verify job, or the peer (through update-status).
SUSPENDERS = ("operator", "module", "verify", "peer")
INCOMING_MODES = ("auto_accept", "require_approval", "require_password", "deny_all")
STRATEGIES = ("skip", "overwrite", "merge", "append")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


class Connection(Base):
    """One side of a pairing: a sender lets its peer pull, a receiver pulls."""

    __tablename__ = "dbsync_connections"
    __table_args__ = (
        UniqueConstraint(
            "site_url", "direction", name="uq_dbsync_connections_site_dir"
        ),
        UniqueConstraint(
            "auth_token_hash", "direction", name="uq_dbsync_connections_hash_dir"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(255))
    direction: Mapped[str] = mapped_column(String(10), index=True)
    site_url: Mapped[str] = mapped_column(String(2048))
    # The peer's API prefix ("/phoenix_kit"; "" for none); None: this site's own.
    peer_prefix: Mapped[str | None] = mapped_column(String(255))
    auth_token_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)

    allowed_tables: Mapped[list[str]] = mapped_column(JSON, default=list)
    excluded_tables: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[dt.datetime | None]
    max_downloads: Mapped[int | None]
    downloads_used: Mapped[int] = mapped_column(default=0)
    max_records_total: Mapped[int | None] = mapped_column(BigInteger)
    records_downloaded: Mapped[int] = mapped_column(BigInteger, default=0)
    max_records_per_request: Mapped[int] = mapped_column(default=100_000)
    rate_limit_requests_per_minute: Mapped[int] = mapped_column(default=60)
    ip_allowlist: Mapped[list[str]] = mapped_column(JSON, default=list)
    allowed_hours_start: Mapped[int | None]
    allowed_hours_end: Mapped[int | None]

    default_conflict_strategy: Mapped[str] = mapped_column(String(20), default="skip")
    create_missing_tables: Mapped[bool] = mapped_column(Boolean, default=True)

    approved_at: Mapped[dt.datetime | None]
    suspended_at: Mapped[dt.datetime | None]
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    # Who suspended it (SUSPENDERS): a peer may lift only its own suspension.
    suspended_by: Mapped[str | None] = mapped_column(String(20))
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    expired_at: Mapped[dt.datetime | None]
    last_connected_at: Mapped[dt.datetime | None]
    last_transfer_at: Mapped[dt.datetime | None]
    total_transfers: Mapped[int] = mapped_column(default=0)
    total_records_transferred: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes_transferred: Mapped[int] = mapped_column(BigInteger, default=0)

    # Outcome of registering at the receiver (sender side): queued, registered,
    # pending, failed; with the peer's reason when it failed.
    registration_status: Mapped[str | None] = mapped_column(String(20))
    registration_error: Mapped[str | None] = mapped_column(Text)
    # State of the last notification (status change) sent to the peer.
    peer_sync_status: Mapped[str | None] = mapped_column(String(20))
    peer_sync_error: Mapped[str | None] = mapped_column(Text)
    peer_sync_at: Mapped[dt.datetime | None]
    # Self-healing verification.
    last_verified_at: Mapped[dt.datetime | None]
    last_verify_attempt_at: Mapped[dt.datetime | None]
    last_verify_error: Mapped[str | None] = mapped_column(Text)
    verify_not_found_count: Mapped[int] = mapped_column(default=0)
    remote_status: Mapped[str | None] = mapped_column(String(20))
    # Signed control calls (shared/control/signing.py): the key both sides
    # derive from the raw token (a secret, like the token hash), and whether
    # the peer has signed a call; once it has, unsigned calls are refused.
    signing_key: Mapped[str | None] = mapped_column(String(64))
    peer_signs: Mapped[bool] = mapped_column(Boolean, default=False)
    # A receiver connection a caller registered, until its sender confirms the
    # token (its get-connection-status answers 200); a 404, or no answer
    # within SYNC_REGISTER_CONFIRM_SECONDS, drops it (handlers.register).
    awaiting_confirmation: Mapped[bool] = mapped_column(Boolean, default=False)

    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Transfer(Base):
    """A pull of one or more tables: ``receive`` on the puller, ``send`` on the owner."""

    __tablename__ = "dbsync_transfers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    direction: Mapped[str] = mapped_column(String(10), index=True)
    connection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dbsync_connections.id", ondelete="SET NULL"), index=True
    )
    connection_name: Mapped[str | None] = mapped_column(String(255))
    remote_site_url: Mapped[str | None] = mapped_column(String(2048))
    # The one table of a ``send`` transfer; receive transfers list theirs in
    # dbsync_transfer_tables.
    table_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    conflict_strategy: Mapped[str | None] = mapped_column(String(20))
    create_missing: Mapped[bool] = mapped_column(Boolean, default=True)
    requester_ip: Mapped[str | None] = mapped_column(String(64))
    records_expected: Mapped[int] = mapped_column(BigInteger, default=0)
    records_transferred: Mapped[int] = mapped_column(BigInteger, default=0)
    records_created: Mapped[int] = mapped_column(BigInteger, default=0)
    records_updated: Mapped[int] = mapped_column(BigInteger, default=0)
    records_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    records_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_transferred: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_per_second: Mapped[float | None]
    eta_seconds: Mapped[float | None]
    error_message: Mapped[str | None] = mapped_column(Text)
    # A running pull holds a lease its heartbeat renews every few seconds; a
    # worker killed mid-pull lets it lapse and another worker takes the pull up.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TransferTable(Base):
    """Progress and checkpoint of one table inside a receive transfer."""

    __tablename__ = "dbsync_transfer_tables"
    __table_args__ = (UniqueConstraint("transfer_id", "table_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dbsync_transfers.id", ondelete="CASCADE"), index=True
    )
    table_name: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    cursor: Mapped[Any | None] = mapped_column(JSON)
    pages_done: Mapped[int] = mapped_column(default=0)
    rows_expected: Mapped[int | None] = mapped_column(BigInteger)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[int] = mapped_column(BigInteger, default=0)
    updated: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    """Who changed what and why; never a secret."""

    __tablename__ = "dbsync_audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    connection_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    connection_name: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModuleSettings(Base):
    """The site's switches; one row. Safe defaults: disabled, require approval."""

    __tablename__ = "dbsync_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    incoming_mode: Mapped[str] = mapped_column(String(20), default="require_approval")
    incoming_password_hash: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AdminSettings(Base):
    """The admin console's password (argon2) and its session key; one row.

    No row, or no password, means the console is off. Setting a password
    makes a new session key, which ends every session signed with the old one.
    """

    __tablename__ = "dbsync_admin"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    session_key: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PeerNotice(Base):
    """A call owed to a peer, kept until delivered so no restart or outage loses it.

    ``payload`` carries the raw token and password of a registration, sealed
    (shared/sealing.py), only until the registration reaches a final outcome;
    they are wiped then.
    """

    __tablename__ = "dbsync_peer_notices"
    __table_args__ = (Index("ix_dbsync_peer_notices_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    connection_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    connection_name: Mapped[str | None] = mapped_column(String(255))
    site_url: Mapped[str] = mapped_column(String(2048))
    peer_prefix: Mapped[str | None] = mapped_column(String(255))
    auth_token_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None]


class Counter(Base):
    """A fixed-window counter shared by all web processes (throttles, rate limits)."""

    __tablename__ = "dbsync_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[dt.datetime]
    count: Mapped[int] = mapped_column(default=0)


class SiteKey(Base):
    """A key this site generated for itself (shared/sealing.py), kept once."""

    __tablename__ = "dbsync_site_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ControlNonce(Base):
    """A signed control call's nonce, kept while its timestamp is still accepted.

    A second call with the same nonce is a replay; rows older than the window
    are pruned as new ones arrive.
    """

    __tablename__ = "dbsync_control_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(index=True)


class BeatHeartbeat(Base):
    """When each of beat's jobs last ran, and when beat last started.

    Beat writes nothing anyone reads: without this row a site whose beat died
    looks healthy until a peer notices its verify or expiry never came.
    """

    __tablename__ = "dbsync_beat_heartbeats"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[dt.datetime]
    runs: Mapped[int] = mapped_column(BigInteger, default=0)


class Sync(Base):
    """A scheduled pull of a receiver connection's tables, run by beat.

    Each run is a receive transfer (``last_transfer_id``); a new run starts
    only when the last one has ended, so one sync never runs twice at once.
    """

    __tablename__ = "dbsync_syncs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dbsync_connections.id", ondelete="CASCADE"), index=True
    )
    tables: Mapped[list[str]] = mapped_column(JSON, default=list)
    all_tables: Mapped[bool] = mapped_column(Boolean, default=False)
    every_seconds: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(20), default="overwrite")
    mode: Mapped[str] = mapped_column(String(10), default="delta")
    mirror_deletes: Mapped[bool] = mapped_column(Boolean, default=False)
    cursor_column: Mapped[str | None] = mapped_column(String(255))
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    last_transfer_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    last_run_at: Mapped[dt.datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(20))
    last_error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(default=0)
    runs: Mapped[int] = mapped_column(default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


OWN_TABLES = frozenset(Base.metadata.tables)
