"""A receiver that turned against its sender, and the sender it attacks.

The sender is a real site: the Procfile's web line (gunicorn) on its own
PostgreSQL database, plus the same services in this process for what its
operator and its workers do (create, suspend, revoke, deliver a notice,
verify). The receiver is this test: it holds what a paired receiver holds,
the raw token it was registered with, and calls the sender's endpoints over
HTTP, signing its control calls as a dbsync receiver does.

The signature is computed here from the scheme README "Security" documents,
not with the service's own code, so the tests check the wire format too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from shared.context import Site
from shared.control import connections, notices
from shared.control.peer import PeerClient
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from tests.e2e.conftest import SiteProcesses
from tests.helpers import make_settings

API = "/sync/api"


def signing_key(token: str) -> bytes:
    """HMAC-SHA256(key=raw token, message="dbsync control signing v1")."""
    return hmac.new(
        token.encode(), b"dbsync control signing v1", hashlib.sha256
    ).digest()


def signed_headers(
    token: str,
    endpoint: str,
    content: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The v1 headers: HMAC over "dbsync-v1\\n{endpoint}\\n{ts}\\n{nonce}\\n" + body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(24)
    message = f"dbsync-v1\n{endpoint}\n{ts}\n{nonce}\n".encode() + content
    mac = hmac.new(signing_key(token), message, hashlib.sha256).hexdigest()
    return {
        "X-Dbsync-Signature": f"v1={mac}",
        "X-Dbsync-Timestamp": ts,
        "X-Dbsync-Nonce": nonce,
    }


@dataclass
class Sender:
    """The attacked site: its processes, and its services in this process."""

    processes: SiteProcesses
    site: Site

    @property
    def url(self) -> str:
        return self.processes.url

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.site.db.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []

    def row(self, conn_id: uuid.UUID, *columns: str) -> tuple[Any, ...]:
        (found,) = self.sql(
            f"SELECT {', '.join(columns)} FROM dbsync_connections WHERE id = :id",
            id=conn_id,
        )
        return tuple(found)

    def actions(self, conn_id: uuid.UUID) -> list[tuple[str, str]]:
        return [
            (actor, action)
            for actor, action in self.sql(
                "SELECT actor, action FROM dbsync_audit_events"
                " WHERE connection_id = :id ORDER BY id",
                id=conn_id,
            )
        ]

    def create(self, receiver_url: str, **options: Any) -> tuple[uuid.UUID, str]:
        """A sender connection, as the operator's `connections create` makes one.

        Notices owed before (to receivers played by tests) are dropped, so
        its registration is the one thing owed.
        """
        self.site.dispatcher.notices.clear()  # type: ignore[attr-defined]
        with self.site.db.session() as session:
            conn, token = connections.create_sender(
                session,
                self.site,
                name="to-receiver",
                url=receiver_url,
                options=connections.SenderOptions(**options),
            )
            return conn.id, token

    def client(self, answer: Callable[[httpx.Request], httpx.Response]) -> PeerClient:
        """The sender's peer client, its calls answered by ``answer``."""
        return PeerClient(self.site.settings, transport=httpx.MockTransport(answer))

    def deliver_registration(
        self, answer: Callable[[httpx.Request], httpx.Response]
    ) -> str:
        """Deliver what the sender owes (its registration) to ``answer``."""
        ids = list(self.site.dispatcher.notices)  # type: ignore[attr-defined]
        self.site.dispatcher.notices.clear()  # type: ignore[attr-defined]
        with closing(self.client(answer)) as client:
            states = [notices.deliver(self.site, client, i).state for i in ids]
        return ",".join(states)


def accepted(request: httpx.Request) -> httpx.Response:
    """A receiver's answer to register-connection: accepted and active."""
    return httpx.Response(
        200,
        json={
            "success": True,
            "message": "Connection registered and activated",
            "connection_status": "active",
            "connection_uuid": str(uuid.uuid4()),
        },
    )


def refused(request: httpx.Request) -> httpx.Response:
    """A receiver's answer to register-connection: it accepts nothing."""
    return httpx.Response(
        403, json={"success": False, "error": "Incoming connections are not allowed"}
    )


def gone(request: httpx.Request) -> httpx.Response:
    """A peer's answer to verify-connection when it has no such connection."""
    return httpx.Response(404, json={"success": False, "exists": False})


class Receiver:
    """The receiver of one connection, turned hostile: the test's HTTP caller."""

    def __init__(self, sender: Sender, own_url: str, token: str) -> None:
        self.sender_url = sender.url
        self.own_url = own_url
        self.token = token
        self.token_hash = hashlib.sha256(token.encode()).hexdigest()
        self._http = httpx.Client(base_url=f"{sender.url}{API}", timeout=30)

    def close(self) -> None:
        self._http.close()

    def call(
        self, endpoint: str, body: dict[str, Any], signed: bool = True
    ) -> httpx.Response:
        content = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if signed:
            headers.update(signed_headers(self.token, endpoint, content))
        return self._http.post(f"/{endpoint}", content=content, headers=headers)

    def update_status(self, status: str, signed: bool = True) -> httpx.Response:
        return self.call(
            "update-status",
            {
                "sender_url": self.own_url,
                "auth_token_hash": self.token_hash,
                "status": status,
            },
            signed,
        )

    def poll(self, receiver_url: str | None = None) -> httpx.Response:
        """get-connection-status, as a receiver asks it (claiming ``receiver_url``)."""
        return self.call(
            "get-connection-status",
            {
                "receiver_url": receiver_url or self.own_url,
                "auth_token_hash": self.token_hash,
            },
        )

    def verify(self) -> httpx.Response:
        return self.call(
            "verify-connection",
            {"sender_url": self.own_url, "auth_token_hash": self.token_hash},
        )

    def list_tables(self) -> httpx.Response:
        return self._http.post(
            "/list-tables", json={"auth_token_hash": self.token_hash}
        )


def run_sender(
    workdir: Path, db_url: str, redis_db: int, **env: str
) -> Iterator[Sender]:
    """Start the sender's web (gunicorn, as the Procfile runs it); yield it."""
    processes = SiteProcesses("sender", workdir, db_url, redis_db, **env)
    settings = make_settings(db_url, SYNC_SITE_URL=processes.url)
    site = Site(settings, Database(settings.database_url), DeferredDispatcher())
    try:
        processes.cli("settings", "set", "enabled", "true")
        processes.start(web=True, worker=False, beat=False)
        yield Sender(processes, site)
    finally:
        processes.close()
        site.db.dispose()


_ports = iter(range(21100, 22000))


def receiver_url() -> str:
    """A URL for one more receiver: each sender connection needs its own."""
    return f"http://127.0.0.1:{next(_ports)}"
