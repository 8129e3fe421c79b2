"""The HTTP side of the stand-in: every endpoint PhoenixKit's Sync module answers.

Routes sit under ``{url_prefix}/sync/api/`` (default ``/phoenix_kit``, facts
§1.1). Each handler follows its facts section, in the order of checks the
section gives, with PhoenixKit's exact status codes and bodies. There is no
auth plug, no CSRF check and no rate limit (§1.1, §5 "Rate limiting"); the
per-connection limits are stored but not enforced on this API (§1.2).

Outside what the facts describe, the stand-in answers as a Phoenix app in
production does: an unknown route 404 ``{"errors": {"detail": "Not Found"}}``,
a body that is not JSON 400 ``{"errors": {"detail": "Bad Request"}}``, an
exception PhoenixKit does not rescue 500 ``{"errors": {"detail": "Internal
Server Error"}}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

from tests.peers.phoenixkit import tables, values
from tests.peers.phoenixkit.connections import (
    CONFLICT_STRATEGIES,
    Connections,
    InvalidConnection,
    table_allowed,
    utc_now,
)
from tests.peers.phoenixkit.db import Database, uuid7

log = logging.getLogger("phoenixkit.standin")

Params = dict[str, Any]
Answer = tuple[int, dict[str, Any]]

NOT_FOUND = {"errors": {"detail": "Not Found"}}
BAD_REQUEST = {"errors": {"detail": "Bad Request"}}
NOT_ACCEPTABLE = {"errors": {"detail": "Not Acceptable"}}
SERVER_ERROR = {"errors": {"detail": "Internal Server Error"}}

# §1.2 step 1: every endpoint but register-connection says this when disabled.
DISABLED = (503, {"success": False, "error": "DB Sync module is disabled"})


class Crash(Exception):
    """An error PhoenixKit does not rescue (a FunctionClauseError, a raise in
    Jason): Phoenix answers its generic 500."""


def err(status: int, message: str, **extra: Any) -> Answer:
    return status, {"success": False, "error": message, **extra}


def missing(params: Params, fields: list[str]) -> list[str]:
    """§1.1 required-field rule: absent, null or "" is missing; in field order."""
    return [f for f in fields if params.get(f) is None or params.get(f) == ""]


def need_str(*items: Any) -> None:
    """Lookups take binaries only; anything else is a FunctionClauseError."""
    if not all(isinstance(i, str) for i in items):
        raise Crash("no function clause matching")


def parse_int(value: Any, default: int) -> int:
    """Validators.parse_int/2 (§1.12 limit/offset: integers or numeric strings)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = ""
        text = value
        sign = ""
        if text[:1] in "+-" and text[:1]:
            sign, text = text[:1], text[1:]
        for ch in text:
            if not ch.isdigit():
                break
            digits += ch
        return int(sign + digits) if digits else default
    return default


