"""Give every test one set of helpers: scratch databases, settings, SQL, HTTP, rows.

Tests used to define these in each module, each a little different; one place
keeps them the same and lets a fix land once. Data (tables and their rows)
lives in tests/datasets.py; fixtures live in the conftest.py files.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from falcon import testing
from sqlalchemy import Engine, create_engine, select, text

from shared.context import Site
from shared.control import connections, module
from shared.control.connections import SenderOptions
from shared.security import new_token
from shared.settings import Settings
from shared.state.models import Connection, Transfer

PG_ADMIN_URL = os.environ.get(
    "SYNC_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SITE_URL = "http://127.0.0.1:18999"  # the `site` fixture's own URL
API = "/sync/api"
PEER = "http://127.0.0.1:19001"
OTHER_PEER = "http://127.0.0.1:19002"
DBSYNC = str(Path(sys.executable).parent / "dbsync")  # the operator's command


# ------------------------------------------------------------ scratch databases


def pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _admin(statements: Iterable[str]) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        admin.dispose()


def create_database(name: str) -> str:
    """Create (or re-create) database ``name``; return its URL."""
    _admin(
        [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"']
    )
    return pg_url(name)


def drop_database(name: str) -> None:
    _admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


class ScratchDatabases:
    """Uniquely named PostgreSQL databases for one fixture's scope, all dropped at close.

    Names carry the process id and a random tail, so parallel runs on one server
    never meet.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._engines: list[Engine] = []

    def create(self, label: str = "db", *, migrate: bool = False) -> str:
        """A new empty database (migrated to head if asked); return its URL."""
        name = f"dbsync_test_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        url = create_database(name)
        self._names.append(name)
        if migrate:
            from shared.state.migrate import upgrade

            upgrade(url)
        return url

    def engine(self, label: str = "db") -> Engine:
        """A new empty database's engine; disposed of at close."""
        engine = create_engine(self.create(label))
        self._engines.append(engine)
        return engine

    def __enter__(self) -> ScratchDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
        self._engines.clear()
        for name in reversed(self._names):
            drop_database(name)
        self._names.clear()


# ------------------------------------------------------------ settings and sites


def make_settings(database_url: str, **overrides: str) -> Settings:
    env = {
        "SYNC_DATABASE_URL": database_url,
        "SYNC_SITE_URL": SITE_URL,
        "SYNC_ALLOW_PRIVATE_URLS": "true",
        "SYNC_HOME": "/tmp/dbsync-test-home",
    }
    env.update(overrides)
    return Settings.from_env(env)


def enable(site: Site, enabled: bool = True) -> None:
    """Switch the module on (or off), touching no other setting."""
    with site.db.session() as session:
        module.get(session).enabled = enabled


def configure(
    site: Site,
    *,
    enabled: bool = True,
    mode: str = "auto_accept",
    password: str | None = None,
) -> None:
    """Set the module switch, the incoming mode and, if given, the password."""
    with site.db.session() as session:
        row = module.get(session)
        row.enabled = enabled
        row.incoming_mode = mode
        if password is not None:
            module.set_password(session, password)


# ------------------------------------------------------------ connections


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_connection(
    site: Site,
    *,
    direction: str = "receiver",
    status: str = "active",
    url: str = PEER,
    name: str = "Peer A",
    token_hash: str | None = None,
) -> tuple[uuid.UUID, str]:
    """Insert a connection row directly; return its id and token hash."""
    token_hash = token_hash or sha(new_token())
    with site.db.session() as session:
        conn = Connection(
            name=name,
            direction=direction,
            site_url=url,
            auth_token_hash=token_hash,
            status=status,
            meta={},
        )
        session.add(conn)
        session.flush()
        return conn.id, token_hash


def open_to_peer(
    site: Site, direction: str, peer_url: str, token_hash: str, **limits: Any
) -> None:
    """Enable the module and add one active connection to ``peer_url`` that
    no rate limit gets in the way of (limits may override any column)."""
    with site.db.session() as session:
        module.get(session).enabled = True
        session.add(
            Connection(
                name="peer",
                direction=direction,
                site_url=peer_url,
                auth_token_hash=token_hash,
                status="active",
                meta={},
                **{"rate_limit_requests_per_minute": 100_000, **limits},
            )
        )


def make_sender(
    site: Site, url: str = PEER, name: str = "Peer A", password: str | None = None
) -> tuple[uuid.UUID, str]:
    """A sender made as the operator makes one; return its id and token."""
    with site.db.session() as session:
        conn, token = connections.create_sender(
            session, site, name=name, url=url, password=password, options=None
        )
        return conn.id, token


_port = iter(range(19100, 30000))


def free_url() -> str:
    """A loopback URL no other connection of this process uses."""
    return f"http://127.0.0.1:{next(_port)}"


def offering_sender(site: Site, status: str = "active", **options: Any) -> str:
    """A sender connection with these options, on its own URL; return its token hash.

    Its table rules are written to the row as they are given, unresolved (as
    a row made before rules were resolved at creation holds them), so tests
    can check how calls treat any rule.
    """
    rules = {
        k: options.pop(k) for k in ("allowed_tables", "excluded_tables") if k in options
    }
    with site.db.session() as session:
        conn, _token = connections.create_sender(
            session,
            site,
            name="Peer",
            url=free_url(),
            options=SenderOptions(**options),
        )
        conn.status = status
        for key, value in rules.items():
            setattr(conn, key, value)
        return conn.auth_token_hash


def load(site: Site, conn_id: uuid.UUID) -> Connection | None:
    with site.db.session() as session:
        return session.get(Connection, conn_id)


