"""``dbsync status``: the readiness checks of ``/readyz``, from a terminal."""

from __future__ import annotations

import sys

import click

from cli.common import emit, friendly, say, site
from shared.control import health


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def status(as_json: bool) -> None:
    """Check databases, broker, migrations and beat; exit 1 if the site is not ready."""
    report = health.readiness(site())

    def render(body: dict[str, object]) -> None:
        for check in report.checks:
            state = "ok" if check.ok else "FAIL"
            line = f"{check.name:<15} {state}"
            say(f"{line}  {check.detail}" if check.detail else line)
        click.echo(
            "ready" if report.ready else f"not ready: {', '.join(report.failing)}"
        )

    emit(report.body(), as_json, render)
    sys.exit(0 if report.ready else 1)
