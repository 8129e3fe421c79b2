"""``dbsync syncs``: scheduled pulls of a receiver connection's tables."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from cli.common import cell, console, emit, friendly, say, site
from shared.state.models import STRATEGIES


def _show(data: dict[str, Any]) -> None:
    for key, value in data.items():
        say(f"{key}: {value}")


@click.group()
def syncs() -> None:
    """Pull tables on a schedule (beat starts each run as a transfer)."""


@syncs.command("create")
@click.argument("connection_id")
@click.argument("table_names", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="every table the sender offers")
@click.option("--every", required=True, help="interval: 90, 30s, 15m, 2h, 1d")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="overwrite")
@click.option("--mirror-deletes", is_flag=True, help="delete rows the sender deleted")
@click.option("--mode", type=click.Choice(["delta", "full", "cursor"]), default="delta")
@click.option("--cursor-column", default=None, help="for --mode cursor")
@click.option(
    "--look-back",
    default=None,
    help="for --mode cursor: a number for an integer column (default 0),"
    " a duration for a timestamp (default 1m) or a date (default 1d)",
)
@click.option("--evolve", is_flag=True, help="add columns the sender added")
@click.option("--json", "as_json", is_flag=True)
@friendly
def create(
    connection_id: str,
    table_names: tuple[str, ...],
    all_tables: bool,
    every: str,
    strategy: str,
    mirror_deletes: bool,
    mode: str,
    cursor_column: str | None,
    look_back: str | None,
    evolve: bool,
    as_json: bool,
) -> None:
    """Create a sync of a receiver connection's tables.

    With --mode cursor the column is checked first on each table at the
    sender (its table-schema; with --all, every table it offers)."""
    from shared.control import connections
    from shared.data.receiver import syncs as svc

    columns = None
    if mode == "cursor" and cursor_column:
        columns = _sender_columns(connection_id, table_names, all_tables)
    with site().db.session() as session:
        conn = connections.get(session, connection_id)
        sync = svc.create(
            session,
            conn,
            table_names,
            all_tables=all_tables,
            every_seconds=svc.parse_every(every),
            strategy=strategy,
            mode=mode,
            mirror_deletes=mirror_deletes,
            cursor_column=cursor_column,
            evolve=evolve,
            look_back=look_back,
            sender_columns=columns,
        )
        data = svc.describe(session, sync)
    emit(data, as_json, lambda d: click.echo(f"sync {d['id']} created"))


def _sender_columns(
    connection_id: str, table_names: tuple[str, ...], all_tables: bool
) -> dict[str, list[dict[str, Any]]]:
    """The columns of the tables to sync, from the sender's table-schema."""
    from cli.commands.data import _ask, _objects
    from shared.data.receiver.pulls import PROTECTED_TABLES

    names = [t.strip() for t in table_names if t.strip()]
    if all_tables:
        offered = _objects(
            _ask(connection_id, "list-tables", {}).get("tables"), "tables"
        )
        names = [
            t["name"]
            for t in offered
            if isinstance(t.get("name"), str) and t["name"] not in PROTECTED_TABLES
        ]
    columns = {}
    for name in names:
        schema = _ask(connection_id, "table-schema", {"table_name": name}).get("schema")
        found = schema.get("columns") if isinstance(schema, dict) else None
        columns[name] = _objects(found, f"columns of {name}")
    return columns


@syncs.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly
def list_(as_json: bool) -> None:
    """Every sync, with its state and last run."""
    from shared.data.receiver import syncs as svc

    with site().db.session() as session:
        rows = [svc.describe(session, s) for s in svc.every(session)]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("id", "connection", "tables", "every", "mode", "state", "last")
        for s in items:
            table.add_row(
                *map(
                    cell,
                    (
                        s["id"],
                        s["connection"],
                        ",".join(s["tables"]),
                        f"{s['every_seconds']}s",
                        s["mode"],
                        s["state"],
                        s["last_error"] or s["last_status"] or "-",
                    ),
                )
            )
        console.print(table)

    emit(rows, as_json, render)


def _act(sync_id: str, as_json: bool, action: str) -> None:
    from shared.data.receiver import syncs as svc

    with site().db.session() as session:
        sync = svc.get(session, sync_id)
        if action == "pause":
            svc.set_paused(session, sync, True)
        elif action == "resume":
            svc.set_paused(session, sync, False)
        elif action == "run":
            svc.run_now(session, sync)
        elif action == "delete":
            data = {"id": sync_id, "deleted": True}
            svc.delete(session, sync)
            emit(data, as_json, lambda d: click.echo(f"sync {d['id']} deleted"))
            return
        session.flush()
        data = svc.describe(session, sync)
    emit(data, as_json, _show)


ACTIONS = {
    "show": "One sync: options, state, next run, last run and its error.",
    "pause": "Start no more runs (a run in progress finishes).",
    "resume": "Run again on schedule (at once if a run was missed).",
    "run": "Run at beat's next tick (after a run in progress ends).",
    "delete": "Delete the sync (its transfers stay).",
}


def _action_command(action: str, help_text: str) -> click.Command:
    """``dbsync syncs ACTION SYNC_ID [--json]``: one command per action."""

    @click.argument("sync_id")
    @click.option("--json", "as_json", is_flag=True)
    @friendly
    def command(sync_id: str, as_json: bool) -> None:
        _act(sync_id, as_json, action)

    return syncs.command(action, help=help_text)(command)


for _action, _help in ACTIONS.items():
    _action_command(_action, _help)
