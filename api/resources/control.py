"""The control plane: status, registration and the connection lifecycle calls."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from api.middleware import read_json, remote_ip
from shared.context import Site
from shared.control import handlers as peer_api
from shared.control import module


class Status:
    def __init__(self, site: Site) -> None:
        self._site = site

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = module.status_body(module.get(req.context.session))


class RegisterConnection:
    def __init__(self, site: Site) -> None:
        self._site = site

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        resp.media = peer_api.register(
            req.context.session,
            self._site,
            body,
            remote_ip=remote_ip(req, self._site.settings.trust_forwarded),
            user_agent=req.user_agent,
        )


class PeerCall:
    """A control call whose handler needs only the session and the body."""

    def __init__(self, site: Site, handler: Callable) -> None:
        self._site = site
        self._handler = handler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._site.settings.max_body_bytes)
        resp.media = self._handler(req.context.session, body)


def routes(site: Site) -> dict[str, object]:
    return {
        "status": Status(site),
        "register-connection": RegisterConnection(site),
        "get-connection-status": PeerCall(site, peer_api.connection_status),
        "update-status": PeerCall(site, peer_api.update_status),
        "delete-connection": PeerCall(site, peer_api.delete),
        "verify-connection": PeerCall(site, peer_api.verify),
    }
