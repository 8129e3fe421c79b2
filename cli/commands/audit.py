"""``dbsync audit``: the newest audit events."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from cli.common import cell, console, emit, friendly, site


@click.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def audit(limit: int, as_json: bool) -> None:
    """The newest audit events."""
    from sqlalchemy import select

    from shared.state.models import AuditEvent

    with site().db.session() as session:
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
                *map(
                    cell,
                    (e["at"], e["actor"], e["action"], e["connection"], e["reason"]),
                )
            )
        console.print(table)

    emit(rows, as_json, render)
