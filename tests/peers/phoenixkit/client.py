"""The stand-in's operator side: what PhoenixKit's admin pages and client do.

``PhoenixKit(db)`` is the admin UI and ``ConnectionNotifier`` in one object:
creating a sender connection registers it on the remote (§3.1), each status
button tells the remote (§3.5), delete tells it first (§3.6), loading the
Connections page runs the self-healing checks (§3.7), and the Sync view lists
the sender's tables, marks the ones that differ and pulls them one shot each
(§3.3, §3.4).

Its HTTP client (§3.2) POSTs JSON with PhoenixKit's headers to
``site_url + remote_url_prefix + /sync/api/<endpoint>``, waits 30 s (60 s for
pull-data), and never retries, queues or backs off: a 429 is an "HTTP error
429" like any other status.

Every call made is appended to ``PhoenixKit.calls`` (endpoint, status), so a
test can see exactly what PhoenixKit would have sent and in which order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.peers.phoenixkit import importer, tables
from tests.peers.phoenixkit.connections import (
    Connections,
    InvalidConnection,
    generate_token,
    hash_token,
    same_site,
    utc_now,
)
from tests.peers.phoenixkit.db import Database, uuid7
from tests.peers.phoenixkit.importer import Importer, ImportResult, NoPrimaryKey

USER_AGENT = "PhoenixKit-Sync/1.0"
DEFAULT_TIMEOUT = 30.0
PULL_TIMEOUT = 60.0
MAX_RETRY_PASSES = 3


class Offline(Exception):
    """A transport error PhoenixKit calls offline: econnrefused, timeout, nxdomain."""


class TransportFailure(Exception):
    """Any other transport error."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class SyncCrashed(Exception):
    """The bulk sync's task for a table died (PhoenixKit shows it running forever)."""

    def __init__(self, table: str, reason: str, results: list[dict[str, Any]]) -> None:
        super().__init__(f"sync of {table} crashed: {reason}")
        self.table = table
        self.reason = reason
        self.results = results


def iso_now() -> str:
    return utc_now().isoformat().replace("+00:00", "Z")


