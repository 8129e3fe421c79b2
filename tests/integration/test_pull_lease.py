"""A pull's lease: held by a heartbeat through long pages, a fence for every page.

Two sites on two real PostgreSQL databases; the receiver reaches the sender's
app in-process through httpx's WSGI transport. A short lease (3 s, renewed
every second) stands for the default 30 s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text, update

from api.app import create_app
from shared.context import Site
from shared.control.peer import PeerClient
from shared.data.receiver import checkpoints, pulls
from shared.data.receiver.writer import Writer
from shared.data.sender.offer import Catalog
from shared.db import Database, utcnow
from shared.dispatch import DeferredDispatcher
from shared.state.models import Base, Connection, Transfer
from tests.helpers import (
    ScratchDatabases,
    make_settings,
    open_to_peer,
    run,
    select_rows,
)

SENDER_URL = "http://127.0.0.1:18995"
RECEIVER_URL = "http://127.0.0.1:18996"
TOKEN_HASH = hashlib.sha256(b"lease-test-token").hexdigest()
LEASE = {"SYNC_PULL_LEASE_SECONDS": "3", "SYNC_PULL_HEARTBEAT_SECONDS": "1"}
ROWS, PAGE = 2000, 500
TABLE = f"""
CREATE TABLE t (id bigint PRIMARY KEY, label text NOT NULL);
INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g;
"""


@pytest.fixture(scope="module")
def database_urls(module_db_factory: ScratchDatabases) -> tuple[str, str]:
    return (
        module_db_factory.create("lease_s", migrate=True),
        module_db_factory.create("lease_r", migrate=True),
    )


@dataclasses.dataclass
class Pair:
    sender: Site
    receiver: Site

    @property
    def dst(self) -> Engine:
        return self.receiver.db.data_engine

    def peer(self) -> PeerClient:
        transport = httpx.WSGITransport(app=create_app(self.sender))
        return PeerClient(self.receiver.settings, transport=transport)

    def start_pull(self) -> uuid.UUID:
        with self.receiver.db.session() as session:
            conn = session.query(Connection).one()
            return pulls.start(session, self.receiver, conn, ["t"]).id

    def transfer(self, tid: uuid.UUID) -> Transfer:
        with self.receiver.db.session() as session:
            return session.get_one(Transfer, tid)

    def take_over(self, tid: uuid.UUID, owner: str) -> None:
        """What another worker's claim does once it finds the lease lapsed."""
        with self.receiver.db.session() as session:
            session.execute(
                update(Transfer)
                .where(Transfer.id == tid)
                .values(
                    lease_owner=owner, lease_until=utcnow() + dt.timedelta(seconds=60)
                )
            )


@pytest.fixture
def pair(database_urls: tuple[str, str]) -> Iterator[Pair]:
    sites = []
    for url, own, peer, direction in (
        (database_urls[0], SENDER_URL, RECEIVER_URL, "sender"),
        (database_urls[1], RECEIVER_URL, SENDER_URL, "receiver"),
    ):
        site = Site(
            make_settings(url, SYNC_SITE_URL=own, **LEASE),
            Database(url),
            DeferredDispatcher(),
        )
        own_tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with site.db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {own_tables} RESTART IDENTITY CASCADE"))
            conn.execute(text("DROP TABLE IF EXISTS t"))
            conn.execute(text(f"DROP TABLE IF EXISTS {checkpoints.CHECKPOINT_TABLE}"))
        open_to_peer(site, direction, peer, TOKEN_HASH, max_records_per_request=PAGE)
        sites.append(site)
    pair = Pair(sites[0], sites[1])
    run(pair.sender.db.data_engine, TABLE)
    run(pair.dst, TABLE.split(";")[0])
    yield pair
    for site in sites:
        site.db.dispose()


def checksum(engine: Engine) -> str:
    return Catalog(engine, checksum_row_limit=10**9).checksum("t")


def on_page(monkeypatch: pytest.MonkeyPatch, hook: Any) -> list[int]:
    """Call ``hook(n)`` inside the n-th page's transaction, after its rows."""
    applied: list[int] = []
    real = Writer.apply

    def apply(self: Writer, conn: Any, page: Any, *, direct: bool = False) -> Any:
        result = real(self, conn, page, direct=direct)
        applied.append(len(applied) + 1)
        hook(len(applied))
        return result

    monkeypatch.setattr(Writer, "apply", apply)
    return applied


def lease_until(pair: Pair, tid: uuid.UUID) -> dt.datetime:
    until = pair.transfer(tid).lease_until
    assert until is not None
    return until


