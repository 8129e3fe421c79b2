"""dbsync load benchmark: one sender, many receivers pulling at once, control calls.

One sender site serves receivers that all pull a table at the same moment,
while control calls keep arriving at a fixed rate.

    .venv/bin/python -m bench.load [--receivers 8] [--rows 200000] [--rate 50]
                                   [--baseline 10] [--quick] [--out FILE]

The scenario of issue 9 ("Load held"): every site runs as an operator runs it
(the Procfile's web, worker and beat lines, each in an empty working directory,
no SYNC_HOME, PostgreSQL + Redis; started with tests/e2e/operator.py, the same
code the e2e sites use); every connection is created with no options. The
sender's data database holds a `--rows` table (bench/dataset.py); each of the
`--receivers` receivers has its own data database with the same empty table.

1. baseline: `--baseline` seconds of control calls alone;
2. the run: `dbsync pull <connection> bench_rows` is started on every
   receiver at once (each command in its own session at a lower CPU weight,
   as on the real topology it runs on the receiver's machine), and control
   calls go on at `--rate` a second until the last pull ends. The run has
   two phases: `starting` (the pull commands are running) and `pulls` (from
   their return to the last pull's end); the figures of the whole run are the
   headline. Control calls are open-loop (each is sent at its scheduled time
   whatever the others are doing, on a new TCP connection, as a probe would)
   and their latency is counted from that scheduled time, so a saturated
   sender cannot hide its queue by slowing the client down (the client's own
   delay is reported as `send_lag`). The mix is mostly `GET
   /sync/api/status`, plus `verify-connection` and `list-tables` with the
   receivers' own connections (`--mix`).

It reports: every pull exact (transfer counts, and row count, an order-free
digest and an md5 of all rows in key order all equal to the sender's), the
number of 5xx answers (from the control clients and from the sender's access
log, pull-data included), p50/p95/p99/max of `status` latency during the run,
total rows/s of all pulls together, wall time, CPU and peak memory of the
sender's process trees, and, to tell what saturates (bench/probes.py): how
long each of the sender's gunicorn workers spent in requests and in
pull-data (its access log, with the request time and worker pid added
through GUNICORN_CMD_ARGS), its CPU time and its time runnable but waiting
for a CPU (/proc/PID/task/*/schedstat), the system call each thread was
blocked in, sampled 10 times a second (/proc/PID/task/*/syscall: e.g. sendto
on a receiver's connection while streaming a page, poll while waiting for
PostgreSQL, select/epoll while idle), the depth of the sender's accept queue,
how much of each `status` latency was spent before a worker took the
request, where the machine's CPU went (this run's processes, the PostgreSQL
backends of its databases, everyone else), and the peak of PostgreSQL
connections.

Two diagnostics change the sender only, to tell a CPU shortage from a
serving-model limit: `--sender-nice -10` (root) gives the sender's sessions
and its PostgreSQL backends a larger CPU weight, as if it had a machine of
its own; `--sender-gunicorn-args '--worker-class gthread --threads 8'` tries
another gunicorn worker model without changing the code.

Databases are named dbsync_bench_load_* and dropped at the end; Celery
queues and redbeat keys carry a per-run prefix and are deleted from Redis.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: bench/load.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2

from bench import dataset
from bench.harness import (
    REPO,
    BenchError,
    Postgres,
    RssSampler,
    Site,
    clean_redis,
    free_port,
    pair,
    stop_all,
)
from bench.latency import percentile
from bench.probes import ACCESS_FORMAT, CpuAccount, WebProbe, r1
from shared.control import signing

ISSUE_DEFAULTS = {"receivers": 8, "rows": 200_000, "rate": 50.0, "baseline": 10.0}
QUICK = {"receivers": 2, "rows": 20_000, "rate": 10.0, "baseline": 2.0}
DEFAULT_MIX = "status=80,verify=15,list=5"
KINDS = ("status", "verify", "list")
STATUS_P95_LIMIT_MS = 500.0


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def uptime_line() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {loadavg()}"


# -- sites run as an operator runs them --------------------------------------------


@dataclass
class OperatorSite(Site):
    """A bench Site whose roles are the Procfile's lines, each started in a fresh
    empty folder with no SYNC_HOME (tests/e2e/operator.py), on dbsync's defaults:
    only the settings an operator must give are set."""

    web_concurrency: int | None = None
    access_log_format: bool = False
    gunicorn_args: str = ""

    def __post_init__(self) -> None:
        from tests.e2e.operator import operator_env

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = self.workdir / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_url = self.pg.create(self.state_db)
        self.env = operator_env(
            self.home,
            SYNC_DATABASE_URL=self.state_url,
            SYNC_DATA_DATABASE_URL=self.data_db_url,
            SYNC_BROKER_URL=self.redis_url,
            SYNC_SITE_URL=self.url,
            SYNC_ALLOW_PRIVATE_URLS="true",
            SYNC_QUEUE_PREFIX=self.queue_prefix,
            **self.extra_env,
        )
        self.procs = {}

    def start(self, web: bool = True, worker: bool = True, beat: bool = True) -> None:
        from tests.e2e.operator import spawn_role

        for role, wanted in (("web", web), ("worker", worker), ("beat", beat)):
            if not wanted:
                continue
            env = dict(self.env)
            if role == "web":
                env["PORT"] = str(self.port)
                if self.web_concurrency:
                    env["WEB_CONCURRENCY"] = str(self.web_concurrency)
                extra = [self.gunicorn_args] if self.gunicorn_args else []
                if self.access_log_format:
                    extra.append(f"--access-logformat '{ACCESS_FORMAT}'")
                if extra:
                    env["GUNICORN_CMD_ARGS"] = " ".join(extra)
            self.procs[role] = spawn_role(
                role, env, self.home / "run", self.home / f"{role}.log"
            )


# -- control calls -------------------------------------------------------------------


@dataclass
class Call:
    n: int
    kind: str
    phase: str
    due: float  # perf_counter when it was due to be sent
    lag: float = 0.0  # seconds between due and actually sent
    latency: float = 0.0  # seconds from due to the full answer
    status: int = 0  # 0: no answer (error)
    error: str | None = None


def parse_mix(text: str) -> dict[str, int]:
    mix: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown call kind {name!r} (known: {', '.join(KINDS)})")
        mix[name] = int(weight)
        if mix[name] < 0:
            raise ValueError(f"weight of {name} must be >= 0")
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix needs a positive weight")
    return mix


class ControlLoad:
    """Open-loop control calls against one site at a fixed rate.

    A scheduler thread hands call n to a thread pool at t0 + n / rate; each
    call opens its own connection. Latency counts from the scheduled time, so
    if every pool thread is stuck the wait shows in the figures (and in `lag`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        rate: float,
        mix: dict[str, int],
        peers: list[tuple[str, str, str]],  # (receiver url, token hash, signing key)
        seed: int = 9,
        threads: int = 1024,
        timeout: float = 60.0,
    ) -> None:
        self.host, self.port, self.rate, self.timeout = host, port, rate, timeout
        self.peers = peers
        kinds = [k for k in KINDS if mix.get(k)]
        if not peers:
            kinds = ["status"]
        self._kinds = kinds
        self._weights = [mix[k] for k in kinds]
        self._random = random.Random(seed)
        self.calls: list[Call] = []
        self.phase = "baseline"
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="control"
        )
        self._thread = threading.Thread(target=self._schedule, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _schedule(self) -> None:
        t0 = time.perf_counter()
        n = 0
        while not self._stop.is_set():
            due = t0 + n / self.rate
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                break
            kind = self._random.choices(self._kinds, self._weights)[0]
            call = Call(n=n, kind=kind, phase=self.phase, due=due)
            self.calls.append(call)
            self._pool.submit(self._send, call)
            n += 1

    def _request(self, call: Call) -> tuple[str, str, bytes | None]:
        if call.kind == "status":
            # The call's number in the query string ties it to its access-log line.
            return "GET", f"/sync/api/status?n={call.n}", None
        url, token_hash, key = self.peers[call.n % len(self.peers)]
        if call.kind == "verify":
            body = {"sender_url": url, "auth_token_hash": token_hash}
            return "POST", f"/sync/api/verify-connection?n={call.n}", _json(body)
        return (
            "POST",
            f"/sync/api/list-tables?n={call.n}",
            _json({"auth_token_hash": token_hash}),
        )

    def _headers(self, call: Call, body: bytes | None) -> dict[str, str]:
        if body is None:
            return {}
        headers = {"Content-Type": "application/json"}
        if call.kind == "verify":
            # A dbsync receiver signs its control calls; the sender refuses
            # an unsigned one once the pair signs (shared/control/signing.py).
            key = self.peers[call.n % len(self.peers)][2]
            headers.update(signing.sign(key, "verify-connection", body))
        return headers

    def _send(self, call: Call) -> None:
        method, path, body = self._request(call)
        call.lag = time.perf_counter() - call.due
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=self._headers(call, body))
            resp = conn.getresponse()
            resp.read()
            call.status = resp.status
        except (OSError, http.client.HTTPException) as ex:
            call.error = f"{type(ex).__name__}: {ex}"[:200]
        finally:
            conn.close()
            call.latency = time.perf_counter() - call.due


