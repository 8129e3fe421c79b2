"""Build one typed settings object from ``SYNC_*`` environment variables.

Defaults are embedded (a SQLite file and a broker that needs no server) so a
site starts on a fresh machine; production points them at PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

PULL_FORMATS = ("auto", "json", "pg_copy_text")


class SettingsError(ValueError):
    """A configuration variable holds a value that cannot be used."""


class Secret(str):
    """A string that never shows itself in repr or logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


class SecretURL(Secret):
    """A URL whose repr hides its password; its value is the whole URL.

    Database and broker URLs carry credentials: a repr of the settings (a
    traceback, a debug log) shows where they point, never the password.
    """

    def __repr__(self) -> str:
        return f"SecretURL({redact_url(self)!r})"


_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or the query) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "**********"
    redacted = str(url)  # a plain str, whatever subclass came in
    if "@" in parts.netloc:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:***"
        elif parts.scheme.startswith("redis"):
            # redis://SECRET@host: a lone user part is the password there.
            userinfo = "***"
        redacted = redacted.replace(parts.netloc, f"{userinfo}@{hostport}", 1)
    if parts.query:
        base, _, rest = redacted.partition("?")
        query, hash_, fragment = rest.partition("#")
        query = "&".join(
            f"{k}=***" if _SECRET_QUERY_KEY.search(k) and eq else f"{k}{eq}{v}"
            for k, eq, v in (pair.partition("=") for pair in query.split("&"))
        )
        redacted = f"{base}?{query}{hash_}{fragment}"
    return redacted


# Settings that hold credentials; each may instead be read from a file named by
# the same variable plus ``_FILE`` (Docker and compose secrets, systemd
# credentials), so the value is in no environment listing.
FILE_VARIABLES = (
    "SYNC_DATABASE_URL",
    "SYNC_DATA_DATABASE_URL",
    "SYNC_BROKER_URL",
    "SYNC_SECRET_KEY",
)


