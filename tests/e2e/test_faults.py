"""Faults a pair of sites survives, each on real processes, each ending with
the pull exact (the sender's row count and checksum, every page written once):

- the receiver's PostgreSQL, then the sender's, restarted mid-pull;
- Redis restarted while status changes and a pull wait on it;
- the link between the sites cut mid-page, and slowed;
- the receiver's pull worker killed with SIGKILL at 10 random moments of a pull.

One sender serves two receivers for the whole module, every site run as the
Procfile runs it. The sender and the first receiver keep their state and data
in PostgreSQL clusters of the module's own, all three sites use a Redis server
of its own, and the receivers reach the sender through a TCP proxy of its own:
the things a test breaks are never the servers other tests use.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from shared.data.sender.offer import Catalog
from tests.e2e.conftest import SiteProcesses
from tests.e2e.faults import PgCluster, RedisServer, TcpProxy, fill
from tests.e2e.operator import spawn_role
from tests.helpers import ScratchDatabases, eventually, free_port

pytestmark = pytest.mark.e2e

ROWS = 60_000
# The first receiver's connection serves small pages: a restart, a cut or a
# kill must be able to land between pages of tables of this size.
SMALL_PAGE = 1000
COPY_MEDIA = b"vnd.dbsync.pgcopy"  # in both COPY formats' content types


class Clock:
    """Seconds since a test's fault began, noted at each step, for the figures."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.laps: list[str] = []

    def lap(self, step: str) -> None:
        self.laps.append(f"{step} {time.monotonic() - self.began:.1f}s")

    def __str__(self) -> str:
        return ", ".join(self.laps)


@dataclass
class Faulty:
    sender_pg: PgCluster
    receiver_pg: PgCluster
    redis: RedisServer
    proxy: TcpProxy
    sender: SiteProcesses
    receiver: SiteProcesses  # state and data on receiver_pg; small pages
    plain: SiteProcesses  # on the shared PostgreSQL; a connection with no options
    receiver_conn: str  # the receivers' ids of their connections to the sender
    plain_conn: str


def connection(site: SiteProcesses, direction: str, url: str) -> dict[str, Any]:
    """The site's one connection with this peer URL, read from its database."""
    [(conn_id, status, reason, remote, peer_sync)] = site.sql(
        "SELECT id, status, suspended_reason, remote_status, peer_sync_status "
        "FROM dbsync_connections WHERE direction = :direction AND site_url = :url",
        direction=direction,
        url=url,
    )
    return {
        "id": str(conn_id),
        "status": status,
        "suspended_reason": reason,
        "remote_status": remote,
        "peer_sync": peer_sync,
    }


def active(site: SiteProcesses, direction: str, url: str) -> bool:
    found = site.sql(
        "SELECT status FROM dbsync_connections "
        "WHERE direction = :direction AND site_url = :url",
        direction=direction,
        url=url,
    )
    return found == [("active",)]


def pair(
    *pairs: tuple[SiteProcesses, SiteProcesses, tuple[str, ...]],
) -> list[tuple[str, str]]:
    """Connect each (sender, receiver, options) at once; return the sender's
    and the receiver's connection ids of each once all are active."""
    for sender, receiver, options in pairs:
        sender.cli(
            "connections",
            "create",
            "--name",
            f"to-{receiver.name}",
            "--url",
            receiver.env["SYNC_SITE_URL"],  # the URL the receiver calls itself
            "--offer-new-tables",  # each test makes its tables after pairing
            *options,
        )
    ids = []
    for sender, receiver, _ in pairs:
        known_as = sender.env["SYNC_SITE_URL"]  # what the receiver calls it
        # A receiver's get-connection-status names the URL it calls itself,
        # which must be the URL the sender stored for it.
        receiver_url = receiver.env["SYNC_SITE_URL"]
        eventually(partial(active, sender, "sender", receiver_url), timeout=60)
        eventually(partial(active, receiver, "receiver", known_as), timeout=60)
        ids.append(
            (
                connection(sender, "sender", receiver_url)["id"],
                connection(receiver, "receiver", known_as)["id"],
            )
        )
    return ids


