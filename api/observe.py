"""Observability of the web: request ids, request metrics and ``/metrics``.

Request metrics live in each gunicorn worker process; ``dbsync serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh private folder so that a scrape, which
any one worker answers, adds up every worker's figures. Without that variable
(tests, an embedded app) the process's own registry is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from shared import logging as site_logging
from shared.context import Site
from shared.metrics import SiteCollector

log = logging.getLogger("dbsync.http")

REQUEST_ID = "X-Request-ID"
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

REQUESTS = Counter(
    "dbsync_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "dbsync_http_request_duration_seconds",
    "Time to the answer's head (a streamed body is not included), by route",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SERVED_ROWS = Counter(
    "dbsync_served_rows",
    "Rows of pull-data pages delivered whole to receivers, by answer format",
    ["format"],
)
SERVED_BYTES = Counter(
    "dbsync_served_bytes",
    "Bytes of pull-data answers handed to the server, by answer format",
    ["format"],
)


def request_id(req: falcon.Request) -> str:
    """The caller's ``X-Request-ID`` when it is a plain token, else a new one."""
    given = req.get_header(REQUEST_ID)
    if given and _GOOD_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class Observe:
    """Tag each request with an id (logs and answer), time and count it.

    The route label is Falcon's URI template, never the path a caller sent, so
    the set of label values stays bounded; an unrouted path counts as
    ``unmatched``.
    """

    def __init__(self, log_requests: bool) -> None:
        self._log_requests = log_requests

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = request_id(req)
        req.context.request_id = rid
        req.context.started = time.perf_counter()
        resp.set_header(REQUEST_ID, rid)
        site_logging.bind(request_id=rid)

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        started = req.context.get("started")
        if started is None:
            return
        elapsed = time.perf_counter() - started
        route = req.uri_template or "unmatched"
        status = str(resp.status_code)
        REQUESTS.labels(route, req.method, status).inc()
        LATENCY.labels(route, req.method).observe(elapsed)
        if self._log_requests:
            log.info(
                "request method=%s route=%s status=%s ms=%.1f",
                req.method,
                route,
                status,
                elapsed * 1000,
            )
        if resp.stream is None:
            # A streamed body still logs as this request; the next request
            # of this thread starts a new context anyway.
            site_logging.unbind()


def counted(chunks: Iterator[bytes], fmt: str, rows: int) -> Iterator[bytes]:
    """Pass a pull-data body through, counting its bytes, and its rows once whole."""
    for chunk in chunks:
        SERVED_BYTES.labels(fmt).inc(len(chunk))
        yield chunk
    SERVED_ROWS.labels(fmt).inc(rows)


def _loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Metrics:
    """``GET /metrics``: Prometheus text, for a scraper on loopback or with the token.

    With ``SYNC_METRICS_TOKEN`` set a scraper sends ``Authorization: Bearer
    <token>`` from anywhere; without it only loopback callers are answered, and
    others get 404, as if there were no such page. Behind a proxy on the same
    host every caller is loopback: set the token there, or keep ``/metrics``
    off the proxy's routes.
    """

    def __init__(self, site: Site) -> None:
        self._site = site

    def _allowed(self, req: falcon.Request) -> bool:
        token = self._site.settings.metrics_token
        if token:
            given = req.get_header("Authorization") or ""
            return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
        return _loopback(req.remote_addr)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self._allowed(req):
            raise falcon.HTTPNotFound(title="Not found")
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            web = CollectorRegistry()
            multiprocess.MultiProcessCollector(web)
        else:
            web = REGISTRY
        site = CollectorRegistry()
        site.register(SiteCollector(self._site.db))
        resp.cache_control = ["no-store"]
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(web) + generate_latest(site)
