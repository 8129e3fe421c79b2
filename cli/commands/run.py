"""Run a site: migrate its database, serve the API, run workers and beat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from cli.common import friendly, settings
from shared.logging import log_format


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


def private_files() -> None:
    """Make every file this process and its children create readable by this user only.

    The umask passes through exec: beat's schedule file (a shelve it makes
    itself, with the embedded broker) and any SQLite journal are 0600 from
    their first byte, like the files ``ensure_home`` makes.
    """
    os.umask(0o077)


def metrics_folder() -> None:
    """Give the web processes a fresh private folder for their metrics files.

    prometheus-client adds up the gunicorn workers' figures from files there;
    a folder of its own per start (under the system's temporary folder, so an
    empty working directory and no HOME will do) holds no figure of an
    earlier run. An operator's own PROMETHEUS_MULTIPROC_DIR is kept.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="dbsync-metrics-"
        )


def serve_argv(host: str, port: int, workers: int) -> list[str]:
    """gunicorn with dbsync's threaded worker (api.serving): requests are read by
    each process's event loop, answers written by SYNC_WEB_THREADS threads.

    With SYNC_LOG_FORMAT=json the app logs one JSON line per request itself
    (with its request id) in place of gunicorn's access log.
    """
    access = [] if log_format() == "json" else ["--access-logfile", "-"]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "api.serving.GuardedThreadWorker",
        "--threads",
        str(settings().web_threads),
        "--config",
        "python:api.gunicorn_conf",
        *access,
        "--graceful-timeout",
        "10",
        "--no-control-socket",
    ]


def _quiet() -> list[str]:
    # Celery prints its start banner on stdout: not one JSON line.
    return ["--quiet"] if log_format() == "json" else []


def worker_argv(queues: str | None, concurrency: int | None) -> list[str]:
    loaded = settings()
    queues = queues or f"{loaded.peer_queue},{loaded.pull_queue}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        *_quiet(),
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
        *_quiet(),
        "-A",
        "workers.celery_app",
        "beat",
        "--loglevel",
        "INFO",
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=lambda: int(os.environ.get("PORT", 8000)),
    type=int,
    help="default: $PORT, else 8000",
)
@click.option(
    "--workers",
    default=lambda: int(os.environ.get("WEB_CONCURRENCY", 2)),
    type=int,
    help="default: $WEB_CONCURRENCY, else 2",
)
@friendly
def serve(host: str, port: int, workers: int) -> None:
    """Run the API under gunicorn."""
    settings()
    private_files()
    metrics_folder()
    os.execv(sys.executable, serve_argv(host, port, workers))


@click.command()
@click.option("--queues", "-Q", default=None, help="default: peer,pull")
@click.option("--concurrency", "-c", type=int, default=None)
@friendly
def worker(queues: str | None, concurrency: int | None) -> None:
    """Run a Celery worker (peer calls and table pulls)."""
    argv = worker_argv(queues, concurrency)
    private_files()
    os.execv(sys.executable, argv)


@click.command()
@friendly
def beat() -> None:
    """Run celery beat (verify, expire and notice-sweep jobs)."""
    settings()
    private_files()
    os.execv(sys.executable, beat_argv())


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), type=int)
@friendly
def up(host: str, port: int) -> None:
    """Migrate, then run API, worker and beat together; exit 1 if one of them dies.

    A child that dies is not restarted: a restart loop would hide a crash (a bad
    setting, a database that refuses) behind a running ``up``. ``up`` stops the
    others and exits non-zero with one line naming the child, so whatever runs
    ``up`` (systemd, a container runtime) sees the failure and restarts the
    site as a whole, with its own backoff, as honcho does for the Procfile.
    """
    from shared.state.migrate import upgrade

    loaded = settings()
    private_files()
    upgrade(loaded.database_url)
    metrics_folder()
    procs = {
        "api": subprocess.Popen(serve_argv(host, port, 1)),
        "worker": subprocess.Popen(worker_argv(None, 2)),
        "beat": subprocess.Popen(beat_argv()),
    }
    click.echo(f"dbsync site on http://{host}:{port}{loaded.api_prefix}/status")
    stopping = False

    def stop(*_args: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    died: str | None = None
    while not stopping and died is None:
        died = next((role for role, p in procs.items() if p.poll() is not None), None)
        if died is None:
            time.sleep(0.5)
    if died is not None:
        others = [role for role in procs if role != died]
        click.echo(
            f"dbsync up: {died} exited with {_exit_text(procs[died].returncode)};"
            f" stopping {' and '.join(others)}",
            err=True,
        )
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    sys.exit(1 if died is not None else 0)
