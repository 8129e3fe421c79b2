"""Request-scoped plumbing: one DB session per request, bounded JSON bodies."""

from __future__ import annotations

import ipaddress
from typing import Any

import falcon
import orjson

from shared.db import Database
from shared.errors import ErrorKind, SyncError
from shared.settings import Settings


class InvalidBody:
    """Stands for a body that is not a JSON object; validation refuses it in turn."""


class DBSession:
    """Open a session per request: commit on success, roll back on failure, close."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session = self._db.sessionmaker()

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        session = req.context.get("session")
        if session is None:
            return
        try:
            if req_succeeded and resp.status_code < 400:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()


def read_json(req: falcon.Request, limit: int) -> Any:
    """Read at most ``limit`` bytes and parse them; 413 beyond, InvalidBody if not JSON."""
    return parse_json(read_body(req, limit))


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes; 413 beyond."""
    if req.content_length is not None and req.content_length > limit:
        raise SyncError(ErrorKind.TOO_LARGE, "Request body too large")
    if req.content_length is None and req.env.get("wsgi.input_terminated"):
        # A chunked body: the server marks its end, bounded_stream would read none.
        raw = req.stream.read(limit + 1)
    else:
        raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise SyncError(ErrorKind.TOO_LARGE, "Request body too large")
    return raw


def parse_json(raw: bytes) -> Any:
    """The JSON object in ``raw``, or InvalidBody when it is not one."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return InvalidBody()
    return body if isinstance(body, dict) else InvalidBody()


def remote_ip(req: falcon.Request, settings: Settings) -> str:
    """The caller's address: the peer's, or the one the trusted proxies saw.

    Behind ``trusted_proxy_hops`` trusted proxies, each appends the address it saw to
    ``X-Forwarded-For``: the caller is the ``hops``-th entry from the right.
    Entries further left (and a ``Forwarded`` header) are the client's own
    words. A header with fewer entries than hops, or an entry that is no
    address, is not a proxy's: the peer's address is taken then.
    """
    peer = req.remote_addr or "unknown"
    hops = settings.trusted_proxy_hops
    if not settings.trust_forwarded:
        return peer
    header = req.get_header("X-Forwarded-For")
    if not header:
        return peer
    entries = [entry.strip() for entry in header.split(",")]
    if len(entries) < hops:
        return peer
    try:
        return str(ipaddress.ip_address(entries[-hops]))
    except ValueError:
        return peer
