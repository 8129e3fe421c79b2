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
from collections.abc import Callable
from functools import wraps
from typing import Any

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
    from shared.state.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo("database is up to date")


def _serve_argv(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--config",
        "python:api.gunicorn_conf",
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
    ]


def _worker_argv(queues: str | None, concurrency: int | None) -> list[str]:
    settings = _settings()
    queues = queues or f"{settings.peer_queue},{settings.pull_queue}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _beat_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "beat",
        "--loglevel",
        "INFO",
    ]


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
    from shared.state.migrate import upgrade

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
    sys.exit(
        max((p.returncode or 0) for p in procs)
        if any(p.returncode for p in procs)
        else 0
    )


# -- module settings ------------------------------------------------------------


@main.group()
def settings() -> None:
    """The site's switches: enabled, incoming mode, incoming password."""


@settings.command("show")
@click.option("--json", "as_json", is_flag=True)
@friendly
def settings_show(as_json: bool) -> None:
    from shared.control import module

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
@click.argument(
    "key", type=click.Choice(["enabled", "incoming_mode", "incoming_password"])
)
@click.argument("value")
@friendly
def settings_set(key: str, value: str) -> None:
    """Set KEY to VALUE (`incoming_password -` reads the password from stdin)."""
    from shared.control import connections, module

    site = _site()
    with site.db.session() as session:
        if key == "enabled":
            if value.lower() not in ("true", "false"):
                raise click.ClickException("enabled takes true or false")
            changed = connections.set_enabled(session, site, value.lower() == "true")
            click.echo(f"enabled: {value.lower()}")
            if changed:
                click.echo(
                    f"{len(changed)} connection(s) changed; their peers are notified"
                )
        elif key == "incoming_mode":
            module.set_mode(session, value)
            click.echo(f"incoming_mode: {value}")
        else:
            password = sys.stdin.readline().rstrip("\r\n") if value == "-" else value
            module.set_password(session, password)
            click.echo(
                "incoming_password: set" if password else "incoming_password: cleared"
            )


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
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


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
@click.option(
    "--max-records-per-request", type=click.IntRange(1, 1_000_000), default=10_000
)
@click.option(
    "--rate-limit", type=click.IntRange(min=1), default=60, help="requests per minute"
)
@click.option("--ip-allowlist", default=None, help="CIDRs, comma-separated")
@click.option("--allowed-hours", default=None, help="UTC hours START-END, inclusive")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_create(
    name: str,
    url: str,
    password: str | None,
    allowed_tables: str | None,
    excluded_tables: str | None,
    expires_at: str | None,
    max_downloads: int | None,
    max_records_total: int | None,
    max_records_per_request: int,
    rate_limit: int,
    ip_allowlist: str | None,
    allowed_hours: str | None,
    as_json: bool,
) -> None:
    """Create a sender connection; prints its token, the only time it is shown."""
    from shared.control import connections as svc

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
    from shared.control import connections as svc

    site = _site()
    with site.db.session() as session:
        rows = [svc.describe(c) for c in svc.list_all(session)]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table(
            "id",
            "name",
            "direction",
            "site",
            "status",
            "registration",
            "peer sync",
            "last verified",
        )
        for c in items:
            table.add_row(
                c["id"],
                c["name"],
                c["direction"],
                c["site_url"],
                c["status"],
                c["registration"] or "",
                c["peer_sync"] or "",
                c["last_verified_at"] or "",
            )
        console.print(table)

    emit(rows, as_json, render)


@connections.command("show")
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_show(connection_id: str, as_json: bool) -> None:
    from shared.control import connections as svc

    site = _site()
    with site.db.session() as session:
        data = svc.describe(svc.get(session, connection_id))
    emit(data, as_json, _show_connection)


def _lifecycle(action: str, with_reason: bool, allow_all: bool) -> Callable[..., None]:
    @friendly
    def command(
        connection_id: str | None, reason: str | None = None, all_: bool = False
    ) -> None:
        from shared.control import connections as svc

        site = _site()
        with site.db.session() as session:
            if all_:
                changed = svc.bulk(session, site, action, reason)
                click.echo(
                    f"{action}: {len(changed)} connection(s); peers are notified"
                )
                return
            if not connection_id:
                raise click.ClickException(
                    "give a connection ID" + (" or --all" if allow_all else "")
                )
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
        params.append(
            click.Option(
                ["--all", "all_"], is_flag=True, help="every connection it applies to"
            )
        )
    return click.Command(
        action,
        callback=command,
        params=params,
        help=f"{action.capitalize()} a connection; the peer is told.",
    )


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
    from shared.control import connections as svc
    from shared.control import healing
    from workers.celery_app import runtime

    site = _site()
    with site.db.session() as session:
        conn_id = str(svc.get(session, connection_id).id)
    outcome = healing.verify(site, runtime.peer, conn_id)
    with site.db.session() as session:
        data = {"outcome": outcome, **svc.describe(svc.get(session, conn_id))}
    emit(
        data,
        as_json,
        lambda d: click.echo(f"verify: {d['outcome']} (status {d['status']})"),
    )


