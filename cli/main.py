"""The ``dbsync`` command: run a site and operate its connections from a terminal.

This is the one place that wires api, workers and shared together for a person;
each command group lives in its own module under ``cli/commands/``.
"""

from __future__ import annotations

import click

from cli.commands import (
    admin,
    audit,
    connections,
    data,
    run,
    settings,
    status,
    syncs,
    tracking,
    transfers,
)


@click.group()
def main() -> None:
    """dbsync: exchange database tables between sites over HTTP."""


for command in (
    run.db,
    run.serve,
    run.worker,
    run.beat,
    run.up,
    status.status,
    settings.settings,
    connections.connections,
    data.tables,
    data.schema,
    data.preview,
    data.pull,
    transfers.transfers,
    syncs.syncs,
    tracking.tracking,
    audit.audit,
    admin.admin,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
