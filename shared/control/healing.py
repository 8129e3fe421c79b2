"""Heal pairs where one side missed a change: verify each connection, expire old ones."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import audit, connections
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.db import utcnow
from shared.security import short_hash
from shared.state.models import Connection

log = logging.getLogger("dbsync.healing")

NOT_FOUND_REASON = "Remote site reports connection not found"
NOT_FOUND_LIMIT = 2


def verifiable(site: Site) -> list[str]:
    """Connections worth asking the peer about.

    Not a registration awaiting its sender's confirmation: its one poll
    (a notice, retried until SYNC_REGISTER_CONFIRM_SECONDS) asks already.
    """
    with site.db.session() as session:
        rows = session.scalars(
            select(Connection.id).where(
                Connection.status.in_(("active", "suspended", "expired", "pending")),
                Connection.awaiting_confirmation.is_(False),
                or_(
                    Connection.direction == "receiver",
                    Connection.registration_status.in_(("registered", "pending")),
                ),
            )
        )
        ids = [str(r) for r in rows]
    return ids


def verify(site: Site, client: PeerClient, connection_id: str) -> str:
    """Ask the peer about one connection and record what it says.

    An unreachable peer never changes a status; two definite 404s in a row
    suspend the connection.
    """
    with site.db.session() as session:
        conn = session.get(Connection, uuid.UUID(connection_id))
        if conn is None or conn.status == "revoked":
            return "skipped"
        if conn.direction == "receiver" and conn.status == "pending":
            return "skipped"  # asking would activate the sender before we approve
        own = site.settings.site_url
        conn.last_verify_attempt_at = utcnow()
        try:
            if conn.direction == "sender":
                resp = client.post(
                    conn.site_url,
                    "verify-connection",
                    {"sender_url": own, "auth_token_hash": conn.auth_token_hash},
                    prefix=conn.peer_prefix,
                )
            else:
                resp = client.post(
                    conn.site_url,
                    "get-connection-status",
                    {"receiver_url": own, "auth_token_hash": conn.auth_token_hash},
                    prefix=conn.peer_prefix,
                )
        except (PeerUnavailable, PeerRefused) as ex:
            conn.last_verify_error = str(ex)[:500]
            log.info(
                "verify unreachable connection=%s hash=%s",
                conn.id,
                short_hash(conn.auth_token_hash),
            )
            return "unreachable"
        if conn.awaiting_confirmation and connections.disowned(resp.status, resp.body):
            connections.drop_unconfirmed(session, conn, connections.UNCONFIRMED_REASON)
            return "dropped"
        if resp.status == 404:
            conn.verify_not_found_count += 1
            conn.last_verify_error = "Connection not found at the peer"
            if conn.verify_not_found_count >= NOT_FOUND_LIMIT and conn.status in (
                "active",
                "pending",
                "expired",
            ):
                if _suspend(session, conn):
                    return "suspended"
            return "not_found"
        if resp.status != 200:
            conn.last_verify_error = resp.error[:500]
            return "error"
        conn.verify_not_found_count = 0
        connections.confirm(conn)
        conn.last_verify_error = None
        conn.last_verified_at = utcnow()
        if conn.direction == "receiver":
            remote = str(resp.body.get("status") or "")[:20]
            conn.remote_status = remote or None
            if remote == "revoked":
                if not connections.transition(
                    session,
                    conn,
                    "revoked",
                    connections.status_in(*connections.LIVE),
                    revoked_at=utcnow(),
                    revoked_reason="Revoked by the peer site",
                ):
                    return "ok"
                audit.record(
                    session,
                    "system",
                    "connection.revoked",
                    conn,
                    reason=conn.revoked_reason,
                )
                return "revoked"
        return "ok"


def _suspend(session: Session, conn: Connection) -> bool:
    moved = connections.transition(
        session,
        conn,
        "suspended",
        connections.status_in("active", "pending", "expired"),
        suspended_at=utcnow(),
        suspended_reason=NOT_FOUND_REASON,
        suspended_by="verify",
    )
    if moved:
        audit.record(
            session, "system", "connection.suspended", conn, reason=NOT_FOUND_REASON
        )
    return moved


def expire(site: Site) -> int:
    """Mark active connections past their expiry or their limits as expired."""
    now = utcnow()
    with site.db.session() as session:
        rows = list(
            session.scalars(
                select(Connection).where(
                    Connection.status == "active",
                    or_(
                        Connection.expires_at <= now,
                        Connection.downloads_used >= Connection.max_downloads,
                        Connection.records_downloaded >= Connection.max_records_total,
                    ),
                )
            )
        )
        for conn in rows:
            mark_expired(session, conn)
    return len(rows)


def drop_unconfirmed(site: Site) -> int:
    """Drop registrations whose sender has not confirmed the token in time.

    One pending its operator's approval waits for that approval (its sender
    is asked only then); the cap on unconfirmed registrations bounds those.
    """
    cutoff = utcnow() - dt.timedelta(seconds=site.settings.register_confirm_seconds)
    with site.db.session() as session:
        rows = list(
            session.scalars(
                select(Connection).where(
                    Connection.direction == "receiver",
                    Connection.awaiting_confirmation.is_(True),
                    Connection.status != "pending",
                    Connection.created_at <= cutoff,
                )
            )
        )
        for conn in rows:
            connections.drop_unconfirmed(
                session, conn, "the sender did not confirm the token in time"
            )
    return len(rows)


def mark_expired(session: Session, conn: Connection) -> None:
    moved = connections.transition(
        session,
        conn,
        "expired",
        connections.status_in("active"),
        expired_at=utcnow(),
    )
    if not moved:
        return
    reason = (
        "expired"
        if conn.expires_at and conn.expires_at <= utcnow()
        else "limit reached"
    )
    audit.record(session, "system", "connection.expired", conn, reason=reason)