# -- pulling from a sender ------------------------------------------------------


def _receiver(session, connection_id: str):  # type: ignore[no-untyped-def]
    from shared.control import connections as svc

    conn = svc.get(session, connection_id)
    if conn.direction != "receiver":
        raise click.ClickException(
            "that is a sender connection; pull from a receiver one"
        )
    return conn


def _ask(connection_id: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """Call the sender of a receiver connection directly (operator preview)."""
    from shared.control.peer import PeerRefused, PeerUnavailable
    from workers.celery_app import runtime

    site = _site()
    with site.db.session() as session:
        conn = _receiver(session, connection_id)
        url, token_hash = conn.site_url, conn.auth_token_hash
    try:
        resp = runtime.peer.post(url, endpoint, {"auth_token_hash": token_hash, **body})
    except (PeerUnavailable, PeerRefused) as ex:
        raise click.ClickException(f"sender unreachable: {ex}") from None
    if resp.status != 200 or resp.body.get("success") is not True:
        raise click.ClickException(f"sender refused ({resp.status}): {resp.error}")
    return resp.body


@main.command()
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def tables(connection_id: str, as_json: bool) -> None:
    """The tables a sender offers to this receiver connection."""
    data = _ask(connection_id, "list-tables", {})["tables"]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("name", "rows", "bytes", "primary key", "depends on", "checksum")
        for t in items:
            table.add_row(
                t["name"],
                str(t.get("row_count")),
                str(t.get("size_bytes")),
                ",".join(t.get("primary_key") or []),
                ",".join(t.get("depends_on") or []),
                (t.get("checksum") or "-")[:16],
            )
        console.print(table)

    emit(data, as_json, render)


@main.command()
@click.argument("connection_id")
@click.argument("table_name")
@click.option("--json", "as_json", is_flag=True)
@friendly
def schema(connection_id: str, table_name: str, as_json: bool) -> None:
    """A sender table's columns, keys and references."""
    data = _ask(connection_id, "table-schema", {"table_name": table_name})["schema"]

    def render(d: dict[str, Any]) -> None:
        table = Table("column", "type", "nullable", "pk", "default")
        for c in d["columns"]:
            table.add_row(
                c["name"],
                c["type"],
                str(c["nullable"]),
                str(c["primary_key"]),
                str(c.get("default") or ""),
            )
        console.print(table)
        for fk in d.get("foreign_keys") or []:
            click.echo(
                f"foreign key ({', '.join(fk['columns'])}) -> "
                f"{fk['references_table']} ({', '.join(fk['references_columns'])})"
            )

    emit(data, as_json, render)


@main.command()
@click.argument("connection_id")
@click.argument("table_name")
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--ids", default=None, help="primary-key values, comma-separated")
@click.option("--range", "id_range", default=None, help="A:B on the primary key")
@click.option("--json", "as_json", is_flag=True)
@friendly
def preview(
    connection_id: str,
    table_name: str,
    limit: int,
    offset: int,
    ids: str | None,
    id_range: str | None,
    as_json: bool,
) -> None:
    """A few records of a sender table."""
    body: dict[str, Any] = {"table_name": table_name, "limit": limit, "offset": offset}
    if ids:
        body["ids"] = _csv(ids)
    if id_range:
        start, _, end = id_range.partition(":")
        if start:
            body["id_start"] = start
        if end:
            body["id_end"] = end
    data = _ask(connection_id, "table-records", body)
    records = data["records"]

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("(no records)")
            return
        table = Table(*rows[0].keys())
        for r in rows:
            table.add_row(
                *(
                    json.dumps(v, default=str) if not isinstance(v, str) else v
                    for v in r.values()
                )
            )
        console.print(table)
        if data.get("has_more"):
            click.echo("(more records follow)")

    emit(records, as_json, render)


@main.command()
@click.argument("connection_id")
@click.argument("table_names", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="every table the sender offers")
@click.option(
    "--strategy",
    type=click.Choice(["skip", "overwrite", "merge", "append"]),
    default=None,
    help="default: the connection's default strategy",
)
@click.option(
    "--create-missing/--no-create-missing",
    default=None,
    help="create tables missing here from the sender's schema",
)
@click.option("--wait", is_flag=True, help="show progress until the transfer ends")
@click.option("--json", "as_json", is_flag=True)
@friendly
def pull(
    connection_id: str,
    table_names: tuple[str, ...],
    all_tables: bool,
    strategy: str | None,
    create_missing: bool | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Pull tables from the sender of a receiver connection (done by pull workers)."""
    from shared.data.receiver import pulls

    site = _site()
    with site.db.session() as session:
        conn = _receiver(session, connection_id)
        transfer = pulls.start(
            session,
            site,
            conn,
            table_names,
            all_tables=all_tables,
            strategy=strategy,
            create_missing=create_missing,
        )
        transfer_id = str(transfer.id)
    if not wait:
        emit(
            {"id": transfer_id, "status": "pending"},
            as_json,
            lambda d: click.echo(f"transfer {d['id']} queued"),
        )
        return
    final = _watch(site, transfer_id, quiet=as_json)
    if as_json:
        click.echo(json.dumps(final, indent=2, default=str))
    else:
        _summary(final)
    if final["status"] != "completed":
        sys.exit(1)


def _watch(site, transfer_id: str, quiet: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from shared.data.receiver import transfers

    def load() -> dict[str, Any]:
        with site.db.session() as session:
            return transfers.describe(transfers.get(session, transfer_id))

    if quiet:
        while (data := load())["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.5)
        return data
    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        while True:
            data = load()
            for t in data["tables"]:
                if t["table"] not in bars:
                    bars[t["table"]] = progress.add_task(
                        t["table"], total=t["rows_expected"], rate=""
                    )
                progress.update(
                    bars[t["table"]],
                    completed=t["rows_done"],
                    total=max(t["rows_expected"] or 0, t["rows_done"]),
                    rate=f"{data['rows_per_second'] or 0:,.0f} rows/s",
                )
            if data["status"] in ("completed", "failed", "cancelled"):
                return data
            time.sleep(0.5)


def _summary(data: dict[str, Any]) -> None:
    table = Table(
        "table",
        "status",
        "rows",
        "created",
        "updated",
        "skipped",
        "failed",
        title=f"transfer {data['id']}: {data['status']}",
    )
    for t in data["tables"]:
        table.add_row(
            t["table"],
            t["status"],
            str(t["rows_done"]),
            str(t["created"]),
            str(t["updated"]),
            str(t["skipped"]),
            str(t["failed"]),
        )
    console.print(table)
    if data.get("error"):
        click.echo(f"error: {data['error']}")
    for t in data["tables"]:
        for err in t["errors"][:5]:
            click.echo(f"{t['table']}: {err}")


@main.group()
def transfers() -> None:
    """Pulls made by this site (receive) and served by it (send)."""


@transfers.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def transfers_list(limit: int, as_json: bool) -> None:
    from shared.data.receiver import transfers as svc

    site = _site()
    with site.db.session() as session:
        rows = [svc.describe(t, with_tables=False) for t in svc.newest(session, limit)]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table(
            "id",
            "direction",
            "connection",
            "status",
            "strategy",
            "rows",
            "created",
            "updated",
            "skipped",
            "failed",
            "started",
        )
        for t in items:
            table.add_row(
                t["id"],
                t["direction"],
                t["connection"] or "",
                t["status"],
                t["strategy"] or "",
                f"{t['records_transferred']}",
                str(t["records_created"]),
                str(t["records_updated"]),
                str(t["records_skipped"]),
                str(t["records_failed"]),
                t["started_at"] or "",
            )
        console.print(table)

    emit(rows, as_json, render)


@transfers.command("show")
@click.argument("transfer_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def transfers_show(transfer_id: str, as_json: bool) -> None:
    from shared.data.receiver import transfers as svc

    site = _site()
    with site.db.session() as session:
        data = svc.describe(svc.get(session, transfer_id))
    emit(data, as_json, _summary)


@main.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def audit(limit: int, as_json: bool) -> None:
    """The newest audit events."""
    from sqlalchemy import select

    from shared.state.models import AuditEvent

    site = _site()
    with site.db.session() as session:
        rows = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "connection": e.connection_name,
                "reason": e.reason,
            }
            for e in session.scalars(
                select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            )
        ]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("at", "actor", "action", "connection", "reason")
        for e in items:
            table.add_row(
                e["at"],
                e["actor"],
                e["action"],
                e["connection"] or "",
                e["reason"] or "",
            )
        console.print(table)

    emit(rows, as_json, render)


if __name__ == "__main__":
    main()
