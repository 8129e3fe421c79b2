"""``dbsync settings``: the site's switches (enabled, incoming mode and password)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.common import emit, friendly, say, site


@click.group()
def settings() -> None:
    """The site's switches: enabled, incoming mode, incoming password."""


@settings.command("show")
@click.option("--json", "as_json", is_flag=True)
@friendly
def settings_show(as_json: bool) -> None:
    from shared.control import module

    current = site()
    with current.db.session() as session:
        row = module.get(session)
        data = {
            "enabled": row.enabled,
            "incoming_mode": row.incoming_mode,
            "incoming_password_set": bool(row.incoming_password_hash),
            "site_url": current.settings.site_url,
        }

    def render(items: dict[str, Any]) -> None:
        for key, value in items.items():
            say(f"{key}: {value}")

    emit(data, as_json, render)


@settings.command("set")
@click.argument(
    "key", type=click.Choice(["enabled", "incoming_mode", "incoming_password"])
)
@click.argument("value")
@friendly
def settings_set(key: str, value: str) -> None:
    """Set KEY to VALUE (`incoming_password -` reads the password from stdin)."""
    from shared.control import connections, module

    current = site()
    with current.db.session() as session:
        if key == "enabled":
            if value.lower() not in ("true", "false"):
                raise click.ClickException("enabled takes true or false")
            changed = connections.set_enabled(session, current, value.lower() == "true")
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