class SyncApi:
    """The endpoints, each a function of (params, request facts) -> answer."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conns = Connections(db)

    # -- §1.3 register-connection ------------------------------------------------

    def register_connection(self, params: Params, req: dict[str, str]) -> Answer:
        db = self._db
        if not db.enabled():
            # §1.3 check 1: this endpoint's text comes from the Errors module.
            return err(503, "Sync module is disabled")
        mode = db.incoming_mode()
        if mode == "deny_all":
            return err(403, "Incoming connections are not allowed")
        absent = missing(params, ["sender_url", "connection_name", "auth_token"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        if mode == "require_password":
            # §1.3 check 4: fail closed without a configured password; plaintext
            # constant-time compare.
            stored = db.setting("sync_incoming_password") or ""
            provided = params.get("password")
            if not stored or provided is None or provided == "":
                return err(401, "Password required")
            need_str(provided)
            if not hmac.compare_digest(provided.encode(), stored.encode()):
                return err(401, "Invalid password")
        sender_url = params["sender_url"]
        need_str(sender_url)
        # §1.3 check 5: any receiver connection for that URL, whatever its status.
        if self._conns.find_by_site_url(sender_url, "receiver") is not None:
            return err(409, "A connection already exists")
        name = params["connection_name"]
        if isinstance(name, (dict, list)):
            raise Crash("String.Chars not implemented")
        token = params["auth_token"]
        if not isinstance(token, str):
            return err(500, "Fetch failed")  # the cast fails: a changeset error
        # "require_approval" also creates an ACTIVE connection (§1.3 table).
        attrs = {
            "name": f"From: {name if not isinstance(name, bool) else str(name).lower()}",
            "direction": "receiver",
            "site_url": sender_url,
            "status": "active",
            "approval_mode": "auto_approve",
            "metadata": {
                "registered_via": "api",
                "registered_at": utc_now().isoformat().replace("+00:00", "Z"),
                "remote_ip": req["remote_ip"],
                "user_agent": req["user_agent"],
            },
        }
        try:
            created = self._conns.insert(attrs, token)
        except InvalidConnection as ex:
            # §1.3 check 6: a rejected insert (bad URL, SSRF guard) is a 500.
            log.info("register-connection refused: %s", ex)
            return err(500, "Fetch failed")
        return 200, {
            "success": True,
            "message": "Connection registered and activated",
            "connection_status": "active",
            "connection_uuid": str(created["uuid"]),
        }

    # -- §1.4 status ----------------------------------------------------------------

    def status(self, params: Params, req: dict[str, str]) -> Answer:
        mode = self._db.incoming_mode()
        return 200, {
            "enabled": self._db.enabled(),
            "incoming_mode": mode,
            "password_required": mode == "require_password",
        }

    # -- §1.5 delete-connection, §1.6 update-status, §1.7 verify-connection ---------

    def _by_url_and_hash(self, params: Params) -> dict[str, Any] | None:
        need_str(params["sender_url"], params["auth_token_hash"])
        return self._conns.find_by_site_url_and_hash(
            params["sender_url"], params["auth_token_hash"]
        )

    def delete_connection(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["sender_url", "auth_token_hash"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        conn = self._by_url_and_hash(params)
        if conn is None:
            return err(404, "Connection not found")
        # A hard delete; transfers keep their rows, detached (§2.2 FK).
        if not self._conns.delete(conn["uuid"]):
            return err(500, "Failed to delete connection")
        return 200, {"success": True, "message": "Connection deleted"}

    def update_status(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["sender_url", "auth_token_hash", "status"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        if params["status"] not in ("active", "suspended", "revoked"):
            return err(400, "Invalid status value")
        conn = self._by_url_and_hash(params)
        if conn is None:
            return err(404, "Connection not found")
        # §1.6: only the status column; no transition check (revoked -> active
        # is accepted); no suspended_*/revoked_* fields.
        updated = self._conns.update(conn["uuid"], status=params["status"])
        if updated is None:
            return err(500, "Failed to update status")
        return 200, {
            "success": True,
            "message": f"Status updated to {updated['status']}",
        }

    def verify_connection(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["sender_url", "auth_token_hash"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        if self._by_url_and_hash(params) is None:
            return 404, {"success": False, "exists": False}
        return 200, {"success": True, "exists": True}

    # -- §1.8 get-connection-status -----------------------------------------------------

    def get_connection_status(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["receiver_url", "auth_token_hash"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        need_str(params["auth_token_hash"])
        # receiver_url is ignored ("may be unreliable").
        conn = self._conns.find_by_hash_and_direction(
            params["auth_token_hash"], "sender"
        )
        if conn is None:
            return err(404, "Connection not found")
        if conn["status"] == "pending":
            # §1.8 side effect: auto-activation, with its metadata.
            now = utc_now()
            meta = dict(conn["metadata"] or {})
            meta.update(
                {
                    "auto_activated": True,
                    "auto_activated_at": now.isoformat().replace("+00:00", "Z"),
                    "auto_activated_reason": "receiver queried connection status",
                }
            )
            conn = (
                self._conns.update(
                    conn["uuid"], status="active", approved_at=now, metadata=meta
                )
                or conn
            )
        return 200, {"success": True, "status": conn["status"], "name": conn["name"]}

    # -- data endpoints: §1.9 - §1.12 -------------------------------------------------

    def _sender(self, params: Params) -> tuple[dict[str, Any] | None, Answer | None]:
        """§1.2 steps 3-4: 401 "Invalid connection", 403 "Connection is not active"."""
        need_str(params["auth_token_hash"])
        conn = self._conns.find_by_hash_and_direction(
            params["auth_token_hash"], "sender"
        )
        if conn is None:
            return None, err(401, "Invalid connection")
        if conn["status"] != "active":
            return None, err(403, "Connection is not active")
        return conn, None

    def list_tables(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["auth_token_hash"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        conn, refusal = self._sender(params)
        if refusal:
            return refusal
        assert conn is not None
        with self._db.connection() as db_conn, db_conn.cursor() as cur:
            try:
                found = tables.syncable_tables(cur)
            except Exception as ex:  # get_syncable_tables rescues everything: []
                log.error("get_syncable_tables crashed: %s", ex)
                found = []
        # §1.9: filtered by table_allowed?, never rejected; last_connected_at.
        listed = [t.wire() for t in found if table_allowed(conn, t.name)]
        self._conns.update(conn["uuid"], last_connected_at=utc_now())
        return 200, {"success": True, "tables": listed}

    def pull_data(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["auth_token_hash", "table_name"])
        if absent:
            return err(400, "Missing required fields", fields=absent)
        strategy = params.get("conflict_strategy") or "skip"
        conn, refusal = self._sender(params)
        if refusal:
            return refusal
        assert conn is not None
        table = params["table_name"]
        if not table_allowed(conn, table):
            return err(403, "This connection is not authorised to access that table")
        if not tables.valid_identifier(table):
            return err(404, "Table not found")
        try:
            with self._db.connection() as db_conn, db_conn.cursor() as cur:
                if not tables.table_exists(cur, table):
                    return err(404, "Table not found")
                # §1.10: one shot, LIMIT max_records_per_request, no ORDER BY,
                # no OFFSET, no has_more: a larger table is cut silently.
                rows = tables.fetch_rows(
                    cur, table, conn["max_records_per_request"] or 10_000
                )
        except (tables.PgError, values.DecodeFailure) as ex:
            log.error("Failed to pull data: %s", ex)
            return err(500, "Failed to pull data")
        rows = self._dropped(rows)
        data = [values.wire_row(r) for r in rows]  # JasonError: Phoenix's 500
        n = len(data)
        # §1.10 side effects: counters bumped, limits not checked.
        self._conns.update(
            conn["uuid"],
            last_transfer_at=utc_now(),
            downloads_used=(conn["downloads_used"] or 0) + 1,
            records_downloaded=(conn["records_downloaded"] or 0) + n,
            total_transfers=(conn["total_transfers"] or 0) + 1,
            total_records_transferred=(conn["total_records_transferred"] or 0) + n,
        )
        self._send_transfer(conn, table, strategy)
        return 200, {"success": True, "table": table, "data": data}

    def _send_transfer(self, conn: dict[str, Any], table: str, strategy: Any) -> None:
        """§1.10 "Transfer row": a completed send transfer whose records_transferred,
        started_at and completed_at are dropped by the cast list; an invalid
        conflict_strategy makes the insert fail silently."""
        if strategy not in CONFLICT_STRATEGIES:
            return
        self._db.execute(
            "INSERT INTO phoenix_kit_sync_transfers (uuid, direction, connection_uuid, "
            "table_name, remote_site_url, conflict_strategy, status) "
            "VALUES (%s, 'send', %s, %s, %s, %s, 'completed')",
            (str(uuid7()), str(conn["uuid"]), table, conn["site_url"], strategy),
        )

    def _dropped(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stand-in's test switch (not PhoenixKit): lose every Nth row.

        A row with an integer ``id`` is lost when ``id`` is a multiple of N,
        whichever call serves it (so paging cannot refetch it); other rows
        when they are the Nth of their answer.
        """
        every = self._db.drop_every()
        if every <= 0:
            return rows
        return [
            r
            for i, r in enumerate(rows, 1)
            if (r["id"] if type(r.get("id")) is int else i) % every != 0
        ]

    def table_schema(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["auth_token_hash", "table_name"])
        if absent:
            # §1.11: this endpoint names the fields in the message, no array.
            return err(400, f"Missing required fields: {', '.join(absent)}")
        conn, refusal = self._sender(params)
        if refusal:
            return refusal
        assert conn is not None
        table = params["table_name"]
        if not table_allowed(conn, table):
            return err(403, "This connection is not authorised to access that table")
        schema = None
        if tables.valid_identifier(table):
            with self._db.connection() as db_conn, db_conn.cursor() as cur:
                schema = tables.table_schema(cur, table)
        if schema is None:
            return err(404, "Table not found")
        # §1.11: raw information_schema fields, no primary key.
        return 200, {"success": True, "schema": schema}

    def table_records(self, params: Params, req: dict[str, str]) -> Answer:
        if not self._db.enabled():
            return DISABLED
        absent = missing(params, ["auth_token_hash", "table_name"])
        if absent:
            return err(400, f"Missing required fields: {', '.join(absent)}")
        conn, refusal = self._sender(params)
        if refusal:
            return refusal
        assert conn is not None
        table = params["table_name"]
        if not table_allowed(conn, table):
            return err(403, "This connection is not authorised to access that table")
        # §1.12: limit default 10, capped at 100 (never raised to 0: a negative
        # limit reaches PostgreSQL); offset default 0.
        limit = min(parse_int(params.get("limit"), 10), 100)
        offset = parse_int(params.get("offset"), 0)
        if not tables.valid_identifier(table):
            return err(404, "Table not found")
        try:
            with self._db.connection() as db_conn, db_conn.cursor() as cur:
                if not tables.table_exists(cur, table):
                    return err(404, "Table not found")
                rows = tables.fetch_records(
                    cur,
                    table,
                    limit,
                    offset,
                    params.get("ids"),
                    params.get("id_start"),
                    params.get("id_end"),
                )
        except tables.PgError as ex:
            return err(500, f"Failed to get records: {ex.inspect()}")
        except (values.EncodeError, values.DecodeFailure) as ex:
            # Raised inside the query and rescued as :fetch_failed.
            log.info("table-records: %s", ex)
            return err(500, "Failed to get records: :fetch_failed")
        rows = self._dropped(rows)
        return 200, {"success": True, "records": [values.wire_row(r) for r in rows]}


