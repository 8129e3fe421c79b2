"""The admin console's password, login throttle, sessions and CSRF tokens.

The console is off until an operator sets a password (``dbsync admin
set-password``). A session is a signed cookie value, ``expiry.nonce.mac``,
with an HMAC under a key kept in the state database: every web process checks
it without shared memory, and a new password (a new key) ends all sessions.
A form's CSRF token is an HMAC of the session's nonce, so it is bound to one
session and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.control import audit, counters
from shared.errors import ErrorKind, SyncError
from shared.security import hash_password, verify_password
from shared.state.models import AdminSettings

SESSION_SECONDS = 8 * 3600
LOGIN_FAILURES = 5  # wrong passwords from one address per window, then 429
LOGIN_WINDOW_SECONDS = 300
MIN_PASSWORD = 10


def get(session: Session) -> AdminSettings | None:
    return session.get(AdminSettings, 1)


def set_password(session: Session, password: str) -> None:
    """Store the console's password (argon2) and end every existing session."""
    if len(password) < MIN_PASSWORD:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            f"the admin password needs at least {MIN_PASSWORD} characters",
        )
    row = get(session)
    if row is None:
        row = AdminSettings(id=1, session_key="")
        session.add(row)
    row.password_hash = hash_password(password)
    row.session_key = secrets.token_hex(32)
    audit.record(session, "operator", "admin.password_set", None)


def enabled(session: Session) -> bool:
    row = get(session)
    return row is not None and bool(row.password_hash)


def login(session: Session, engine: Engine, password: str, ip: str) -> str | None:
    """A new session's cookie value, or None for a wrong password.

    Raises THROTTLED (429 with Retry-After) after LOGIN_FAILURES wrong
    passwords from ``ip`` within the window, right or wrong the next one.
    """
    key = f"admin-login-fail:{ip}"
    wait = counters.retry_after(engine, key, LOGIN_FAILURES, LOGIN_WINDOW_SECONDS)
    if wait is not None:
        raise SyncError(ErrorKind.THROTTLED, "Too many failed logins", retry_after=wait)
    row = get(session)
    if row is None or not verify_password(row.password_hash, password):
        counters.hit(engine, key, LOGIN_WINDOW_SECONDS)
        return None
    audit.record(session, "operator", "admin.login", None, ip=ip)
    return _sign(row.session_key, int(time.time()) + SESSION_SECONDS)


@dataclass(frozen=True)
class AdminSession:
    nonce: str
    csrf: str


def check(session: Session, cookie: str | None) -> AdminSession | None:
    """The session a cookie value stands for, if it is genuine and not expired."""
    row = get(session)
    if row is None or not row.password_hash or not cookie:
        return None
    try:
        expiry_text, nonce, mac = cookie.split(".", 2)
        expiry = int(expiry_text)
    except ValueError:
        return None
    want = _mac(row.session_key, f"{expiry}.{nonce}")
    if not hmac.compare_digest(want, mac) or expiry < time.time():
        return None
    return AdminSession(nonce, _mac(row.session_key, f"csrf:{nonce}"))


def _sign(key: str, expiry: int) -> str:
    nonce = secrets.token_urlsafe(18)
    return f"{expiry}.{nonce}.{_mac(key, f'{expiry}.{nonce}')}"


def _mac(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()
