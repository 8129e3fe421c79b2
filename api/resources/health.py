"""Health for orchestrators: ``/livez`` (the process answers) and ``/readyz``.

Both live outside the API prefix and need no token: a probe knows only the
container's port. ``/readyz`` answers 503 naming each failing check.
"""

from __future__ import annotations

import falcon

from shared.context import Site
from shared.control import health


class Livez:
    """The process is alive: no database, broker or peer is asked."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["no-store"]
        resp.media = {"status": "ok"}


class Readyz:
    """The site can do its work: every check of ``shared.control.health`` passes."""

    def __init__(self, site: Site) -> None:
        self._site = site

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        report = health.readiness(self._site)
        resp.cache_control = ["no-store"]
        resp.media = report.body()
        resp.status = falcon.HTTP_200 if report.ready else falcon.HTTP_503


def routes(site: Site) -> dict[str, object]:
    return {"/livez": Livez(), "/readyz": Readyz(site)}
