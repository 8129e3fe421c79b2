"""Run the stand-in as a real process on a loopback port, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import eventually, free_port

ROOT = Path(__file__).resolve().parents[3]


class PhoenixKitProcess:
    """One stand-in site: its database, its server process, its command line.

    ``prefix`` is the prefix of its own routes (PhoenixKit's default
    ``/phoenix_kit``); ``remote_prefix`` the prefix it calls its peers under
    (its ``remote_url_prefix`` config; by default, its own prefix).
    """

    def __init__(
        self,
        workdir: Path,
        db_url: str,
        *,
        prefix: str = "/phoenix_kit",
        remote_prefix: str | None = None,
        enabled: bool = True,
        mode: str = "auto_accept",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.prefix = prefix
        self.home = workdir / "phoenixkit"
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        args = [
            "init",
            "--site-url",
            self.url,
            "--prefix",
            prefix,
            "--allow-internal-urls",
            "--enable" if enabled else "--disable",
            "--mode",
            mode,
        ]
        if remote_prefix is not None:
            args += ["--remote-prefix", remote_prefix]
        self.cli(*args)

    @property
    def api(self) -> str:
        return f"{self.url}{self.prefix}/sync/api"

    def start(self) -> None:
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.peers.phoenixkit",
                "--database-url",
                self.db_url,
                "serve",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        eventually(self._answers, timeout=60)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.api}/status", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def logs(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> Any:
        """Run a stand-in command; return its JSON output."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.peers.phoenixkit",
                "--database-url",
                self.db_url,
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        with open(self.home / "cli.log", "a") as log:
            log.write(
                f"$ {' '.join(args)}\n{result.stdout}{result.stderr}[exit {result.returncode}]\n"
            )
        if check and result.returncode != 0:
            raise AssertionError(f"stand-in {' '.join(args)} failed: {result.stderr}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def connections(self) -> list[dict[str, Any]]:
        """Its connections, read from its database (quicker than the command)."""
        return self.rows(
            "SELECT * FROM phoenix_kit_sync_connections ORDER BY inserted_at, uuid"
        )

    def rows(self, statement: str, **params: Any) -> list[dict[str, Any]]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                found = [dict(r) for r in result.mappings()]
        finally:
            engine.dispose()
        for row in found:
            row["uuid"] = str(row["uuid"])
        return found

    def only_connection(self) -> dict[str, Any] | None:
        rows = self.connections()
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    def sql(self, statement: str, **params: Any) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def close(self) -> None:
        self.stop()
