"""dbsync benchmark: one table pulled through the real stack, against `pg_dump | psql`.

    .venv/bin/python -m bench.run [--rows N] [--repeat 3] [--out bench/results/NAME.json]
                                  [--skip-latency] [--latency-requests 2000]

Measures, in one run and each `--repeat` times (the median is reported):

  reference       pg_dump --data-only -t T source | psql -q target (target emptied,
                  primary key present)
  pull_empty      dbsync pull through two real sites on loopback (gunicorn + a Celery
                  worker on Redis each) into the emptied target, 100k-row pages allowed
  present_skip / present_overwrite / present_merge
                  the same pull with every row already in the target
  json_pages      the pull a PhoenixKit peer makes: JSON pages of 10,000 rows (the
                  receiver runs with SYNC_PULL_FORMAT=json and SYNC_BULK_PULL=false)
  pull_default    pull_empty over a connection created with no options (its default
                  max_records_per_request and rate_limit_requests_per_minute), as a
                  new operator makes one

and samples the memory of the sender's web and the pulling receiver's worker
during every pull. Then it measures control-plane latency (register-connection
and verify-connection under concurrent clients) next to a bare Falcon app under
the same gunicorn settings. Prints a table and writes everything as JSON.

Every database it makes is named dbsync_bench_* and dropped at the end; its
Celery queues carry a per-run prefix in their own Redis databases.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import dataset
from bench.harness import (
    REPO,
    BenchError,
    Postgres,
    RssSampler,
    Site,
    clean_redis,
    eventually,
    free_port,
    pair,
    snapshot,
    stop_all,
    stop_processes,
)
from bench.latency import hammer
from shared.control import signing

console = Console(highlight=False)

METHODS: list[tuple[str, str]] = [
    ("reference", "pg_dump --data-only | psql (reference)"),
    ("pull_empty", "dbsync pull, empty target"),
    ("present_skip", "dbsync pull, all rows present: skip"),
    ("present_overwrite", "dbsync pull, all rows present: overwrite"),
    ("present_merge", "dbsync pull, all rows present: merge"),
    ("json_pages", "dbsync pull, PhoenixKit JSON pages (10k)"),
    ("pull_default", "dbsync pull, empty target, default connection"),
]

TIMING_NOTE = (
    "Pull times are enqueue-to-completion from the transfer's own timestamps "
    "(completed_at - created_at: created_at is set when `dbsync pull` commits the "
    "transfer and hands it to the pull queue), so they exclude the CLI's start-up "
    "and its 0.5 s polling; `wall_seconds` around the whole `dbsync pull --wait` "
    "command and `worker_seconds` (completed_at - started_at) are kept per run. "
    "The reference is timed with time.perf_counter() around the pg_dump | psql "
    "pipeline. Before every measured copy: CHECKPOINT; the target is emptied with "
    "TRUNCATE, or (for the all-rows-present pulls) refilled by the reference copy "
    "and VACUUM ANALYZEd. Each copy's result is checked (row count and a digest "
    "of every row) outside its timing."
)

MEMORY_NOTE = (
    "Memory is sampled every 0.2 s from /proc during each pull: for each process "
    "tree (its process group: gunicorn master + workers, celery main + pool "
    "children) the peak of the sum of VmRSS, the peak of the sum of Pss, and the "
    "peak VmRSS of its largest process. 'web' is the sender's gunicorn (it serves "
    "the pages), 'worker' is the pulling receiver's Celery worker (it imports them)."
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


# -- machine ----------------------------------------------------------------------


def machine_info(pg: Postgres) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ]
        info["cpu_model"] = models[0] if models else None
    except OSError:
        info["cpu_model"] = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["loadavg_1m_at_start"] = loadavg()
    rows = pg.query("postgres", "SELECT version()")
    info["postgresql"] = rows[0][0]
    info["postgresql_settings"] = {
        name: pg.query("postgres", f"SHOW {name}")[0][0]
        for name in (
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "max_wal_size",
            "wal_level",
        )
    }
    for tool in ("pg_dump", "psql"):
        try:
            info[f"{tool}_version"] = subprocess.run(
                [tool, "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            info[f"{tool}_version"] = None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        info["git_commit"] = head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def pull_format_switches() -> dict[str, bool]:
    """Which receiver switches for the pull format this build reads."""
    names = {"SYNC_PULL_FORMAT": False, "SYNC_BULK_PULL": False}
    for folder in ("shared", "workers", "api"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(errors="replace")
            for name in names:
                names[name] = names[name] or name in text
    return names


def wire_bytes(log: Path, offset: int) -> tuple[int, int]:
    """(bytes, requests) of the pull-data answers in a gunicorn access log after
    `offset` (the access log's %(b)s is the bytes gunicorn actually sent)."""
    total = count = 0
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f:
            if b'"POST /sync/api/pull-data ' in line:
                parts = line.split(b'" ', 1)[1].split()
                if parts[0] == b"200" and parts[1].isdigit():
                    total += int(parts[1])
                    count += 1
    return total, count


# -- the benchmark -----------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: int = args.rows
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
        self.pg = Postgres(args.pg_url)
        self.workdir = Path(tempfile.mkdtemp(prefix="dbsync-bench-"))
        self.sites: list[Site] = []
        self.extra_procs: list[subprocess.Popen[bytes]] = []
        self.redis_urls: list[str] = []
        self.source_db = f"dbsync_bench_{self.tag}_source"
        self.target_db = f"dbsync_bench_{self.tag}_target"
        self.failed = False

    # databases

    def sql(self, db: str, statement: str) -> list[tuple[Any, ...]]:
        return self.pg.query(db, statement)

    def make_data(self) -> dict[str, Any]:
        self.pg.create(self.source_db)
        self.pg.create(self.target_db)
        for db in (self.source_db, self.target_db):
            self.sql(db, dataset.DDL)
        started = time.perf_counter()
        chunk = 250_000
        for start in range(1, self.rows + 1, chunk):
            self.sql(
                self.source_db,
                dataset.fill_sql(start, min(self.rows, start + chunk - 1)),
            )
        self.sql(self.source_db, f"VACUUM (FREEZE, ANALYZE) {dataset.TABLE}")
        heap, total, avg = self.sql(self.source_db, dataset.SIZE)[0]
        self.source_digest = self.sql(self.source_db, dataset.DIGEST)[0]
        _say(
            f"source filled: {self.rows:,} rows, heap {heap / 2**20:,.0f} MiB "
            f"({heap / max(self.rows, 1):.0f} B/row on disk, {avg:.0f} B/row "
            f"pg_column_size) in {time.perf_counter() - started:.1f} s"
        )
        return {
            "table": dataset.TABLE,
            "columns": dataset.COLUMNS,
            "rows": self.rows,
            "heap_bytes": heap,
            "total_bytes": total,
            "heap_bytes_per_row": round(heap / max(self.rows, 1), 1),
            "avg_row_bytes": round(avg, 1),
        }

    def checkpoint(self) -> None:
        self.sql("postgres", "CHECKPOINT")

    def empty_target(self) -> None:
        self.sql(self.target_db, f"TRUNCATE {dataset.TABLE}")
        self.checkpoint()

    def fill_target(self) -> None:
        """Every source row in the target, settled (vacuumed, analysed, checkpointed)."""
        self.sql(self.target_db, f"TRUNCATE {dataset.TABLE}")
        self.reference_copy()
        self.sql(self.target_db, f"VACUUM (ANALYZE) {dataset.TABLE}")
        self.checkpoint()

    def target_matches(self) -> bool:
        return self.sql(self.target_db, dataset.DIGEST)[0] == self.source_digest

    def reference_copy(self) -> float:
        started = time.perf_counter()
        dump = subprocess.Popen(
            [
                "pg_dump",
                "--data-only",
                "-t",
                dataset.TABLE,
                self.pg.url(self.source_db),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        load = subprocess.run(
            ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", self.pg.url(self.target_db)],
            stdin=dump.stdout,
            capture_output=True,
            text=True,
        )
        dump.stdout.close()  # type: ignore[union-attr]
        dump_err = dump.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
        dump.wait()
        seconds = time.perf_counter() - started
        if dump.returncode or load.returncode:
            raise BenchError(f"pg_dump | psql failed: {dump_err} {load.stderr}")
        return seconds

    # sites

    def make_sites(self) -> None:
        a = self.args
        dbs = [a.redis_db, a.redis_db + 1, a.redis_db + 2, a.redis_db + 3]
        self.redis_urls = [f"{a.redis_url.rstrip('/')}/{n}" for n in dbs]
        source_url = self.pg.url(self.source_db)
        target_url = self.pg.url(self.target_db)
        specs = [
            ("sender", self.redis_urls[0], source_url, {}),
            ("receiver", self.redis_urls[1], target_url, {}),
            # A PhoenixKit-style receiver: it only takes JSON pages. SYNC_PULL_FORMAT
            # is the agreed receiver setting; SYNC_BULK_PULL=false is the switch
            # the first bulk-format build reads. Either one is enough.
            (
                "receiver_json",
                self.redis_urls[2],
                target_url,
                {"SYNC_PULL_FORMAT": "json", "SYNC_BULK_PULL": "false"},
            ),
        ]
        if "pull_default" in a.methods:
            # Its own site: a receiver holds one connection per sender.
            specs.append(("receiver_default", self.redis_urls[3], target_url, {}))

        def build(spec: tuple[str, str, str, dict[str, str]]) -> Site:
            name, redis_url, data_url, env = spec
            site = Site(
                name=name,
                pg=self.pg,
                workdir=self.workdir,
                redis_url=redis_url,
                state_db=f"dbsync_bench_{self.tag}_{name}_state",
                data_db_url=data_url,
                queue_prefix=f"bench-{self.tag}-{name}-",
                extra_env=env,
                web_workers=a.web_workers,
                worker_concurrency=a.worker_concurrency,
            )
            self.sites.append(site)
            site.cli("db", "upgrade")
            site.cli("settings", "set", "enabled", "true")
            if name != "sender":
                site.cli("settings", "set", "incoming_mode", "auto_accept")
            site.start()
            site.wait_ready()
            return site

        with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
            built = list(pool.map(build, specs))
        self.sender, self.receiver, self.receiver_json = built[:3]
        common = ["--rate-limit", "100000"]
        self.rid, self.token = pair(
            self.sender,
            self.receiver,
            *common,
            "--max-records-per-request",
            str(a.bulk_page),
        )
        self.rid_json, _ = pair(
            self.sender,
            self.receiver_json,
            *common,
            "--max-records-per-request",
            str(a.json_page),
        )
        if len(built) > 3:
            self.receiver_default = built[3]
            self.rid_default, _ = pair(self.sender, self.receiver_default)
        _say(
            f"sites up and paired: sender {self.sender.url}, receiver "
            f"{self.receiver.url}, receiver_json {self.receiver_json.url}"
        )

    # measurements

    def measure_reference(self) -> dict[str, Any]:
        self.empty_target()
        seconds = self.reference_copy()
        return {
            "seconds": round(seconds, 3),
            "rows_per_s": round(self.rows / seconds),
            "content_ok": self.target_matches(),
        }

    def measure_pull(
        self, receiver: Site, rid: str, strategy: str, expect: dict[str, int]
    ) -> dict[str, Any]:
        trees = {
            "sender_web": self.sender.pgid("web"),
            "sender_worker": self.sender.pgid("worker"),
            "receiver_web": receiver.pgid("web"),
            "receiver_worker": receiver.pgid("worker"),
        }
        idle = {
            name: round(snapshot(pgid)[0] / 1024, 1) for name, pgid in trees.items()
        }
        access_log = self.sender.home / "web.log"
        log_offset = access_log.stat().st_size
        timeout = 600 + self.rows / 500
        with RssSampler(trees, interval=0.2) as sampler:
            started = time.perf_counter()
            result = receiver.cli(
                "pull",
                rid,
                dataset.TABLE,
                "--strategy",
                strategy,
                "--create-missing",
                "--wait",
                "--json",
                timeout=timeout,
                check=False,
            )
            wall = time.perf_counter() - started
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise BenchError(
                f"dbsync pull printed no JSON ({result.returncode}): "
                f"{result.stderr[-2000:]}\n{receiver.logs()}\n"
                f"{self.sender.logs()}"
            ) from None
        if data.get("status") != "completed":
            raise BenchError(
                f"pull {strategy} via {receiver.name} ended "
                f"{data.get('status')}: {data.get('error')}\n"
                f"{receiver.logs()}\n{self.sender.logs()}"
            )
        seconds = (_ts(data["completed_at"]) - _ts(data["created_at"])).total_seconds()
        worker_seconds = (
            _ts(data["completed_at"]) - _ts(data["started_at"])
        ).total_seconds()
        counts = {
            k: data[f"records_{k}"]
            for k in ("transferred", "created", "updated", "skipped", "failed")
        }
        wanted = {
            "transferred": self.rows,
            "created": 0,
            "updated": 0,
            "skipped": 0,
            "failed": 0,
            **expect,
        }
        if counts != wanted:
            raise BenchError(
                f"pull {strategy} via {receiver.name}: counts {counts}, "
                f"expected {wanted}"
            )
        table = (data.get("tables") or [{}])[0]
        sent, answers = wire_bytes(access_log, log_offset)
        return {
            "seconds": round(seconds, 3),
            "rows_per_s": round(self.rows / seconds) if seconds > 0 else None,
            "wall_seconds": round(wall, 3),
            "worker_seconds": round(worker_seconds, 3),
            "counts": counts,
            "counts_ok": True,
            "pages": table.get("pages"),
            "pull_data_answers": answers,
            "wire_bytes": sent,
            "wire_bytes_per_row": round(sent / self.rows, 1),
            "transfer_id": data["id"],
            "content_ok": self.target_matches(),
            "memory_idle_before_rss_mb": idle,
            "memory_peak": sampler.result(),
        }

    def plan(
        self,
    ) -> list[tuple[str, Callable[[], None], Callable[[], dict[str, Any]]]]:
        n = self.rows
        r, rj = self.receiver, self.receiver_json
        return [
            ("reference", lambda: None, self.measure_reference),
            (
                "pull_empty",
                self.empty_target,
                lambda: self.measure_pull(r, self.rid, "skip", {"created": n}),
            ),
            (
                "present_skip",
                self.fill_target,
                lambda: self.measure_pull(r, self.rid, "skip", {"skipped": n}),
            ),
            (
                "present_overwrite",
                self.fill_target,
                lambda: self.measure_pull(r, self.rid, "overwrite", {"updated": n}),
            ),
            (
                "present_merge",
                self.fill_target,
                lambda: self.measure_pull(r, self.rid, "merge", {"updated": n}),
            ),
            (
                "json_pages",
                self.empty_target,
                lambda: self.measure_pull(rj, self.rid_json, "skip", {"created": n}),
            ),
            (
                "pull_default",
                self.empty_target,
                lambda: self.measure_pull(
                    self.receiver_default, self.rid_default, "skip", {"created": n}
                ),
            ),
        ]

    def run_copies(self) -> dict[str, list[dict[str, Any]]]:
        wanted = self.args.methods
        runs: dict[str, list[dict[str, Any]]] = {
            key: [] for key, _ in METHODS if key in wanted
        }
        # Round robin, so slow drift of the machine spreads over every method.
        for rep in range(1, self.args.repeat + 1):
            for key, prepare, measure in self.plan():
                if key not in wanted:
                    continue
                prepare()
                load = loadavg()
                result = {"repeat": rep, **measure(), "loadavg_1m_before": load}
                if not result["content_ok"]:
                    raise BenchError(
                        f"{key} (repeat {rep}): target differs from source"
                    )
                runs[key].append(result)
                _say(
                    f"repeat {rep}/{self.args.repeat} {key:<18} {self.rows:,} rows in "
                    f"{result['seconds']:.2f} s = {result['rows_per_s']:>9,} rows/s"
                    + (
                        f"  (wall {result['wall_seconds']:.1f} s, "
                        f"{result['pages']} pages)"
                        if "wall_seconds" in result
                        else ""
                    )
                )
        return runs

    # latency

    def start_bare_app(self) -> str:
        from cli.commands.run import serve_argv

        port = free_port()
        argv = serve_argv("127.0.0.1", port, self.args.web_workers)
        argv[argv.index("api.wsgi:app")] = "bench.bare_app:app"
        at = argv.index("--config")  # dbsync's config only resets DB pools after fork
        del argv[at : at + 2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
        with open(self.workdir / "bare_app.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.extra_procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            import httpx

            try:
                return (
                    httpx.post(
                        f"{url}/sync/api/verify-connection", json={}, timeout=1
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        eventually(answers, timeout=30, what="bare app answers")
        return url

    def run_latency(self) -> dict[str, Any]:
        a = self.args
        # Only the receiver's web is left running: no worker, beat or peer calls
        # compete for the CPU, as none do for the bare app.
        others = [s for s in self.sites if s is not self.receiver]
        stop_processes(
            [
                *(p for s in others for p in s.procs.values()),
                self.receiver.procs["worker"],
                self.receiver.procs["beat"],
            ]
        )
        for site in others:
            site.procs.clear()
        del self.receiver.procs["worker"], self.receiver.procs["beat"]
        bare = self.start_bare_app()
        token_hash = hashlib.sha256(self.token.encode()).hexdigest()
        verify_body = {"sender_url": self.sender.url, "auth_token_hash": token_hash}
        dead_port = free_port()

        def fresh_registration(i: int) -> dict[str, Any]:
            return {
                "sender_url": f"http://127.0.0.1:{dead_port}/bench/{self.tag}/{i}",
                "connection_name": f"bench-{i}",
                "auth_token": secrets.token_urlsafe(32),
            }

        def duplicate_registration(i: int) -> dict[str, Any]:
            return {
                "sender_url": self.sender.url,
                "connection_name": f"dup-{i}",
                "auth_token": secrets.token_urlsafe(32),
            }

        api = f"{self.receiver.url}/sync/api"
        cases = [
            (
                "bare_falcon",
                f"{bare}/sync/api/verify-connection",
                lambda i: verify_body,
                200,
            ),
            (
                "verify_connection",
                f"{api}/verify-connection",
                lambda i: verify_body,
                200,
            ),
            (
                "register_connection",
                f"{api}/register-connection",
                fresh_registration,
                200,
            ),
            (
                "register_connection_409",
                f"{api}/register-connection",
                duplicate_registration,
                409,
            ),
        ]
        results: dict[str, Any] = {}
        # The latency run calls verify-connection far above a connection's
        # control rate limit (60 a minute by default): lift it on the
        # receiver's side so every call does the full verify path, not a 429.
        self.receiver.pg.query(
            self.receiver.state_db,
            "UPDATE dbsync_connections SET rate_limit_requests_per_minute = 1000000"
            " WHERE direction = 'receiver'",
        )
        # Two dbsync sites sign their control calls: verify-connection is
        # signed with the connection's key, as the sender's worker signs it.
        key = signing.derive_key(self.token)
        signed = {
            "verify_connection": lambda content: signing.sign(
                key, "verify-connection", content
            )
        }
        for name, url, body, expected in cases:
            res = hammer(
                url,
                body,
                requests=a.latency_requests,
                concurrency=a.latency_clients,
                warmup=min(100, max(10, a.latency_requests // 10)),
                headers=signed.get(name),
            )
            res["expected_status"] = expected
            res["all_expected"] = res["statuses"] == {str(expected): res["requests"]}
            results[name] = res
            _say(
                f"latency {name:<24} p50 {res['p50_ms']:7.2f} ms  p95 {res['p95_ms']:7.2f} ms"
                f"  p99 {res['p99_ms']:7.2f} ms  {res['req_per_s']:8.1f} req/s  "
                f"statuses {res['statuses']}"
            )
        bare_p95 = results["bare_falcon"]["p95_ms"]
        for name in (
            "verify_connection",
            "register_connection",
            "register_connection_409",
        ):
            results[name]["p95_ratio_to_bare"] = round(
                results[name]["p95_ms"] / bare_p95, 2
            )
        return {
            "clients": a.latency_clients,
            "requests_per_endpoint": a.latency_requests,
            "gunicorn": f"same argv as `dbsync serve --workers {a.web_workers}` "
            "(cli.commands.run.serve_argv), without dbsync's post-fork DB hook",
            "method": (
                "each client is a thread with its own httpx.Client on loopback; "
                "min(100, max(10, requests / 10)) warm-up requests first, not counted; latency is "
                "from send to full response. Only the receiver's gunicorn runs "
                "(its worker, beat and the other sites are stopped)."
            ),
            "register_choice": (
                "register_connection: every request registers a new sender_url "
                "(http://127.0.0.1:<closed port>/bench/<run>/<n>) in auto_accept mode, "
                "so each is the full success path (connection row, audit event, peer "
                "notice enqueued on Redis; no worker consumes it). "
                "register_connection_409: an existing sender_url, the 409 path."
            ),
            "verify_choice": "verify-connection with the real receiver connection's "
            "sender_url and token hash (200, exists: true)",
            "results": results,
        }

    # orchestration

    def run(self) -> dict[str, Any]:
        a = self.args
        started = _utcnow()
        result: dict[str, Any] = {
            "benchmark": "dbsync pull vs pg_dump | psql; control-plane latency",
            "run_tag": self.tag,
            "started_at": started.isoformat(),
            "machine": machine_info(self.pg),
        }
        _say(
            f"dbsync benchmark: {self.rows:,} rows x {a.repeat} repeat(s); work dir "
            f"{self.workdir}"
        )
        phases: dict[str, float] = {}
        mark = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[name] = round(now - mark, 1)
            mark = now

        result["table"] = self.make_data()
        phase("fill_source_s")
        self.make_sites()
        phase("start_and_pair_sites_s")
        switches = pull_format_switches()
        runs = self.run_copies()
        phase("copies_s")
        result["config"] = {
            "rows": self.rows,
            "repeat": a.repeat,
            "methods": [k for k, _ in METHODS if k in a.methods],
            "bulk_max_records_per_request": a.bulk_page,
            "json_max_records_per_request": a.json_page,
            "gunicorn_workers": a.web_workers,
            "celery_concurrency": a.worker_concurrency,
            "pull_format_switches_read_by_this_build": switches,
            "json_receiver_env": {
                "SYNC_PULL_FORMAT": "json",
                "SYNC_BULK_PULL": "false",
            },
            "timing": TIMING_NOTE,
            "memory": MEMORY_NOTE,
        }
        result["runs"] = runs
        result["summary"] = summarise(runs, self.rows)
        result["notes"] = notes(result, switches)
        if not a.skip_latency:
            result["latency"] = self.run_latency()
            phase("latency_s")
        result["phases"] = phases
        result["machine"]["loadavg_1m_at_end"] = loadavg()
        finished = _utcnow()
        result["finished_at"] = finished.isoformat()
        result["duration_s"] = round((finished - started).total_seconds(), 1)
        return result

    def cleanup(self) -> None:
        stop_all(self.sites)
        stop_processes(self.extra_procs)
        self.pg.drop_all()
        for url in self.redis_urls:
            clean_redis(url, f"bench-{self.tag}-")
        if self.failed or self.args.keep_workdir:
            console.print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- results --------------------------------------------------------------------


def _peak(runs: list[dict[str, Any]], tree: str, key: str) -> float | None:
    values = [r["memory_peak"][tree][key] for r in runs if "memory_peak" in r]
    return max(values) if values else None


def summarise(runs: dict[str, list[dict[str, Any]]], rows: int) -> list[dict[str, Any]]:
    ref_seconds = statistics.median(r["seconds"] for r in runs["reference"])
    ref_rate = rows / ref_seconds
    out = []
    for key, label in METHODS:
        items = runs.get(key)
        if not items:
            continue
        median = statistics.median(r["seconds"] for r in items)
        rate = rows / median
        entry: dict[str, Any] = {
            "method": key,
            "label": label,
            "runs": len(items),
            "median_seconds": round(median, 3),
            "rows_per_s": round(rate),
            "ratio_to_reference": round(rate / ref_rate, 3),
            "all_seconds": [r["seconds"] for r in items],
            "counts_ok": all(r.get("counts_ok", True) for r in items),
            "content_ok": all(r["content_ok"] for r in items),
        }
        if key != "reference":
            wall = statistics.median(r["wall_seconds"] for r in items)
            entry["median_wall_seconds"] = round(wall, 3)
            entry["rows_per_s_wall"] = round(rows / wall)
            entry["pages"] = items[-1]["pages"]
            entry["wire_bytes_per_row"] = items[-1]["wire_bytes_per_row"]
            entry["counts"] = items[-1]["counts"]
            entry["peak_memory_mb"] = {
                "worker": {
                    k: _peak(items, "receiver_worker", k)
                    for k in ("tree_rss_mb", "tree_pss_mb", "largest_process_rss_mb")
                },
                "web": {
                    k: _peak(items, "sender_web", k)
                    for k in ("tree_rss_mb", "tree_pss_mb", "largest_process_rss_mb")
                },
                "receiver_web_tree_rss_mb": _peak(items, "receiver_web", "tree_rss_mb"),
                "sender_worker_tree_rss_mb": _peak(
                    items, "sender_worker", "tree_rss_mb"
                ),
            }
        out.append(entry)
    return out


def notes(result: dict[str, Any], switches: dict[str, bool]) -> list[str]:
    by = {s["method"]: s for s in result["summary"]}
    out: list[str] = []
    b, d = by.get("pull_empty"), by.get("json_pages")
    if b is None or d is None:
        return out + _busy_note(result)
    out.append(
        f"pull_empty moved {b['wire_bytes_per_row']} bytes/row in {b['pages']} pages; "
        f"json_pages moved {d['wire_bytes_per_row']} bytes/row in {d['pages']} pages "
        "(bytes gunicorn sent for pull-data, from the sender's access log)."
    )
    if not any(switches.values()):
        out.append(
            "This build reads neither SYNC_PULL_FORMAT nor SYNC_BULK_PULL: "
            "if it has no bulk format, pull_empty and json_pages both moved "
            "JSON pages (the sender caps JSON pages at 10,000 rows)."
        )
    elif b["wire_bytes_per_row"] == d["wire_bytes_per_row"]:
        out.append(
            "pull_empty and json_pages moved the same bytes per row: the "
            "receiver's format switch was probably not honoured."
        )
    return out + _busy_note(result)


def _busy_note(result: dict[str, Any]) -> list[str]:
    out = []
    nproc = result["machine"]["nproc"]
    start_load = result["machine"]["loadavg_1m_at_start"]
    if start_load > nproc / 2:
        out.append(
            f"The machine was already busy when the benchmark started (1-minute load "
            f"average {start_load:.1f} on {nproc} CPUs): absolute rates are depressed "
            "and noisier; compare the ratios within this run."
        )
    return out


def render(result: dict[str, Any]) -> None:
    rows = result["config"]["rows"]
    m = result["machine"]
    table = Table(
        title=f"dbsync pull vs pg_dump | psql - {rows:,} rows, median of "
        f"{result['config']['repeat']} ({m['nproc']} CPU, "
        f"{m.get('memory_gib')} GiB)"
    )
    table.add_column("method")
    table.add_column("rows/s", justify="right")
    table.add_column("x reference", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("worker peak RSS MB\ntree / largest", justify="right")
    table.add_column("web peak RSS MB\ntree / largest", justify="right")
    for s in result["summary"]:
        mem = s.get("peak_memory_mb")

        def cell(side: str, mem: dict | None = mem) -> str:
            if not mem:
                return "-"
            d = mem[side]
            return f"{d['tree_rss_mb']:.0f} / {d['largest_process_rss_mb']:.0f}"

        table.add_row(
            s["label"],
            f"{s['rows_per_s']:,}",
            f"{s['ratio_to_reference']:.2f}",
            f"{s['median_seconds']:.2f}",
            cell("worker"),
            cell("web"),
        )
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    lat = result.get("latency")
    if lat:
        t = Table(
            title=f"control-plane latency: {lat['clients']} clients, "
            f"{lat['requests_per_endpoint']:,} requests each"
        )
        for col in (
            "endpoint",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s",
            "p95 x bare",
            "statuses",
        ):
            t.add_column(
                col, justify="left" if col in ("endpoint", "statuses") else "right"
            )
        for name, r in lat["results"].items():
            t.add_row(
                name,
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['req_per_s']:.0f}",
                f"{r.get('p95_ratio_to_bare', 1.0):.2f}",
                json.dumps(r["statuses"]),
            )
        console.print(t)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--rows", type=int, default=1_000_000, help="rows in the table (1,000,000)"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each method (3; median)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default bench/results/<UTC time>.json)",
    )
    p.add_argument("--skip-latency", action="store_true", help="skip the latency part")
    p.add_argument(
        "--methods",
        default=",".join(k for k, _ in METHODS),
        help="comma-separated subset of: "
        + ", ".join(k for k, _ in METHODS)
        + " (the reference is always run)",
    )
    p.add_argument("--latency-requests", type=int, default=2000)
    p.add_argument("--latency-clients", type=int, default=20)
    p.add_argument(
        "--bulk-page",
        type=int,
        default=100_000,
        help="--max-records-per-request of the bulk connection",
    )
    p.add_argument(
        "--json-page",
        type=int,
        default=10_000,
        help="--max-records-per-request of the PhoenixKit-style connection",
    )
    p.add_argument(
        "--web-workers", type=int, default=2, help="gunicorn workers per site"
    )
    p.add_argument(
        "--worker-concurrency", type=int, default=2, help="Celery pool per site"
    )
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
    p.add_argument(
        "--redis-db",
        type=int,
        default=9,
        help="first of four Redis database numbers used (9, 10, 11, 12)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep the sites' logs")
    args = p.parse_args(argv)
    known = {k for k, _ in METHODS}
    args.methods = {m.strip() for m in args.methods.split(",") if m.strip()} | {
        "reference"
    }
    if args.methods - known:
        p.error(f"unknown methods: {', '.join(sorted(args.methods - known))}")
    if args.rows < 1 or args.repeat < 1 or args.latency_requests < 1:
        p.error("--rows, --repeat and --latency-requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    bench = Bench(args)
    try:
        result = bench.run()
    except BaseException:
        bench.failed = True
        raise
    finally:
        bench.cleanup()
    out = args.out or REPO / "bench" / "results" / (
        _utcnow().strftime("%Y-%m-%dT%H-%M-%SZ") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    render(result)
    console.print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
