"""Map domain errors and Falcon's own errors to the protocol's error body, in one place."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import psycopg2
import sqlalchemy.exc

from shared.errors import ErrorKind, SyncError

log = logging.getLogger("dbsync.api")

# Every ErrorKind has its status here (a unit test checks), so no kind falls
# through to a default answer.
STATUS_BY_KIND: dict[ErrorKind, str] = {
    ErrorKind.BAD_REQUEST: falcon.HTTP_400,
    ErrorKind.UNAUTHORIZED: falcon.HTTP_401,
    ErrorKind.FORBIDDEN: falcon.HTTP_403,
    ErrorKind.NOT_FOUND: falcon.HTTP_404,
    ErrorKind.CONFLICT: falcon.HTTP_409,
    ErrorKind.TOO_LARGE: falcon.HTTP_413,
    ErrorKind.THROTTLED: falcon.HTTP_429,
    ErrorKind.DISABLED: falcon.HTTP_503,
    ErrorKind.BUSY: falcon.HTTP_503,
}


DATABASE_UNAVAILABLE = (
    psycopg2.OperationalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.TimeoutError,
)
DATABASE_RETRY_AFTER_SECONDS = 5


def handle_sync_error(
    req: falcon.Request, resp: falcon.Response, ex: SyncError, params: dict[str, Any]
) -> None:
    resp.status = STATUS_BY_KIND[ex.kind]
    resp.media = ex.body()
    if ex.retry_after is not None:
        resp.set_header("Retry-After", str(ex.retry_after))


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    if isinstance(ex, falcon.HTTPError):
        raise ex
    if isinstance(ex, DATABASE_UNAVAILABLE):
        # A database that refuses connections ("too many clients", restarting,
        # unreachable) or a pool with no free connection: the caller should
        # come back, the site is not broken. One line, no traceback.
        log.warning(
            "database unavailable on %s %s: %s",
            req.method,
            req.path,
            str(getattr(ex, "orig", None) or ex).strip().splitlines()[0][:200],
        )
        resp.status = falcon.HTTP_503
        resp.media = {"success": False, "error": "Database temporarily unavailable"}
        resp.set_header("Retry-After", str(DATABASE_RETRY_AFTER_SECONDS))
        return
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"success": False, "error": "Internal server error"}


def serialize_http_error(
    req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError
) -> None:
    """Falcon's own errors (404 route, 405, malformed JSON) in our body shape."""
    message = ex.description or ex.title or "Error"
    if ex.status_code == 404 and not ex.description:
        message = "Not found"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"success": False, "error": message}
