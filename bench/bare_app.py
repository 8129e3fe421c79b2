"""A bare Falcon app answering a constant: the floor the control-plane latency
is compared with. Served under the same gunicorn settings as `dbsync serve`."""

from __future__ import annotations

import falcon


class Constant:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        req.bounded_stream.read()  # a real endpoint reads its body too
        resp.media = {"success": True}


app = falcon.App()
app.add_route("/sync/api/{name}", Constant())
