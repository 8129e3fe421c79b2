"""What the fault tests own and break: a PostgreSQL cluster, a Redis server and
a TCP proxy, each started on its own free loopback port in a temporary folder.

A fault test must be able to stop the very server a site depends on (not the
shared one every other test uses), so each of these runs as a child of the
test and goes with it.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.e2e.conftest import SiteProcesses
from tests.helpers import eventually, free_port

PG_BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])


# ---------------------------------------------------------------- tables

TABLE = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY, n integer, amount numeric(14,4), label text,
    flag boolean, born date, at timestamptz, ref uuid, doc jsonb
);
INSERT INTO {name}
SELECT g, g % 1000, (g * 1.25)::numeric(14,4), 'row ' || g || repeat('x', g % 40),
       g % 3 = 0, date '2000-01-01' + (g % 9000),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       md5(g::text)::uuid, jsonb_build_object('g', g, 'tags', jsonb_build_array(g % 7))
FROM generate_series(1, :n) g;
"""


def fill(site: SiteProcesses, name: str, rows: int) -> None:
    """Create table ``name`` on ``site`` with ``rows`` rows of every common kind."""
    site.sql(TABLE.format(name=name), n=rows)


# ---------------------------------------------------------------- PostgreSQL


def _as_cluster_owner(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as `postgres`.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class PgCluster:
    """A PostgreSQL cluster of the test's own: initdb'd into a temporary
    folder, trust auth, its own port, its unix socket in that folder."""

    def __init__(self, label: str) -> None:
        # Not under pytest's temporary folder: run as root, that one is
        # closed to the cluster's owner.
        self.root = Path(tempfile.mkdtemp(prefix=f"dbsync-{label}-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 100\n"
                # Nothing here must outlive the test; the OS never crashes
                # under it, so skipping the flushes loses nothing.
                "fsync = off\n"
                "full_page_writes = off\n"
            )
        self.start()

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            _as_cluster_owner(list(argv)),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"
        )

    def restart(self, down_seconds: float) -> None:
        """Stop (fast: every session cut), stay down a while, start again."""
        self.stop("fast")
        time.sleep(down_seconds)
        self.start()

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except AssertionError:
            pass  # already down
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A redis-server of the test's own, with no persistence: a restart loses
    every queued message, as a crashed broker without a disk would."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dbsync-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--logfile",
                str(self.root / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        eventually(self.answers, timeout=20, every=0.1)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def queued(self, queue: str) -> list[str]:
        """The tasks waiting in a Celery queue (on database 0), by name."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            messages = client.lrange(queue, 0, -1)
        finally:
            client.close()
        return sorted(json.loads(m)["headers"]["task"] for m in messages)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.proc = None

    def restart(self, down_seconds: float) -> None:
        """Stop (every queued and unacknowledged message gone), start empty."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- TCP proxy


class _Bucket:
    """Bytes a second shared by every connection of the proxy (None: unlimited)."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        with self._lock:
            rate = self.rate
            if rate is None:
                return
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


class TcpProxy:
    """A loopback TCP proxy in front of one upstream port.

    ``throttle(rate)`` limits what flows back from the upstream (the answers)
    to ``rate`` bytes a second, all connections together; ``cut_body(...)``
    arms a cut: in an answer whose headers hold ``marker`` (the first one, or
    the one after ``skip`` such answers), after ``after_bytes`` of its body,
    both sides of that connection are closed.
    """

    CHUNK = 16 * 1024

    def __init__(self, upstream_port: int | None = None) -> None:
        # Settable later: a site's port is known only once the site is made,
        # and its settings need the proxy's URL first.
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = _Bucket()
        self.cuts = 0  # answers cut so far
        self.answer_bytes = 0  # bytes passed back from the upstream
        self.connections = 0
        self._lock = threading.Lock()
        self._armed: tuple[bytes, int, int] | None = None
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._accepting = threading.Thread(
            target=self._accept, name="proxy-accept", daemon=True
        )
        self._accepting.start()

    # -- controls ----------------------------------------------------------------

    def throttle(self, bytes_per_second: float | None) -> None:
        self.bucket.rate = bytes_per_second

    def reroute(self, upstream_port: int) -> None:
        """Send new connections to ``upstream_port`` and close the open ones:
        a client's kept-alive connection would go on to the old upstream."""
        with self._lock:
            self.upstream_port = upstream_port
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._open.clear()

    def cut_body(self, marker: bytes, after_bytes: int, skip: int = 0) -> None:
        with self._lock:
            self._armed = (marker, after_bytes, skip)

    def armed(self) -> bool:
        with self._lock:
            return self._armed is not None

    # -- plumbing ----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket()
            # A small window, as on a real link: what the proxy holds back
            # waits at the upstream, not in this machine's kernel buffers.
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            try:
                upstream.settimeout(10)
                upstream.connect(("127.0.0.1", self.upstream_port or 0))
            except OSError:
                upstream.close()
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(None)
            with self._lock:
                self.connections += 1
                self._open.update((client, upstream))
            threading.Thread(
                target=self._pump, args=(client, upstream, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, True), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        head = b""  # answers since a cut was armed, until one is picked
        budget: int | None = None  # body bytes the picked answer has left
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                if answers and budget is None and self.armed():
                    head = (head + data)[-65536:]
                    while budget is None:
                        picked = self._pick(head)
                        if picked is None:
                            break
                        after, body_start = picked
                        if after is None:  # an answer skipped: look past it
                            head = head[body_start:]
                            continue
                        # The part of this chunk past the blank line is body.
                        budget = after + (len(data) - (len(head) - body_start))
                        head = b""
                if answers and budget is not None:
                    if len(data) >= budget:
                        self._cut(src, dst, data[:budget])
                        return
                    budget -= len(data)
                if answers:
                    self.bucket.take(len(data))
                    self.answer_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _pick(self, head: bytes) -> tuple[int | None, int] | None:
        """Where the body of the next marked answer in ``head`` starts, with
        the armed cut's byte budget (None for an answer to skip); None until
        ``head`` holds a whole header block with the marker."""
        with self._lock:
            if self._armed is None:
                return None
            marker, after, skip = self._armed
            at = head.find(marker)
            if at < 0:
                return None
            end = head.find(b"\r\n\r\n", at)
            if end < 0:
                return None
            if skip:
                self._armed = (marker, after, skip - 1)
                return None, end + 4
            self._armed = None
            return after, end + 4

    def _cut(self, src: socket.socket, dst: socket.socket, last: bytes) -> None:
        """Pass ``last`` (the answer up to the cut), then close both sides."""
        if last:
            self.bucket.take(len(last))
            dst.sendall(last)
        with self._lock:
            self.cuts += 1
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._accepting.join(timeout=5)
        with self._lock:
            for s in self._open:
                try:
                    s.close()
                except OSError:
                    pass
            self._open.clear()
