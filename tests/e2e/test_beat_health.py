"""Beat that cannot silently vanish, and health for orchestrators, on real processes.

A site started as an operator starts it: PostgreSQL + Redis, each Procfile line
in an empty working directory, no SYNC_HOME. Beat must stay up,
its jobs must run every interval, /readyz must say so, and must say 503
naming beat once beat has been gone for three intervals.
"""

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

from tests.e2e.operator import operator_env, spawn_role
from tests.helpers import (
    DBSYNC,
    REDIS_URL,
    ScratchDatabases,
    database_name,
    eventually,
    free_port,
)

pytestmark = pytest.mark.e2e

INTERVAL = 2  # seconds, every beat job
CHECKS = ["state_database", "data_database", "broker", "migrations", "beat"]


class Site:
    """One site's environment and its role processes, each in an empty folder."""

    def __init__(
        self, workdir: Path, db_url: str | None, one_folder: bool = False
    ) -> None:
        """On PostgreSQL + Redis, or embedded (SQLite, serverless broker) without a URL.

        ``one_folder``: every process in ``workdir`` (an embedded site without
        SYNC_HOME keeps its files in the working folder, shared by all roles).
        """
        self.workdir = workdir
        self.one_folder = one_folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        env = operator_env(workdir, WEB_CONCURRENCY="1")
        if db_url is not None:
            env.update(
                SYNC_DATABASE_URL=db_url,
                SYNC_BROKER_URL=f"{REDIS_URL}/15",
                SYNC_QUEUE_PREFIX=f"{database_name(db_url)}.",
            )
        self.env = {
            **env,
            "SYNC_SITE_URL": self.url,
            "SYNC_VERIFY_INTERVAL_SECONDS": str(INTERVAL),
            "SYNC_EXPIRE_INTERVAL_SECONDS": str(INTERVAL),
            "SYNC_OUTBOX_SWEEP_SECONDS": str(INTERVAL),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def cwd(self, role: str) -> Path:
        if self.one_folder:
            return self.workdir
        folder = self.workdir / role
        folder.mkdir(exist_ok=True)
        return folder

    def spawn(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        """The Procfile's line for ``role``, or ``dbsync *args`` when given."""
        log = self.workdir / f"{role}.log"
        if args:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [DBSYNC, *args],
                    env=self.env,
                    cwd=self.cwd(role),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            env = {**self.env, "PORT": str(self.port)} if role == "web" else self.env
            proc = spawn_role(role, env, self.workdir / "run", log)
        self.procs[role] = proc
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DBSYNC, *args],
            env=self.env,
            cwd=self.cwd("cli"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, role: str) -> None:
        proc = self.procs.pop(role)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        resp = httpx.get(f"{self.url}/readyz", timeout=10)
        return resp.status_code, resp.json()

    def runs(self, job: str) -> int:
        from sqlalchemy import create_engine, text

        assert self.db_url is not None
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                found = conn.execute(
                    text("SELECT runs FROM dbsync_beat_heartbeats WHERE job = :job"),
                    {"job": job},
                ).scalar()
        finally:
            engine.dispose()
        return int(found or 0)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Site]:
    """A running site: `serve`, `worker` and `beat`, each in its own empty folder."""
    s = Site(tmp_path_factory.mktemp("site"), module_db_factory.create("beat"))
    assert s.cli("db", "upgrade").returncode == 0
    for role in ("web", "worker", "beat"):
        s.spawn(role)
    try:
        eventually(lambda: _answers(s.url), timeout=30)
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        for role in list(s.procs):
            s.stop(role)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_beat_stays_up_runs_verify_every_interval_and_site_is_ready(site: Site) -> None:
    # Three runs of verify at a 2 s interval: beat is running its schedule,
    # not one shot at start-up.
    eventually(lambda: site.runs("dbsync.verify_all") >= 3, timeout=60)
    assert site.procs["beat"].poll() is None, site.logs()
    assert site.runs("dbsync.expire_connections") >= 1
    assert site.runs("dbsync.sweep_notices") >= 1
    # Beat's working directory is still empty: its schedule lives on Redis.
    assert list((site.workdir / "run" / "beat-1").iterdir()) == []

    live = httpx.get(f"{site.url}/livez", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    status, body = site.readyz()
    assert status == 200, body
    assert body["status"] == "ready"
    assert list(body["checks"]) == CHECKS
    assert {c["state"] for c in body["checks"].values()} == {"ok"}
    assert (
        body["checks"]["migrations"]["database"]
        == (body["checks"]["migrations"]["expected"])
    )
    # Outside the API prefix only.
    assert httpx.get(f"{site.url}/sync/api/readyz", timeout=5).status_code == 404

    result = site.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ready"


def test_beat_stopped_for_three_intervals_makes_the_site_not_ready(site: Site) -> None:
    site.stop("beat")

    def not_ready() -> dict[str, Any] | None:
        status, body = site.readyz()
        return body if status == 503 else None

    body = eventually(not_ready, timeout=3 * INTERVAL + 20)
    assert body["status"] == "not_ready"
    assert body["failing"] == ["beat"]
    beat = body["checks"]["beat"]
    assert beat["state"] == "fail"
    assert "beat has missed 3 intervals" in beat["detail"]
    # The job that crossed its third interval first is named, with its age.
    assert re.search(
        rf"dbsync\.\w+ last ran \d+ s ago \(every {INTERVAL} s\)", beat["detail"]
    ), beat["detail"]
    assert {c for c, v in body["checks"].items() if v["state"] == "ok"} == set(
        CHECKS[:-1]
    )

    result = site.cli("status")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "not ready: beat"

    # Beat back: ready again without touching anything else.
    site.spawn("beat")
    eventually(lambda: site.readyz()[0] == 200, timeout=30)


def test_up_exits_non_zero_naming_the_child_that_died(tmp_path: Path) -> None:
    # Embedded and without SYNC_HOME: `up` and `status` share one working folder.
    s = Site(tmp_path, None, one_folder=True)
    up = s.spawn("up", "up", "--port", str(s.port))
    try:
        eventually(lambda: s.cli("status").returncode == 0, timeout=90)
        beat = eventually(lambda: _child(up.pid, " beat"), timeout=30)
        os.kill(beat, signal.SIGKILL)
        assert up.wait(timeout=60) == 1
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    log = (tmp_path / "up.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("dbsync up:")]
    assert lines == [
        "dbsync up: beat exited with code -9 (SIGKILL); stopping api and worker"
    ], log[-3000:]
    # The other children went with it.
    assert _child(up.pid, "") is None


def _child(parent: int, needle: str) -> int | None:
    """The pid of a child of ``parent`` whose command line contains ``needle``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and needle in cmdline:
            return int(entry.name)
    return None
