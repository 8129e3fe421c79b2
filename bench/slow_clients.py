"""Slow and idle clients against one dbsync site: does the control plane stay up?

Starts one real site (its web only, as `dbsync serve` starts it, or with extra
gunicorn options to compare serving models), with a table of --rows rows and
an active sender connection. Probes `GET /sync/api/status`,
`verify-connection` and `register-connection` (a new registration each time)
back to back from one client, before and during an attack:

- --half-open sockets that send `POST /sync/api/register-connection HTTP/1.1`
  and a `Host` header, then nothing;
- --streams authenticated pull-data requests for a COPY text page of
  100,000 rows whose reader reads --read-rate bytes a second (0: never).

Prints the probes' latency per phase (p50/p95/max, timeouts) and, for read
streams, when the server cut them. Not part of the test suite.

    .venv/bin/python -m bench.slow_clients                      # as dbsync serve runs
    .venv/bin/python -m bench.slow_clients --gunicorn "--worker-class gthread --threads 32"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    REPO,
    Postgres,
    Site,
    clean_redis,
    eventually,
    free_port,
    stop_processes,
)
from bench.latency import percentile

TABLE_SQL = """
CREATE TABLE big (
    id bigint PRIMARY KEY, n integer, label text, at timestamptz, doc jsonb
);
INSERT INTO big
SELECT g, g % 1000, 'row ' || g || repeat('x', g % 40),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       jsonb_build_object('g', g, 'tags', jsonb_build_array(g % 7))
FROM generate_series(1, {rows}) g;
"""


def _say(message: str) -> None:
    print(f"[slow_clients] {message}", file=sys.stderr, flush=True)


def half_open(host: str, port: int, path: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode())
    return s


class SlowStream:
    """A pull-data request whose reader takes `rate` bytes a second (0: none)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, rate: int):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.host, self.port, self.request = host, port, head + body
        self.sock.sendall(self.request)
        if rate < 0:
            self.sock.settimeout(30)
        self.rate = rate
        self.started = time.monotonic()
        self.received = 0
        self.status_line = b""
        self.ended: float | None = None
        self.end_reason = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        if not self.rate:
            self._stop.wait()
            return
        if self.rate < 0:
            self._fast()
            return
        self.sock.settimeout(1)
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                data = self.sock.recv(self.rate)
            except TimeoutError:
                continue
            except OSError as ex:
                self._end(f"error {ex.__class__.__name__}")
                return
            if not data:
                self._end("eof")
                return
            if not self.status_line:
                self.status_line = data.split(b"\r\n", 1)[0]
            self.received += len(data)
            self._stop.wait(max(0.0, 1 - (time.monotonic() - t0)))

    def _fast(self) -> None:
        """Read whole answers as fast as possible, one after another (a normal pull)."""
        self.pages = 0
        while not self._stop.is_set():
            try:
                while True:
                    data = self.sock.recv(1 << 20)
                    if not data:
                        break
                    if not self.status_line:
                        self.status_line = data.split(b"\r\n", 1)[0]
                    self.received += len(data)
                    if data.endswith(b"\r\n0\r\n\r\n"):
                        break
                self.pages += 1
                self.sock.close()
                self.sock = socket.create_connection((self.host, self.port), timeout=30)
                self.sock.sendall(self.request)
            except OSError as ex:
                if not self._stop.is_set():
                    self._end(f"error {ex.__class__.__name__}")
                return

    def _end(self, reason: str) -> None:
        self.ended = time.monotonic()
        self.end_reason = reason

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class Prober:
    """One client asking the three control endpoints in turn, all the time."""

    def __init__(self, api: str, verify_body: dict[str, Any], dead_port: int):
        self.api = api
        self.verify_body = verify_body
        self.dead_port = dead_port
        self.samples: list[tuple[float, str, float | None, int]] = []
        self._stop = threading.Event()
        self._n = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _call(self, http: httpx.Client, name: str) -> tuple[float | None, int]:
        t0 = time.monotonic()
        try:
            if name == "status":
                r = http.get(f"{self.api}/status")
            elif name == "verify":
                r = http.post(f"{self.api}/verify-connection", json=self.verify_body)
            else:
                self._n += 1
                r = http.post(
                    f"{self.api}/register-connection",
                    json={
                        "sender_url": f"http://127.0.0.1:{self.dead_port}/p/{self._n}",
                        "connection_name": f"probe-{self._n}",
                        "auth_token": secrets.token_urlsafe(32),
                    },
                )
            return time.monotonic() - t0, r.status_code
        except httpx.HTTPError:
            return None, 0

    def _run(self) -> None:
        while not self._stop.is_set():
            # A new client each round: a probe never rides a kept-alive connection
            # a busy worker thread already holds.
            with httpx.Client(timeout=15) as http:
                for name in ("status", "verify", "register"):
                    at = time.monotonic()
                    seconds, status = self._call(http, name)
                    self.samples.append((at, name, seconds, status))
            self._stop.wait(0.1)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=20)