def _background() -> None:
    """In a new session's child: lower the session's CPU weight (autogroup nice
    10; with autogroups, a session's nice weighs it against other sessions)."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("10")
    except OSError:
        os.nice(10)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def latency_summary(calls: list[Call]) -> dict[str, Any]:
    ms = sorted(c.latency * 1000 for c in calls)
    lag = sorted(c.lag * 1000 for c in calls)
    sent = sorted((c.latency - c.lag) * 1000 for c in calls)
    statuses = Counter(str(c.status) for c in calls)
    return {
        "calls": len(ms),
        "statuses": dict(sorted(statuses.items())),
        "errors": sum(1 for c in calls if c.status == 0),
        "p50_ms": r1(percentile(ms, 50)),
        "p95_ms": r1(percentile(ms, 95)),
        "p99_ms": r1(percentile(ms, 99)),
        "max_ms": r1(ms[-1]) if ms else None,
        "mean_ms": r1(sum(ms) / len(ms)) if ms else None,
        # the client's own delay: due -> sent (a starved or saturated client)
        "send_lag_p99_ms": r1(percentile(lag, 99)),
        "from_send_p95_ms": r1(percentile(sent, 95)),
    }


# -- the benchmark -------------------------------------------------------------------


@dataclass
class Receiver:
    site: OperatorSite
    data_db: str
    rid: str = ""
    token_hash: str = ""
    signing_key: str = ""
    transfer_id: str = ""


ENDED = ("completed", "failed", "cancelled")
PULL_COLUMNS = (
    "status",
    "records_expected",
    "records_transferred",
    "records_created",
    "records_updated",
    "records_skipped",
    "records_failed",
    "bytes_transferred",
    "attempts",
    "error_message",
    "created_at",
    "started_at",
    "completed_at",
)


class LoadBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
        self.pg = Postgres(args.pg_url)
        self.workdir = Path(tempfile.mkdtemp(prefix="dbsync-load-"))
        self.redis_url = f"{args.redis_url.rstrip('/')}/{args.redis_db}"
        self.prefix = f"dbsync_bench_load_{self.tag}"
        self.sites: list[OperatorSite] = []
        self.receivers: list[Receiver] = []
        self.failed = False
        self.pg_peak = (0, 0)  # client connections: this run's, everyone's
        self.poll_failures = 0

    # databases and sites

    def make_data(self) -> None:
        rows = self.args.rows
        self.source_db = f"{self.prefix}_sender_data"
        self.pg.create(self.source_db)
        self.pg.query(self.source_db, dataset.DDL)
        for start in range(1, rows + 1, 250_000):
            self.pg.query(
                self.source_db, dataset.fill_sql(start, min(rows, start + 249_999))
            )
        self.pg.query(self.source_db, f"VACUUM (FREEZE, ANALYZE) {dataset.TABLE}")
        self.source_digest = self.digest(self.source_db)
        for i in range(1, self.args.receivers + 1):
            # The receivers' tables exist, empty, with the sender's exact types,
            # so the rows' text forms compare.
            name = f"{self.prefix}_r{i}_data"
            self.pg.create(name)
            self.pg.query(name, dataset.DDL)

    def digest(self, db: str) -> dict[str, Any]:
        """Row count, an order-free digest of every row, and an md5 of every row
        in key order."""
        count, hashsum = self.pg.query(db, dataset.DIGEST)[0]
        md5 = self.pg.query(
            db,
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.id), '')) "
            f"FROM {dataset.TABLE} t",
        )[0][0]
        return {"count": count, "digest": hashsum, "md5": md5}

    def site(self, name: str, data_db: str, **kw: Any) -> OperatorSite:
        site = OperatorSite(
            name=name,
            pg=self.pg,
            workdir=self.workdir,
            redis_url=self.redis_url,
            state_db=f"{self.prefix}_{name}_state",
            data_db_url=self.pg.url(data_db),
            queue_prefix=f"bench-{self.tag}-{name}-",
            **kw,
        )
        self.sites.append(site)
        return site

    def make_sites(self) -> None:
        a = self.args
        self.sender = self.site(
            "sender",
            self.source_db,
            web_concurrency=a.web_concurrency,
            access_log_format=True,
            gunicorn_args=a.sender_gunicorn_args or "",
        )
        for i in range(1, a.receivers + 1):
            data_db = f"{self.prefix}_r{i}_data"
            self.receivers.append(Receiver(self.site(f"r{i}", data_db), data_db))

        def prepare(site: OperatorSite) -> None:
            site.cli("db", "upgrade")
            site.cli("settings", "set", "enabled", "true")
            if site is not self.sender:
                site.cli("settings", "set", "incoming_mode", "auto_accept")
            site.start()
            site.wait_ready(timeout=180)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(prepare, self.sites))

        def connect(r: Receiver) -> None:
            # No options: the connection a new operator creates.
            r.rid, token = pair(self.sender, r.site)
            r.token_hash = hashlib.sha256(token.encode()).hexdigest()
            r.signing_key = signing.derive_key(token)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(connect, self.receivers))

    def classify(self, pid: int, pgid: int, cmd: str) -> str | None:
        """The CPU account's category of a process: None when it is not ours,
        "" for this process and the pull commands (counted through getrusage)."""
        if pgid in self.roles:
            return self.roles[pgid]
        if pid == os.getpid() or (
            " pull " in cmd and any(r.rid in cmd for r in self.receivers)
        ):
            return ""  # counted through getrusage
        if cmd.startswith("postgres:") and self.prefix in cmd:
            if f"{self.prefix}_sender_" in cmd:
                return "postgres backends: sender's databases"
            return "postgres backends: receivers' databases"
        if "redis-server" in cmd:
            return "redis-server (shared with others)"
        return None

    def prioritise_sender(self) -> None:
        """--sender-nice: the autogroup nice value of the sender's sessions and
        of the PostgreSQL backends serving its databases (each its own session)."""
        nice = self.args.sender_nice
        if nice is None:
            return
        pids = [self.sender.pgid(role) for role in self.sender.procs]
        mark = f"{self.prefix}_sender_".encode()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if cmd.startswith(b"postgres:") and mark in cmd:
                    pids.append(int(entry.name))
        for pid in pids:
            try:
                with open(f"/proc/{pid}/autogroup", "w") as f:
                    f.write(str(nice))
            except OSError as ex:
                raise BenchError(f"--sender-nice: pid {pid}: {ex}") from ex

    def keep_sender_prioritised(self, stop: threading.Event) -> None:
        """Apply --sender-nice every second: backends come and go."""
        while not stop.wait(1.0):
            try:
                self.prioritise_sender()
            except BenchError:
                pass  # a backend that ended between the scan and the write

    # the run

    def start_pulls(self) -> None:
        """`dbsync pull <connection> <table>` on every receiver at once."""
        procs = [
            (
                r,
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "dbsync"),
                        "pull",
                        r.rid,
                        dataset.TABLE,
                        "--json",
                    ],
                    env=r.site.env,
                    cwd=r.site.home,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    # Each in its own session, as the receivers' operators'
                    # shells are, at a lower priority: on the real topology they
                    # run on the receivers' machines, not beside the sender and
                    # this process's control calls.
                    start_new_session=True,
                    preexec_fn=_background,
                ),
            )
            for r in self.receivers
        ]
        for r, proc in procs:
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise BenchError(f"{r.site.name}: dbsync pull failed: {err[-2000:]}")
            r.transfer_id = json.loads(out)["id"]

    def wait_pulls(self, timeout: float) -> list[tuple[float, int]]:
        """Poll every receiver's transfer until all end; (t, rows done) samples.
        Also keeps the peak of PostgreSQL connections (this run's, everyone's).

        PostgreSQL's connections are shared with whatever else runs on the
        machine, and the sites hold many: this holds one open (for
        pg_stat_activity) and opens one more at a time, for an unfinished pull.
        """
        admin = self.pg.connect("postgres")
        progress: list[tuple[float, int]] = []
        state = {r.site.name: ("pending", 0) for r in self.receivers}
        deadline = time.monotonic() + timeout
        try:
            while True:
                with admin.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FILTER (WHERE datname LIKE %s), count(*) "
                        "FROM pg_stat_activity WHERE backend_type = 'client backend'",
                        (f"{self.prefix}%",),
                    )
                    ours, everyone = cur.fetchone()
                self.pg_peak = (
                    max(self.pg_peak[0], ours),
                    max(self.pg_peak[1], everyone),
                )
                for r in self.receivers:
                    if state[r.site.name][0] in ENDED:
                        continue
                    try:
                        row = self.pg.query(
                            r.site.state_db,
                            "SELECT status, records_transferred FROM "
                            f"dbsync_transfers WHERE id = '{r.transfer_id}'",
                        )[0]
                    except psycopg2.OperationalError:  # e.g. too many clients
                        self.poll_failures += 1
                        continue
                    state[r.site.name] = (row[0], row[1] or 0)
                progress.append(
                    (time.perf_counter(), sum(n for _, n in state.values()))
                )
                if all(status in ENDED for status, _ in state.values()):
                    return progress
                if time.monotonic() > deadline:
                    raise BenchError(f"pulls not finished within {timeout:.0f}s")
                time.sleep(1.0)
        finally:
            admin.close()

    def collect_pull(self, r: Receiver) -> dict[str, Any]:
        row = self.pg.query(
            r.site.state_db,
            f"SELECT {', '.join(PULL_COLUMNS)} FROM dbsync_transfers "
            f"WHERE id = '{r.transfer_id}'",
        )[0]
        t = dict(zip(PULL_COLUMNS, row, strict=True))
        pages = self.pg.query(
            r.site.state_db,
            "SELECT coalesce(sum(pages_done), 0) FROM dbsync_transfer_tables "
            f"WHERE transfer_id = '{r.transfer_id}'",
        )[0][0]
        got = self.digest(r.data_db)
        rows = self.args.rows
        records = {
            k: t[f"records_{k}"]
            for k in ("expected", "transferred", "created", "updated", "skipped")
        }
        records["failed"] = t["records_failed"]
        counts_ok = t["status"] == "completed" and records == {
            "expected": records["expected"],
            "transferred": rows,
            "created": rows,
            "updated": 0,
            "skipped": 0,
            "failed": 0,
        }
        done = t["completed_at"]
        return {
            "receiver": r.site.name,
            "status": t["status"],
            "error": t["error_message"],
            "records": records,
            "pages": int(pages),
            "attempts": t["attempts"],
            "bytes": t["bytes_transferred"],
            "seconds": round((done - t["created_at"]).total_seconds(), 3)
            if done
            else None,
            "created_at": t["created_at"],
            "completed_at": done,
            "target": got,
            "counts_ok": counts_ok,
            "exact": counts_ok and got == self.source_digest,
        }

    def run(self) -> dict[str, Any]:
        a = self.args
        result: dict[str, Any] = {
            "benchmark": "dbsync load: one sender, receivers pulling at once, "
            "control calls at a fixed rate",
            "run_tag": self.tag,
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "config": {
                "receivers": a.receivers,
                "rows": a.rows,
                "rate_per_s": a.rate,
                "mix": a.mix,
                "baseline_s": a.baseline,
                "quick": a.quick,
                "sender_web_concurrency": a.web_concurrency
                or "dbsync's default ($WEB_CONCURRENCY unset)",
                "sender_autogroup_nice": a.sender_nice,
                "sender_gunicorn_args": a.sender_gunicorn_args,
                "connections": "created with no options",
                "sites": "Procfile web/worker/beat lines, empty working dirs, "
                "no SYNC_HOME, PostgreSQL + Redis (tests/e2e/operator.py); the "
                "sender's web also gets GUNICORN_CMD_ARGS=--access-logformat "
                "(request time and worker pid added to its access log)",
                "phases": "baseline: control calls only; starting: the "
                "`dbsync pull` commands are running; pulls: from their return "
                "to the last pull's end; run = starting + pulls",
            },
            "machine": {
                "nproc": len(os.sched_getaffinity(0)),
                "uptime_before": uptime_line(),
                "postgresql": self.pg.query("postgres", "SHOW server_version")[0][0],
            },
        }
        _say(
            f"load: {a.receivers} receivers x {a.rows:,} rows, {a.rate:g} control "
            f"calls/s; {result['machine']['uptime_before']}"
        )
        t = time.perf_counter()
        self.make_data()
        _say(f"data ready in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        self.make_sites()
        _say(f"{len(self.sites)} sites up and paired in {time.perf_counter() - t:.1f}s")

        sender = self.sender
        self.roles = {sender.pgid(role): f"sender {role}" for role in sender.procs}
        for r in self.receivers:
            for role in r.site.procs:
                self.roles[r.site.pgid(role)] = f"receivers' {role}s"
        trees = {f"sender_{role}": sender.pgid(role) for role in sender.procs}
        for r in self.receivers:
            trees[f"{r.site.name}_worker"] = r.site.pgid("worker")
        probe = WebProbe(sender.home / "web.log", sender.port, sender.pgid("web"))
        load = ControlLoad(
            "127.0.0.1",
            sender.port,
            a.rate,
            a.mix_weights,
            [(r.site.url, r.token_hash, r.signing_key) for r in self.receivers],
        )
        account = CpuAccount(
            self.classify, f"pull commands (dbsync pull x {a.receivers})"
        )
        self.prioritise_sender()
        stop_renice = threading.Event()
        if a.sender_nice is not None:
            threading.Thread(
                target=self.keep_sender_prioritised, args=(stop_renice,), daemon=True
            ).start()
        probe.start()
        load.start()
        try:
            t_base = time.perf_counter()
            time.sleep(a.baseline)
            with RssSampler(trees, interval=1.0) as sampler:
                account.begin()
                load.phase = "starting"
                t_launch = time.perf_counter()
                self.start_pulls()
                t_started = time.perf_counter()
                load.phase = "pulls"
                _say(f"{a.receivers} pulls started in {t_started - t_launch:.1f}s")
                progress = self.wait_pulls(timeout=600 + a.rows * a.receivers / 1000)
                t_end = time.perf_counter()
                load.phase = "after"
                cpu = account.end()
        finally:
            stop_renice.set()
            load.stop()
            probe.stop()
        _say(f"pulls ended {t_end - t_launch:.1f}s after the pull commands")

        pulls = [self.collect_pull(r) for r in self.receivers]
        first = min(p["created_at"] for p in pulls)
        last = max(p["completed_at"] or p["created_at"] for p in pulls)
        span = (last - first).total_seconds()
        total_rows = sum(p["records"]["transferred"] for p in pulls)
        for p in pulls:
            p["created_at"] = p["created_at"].isoformat()
            p["completed_at"] = p["completed_at"] and p["completed_at"].isoformat()

        def calls_in(*phases: str) -> list[Call]:
            return [c for c in load.calls if c.phase in phases]

        def summary(calls: list[Call]) -> dict[str, Any]:
            return {
                k: latency_summary([c for c in calls if c.kind == k])
                for k in KINDS
                if any(c.kind == k for c in calls)
            }

        run_calls = calls_in("starting", "pulls")
        status_latency = {
            c.n: c.latency for c in load.calls if c.kind == "status" and c.status
        }
        client = {
            "run": summary(run_calls),
            "baseline": summary(calls_in("baseline")),
            "starting": summary(calls_in("starting")),
            "pulls": summary(calls_in("pulls")),
            "achieved_rate_per_s": round(len(run_calls) / (t_end - t_launch), 1),
        }
        web = {
            "run": probe.report(t_launch, t_end, status_latency),
            "pulls": probe.report(t_started, t_end, status_latency),
            "baseline": probe.report(t_base, t_launch, status_latency),
        }
        client_5xx = sum(1 for c in load.calls if c.status >= 500)
        client_errors = sum(1 for c in load.calls if c.status == 0)
        # Every control call is valid (signed where the pair signs): any other
        # answer than 200 means the sender refused good work, except a 429 of
        # the per-connection control limit (60 a minute): 15 % of 50 calls/s
        # over 8 connections is ~56 verify calls a minute each, far beyond a
        # real receiver's, so a few are refused by design and counted apart.
        refused = sum(
            1 for c in load.calls if 0 < c.status < 500 and c.status not in (200, 429)
        )
        throttled = sum(1 for c in load.calls if c.status == 429)
        log_5xx = sum(
            1 for s in probe.served if s.status >= 500
        )  # every request the sender answered while watched, pull-data included
        mem = sampler.result()
        status = client["run"].get("status", {})
        verdict: dict[str, Any] = {
            "all_pulls_exact": all(p["exact"] for p in pulls),
            "http_5xx_control_calls": client_5xx,
            "http_5xx_sender_access_log": log_5xx,
            "control_calls_without_answer": client_errors,
            "control_calls_refused": refused,
            "control_calls_rate_limited": throttled,
            "status_p95_ms": status.get("p95_ms"),
            "status_p95_under_500ms": (status.get("p95_ms") or 1e9)
            < STATUS_P95_LIMIT_MS,
        }
        verdict["held"] = (
            verdict["all_pulls_exact"]
            and client_5xx == log_5xx == client_errors == refused == 0
            and verdict["status_p95_under_500ms"]
        )
        result.update(
            {
                "verdict": verdict,
                "source": {"rows": a.rows, **self.source_digest},
                "pulls": pulls,
                "throughput": {
                    "rows": total_rows,
                    "seconds_first_enqueue_to_last_completion": round(span, 2),
                    "rows_per_s": round(total_rows / span) if span > 0 else None,
                    "wall_seconds_from_pull_commands": round(t_end - t_launch, 2),
                    "pull_commands_seconds": round(t_started - t_launch, 2),
                    "pull_seconds_each": sorted(p["seconds"] or 0 for p in pulls),
                },
                "control_calls": client,
                "sender_web": web,
                "cpu": cpu,
                "memory_peak": {
                    k: {
                        x: v[x]
                        for x in (
                            "tree_rss_mb",
                            "tree_pss_mb",
                            "largest_process_rss_mb",
                            "processes",
                        )
                    }
                    for k, v in mem.items()
                    if isinstance(v, dict)
                },
                "sender_errors": app_errors(sender.home / "web.log"),
                "postgres_connections_peak": {
                    "this_run": self.pg_peak[0],
                    "all_clients": self.pg_peak[1],
                    "progress_polls_refused": self.poll_failures,
                    "max_connections": int(
                        self.pg.query("postgres", "SHOW max_connections")[0][0]
                    ),
                },
                "timeline": timeline(load.calls, probe, progress, t_launch, t_end),
            }
        )
        result["machine"]["uptime_after"] = uptime_line()
        result["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        result["notes"] = diagnose(result)
        return result

    def cleanup(self) -> None:
        stop_all(self.sites)
        self.pg.drop_all()
        clean_redis(self.redis_url, f"bench-{self.tag}-")
        if self.failed or self.args.keep_workdir:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- results ----------------------------------------------------------------------


def app_errors(log: Path, limit: int = 20) -> list[dict[str, str]]:
    """The unhandled errors a site's web logged (what a 500 was), each with the
    last line of its traceback: the exception."""
    out: list[dict[str, str]] = []
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for i, line in enumerate(lines):
        if "unhandled error on" not in line and " ERROR " not in line:
            continue
        exception = ""
        for follow in lines[i + 1 : i + 80]:
            if follow and not follow.startswith((" ", "Traceback", "\t")):
                exception = follow
                break
        out.append({"line": line[:300], "exception": exception[:300]})
        if len(out) >= limit:
            break
    return out


def timeline(
    calls: list[Call],
    probe: WebProbe,
    progress: list[tuple[float, int]],
    start: float,
    end: float,
) -> list[dict[str, Any]]:
    """One entry a second of the run: status latency of the calls due in that
    second, the sender's deepest accept queue, and rows pulled so far."""
    out = []
    t = start
    while t < end:
        ms = sorted(
            c.latency * 1000
            for c in calls
            if c.kind == "status" and t <= c.due < t + 1 and c.status
        )
        rows = [n for at, n in progress if at < t + 1]
        out.append(
            {
                "t": round(t - start),
                "status_calls": len(ms),
                "status_p50_ms": r1(percentile(ms, 50)),
                "status_max_ms": r1(ms[-1]) if ms else None,
                "accept_queue_max": probe.queue_max(t, t + 1),
                "rows_done": rows[-1] if rows else 0,
            }
        )
        t += 1
    return out


