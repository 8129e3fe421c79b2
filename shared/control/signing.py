"""Sign the control calls a dbsync site makes, and check those its peers make.

A control body carries the token hash, which travels in every call: anyone who
captured one update-status could replay it forever. Between two dbsync sites
each control call is signed: HMAC-SHA256 over the endpoint, a timestamp, a
random nonce and the exact body, with a key both sides derive from the raw
token. The raw token crossed the wire once, in register-connection, so a
captured control call (which holds only the hash) does not give the key. The
callee accepts a timestamp within WINDOW seconds of its own clock and each
nonce once (nonces are remembered for the whole window).

PhoenixKit sites never sign, and keep the plain form. A connection learns
that its peer signs from the first call that carries a valid signature for it
(``peer_signs``, never unset); from then on an unsigned call is refused, so a
signed call cannot be replayed with its signature stripped. Between two dbsync
sites the first call each way is signed: register-connection (signed with the
raw token it carries) and the get-connection-status that activates the
sender's side, so an active dbsync pair has no unsigned window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import ErrorKind, SyncError
from shared.security import normalise_url
from shared.state.models import Connection, ControlNonce, PeerNotice

log = logging.getLogger("dbsync.signing")

VERSION = "v1"
WINDOW_SECONDS = 300
SIGNATURE_HEADER = "X-Dbsync-Signature"
TIMESTAMP_HEADER = "X-Dbsync-Timestamp"
NONCE_HEADER = "X-Dbsync-Nonce"
SIGNED_ENDPOINTS = frozenset(
    {
        "register-connection",
        "get-connection-status",
        "update-status",
        "delete-connection",
        "verify-connection",
    }
)
_KEY_LABEL = b"dbsync control signing v1"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(rf"{VERSION}=([0-9a-f]{{64}})")

KeyLookup = Callable[[str, str], str | None]
"""The signing key of the connection to ``site_url`` with this token hash."""


def derive_key(token: str) -> str:
    """The connection's signing key (hex), from the raw token."""
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).hexdigest()


def signature(
    key: str, endpoint: str, timestamp: str, nonce: str, content: bytes
) -> str:
    message = f"dbsync-{VERSION}\n{endpoint}\n{timestamp}\n{nonce}\n".encode()
    return hmac.new(bytes.fromhex(key), message + content, hashlib.sha256).hexdigest()


def sign(key: str, endpoint: str, content: bytes) -> dict[str, str]:
    """The headers that sign ``content`` for ``endpoint``, now, with a new nonce."""
    timestamp = str(int(time.time()))
    nonce = secrets.token_urlsafe(24)
    mac = signature(key, endpoint, timestamp, nonce, content)
    return {
        SIGNATURE_HEADER: f"{VERSION}={mac}",
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
    }


def request(
    site_url: str, endpoint: str, body: Mapping[str, Any], keys: KeyLookup | None
) -> tuple[bytes, dict[str, str]]:
    """A control call's body bytes and headers, signed when a key is known.

    A client given no ``keys`` signs nothing, register-connection included:
    a peer that saw one signed call refuses unsigned ones from then on, so a
    client signs all its control calls or none. register-connection is signed
    with the raw token it carries; the other control calls with the key
    ``keys`` finds for their connection.
    """
    content = orjson.dumps(body)
    headers = {"content-type": "application/json"}
    key = _key_for(site_url, endpoint, body, keys)
    if key:
        headers.update(sign(key, endpoint, content))
    return content, headers


def _key_for(
    site_url: str, endpoint: str, body: Mapping[str, Any], keys: KeyLookup | None
) -> str | None:
    if keys is None or endpoint not in SIGNED_ENDPOINTS:
        return None
    if endpoint == "register-connection":
        token = body.get("auth_token")
        return derive_key(token) if isinstance(token, str) else None
    token_hash = body.get("auth_token_hash")
    return keys(site_url, token_hash) if isinstance(token_hash, str) else None


class KeyRing:
    """Find the signing key of the connection a call is about, in the state database.

    A deleted connection's key lives on in its delete notice until that
    notice is delivered, so the peer can tell the deletion is genuine.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __call__(self, site_url: str, token_hash: str) -> str | None:
        try:
            url = normalise_url(site_url)
        except ValueError:
            return None
        with Session(self._engine) as session:
            key = session.scalar(
                select(Connection.signing_key)
                .where(
                    Connection.site_url == url,
                    Connection.auth_token_hash == token_hash,
                    Connection.signing_key.is_not(None),
                )
                .limit(1)
            )
            if key:
                return key
            payloads: list[dict[str, Any]] = list(
                session.scalars(
                    select(PeerNotice.payload).where(
                        PeerNotice.kind == "delete",
                        PeerNotice.site_url == url,
                        PeerNotice.auth_token_hash == token_hash,
                        PeerNotice.state.in_(("queued", "retrying")),
                    )
                )
            )
            for payload in payloads:
                if isinstance(payload, dict) and payload.get("signing_key"):
                    return str(payload["signing_key"])
        return None


@dataclass(frozen=True)
class Proof:
    """What a control call carried to show it is the peer's, and fresh."""

    endpoint: str
    content: bytes
    signature: str | None = None
    timestamp: str | None = None
    nonce: str | None = None

    @classmethod
    def of(
        cls, endpoint: str, content: bytes, header: Callable[[str], str | None]
    ) -> Proof:
        return cls(
            endpoint,
            content,
            header(SIGNATURE_HEADER),
            header(TIMESTAMP_HEADER),
            header(NONCE_HEADER),
        )

    @property
    def signed(self) -> bool:
        return any((self.signature, self.timestamp, self.nonce))


def check(engine: Engine, key: str, proof: Proof) -> None:
    """Refuse a signature that is wrong, outside the window, or seen before."""
    timestamp, nonce = proof.timestamp or "", proof.nonce or ""
    mac = _SIGNATURE.fullmatch(proof.signature or "")
    if (
        mac is None
        or not _TIMESTAMP.fullmatch(timestamp)
        or not _NONCE.fullmatch(nonce)
    ):
        raise SyncError(ErrorKind.UNAUTHORIZED, "Invalid signature")
    expected = signature(key, proof.endpoint, timestamp, nonce, proof.content)
    if not hmac.compare_digest(expected, mac.group(1)):
        raise SyncError(ErrorKind.UNAUTHORIZED, "Invalid signature")
    if abs(time.time() - int(timestamp)) > WINDOW_SECONDS:
        raise SyncError(ErrorKind.UNAUTHORIZED, "Stale signature")
    if not remember(engine, nonce):
        log.warning("replayed control call endpoint=%s", proof.endpoint)
        raise SyncError(ErrorKind.UNAUTHORIZED, "Replayed request")


def remember(engine: Engine, nonce: str) -> bool:
    """Record a nonce; False if it was already recorded.

    Its own transaction, so a call refused later still spends its nonce.
    Nonces older than twice the window (a timestamp can be that far from the
    one that was accepted) are pruned here.
    """
    now = utcnow()
    with Session(engine) as session:
        session.execute(
            delete(ControlNonce).where(
                ControlNonce.seen_at < now - dt.timedelta(seconds=2 * WINDOW_SECONDS)
            )
        )
        session.add(ControlNonce(nonce=nonce, seen_at=now))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True
