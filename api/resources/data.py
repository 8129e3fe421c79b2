"""The data plane: what a receiver may see of this site's tables, and pull."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from api.middleware import read_json, remote_ip
from shared.context import Site
from shared.data.sender import copy_out
from shared.data.sender import handlers as data_api


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
        resp.stream = page


def routes(site: Site) -> dict[str, object]:
    return {
        "list-tables": DataCall(site, data_api.list_tables),
        "table-schema": DataCall(site, data_api.table_schema),
        "table-records": DataCall(site, data_api.table_records),
        "pull-data": PullData(site, data_api.pull_data),
    }
