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
from cli.common import cell, clean, console, csv_list, emit, friendly, peer, say, site
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
        url, token_hash, prefix = conn.site_url, conn.auth_token_hash, conn.peer_prefix
    try:
        resp = peer().post(
            url, endpoint, {"auth_token_hash": token_hash, **body}, prefix=prefix
        )
    except (PeerUnavailable, PeerRefused) as ex:
        raise click.ClickException(clean(f"sender unreachable: {ex}")) from None
    if (
        resp.status != 200
        or not isinstance(resp.body, dict)
        or resp.body.get("success") is not True
    ):
        raise click.ClickException(
            clean(f"sender refused ({resp.status}): {resp.error}")
        )
    return resp.body


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """``value`` if it is a list of JSON objects; a clear error otherwise.

    A sender chooses every byte of its answer: a wrong shape ends the command
    with one line, never a traceback.
    """
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise click.ClickException(f"the sender's {what} are not a list of objects")
    return value


def _joined(value: Any, sep: str = ",") -> str:
    """A list the sender sent (keys, columns), joined; anything else as is."""
    if isinstance(value, list):
        return sep.join(str(v) for v in value)
    return "" if value is None else str(value)


def _value(value: Any) -> str:
    """A record's value as a preview shows it: strings as they are, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


@click.command()
@click.argument("connection_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def tables(connection_id: str, as_json: bool) -> None:
    """The tables a sender offers to this receiver connection."""
    data = _ask(connection_id, "list-tables", {}).get("tables")

    def render(items: Any) -> None:
        table = Table("name", "rows", "bytes", "primary key", "depends on", "checksum")
        for t in _objects(items, "tables"):
            table.add_row(
                *map(
                    cell,
                    (
                        t.get("name"),
                        str(t.get("row_count")),
                        str(t.get("size_bytes")),
                        _joined(t.get("primary_key")),
                        _joined(t.get("depends_on")),
                        str(t.get("checksum") or "-")[:16],
                    ),
                )
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
    data = _ask(connection_id, "table-schema", {"table_name": table_name}).get("schema")

    def render(d: Any) -> None:
        if not isinstance(d, dict):
            raise click.ClickException("the sender's schema is not an object")
        table = Table("column", "type", "nullable", "pk", "default")
        for c in _objects(d.get("columns"), "columns"):
            table.add_row(
                *map(
                    cell,
                    (
                        c.get("name"),
                        c.get("type"),
                        str(c.get("nullable")),
                        str(c.get("primary_key")),
                        c.get("default") or "",
                    ),
                )
            )
        console.print(table)
        for fk in _objects(d.get("foreign_keys") or [], "foreign keys"):
            say(
                f"foreign key ({_joined(fk.get('columns'), ', ')}) -> "
                f"{fk.get('references_table')}"
                f" ({_joined(fk.get('references_columns'), ', ')})"
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
    records = data.get("records")

    def render(rows: Any) -> None:
        rows = _objects(rows, "records")
        if not rows:
            click.echo("(no records)")
            return
        columns = list(dict.fromkeys(key for r in rows for key in r))
        table = Table()
        for column in columns:
            table.add_column(cell(column))
        for r in rows:
            table.add_row(*(cell(_value(r[c]) if c in r else "") for c in columns))
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
@click.option("--mode", type=click.Choice(["full", "delta"]), default="full")
@click.option("--mirror-deletes", is_flag=True, help="delete rows the sender lacks")
@click.option("--evolve", is_flag=True, help="add columns the sender added")
@click.option("--wait", is_flag=True, help="show progress until the transfer ends")
@click.option("--json", "as_json", is_flag=True)
@friendly
def pull(
    connection_id: str,
    table_names: tuple[str, ...],
    all_tables: bool,
    strategy: str | None,
    create_missing: bool | None,
    mode: str,
    mirror_deletes: bool,
    evolve: bool,
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
            sync={"mode": mode, "mirror_deletes": mirror_deletes, "evolve": evolve},
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
        TextColumn("{task.description}", markup=False),
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
                        clean(t["table"]), total=t["rows_expected"], rate=""
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
