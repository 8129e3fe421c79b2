"""The README's run command: a whole site on embedded defaults, nothing else started."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.helpers import DBSYNC, eventually, free_port

pytestmark = pytest.mark.e2e

# The tables the README's walk-through makes on the sender (checked below to
# be the README's own text).
WALK_THROUGH_TABLES = (
    "CREATE TABLE products (id integer PRIMARY KEY, name text);"
    " CREATE TABLE orders (id integer PRIMARY KEY, product_id integer"
    " REFERENCES products (id), quantity integer);"
)


def test_the_walk_through_makes_these_tables() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert WALK_THROUGH_TABLES in readme


def embedded_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(
        SYNC_HOME=str(home),
        SYNC_SITE_URL=f"http://127.0.0.1:{port}",
        SYNC_ALLOW_PRIVATE_URLS="true",
        SYNC_OUTBOX_SWEEP_SECONDS="2",
        SYNC_VERIFY_INTERVAL_SECONDS="2",
    )
    return env


def test_two_embedded_sites_pair_with_sqlite_and_the_serverless_broker(
    tmp_path: Path,
) -> None:
    sites = []
    try:
        for name in ("sender", "receiver"):
            port = free_port()
            env = embedded_env(tmp_path / name, port)
            (tmp_path / name).mkdir()
            with open(tmp_path / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(
                    [DBSYNC, "up", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=tmp_path / name,
                )
            sites.append((proc, env, f"http://127.0.0.1:{port}"))

        def status(url: str) -> dict | None:
            try:
                return httpx.get(f"{url}/sync/api/status", timeout=1).json()
            except httpx.HTTPError:
                return None

        for _, _, url in sites:
            assert eventually(lambda url=url: status(url), timeout=60) == {
                "success": True,
                "enabled": False,
                "incoming_mode": "require_approval",
                "password_required": False,
                "accepting_connections": False,
                "protocol": 1,
            }
        (_, s_env, _), (_, r_env, r_url) = sites

        def cli(env: dict[str, str], *args: str) -> str:
            out = subprocess.run(
                [DBSYNC, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return out.stdout

        cli(r_env, "settings", "set", "enabled", "true")
        cli(r_env, "settings", "set", "incoming_mode", "auto_accept")
        cli(s_env, "settings", "set", "enabled", "true")
        # As the README's walk-through: the sender offers tables of its data
        # database (on embedded defaults, the SQLite file in SYNC_HOME); a
        # connection names tables that exist (rules are checked at creation).
        data_file = Path(s_env["SYNC_HOME"]) / "dbsync.sqlite3"
        with closing(sqlite3.connect(data_file)) as db:
            db.executescript(WALK_THROUGH_TABLES)
        cli(
            s_env,
            "connections",
            "create",
            "--name",
            "embedded",
            "--url",
            r_url,
            "--allowed-tables",
            "products,orders",
        )
        import json

        def sender_status() -> str:
            return json.loads(cli(s_env, "connections", "list", "--json"))[0]["status"]

        eventually(lambda: sender_status() == "active", timeout=60)
        receiver = json.loads(cli(r_env, "connections", "list", "--json"))
        assert [(c["name"], c["status"]) for c in receiver] == [("embedded", "active")]
    finally:
        for proc, _, _ in sites:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