def up(site: SiteProcesses) -> None:
    site.cli("settings", "set", "enabled", "true")
    site.cli("settings", "set", "incoming_mode", "auto_accept")
    site.start()


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Faulty]:
    clock = Clock()
    work: Path = tmp_path_factory.mktemp("faults")
    with contextlib.ExitStack() as stack:
        sender_pg = PgCluster("sender")
        stack.callback(sender_pg.close)
        receiver_pg = PgCluster("receiver")
        stack.callback(receiver_pg.close)
        redis = RedisServer()
        stack.callback(redis.close)
        proxy = TcpProxy()
        stack.callback(proxy.close)
        clock.lap("servers")
        broker = {"SYNC_BROKER_URL": f"{redis.url}/0"}
        sites = {
            "sender": partial(
                SiteProcesses,
                "sender",
                work,
                sender_pg.create_database("dbsync_fault_sender"),
                0,
                # Peers know the sender by the proxy's address, so every call
                # a receiver makes to it goes through the proxy.
                SYNC_SITE_URL=proxy.url,
                # list-tables checksums every table up to this many rows on
                # each pull's plan; the module's tables of 60,000 rows would
                # soon make it outlast the e2e sites' 5 s HTTP timeout.
                SYNC_CHECKSUM_ROW_LIMIT="1000",
                **broker,
            ),
            "receiver": partial(
                SiteProcesses,
                "receiver",
                work,
                receiver_pg.create_database("dbsync_fault_receiver"),
                0,
                # A short lease: a run that died is taken up within seconds.
                SYNC_PULL_LEASE_SECONDS="4",
                **broker,
            ),
            "plain": partial(
                SiteProcesses,
                "plain",
                work,
                module_db_factory.create("fault_plain"),
                0,
                **broker,
            ),
        }
        with ThreadPoolExecutor(3) as pool:
            made = dict(zip(sites, pool.map(lambda make: make(), sites.values())))
            for site in made.values():
                stack.callback(site.close)
            sender, receiver, plain = made["sender"], made["receiver"], made["plain"]
            proxy.upstream_port = sender.port
            list(pool.map(up, made.values()))
        clock.lap("sites up")
        [(_, receiver_conn), (_, plain_conn), _] = pair(
            # Small pages, so the faults can land between pages (SMALL_PAGE).
            (sender, receiver, ("--max-records-per-request", str(SMALL_PAGE))),
            (sender, plain, ()),
            # The other way too, for the status changes of the Redis test.
            (plain, sender, ()),
        )
        clock.lap("paired")
        print(f"\n[faults] three sites ({clock})")
        yield Faulty(
            sender_pg,
            receiver_pg,
            redis,
            proxy,
            sender,
            receiver,
            plain,
            receiver_conn,
            plain_conn,
        )


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, faulty: Faulty) -> Iterator[None]:
    began = time.monotonic()
    yield
    print(f"[faults] {request.node.name}: {time.monotonic() - began:.1f}s")
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for site in (faulty.sender, faulty.receiver, faulty.plain):
            print(site.logs())


# ---------------------------------------------------------------- pulls


def checksum(site: SiteProcesses, table: str) -> str:
    engine = create_engine(site.db_url)
    try:
        return Catalog(engine, checksum_row_limit=10**9).checksum(table)
    finally:
        engine.dispose()


def pull(receiver: SiteProcesses, conn_id: str, table: str) -> str:
    """Queue a pull of ``table``, created on the receiver; return its transfer id."""
    return str(receiver.cli_json("pull", conn_id, table, "--create-missing")["id"])


