"""Look at a sender's tables and pull them: ``tables``, ``schema``, ``preview``, ``pull``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.table import Table
from sqlalchemy.orm import Session

from cli.commands.transfers import summary
from cli.common import console, csv_list, emit, friendly, peer, site
from shared.context import Site
from shared.state.models import STRATEGIES, Connection


def _receiver(session: Session, connection_id: str) -> Connection:
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

    with site().db.session() as session:
        conn = _receiver(session, connection_id)
        url, token_hash = conn.site_url, conn.auth_token_hash
    try:
        resp = peer().post(url, endpoint, {"auth_token_hash": token_hash, **body})
    except (PeerUnavailable, PeerRefused) as ex:
        raise click.ClickException(f"sender unreachable: {ex}") from None
    if resp.status != 200 or resp.body.get("success") is not True:
        raise click.ClickException(f"sender refused ({resp.status}): {resp.error}")
    return resp.body


@click.command()
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


@click.command()
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


@click.command()
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
        body["ids"] = csv_list(ids)
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


@click.command()
@click.argument("connection_id")
@click.argument("table_names", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="every table the sender offers")
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
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

    current = site()
    with current.db.session() as session:
        conn = _receiver(session, connection_id)
        transfer = pulls.start(
            session,
            current,
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
    final = _watch(current, transfer_id, quiet=as_json)
    if as_json:
        click.echo(json.dumps(final, indent=2, default=str))
    else:
        summary(final)
    if final["status"] != "completed":
        sys.exit(1)


def _watch(current: Site, transfer_id: str, quiet: bool) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from shared.data.receiver import transfers

    def load() -> dict[str, Any]:
        with current.db.session() as session:
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
