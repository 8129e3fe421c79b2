"""Build the Falcon application from a site's collaborators."""

from __future__ import annotations

import falcon

from api import errors
from api.middleware import DBSession
from api.resources import control
from shared.context import Site
from shared.errors import SyncError


def create_app(site: Site) -> falcon.App:
    app = falcon.App(middleware=[DBSession(site.db)])
    app.req_options.auto_parse_form_urlencoded = False
    app.set_error_serializer(errors.serialize_http_error)
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(SyncError, errors.handle_sync_error)
    prefix = site.settings.api_prefix
    for name, resource in control.routes(site).items():
        app.add_route(f"{prefix}/{name}", resource)
    return app