def progress(receiver: SiteProcesses, transfer_id: str) -> dict[str, Any] | None:
    """The transfer as the receiver's state database has it (None while that
    database does not answer)."""
    try:
        [(status, attempts, rows, owner)] = receiver.sql(
            "SELECT status, attempts, records_transferred, lease_owner "
            "FROM dbsync_transfers WHERE id = :id",
            id=transfer_id,
        )
    except Exception as ex:  # the database is down: that is the fault
        if "OperationalError" not in type(ex).__name__:
            raise
        return None
    return {"status": status, "attempts": attempts, "rows": rows, "owner": owner}


def finished(
    receiver: SiteProcesses, transfer_id: str, timeout: float = 120
) -> dict[str, Any]:
    def done() -> bool:
        now = progress(receiver, transfer_id)
        return now is not None and now["status"] in ("completed", "failed")

    eventually(done, timeout=timeout, every=0.5)
    return receiver.cli_json("transfers", "show", transfer_id)


def assert_exact(
    sender: SiteProcesses,
    receiver: SiteProcesses,
    done: dict[str, Any],
    table: str,
    rows: int,
    page: int,
) -> None:
    """The pull completed with the sender's rows, each page written once."""
    assert done["status"] == "completed", done
    assert (
        done["records_transferred"],
        done["records_created"],
        done["records_updated"],
        done["records_skipped"],
        done["records_failed"],
    ) == (rows, rows, 0, 0, 0), done
    [t] = done["tables"]
    pages = -(-rows // page)
    assert (t["table"], t["status"], t["pages"], t["rows_done"], t["created"]) == (
        table,
        "completed",
        pages,
        rows,
        rows,
    ), t
    assert receiver.sql(f"SELECT count(*), count(DISTINCT id) FROM {table}") == [
        (rows, rows)
    ]
    assert checksum(receiver, table) == checksum(sender, table)


def rows_at_least(receiver: SiteProcesses, transfer_id: str, rows: int) -> bool:
    now = progress(receiver, transfer_id)
    assert now is None or now["status"] != "failed", now
    return now is not None and now["rows"] >= rows


def answers(port: int) -> bool:
    try:
        status = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code
    except httpx.HTTPError:
        return False
    return status == 200


def idle_sender(sender: SiteProcesses) -> bool:
    """No session of the sender's web is left inside a page (a COPY, a
    transaction) once the pulls are over."""
    return sender.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state NOT IN ('idle')"
    ) == [(0,)]


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("side", ["receiver", "sender"])
def test_a_postgresql_restarted_mid_pull(faulty: Faulty, side: str) -> None:
    f = faulty
    table = f"restart_{side}"
    cluster = f.receiver_pg if side == "receiver" else f.sender_pg
    fill(f.sender, table, ROWS)
    clock = Clock()
    transfer = pull(f.receiver, f.receiver_conn, table)
    eventually(lambda: rows_at_least(f.receiver, transfer, 5000), 60, every=0.05)
    at = progress(f.receiver, transfer)
    assert at is not None and at["status"] == "running" and at["rows"] < ROWS
    clock.lap(f"restart at {at['rows']} rows")
    cluster.restart(down_seconds=2)
    clock.lap("up again")
    done = finished(f.receiver, transfer)
    clock.lap("completed")
    assert_exact(f.sender, f.receiver, done, table, ROWS, SMALL_PAGE)
    # The restart ended the run it caught; a later one finished the pull.
    assert done["attempts"] >= 2, done
    eventually(lambda: idle_sender(f.sender))
    print(
        f"[faults] {side}'s PostgreSQL restarted mid-pull: exact after "
        f"{done['attempts']} runs ({clock})"
    )


# ---------------------------------------------------------------- Redis


