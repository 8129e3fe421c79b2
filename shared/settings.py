"""Build one typed settings object from ``SYNC_*`` environment variables.

Defaults are embedded (a SQLite file and a broker that needs no server) so a
site starts on a fresh machine; production points them at PostgreSQL and Redis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

PULL_FORMATS = ("auto", "json", "pg_copy_text")


class SettingsError(ValueError):
    """A configuration variable holds a value that cannot be used."""


class Secret(str):
    """A string that never shows itself in repr or logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


def normalise_db_url(url: str) -> str:
    """Map ``postgres://`` and bare ``postgresql://`` to the psycopg2 driver.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3 and rejects
    ``postgres://``; the project ships psycopg2.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _default_home() -> Path:
    return Path(os.environ.get("SYNC_HOME", Path.cwd() / ".dbsync"))


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a site needs to know about itself, read once at start-up."""

    database_url: str
    data_database_url: str
    broker_url: str
    site_url: str = "http://127.0.0.1:8000"
    url_prefix: str = ""
    allow_private_urls: bool = False
    trust_forwarded: bool = False
    verify_interval_seconds: int = 900
    expire_interval_seconds: int = 60
    outbox_sweep_seconds: int = 30
    retry_base_seconds: int = 5
    retry_max_seconds: int = 900
    retry_horizon_seconds: int = 86_400
    http_timeout_seconds: int = 30
    max_body_bytes: int = 1_048_576
    register_max_failures: int = 5
    register_failure_window_seconds: int = 900
    data_schema: str = "public"
    excluded_tables: tuple[str, ...] = ()
    checksum_row_limit: int = 100_000
    json_page_cap: int = 10_000
    # Rows per pull-data page in a bulk (PostgreSQL COPY) format: the most a
    # sender serves and what a receiver asks for. A connection's
    # max_records_per_request (default 100,000) still caps every page.
    bulk_page_rows: int = 100_000
    # What a receiver asks pull-data for: "auto" (COPY data when its data
    # database is PostgreSQL, binary where the column types allow), "json",
    # or "pg_copy_text" (never binary).
    pull_format: str = "auto"
    # A running pull's lease: a heartbeat renews it every
    # pull_heartbeat_seconds (at most a third of the lease) whatever the page
    # length, so a dead worker's pull is free again within the lease.
    pull_lease_seconds: int = 30
    pull_heartbeat_seconds: int = 5
    pull_max_attempts: int = 12
    queue_prefix: str = ""
    # Seconds /readyz and `dbsync status` wait for all their checks together
    # (databases, broker, migrations, beat); one that has not answered fails.
    health_timeout_seconds: int = 2
    # Serving (api.serving): threads per web process, of which
    # web_control_threads are never given to data calls, so control calls
    # never wait behind a pull-data stream.
    web_threads: int = 32
    web_control_threads: int = 8
    # A request's head must arrive whole within header_timeout_seconds, and
    # its body within body_timeout_seconds after the head; no thread is held
    # meanwhile. A client must take each 256 KiB of an answer within
    # stream_stall_seconds, or the answer is cut (a pull-data page is then
    # counted as not delivered).
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 15
    stream_stall_seconds: int = 30
    # Concurrent pull-data answers (streamed COPY or JSON pages): at most this
    # many per connection and per site; beyond, 503 with Retry-After.
    pull_streams_per_connection: int = 4
    pull_streams_per_site: int = 16
    home: str = field(default_factory=lambda: str(_default_home()))

    @property
    def api_prefix(self) -> str:
        return f"{self.url_prefix}/sync/api"

    @property
    def peer_queue(self) -> str:
        return f"{self.queue_prefix}peer"

    @property
    def pull_queue(self) -> str:
        return f"{self.queue_prefix}pull"

    @property
    def web_data_threads(self) -> int:
        """Threads of one web process that data calls may hold at once."""
        return self.web_threads - self.web_control_threads

    @property
    def pull_heartbeat_interval(self) -> float:
        """Seconds between two renewals of a running pull's lease.

        At most a third of the lease, so two missed renewals still leave it held.
        """
        return min(float(self.pull_heartbeat_seconds), self.pull_lease_seconds / 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("SYNC_HOME") or _default_home())
        sqlite_url = f"sqlite:///{home / 'dbsync.sqlite3'}"
        database_url = normalise_db_url(env.get("SYNC_DATABASE_URL") or sqlite_url)
        data_url = normalise_db_url(env.get("SYNC_DATA_DATABASE_URL") or database_url)
        broker = (
            env.get("SYNC_BROKER_URL") or f"sqla+sqlite:///{home / 'broker.sqlite3'}"
        )
        prefix = (env.get("SYNC_URL_PREFIX") or "").strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        site_url = (env.get("SYNC_SITE_URL") or cls.site_url).strip().rstrip("/")
        values: dict[str, object] = {
            "database_url": database_url,
            "data_database_url": data_url,
            "broker_url": broker,
            "site_url": site_url,
            "url_prefix": prefix,
            "home": str(home),
        }
        if "SYNC_ALLOW_PRIVATE_URLS" in env:
            values["allow_private_urls"] = _bool(
                "SYNC_ALLOW_PRIVATE_URLS", env["SYNC_ALLOW_PRIVATE_URLS"]
            )
        if "SYNC_TRUST_FORWARDED" in env:
            values["trust_forwarded"] = _bool(
                "SYNC_TRUST_FORWARDED", env["SYNC_TRUST_FORWARDED"]
            )
        if env.get("SYNC_PULL_FORMAT"):
            pull_format = env["SYNC_PULL_FORMAT"].strip().lower()
            if pull_format not in PULL_FORMATS:
                raise SettingsError(
                    f"SYNC_PULL_FORMAT must be one of {', '.join(PULL_FORMATS)},"
                    f" got {env['SYNC_PULL_FORMAT']!r}"
                )
            values["pull_format"] = pull_format
        if env.get("SYNC_EXCLUDED_TABLES"):
            values["excluded_tables"] = tuple(
                t.strip() for t in env["SYNC_EXCLUDED_TABLES"].split(",") if t.strip()
            )
        if env.get("SYNC_DATA_SCHEMA"):
            values["data_schema"] = env["SYNC_DATA_SCHEMA"]
        if env.get("SYNC_QUEUE_PREFIX"):
            values["queue_prefix"] = env["SYNC_QUEUE_PREFIX"]
        for f in fields(cls):
            if f.type not in ("int", int):
                continue
            name = "SYNC_" + f.name.upper()
            if env.get(name):
                values[f.name] = _int(name, env[name], minimum=1)
        threads = values.get("web_threads", cls.web_threads)
        control = values.get("web_control_threads", cls.web_control_threads)
        if control >= threads:  # type: ignore[operator]  # both ints, parsed above
            raise SettingsError(
                f"SYNC_WEB_CONTROL_THREADS ({control}) must be below"
                f" SYNC_WEB_THREADS ({threads}): data calls need threads too"
            )
        return cls(**values)  # type: ignore[arg-type]  # values parsed above, typed per field

    def ensure_home(self) -> None:
        """Create the folder that holds the embedded SQLite files."""
        if self.database_url.startswith("sqlite") or self.broker_url.startswith(
            "sqla+sqlite"
        ):
            Path(self.home).mkdir(parents=True, exist_ok=True)