ENDPOINTS: dict[str, tuple[str, str]] = {
    # §1.1 routes: endpoint -> (method, handler)
    "register-connection": ("POST", "register_connection"),
    "delete-connection": ("POST", "delete_connection"),
    "verify-connection": ("POST", "verify_connection"),
    "update-status": ("POST", "update_status"),
    "get-connection-status": ("POST", "get_connection_status"),
    "list-tables": ("POST", "list_tables"),
    "pull-data": ("POST", "pull_data"),
    "table-schema": ("POST", "table_schema"),
    "table-records": ("POST", "table_records"),
    "status": ("GET", "status"),
}


def _accepts_json(accept: str | None) -> bool:
    """Phoenix's ``plug :accepts, ["json"]``: no Accept header, or one allowing JSON."""
    if not accept or not accept.strip():
        return True
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "application/json"):
            return True
    return False


def _params(req: falcon.Request) -> Params:
    """Plug.Parsers: query params, overlaid by a JSON body's params.

    A JSON body that is not an object lands under "_json"; a body of another
    content type is not parsed; unparseable JSON is Phoenix's 400.
    """
    params: Params = dict(parse_qsl(req.query_string or "", keep_blank_values=True))
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    raw = req.bounded_stream.read()
    is_json = content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
    if is_json and raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            raise falcon.HTTPBadRequest() from None
        params.update(body if isinstance(body, dict) else {"_json": body})
    return params


