"""A hostile sender the test owns, and a receiver that pulls from it for real.

``HostileSender`` is a real HTTP server on 127.0.0.1 (``http.server``, one
thread per request) that answers the peer API's data endpoints. Left alone it
answers honestly, from a PostgreSQL source database through this project's
own sender code (the page reader and the COPY stream); a test gives it a
``behaviour`` that replaces or mutates any answer: wrong types, huge counts,
deep nesting, NUL, escapes, lies about counts and cursors, cut bodies.

``Receiver`` is a receiver site built in-process (no worker: the tests call
``pulls.run``, the function the worker's ``run_pull`` task calls, and honour
the retry delay it returns as the task would). Its data database runs with
``standard_conforming_strings = off`` and holds tables of its own that no
pull may touch; ``fingerprint`` checksums them (definition, constraints
both ways, triggers, rows) so a test can compare before and after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import Engine, create_engine, text

from shared.context import Site
from shared.control.peer import PeerClient
from shared.data import copy_format
from shared.data.receiver import pulls
from shared.data.sender import copy_out
from shared.data.sender.offer import Catalog
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.state.models import Connection, Transfer, TransferTable
from tests.helpers import PG_ADMIN_URL, ScratchDatabases, make_settings, run

TOKEN_HASH = hashlib.sha256(b"hostile-sender-token").hexdigest()

# The source's tables: what an honest sender would offer.
SOURCE = (
    "CREATE TABLE categories (id integer PRIMARY KEY, label text NOT NULL)",
    "INSERT INTO categories VALUES (1, 'tools'), (2, 'toys')",
    """CREATE TABLE items (
        id bigint PRIMARY KEY,
        name text NOT NULL DEFAULT 'unnamed',
        qty integer,
        price numeric(10,2),
        data jsonb,
        at timestamptz,
        category_id integer REFERENCES categories (id)
    )""",
    """INSERT INTO items VALUES
        (1, 'hammer', 3, 12.50, '{"a": 1}', '2024-01-02T03:04:05Z', 1),
        (2, 'ball', 0, 1.10, '[1, "x"]', NULL, 2),
        (3, 'e\\u00e9\\t\\\\tab', NULL, NULL, 'null', '2024-05-06T00:00:00Z', NULL),
        (4, 'kite', 7, 99999999.99, '{"deep": {"er": [true, null]}}', NULL, 2),
        (5, 'yo-yo', -1, 0, NULL, '1999-12-31T23:59:59.5Z', 1)""",
)
SOURCE_ROWS = 5

# The receiver's own tables: a pull may never change them.
OWN_TABLES = (
    "CREATE TABLE users (id integer PRIMARY KEY, name text NOT NULL)",
    "INSERT INTO users VALUES (1, 'alice'), (2, 'bob')",
    "CREATE TABLE victim (id integer PRIMARY KEY, note text)",
    "INSERT INTO victim VALUES (1, 'must survive'), (2, E'back\\\\slash')",
)
KEPT = frozenset({"users", "victim"})


# ---------------------------------------------------------------- answers


@dataclasses.dataclass
class Answer:
    """One HTTP answer as the hostile sender sends it.

    ``obj`` is the JSON object an honest answer was made from (None for a
    COPY body or raw bytes); ``cut`` announces more bytes than are sent and
    then closes the connection, so the body breaks off.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    cut: bool = False
    obj: Any = None


def json_answer(obj: Any, status: int = 200) -> Answer:
    return Answer(status, json.dumps(obj).encode(), obj=obj)


def raw_answer(body: bytes, status: int = 200, content_type: str = "") -> Answer:
    return Answer(status, body, content_type or "application/json")


def nested(depth: int, inner: str = "1") -> bytes:
    """JSON text nested ``depth`` lists deep."""
    return ("[" * depth + inner + "]" * depth).encode()


Behaviour = Callable[[str, Any, Callable[[], Answer]], Answer]


def honest_behaviour(endpoint: str, body: Any, honest: Callable[[], Answer]) -> Answer:
    return honest()


