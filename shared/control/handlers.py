"""Answer the control calls peers make: register, status, update, delete, verify.

Each handler checks in the protocol's order and raises SyncError with its exact
wording; the web front only parses and serialises.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import audit, connections, counters, module, notices, signing
from shared.control.signing import Proof
from shared.db import utcnow
from shared.errors import ErrorKind, SyncError
from shared.security import (
    UnsafeURL,
    check_url,
    hash_token,
    normalise_url,
    same_secret,
    verify_password,
)
from shared.state.models import Connection, PeerNotice
from shared.validation import Field, validate

TOKEN_HASH = Field("auth_token_hash", str, required=True, max_length=128)
REGISTER_FIELDS = [
    Field("sender_url", str, required=True, max_length=2048),
    Field("connection_name", str, required=True, max_length=255),
    Field("auth_token", str, required=True, max_length=512),
    Field("password", str, max_length=1024),
]
PEER_FIELDS = [Field("sender_url", str, required=True, max_length=2048), TOKEN_HASH]
UPDATE_FIELDS = PEER_FIELDS + [Field("status", str, required=True, max_length=32)]
STATUS_FIELDS = [Field("receiver_url", str, required=True, max_length=2048), TOKEN_HASH]
PEER_STATUSES = ("active", "suspended", "revoked")


TOUCH_EVERY = dt.timedelta(seconds=60)
# How long get-connection-status waits for a registration still in flight.
REGISTRATION_WAIT_SECONDS = 10

log = logging.getLogger("dbsync.control")


def disabled() -> SyncError:
    return SyncError(ErrorKind.DISABLED, "DB Sync module is disabled")


def not_found(message: str = "Connection not found", **extra: Any) -> SyncError:
    return SyncError(ErrorKind.NOT_FOUND, message, extra=extra)


def touch(conn: Connection, now: dt.datetime) -> None:
    """Record contact, at most once a minute: a frequent caller need not write."""
    if conn.last_connected_at is None or now - conn.last_connected_at >= TOUCH_EVERY:
        conn.last_connected_at = now


def require_enabled(session: Session) -> None:
    if not module.get(session).enabled:
        raise disabled()


def register(
    session: Session,
    site: Site,
    body: Mapping[str, Any],
    proof: Proof,
    *,
    remote_ip: str,
    user_agent: str | None,
) -> dict[str, Any]:
    settings = module.get(session)
    if not settings.enabled:
        raise disabled()
    if settings.incoming_mode == "deny_all":
        raise SyncError(ErrorKind.FORBIDDEN, "Incoming connections are not allowed")
    data = validate(body, REGISTER_FIELDS)
    try:
        sender_url = check_url(
            data["sender_url"],
            allow_private=site.settings.allow_private_urls,
            own_url=site.settings.site_url,
            allow_plain_http=site.settings.allow_plain_http,
        )
    except UnsafeURL:
        raise SyncError(ErrorKind.BAD_REQUEST, "Invalid sender_url") from None
    _limit_registrations(session, site, remote_ip)
    if settings.incoming_mode == "require_password":
        _check_password(
            site, settings.incoming_password_hash, data["password"], remote_ip
        )
    key = signing.derive_key(data["auth_token"])
    if proof.signed:
        signing.check(site.db.engine, key, proof)
    clash = session.scalar(
        select(Connection.id).where(
            Connection.site_url == sender_url, Connection.direction == "receiver"
        )
    )
    if clash is not None:
        raise SyncError(ErrorKind.CONFLICT, "A connection already exists")
    pending = settings.incoming_mode == "require_approval"
    now = utcnow()
    conn = Connection(
        name=data["connection_name"],
        direction="receiver",
        site_url=sender_url,
        peer_prefix=PHOENIXKIT_PREFIX if _phoenixkit(user_agent) else None,
        auth_token_hash=hash_token(data["auth_token"]),
        signing_key=key,
        peer_signs=proof.signed,
        status="pending" if pending else "active",
        approved_at=None if pending else now,
        last_connected_at=now,
        awaiting_confirmation=True,
        meta={
            "registered_via": "api",
            "registered_at": now.isoformat(),
            "remote_ip": remote_ip,
            "user_agent": (user_agent or "unknown")[:255],
        },
    )
    session.add(conn)
    try:
        session.flush()
    except IntegrityError:
        raise SyncError(ErrorKind.CONFLICT, "A connection already exists") from None
    audit.record(
        session,
        "peer",
        "connection.registered",
        conn,
        incoming_mode=settings.incoming_mode,
    )
    if not pending:
        # Tell the sender we accepted: it activates its side when we poll it.
        notices.owe(session, site, conn, "poll_status", {})
    message = (
        "Connection registered and awaiting approval"
        if pending
        else "Connection registered and activated"
    )
    return {
        "success": True,
        "message": message,
        "connection_status": conn.status,
        "connection_uuid": str(conn.id),
    }


def _check_password(
    site: Site, password_hash: str | None, password: str | None, remote_ip: str
) -> None:
    """Check the incoming password, counting failures per caller address.

    Each guess takes its place in the count before it is checked, in one
    locked step, so guesses sent in parallel cannot all pass the limit; a
    right password gives its place back.
    """
    s = site.settings
    key = f"register-fail:{remote_ip}"
    wait = counters.take(
        site.db.engine, key, s.register_max_failures, s.register_failure_window_seconds
    )
    if wait is not None:
        raise SyncError(
            ErrorKind.THROTTLED, "Too many failed attempts", retry_after=wait
        )
    if not password_hash or not password:
        raise SyncError(ErrorKind.UNAUTHORIZED, "Password required")
    if not verify_password(password_hash, password):
        raise SyncError(ErrorKind.UNAUTHORIZED, "Invalid password")
    counters.give_back(site.db.engine, key)


def _limit_registrations(session: Session, site: Site, remote_ip: str) -> None:
    """Refuse a registration past this site's limits (429 with Retry-After).

    Each accepted registration makes this site call the URL it names, so a
    stranger may make only so many: per caller address and in total per
    window, and no more than a cap of registrations still unconfirmed
    (pending approval, or awaiting their sender's confirmation).
    """
    s = site.settings
    engine = site.db.engine
    window = s.register_window_seconds
    wait = counters.take_all(
        engine,
        [
            (f"register-from:{remote_ip}", s.register_per_address, window),
            ("register-all", s.register_total, window),
        ],
    )
    if wait is not None:
        raise SyncError(ErrorKind.THROTTLED, "Too many registrations", retry_after=wait)
    unconfirmed = session.scalar(
        select(func.count())
        .select_from(Connection)
        .where(
            Connection.direction == "receiver",
            Connection.awaiting_confirmation.is_(True),
        )
    )
    if (unconfirmed or 0) >= s.register_max_unconfirmed:
        raise SyncError(
            ErrorKind.THROTTLED,
            "Too many registrations awaiting confirmation",
            retry_after=s.register_confirm_seconds,
        )


def _by_site_and_hash(session: Session, site_url: str, token_hash: str) -> Connection:
    try:
        url = normalise_url(site_url)
    except ValueError:
        raise not_found() from None
    for conn in session.scalars(
        select(Connection).where(
            Connection.site_url == url, Connection.auth_token_hash == token_hash
        )
    ):
        if same_secret(conn.auth_token_hash, token_hash):
            return conn
    raise not_found()


def authenticate(site: Site, conn: Connection, proof: Proof) -> None:
    """Check a control call's signature, then the connection's control rate limit.

    A connection whose peer has signed once refuses unsigned calls from then
    on (see shared/control/signing.py). The rate limit counts the calls that
    got this far, in a window of their own (a flood of control calls never
    eats into a pull's budget, nor the other way round).
    """
    if proof.signed and conn.signing_key:
        signing.check(site.db.engine, conn.signing_key, proof)
        if not conn.peer_signs:
            conn.peer_signs = True
            log.info("peer signs its control calls connection=%s", conn.id)
    elif conn.peer_signs:
        raise SyncError(ErrorKind.UNAUTHORIZED, "Signature required")
    wait = counters.take(
        site.db.engine,
        f"control:{conn.id}",
        conn.rate_limit_requests_per_minute,
        60,
    )
    if wait is not None:
        raise SyncError(ErrorKind.THROTTLED, "Rate limit exceeded", retry_after=wait)


def _phoenixkit(user_agent: str | None) -> bool:
    """Whether a registering sender is a PhoenixKit site: its client names
    itself so. Its API answers under PhoenixKit's default prefix, whatever
    this site's own (an operator may change a connection's peer_prefix)."""
    return (user_agent or "").startswith("PhoenixKit-Sync/")


# A registration the receiver accepted: it answered register-connection with
# success (the connection is active there, or pending its operator's approval).
ACCEPTED_REGISTRATIONS = ("registered", "pending")
PHOENIXKIT_PREFIX = "/phoenix_kit"  # PhoenixKit's default URL prefix


def connection_status(
    session: Session, site: Site, body: Mapping[str, Any], proof: Proof
) -> dict[str, Any]:
    require_enabled(session)
    data = validate(body, STATUS_FIELDS)
    conn = session.scalar(
        select(Connection).where(
            Connection.auth_token_hash == data["auth_token_hash"],
            Connection.direction == "sender",
        )
    )
    if conn is None or not same_secret(conn.auth_token_hash, data["auth_token_hash"]):
        raise not_found()
    try:
        receiver_url = normalise_url(data["receiver_url"])
    except ValueError:
        raise not_found() from None
    if receiver_url != conn.site_url:
        raise not_found()
    # Before any write here: a write would lock the row the delivery we may
    # wait for must update, and each would wait for the other.
    activate = conn.status == "pending" and _accepted(session, conn)
    authenticate(site, conn, proof)
    now = utcnow()
    touch(conn, now)
    if activate:
        reason = "receiver queried connection status"
        moved = connections.transition(
            session,
            conn,
            "active",
            connections.status_in("pending"),
            approved_at=now,
            meta={
                **(conn.meta or {}),
                "auto_activated": True,
                "auto_activated_at": now.isoformat(),
                "auto_activated_reason": reason,
            },
        )
        if moved:
            audit.record(session, "peer", "connection.activated", conn, reason=reason)
    return {"success": True, "status": conn.status, "name": conn.name}


def _accepted(session: Session, conn: Connection) -> bool:
    """Whether the receiver accepted this connection's registration.

    Its poll can arrive before this site has recorded the answer to
    register-connection (the receiver polls as soon as it commits): a
    registration still being delivered holds its notice's row lock, so wait
    for that delivery to finish, then read the outcome it recorded.
    """
    if conn.registration_status in ACCEPTED_REGISTRATIONS:
        return True
    if session.get_bind().dialect.name != "postgresql":
        return False
    try:
        with session.begin_nested():
            session.execute(
                text(f"SET LOCAL lock_timeout = '{REGISTRATION_WAIT_SECONDS}s'")
            )
            session.scalars(
                select(PeerNotice.id)
                .where(
                    PeerNotice.connection_id == conn.id,
                    PeerNotice.kind == "register",
                    PeerNotice.state.in_(notices.OPEN_STATES),
                )
                .with_for_update()
            ).all()
    except OperationalError:
        return False  # still being delivered: not accepted yet
    session.refresh(conn)
    return conn.registration_status in ACCEPTED_REGISTRATIONS


def update_status(
    session: Session, site: Site, body: Mapping[str, Any], proof: Proof
) -> dict[str, Any]:
    """Mirror the peer's decision, as far as the peer may decide (PROTOCOL.md).

    The peer may revoke, suspend an active connection, and lift a suspension
    it made itself; never one made here, and nothing leaves revoked.
    """
    require_enabled(session)
    data = validate(body, UPDATE_FIELDS)
    status = data["status"]
    if status not in PEER_STATUSES:
        raise SyncError(ErrorKind.BAD_REQUEST, "Invalid status value")
    conn = _by_site_and_hash(session, data["sender_url"], data["auth_token_hash"])
    authenticate(site, conn, proof)
    now = utcnow()
    if status == "revoked":
        moved = connections.transition(
            session,
            conn,
            "revoked",
            connections.status_in(*connections.LIVE),
            revoked_at=now,
            revoked_reason="Revoked by the peer site",
        )
    elif status == "suspended":
        moved = connections.transition(
            session,
            conn,
            "suspended",
            connections.status_in("active"),
            suspended_at=now,
            suspended_reason="Suspended by the peer site",
            suspended_by="peer",
        )
    else:
        moved = connections.transition(
            session,
            conn,
            "active",
            and_(Connection.status == "suspended", Connection.suspended_by == "peer"),
            suspended_at=None,
            suspended_reason=None,
            suspended_by=None,
        )
    if conn.status == "revoked" and status != "revoked":
        raise SyncError(ErrorKind.CONFLICT, "Connection is revoked")
    if status == "active" and conn.status == "suspended":
        raise SyncError(ErrorKind.CONFLICT, "Connection was suspended by this site")
    # A pending connection stays pending: approval is this site's decision.
    conn.remote_status = status
    if moved:
        audit.record(
            session,
            "peer",
            f"connection.{_verb(status)}",
            conn,
            reason=f"peer set status {status}",
        )
    return {"success": True, "message": f"Status updated to {status}"}


def _verb(status: str) -> str:
    return {"active": "reactivated", "suspended": "suspended", "revoked": "revoked"}[
        status
    ]


def delete(
    session: Session, site: Site, body: Mapping[str, Any], proof: Proof
) -> dict[str, Any]:
    require_enabled(session)
    data = validate(body, PEER_FIELDS)
    conn = _by_site_and_hash(session, data["sender_url"], data["auth_token_hash"])
    authenticate(site, conn, proof)
    audit.record(
        session, "peer", "connection.deleted", conn, reason="deleted by the peer site"
    )
    notices.cancel_for(session, conn.id, keep_kind="")
    session.delete(conn)
    return {"success": True, "message": "Connection deleted"}


def verify(
    session: Session, site: Site, body: Mapping[str, Any], proof: Proof
) -> dict[str, Any]:
    require_enabled(session)
    data = validate(body, PEER_FIELDS)
    try:
        conn = _by_site_and_hash(session, data["sender_url"], data["auth_token_hash"])
    except SyncError:
        raise not_found("Connection not found", exists=False) from None
    authenticate(site, conn, proof)
    touch(conn, utcnow())
    return {"success": True, "exists": True}
