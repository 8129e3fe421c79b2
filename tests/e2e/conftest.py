"""Two real sites on loopback, each run as an operator runs it: the Procfile's
web, worker and beat lines in empty working directories, no SYNC_HOME, its own
PostgreSQL database and queues on Redis, driven through the `dbsync` CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.operator import empty_folder, operator_env, spawn_role
from tests.helpers import (
    DBSYNC,
    REDIS_URL,
    ScratchDatabases,
    database_name,
    eventually,
    free_port,
)


class SiteProcesses:
    """One dbsync site: its environment, its processes and a CLI to drive it."""

    def __init__(
        self, name: str, workdir: Path, db_url: str, redis_db: int, **env: str
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.db_name = database_name(db_url)
        # Queues are named after the site's database, so concurrent runs sharing
        # the Redis database never see each other's tasks.
        self.redis_url = env.get("SYNC_BROKER_URL", f"{REDIS_URL}/{redis_db}")
        self.queue_prefix = f"{self.db_name}."
        # The site's folder holds its logs and one empty working directory per
        # process start; nothing of the site's own lives there.
        self.home = workdir / name
        self.home.mkdir(parents=True, exist_ok=True)
        defaults = dict(
            SYNC_DATABASE_URL=self.db_url,
            SYNC_BROKER_URL=self.redis_url,
            SYNC_SITE_URL=self.url,
            SYNC_ALLOW_PRIVATE_URLS="true",
            SYNC_VERIFY_INTERVAL_SECONDS="3",
            SYNC_EXPIRE_INTERVAL_SECONDS="3",
            SYNC_OUTBOX_SWEEP_SECONDS="3",
            SYNC_RETRY_BASE_SECONDS="1",
            SYNC_RETRY_MAX_SECONDS="2",
            SYNC_HTTP_TIMEOUT_SECONDS="5",
            SYNC_LOG_LEVEL="DEBUG",
            SYNC_QUEUE_PREFIX=self.queue_prefix,
        )
        # ``env`` may override any of these (a broker or site URL of the test's).
        self.env = operator_env(self.home, **{**defaults, **env})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cli("db", "upgrade")

    # -- processes ---------------------------------------------------------------

    def start(self, web: bool = True, worker: bool = True, beat: bool = True) -> None:
        """Start roles with the Procfile's commands, as ``honcho start`` would."""
        for role, wanted in (("web", web), ("worker", worker), ("beat", beat)):
            if wanted:
                env = (
                    {**self.env, "PORT": str(self.port)} if role == "web" else self.env
                )
                self.procs[role] = spawn_role(
                    role, env, self.home / "run", self.home / f"{role}.log"
                )
        if web:
            eventually(self._answers, timeout=30)

    def _answers(self) -> bool:
        try:
            return (
                httpx.get(f"{self.url}/sync/api/status", timeout=1).status_code == 200
            )
        except httpx.HTTPError:
            return False

    def stop(self, *roles: str, sig: int = signal.SIGTERM) -> None:
        for role in roles or list(self.procs):
            proc = self.procs.pop(role, None)
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        out = []
        for path in sorted(self.home.glob("*.log")):
            out.append(f"--- {self.name}/{path.name} (tail) ---")
            out.extend(path.read_text(errors="replace").splitlines()[-60:])
        return "\n".join(out)

    def all_logs(self) -> str:
        """What the site's own processes logged (not this harness's CLI transcript)."""
        return "\n".join(
            p.read_text(errors="replace")
            for p in self.home.glob("*.log")
            if p.name != "cli.log"
        )

    # -- the operator's CLI ------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DBSYNC, *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            cwd=empty_folder(self.home / "run", "cli"),
        )
        with open(self.home / "cli.log", "a") as log:
            log.write(
                f"$ dbsync {' '.join(args)}\n{result.stdout}{result.stderr}"
                f"[exit {result.returncode}]\n"
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f"dbsync {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def connections(self) -> list[dict[str, Any]]:
        return self.cli_json("connections", "list")

    def only_connection(self) -> dict[str, Any] | None:
        rows = self.connections()
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run SQL on the site's database; return the rows, if any."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def close(self) -> None:
        """Stop the processes; the database goes with the factory that made it."""
        self.stop()


@pytest.fixture
def two_sites(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    scratch_db_factory: ScratchDatabases,
) -> Iterator[tuple[SiteProcesses, SiteProcesses]]:
    """A sender site and a receiver site, both running, module enabled on both."""
    overrides = getattr(request, "param", {}) or {}
    sender = SiteProcesses(
        "sender",
        tmp_path,
        scratch_db_factory.create("e2e_sender"),
        13,
        **overrides.get("sender", {}),
    )
    receiver = SiteProcesses(
        "receiver",
        tmp_path,
        scratch_db_factory.create("e2e_receiver"),
        14,
        **overrides.get("receiver", {}),
    )
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        yield sender, receiver
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(sender.logs())
            print(receiver.logs())
        sender.close()
        receiver.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def create(
    sender: SiteProcesses, receiver: SiteProcesses, *extra: str
) -> dict[str, Any]:
    # The tests make their tables as they go: they offer tables made later.
    data = sender.cli_json(
        "connections", "create", "--name", "to-receiver", "--url", receiver.url,
        "--offer-new-tables", *extra,
    )  # fmt: skip
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", data["token"])
    assert data["status"] == "pending"
    assert data["registration"] == "queued"
    return data


def field(site: SiteProcesses, key: str) -> Any:
    conn = site.only_connection()
    return conn[key] if conn else None


def pair(sender: SiteProcesses, receiver: SiteProcesses, *extra: str) -> dict[str, Any]:
    receiver.cli("settings", "set", "incoming_mode", "auto_accept")
    created = create(sender, receiver, *extra)
    eventually(lambda: field(sender, "status") == "active")
    eventually(lambda: field(receiver, "status") == "active")
    return created
