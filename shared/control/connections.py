"""Operate on connections: create, approve, suspend, reactivate, revoke, delete.

Every change is audited and, when made here, owed to the peer as a PeerNotice
written in the same transaction, so it reaches the peer however long it is down.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import audit, notices, signing
from shared.db import parse_uuid, utcnow
from shared.errors import ErrorKind, SyncError
from shared.security import UnsafeURL, check_url, hash_token, new_token
from shared.state.models import Connection

MODULE_DISABLED_REASON = "DB Sync module disabled"


@dataclass
class SenderOptions:
    """Per-connection controls an operator may set on a sender connection."""

    allowed_tables: list[str] = field(default_factory=list)
    excluded_tables: list[str] = field(default_factory=list)
    expires_at: dt.datetime | None = None
    max_downloads: int | None = None
    max_records_total: int | None = None
    # Caps every pull-data page. JSON pages are further capped by the site's
    # json_page_cap (10,000, as PhoenixKit pages), so only bulk (COPY) pages
    # between two PostgreSQL sites use more: fewer, larger pages, which is
    # what makes a pull over a default connection as fast as a tuned one.
    max_records_per_request: int = 100_000
    rate_limit_requests_per_minute: int = 60
    ip_allowlist: list[str] = field(default_factory=list)
    allowed_hours_start: int | None = None
    allowed_hours_end: int | None = None

    def check(self) -> None:
        for cidr in self.ip_allowlist:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SyncError(
                    ErrorKind.BAD_REQUEST, f"Invalid CIDR: {cidr}"
                ) from None
        for name in ("max_downloads", "max_records_total"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SyncError(ErrorKind.BAD_REQUEST, f"{name} must be >= 0")
        if not 1 <= self.max_records_per_request <= 1_000_000:
            raise SyncError(
                ErrorKind.BAD_REQUEST, "max_records_per_request must be 1..1000000"
            )
        if self.rate_limit_requests_per_minute < 1:
            raise SyncError(ErrorKind.BAD_REQUEST, "rate_limit must be >= 1")
        hours = (self.allowed_hours_start, self.allowed_hours_end)
        if (hours[0] is None) != (hours[1] is None):
            raise SyncError(
                ErrorKind.BAD_REQUEST, "allowed hours need a start and an end"
            )
        for h in hours:
            if h is not None and not 0 <= h <= 23:
                raise SyncError(ErrorKind.BAD_REQUEST, "allowed hours are 0..23 (UTC)")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise SyncError(
                ErrorKind.BAD_REQUEST, "expires_at needs a time zone offset"
            )


def get(session: Session, connection_id: str | uuid.UUID) -> Connection:
    key = parse_uuid(connection_id)
    conn = session.get(Connection, key) if key is not None else None
    if conn is None:
        raise SyncError(ErrorKind.NOT_FOUND, f"No connection {connection_id}")
    return conn


def list_all(session: Session) -> list[Connection]:
    return list(
        session.scalars(
            select(Connection).order_by(Connection.created_at, Connection.name)
        )
    )


def split_prefix(url: str) -> tuple[str, str | None]:
    """A peer URL's site (scheme, host, port) and the API prefix its path gives.

    ``http://peer/phoenix_kit`` is the site ``http://peer`` whose API lives
    under ``/phoenix_kit`` (a PhoenixKit site's default); a URL without a
    path leaves the prefix to this site's own (None).
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path:
        return url.rstrip("/"), None
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")), path


def create_sender(
    session: Session,
    site: Site,
    *,
    name: str,
    url: str,
    password: str | None = None,
    options: SenderOptions | None = None,
    actor: str = "operator",
    offer_new_tables: bool = True,
) -> tuple[Connection, str]:
    """Create a sender connection and owe the receiver its registration.

    An empty allow-list offers every table, those created later included
    (tables this site itself pulls from a third site among them): with
    ``offer_new_tables`` false it becomes the tables offered now instead.
    The operator's command makes that the default.

    Returns the connection and its raw token, which is shown this once only.
    """
    options = options or SenderOptions()
    options.check()
    if not name.strip():
        raise SyncError(ErrorKind.BAD_REQUEST, "A connection needs a name")
    try:
        site_url = check_url(
            url,
            allow_private=site.settings.allow_private_urls,
            own_url=site.settings.site_url,
            allow_plain_http=site.settings.allow_plain_http,
        )
    except UnsafeURL as ex:
        raise SyncError(ErrorKind.BAD_REQUEST, f"Invalid URL: {ex}") from None
    site_url, peer_prefix = split_prefix(site_url)
    clash = session.scalar(
        select(Connection).where(
            Connection.site_url == site_url, Connection.direction == "sender"
        )
    )
    if clash is not None:
        raise SyncError(
            ErrorKind.CONFLICT, f"A sender connection to {site_url} already exists"
        )
    offered = site.catalog().offered_tables()
    schema = site.settings.data_schema
    options.allowed_tables = table_rule(options.allowed_tables, offered, schema)
    options.excluded_tables = table_rule(options.excluded_tables, offered, schema)
    if not options.allowed_tables and not offer_new_tables:
        options.allowed_tables = [
            t for t in offered if t not in options.excluded_tables
        ]
        if not options.allowed_tables:
            raise SyncError(
                ErrorKind.BAD_REQUEST,
                "No table is offered yet: name the tables to offer, or offer"
                " new tables as they are created",
            )
    token = new_token()
    conn = Connection(
        id=uuid.uuid4(),
        name=name.strip(),
        direction="sender",
        site_url=site_url,
        peer_prefix=peer_prefix,
        auth_token_hash=hash_token(token),
        signing_key=signing.derive_key(token),
        status="pending",
        registration_status="queued",
        meta={"offer_new_tables": not options.allowed_tables},
        **vars(options),
    )
    session.add(conn)
    session.flush()
    audit.record(session, actor, "connection.created", conn, direction="sender")
    payload: dict[str, Any] = {"auth_token": token, "connection_name": conn.name}
    if password:
        payload["password"] = password
    notices.owe(session, site, conn, "register", payload)
    return conn, token


def table_rule(names: list[str], offered: list[str], schema: str) -> list[str]:
    """The offered tables a list of table names means, or a clear 400.

    Rules are compared with table names exactly when a call comes in, so
    they are resolved here, once: ``schema.table`` in the offered schema is
    ``table``, a name matches its table whatever its case when only one
    table has it (``"Name"`` in double quotes matches exactly), and a name
    that is no offered table (unknown, another schema, this site's own
    tables) or that matches several is refused.
    """
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        prefix, dot, rest = name.rpartition(".")
        if dot and (not name.startswith('"') or prefix.endswith('"')):
            if prefix.strip('"').lower() != schema.lower():
                raise _bad_rule(raw, f"only tables of schema {schema} are offered")
            name = rest
        if len(name) > 1 and name.startswith('"') and name.endswith('"'):
            matches = [t for t in offered if t == name[1:-1]]
        elif name in offered:
            matches = [name]
        else:
            matches = [t for t in offered if t.lower() == name.lower()]
        if not matches:
            raise _bad_rule(raw, "no such table is offered")
        if len(matches) > 1:
            raise _bad_rule(
                raw, f"it matches {', '.join(matches)}; write the exact name in quotes"
            )
        if matches[0] not in out:
            out.append(matches[0])
    return out


def _bad_rule(name: str, why: str) -> SyncError:
    return SyncError(ErrorKind.BAD_REQUEST, f"Invalid table rule {name!r}: {why}")


LIVE = ("pending", "active", "suspended", "expired")  # every status but revoked


def transition(
    session: Session,
    conn: Connection,
    to: str,
    when: ColumnElement[bool],
    **values: Any,
) -> bool:
    """Move ``conn`` to status ``to`` if the row, as it is now, matches ``when``.

    One conditional UPDATE: PostgreSQL re-checks ``when`` on the row's newest
    version after waiting for any concurrent writer, so two changes made from
    the same old state never both apply, and nothing ever leaves ``revoked``
    (no ``when`` admits it). Returns whether the row moved; either way ``conn``
    is reloaded with what the row now holds. Every status change goes
    through here.
    """
    result = session.execute(
        update(Connection)
        .where(Connection.id == conn.id, Connection.status != "revoked", when)
        .values(status=to, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(conn)
    return bool(getattr(result, "rowcount", 0) == 1)


def status_in(*statuses: str) -> ColumnElement[bool]:
    return Connection.status.in_(statuses)


def _conflict(conn: Connection, wanted: str) -> SyncError:
    return SyncError(ErrorKind.CONFLICT, f"Connection is {conn.status}, not {wanted}")


def approve(
    session: Session, site: Site, conn: Connection, actor: str = "operator"
) -> None:
    if not transition(
        session, conn, "active", status_in("pending"), approved_at=utcnow()
    ):
        raise _conflict(conn, "pending")
    audit.record(session, actor, "connection.approved", conn)
    if conn.direction == "receiver":
        # The sender activates its side when we ask for its status.
        notices.owe(session, site, conn, "poll_status", {})
    else:
        _tell_peer(session, site, conn, "active")


# The operator may suspend an active connection, or take over a suspension
# the peer made (so that the peer can no longer lift it).
SUSPENDABLE = or_(
    Connection.status == "active",
    and_(Connection.status == "suspended", Connection.suspended_by == "peer"),
)


def suspend(
    session: Session,
    site: Site,
    conn: Connection,
    reason: str | None = None,
    actor: str = "operator",
    notify: bool = True,
    by: str = "operator",
) -> None:
    """Suspend here: only this site (``by``: operator or module) can lift it."""
    reason = reason or "Suspended by operator"
    moved = transition(
        session,
        conn,
        "suspended",
        SUSPENDABLE,
        suspended_at=utcnow(),
        suspended_reason=reason,
        suspended_by=by,
    )
    if not moved:
        raise _conflict(conn, "active")
    audit.record(session, actor, "connection.suspended", conn, reason=reason, by=by)
    if notify:
        _tell_peer(session, site, conn, "suspended", reason)


def reactivate(
    session: Session,
    site: Site,
    conn: Connection,
    actor: str = "operator",
    only_by: str | None = None,
) -> bool:
    """Lift a suspension (``only_by``: only one that suspender made)."""
    when = status_in("suspended")
    if only_by is not None:
        when = and_(when, Connection.suspended_by == only_by)
    moved = transition(
        session,
        conn,
        "active",
        when,
        suspended_at=None,
        suspended_reason=None,
        suspended_by=None,
        verify_not_found_count=0,
    )
    if not moved:
        if only_by is not None:
            return False
        raise _conflict(conn, "suspended")
    audit.record(session, actor, "connection.reactivated", conn)
    _tell_peer(session, site, conn, "active")
    return True


def revoke(
    session: Session,
    site: Site,
    conn: Connection,
    reason: str | None = None,
    actor: str = "operator",
    notify: bool = True,
) -> None:
    reason = reason or "Revoked by operator"
    moved = transition(
        session,
        conn,
        "revoked",
        status_in(*LIVE),
        revoked_at=utcnow(),
        revoked_reason=reason,
    )
    if not moved:
        raise SyncError(ErrorKind.CONFLICT, "Connection is already revoked")
    audit.record(session, actor, "connection.revoked", conn, reason=reason)
    if notify:
        _tell_peer(session, site, conn, "revoked", reason)


def _tell_peer(
    session: Session,
    site: Site,
    conn: Connection,
    status: str,
    reason: str | None = None,
) -> None:
    """Owe the peer an update-status notice (with the local reason, if any)."""
    payload: dict[str, Any] = {"status": status}
    if reason is not None:
        payload["reason"] = reason
    notices.owe(session, site, conn, "update_status", payload)


def delete(
    session: Session, site: Site, conn: Connection, actor: str = "operator"
) -> None:
    audit.record(session, actor, "connection.deleted", conn)
    # The key signs the delete notice after the row is gone (wiped on delivery).
    payload = {"signing_key": conn.signing_key} if conn.signing_key else {}
    notices.owe(session, site, conn, "delete", payload)
    notices.cancel_for(session, conn.id, keep_kind="delete")
    session.delete(conn)


UNCONFIRMED_REASON = "the sender does not confirm the token"


def disowned(status: int, body: dict[str, Any]) -> bool:
    """Whether a sender's answer to get-connection-status says it never made
    this token: the protocol's 404 (``success`` false). A 404 of a URL that
    does not serve the protocol there (a web server's own page) says
    nothing; such a registration waits for SYNC_REGISTER_CONFIRM_SECONDS."""
    return status == 404 and body.get("success") is False


def confirm(conn: Connection) -> None:
    """The sender answered for the token: the registration is really its own."""
    conn.awaiting_confirmation = False


def drop_unconfirmed(session: Session, conn: Connection, reason: str) -> None:
    """Forget a registration its sender never confirmed, freeing its URL.

    Whoever registered a URL first held it; the real sender could not
    register until this row is gone. Nothing is owed to that URL: it never
    showed it knew the token.
    """
    audit.record(session, "system", "connection.dropped", conn, reason=reason)
    notices.cancel_for(session, conn.id, keep_kind="")
    session.delete(conn)


def bulk(
    session: Session,
    site: Site,
    action: str,
    reason: str | None = None,
    by: str = "operator",
) -> list[Connection]:
    """Suspend or revoke every connection it applies to; one notice per peer.

    A connection that changed under us since the listing is left as it now is.
    """
    if action == "suspend":
        where = Connection.status == "active"
    elif action == "revoke":
        where = Connection.status != "revoked"
    else:
        raise SyncError(ErrorKind.BAD_REQUEST, f"unknown bulk action {action}")
    changed = []
    for conn in list(session.scalars(select(Connection).where(where))):
        try:
            if action == "suspend":
                suspend(session, site, conn, reason, by=by)
            else:
                revoke(session, site, conn, reason)
        except SyncError as ex:
            if ex.kind != ErrorKind.CONFLICT:
                raise
            continue
        changed.append(conn)
    return changed


def set_enabled(session: Session, site: Site, enabled: bool) -> list[Connection]:
    """Switch the module; peers hear of it through their connections' status.

    Disabling suspends every active connection (one notice per peer);
    enabling again reactivates exactly those it suspended.
    """
    from shared.control import module

    row = module.get(session)
    if row.enabled == enabled:
        return []
    row.enabled = enabled
    audit.record(
        session, "operator", "module.enabled" if enabled else "module.disabled", None
    )
    if not enabled:
        return bulk(session, site, "suspend", MODULE_DISABLED_REASON, by="module")
    suspended = session.scalars(
        select(Connection).where(
            Connection.status == "suspended", Connection.suspended_by == "module"
        )
    )
    return [
        conn
        for conn in list(suspended)
        if reactivate(session, site, conn, only_by="module")
    ]


def describe(conn: Connection) -> dict[str, Any]:
    """What an operator sees of a connection (never its token hash)."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    registration = conn.registration_status
    if registration == "failed" and conn.registration_error:
        registration = f"failed: {conn.registration_error}"
    return {
        "id": str(conn.id),
        "name": conn.name,
        "direction": conn.direction,
        "site_url": conn.site_url,
        "peer_prefix": conn.peer_prefix,
        "status": conn.status,
        "registration": registration,
        "remote_status": conn.remote_status,
        "peer_sync": conn.peer_sync_status,
        "peer_sync_error": conn.peer_sync_error,
        "peer_signs": conn.peer_signs,
        "suspended_reason": conn.suspended_reason,
        "suspended_by": conn.suspended_by,
        "revoked_reason": conn.revoked_reason,
        "allowed_tables": conn.allowed_tables,
        "excluded_tables": conn.excluded_tables,
        "expires_at": iso(conn.expires_at),
        "max_downloads": conn.max_downloads,
        "downloads_used": conn.downloads_used,
        "max_records_total": conn.max_records_total,
        "records_downloaded": conn.records_downloaded,
        "max_records_per_request": conn.max_records_per_request,
        "rate_limit_requests_per_minute": conn.rate_limit_requests_per_minute,
        "ip_allowlist": conn.ip_allowlist,
        "allowed_hours": (
            None
            if conn.allowed_hours_start is None
            else f"{conn.allowed_hours_start}-{conn.allowed_hours_end}"
        ),
        "default_conflict_strategy": conn.default_conflict_strategy,
        "create_missing_tables": conn.create_missing_tables,
        "last_verified_at": iso(conn.last_verified_at),
        "last_verify_error": conn.last_verify_error,
        "last_connected_at": iso(conn.last_connected_at),
        "last_transfer_at": iso(conn.last_transfer_at),
        "total_transfers": conn.total_transfers,
        "total_records_transferred": conn.total_records_transferred,
        "created_at": iso(conn.created_at),
        "approved_at": iso(conn.approved_at),
        "suspended_at": iso(conn.suspended_at),
        "revoked_at": iso(conn.revoked_at),
        "metadata": conn.meta,
    }


def update_limits(
    session: Session, conn: Connection, options: SenderOptions, actor: str = "operator"
) -> None:
    """Replace a sender connection's limits and table rules (the console's edit)."""
    if conn.direction != "sender":
        raise SyncError(
            ErrorKind.BAD_REQUEST, "Only a sender connection has limits to edit"
        )
    options.check()
    for name, value in vars(options).items():
        setattr(conn, name, value)
    audit.record(session, actor, "connection.limits_changed", conn)