class HostileSender:
    """Answer the data endpoints on a loopback port as ``behaviour`` says."""

    def __init__(self, source: Engine, *, page_rows: int = 2) -> None:
        self.source = source
        self.page_rows = page_rows
        self.behaviour: Behaviour = honest_behaviour
        self.json_only = False  # answer pull-data with JSON pages, as PhoenixKit
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                endpoint = self.path.rstrip("/").rsplit("/", 1)[-1]
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                answer = owner.answer(endpoint, body)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                announced = len(answer.body) + (1000 if answer.cut else 0)
                self.send_header("Content-Length", str(announced))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hostile-sender", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, endpoint: str, body: Any) -> Answer:
        with self._lock:
            self.calls.append((endpoint, body))
        try:
            return self.behaviour(endpoint, body, lambda: self.honest(endpoint, body))
        except Exception as ex:  # the test's own mistake: show it as a 500
            return json_answer({"success": False, "error": f"hostile: {ex!r}"}, 500)

    def endpoints(self) -> list[str]:
        return [endpoint for endpoint, _ in self.calls]

    # -- what an honest sender answers ---------------------------------------------

    def honest(self, endpoint: str, body: Any) -> Answer:
        catalog = Catalog(self.source)
        if endpoint == "list-tables":
            names = catalog.offered_tables()
            return json_answer(
                {"success": True, "tables": catalog.table_summaries(names)}
            )
        table = body.get("table_name") if isinstance(body, dict) else None
        if table not in catalog.offered_tables():
            return json_answer({"success": False, "error": "Table not found"}, 404)
        if endpoint == "table-schema":
            return json_answer(
                {
                    "success": True,
                    "table": table,
                    "schema": catalog.schema_payload(table),
                }
            )
        if endpoint != "pull-data":
            return json_answer({"success": False, "error": "Not found"}, 404)
        after = body.get("after")
        wanted = body.get("format")
        if wanted in copy_format.COPY_FORMATS and not self.json_only:
            page = copy_out.open_page(
                self.source,
                catalog,
                table,
                after=after,
                limit=self.page_rows,
                wire_format=wanted,
            )
            if page is not None:
                try:
                    data = b"".join(page)
                    return Answer(200, data, page.content_type, dict(page.headers))
                finally:
                    page.close()
        page_json = catalog.fetch_page(table, after=after, limit=self.page_rows)
        return json_answer(
            {
                "success": True,
                "table": table,
                "data": page_json.rows,
                "count": len(page_json.rows),
                "has_more": page_json.has_more,
                "next_cursor": page_json.next_cursor,
            }
        )


def copy_answer(answer: Answer) -> bool:
    return copy_format.is_bulk(answer.content_type)


# ---------------------------------------------------------------- the receiver


@dataclasses.dataclass
class Pulled:
    """How a pull ended: the transfer as recorded, and how many runs it took."""

    transfer: Transfer
    tables: list[TransferTable]
    runs: int
    outcomes: list[str]


def scratch_pair(databases: ScratchDatabases) -> tuple[str, str, str]:
    """(source URL, receiver state URL, receiver data URL); the data database
    runs with standard_conforming_strings off."""
    source = databases.create("hostile_src")
    state = databases.create("hostile_state", migrate=True)
    data = databases.create("hostile_data")
    set_conforming_strings(data, "off")
    return source, state, data