def diagnose(result: dict[str, Any]) -> list[str]:
    """Plain sentences about what the figures say, for the summary and the JSON."""
    out: list[str] = []
    v = result["verdict"]
    web = result["sender_web"]["run"]
    cpu = result["cpu"]
    status = result["control_calls"]["run"].get("status", {})
    if web["workers"]:
        parts = "; ".join(
            f"pid {w['pid']} in requests {w['in_requests_fraction']:.0%} of the "
            f"time ({w['in_pull_data_fraction']:.0%} in pull-data), on a CPU "
            f"{w.get('on_cpu_fraction', 0):.0%}, runnable but waiting for a CPU "
            f"{w.get('waiting_for_cpu_fraction', 0):.0%}"
            for w in web["workers"]
        )
        out.append(f"sender's gunicorn processes during the run: {parts}.")
        for w in web["workers"]:
            spots = w.get("threads_where")
            if spots and w["requests"]:
                top = ", ".join(f"{k} {v:.0%}" for k, v in list(spots.items())[:5])
                out.append(f"pid {w['pid']}, its threads sampled: {top}.")
    if status and not v["status_p95_under_500ms"]:
        out.append(
            f"status p95 {status['p95_ms']} ms over the run: inside a gunicorn "
            f"worker p95 {web['status_in_worker_ms']['p95']} ms; before a worker "
            f"took it p95 {web['status_before_worker_ms']['p95']} ms (accept queue "
            f"mean {web['accept_queue']['mean']}, max {web['accept_queue']['max']})."
        )
    share = cpu["share_of_machine"]
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(share.items())[:6])
    out.append(
        f"CPU over the run ({cpu['cpus']} CPUs, {cpu['window_s']} s, "
        f"{cpu['machine_busy_cpu_s']} CPU-s busy, {cpu['machine_idle_cpu_s']} "
        f"CPU-s idle): {top}."
    )
    if v["http_5xx_control_calls"] or v["http_5xx_sender_access_log"]:
        out.append(
            f"5xx answers: {v['http_5xx_control_calls']} to control calls, "
            f"{v['http_5xx_sender_access_log']} in the sender's access log."
        )
    for err in result.get("sender_errors", [])[:3]:
        out.append(f"sender web logged: {err['line']} -> {err['exception']}")
    if v["control_calls_without_answer"]:
        out.append(f"{v['control_calls_without_answer']} control calls got no answer.")
    if not v["all_pulls_exact"]:
        bad = [p["receiver"] for p in result["pulls"] if not p["exact"]]
        out.append(f"pulls not exact: {', '.join(bad)}.")
    return out


