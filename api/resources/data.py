"""The data plane: what a receiver may see of this site's tables, and pull."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import falcon

from api.middleware import read_json, remote_ip
from shared.context import Site
from shared.data.sender import copy_out
from shared.data.sender import handlers as data_api


def _no_heartbeat() -> None:
    pass


# Called each time a chunk of a streamed page is handed to the web server;
# api.gunicorn_conf points it at the gunicorn worker's heartbeat.
server_heartbeat: Callable[[], None] = _no_heartbeat


class Streamed:
    """A COPY page's chunks, each handed over with a sign of life to the server.

    A gunicorn sync worker counts a whole request against its timeout (30 s by
    default): a page that streamed to a slow receiver for longer was killed
    mid-body, and so was every run that asked for it again, so the pull never
    finished. A chunk handed over is progress; a worker that hands over none
    for the timeout (a receiver that stopped reading) is still killed.
    """

    def __init__(self, page: copy_out.CopyPage, heartbeat: Callable[[], None]):
        self._page = page
        self._heartbeat = heartbeat

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._page)
        self._heartbeat()
        return chunk

    def close(self) -> None:
        self._page.close()


class DataCall:
    """A data call: parse the bounded body, hand it with the caller's IP to a service."""

    def __init__(self, site: Site, handler: Callable) -> None:
        self._site = site
        self._handler = handler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        ip = remote_ip(req, self._site.settings.trust_forwarded)
        resp.media = self._handler(req.context.session, self._site, body, ip)


class PullData(DataCall):
    """pull-data: a JSON page, or a COPY page streamed with its metadata in headers."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        ip = remote_ip(req, self._site.settings.trust_forwarded)
        page = self._handler(req.context.session, self._site, body, ip)
        if not isinstance(page, copy_out.CopyPage):
            resp.media = page
            return
        try:
            # Commit the page's counters now, not after the responder: once
            # the stream is handed over nothing may fail and leave it unclosed.
            req.context.session.commit()
        except BaseException:
            page.close()
            raise
        resp.content_type = page.content_type
        for name, value in page.headers.items():
            resp.set_header(name, value)
        resp.stream = Streamed(page, server_heartbeat)


def routes(site: Site) -> dict[str, object]:
    return {
        "list-tables": DataCall(site, data_api.list_tables),
        "table-schema": DataCall(site, data_api.table_schema),
        "table-records": DataCall(site, data_api.table_records),
        "pull-data": PullData(site, data_api.pull_data),
    }