def test_redis_restarted_with_status_changes_and_a_pull_queued(
    faulty: Faulty,
) -> None:
    """Every message on the broker is lost; the databases re-drive them."""
    f = faulty
    sender, plain = f.sender, f.plain
    forth = connection(sender, "sender", plain.url)["id"]
    back = connection(plain, "sender", f.proxy.url)["id"]  # plain sends to sender
    fill(sender, "queued", ROWS)
    clock = Clock()

    # No worker takes anything: the changes and the pull wait on the broker.
    sender.stop("worker")
    plain.stop("worker")
    sender.cli("connections", "suspend", forth, "--reason", "maintenance")
    sender.cli("connections", "reactivate", forth)
    plain.cli("connections", "suspend", back, "--reason", "going away")
    transfer = pull(plain, f.plain_conn, "queued")
    queues = {
        "sender peer": f"{sender.queue_prefix}peer",
        "plain peer": f"{plain.queue_prefix}peer",
        "plain pull": f"{plain.queue_prefix}pull",
    }
    waiting = {name: f.redis.queued(q) for name, q in queues.items()}
    notice, run = "dbsync.deliver_notice", "dbsync.run_pull"
    assert waiting["sender peer"].count(notice) == 2, waiting  # suspend, reactivate
    assert waiting["plain peer"].count(notice) == 1, waiting
    assert waiting["plain pull"] == [run], waiting
    assert connection(sender, "sender", plain.url)["peer_sync"] == "queued"
    assert connection(plain, "sender", f.proxy.url)["peer_sync"] == "queued"
    clock.lap("3 notices and a pull queued")

    f.redis.restart(down_seconds=1)
    left = [t for q in queues.values() for t in f.redis.queued(q)]
    assert notice not in left and run not in left, left
    clock.lap("Redis restarted")
    sender.start(web=False, worker=True, beat=False)
    plain.start(web=False, worker=True, beat=False)
    clock.lap("workers started")

    # Beat's sweep finds the notices in the outbox and sends them again.
    eventually(
        lambda: connection(sender, "receiver", plain.url)["status"] == "suspended",
        timeout=60,
    )
    at_sender = connection(sender, "receiver", plain.url)
    assert at_sender["suspended_reason"] == "Suspended by the peer site"
    assert at_sender["remote_status"] == "suspended"
    eventually(
        lambda: connection(plain, "sender", f.proxy.url)["peer_sync"] == "delivered"
    )
    eventually(
        lambda: connection(sender, "sender", plain.url)["peer_sync"] == "delivered"
    )
    at_plain = connection(plain, "receiver", f.proxy.url)
    assert (at_plain["status"], at_plain["remote_status"]) == ("active", "active")
    clock.lap("changes delivered")
    # The pull's message went with the broker; its transfer row brought it back.
    done = finished(plain, transfer)
    clock.lap("pull completed")
    assert_exact(sender, plain, done, "queued", ROWS, 100_000)
    # Beat lived through the broker's restart on both sites, and took its
    # lock and schedule on the broker again.
    for site in (sender, plain):
        assert site.procs["beat"].poll() is None, site.name
        beat_log = (site.home / "beat.log").read_text()
        assert "lock taken again, schedule installed again" in beat_log
    print(f"[faults] Redis restarted: every change delivered, pull exact ({clock})")


# ---------------------------------------------------------------- the link


def test_the_link_cut_mid_page(faulty: Faulty) -> None:
    """A connection with no options: 100,000-row pages; the second one is cut."""
    f = faulty
    rows = 120_000
    fill(f.sender, "cut", rows)
    f.proxy.cut_body(COPY_MEDIA, after_bytes=1_000_000, skip=1)
    clock = Clock()
    done = finished(f.plain, pull(f.plain, f.plain_conn, "cut"))
    clock.lap("completed")
    assert f.proxy.cuts == 1 and not f.proxy.armed()
    assert_exact(f.sender, f.plain, done, "cut", rows, 100_000)
    # The cut ended one run; a later one asked for the second page again.
    assert done["attempts"] >= 2, done
    eventually(lambda: idle_sender(f.sender))
    print(f"[faults] link cut 1 MB into page 2 of 2: exact ({clock})")


