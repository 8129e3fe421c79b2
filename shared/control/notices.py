"""Deliver what a site owes its peers: registrations, status changes, deletions.

A notice is a row written in the same transaction as the change it reports, so
it survives a crash, a restart and a peer that is down for hours. A worker
delivers it right after commit; transient failures are retried with
exponential backoff and jitter until the configured horizon; the beat sweep
re-dispatches any notice whose retry was lost with a killed worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import sealing
from shared.backoff import backoff
from shared.context import Site
from shared.control.peer import PeerClient, PeerRefused, PeerResponse, PeerUnavailable
from shared.db import after_commit, utcnow
from shared.security import short_hash
from shared.state.models import Connection, PeerNotice
from shared.untrusted import safe_text, short_word

log = logging.getLogger("dbsync.notices")

OPEN_STATES = ("queued", "retrying")
# What a notice keeps only sealed (shared/sealing.py): a registration's raw
# token and the receiver's password.
SEALED = ("auth_token", "password")
ENDPOINTS = {
    "register": "register-connection",
    "update_status": "update-status",
    "delete": "delete-connection",
    "poll_status": "get-connection-status",
}


def owe(
    session: Session, site: Site, conn: Connection, kind: str, payload: dict[str, Any]
) -> PeerNotice:
    """Record a call owed to the peer and dispatch it once this transaction commits."""
    if kind == "update_status":
        # Only the newest status matters; an older one still queued is moot.
        session.execute(
            update(PeerNotice)
            .where(
                PeerNotice.connection_id == conn.id,
                PeerNotice.kind == "update_status",
                PeerNotice.state.in_(OPEN_STATES),
            )
            .values(state="superseded", payload={})
        )
    secrets = {k: payload[k] for k in SEALED if payload.get(k)}
    if secrets:
        sealed = sealing.seal(session, site.settings.secret_key, secrets)
        payload = {k: v for k, v in payload.items() if k not in SEALED}
        payload["sealed"] = sealed
    notice = PeerNotice(
        kind=kind,
        connection_id=conn.id,
        connection_name=conn.name,
        site_url=conn.site_url,
        peer_prefix=conn.peer_prefix,
        auth_token_hash=conn.auth_token_hash,
        payload=payload,
        state="queued",
        next_attempt_at=utcnow(),
    )
    session.add(notice)
    session.flush()
    if kind in ("update_status", "delete"):
        conn.peer_sync_status = "queued"
        conn.peer_sync_error = None
    notice_id = notice.id
    after_commit(session, lambda: site.dispatcher.deliver_notice(notice_id))
    return notice


def cancel_for(session: Session, connection_id: uuid.UUID, keep_kind: str) -> None:
    session.execute(
        update(PeerNotice)
        .where(
            PeerNotice.connection_id == connection_id,
            PeerNotice.kind != keep_kind,
            PeerNotice.state.in_(OPEN_STATES),
        )
        .values(state="cancelled", payload={})
    )


@dataclass(frozen=True)
class Outcome:
    state: str
    retry_in: float | None = None


def deliver(site: Site, client: PeerClient, notice_id: int) -> Outcome:
    """Try one notice once; say whether and when to try again.

    Every try ends in a recorded outcome: whatever goes wrong (a peer's
    answer this site cannot read, a failure to record it) counts as an
    attempt, retried with backoff until the notice's horizon.
    """
    try:
        return _deliver(site, client, notice_id)
    except Exception as ex:
        log.exception("notice id=%s: unexpected error", notice_id)
        return _after_error(site, notice_id, f"{type(ex).__name__}: {ex}")


def _deliver(site: Site, client: PeerClient, notice_id: int) -> Outcome:
    with site.db.session() as session:
        notice = _open_notice(session, notice_id)
        if notice is None:
            return Outcome("done")
        now = utcnow()
        if notice.next_attempt_at > now + dt.timedelta(seconds=1):
            return Outcome("not_due")
        conn = _connection(session, notice)
        try:
            body = _request_body(site, session, notice)
        except sealing.Unsealable as ex:
            _finish(notice, conn, "failed", f"cannot open the sealed token: {ex}")
            log.warning("notice failed id=%s: %s", notice.id, ex)
            return Outcome("failed")
        endpoint = ENDPOINTS[notice.kind]
        try:
            resp = client.post(
                notice.site_url, endpoint, body, prefix=notice.peer_prefix
            )
        except PeerRefused as ex:
            _finish(notice, conn, "failed", str(ex))
            return Outcome("failed")
        except PeerUnavailable as ex:
            return _retry(site, notice, conn, now, str(ex), ex.retry_after)
        if resp.status == 200 and not isinstance(resp.body.get("success"), bool):
            # A 200 whose body is no protocol answer (not JSON, nested too
            # deep to read): the peer is not working right, which may pass.
            return _retry(
                site, notice, conn, now, f"{endpoint}: invalid answer (HTTP 200)", None
            )
        notice.attempts += 1
        notice.http_status = resp.status
        state = _apply(session, notice, conn, resp)
        log.info(
            "notice %s id=%s kind=%s hash=%s http=%s",
            state,
            notice.id,
            notice.kind,
            short_hash(notice.auth_token_hash),
            resp.status,
        )
        return Outcome(state)


def _open_notice(session: Session, notice_id: int) -> PeerNotice | None:
    """The notice, locked, if it is still to be delivered."""
    stmt = select(PeerNotice).where(PeerNotice.id == notice_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    notice = session.scalar(stmt)
    if notice is None or notice.state not in OPEN_STATES:
        return None
    return notice


def _connection(session: Session, notice: PeerNotice) -> Connection | None:
    if notice.connection_id is None:
        return None
    return session.get(Connection, notice.connection_id)


def _after_error(site: Site, notice_id: int, error: str) -> Outcome:
    """Count a try that ended in an unexpected error, in a session of its own."""
    with site.db.session() as session:
        notice = _open_notice(session, notice_id)
        if notice is None:
            return Outcome("done")
        return _retry(site, notice, _connection(session, notice), utcnow(), error, None)


def _retry(
    site: Site,
    notice: PeerNotice,
    conn: Connection | None,
    now: dt.datetime,
    error: str,
    hint: float | None,
) -> Outcome:
    """Count a failed try; schedule the next one, or give up past the horizon."""
    notice.attempts += 1
    notice.last_error = safe_text(error, 500)
    horizon = notice.created_at + dt.timedelta(
        seconds=site.settings.retry_horizon_seconds
    )
    delay = backoff(
        notice.attempts,
        site.settings.retry_base_seconds,
        site.settings.retry_max_seconds,
        hint=hint,
    )
    if now + dt.timedelta(seconds=delay) > horizon:
        _finish(notice, conn, "gave_up", f"peer unreachable: {notice.last_error}")
        log.warning(
            "notice gave up id=%s kind=%s hash=%s attempts=%s",
            notice.id,
            notice.kind,
            short_hash(notice.auth_token_hash),
            notice.attempts,
        )
        return Outcome("gave_up")
    notice.state = "retrying"
    notice.next_attempt_at = now + dt.timedelta(seconds=delay)
    if conn is not None and notice.kind in ("update_status", "delete"):
        conn.peer_sync_status = "retrying"
        conn.peer_sync_error = notice.last_error
    log.info(
        "notice retry id=%s kind=%s hash=%s attempt=%s in=%.1fs",
        notice.id,
        notice.kind,
        short_hash(notice.auth_token_hash),
        notice.attempts,
        delay,
    )
    return Outcome("retrying", delay)


def _request_body(site: Site, session: Session, notice: PeerNotice) -> dict[str, Any]:
    own = site.settings.site_url
    if notice.kind == "register":
        payload = dict(notice.payload)
        if payload.get("sealed"):
            payload.update(
                sealing.open_sealed(
                    session, site.settings.secret_key, payload["sealed"]
                )
            )
        body = {
            "sender_url": own,
            "connection_name": payload.get("connection_name") or notice.connection_name,
            "auth_token": payload.get("auth_token"),
        }
        if payload.get("password"):
            body["password"] = payload["password"]
        return body
    if notice.kind == "poll_status":
        return {"receiver_url": own, "auth_token_hash": notice.auth_token_hash}
    body = {"sender_url": own, "auth_token_hash": notice.auth_token_hash}
    if notice.kind == "update_status":
        body["status"] = notice.payload["status"]
        if notice.payload.get("reason"):
            body["reason"] = notice.payload["reason"]
    return body


def _finish(
    notice: PeerNotice, conn: Connection | None, state: str, error: str | None
) -> None:
    error = safe_text(error, 500) if error else None
    notice.state = state
    notice.last_error = error
    notice.payload = {}  # wipes a registration's raw token and password
    if state == "delivered":
        notice.delivered_at = utcnow()
    if conn is None:
        return
    if notice.kind == "register":
        if state != "delivered":
            conn.registration_status = "failed"
            conn.registration_error = error
    elif notice.kind in ("update_status", "delete"):
        conn.peer_sync_status = state
        conn.peer_sync_error = error
        conn.peer_sync_at = utcnow()


def _apply(
    session: Session, notice: PeerNotice, conn: Connection | None, resp: PeerResponse
) -> str:
    from shared.control import audit

    ok = resp.status == 200 and resp.body.get("success") is True
    if notice.kind == "register":
        if not ok:
            _finish(notice, conn, "failed", resp.error)
            if conn is not None:
                audit.record(
                    session,
                    "system",
                    "connection.registration_failed",
                    conn,
                    reason=safe_text(resp.error, 500),
                )
            return "failed"
        _finish(notice, conn, "delivered", None)
        if conn is not None:
            pending = resp.body.get("connection_status") == "pending"
            conn.registration_status = "pending" if pending else "registered"
            conn.registration_error = None
            conn.meta = {
                **(conn.meta or {}),
                "remote_connection_uuid": short_word(
                    resp.body.get("connection_uuid"), 64
                ),
                "registered_at": utcnow().isoformat(),
            }
            audit.record(
                session,
                "system",
                "connection.registered",
                conn,
                remote_status=conn.registration_status,
            )
        return "delivered"
    if notice.kind == "delete":
        # Already gone at the peer is as good as deleted.
        if ok or resp.status == 404:
            _finish(notice, conn, "delivered", None)
            return "delivered"
        _finish(notice, conn, "failed", resp.error)
        return "failed"
    if notice.kind == "poll_status":
        from shared.control import connections

        if ok:
            _finish(notice, None, "delivered", None)
            if conn is not None:
                conn.remote_status = safe_text(str(resp.body.get("status")), 20)
                conn.last_verified_at = utcnow()
                connections.confirm(conn)
            return "delivered"
        _finish(notice, None, "failed", resp.error)
        disowned = connections.disowned(resp.status, resp.body)
        if disowned and conn is not None and conn.awaiting_confirmation:
            connections.drop_unconfirmed(session, conn, connections.UNCONFIRMED_REASON)
        return "failed"
    if ok:
        _finish(notice, conn, "delivered", None)
        return "delivered"
    _finish(notice, conn, "failed", resp.error)
    return "failed"


def due(site: Site, grace_seconds: float) -> list[int]:
    """Open notices whose time has passed by more than the grace: their retry was lost."""
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    with site.db.session() as session:
        return list(
            session.scalars(
                select(PeerNotice.id)
                .where(
                    PeerNotice.state.in_(OPEN_STATES),
                    PeerNotice.next_attempt_at <= cutoff,
                )
                .order_by(PeerNotice.id)
                .limit(1000)
            )
        )