def test_the_lease_is_held_through_a_page_longer_than_the_lease(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = pair.start_pull()
    seen: list[tuple[bool, bool]] = []

    def slow(n: int) -> None:
        if n != 2:
            return
        # Stay in the page until the lease it started with would have lapsed
        # twice over: only the heartbeat can keep it held.
        first = lease_until(pair, tid)
        while utcnow() < first + dt.timedelta(seconds=2 * 3):
            time.sleep(0.2)
        taken = pulls.claim(pair.receiver, tid, "another-worker")
        seen.append((taken, lease_until(pair, tid) > utcnow()))

    on_page(monkeypatch, slow)
    assert pulls.run(pair.receiver, pair.peer(), str(tid), "me").state == "completed"
    assert seen == [(False, True)]
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created) == (ROWS, ROWS)
    assert (done.lease_owner, done.lease_until) == (None, None)
    assert checksum(pair.dst) == checksum(pair.sender.db.data_engine)


def test_a_run_whose_lease_was_taken_over_writes_nothing_more(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = pair.start_pull()

    def taken_during_page_3(n: int) -> None:
        if n == 3:
            pair.take_over(tid, "successor")

    applied = on_page(monkeypatch, taken_during_page_3)
    assert pulls.run(pair.receiver, pair.peer(), str(tid), "me").state == "superseded"
    assert applied == [1, 2, 3]
    # Page 3 was written, then rolled back with its checkpoint: two pages stay.
    assert select_rows(pair.dst, "SELECT count(*), max(id) FROM t") == [
        (2 * PAGE, 2 * PAGE)
    ]
    with pair.dst.connect() as conn:
        cp = checkpoints.load(conn, str(tid), "t")
    assert (cp.pages, cp.rows_done, cp.done) == (2, 2 * PAGE, False)
    stopped = pair.transfer(tid)
    assert (stopped.lease_owner, stopped.status) == ("successor", "running")
    assert stopped.records_transferred == 2 * PAGE

    # The successor resumes from the checkpoint: no page doubled or lost.
    monkeypatch.undo()
    outcome = pulls.run(pair.receiver, pair.peer(), str(tid), "successor")
    assert outcome.state == "completed"
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created) == (ROWS, ROWS)
    assert select_rows(pair.dst, "SELECT count(*), count(DISTINCT id) FROM t") == [
        (ROWS, ROWS)
    ]
    assert checksum(pair.dst) == checksum(pair.sender.db.data_engine)


def test_a_run_stops_when_the_heartbeat_finds_its_lease_taken(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = pair.start_pull()

    # Taken over between pages: the heartbeat notices before page 2 starts.
    real_progress = pulls._Job._progress

    def progress(self: pulls._Job, name: str, cp: Any, status: str) -> None:
        real_progress(self, name, cp, status)
        if cp.pages == 1:
            pair.take_over(tid, "successor")
            deadline = time.monotonic() + 30
            while not self.lease.lost.is_set() and time.monotonic() < deadline:
                time.sleep(0.1)

    monkeypatch.setattr(pulls._Job, "_progress", progress)
    applied = on_page(monkeypatch, lambda n: None)
    assert pulls.run(pair.receiver, pair.peer(), str(tid), "me").state == "superseded"
    # The heartbeat saw it: the run stopped before asking for page 2.
    assert applied == [1]
    assert select_rows(pair.dst, "SELECT count(*) FROM t") == [(PAGE,)]
    assert pair.transfer(tid).lease_owner == "successor"


def test_a_run_whose_checkpoint_moved_stops_before_writing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stalled past its lease finds another's page in the checkpoint."""
    tid = pair.start_pull()
    real_progress = pulls._Job._progress

    def progress(self: pulls._Job, name: str, cp: Any, status: str) -> None:
        real_progress(self, name, cp, status)
        if cp.pages == 1:
            # What a successor's page leaves behind, as this run cannot see it.
            with pair.dst.begin() as conn:
                conn.execute(
                    checkpoints.checkpoints.update().values(
                        pages=checkpoints.checkpoints.c.pages + 1
                    )
                )

    monkeypatch.setattr(pulls._Job, "_progress", progress)
    applied = on_page(monkeypatch, lambda n: None)
    assert pulls.run(pair.receiver, pair.peer(), str(tid), "me").state == "superseded"
    assert applied == [1]
    assert select_rows(pair.dst, "SELECT count(*) FROM t") == [(PAGE,)]


def test_orphaned_finds_held_leases_whose_heartbeat_stopped(pair: Pair) -> None:
    live, dead, lapsed, waiting = (pair.start_pull() for _ in range(4))
    now = utcnow()
    with pair.receiver.db.session() as session:
        for tid, owner, until in (
            (live, "alive", now + dt.timedelta(seconds=3)),
            (dead, "dead", now + dt.timedelta(seconds=0.5)),
            (lapsed, "dead", now - dt.timedelta(seconds=1)),
            # A retrying transfer's lease is its retry time, held by nobody.
            (waiting, None, now - dt.timedelta(seconds=1)),
        ):
            session.execute(
                update(Transfer)
                .where(Transfer.id == tid)
                .values(status="running", lease_owner=owner, lease_until=until)
            )
    found = dict(pulls.orphaned(pair.receiver))
    assert sorted(found) == sorted([str(dead), str(lapsed)])
    assert 0 < found[str(dead)] <= 0.5
    assert found[str(lapsed)] == 0
    assert pulls.due(pair.receiver, grace_seconds=0) == [str(waiting)]
