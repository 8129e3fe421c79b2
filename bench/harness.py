"""Real dbsync sites for the benchmark: databases, processes, the CLI, and RSS sampling.

The ideas are those of tests/e2e/conftest.py (two sites on loopback, each with
its own PostgreSQL state database and Redis database, driven by the `dbsync`
CLI), rewritten here so the benchmark does not depend on the test suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import redis

BIN = Path(sys.executable).parent
DBSYNC = str(BIN / "dbsync")
REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (a failed pull, a dead site)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(
    check: Callable[[], Any],
    timeout: float = 60,
    every: float = 0.3,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise BenchError(f"{what} not met within {timeout}s; last value: {last!r}")


# -- PostgreSQL -------------------------------------------------------------------


class Postgres:
    """The local cluster: create and drop the benchmark's databases, run SQL."""

    def __init__(self, base_url: str) -> None:
        # postgresql://user@host:port (no database): what psql and pg_dump take,
        # and what dbsync's settings normalise to psycopg2.
        self.base_url = base_url.rstrip("/")
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def connect(self, name: str = "postgres") -> Any:
        conn = psycopg2.connect(self.url(name))
        conn.autocommit = True
        return conn

    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        conn = self.connect(name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def create(self, name: str) -> str:
        self.query("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.query("postgres", f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            try:
                self.query("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg2.Error as ex:  # keep dropping the others
                print(f"could not drop {name}: {ex}", file=sys.stderr)
        self.created.clear()


# -- process trees and their memory -------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a process, or None when it is gone."""
    rest = _stat_fields(pid)
    return (int(rest[1]), int(rest[2])) if rest else None


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time used so far by the live processes of a group."""
    total = 0
    for pid in group_pids(pgid):
        rest = _stat_fields(pid)
        if rest:
            total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / CLK_TCK


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def groups(pgids: Iterable[int]) -> dict[int, list[int]]:
    """The live processes of some process groups, in one pass over /proc. A role is
    started in its own session, so its group is the role's whole tree: gunicorn
    master + workers, celery main + pool children."""
    wanted = {pgid: [] for pgid in pgids}  # type: dict[int, list[int]]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] in wanted:
                wanted[st[1]].append(int(entry.name))
    return wanted


def group_pids(pgid: int) -> list[int]:
    return groups([pgid])[pgid]


def _kb_field(path: str, key: bytes) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in KiB; Pss shares copy-on-write pages fairly
    between a pre-fork parent and its children, so a tree's Pss sum is what the
    tree really costs, while its RSS sum counts shared pages once per process."""
    return (
        _kb_field(f"/proc/{pid}/status", b"VmRSS:"),
        _kb_field(f"/proc/{pid}/smaps_rollup", b"Pss:"),
    )


@dataclass
class TreePeak:
    rss_sum_kb: int = 0
    pss_sum_kb: int = 0
    largest_rss_kb: int = 0
    processes: int = 0

    def update(self, rss_sum: int, pss_sum: int, largest: int, n: int) -> None:
        self.rss_sum_kb = max(self.rss_sum_kb, rss_sum)
        self.pss_sum_kb = max(self.pss_sum_kb, pss_sum)
        self.largest_rss_kb = max(self.largest_rss_kb, largest)
        self.processes = max(self.processes, n)

    def as_mb(self) -> dict[str, float | int]:
        return {
            "tree_rss_mb": round(self.rss_sum_kb / 1024, 1),
            "tree_pss_mb": round(self.pss_sum_kb / 1024, 1),
            "largest_process_rss_mb": round(self.largest_rss_kb / 1024, 1),
            "processes": self.processes,
        }


def snapshot(pgid: int, pids: list[int] | None = None) -> tuple[int, int, int, int]:
    rss_sum = pss_sum = largest = n = 0
    for pid in group_pids(pgid) if pids is None else pids:
        rss, pss = memory_kb(pid)
        if rss == 0:
            continue
        rss_sum += rss
        pss_sum += pss
        largest = max(largest, rss)
        n += 1
    return rss_sum, pss_sum, largest, n


class RssSampler:
    """A thread that samples the memory of some process trees every `interval` s
    and keeps each tree's peak (sum over the tree, and its largest process)."""

    def __init__(self, trees: dict[str, int], interval: float = 0.2) -> None:
        self.trees = trees
        self.interval = interval
        self.peaks = {name: TreePeak() for name in trees}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="rss-sampler", daemon=True
        )

    def _sample(self) -> None:
        members = groups(self.trees.values())
        for name, pgid in self.trees.items():
            self.peaks[name].update(*snapshot(pgid, members[pgid]))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._cpu0 = {name: cpu_seconds(pgid) for name, pgid in self.trees.items()}
        self._sys0 = system_cpu()
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu = {
            name: round(cpu_seconds(pgid) - self._cpu0[name], 2)
            for name, pgid in self.trees.items()
        }
        busy1, total1 = system_cpu()
        self.machine_busy = round(
            (busy1 - self._sys0[0]) / max(1, total1 - self._sys0[1]), 3
        )
        self.elapsed = time.perf_counter() - self._t0

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: peak.as_mb() for name, peak in self.peaks.items()}
        for name, seconds in getattr(self, "cpu", {}).items():
            out[name]["cpu_seconds"] = seconds
        out["machine_cpu_busy_fraction"] = getattr(self, "machine_busy", None)
        out["samples"] = self.samples
        out["interval_s"] = self.interval
        return out


# -- one dbsync site -------------------------------------------------------------


# register-connection limits out of the way of a benchmark that registers
# thousands of times from one address (README "Strangers at register-connection").
NO_REGISTER_LIMITS = {
    "SYNC_REGISTER_PER_ADDRESS": "1000000000",
    "SYNC_REGISTER_TOTAL": "1000000000",
    "SYNC_REGISTER_MAX_UNCONFIRMED": "1000000000",
}


@dataclass
class Site:
    """One dbsync site: its own state database and Redis database, its data
    database, its processes (started in their own sessions) and its CLI."""

    name: str
    pg: Postgres
    workdir: Path
    redis_url: str
    state_db: str
    data_db_url: str
    queue_prefix: str
    extra_env: dict[str, str] = field(default_factory=dict)
    web_workers: int = 2
    worker_concurrency: int = 2

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = self.workdir / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_url = self.pg.create(self.state_db)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
        self.env = {
            **inherited,
            "SYNC_DATABASE_URL": self.state_url,
            "SYNC_DATA_DATABASE_URL": self.data_db_url,
            "SYNC_BROKER_URL": self.redis_url,
            "SYNC_SITE_URL": self.url,
            "SYNC_ALLOW_PRIVATE_URLS": "true",
            "SYNC_HOME": str(self.home),
            "SYNC_QUEUE_PREFIX": self.queue_prefix,
            "SYNC_LOG_LEVEL": "INFO",
            # The control-plane probes register from one address many times.
            **NO_REGISTER_LIMITS,
            **self.extra_env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # processes

    def _spawn(self, role: str, *args: str) -> None:
        with open(self.home / f"{role}.log", "ab") as log:
            self.procs[role] = subprocess.Popen(
                [DBSYNC, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.home,
            )

    def start(self, web: bool = True, worker: bool = True, beat: bool = True) -> None:
        if web:
            self._spawn(
                "web",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.web_workers),
            )
        if worker:
            self._spawn(
                "worker", "worker", "--concurrency", str(self.worker_concurrency)
            )
        if beat:
            self._spawn("beat", "beat")

    def wait_ready(self, timeout: float = 60) -> None:
        if "web" in self.procs:
            eventually(self._answers, timeout=timeout, what=f"{self.name} web answers")
        if "worker" in self.procs:
            eventually(
                lambda: "ready" in self._log("worker"),
                timeout=timeout,
                what=f"{self.name} worker ready",
            )
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(
                    f"{self.name} {role} exited ({proc.returncode}):\n" + self.logs()
                )

    def _log(self, role: str) -> str:
        path = self.home / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _answers(self) -> bool:
        try:
            return (
                httpx.get(f"{self.url}/sync/api/status", timeout=1).status_code == 200
            )
        except httpx.HTTPError:
            return False

    def pgid(self, role: str) -> int:
        return self.procs[role].pid

    def stop(self, *roles: str) -> None:
        stop_processes(
            [self.procs.pop(r) for r in (roles or list(self.procs)) if r in self.procs]
        )

    def logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.home.glob("*.log")):
            out.append(f"--- {self.name}/{path.name} (tail) ---")
            out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    # the operator's CLI

    def cli(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DBSYNC, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        with open(self.home / "cli.log", "a") as log:
            log.write(
                f"$ dbsync {' '.join(args)}\n{result.stdout[-4000:]}"
                f"{result.stderr[-4000:]}[exit {result.returncode}]\n"
            )
        if check and result.returncode != 0:
            raise BenchError(
                f"{self.name}: dbsync {' '.join(args)} failed "
                f"({result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        return result

    def cli_json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.cli(*args, "--json", timeout=timeout).stdout)

    def connection_to(self, url: str) -> dict[str, Any] | None:
        for conn in self.cli_json("connections", "list"):
            if conn["site_url"].rstrip("/") == url.rstrip("/"):
                return conn
        return None


def pair(sender: Site, receiver: Site, *extra: str) -> tuple[str, str]:
    """Create a sender connection to `receiver` (in auto_accept mode) with the CLI
    and wait until both sides are active (read from their state databases, which
    is lighter than a CLI call every half second). Returns (receiver connection
    id, raw token)."""
    created = sender.cli_json(
        "connections",
        "create",
        "--name",
        f"bench-to-{receiver.name}",
        "--url",
        receiver.url,
        *extra,
    )

    def status(site: Site, direction: str, url: str) -> tuple[str, str] | None:
        rows = site.pg.query(
            site.state_db,
            (
                "SELECT id::text, status FROM dbsync_connections "
                f"WHERE direction = '{direction}' AND rtrim(site_url, '/') = '{url.rstrip('/')}'"
            ),
        )
        return rows[0] if rows else None

    def both_active() -> str | None:
        mine = status(sender, "sender", receiver.url)
        theirs = status(receiver, "receiver", sender.url)
        if mine and theirs and mine[1] == theirs[1] == "active":
            return theirs[0]
        return None

    rid = eventually(
        both_active,
        timeout=90,
        every=0.2,
        what=f"connection {sender.name} -> {receiver.name} active on both sides",
    )
    return rid, created["token"]


def clean_redis(url: str, tag: str) -> None:
    """Delete this run's keys (queues and bindings carry the run's queue prefix)."""
    try:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError as ex:
        print(f"could not clean redis {url}: {ex}", file=sys.stderr)


def stop_processes(procs: Iterable[subprocess.Popen[Any]], grace: float = 20) -> None:
    """SIGTERM every process group at once, then wait; SIGKILL what is left."""
    procs = list(procs)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        # Whatever of the group outlived its leader (pool children) goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop_all(sites: Iterable[Site]) -> None:
    procs = []
    for site in sites:
        procs.extend(site.procs.values())
        site.procs.clear()
    stop_processes(procs)
