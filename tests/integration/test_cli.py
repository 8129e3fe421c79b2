"""The operator CLI on embedded defaults: exact output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import DBSYNC


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(
        SYNC_HOME=str(tmp_path),
        SYNC_SITE_URL="http://127.0.0.1:18111",
        SYNC_ALLOW_PRIVATE_URLS="true",
    )

    def call(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DBSYNC, *args],
            env=env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            cwd=tmp_path,
        )

    return call


def test_errors_are_one_line_and_exit_1(run) -> None:  # type: ignore[no-untyped-def]
    missing_db = run("connections", "list")
    assert missing_db.returncode == 1
    assert missing_db.stderr.strip().splitlines() == [
        "Error: database: no such table: dbsync_connections (run `dbsync db upgrade` first)"
    ]
    assert run("db", "upgrade").stdout.strip().endswith("database is up to date")
    for args, message in [
        (("connections", "show", "nope"), "Error: No connection nope"),
        (
            ("connections", "approve", "00000000-0000-0000-0000-000000000000"),
            "Error: No connection 00000000-0000-0000-0000-000000000000",
        ),
        (
            ("settings", "set", "incoming_mode", "open_door"),
            "Error: incoming_mode must be one of auto_accept, require_approval, "
            "require_password, deny_all",
        ),
        (
            ("connections", "create", "--name", "x", "--url", "ftp://127.0.0.1"),
            "Error: Invalid URL: only http and https URLs are allowed",
        ),
        (
            ("connections", "create", "--name", "x", "--url", "http://127.0.0.1:18111"),
            "Error: Invalid URL: a site cannot connect to itself",
        ),
        (
            (
                "connections",
                "create",
                "--name",
                "x",
                "--url",
                "http://127.0.0.1:9999",
                "--ip-allowlist",
                "10.0.0.0/33",
            ),
            "Error: Invalid CIDR: 10.0.0.0/33",
        ),
        (("transfers", "show", "nope"), "Error: No transfer nope"),
    ]:
        result = run(*args)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (
            1,
            message,
            "",
        )


def test_settings_and_a_created_connection(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("db", "upgrade")
    # Table rules name offered tables (they are checked at creation).
    with closing(sqlite3.connect(tmp_path / "dbsync.sqlite3")) as db:
        db.executescript(
            "CREATE TABLE a (id integer PRIMARY KEY); CREATE TABLE b (id integer PRIMARY KEY);"
        )
    assert json.loads(run("settings", "show", "--json").stdout) == {
        "enabled": False,
        "incoming_mode": "require_approval",
        "incoming_password_set": False,
        "site_url": "http://127.0.0.1:18111",
    }
    assert run("settings", "set", "incoming_password", "-", stdin="pw\n").stdout == (
        "incoming_password: set\n"
    )
    assert json.loads(run("settings", "show", "--json").stdout)["incoming_password_set"]
    created = json.loads(
        run(
            "connections",
            "create",
            "--name",
            "peer",
            "--url",
            "http://127.0.0.1:9999/",
            "--allowed-tables",
            "a,b",
            "--max-downloads",
            "3",
            "--allowed-hours",
            "22-4",
            "--ip-allowlist",
            "10.0.0.0/8",
            "--expires-at",
            "2030-01-01T00:00:00",
            "--json",
        ).stdout
    )
    assert len(created["token"]) == 43
    shown = json.loads(run("connections", "show", created["id"], "--json").stdout)
    assert "token" not in shown
    assert {
        k: shown[k]
        for k in (
            "name",
            "direction",
            "site_url",
            "status",
            "registration",
            "allowed_tables",
            "max_downloads",
            "allowed_hours",
            "ip_allowlist",
            "expires_at",
        )
    } == {
        "name": "peer",
        "direction": "sender",
        "site_url": "http://127.0.0.1:9999",
        "status": "pending",
        "registration": "queued",
        "allowed_tables": ["a", "b"],
        "max_downloads": 3,
        "allowed_hours": "22-4",
        "ip_allowlist": ["10.0.0.0/8"],
        "expires_at": "2030-01-01T00:00:00+00:00",
    }
    again = run(
        "connections", "create", "--name", "peer2", "--url", "http://127.0.0.1:9999"
    )
    assert again.stderr.strip() == (
        "Error: A sender connection to http://127.0.0.1:9999 already exists"
    )
    revoked = run("connections", "revoke", "--all", "--reason", "done")
    assert revoked.stdout == "revoke: 1 connection(s); peers are notified\n"
    audit = json.loads(run("audit", "--json").stdout)
    assert [(e["action"], e["reason"]) for e in audit] == [
        ("connection.revoked", "done"),
        ("connection.created", None),
    ]
