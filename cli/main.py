"""The ``dbsync`` command: run a site and operate its connections from a terminal.

This is the one place that wires api, workers and shared together for a person.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from functools import wraps
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError

from shared.errors import SyncError
from shared.settings import Settings, SettingsError

console = Console()


def _settings() -> Settings:
    settings = Settings.from_env()
    settings.ensure_home()
    return settings


def _site():  # type: ignore[no-untyped-def]
    from workers.celery_app import runtime

    return runtime.site


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SyncError as ex:
            raise click.ClickException(ex.message) from None
        except SettingsError as ex:
            raise click.ClickException(f"configuration: {ex}") from None
        except (OperationalError, ProgrammingError) as ex:
            first = str(ex.orig).strip().splitlines()[0] if ex.orig else str(ex)
            if "does not exist" in first or "no such table" in first:
                first += " (run `dbsync db upgrade` first)"
            raise click.ClickException(f"database: {first}") from None

    return wrapper


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


@click.group()
def main() -> None:
    """dbsync: exchange database tables between sites over HTTP."""


# -- running a site -------------------------------------------------------------


@main.group()
def db() -> None:
    """The service's own database."""


@db.command("upgrade")
@friendly
def db_upgrade() -> None:
    """Create or migrate the service's tables to the newest version."""
    from shared.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo("database is up to date")


def _serve_argv(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "api.wsgi:app",
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        "--config", "python:api.gunicorn_conf",
        "--access-logfile", "-",
        "--graceful-timeout", "10",
        "--no-control-socket",
    ]


