"""The data plane: what a receiver may see of this site's tables, and pull."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon
import orjson

from api.middleware import read_json, remote_ip
from api.observe import counted
from shared.context import Site
from shared.data.sender import copy_out, delivery
from shared.data.sender import handlers as data_api


class DataCall:
    """A data call: parse the bounded body, hand it with the caller's IP to a service."""

    def __init__(self, site: Site, handler: Callable) -> None:
        self._site = site
        self._handler = handler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        ip = remote_ip(req, self._site.settings)
        self._answer(resp, self._handler(req.context.session, self._site, body, ip))

    def _answer(self, resp: falcon.Response, result: Any) -> None:
        resp.media = result


class PullData(DataCall):
    """pull-data: a JSON page, or a COPY page streamed with its metadata in headers.

    Either is written through a delivery.Delivery: a page that does not reach
    the client whole is taken off the counts, and its pull-data slot is
    released once the server is done with it.
    """

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        ip = remote_ip(req, self._site.settings)
        # PhoenixKit's client names itself; its import reads uuids its own way.
        phoenixkit = (req.user_agent or "").startswith("PhoenixKit-Sync/")
        served: delivery.Served = self._handler(
            req.context.session, self._site, body, ip, phoenixkit=phoenixkit
        )
        try:
            # Commit the page's counters now, not after the responder: once
            # the body is handed over nothing may fail and leave it unclosed.
            req.context.session.commit()
        except BaseException:
            served.abandon()
            raise
        page = served.answer
        if isinstance(page, copy_out.CopyPage):
            resp.content_type = page.content_type
            for name, value in page.headers.items():
                resp.set_header(name, value)
            chunks = counted(iter(page), "copy", served.receipt.records)
        else:
            data = orjson.dumps(page)
            resp.content_type = falcon.MEDIA_JSON
            resp.content_length = len(data)
            chunks = counted(delivery.json_chunks(data), "json", served.receipt.records)
        sock = req.env.get("gunicorn.socket")
        resp.stream = delivery.Delivery(
            served,
            chunks,
            self._site.db.engine,
            lambda: bool(getattr(sock, "write_failed", False)),
        )


class PullKeys(DataCall):
    """pull-keys: a JSON page, or COPY data (read whole) with its metadata in
    headers."""

    def _answer(self, resp: falcon.Response, page: Any) -> None:
        if not isinstance(page, copy_out.KeysCopy):
            resp.media = page
            return
        resp.content_type = page.content_type
        for name, value in page.headers.items():
            resp.set_header(name, value)
        resp.data = page.body


def routes(site: Site) -> dict[str, object]:
    return {
        "list-tables": DataCall(site, data_api.list_tables),
        "table-schema": DataCall(site, data_api.table_schema),
        "table-records": DataCall(site, data_api.table_records),
        "pull-data": PullData(site, data_api.pull_data),
        "table-fingerprints": DataCall(site, data_api.table_fingerprints),
        "pull-keys": PullKeys(site, data_api.pull_keys),
    }
