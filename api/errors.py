"""Map domain errors and Falcon's own errors to the protocol's error body, in one place."""

from __future__ import annotations

import logging

import falcon

from shared.errors import SyncError

log = logging.getLogger("dbsync.api")

STATUS_BY_KIND = {
    "bad_request": falcon.HTTP_400,
    "unauthorized": falcon.HTTP_401,
    "forbidden": falcon.HTTP_403,
    "not_found": falcon.HTTP_404,
    "conflict": falcon.HTTP_409,
    "too_large": falcon.HTTP_413,
    "throttled": falcon.HTTP_429,
    "disabled": falcon.HTTP_503,
}


def handle_sync_error(req, resp, ex: SyncError, params) -> None:  # type: ignore[no-untyped-def]
    resp.status = STATUS_BY_KIND.get(ex.kind, falcon.HTTP_400)
    resp.media = ex.body()
    if ex.retry_after is not None:
        resp.set_header("Retry-After", str(ex.retry_after))


def handle_unexpected(req, resp, ex: Exception, params) -> None:  # type: ignore[no-untyped-def]
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"success": False, "error": "Internal server error"}


def serialize_http_error(req, resp, ex: falcon.HTTPError) -> None:  # type: ignore[no-untyped-def]
    """Falcon's own errors (404 route, 405, malformed JSON) in our body shape."""
    message = ex.description or ex.title or "Error"
    if ex.status_code == 404 and not ex.description:
        message = "Not found"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"success": False, "error": message}
