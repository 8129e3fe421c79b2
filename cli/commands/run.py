"""Run a site: migrate its database, serve the API, run workers and beat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from cli.common import friendly, settings


@click.group()
def db() -> None:
    """The service's own database."""


@db.command("upgrade")
@friendly
def db_upgrade() -> None:
    """Create or migrate the service's tables to the newest version."""
    from shared.state.migrate import upgrade

    upgrade(settings().database_url)
    click.echo("database is up to date")


def serve_argv(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--config",
        "python:api.gunicorn_conf",
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
    ]


def worker_argv(queues: str | None, concurrency: int | None) -> list[str]:
    loaded = settings()
    queues = queues or f"{loaded.peer_queue},{loaded.pull_queue}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def beat_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "beat",
        "--loglevel",
        "INFO",
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), type=int)
@click.option("--workers", default=2, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Run the API under gunicorn."""
    settings()
    os.execv(sys.executable, serve_argv(host, port, workers))


@click.command()
@click.option("--queues", "-Q", default=None, help="default: peer,pull")
@click.option("--concurrency", "-c", type=int, default=None)
def worker(queues: str | None, concurrency: int | None) -> None:
    """Run a Celery worker (peer calls and table pulls)."""
    os.execv(sys.executable, worker_argv(queues, concurrency))


@click.command()
def beat() -> None:
    """Run celery beat (verify, expire and notice-sweep jobs)."""
    settings()
    os.execv(sys.executable, beat_argv())


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), type=int)
@friendly
def up(host: str, port: int) -> None:
    """Migrate, then run API, worker and beat together (local use)."""
    from shared.state.migrate import upgrade

    loaded = settings()
    upgrade(loaded.database_url)
    procs = [
        subprocess.Popen(serve_argv(host, port, 1)),
        subprocess.Popen(worker_argv(None, 2)),
        subprocess.Popen(beat_argv()),
    ]
    click.echo(f"dbsync site on http://{host}:{port}{loaded.api_prefix}/status")

    def stop(*_args: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    sys.exit(
        max((p.returncode or 0) for p in procs)
        if any(p.returncode for p in procs)
        else 0
    )