class PhoenixKit:
    """One PhoenixKit site's admin and client, over the stand-in's database."""

    def __init__(
        self, db: Database, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.db = db
        self.conns = Connections(db)
        self.importer = Importer(db)
        self.calls: list[tuple[str, int | str]] = []
        self._http = httpx.Client(
            headers={
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": USER_AGENT,
            },
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- §3.2 the outbound client -------------------------------------------------

    def our_site_url(self) -> str:
        """get_our_site_url/0: the ``site_url`` setting (the stand-in has no
        endpoint to fall back on, so it must be set)."""
        url = self.db.setting("site_url")
        if not url:
            raise RuntimeError("the stand-in's site_url setting is not set")
        return url

    def api_url(self, site_url: str, endpoint: str) -> str:
        return (
            f"{site_url.rstrip('/')}{self.db.remote_url_prefix()}/sync/api/{endpoint}"
        )

    def _request(
        self,
        method: str,
        site_url: str,
        endpoint: str,
        body: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        url = self.api_url(site_url, endpoint)
        try:
            if method == "GET":
                resp = self._http.get(
                    url, headers={"content-type": ""}, timeout=timeout
                )
            else:
                resp = self._http.post(url, content=json.dumps(body), timeout=timeout)
        except (httpx.ConnectError, httpx.TimeoutException) as ex:
            self.calls.append((endpoint, "offline"))
            raise Offline(type(ex).__name__) from None
        except httpx.TransportError as ex:
            self.calls.append((endpoint, "error"))
            raise TransportFailure(f"{type(ex).__name__}: {ex}") from None
        self.calls.append((endpoint, resp.status_code))
        return Response(resp.status_code, resp.content)

    def post(
        self,
        site_url: str,
        endpoint: str,
        body: dict[str, Any],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        return self._request("POST", site_url, endpoint, body, timeout)

    def check_remote_status(self, site_url: str) -> Any:
        """check_remote_status/1: GET status; the decoded body, or an error."""
        try:
            resp = self._request("GET", site_url, "status")
        except (Offline, TransportFailure) as ex:
            return {"error": str(ex)}
        if resp.status != 200:
            return {"error": f"http_error {resp.status}"}
        body = resp.json()
        return body if body is not None else {"error": "invalid_json"}

    # -- §3.1 create a connection, register it on the remote --------------------------

    def create_connection(
        self, name: str, site_url: str, password: str | None = None
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """A sender connection (pending), then register-connection on the remote.

        Returns the row after the notification, the raw token (PhoenixKit never
        shows it; the stand-in hands it to the test) and the notification
        result. ``password`` is the programmatic option; the UI never sends one.
        """
        if same_site(site_url, self.our_site_url()):
            raise InvalidConnection("site_url cannot create a connection to yourself")
        token = generate_token()
        conn = self.conns.insert(
            {
                "name": name,
                "direction": "sender",
                "site_url": site_url,
                "status": "pending",
            },
            token,
        )
        result = self.notify_remote_site(conn, token, password)
        updated = self.conns.get(str(conn["uuid"]))
        assert updated is not None
        return updated, token, result

    def notify_remote_site(
        self, conn: dict[str, Any], token: str, password: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sender_url": self.our_site_url(),
            "connection_name": conn["name"],
            "auth_token": token,
        }
        if password is not None:
            body["password"] = password
        try:
            resp = self.post(conn["site_url"], "register-connection", body)
            result = _registration_result(resp)
        except (Offline, TransportFailure) as ex:
            result = {
                "success": False,
                "status": "failed",
                "message": "Failed to contact remote site",
                "remote_connection_uuid": None,
                "http_status": None,
                "error": str(ex),
            }
        meta = dict(conn["metadata"] or {})
        meta["remote_notification"] = {
            "notified_at": iso_now(),
            "notification_success": result["success"],
            "notification_status": result["status"],
            "notification_message": result["message"],
            "remote_connection_uuid": result["remote_connection_uuid"],
            "http_status": result["http_status"],
        }
        self.conns.update(conn["uuid"], metadata=meta)
        return result

    # -- §3.5 status buttons, §3.6 delete, regenerate ---------------------------------

    def _conn(self, uuid: str) -> dict[str, Any]:
        conn = self.conns.get(uuid)
        if conn is None:
            raise KeyError(f"no connection {uuid}")
        return conn

    def approve(self, uuid: str) -> tuple[dict[str, Any], str]:
        conn = self.conns.update(uuid, status="active", approved_at=utc_now())
        assert conn is not None
        return conn, self.notify_status_change(conn, "active")

    def suspend(
        self, uuid: str, reason: str | None = None
    ) -> tuple[dict[str, Any], str]:
        conn = self.conns.update(
            uuid, status="suspended", suspended_at=utc_now(), suspended_reason=reason
        )
        assert conn is not None
        return conn, self.notify_status_change(conn, "suspended")

    def reactivate(self, uuid: str) -> tuple[dict[str, Any], str]:
        conn = self.conns.update(
            uuid,
            status="active",
            suspended_at=None,
            suspended_by_uuid=None,
            suspended_reason=None,
        )
        assert conn is not None
        return conn, self.notify_status_change(conn, "active")

    def revoke(
        self, uuid: str, reason: str = "Revoked by admin"
    ) -> tuple[dict[str, Any], str]:
        conn = self.conns.update(
            uuid, status="revoked", revoked_at=utc_now(), revoked_reason=reason
        )
        assert conn is not None
        return conn, self.notify_status_change(conn, "revoked")

    def delete(self, uuid: str) -> str:
        """§3.6: the remote is told first, then the local row is hard-deleted."""
        conn = self._conn(uuid)
        outcome = self.notify_delete(conn)
        self.conns.delete(uuid)
        return outcome

    def regenerate_token(self, uuid: str) -> str:
        """§3.7 edge: a new hash, the remote is not told (the pairing breaks)."""
        token = generate_token()
        self.conns.update(uuid, auth_token_hash=hash_token(token))
        return token

    def update_settings(self, uuid: str, **settings: Any) -> dict[str, Any]:
        """The programmatic settings (not in the UI, §7): limits, table lists, ..."""
        conn = self.conns.update(uuid, **settings)
        assert conn is not None
        return conn

    def notify_status_change(self, conn: dict[str, Any], status: str) -> str:
        """notify_status_change/3: "updated", "not_found", "offline" or an error;
        only logged by PhoenixKit, never retried."""
        body = {
            "sender_url": self.our_site_url(),
            "auth_token_hash": conn["auth_token_hash"],
            "status": status,
        }
        return self._notice("update-status", conn, body, "updated")

    def notify_delete(self, conn: dict[str, Any]) -> str:
        body = {
            "sender_url": self.our_site_url(),
            "auth_token_hash": conn["auth_token_hash"],
        }
        return self._notice("delete-connection", conn, body, "deleted")

    def _notice(
        self, endpoint: str, conn: dict[str, Any], body: dict[str, Any], ok: str
    ) -> str:
        try:
            resp = self.post(conn["site_url"], endpoint, body)
        except Offline:
            return "offline"
        except TransportFailure as ex:
            return f"error: {ex}"
        if resp.status in (200, 204):
            return ok
        if resp.status == 404:
            return "not_found"
        return f"error: unexpected_status {resp.status}"

    # -- §3.7 the Connections page's self-healing checks --------------------------------

    def query_sender_status(self, conn: dict[str, Any]) -> str:
        """Status.resolve_sender_status: the sender's status, or "offline",
        "not_found", "error"."""
        body = {
            "receiver_url": self.our_site_url(),
            "auth_token_hash": conn["auth_token_hash"],
        }
        try:
            resp = self.post(conn["site_url"], "get-connection-status", body)
        except Offline:
            return "offline"
        except TransportFailure:
            return "error"
        if resp.status == 404:
            return "not_found"
        if resp.status != 200:
            return "error"
        data = resp.json()
        if isinstance(data, dict) and data.get("success") is True and "status" in data:
            return str(data["status"])
        if isinstance(data, dict) and data.get("success") is False:
            return "not_found"
        return "error"

    def verify_connection(self, conn: dict[str, Any]) -> str:
        """verify_connection/2: "exists" for 200 and any status but 404."""
        body = {
            "sender_url": self.our_site_url(),
            "auth_token_hash": conn["auth_token_hash"],
        }
        try:
            resp = self.post(conn["site_url"], "verify-connection", body)
        except Offline:
            return "offline"
        except TransportFailure as ex:
            return f"error: {ex}"
        return "not_found" if resp.status == 404 else "exists"

    def load_connections_page(self) -> dict[str, Any]:
        """What opening the Connections page does (§3.7): each receiver asks its
        sender's status (the badge; the row itself is not changed), each
        notified sender verifies, and a 404 suspends it."""
        badges: dict[str, str] = {}
        verified: dict[str, str] = {}
        for conn in self.conns.list("receiver"):
            badges[str(conn["uuid"])] = self.query_sender_status(conn)
        for conn in self.conns.list("sender"):
            notified = (conn["metadata"] or {}).get("remote_notification", {})
            if conn["status"] in ("active", "pending", "suspended") and (
                notified.get("notification_success") is True
            ):
                outcome = self.verify_connection(conn)
                verified[str(conn["uuid"])] = outcome
                if outcome == "not_found" and conn["status"] != "suspended":
                    self.conns.update(
                        conn["uuid"],
                        status="suspended",
                        suspended_at=utc_now(),
                        suspended_reason="Remote site reports connection not found",
                    )
        return {"sender_statuses": badges, "verified": verified}

    # -- §3.3 the Sync view -----------------------------------------------------------

    def fetch_sender_tables(self, conn: dict[str, Any]) -> list[dict[str, Any]] | str:
        """fetch_sender_tables/2: the tables, or an error atom/text."""
        try:
            resp = self.post(
                conn["site_url"],
                "list-tables",
                {"auth_token_hash": conn["auth_token_hash"]},
            )
        except Offline:
            return "offline"
        except TransportFailure as ex:
            return str(ex)
        if resp.status != 200:
            return {401: "unauthorized", 404: "not_found"}.get(
                resp.status, "unexpected_response"
            )
        data = resp.json()
        if isinstance(data, dict) and data.get("success") is True and "tables" in data:
            return [
                {
                    "name": t.get("name"),
                    "row_count": t.get("row_count") or 0,
                    "size_bytes": t.get("size_bytes") or 0,
                    "checksum": t.get("checksum"),
                    "depends_on": t.get("depends_on") or [],
                }
                for t in data["tables"]
            ]
        if isinstance(data, dict) and data.get("success") is False and "error" in data:
            return str(data["error"])
        return "invalid_response"

    def local_count_and_checksum(self, table: str) -> tuple[int | None, str | None]:
        """The receiver's own count (None when the table is missing) and checksum."""
        count: int | None = None
        checksum: str | None = None
        with self.db.connection() as conn, conn.cursor() as cur:
            if tables.valid_identifier(table):
                try:
                    count = int(
                        tables._savepoint(
                            cur, f'SELECT COUNT(*) FROM "public"."{table}"'
                        )[0][0]
                    )
                except tables.PgError:
                    count = None
                checksum = tables.checksum(cur, table)
        return count, checksum

    def sync_view(self, uuid: str) -> list[dict[str, Any]] | str:
        """The table picker: sender and local counts and checksums, and the
        "differs" marker (table_differs?/3, what "Select different" picks)."""
        conn = self._conn(uuid)
        found = self.fetch_sender_tables(conn)
        if isinstance(found, str):
            return found
        view = []
        for t in found:
            count, checksum = self.local_count_and_checksum(t["name"])
            view.append(
                {
                    **t,
                    "local_count": count,
                    "local_checksum": checksum,
                    "differs": table_differs(t, count, checksum),
                }
            )
        return view

    def select_with_dependencies(
        self, selected: list[str], sender_tables: list[dict[str, Any]]
    ) -> list[str]:
        """Selecting a table selects its FK dependencies, recursively (§3.3.2)."""
        by_name = {t["name"]: t for t in sender_tables}
        chosen: list[str] = []
        todo = list(selected)
        while todo:
            name = todo.pop(0)
            if name in chosen:
                continue
            chosen.append(name)
            todo.extend(by_name.get(name, {}).get("depends_on", []))
        return chosen

    def sync(
        self,
        uuid: str,
        selected: list[str],
        strategy: str | None = None,
        with_dependencies: bool = True,
    ) -> dict[str, Any]:
        """ "Sync data" (§3.3): the sender must say "active"; list-tables; the
        selection (with dependencies) in dependency order, one pull-data each,
        through the remap import; then up to 3 retry passes of the tables with
        errors while a pass still imports something.

        Raises SyncCrashed when a table's import dies (a missing table, one with
        no single-column primary key): PhoenixKit's sync then never finishes.
        """
        conn = self._conn(uuid)
        sender_status = self.query_sender_status(conn)
        if sender_status != "active":
            return {
                "status": "not_offered",
                "sender_status": sender_status,
                "tables": [],
            }
        sender_tables = self.fetch_sender_tables(conn)
        if isinstance(sender_tables, str):
            return {"status": "failed", "error": sender_tables, "tables": []}
        names = (
            self.select_with_dependencies(selected, sender_tables)
            if with_dependencies
            else list(selected)
        )
        order = sort_by_dependencies(names, sender_tables)
        strategy = strategy or conn["default_conflict_strategy"] or "skip"
        remap: dict[tuple[str, Any], Any] = {}
        results: list[dict[str, Any]] = []
        retry_pass = 0
        batch = order
        while True:
            pass_results = []
            for table in batch:
                try:
                    outcome, remap = self.pull_table_data_with_remap(
                        conn, table, remap, strategy
                    )
                except NoPrimaryKey as ex:
                    raise SyncCrashed(table, str(ex), results) from None
                row = _table_result(table, outcome)
                pass_results.append(row)
                results = _merge_result(results, row, retry_pass)
            failed = [r["table"] for r in results if r["errors"] > 0]
            if failed and retry_pass < MAX_RETRY_PASSES:
                made_progress = retry_pass == 0 or any(
                    r["imported"] > 0 for r in pass_results
                )
                if made_progress:
                    retry_pass += 1
                    batch = failed
                    continue
            break
        return {
            "status": "completed",
            "order": order,
            "retry_passes": retry_pass,
            "tables": results,
        }

    # -- pull-data and the two import paths -----------------------------------------

    def _pull(
        self, conn: dict[str, Any], table: str, strategy: str
    ) -> tuple[str, Any, Any]:
        """One pull-data call: ("data", rows, transfer) or ("error", reason, transfer)."""
        transfer = self._create_receive_transfer(conn, table, strategy)
        body = {
            "auth_token_hash": conn["auth_token_hash"],
            "table_name": table,
            "conflict_strategy": strategy,
        }
        try:
            resp = self.post(conn["site_url"], "pull-data", body, timeout=PULL_TIMEOUT)
        except Offline:
            self._fail_transfer(transfer, "Sender offline")
            return "error", "offline", transfer
        except TransportFailure as ex:
            self._fail_transfer(transfer, str(ex))
            return "error", str(ex), transfer
        if resp.status == 200:
            data = resp.json()
            if (
                isinstance(data, dict)
                and data.get("success") is True
                and "data" in data
            ):
                return "data", data["data"], transfer
            if (
                isinstance(data, dict)
                and data.get("success") is False
                and "error" in data
            ):
                self._fail_transfer(transfer, str(data["error"]))
                return "error", str(data["error"]), transfer
            self._fail_transfer(transfer, "Invalid response from remote site")
            return "error", "invalid_response", transfer
        if resp.status == 401:
            self._fail_transfer(transfer, "Unauthorized")
            return "error", "unauthorized", transfer
        if resp.status == 404:
            self._fail_transfer(transfer, "Table not found")
            return "error", "table_not_found", transfer
        # Every other status, 429 included: failed, no retry (§3.2).
        self._fail_transfer(transfer, f"HTTP error {resp.status}")
        return "error", "unexpected_response", transfer

    def pull_table_data(
        self, uuid: str, table: str, strategy: str | None = None
    ) -> dict[str, Any]:
        """The "precise transfer" pull (§3.3.6): one pull-data, import path A."""
        conn = self._conn(uuid)
        strategy = strategy or conn["default_conflict_strategy"] or "skip"
        kind, payload, transfer = self._pull(conn, table, strategy)
        if kind == "error":
            return {"table": table, "error": payload}
        result = self.importer.import_table_data(
            table, payload if isinstance(payload, list) else [], strategy
        )
        self._complete_transfer(transfer, payload, result)
        return {"table": table, **result.counts(), "error_sample": result.error_sample}

    def pull_table_data_with_remap(
        self,
        conn: dict[str, Any],
        table: str,
        remap: dict[tuple[str, Any], Any],
        strategy: str,
    ) -> tuple[Any, dict[tuple[str, Any], Any]]:
        kind, payload, transfer = self._pull(conn, table, strategy)
        if kind == "error":
            return ("error", payload), remap
        result = self.importer.import_table_data_with_remap(
            table, payload if isinstance(payload, list) else [], strategy, remap
        )
        self._complete_transfer(transfer, payload, result)
        return ("ok", result), result.remap

    def fetch_table_schema(self, uuid: str, table: str) -> Any:
        conn = self._conn(uuid)
        resp = self.post(
            conn["site_url"],
            "table-schema",
            {"auth_token_hash": conn["auth_token_hash"], "table_name": table},
        )
        return _table_answer(resp, "schema")

    def fetch_table_records(
        self,
        uuid: str,
        table: str,
        limit: int = 10,
        offset: int = 0,
        ids: list[Any] | None = None,
        id_range: tuple[Any, Any] | None = None,
    ) -> Any:
        conn = self._conn(uuid)
        body: dict[str, Any] = {
            "auth_token_hash": conn["auth_token_hash"],
            "table_name": table,
            "limit": limit,
            "offset": offset,
        }
        if ids:
            body["ids"] = ids
        if id_range is not None:
            body["id_start"], body["id_end"] = id_range
        resp = self.post(conn["site_url"], "table-records", body)
        return _table_answer(resp, "records")

    def create_missing_table(self, uuid: str, table: str) -> str | None:
        """The precise tab's "create missing local table" from the fetched schema."""
        schema = self.fetch_table_schema(uuid, table)
        if isinstance(schema, dict) and "error" in schema and len(schema) == 1:
            return str(schema["error"])
        return importer.create_table(self.db, table, schema)

    # -- receiver-side transfers (§2.2, §3.3.4) --------------------------------------

    def _create_receive_transfer(
        self, conn: dict[str, Any], table: str, strategy: str
    ) -> str:
        uuid = str(uuid7())
        # started_at is passed by PhoenixKit but not cast: it stays null (§2.2).
        self.db.execute(
            "INSERT INTO phoenix_kit_sync_transfers (uuid, direction, connection_uuid, "
            "table_name, remote_site_url, conflict_strategy, status) "
            "VALUES (%s, 'receive', %s, %s, %s, %s, 'in_progress')",
            (uuid, str(conn["uuid"]), table, conn["site_url"], strategy),
        )
        return uuid

    def _complete_transfer(self, uuid: str, data: Any, result: ImportResult) -> None:
        self.db.execute(
            "UPDATE phoenix_kit_sync_transfers SET status = 'completed', completed_at = now(), "
            "records_transferred = %s, records_created = %s, records_skipped = %s, "
            "records_failed = %s WHERE uuid = %s",
            (
                len(data) if isinstance(data, list) else 0,
                result.imported,
                result.skipped,
                result.errors,
                uuid,
            ),
        )

    def _fail_transfer(self, uuid: str, message: str) -> None:
        self.db.execute(
            "UPDATE phoenix_kit_sync_transfers SET status = 'failed', completed_at = now(), "
            "error_message = %s WHERE uuid = %s",
            (message, uuid),
        )

    def transfers(self) -> list[dict[str, Any]]:
        return self.db.rows(
            "SELECT * FROM phoenix_kit_sync_transfers ORDER BY inserted_at, uuid"
        )


# -- helpers following the LiveView's functions --------------------------------------


def _registration_result(resp: Response) -> dict[str, Any]:
    """parse_response/1 of the notifier (§3.1 step 3)."""
    data = resp.json()
    if resp.status == 200:
        if isinstance(data, dict) and data.get("success") is True:
            pending = data.get("connection_status") == "pending"
            return {
                "success": True,
                "status": "pending" if pending else "registered",
                "message": data.get("message") or "Connection registered",
                "remote_connection_uuid": data.get("connection_uuid")
                or data.get("connection_id"),
                "http_status": 200,
                "error": None,
            }
        if isinstance(data, dict) and data.get("success") is False:
            text = data.get("error") or "Remote site rejected connection"
            return _failed(200, text, text)
        return _failed(
            200, "Invalid JSON response", "Invalid response from remote site"
        )
    defaults = {
        401: "Password required or invalid",
        403: "Incoming connections denied",
        409: "Connection already exists",
        503: "DB Sync module disabled on remote site",
    }
    default = defaults.get(resp.status, f"HTTP error {resp.status}")
    text = data["error"] if isinstance(data, dict) and "error" in data else default
    return _failed(resp.status, text, text)


def _failed(status: int, error: Any, message: Any) -> dict[str, Any]:
    return {
        "success": False,
        "status": "failed",
        "message": message,
        "remote_connection_uuid": None,
        "http_status": status,
        "error": error,
    }


def _table_answer(resp: Response, key: str) -> Any:
    if resp.status == 200:
        data = resp.json()
        if isinstance(data, dict) and data.get("success") is True and key in data:
            return data[key]
        if isinstance(data, dict) and data.get("success") is False and "error" in data:
            return {"error": data["error"]}
        return {"error": "invalid_response"}
    return {
        "error": {401: "unauthorized", 404: "table_not_found"}.get(
            resp.status, "unexpected_response"
        )
    }


def table_differs(
    table: dict[str, Any], local_count: int | None, local_checksum: str | None
) -> bool:
    """table_differs?/3: missing locally; else checksums when both are set;
    else counts (§3.3.1)."""
    if local_count is None:
        return True
    sender_checksum = table.get("checksum")
    if sender_checksum and local_checksum:
        return bool(sender_checksum != local_checksum)
    return bool(local_count != (table.get("row_count") or 0))


def sort_by_dependencies(
    names: list[str], sender_tables: list[dict[str, Any]]
) -> list[str]:
    """sort_by_dependencies/2: a dependency-first sort of the selection; a
    cycle is broken by appending the node (§3.3.4). Map keys in sorted order,
    as Elixir keeps a small map's keys."""
    chosen = set(names)
    deps_of = {t["name"]: t.get("depends_on") or [] for t in sender_tables}
    graph = {n: [d for d in deps_of.get(n, []) if d in chosen] for n in names}
    ordered: list[str] = []
    visited: set[str] = set()

    def visit(node: str, path: frozenset[str]) -> None:
        if node in visited:
            return
        if node in path:
            ordered.append(node)
            visited.add(node)
            return
        for dep in graph.get(node, []):
            visit(dep, path | {node})
        ordered.append(node)
        visited.add(node)

    for node in sorted(graph):
        visit(node, frozenset())
    return ordered


def _table_result(table: str, outcome: Any) -> dict[str, Any]:
    """extract_sync_counts/1."""
    kind, payload = outcome
    if kind == "ok":
        return {"table": table, **payload.counts(), "error_message": None}
    messages = {
        "offline": "Sender is offline",
        "unauthorized": "Unauthorized - check connection token",
        "table_not_found": "Table not found on sender",
    }
    if payload in messages:
        text = messages[payload]
    elif payload in ("invalid_response", "unexpected_response"):
        text = f"Sync failed: :{payload}"
    else:
        text = str(payload)
    return {
        "table": table,
        "imported": 0,
        "skipped": 0,
        "errors": 0,
        "error_message": text,
    }


def _merge_result(
    results: list[dict[str, Any]], row: dict[str, Any], retry_pass: int
) -> list[dict[str, Any]]:
    """process_table_sync_result/3: on a retry pass a table's imported and
    skipped counts add up, its errors are the latest pass's, and its row moves
    to the end."""
    if retry_pass == 0:
        return [*results, row]
    previous = [r for r in results if r["table"] == row["table"]]
    others = [r for r in results if r["table"] != row["table"]]
    if len(previous) != 1:
        return [*results, row]
    prev = previous[0]
    merged = {
        "table": row["table"],
        "imported": prev["imported"] + row["imported"],
        "skipped": prev["skipped"] + row["skipped"],
        "errors": row["errors"],
        "error_message": row["error_message"],
        "retried": True,
    }
    return [*others, merged]
