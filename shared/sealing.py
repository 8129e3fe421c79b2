"""Seal the secrets a site keeps until it can hand them over.

A registration owed to a receiver holds the raw token and the receiver's
password until it is delivered, which may take up to the retry horizon (24 h
by default). They are stored sealed (Fernet: AES-128-CBC with an HMAC-SHA256
tag) with this site's key, so the notices table, a dump of it or a log of
its rows shows neither.

The key is ``SYNC_SECRET_KEY`` (or the file ``SYNC_SECRET_KEY_FILE`` names),
the same for every process of a site. Without it, a key is generated once
and kept in the state database (``dbsync_site_keys``): the notices table
alone then reveals nothing, a copy of the whole database does. A site that
sets ``SYNC_SECRET_KEY`` later still opens what the generated key sealed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.state.models import SiteKey

KEY_NAME = "sealing"


class Unsealable(ValueError):
    """Sealed secrets that none of this site's keys opens."""


def _fernet(material: str) -> Fernet:
    """A Fernet key derived from any secret string (a passphrase or random text)."""
    digest = hashlib.sha256(b"dbsync sealing v1\n" + material.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(digest.digest()))


def _stored_key(bind: Session | Engine, create: bool) -> str | None:
    """The generated key kept in the state database; made once if ``create``.

    Given a session, in its transaction: a second one would wait for the
    caller's own write lock on SQLite.
    """
    if isinstance(bind, Session):
        return _stored_key_in(bind, create)
    with Session(bind) as session, session.begin():
        return _stored_key_in(session, create)


def _stored_key_in(session: Session, create: bool) -> str | None:
    if create:
        row = {
            "name": KEY_NAME,
            "value": Fernet.generate_key().decode("ascii"),
            "created_at": utcnow(),
        }
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        # Two processes making it at once: the first one's key is kept.
        session.execute(
            insert(SiteKey).values(row).on_conflict_do_nothing(index_elements=["name"])
        )
    return session.scalar(select(SiteKey.value).where(SiteKey.name == KEY_NAME))


def _keys(bind: Session | Engine, configured: str, create: bool) -> list[Fernet]:
    """This site's keys, the one that seals first."""
    keys = [_fernet(configured)] if configured else []
    stored = _stored_key(bind, create=create and not configured)
    if stored:
        keys.append(_fernet(stored))
    return keys


def seal(bind: Session | Engine, configured: str, secrets: dict[str, Any]) -> str:
    """``secrets`` as one sealed string."""
    (first, *_) = _keys(bind, configured, create=True)
    return first.encrypt(json.dumps(secrets).encode("utf-8")).decode("ascii")


def open_sealed(bind: Session | Engine, configured: str, sealed: str) -> dict[str, Any]:
    """The secrets ``seal`` sealed; Unsealable if no key of this site opens them."""
    keys = _keys(bind, configured, create=False)
    if not keys:
        raise Unsealable("no key to open them: SYNC_SECRET_KEY is not set")
    try:
        opened = MultiFernet(keys).decrypt(sealed.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise Unsealable(
            "no key of this site opens them: SYNC_SECRET_KEY differs from the"
            " one they were sealed with"
        ) from None
    value = json.loads(opened)
    if not isinstance(value, dict):
        raise Unsealable("they are not what this site sealed")
    return value