def set_conforming_strings(url: str, value: str) -> None:
    """Make every new session of ``url``'s database start with this setting."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f'ALTER DATABASE "{name}" SET standard_conforming_strings = {value}'
            )
    finally:
        admin.dispose()


class Receiver:
    """A receiver site in-process, with one active connection to ``sender_url``."""

    def __init__(
        self, state_url: str, data_url: str, sender_url: str, **env: str
    ) -> None:
        self.settings = make_settings(
            state_url,
            **{
                "SYNC_DATA_DATABASE_URL": data_url,
                "SYNC_PULL_MAX_ATTEMPTS": "3",
                "SYNC_RETRY_BASE_SECONDS": "1",
                "SYNC_RETRY_MAX_SECONDS": "1",
                "SYNC_HTTP_TIMEOUT_SECONDS": "10",
                **env,
            },
        )
        self.site = Site(
            self.settings,
            Database(self.settings.database_url, self.settings.data_database_url),
            DeferredDispatcher(),
        )
        self.data = self.site.db.data_engine
        self.peer = PeerClient(self.settings)
        with self.site.db.session() as session:
            conn = Connection(
                name="hostile",
                direction="receiver",
                site_url=sender_url,
                auth_token_hash=TOKEN_HASH,
                status="active",
                meta={},
            )
            session.add(conn)
            session.flush()
            self.connection_id = conn.id
        run(self.data, *OWN_TABLES)

    def close(self) -> None:
        self.peer.close()
        self.site.db.dispose()

    def conforming_strings(self) -> str:
        with self.data.connect() as conn:
            return str(
                conn.exec_driver_sql("SHOW standard_conforming_strings").scalar()
            )

    def reset(self) -> None:
        """Drop every table but the receiver's own, forget every transfer."""
        with self.data.begin() as conn:
            for (name,) in conn.exec_driver_sql(
                "SELECT quote_ident(tablename) FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> ALL(%(kept)s)",
                {"kept": list(KEPT)},
            ).all():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name} CASCADE")
        with self.site.db.engine.begin() as conn:
            conn.execute(text("TRUNCATE dbsync_transfers CASCADE"))

    def start(
        self,
        *tables: str,
        all_tables: bool = False,
        strategy: str = "skip",
        create_missing: bool = True,
    ) -> str:
        with self.site.db.session() as session:
            conn = session.get_one(Connection, self.connection_id)
            transfer = pulls.start(
                session,
                self.site,
                conn,
                tables,
                all_tables=all_tables,
                strategy=strategy,
                create_missing=create_missing,
            )
            return str(transfer.id)

    def pull(self, *tables: str, **options: Any) -> Pulled:
        return self.drive(self.start(*tables, **options))

    def drive(self, tid: str) -> Pulled:
        """Run the transfer as a worker would until it ends, waiting out each
        retry as the task's countdown would; at most its attempts (+1 to see
        the bound kept)."""
        outcomes = []
        for run_no in range(self.settings.pull_max_attempts + 1):
            outcome = pulls.run(self.site, self.peer, tid, f"test-run-{run_no}")
            outcomes.append(outcome.state)
            if outcome.state in ("completed", "failed"):
                break
            assert outcome.state == "retrying", outcomes
            assert outcome.retry_in is not None
            time.sleep(outcome.retry_in + 0.05)
        with self.site.db.session() as session:
            transfer = session.get_one(Transfer, uuid.UUID(tid))
            tables = list(
                session.query(TransferTable)
                .filter(TransferTable.transfer_id == transfer.id)
                .order_by(TransferTable.position)
            )
            session.expunge_all()
        return Pulled(transfer, tables, len(outcomes), outcomes)

    def swept(self) -> set[str]:
        """Transfers beat's sweep (or a starting worker) would dispatch again."""
        due = set(pulls.due(self.site, grace_seconds=0))
        held = {t for t, _ in pulls.orphaned(self.site, every_held=True)}
        return due | held

    def fingerprint(self, skip: Iterable[str] = ()) -> dict[str, str]:
        """A checksum of every table of the data database but ``skip`` (and the
        pull checkpoints): its columns and defaults, every constraint on it or
        pointing at it, its triggers, its rows; and the list of schemas."""
        skip = set(skip) | {"dbsync_pull_checkpoints"}
        out: dict[str, str] = {}
        with self.data.connect() as conn:
            conn.exec_driver_sql("SET standard_conforming_strings = on")
            out["schemas"] = repr(
                conn.exec_driver_sql(
                    "SELECT array_agg(nspname ORDER BY nspname) FROM pg_namespace"
                    " WHERE nspname NOT LIKE 'pg\\_%%'"
                    " AND nspname <> 'information_schema'"
                ).scalar()
            )
            tables = conn.exec_driver_sql(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                " AND n.nspname NOT LIKE 'pg\\_%%'"
                " AND n.nspname <> 'information_schema'"
            ).all()
            for oid, schema, name in tables:
                if schema == "public" and name in skip:
                    continue
                definition = conn.exec_driver_sql(
                    "SELECT"
                    " (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid,"
                    "  a.atttypmod) || ' ' || a.attnotnull || ' ' ||"
                    "  coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), ', '"
                    "  ORDER BY a.attnum) FROM pg_attribute a LEFT JOIN pg_attrdef d"
                    "  ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                    "  WHERE a.attrelid = %(oid)s AND a.attnum > 0"
                    "  AND NOT a.attisdropped),"
                    " (SELECT string_agg(con.conrelid::regclass::text || ' '"
                    "  || pg_get_constraintdef(con.oid), '; ' ORDER BY 1)"
                    "  FROM pg_constraint con"
                    "  WHERE con.conrelid = %(oid)s OR con.confrelid = %(oid)s),"
                    " (SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger"
                    "  WHERE tgrelid = %(oid)s)",
                    {"oid": oid},
                ).one()
                rows = conn.exec_driver_sql(
                    f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text),"
                    f" '')), count(*) FROM {quote_pair(schema, name)} t"
                ).one()
                out[f"{schema}.{name}"] = repr((tuple(definition), tuple(rows)))
        return out

    def tables(self) -> list[str]:
        with self.data.connect() as conn:
            return sorted(
                conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).scalars()
            )

    def count(self, table: str) -> int:
        with self.data.connect() as conn:
            return int(
                conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar() or 0
            )


def quote_pair(schema: str, name: str) -> str:
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


def source_engine(url: str) -> Engine:
    engine = create_engine(url)
    run(engine, *SOURCE)
    return engine


def copy_text_body(rows: Iterable[Iterable[str]]) -> bytes:
    """COPY text lines from already-escaped fields (a hostile sender's own)."""
    out = io.StringIO()
    for row in rows:
        out.write("\t".join(row) + "\n")
    return out.getvalue().encode("utf-8", "surrogatepass")


def open_pair(
    factory: Any, **receiver_env: str
) -> Iterator[tuple[HostileSender, Receiver]]:
    """A hostile sender on its own source database and a receiver pulling from
    it, for a module's fixture to ``yield from``; both closed afterwards."""
    source_url, state_url, data_url = scratch_pair(factory)
    source = source_engine(source_url)
    sender = HostileSender(source)
    receiver = Receiver(state_url, data_url, sender.url, **receiver_env)
    try:
        yield sender, receiver
    finally:
        receiver.close()
        sender.close()
        source.dispose()
