"""``dbsync settings``: the site's switches (enabled, incoming mode and password)."""

from __future__ import annotations

from typing import Any

import click

from cli.common import ASK, emit, friendly, read_password, say, site


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
@click.argument("value", required=False)
@friendly
def settings_set(key: str, value: str | None) -> None:
    """Set KEY to VALUE.

    `incoming_password` with no VALUE asks for the password (hidden, twice);
    `incoming_password -` reads it from the first line of stdin (an empty
    line clears it).
    """
    from shared.control import connections, module

    password: str | None = None
    if key == "incoming_password":
        password = read_password(
            ASK if value is None else value,
            stdin=False,
            name="incoming_password",
            stdin_form="`dbsync settings set incoming_password -`",
            confirm=True,
        )
    elif value is None:
        raise click.UsageError(f"{key} needs a VALUE")
    text = value or ""
    current = site()
    with current.db.session() as session:
        if key == "enabled":
            if text.lower() not in ("true", "false"):
                raise click.ClickException("enabled takes true or false")
            changed = connections.set_enabled(session, current, text.lower() == "true")
            click.echo(f"enabled: {text.lower()}")
            if changed:
                click.echo(
                    f"{len(changed)} connection(s) changed; their peers are notified"
                )
        elif key == "incoming_mode":
            module.set_mode(session, text)
            click.echo(f"incoming_mode: {text}")
        else:
            module.set_password(session, password or "")
            click.echo(
                "incoming_password: set" if password else "incoming_password: cleared"
            )