def _worker_argv(queues: str | None, concurrency: int | None) -> list[str]:
    settings = _settings()
    queues = queues or f"{settings.peer_queue},{settings.pull_queue}"
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", queues, "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _beat_argv() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
            "--loglevel", "INFO"]


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), type=int)
@click.option("--workers", default=2, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Run the API under gunicorn."""
    _settings()
    os.execv(sys.executable, _serve_argv(host, port, workers))


@main.command()
@click.option("--queues", "-Q", default=None, help="default: peer,pull")
@click.option("--concurrency", "-c", type=int, default=None)
def worker(queues: str | None, concurrency: int | None) -> None:
    """Run a Celery worker (peer calls and table pulls)."""
    os.execv(sys.executable, _worker_argv(queues, concurrency))


@main.command()
def beat() -> None:
    """Run celery beat (verify, expire and notice-sweep jobs)."""
    _settings()
    os.execv(sys.executable, _beat_argv())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), type=int)
@friendly
def up(host: str, port: int) -> None:
    """Migrate, then run API, worker and beat together (local use)."""
    from shared.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    procs = [
        subprocess.Popen(_serve_argv(host, port, 1)),
        subprocess.Popen(_worker_argv(None, 2)),
        subprocess.Popen(_beat_argv()),
    ]
    click.echo(f"dbsync site on http://{host}:{port}{settings.api_prefix}/status")

    def stop(*_args: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    sys.exit(max((p.returncode or 0) for p in procs) if any(p.returncode for p in procs) else 0)


# -- module settings ------------------------------------------------------------


@main.group()
def settings() -> None:
    """The site's switches: enabled, incoming mode, incoming password."""


@settings.command("show")
@click.option("--json", "as_json", is_flag=True)
@friendly
def settings_show(as_json: bool) -> None:
    from shared.services import module

    site = _site()
    with site.db.session() as session:
        row = module.get(session)
        data = {
            "enabled": row.enabled,
            "incoming_mode": row.incoming_mode,
            "incoming_password_set": bool(row.incoming_password_hash),
            "site_url": site.settings.site_url,
        }
    emit(data, as_json, lambda d: [click.echo(f"{k}: {v}") for k, v in d.items()])


@settings.command("set")
@click.argument("key", type=click.Choice(["enabled", "incoming_mode", "incoming_password"]))
@click.argument("value")
@friendly
def settings_set(key: str, value: str) -> None:
    """Set KEY to VALUE (`incoming_password -` reads the password from stdin)."""
    from shared.services import connections, module

    site = _site()
    with site.db.session() as session:
        if key == "enabled":
            if value.lower() not in ("true", "false"):
                raise click.ClickException("enabled takes true or false")
            changed = connections.set_enabled(session, site, value.lower() == "true")
            click.echo(f"enabled: {value.lower()}")
            if changed:
                click.echo(f"{len(changed)} connection(s) changed; their peers are notified")
        elif key == "incoming_mode":
            module.set_mode(session, value)
            click.echo(f"incoming_mode: {value}")
        else:
            password = sys.stdin.readline().rstrip("\r\n") if value == "-" else value
            module.set_password(session, password)
            click.echo("incoming_password: set" if password else "incoming_password: cleared")


# -- connections ----------------------------------------------------------------


@main.group()
def connections() -> None:
    """Create and operate connections to other sites."""


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _hours(value: str | None) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    try:
        start, end = (int(v) for v in value.split("-", 1))
    except ValueError:
        raise click.BadParameter("use START-END, e.g. 8-18") from None
    return start, end


def _when(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _show_connection(data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if value not in (None, [], {}):
            table.add_row(key, str(value))
    console.print(table)


@connections.command("create")
@click.option("--name", required=True)
@click.option("--url", required=True, help="the receiver site's base URL")
@click.option("--password", default=None, help="the receiver's incoming password")
@click.option("--allowed-tables", default=None)
@click.option("--excluded-tables", default=None)
@click.option("--expires-at", default=None, help="ISO 8601; UTC if no offset")
@click.option("--max-downloads", type=click.IntRange(min=0), default=None)
@click.option("--max-records-total", type=click.IntRange(min=0), default=None)
@click.option("--max-records-per-request", type=click.IntRange(1, 1_000_000), default=10_000)
@click.option("--rate-limit", type=click.IntRange(min=1), default=60,
              help="requests per minute")
@click.option("--ip-allowlist", default=None, help="CIDRs, comma-separated")
@click.option("--allowed-hours", default=None, help="UTC hours START-END, inclusive")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_create(
    name: str, url: str, password: str | None, allowed_tables: str | None,
    excluded_tables: str | None, expires_at: str | None, max_downloads: int | None,
    max_records_total: int | None, max_records_per_request: int, rate_limit: int,
    ip_allowlist: str | None, allowed_hours: str | None, as_json: bool,
) -> None:
    """Create a sender connection; prints its token, the only time it is shown."""
    from shared.services import connections as svc

    start, end = _hours(allowed_hours)
    options = svc.SenderOptions(
        allowed_tables=_csv(allowed_tables),
        excluded_tables=_csv(excluded_tables),
        expires_at=_when(expires_at),
        max_downloads=max_downloads,
        max_records_total=max_records_total,
        max_records_per_request=max_records_per_request,
        rate_limit_requests_per_minute=rate_limit,
        ip_allowlist=_csv(ip_allowlist),
        allowed_hours_start=start,
        allowed_hours_end=end,
    )
    site = _site()
    with site.db.session() as session:
        conn, token = svc.create_sender(
            session, site, name=name, url=url, password=password, options=options
        )
        data = {**svc.describe(conn), "token": token}
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    _show_connection(data)
    click.echo("The token is shown this once; it is stored only as a hash.")


@connections.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_list(as_json: bool) -> None:
    from shared.services import connections as svc

    site = _site()
    with site.db.session() as session:
        rows = [svc.describe(c) for c in svc.list_all(session)]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("id", "name", "direction", "site", "status", "registration",
                      "peer sync", "last verified")
        for c in items:
            table.add_row(c["id"], c["name"], c["direction"], c["site_url"], c["status"],
                          c["registration"] or "", c["peer_sync"] or "",
                          c["last_verified_at"] or "")
        console.print(table)

    emit(rows, as_json, render)


@connections.command("show")
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_show(connection_id: str, as_json: bool) -> None:
    from shared.services import connections as svc

    site = _site()
    with site.db.session() as session:
        data = svc.describe(svc.get(session, connection_id))
    emit(data, as_json, _show_connection)


def _lifecycle(action: str, with_reason: bool, allow_all: bool) -> Callable[..., None]:
    @friendly
    def command(connection_id: str | None, reason: str | None = None,
                all_: bool = False) -> None:
        from shared.services import connections as svc

        site = _site()
        with site.db.session() as session:
            if all_:
                changed = svc.bulk(session, site, action, reason)
                click.echo(f"{action}: {len(changed)} connection(s); peers are notified")
                return
            if not connection_id:
                raise click.ClickException("give a connection ID" +
                                           (" or --all" if allow_all else ""))
            conn = svc.get(session, connection_id)
            fn = getattr(svc, action)
            if with_reason:
                fn(session, site, conn, reason)
            else:
                fn(session, site, conn)
            name = conn.name
        click.echo(f"{action}: {name} ({connection_id})")

    params: list[click.Parameter] = [
        click.Argument(["connection_id"], required=not allow_all)
    ]
    if with_reason:
        params.append(click.Option(["--reason"], default=None))
    if allow_all:
        params.append(click.Option(["--all", "all_"], is_flag=True,
                                   help="every connection it applies to"))
    return click.Command(action, callback=command, params=params,
                         help=f"{action.capitalize()} a connection; the peer is told.")


connections.add_command(_lifecycle("approve", False, False))
connections.add_command(_lifecycle("suspend", True, True))
connections.add_command(_lifecycle("reactivate", False, False))
connections.add_command(_lifecycle("revoke", True, True))
connections.add_command(_lifecycle("delete", False, False))


@connections.command("verify")
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_verify(connection_id: str, as_json: bool) -> None:
    """Ask the peer about a connection now, as beat does periodically."""
    from shared.services import connections as svc
    from shared.services import healing
    from workers.celery_app import runtime

    site = _site()
    with site.db.session() as session:
        conn_id = str(svc.get(session, connection_id).id)
    outcome = healing.verify(site, runtime.peer, conn_id)
    with site.db.session() as session:
        data = {"outcome": outcome, **svc.describe(svc.get(session, conn_id))}
    emit(data, as_json, lambda d: click.echo(f"verify: {d['outcome']} (status {d['status']})"))


@main.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def audit(limit: int, as_json: bool) -> None:
    """The newest audit events."""
    from sqlalchemy import select

    from shared.models import AuditEvent

    site = _site()
    with site.db.session() as session:
        rows = [
            {"at": e.at.isoformat(), "actor": e.actor, "action": e.action,
             "connection": e.connection_name, "reason": e.reason}
            for e in session.scalars(
                select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            )
        ]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("at", "actor", "action", "connection", "reason")
        for e in items:
            table.add_row(e["at"], e["actor"], e["action"], e["connection"] or "",
                          e["reason"] or "")
        console.print(table)

    emit(rows, as_json, render)


if __name__ == "__main__":
    main()