def summarise(samples: list[tuple[float, str, float | None, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("status", "verify", "register"):
        mine = [s for s in samples if s[1] == name]
        ok = sorted(s[2] * 1000 for s in mine if s[2] is not None)
        out[name] = {
            "requests": len(mine),
            "timeouts_or_errors": sum(1 for s in mine if s[2] is None),
            "statuses": sorted({s[3] for s in mine}),
            "p50_ms": round(percentile(ok, 50), 1) if ok else None,
            "p95_ms": round(percentile(ok, 95), 1) if ok else None,
            "max_ms": round(ok[-1], 1) if ok else None,
        }
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.slow_clients")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--half-open", type=int, default=6)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument(
        "--connections", type=int, default=3, help="sender connections the streams use"
    )
    p.add_argument(
        "--read-rate",
        type=int,
        default=0,
        help="bytes/s (0: never; -1: as fast as possible, page after page)",
    )
    p.add_argument("--before", type=float, default=5, help="seconds probed before")
    p.add_argument("--during", type=float, default=30, help="seconds of attack")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--gunicorn", default="", help="extra gunicorn options after dbsync's own"
    )
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the site")
    p.add_argument("--label", default="")
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"
        ),
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from cli.commands.run import serve_argv

    a = parse(argv)
    tag = f"{os.getpid()}_{secrets.token_hex(2)}"
    pg = Postgres(a.pg_url)
    workdir = Path(tempfile.mkdtemp(prefix="dbsync-slow-"))
    data_db = f"dbsync_slow_{tag}_data"
    pg.create(data_db)
    pg.query(data_db, TABLE_SQL.format(rows=a.rows))
    extra_env = dict(e.split("=", 1) for e in a.env)
    site = Site(
        name="site",
        pg=pg,
        workdir=workdir,
        redis_url=a.redis_url,
        state_db=f"dbsync_slow_{tag}_state",
        data_db_url=pg.url(data_db),
        queue_prefix=f"slow-{tag}-",
        extra_env=extra_env,
    )
    web: subprocess.Popen[bytes] | None = None
    streams: list[SlowStream] = []
    idle: list[socket.socket] = []
    try:
        site.cli("db", "upgrade")
        site.cli("settings", "set", "enabled", "true")
        site.cli("settings", "set", "incoming_mode", "auto_accept")
        dead_port = free_port()
        # The streams use --connections sender connections in turn (a
        # connection serves at most SYNC_PULL_STREAMS_PER_CONNECTION at once).
        # No worker runs: a registration is never sent; each connection is
        # made active directly, as the receiver's acceptance would.
        tokens = []
        for i in range(a.connections):
            created = site.cli_json(
                "connections",
                "create",
                "--name",
                f"slow-{i}",
                "--url",
                # A site per connection: a path would only be a peer's prefix.
                f"http://127.0.0.1:{free_port()}",
                "--rate-limit",
                "100000",
            )
            pg.query(
                site.state_db,
                f"UPDATE dbsync_connections SET status = 'active' "
                f"WHERE id = '{created['id']}'",
            )
            tokens.append(created["token"])
        argv = serve_argv("127.0.0.1", site.port, a.workers) + shlex.split(a.gunicorn)
        with open(site.home / "web.log", "ab") as log:
            web = subprocess.Popen(
                argv,
                env=site.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        api = f"{site.url}/sync/api"

        def answers() -> bool:
            if web is not None and web.poll() is not None:
                sys.exit(site.logs())
            try:
                return httpx.get(f"{api}/status", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(answers, timeout=30, what="web answers")
        verify_token = secrets.token_urlsafe(32)
        verify_url = f"http://127.0.0.1:{dead_port}/verify"
        reg = httpx.post(
            f"{api}/register-connection",
            json={
                "sender_url": verify_url,
                "connection_name": "verify",
                "auth_token": verify_token,
            },
            timeout=10,
        )
        assert reg.status_code == 200, reg.text
        verify_body = {
            "sender_url": verify_url,
            "auth_token_hash": hashlib.sha256(verify_token.encode()).hexdigest(),
        }
        pull_bodies = [
            json.dumps(
                {
                    "auth_token_hash": hashlib.sha256(token.encode()).hexdigest(),
                    "table_name": "big",
                    "format": "pg_copy_text",
                    "limit": 100_000,
                }
            ).encode()
            for token in tokens
        ]
        prober = Prober(api, verify_body, dead_port)
        prober.start()
        time.sleep(a.before)
        attack = time.monotonic()
        _say(f"attack: {a.half_open} half-open, {a.streams} streams")
        for _ in range(a.half_open):
            idle.append(
                half_open("127.0.0.1", site.port, "/sync/api/register-connection")
            )
        for i in range(a.streams):
            streams.append(
                SlowStream(
                    "127.0.0.1",
                    site.port,
                    "/sync/api/pull-data",
                    pull_bodies[i % len(pull_bodies)],
                    a.read_rate,
                )
            )
        time.sleep(a.during)
        prober.stop()
        before = [s for s in prober.samples if s[0] < attack]
        during = [s for s in prober.samples if s[0] >= attack]
        result = {
            "label": a.label,
            "argv": argv[2:],
            "env": extra_env,
            "rows": a.rows,
            "half_open": a.half_open,
            "streams": a.streams,
            "read_rate": a.read_rate,
            "before": summarise(before),
            "during": summarise(during),
            "streams_detail": [
                {
                    "status_line": s.status_line.decode(errors="replace"),
                    "received_bytes": s.received,
                    "cut_after_s": round(s.ended - s.started, 1) if s.ended else None,
                    "end": s.end_reason or "open at the end",
                    "pages": getattr(s, "pages", None),
                }
                for s in streams
            ],
        }
        print(json.dumps(result, indent=1))
        if a.out:
            a.out.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    finally:
        for s in streams:
            s.close()
        for sock in idle:
            sock.close()
        if web is not None:
            stop_processes([web])
        pg.drop_all()
        clean_redis(a.redis_url, tag)


if __name__ == "__main__":
    sys.exit(main())