def render(result: dict[str, Any]) -> None:
    v, tp, c = result["verdict"], result["throughput"], result["config"]
    print()
    print(
        f"== dbsync load: {c['receivers']} receivers x {c['rows']:,} rows at once, "
        f"{c['rate_per_s']:g} control calls/s =="
    )
    print(f"machine before: {result['machine']['uptime_before']}")
    print(f"machine after:  {result['machine']['uptime_after']}")
    exact = sum(1 for p in result["pulls"] if p["exact"])
    print(
        f"pulls exact: {exact}/{len(result['pulls'])} (transfer counts; row count, "
        "digest and key-ordered md5 equal to the sender's)"
    )
    for p in result["pulls"]:
        print(
            f"  {p['receiver']:>4}: {p['status']}, "
            f"{p['records']['transferred']:,} rows, {p['pages']} pages, "
            f"{p['seconds']} s, attempts {p['attempts']}, "
            f"{'exact' if p['exact'] else 'NOT EXACT'}"
        )
    print(
        f"5xx: {v['http_5xx_control_calls']} to control calls, "
        f"{v['http_5xx_sender_access_log']} in the sender's access log; "
        f"control calls without answer: {v['control_calls_without_answer']}"
    )
    print(
        f"throughput: {tp['rows']:,} rows in "
        f"{tp['seconds_first_enqueue_to_last_completion']} s (first enqueue to "
        f"last completion) = {tp['rows_per_s']:,} rows/s; wall from the pull "
        f"commands {tp['wall_seconds_from_pull_commands']} s (of which the "
        f"commands themselves {tp['pull_commands_seconds']} s)"
    )
    for phase in ("baseline", "starting", "pulls", "run"):
        print(f"control latency, {phase}:")
        for kind, s in result["control_calls"][phase].items():
            print(
                f"  {kind:<7} n={s['calls']:>5}  p50 {s['p50_ms']:>8} ms  p95 "
                f"{s['p95_ms']:>8} ms  p99 {s['p99_ms']:>8} ms  max "
                f"{s['max_ms']:>8} ms  {s['statuses']}  (client send lag p99 "
                f"{s['send_lag_p99_ms']} ms)"
            )
    for phase in ("baseline", "run"):
        web = result["sender_web"][phase]
        print(
            f"sender web, {phase}: accept queue mean {web['accept_queue']['mean']} "
            f"max {web['accept_queue']['max']}; status inside a worker p95 "
            f"{web['status_in_worker_ms']['p95']} ms, before a worker took it p95 "
            f"{web['status_before_worker_ms']['p95']} ms"
        )
    pc = result["postgres_connections_peak"]
    print(
        f"PostgreSQL client connections at peak during the pulls: {pc['this_run']} "
        f"of this run, {pc['all_clients']} in all, max_connections "
        f"{pc['max_connections']}"
    )
    cpu = result["cpu"]
    print(f"CPU seconds over the run ({cpu['window_s']} s x {cpu['cpus']} CPUs):")
    for name, seconds in cpu["cpu_s"].items():
        print(f"  {name:<42} {seconds:>7} ({cpu['share_of_machine'][name]:.0%})")
    print(f"  {'idle':<42} {cpu['machine_idle_cpu_s']:>7}")
    if cpu["other_top_commands_cpu_s"]:
        print("  largest other users (CPU-s):")
        for name, seconds in cpu["other_top_commands_cpu_s"].items():
            print(f"    {seconds:>6}  {name}")
    for name, m in result["memory_peak"].items():
        if name.startswith("sender"):
            print(
                f"{name}: peak RSS tree {m['tree_rss_mb']} MB (PSS "
                f"{m['tree_pss_mb']} MB, largest process "
                f"{m['largest_process_rss_mb']} MB, {m['processes']} processes)"
            )
    for note in result["notes"]:
        print(f"note: {note}")
    print(
        f"HELD: {v['held']} (exact {v['all_pulls_exact']}, status p95 "
        f"{v['status_p95_ms']} ms, limit {STATUS_P95_LIMIT_MS:g} ms; control "
        f"calls refused {v.get('control_calls_refused', 0)}, rate-limited "
        f"{v.get('control_calls_rate_limited', 0)})"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--receivers", type=int, default=None, help="receiver sites pulling at once (8)"
    )
    p.add_argument("--rows", type=int, default=None, help="rows in the table (200,000)")
    p.add_argument(
        "--rate", type=float, default=None, help="control calls a second (50)"
    )
    p.add_argument(
        "--baseline",
        type=float,
        default=None,
        help="seconds of control calls before the pulls start (10)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run: {QUICK['receivers']} receivers, "
        f"{QUICK['rows']:,} rows, {QUICK['rate']:g} calls/s, "
        f"{QUICK['baseline']:g} s baseline (explicit options win)",
    )
    p.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"weights of the control calls ({DEFAULT_MIX}): status is GET "
        "status, verify and list are verify-connection and list-tables with "
        "the receivers' connections",
    )
    p.add_argument(
        "--web-concurrency",
        type=int,
        default=None,
        help="WEB_CONCURRENCY of the sender's web (default: unset, dbsync's default)",
    )
    p.add_argument(
        "--sender-nice",
        type=int,
        default=None,
        help="a diagnostic, not the scenario: set the autogroup nice value "
        "(/proc/PID/autogroup) of the sender's web, worker and beat sessions "
        "and of the PostgreSQL backends serving its databases, e.g. -10 to "
        "emulate a sender with a machine of its own (negative values need root)",
    )
    p.add_argument(
        "--sender-gunicorn-args",
        default=None,
        help="a diagnostic: more gunicorn settings for the sender's web through "
        "GUNICORN_CMD_ARGS, e.g. '--worker-class gthread --threads 8'",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results file")
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"
        ),
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("SYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
    )
    p.add_argument("--redis-db", type=int, default=8, help="Redis database (8)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the sites' logs")
    args = p.parse_args(argv)
    base = QUICK if args.quick else ISSUE_DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.receivers < 1 or args.rows < 1 or args.rate <= 0 or args.baseline < 0:
        p.error("--receivers, --rows and --rate must be positive, --baseline >= 0")
    if args.sender_nice is not None and not -20 <= args.sender_nice <= 19:
        p.error("--sender-nice must be -20..19")
    if args.web_concurrency is not None and args.web_concurrency < 1:
        p.error("--web-concurrency must be positive")
    try:
        args.mix_weights = parse_mix(args.mix)
    except ValueError as ex:
        p.error(str(ex))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    bench = LoadBench(args)
    try:
        result = bench.run()
    except BaseException:
        bench.failed = True
        raise
    finally:
        bench.cleanup()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = args.out or REPO / "bench" / "results" / (
        f"load-r{args.receivers}-rows{args.rows}-rate{args.rate:g}-{stamp}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    render(result)
    print(f"results written to {out}")
    return 0 if result["verdict"]["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
