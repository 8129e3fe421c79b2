"""Decide whether a data call may proceed: every connection control, in order.

The order is the protocol's: unknown hash, status, expiry, IP allow-list,
allowed hours, download and record limits, rate limit, then table rules.

The rate limit (``rate_limit_requests_per_minute``) counts every data call
except the next page of a pull in progress: a pull-data whose ``after`` is
the cursor this site itself handed out for that pull's last page. Such a
page is already paid for by the pull that started it (counted, a download
against ``max_downloads``), it can only move the pull forward, once, so a
pull's pages are bounded by its table; throttling them would only make a
receiver wait between pages of one pull. Everything else counts: list-tables,
table-schema, table-records, every pull without ``after``, and a ``after``
that is not the expected next cursor (a retried page, or a forged cursor).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import counters, healing
from shared.db import utcnow
from shared.errors import ErrorKind, SyncError
from shared.security import same_secret
from shared.state.models import Connection


@dataclass(frozen=True)
class Caller:
    """Who is calling: the remote address and what this call is to a pull.

    ``new_download``: it starts a download (counted against max_downloads).
    ``next_page``: it asks for the next page of a pull in progress, which the
    rate limit does not count (see the module docstring).
    ``serves_rows``: it serves rows (pull-data, table-records), counted
    against the record limit: the connection's row is locked before the
    limits are read, so concurrent calls take turns at reserving what is
    left and never serve more than the limits allow.
    ``preview``: table-records, refused like a new pull once the downloads
    are used up, though it does not use one.
    """

    ip: str
    new_download: bool = False
    next_page: bool = False
    serves_rows: bool = False
    preview: bool = False


def sender_connection(session: Session, token_hash: str) -> Connection:
    conn = session.scalar(
        select(Connection).where(
            Connection.auth_token_hash == token_hash, Connection.direction == "sender"
        )
    )
    if conn is None or not same_secret(conn.auth_token_hash, token_hash):
        raise SyncError(ErrorKind.UNAUTHORIZED, "Invalid connection")
    return conn


def authorise(
    session: Session, site: Site, token_hash: str, caller: Caller
) -> Connection:
    """Return the sender connection if every control lets this call through."""
    conn = sender_connection(session, token_hash)
    if conn.status != "active":
        raise SyncError(ErrorKind.FORBIDDEN, "Connection is not active")
    now = utcnow()
    if conn.expires_at is not None and conn.expires_at <= now:
        _expire_now(site, conn)
        raise SyncError(ErrorKind.FORBIDDEN, "Connection expired")
    if conn.ip_allowlist and not ip_allowed(caller.ip, conn.ip_allowlist):
        raise SyncError(ErrorKind.FORBIDDEN, "IP not allowed")
    if not within_hours(now.hour, conn.allowed_hours_start, conn.allowed_hours_end):
        raise SyncError(ErrorKind.FORBIDDEN, "Outside allowed hours")
    if caller.serves_rows:
        conn = _locked(session, conn)
    if (
        (caller.new_download or caller.preview)
        and conn.max_downloads is not None
        and conn.downloads_used >= conn.max_downloads
    ):
        raise SyncError(ErrorKind.FORBIDDEN, "Download limit reached")
    if (
        conn.max_records_total is not None
        and conn.records_downloaded >= conn.max_records_total
    ):
        raise SyncError(ErrorKind.FORBIDDEN, "Record limit reached")
    if caller.next_page:
        return conn
    wait = counters.take(
        site.db.engine, f"rate:{conn.id}", conn.rate_limit_requests_per_minute, 60
    )
    if wait is not None:
        raise SyncError(ErrorKind.THROTTLED, "Rate limit exceeded", retry_after=wait)
    return conn


def _locked(session: Session, conn: Connection) -> Connection:
    """The connection's row, locked until the request's transaction ends, with
    its counts as the last call that served rows left them (the check and
    the count that follows are then one atomic step)."""
    if session.get_bind().dialect.name == "postgresql":
        session.refresh(conn, with_for_update=True)
        if conn.status != "active":
            raise SyncError(ErrorKind.FORBIDDEN, "Connection is not active")
    return conn


def records_left(conn: Connection, wanted: int) -> int:
    """How many of ``wanted`` rows the record limit still lets this call serve."""
    if conn.max_records_total is None:
        return wanted
    return max(0, min(wanted, conn.max_records_total - conn.records_downloaded))


def check_table(conn: Connection, table: str) -> None:
    if table in (conn.excluded_tables or []):
        raise SyncError(
            ErrorKind.FORBIDDEN,
            "This connection is not authorised to access that table",
        )
    if conn.allowed_tables and table not in conn.allowed_tables:
        raise SyncError(
            ErrorKind.FORBIDDEN,
            "This connection is not authorised to access that table",
        )


def table_allowed(conn: Connection, table: str) -> bool:
    try:
        check_table(conn, table)
    except SyncError:
        return False
    return True


def ip_allowed(ip: str, allowlist: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for cidr in allowlist:
        try:
            if addr in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def within_hours(hour: int, start: int | None, end: int | None) -> bool:
    """UTC hour window, inclusive at both ends; start > end wraps past midnight."""
    if start is None or end is None:
        return True
    if start <= end:
        return start <= hour <= end
    return hour >= start or hour <= end


def _expire_now(site: Site, conn: Connection) -> None:
    # The refusal rolls the request back; the expiry must still be recorded.
    with site.db.session() as session:
        fresh = session.get(Connection, conn.id)
        if fresh is not None and fresh.status == "active":
            healing.mark_expired(session, fresh)


def count_page(
    session: Session, conn: Connection, records: int, new_download: bool, size: int
) -> None:
    """Add a served page to the connection's counters atomically."""
    values: dict[str, object] = {
        "records_downloaded": Connection.records_downloaded + records,
        "total_records_transferred": Connection.total_records_transferred + records,
        "total_bytes_transferred": Connection.total_bytes_transferred + size,
        "last_transfer_at": utcnow(),
        "last_connected_at": utcnow(),
    }
    if new_download:
        values["downloads_used"] = Connection.downloads_used + 1
        values["total_transfers"] = Connection.total_transfers + 1
    session.execute(update(Connection).where(Connection.id == conn.id).values(**values))