def test_a_slow_link(faulty: Faulty) -> None:
    """A 100,000-row page (about 8.8 MB here) at 500 kB/s streams for far
    longer than the sender's web server lets a request run without a sign of
    life; it must still arrive whole, in one run."""
    f = faulty
    sender = f.sender
    rate = 500_000
    # A second web of the sender, its gunicorn timeout at 5 s: it stands for
    # the 30 s default, so the page outlasts it in a test of seconds. The
    # timeout is an operator's setting (GUNICORN_CMD_ARGS); the proxy sends
    # the receivers to this web for the test.
    port = free_port()
    env = {**sender.env, "PORT": str(port), "GUNICORN_CMD_ARGS": "--timeout 5"}
    web = spawn_role("web", env, sender.home / "run", sender.home / "web-5s.log")
    try:
        fill(sender, "slow", ROWS)
        eventually(partial(answers, port), timeout=30)
        f.proxy.reroute(port)
        f.proxy.throttle(rate)
        passed = f.proxy.answer_bytes
        began = time.monotonic()
        done = finished(f.plain, pull(f.plain, f.plain_conn, "slow"), timeout=90)
        took = time.monotonic() - began
        passed = f.proxy.answer_bytes - passed
    finally:
        f.proxy.throttle(None)
        f.proxy.reroute(sender.port)
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
    assert_exact(sender, f.plain, done, "slow", ROWS, 100_000)
    assert passed > 5_000_000 and took >= passed / rate - 1, (passed, took)
    # The page was served once, whole: no worker was taken for a hung one.
    served = (sender.home / "web-5s.log").read_text()
    assert served.count('"POST /sync/api/pull-data HTTP/1.1" 200') == 1
    assert "WORKER TIMEOUT" not in served
    print(
        f"[faults] slow link: {passed / 1e6:.1f} MB at {rate / 1e3:.0f} kB/s "
        f"in {took:.1f}s, one run, exact"
    )


# ---------------------------------------------------------------- SIGKILL


def test_the_pull_worker_killed_at_ten_random_moments(faulty: Faulty) -> None:
    f = faulty
    receiver = f.receiver
    rows = 80_000
    fill(f.sender, "killed", rows)
    seed = int(os.environ.get("DBSYNC_FAULT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    # Each moment: once a fresh run holds the pull, after it wrote this many
    # pages (0: it may still be planning or opening its first page), this
    # much later (up to a few pages). The 80 pages outlast the ten moments.
    moments = [(rng.randint(0, 3), round(rng.uniform(0, 0.1), 3)) for _ in range(10)]
    print(f"\n[faults] seed {seed} (DBSYNC_FAULT_SEED to replay): {moments}")
    clock = Clock()
    transfer = pull(receiver, f.receiver_conn, "killed")
    killed_at = []
    owner = None
    for pages, delay in moments:
        # A run of the worker now up holds the pull.
        def taken(previous: str | None = owner) -> dict[str, Any] | None:
            now = progress(receiver, transfer)
            if now and now["status"] == "running" and now["owner"] != previous:
                return now if now["owner"] else None
            return None

        resumed = eventually(taken, timeout=60, every=0.05)
        clock.lap(f"run {len(killed_at) + 1} from {resumed['rows']}")
        eventually(
            lambda at=resumed["rows"] + pages * SMALL_PAGE: rows_at_least(
                receiver, transfer, at
            ),
            timeout=60,
            every=0.02,
        )
        time.sleep(delay)
        receiver.stop("worker", sig=signal.SIGKILL)
        now = progress(receiver, transfer)
        assert now is not None and now["status"] == "running", now
        assert now["rows"] < rows, now
        killed_at.append(now["rows"])
        owner = now["owner"]
        receiver.start(web=False, worker=True, beat=False)
    done = finished(receiver, transfer)
    clock.lap("completed")
    assert_exact(f.sender, receiver, done, "killed", rows, SMALL_PAGE)
    print(
        f"[faults] SIGKILL at {killed_at} rows: exact after {done['attempts']} "
        f"runs ({clock})"
    )
