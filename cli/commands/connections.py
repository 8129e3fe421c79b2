"""``dbsync connections``: create connections to other sites and operate them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich.table import Table

from cli.common import (
    ASK,
    cell,
    console,
    csv_list,
    emit,
    friendly,
    peer,
    read_password,
    say,
    site,
)


@click.group()
def connections() -> None:
    """Create and operate connections to other sites."""


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
            table.add_row(cell(key), cell(value))
    console.print(table)


@connections.command("create")
@click.option("--name", required=True)
@click.option("--url", required=True, help="the receiver site's base URL")
@click.option(
    "--password",
    is_flag=False,
    flag_value=ASK,
    default=None,
    help="the receiver's incoming password; alone: asked for (hidden); `-`: stdin",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="read the receiver's incoming password from the first line of stdin",
)
@click.option("--allowed-tables", default=None)
@click.option("--excluded-tables", default=None)
@click.option(
    "--offer-new-tables/--current-tables-only",
    default=False,
    help="without --allowed-tables: offer tables created later too (default:"
    " only the tables offered now)",
)
@click.option("--expires-at", default=None, help="ISO 8601; UTC if no offset")
@click.option("--max-downloads", type=click.IntRange(min=0), default=None)
@click.option("--max-records-total", type=click.IntRange(min=0), default=None)
@click.option(
    "--max-records-per-request", type=click.IntRange(1, 1_000_000), default=100_000
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
    password_stdin: bool,
    allowed_tables: str | None,
    excluded_tables: str | None,
    offer_new_tables: bool,
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

    password = read_password(
        password,
        stdin=password_stdin,
        name="--password",
        stdin_form="--password-stdin",
    )
    if password == "":
        raise click.ClickException("the password is empty")
    start, end = _hours(allowed_hours)
    options = svc.SenderOptions(
        allowed_tables=csv_list(allowed_tables),
        excluded_tables=csv_list(excluded_tables),
        expires_at=_when(expires_at),
        max_downloads=max_downloads,
        max_records_total=max_records_total,
        max_records_per_request=max_records_per_request,
        rate_limit_requests_per_minute=rate_limit,
        ip_allowlist=csv_list(ip_allowlist),
        allowed_hours_start=start,
        allowed_hours_end=end,
    )
    current = site()
    with current.db.session() as session:
        conn, token = svc.create_sender(
            session,
            current,
            name=name,
            url=url,
            password=password,
            options=options,
            offer_new_tables=offer_new_tables,
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

    with site().db.session() as session:
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
                *map(
                    cell,
                    (
                        c["id"],
                        c["name"],
                        c["direction"],
                        c["site_url"],
                        c["status"],
                        c["registration"],
                        c["peer_sync"],
                        c["last_verified_at"],
                    ),
                )
            )
        console.print(table)

    emit(rows, as_json, render)


@connections.command("show")
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def connections_show(connection_id: str, as_json: bool) -> None:
    from shared.control import connections as svc

    with site().db.session() as session:
        data = svc.describe(svc.get(session, connection_id))
    emit(data, as_json, _show_connection)


def _lifecycle(action: str, with_reason: bool, allow_all: bool) -> click.Command:
    @friendly
    def command(
        connection_id: str | None, reason: str | None = None, all_: bool = False
    ) -> None:
        from shared.control import connections as svc

        current = site()
        with current.db.session() as session:
            if all_:
                changed = svc.bulk(session, current, action, reason)
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
                fn(session, current, conn, reason)
            else:
                fn(session, current, conn)
            name = conn.name
        say(f"{action}: {name} ({connection_id})")

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

    current = site()
    with current.db.session() as session:
        conn_id = str(svc.get(session, connection_id).id)
    outcome = healing.verify(current, peer(), conn_id)
    with current.db.session() as session:
        data = {"outcome": outcome, **svc.describe(svc.get(session, conn_id))}
    emit(
        data,
        as_json,
        lambda d: say(f"verify: {d['outcome']} (status {d['status']})"),
    )