class Endpoint:
    """One route; the method not routed answers as Phoenix does (404)."""

    def __init__(self, api: SyncApi, name: str, method: str, handler: str) -> None:
        self._name = name
        self._method = method
        self._handler: Callable[[Params, dict[str, str]], Answer] = getattr(
            api, handler
        )

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._serve("GET", req, resp)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._serve("POST", req, resp)

    def _serve(self, method: str, req: falcon.Request, resp: falcon.Response) -> None:
        if method != self._method:
            _reply(resp, 404, NOT_FOUND)
            return
        if not _accepts_json(req.get_header("Accept")):
            _reply(resp, 406, NOT_ACCEPTABLE)
            return
        try:
            params = _params(req) if method == "POST" else {}
        except falcon.HTTPBadRequest:
            _reply(resp, 400, BAD_REQUEST)
            return
        forwarded = req.get_header("X-Forwarded-For")
        facts = {
            # §1.3: remote_ip is the first X-Forwarded-For entry, else the peer.
            "remote_ip": forwarded.split(",")[0].strip()
            if forwarded
            else req.remote_addr,
            "user_agent": req.get_header("User-Agent") or "unknown",
        }
        try:
            status, body = self._handler(params, facts)
        except (Crash, values.JasonError, KeyError, TypeError) as ex:
            log.error("%s crashed: %s: %s", self._name, type(ex).__name__, ex)
            status, body = 500, SERVER_ERROR
        log.info("%s %s -> %s", method, self._name, status)
        _reply(resp, status, body)


def _reply(resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = "application/json; charset=utf-8"
    resp.text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _not_found(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    _reply(resp, 404, NOT_FOUND)


def create_app(db: Database) -> falcon.App:
    """The stand-in's WSGI app, its routes under the configured prefix."""
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    api = SyncApi(db)
    prefix = db.url_prefix()
    for name, (method, handler) in ENDPOINTS.items():
        app.add_route(f"{prefix}/sync/api/{name}", Endpoint(api, name, method, handler))
    app.add_error_handler(falcon.HTTPNotFound, _not_found)
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _not_found)
    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def make_http_server(db: Database, host: str, port: int) -> _Server:
    server = make_server(
        host, port, create_app(db), server_class=_Server, handler_class=_QuietHandler
    )
    return server  # type: ignore[return-value]


class ServerThread:
    """The stand-in's HTTP server in a thread of this process (for tests)."""

    def __init__(self, db: Database, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = make_http_server(db, host, port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
