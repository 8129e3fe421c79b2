"""Build the Falcon application from a site's collaborators."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.media
import orjson

from api import console, errors, observe, openapi
from api.middleware import DBSession
from api.resources import control, data, health
from shared.context import Site
from shared.errors import SyncError
from shared.logging import log_format


def create_app(site: Site) -> falcon.App:
    middleware: list[Any] = [
        observe.Observe(log_format() == "json"),
        DBSession(site.db),
    ]
    app = falcon.App(middleware=middleware)
    app.req_options.auto_parse_form_urlencoded = False
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.set_error_serializer(errors.serialize_http_error)
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(SyncError, errors.handle_sync_error)
    prefix = site.settings.api_prefix
    for name, resource in {**control.routes(site), **data.routes(site)}.items():
        app.add_route(f"{prefix}/{name}", resource)
    app.add_route(f"{prefix}/openapi.json", openapi.OpenAPI(site.settings.url_prefix))
    # Outside the prefix: a probe asks the container's port, not the public URL.
    for path, resource in {
        **health.routes(site),
        "/metrics": observe.Metrics(site),
        **console.routes(site),
    }.items():
        app.add_route(path, resource)
    return app
