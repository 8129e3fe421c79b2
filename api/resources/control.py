"""The control plane: status, registration and the connection lifecycle calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from api.middleware import parse_json, read_body, remote_ip
from shared.context import Site
from shared.control import handlers as peer_api
from shared.control import module
from shared.control.signing import Proof


class Status:
    def __init__(self, site: Site) -> None:
        self._site = site

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = module.status_body(module.get(req.context.session))


def read_signed(req: falcon.Request, site: Site, endpoint: str) -> tuple[Any, Proof]:
    """The JSON body and what the call carried to prove it (signing.py)."""
    raw = read_body(req, site.settings.max_body_bytes)
    return parse_json(raw), Proof.of(endpoint, raw, req.get_header)


class RegisterConnection:
    def __init__(self, site: Site) -> None:
        self._site = site

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, proof = read_signed(req, self._site, "register-connection")
        resp.media = peer_api.register(
            req.context.session,
            self._site,
            body,
            proof,
            remote_ip=remote_ip(req, self._site.settings),
            user_agent=req.user_agent,
        )


class PeerCall:
    """A control call about one existing connection: session, site, body, proof."""

    def __init__(self, site: Site, endpoint: str, handler: Callable) -> None:
        self._site = site
        self._endpoint = endpoint
        self._handler = handler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, proof = read_signed(req, self._site, self._endpoint)
        resp.media = self._handler(req.context.session, self._site, body, proof)


def routes(site: Site) -> dict[str, object]:
    calls = {
        "get-connection-status": peer_api.connection_status,
        "update-status": peer_api.update_status,
        "delete-connection": peer_api.delete,
        "verify-connection": peer_api.verify,
    }
    return {
        "status": Status(site),
        "register-connection": RegisterConnection(site),
        **{name: PeerCall(site, name, handler) for name, handler in calls.items()},
    }
