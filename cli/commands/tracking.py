"""``dbsync tracking``: the change-tracking triggers on the data database."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from rich.table import Table

from cli.common import cell, console, emit, friendly, say, site


@click.group()
def tracking() -> None:
    """Tables whose changes this site logs by triggers (SYNC_CHANGE_TRACKING)."""


@tracking.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly
def list_(as_json: bool) -> None:
    """Every tracked table: installed when, and who last read its log."""
    from shared.data.sender import tracking as svc

    rows = [
        {
            "schema": e["schema"],
            "table": e["table"],
            "installed_at": e["installed_at"],
            "readers": {
                name: {
                    "horizon": v[0],
                    "read_at": dt.datetime.fromtimestamp(v[1], dt.UTC).isoformat(),
                }
                for name, v in sorted(e["readers"].items())
                if isinstance(v, list) and len(v) > 1
            },
        }
        for e in svc.tracked_tables(site().db.data_engine)
    ]

    def render(items: list[dict[str, Any]]) -> None:
        if not items:
            say("no table is tracked")
            return
        table = Table("schema", "table", "installed", "readers (last read)")
        for e in items:
            table.add_row(
                *map(
                    cell,
                    (
                        e["schema"],
                        e["table"] or "(dropped)",
                        e["installed_at"][:19],
                        ", ".join(
                            f"{n} ({r['read_at'][:19]})"
                            for n, r in e["readers"].items()
                        )
                        or "-",
                    ),
                )
            )
        console.print(table)

    emit(rows, as_json, render)


@tracking.command("remove")
@click.argument("table_name")
@click.option("--schema", default=None, help="default: SYNC_DATA_SCHEMA")
@friendly
def remove(table_name: str, schema: str | None) -> None:
    """Take the triggers, the log and its marks off TABLE_NAME now.

    A table SYNC_CHANGE_TRACKING still names gets them again at the next
    pull or delta run of it; set SYNC_CHANGE_TRACKING to leave it out (or
    `off`) to keep them off.
    """
    from shared.data.sender import tracking as svc

    current = site()
    if not svc.remove(
        current.db.data_engine, schema or current.settings.data_schema, table_name
    ):
        raise click.ClickException(f"{table_name} is not tracked (or is locked now)")
    say(f"change tracking removed from {table_name}")
    if current.settings.tracks_changes(table_name):
        say(
            "SYNC_CHANGE_TRACKING still names it: the next pull or delta run of"
            " it installs the triggers again"
        )
