"""``dbsync admin``: the web console's password (the console is off without one)."""

from __future__ import annotations

import click

from cli.common import ASK, friendly, read_password, site


@click.group()
def admin() -> None:
    """The admin console under /admin."""


@admin.command("set-password")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="read the password from the first line of stdin",
)
@friendly
def set_password(password_stdin: bool) -> None:
    """Set the console's password (asked twice, hidden); ends every session."""
    from shared.control import admin as svc

    password = read_password(
        None if password_stdin else ASK,
        stdin=password_stdin,
        name="set-password",
        stdin_form="--password-stdin",
        confirm=True,
    )
    with site().db.session() as session:
        svc.set_password(session, password or "")
    click.echo("admin password set: the console is on at /admin")