def _with_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with each ``<NAME>_FILE`` of FILE_VARIABLES read into ``<NAME>``."""
    named = [n for n in FILE_VARIABLES if env.get(n + "_FILE")]
    if not named:
        return env
    resolved = dict(env)
    for name in named:
        source = name + "_FILE"
        if env.get(name):
            raise SettingsError(f"set {name} or {source}, not both")
        path = env[source]
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as ex:
            reason = getattr(ex, "strerror", None) or str(ex)
            raise SettingsError(f"{source}: cannot read {path}: {reason}") from None
        if not value:
            raise SettingsError(f"{source}: {path} is empty")
        resolved[name] = value
    return resolved


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
    # Plain http to a public address carries tokens in clear: refused unless
    # the operator opts in.
    allow_plain_http: bool = False
    trust_forwarded: bool = False
    # With trust_forwarded: how many proxies of this site append to
    # X-Forwarded-For; the caller is that many entries from the right.
    trusted_proxy_hops: int = 1
    verify_interval_seconds: int = 900
    expire_interval_seconds: int = 60
    outbox_sweep_seconds: int = 30
    syncs_tick_seconds: int = 5  # beat: start the scheduled syncs that are due
    # Processes of this site's database one verification scan of its own
    # rows may use (1: no parallel workers). Scans answering a peer use one.
    verify_scan_processes: int = 2
    retry_base_seconds: int = 5
    retry_max_seconds: int = 900
    retry_horizon_seconds: int = 86_400
    # Seconds one read from a peer may wait (http_timeout_seconds), and the
    # most one call may take in all: a JSON answer (peer_call_seconds), one
    # pull-data page, fetched or streamed into the database (pull_page_seconds).
    http_timeout_seconds: int = 30
    peer_call_seconds: int = 60
    pull_page_seconds: int = 600
    # The most a peer's answer may take once decoded (Content-Encoding undone):
    # list-tables, table-schema and table-records answers
    # (peer_answer_max_bytes; control answers take 64 KiB at most); a JSON
    # page, per row asked (pull_json_row_bytes); a COPY page
    # (pull_page_max_bytes) and one of its rows (pull_row_max_bytes; a page
    # takes at most its row count times that).
    peer_answer_max_bytes: int = 4 * 1024 * 1024
    pull_json_row_bytes: int = 8 * 1024
    pull_page_max_bytes: int = 1024 * 1024 * 1024
    pull_row_max_bytes: int = 16 * 1024 * 1024
    max_body_bytes: int = 1_048_576
    register_max_failures: int = 5
    register_failure_window_seconds: int = 900
    # register-connection: at most register_per_address registrations from one
    # caller address and register_total in all per register_window_seconds;
    # at most register_max_unconfirmed awaiting confirmation at once; one
    # whose sender has not confirmed the token in register_confirm_seconds
    # (pending approval aside) is dropped.
    register_per_address: int = 10
    register_total: int = 100
    register_window_seconds: int = 3600
    register_max_unconfirmed: int = 50
    register_confirm_seconds: int = 600
    data_schema: str = "public"
    excluded_tables: tuple[str, ...] = ()
    offer_sensitive_tables: tuple[str, ...] = ()  # see schema.SENSITIVE_TABLES
    # A send transfer no page was asked for in this long is closed (beat's
    # expire job); its cursors then start a new, counted download.
    send_idle_seconds: int = 3600
    checksum_row_limit: int = 100_000
    json_page_cap: int = 10_000
    # Delta runs: the tables (names, or "*" for every one; none: "off") whose
    # changes this site logs by triggers (shared.data.sender.tracking)
    # instead of scanning.
    change_tracking: tuple[str, ...] = ("*",)
    # The furthest table-records (a preview, paged by offset) may skip: each
    # call scans that many rows.
    preview_max_offset: int = 10_000
    # The bytes a pull-data page may take, whatever its row count: JSON pages
    # end before the row that would pass it; COPY pages (streamed) take as
    # many rows as the table's average row size lets fit.
    page_max_bytes: int = 32 * 1024 * 1024
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
    # A bearer token that lets a scraper read /metrics from anywhere; without
    # one only loopback callers may (api.observe.Metrics).
    metrics_token: str = ""
    home: str = field(default_factory=lambda: str(_default_home()))
    # Seals the secrets a pending registration holds (shared/sealing.py);
    # empty: a key generated once into the state database.
    secret_key: str = field(default=Secret(""), repr=False)

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
        env = _with_files(os.environ if env is None else env)
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
            "database_url": SecretURL(database_url),
            "data_database_url": SecretURL(data_url),
            "broker_url": SecretURL(broker),
            "site_url": site_url,
            "url_prefix": prefix,
            "home": str(home),
        }
        if "SYNC_ALLOW_PRIVATE_URLS" in env:
            values["allow_private_urls"] = _bool(
                "SYNC_ALLOW_PRIVATE_URLS", env["SYNC_ALLOW_PRIVATE_URLS"]
            )
        if "SYNC_ALLOW_PLAIN_HTTP" in env:
            values["allow_plain_http"] = _bool(
                "SYNC_ALLOW_PLAIN_HTTP", env["SYNC_ALLOW_PLAIN_HTTP"]
            )
        if "SYNC_TRUST_FORWARDED" in env:
            values["trust_forwarded"] = _bool(
                "SYNC_TRUST_FORWARDED", env["SYNC_TRUST_FORWARDED"]
            )
        if "SYNC_CHANGE_TRACKING" in env:
            listed = env["SYNC_CHANGE_TRACKING"].strip()
            values["change_tracking"] = (
                ()
                if listed.lower() in ("", "off", "none")
                else tuple(t.strip() for t in listed.split(",") if t.strip())
            )
        if env.get("SYNC_SECRET_KEY"):
            key = env["SYNC_SECRET_KEY"].strip()
            if len(key) < 32:
                raise SettingsError(
                    "SYNC_SECRET_KEY must be at least 32 characters (e.g. the"
                    " output of `openssl rand -base64 32`)"
                )
            values["secret_key"] = Secret(key)
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
        if env.get("SYNC_OFFER_SENSITIVE_TABLES"):
            values["offer_sensitive_tables"] = tuple(
                t.strip()
                for t in env["SYNC_OFFER_SENSITIVE_TABLES"].split(",")
                if t.strip()
            )
        if env.get("SYNC_DATA_SCHEMA"):
            values["data_schema"] = env["SYNC_DATA_SCHEMA"]
        if env.get("SYNC_METRICS_TOKEN"):
            values["metrics_token"] = Secret(env["SYNC_METRICS_TOKEN"].strip())
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

    def tracks_changes(self, table: str) -> bool:
        """Whether delta runs log ``table``'s changes by triggers here."""
        return "*" in self.change_tracking or table in self.change_tracking

    def ensure_home(self) -> None:
        """Create the folder of the embedded SQLite files, private to this user.

        The state file holds every token hash (a bearer credential) and the
        incoming password's hash: the folder is made 0700 and the files 0600,
        and a folder that another user owns or may write into is refused.
        """
        files = [
            path
            for path in map(
                _sqlite_file,
                (self.database_url, self.data_database_url, self.broker_url),
            )
            if path is not None
        ]
        if not files:
            return
        home = Path(self.home)
        _private_folder(home)
        for path in files:
            if path.parent.is_dir():
                _private_file(path, create=True)
        # Beat's schedule (a shelve file, with the embedded broker) and the
        # SQLite journals of an earlier run made under a looser umask.
        for pattern in ("celerybeat-schedule*", "*.sqlite3-*"):
            for path in home.glob(pattern):
                _private_file(path, create=False)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite (or kombu ``sqla+sqlite``) URL; None for anything else."""
    scheme, sep, rest = url.removeprefix("sqla+").partition(":///")
    if not sep or not (scheme == "sqlite" or scheme.startswith("sqlite+")):
        return None
    database = rest.split("?", 1)[0]
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _private_folder(path: Path) -> None:
    """Make ``path`` (0700) or check it is this user's and closed to others."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as ex:
        raise SettingsError(
            f"SYNC_HOME {path}: cannot create it: {ex.strerror}"
        ) from None
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise SettingsError(f"SYNC_HOME {path} is not a folder")
    me = os.geteuid()
    if info.st_uid != me:
        raise SettingsError(
            f"SYNC_HOME {path} belongs to uid {info.st_uid}, not to this user"
            f" (uid {me}): its owner could read or replace this site's state;"
            " use a folder of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o002:
        raise SettingsError(
            f"SYNC_HOME {path} is writable by others (mode {mode:04o}), a shared"
            " folder: use a folder of your own (e.g. under $HOME, or made by"
            " `mktemp -d`)"
        )
    if mode & 0o020:
        raise SettingsError(
            f"SYNC_HOME {path} is writable by its group (mode {mode:04o}):"
            f" run `chmod 700 {path}` or use another folder"
        )
    if mode & 0o077:
        # A folder made by an earlier version (0755): close it, it is ours.
        path.chmod(0o700)


def _private_file(path: Path, *, create: bool) -> None:
    """Make ``path`` 0600 (creating it empty if asked); refuse another user's file."""
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return
        except FileExistsError:
            pass
        except OSError as ex:
            raise SettingsError(f"{path}: cannot create it: {ex.strerror}") from None
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid():
        raise SettingsError(
            f"{path} belongs to uid {info.st_uid}, not to this user"
            f" (uid {os.geteuid()})"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o600)
