"""``dbsync transfers``: pulls made by this site and pulls it served."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from cli.common import cell, console, emit, friendly, say, site


def summary(data: dict[str, Any]) -> None:
    """Print one transfer: a row per table, then its first errors."""
    table = Table(
        "table",
        "status",
        "rows",
        "created",
        "updated",
        "skipped",
        "failed",
        title=cell(f"transfer {data['id']}: {data['status']}"),
    )
    for t in data["tables"]:
        table.add_row(
            *map(
                cell,
                (
                    t["table"],
                    t["status"],
                    t["rows_done"],
                    t["created"],
                    t["updated"],
                    t["skipped"],
                    t["failed"],
                ),
            )
        )
    console.print(table)
    if data.get("error"):
        say(f"error: {data['error']}")
    for name, check in (data.get("verification") or {}).items():
        say(f"{name}: {check.get('status')} {check.get('first_range') or ''}")
    for t in data["tables"]:
        for err in t["errors"][:5]:
            say(f"{t['table']}: {err}")


@click.group()
def transfers() -> None:
    """Pulls made by this site (receive) and served by it (send)."""


@transfers.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def transfers_list(limit: int, as_json: bool) -> None:
    from shared.data.receiver import transfers as svc

    with site().db.session() as session:
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
                *map(
                    cell,
                    (
                        t["id"],
                        t["direction"],
                        t["connection"],
                        t["status"],
                        t["strategy"],
                        t["records_transferred"],
                        t["records_created"],
                        t["records_updated"],
                        t["records_skipped"],
                        t["records_failed"],
                        t["started_at"],
                    ),
                )
            )
        console.print(table)

    emit(rows, as_json, render)


@transfers.command("show")
@click.argument("transfer_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def transfers_show(transfer_id: str, as_json: bool) -> None:
    from shared.data.receiver import transfers as svc

    with site().db.session() as session:
        data = svc.describe(svc.get(session, transfer_id))
    emit(data, as_json, summary)