def load_existing(site: Site, conn_id: uuid.UUID) -> Connection:
    conn = load(site, conn_id)
    assert conn is not None
    return conn


def sender_row(site: Site, token_hash: str) -> Connection:
    """The sender connection of this token hash, detached from its session."""
    with site.db.session() as session:
        conn = session.scalar(
            select(Connection).where(
                Connection.auth_token_hash == token_hash,
                Connection.direction == "sender",
            )
        )
        session.expunge(conn)
        return conn


def update_sender(site: Site, token_hash: str, **values: Any) -> None:
    with site.db.session() as session:
        conn = session.scalar(
            select(Connection).where(
                Connection.auth_token_hash == token_hash,
                Connection.direction == "sender",
            )
        )
        for key, value in values.items():
            setattr(conn, key, value)


def send_transfers(site: Site) -> list[Transfer]:
    with site.db.session() as session:
        found = list(
            session.scalars(
                select(Transfer)
                .where(Transfer.direction == "send")
                .order_by(Transfer.created_at)
            )
        )
        for t in found:
            session.expunge(t)
        return found


# ------------------------------------------------------------ HTTP


def err(message: str, **extra: Any) -> dict[str, Any]:
    """The protocol's error body."""
    return {"success": False, "error": message, **extra}


DATA_ENDPOINTS = ["list-tables", "table-schema", "table-records", "pull-data"]
ENDPOINTS = DATA_ENDPOINTS
TABLE_ENDPOINTS = ["table-schema", "table-records", "pull-data"]

# The data endpoints' refusals, word for word.
DISABLED = err("DB Sync module is disabled")
INVALID_CONNECTION = err("Invalid connection")
NOT_ACTIVE = err("Connection is not active")
EXPIRED = err("Connection expired")
IP_NOT_ALLOWED = err("IP not allowed")
OUTSIDE_HOURS = err("Outside allowed hours")
DOWNLOAD_LIMIT = err("Download limit reached")
RECORD_LIMIT = err("Record limit reached")
RATE_LIMITED = err("Rate limit exceeded")
NOT_AUTHORISED = err("This connection is not authorised to access that table")
TABLE_NOT_FOUND = err("Table not found")
INVALID_JSON = err("Invalid JSON body")
TOO_LARGE = err("Request body too large")


def post(
    client: testing.TestClient, endpoint: str, body: Any, **kw: Any
) -> testing.Result:
    """POST ``body`` to an API endpoint: bytes as they are, anything else as JSON."""
    if isinstance(body, bytes):
        return client.simulate_post(
            f"{API}/{endpoint}",
            body=body,
            headers={"Content-Type": "application/json"},
            **kw,
        )
    return client.simulate_post(f"{API}/{endpoint}", json=body, **kw)


def call(
    client: testing.TestClient,
    endpoint: str,
    token_hash: str,
    table: str = "dt_items",
    **extra: Any,
) -> testing.Result:
    """A data endpoint's request with the fields it needs, plus ``extra``."""
    body: dict[str, Any] = {"auth_token_hash": token_hash}
    if endpoint != "list-tables":
        body["table_name"] = table
    body.update(extra)
    return post(client, endpoint, body)


# ------------------------------------------------------------ SQL and rows


def run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)


def rows(engine: Engine, table: str = "t") -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(f'SELECT * FROM "{table}" ORDER BY 1')
        ]


def select_rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, read in UTC."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET timezone = 'UTC'")
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def as_text(
    engine: Engine,
    table: str,
    columns: list[str] | None = None,
    jsonish: Iterable[str] = (),
) -> list[tuple]:
    """Every column (or ``columns``) as PostgreSQL prints it, under fixed settings.

    JSON columns in ``jsonish`` are read through jsonb, so key order and spacing
    do not count.
    """
    jsonish = set(jsonish)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET timezone = 'UTC'; SET intervalstyle = 'postgres'")
        if columns is None:
            columns = [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (table,),
                )
            ]
        exprs = ", ".join(
            f'"{c}"::jsonb::text' if c in jsonish else f'"{c}"::text' for c in columns
        )
        return [
            tuple(r)
            for r in conn.exec_driver_sql(f'SELECT {exprs} FROM "{table}" ORDER BY 1')
        ]


def copy_into(engine: Engine, table: str, data: bytes, copy_format: str) -> int:
    """COPY ``data`` into ``table`` in PostgreSQL's ``copy_format``; return the rows."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.copy_expert(
            f'COPY "{table}" FROM STDIN (FORMAT {copy_format})', io.BytesIO(data)
        )
        raw.commit()
        return cur.rowcount
    finally:
        raw.close()


def b64(data: bytes) -> dict[str, str]:
    """Bytes as the wire carries them."""
    return {"__phoenix_kit_binary__": base64.b64encode(data).decode()}


def items(first: int, last: int) -> list[dict[str, Any]]:
    """The rows of dt_items (tests/datasets.py) from ``first`` to ``last``."""
    return [{"id": i, "label": f"item {i}"} for i in range(first, last + 1)]


def hour_now() -> int:
    return dt.datetime.now(dt.UTC).hour


# ------------------------------------------------------------ processes


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before in this run.

    The kernel may offer a port it just gave back; two sites of one test must
    not both get it (the second would refuse to pair with itself).
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def eventually(
    check: Callable[[], Any], timeout: float = 30, every: float = 0.3
) -> Any:
    """Return check()'s first truthy value, or fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


# ------------------------------------------------------------ case tables


def case_id(value: Any, width: int = 40) -> str:
    """A short readable id for a parametrized case: its value, cut to ``width``."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
