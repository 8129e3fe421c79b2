"""Strangers at register-connection (issue 11, findings 5 and 6).

A real receiver site (gunicorn web, a Celery worker and beat, on its own
PostgreSQL database) sits behind one trusted proxy (SYNC_TRUST_FORWARDED,
one hop): the test plays the proxy and the clients behind it, writing the
X-Forwarded-For the proxy would. The stranger's URLs and the real sender are
HostilePeers on loopback, so every call the site makes is seen.

Before the fix: the leftmost X-Forwarded-For entry (and any `Forwarded`
header) chose the caller's address, so a guesser escaped the password
throttle by writing a new one each time; parallel guesses all passed the
check before any was counted; every registration with a new URL was kept
and called at once and at every verify, without limit; and the first
caller to name a sender's URL kept it, the real sender got 409 forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from shared.context import Site
from shared.control import connections
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.security import hash_token
from shared.state.models import Connection
from tests.e2e.conftest import SiteProcesses
from tests.helpers import ScratchDatabases, configure, eventually, make_settings
from tests.security.kit import HostilePeer, Seen, json_answer

pytestmark = pytest.mark.e2e

PROXY = "10.0.0.1"  # the test's web sees every call come from 127.0.0.1 anyway
LIMITS = {
    "SYNC_TRUST_FORWARDED": "true",
    "SYNC_TRUSTED_PROXY_HOPS": "1",
    "SYNC_REGISTER_PER_ADDRESS": "8",
    "SYNC_REGISTER_TOTAL": "30",
    "SYNC_REGISTER_MAX_UNCONFIRMED": "40",
    "SYNC_REGISTER_CONFIRM_SECONDS": "10",
    "SYNC_REGISTER_MAX_FAILURES": "5",
}
REAL_TOKEN = "the-real-senders-token-" + "r" * 20


class Receiver:
    """The attacked receiver: its processes and its state database."""

    def __init__(self, processes: SiteProcesses, site: Site) -> None:
        self.processes = processes
        self.site = site
        self.http = httpx.Client(base_url=f"{processes.url}/sync/api", timeout=60)

    def register(
        self,
        sender_url: str,
        *,
        caller: str,
        token: str | None = None,
        password: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "sender_url": sender_url,
            "connection_name": "stranger",
            "auth_token": token or uuid.uuid4().hex + uuid.uuid4().hex,
        }
        if password is not None:
            body["password"] = password
        return self.http.post(
            "/register-connection",
            json=body,
            # What the proxy sends on: the client's own header, plus the
            # address the proxy saw appended on the right.
            headers={"X-Forwarded-For": caller, **(headers or {})},
        )

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.site.db.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []

    def receivers(self) -> list[tuple[str, str, bool]]:
        return [
            (url, status, awaiting)
            for url, status, awaiting in self.sql(
                "SELECT site_url, status, awaiting_confirmation FROM dbsync_connections"
                " WHERE direction = 'receiver' ORDER BY site_url"
            )
        ]

    def reset(self, mode: str, password: str | None = None) -> None:
        self.sql("DELETE FROM dbsync_connections")
        self.sql("DELETE FROM dbsync_counters")
        self.sql("DELETE FROM dbsync_peer_notices")
        self.sql("DELETE FROM dbsync_audit_events")
        configure(self.site, mode=mode, password=password)


@pytest.fixture(scope="module")
def receiver(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Receiver]:
    workdir: Path = tmp_path_factory.mktemp("registrations")
    db_url = module_db_factory.create("sec_register")
    processes = SiteProcesses("receiver", workdir, db_url, 14, **LIMITS)
    settings = make_settings(db_url, SYNC_SITE_URL=processes.url)
    site = Site(settings, Database(settings.database_url), DeferredDispatcher())
    receiver = Receiver(processes, site)
    try:
        processes.start(web=True, worker=True, beat=True)
        yield receiver
    finally:
        receiver.http.close()
        processes.close()
        site.db.dispose()


@pytest.fixture
def senders() -> Iterator[Callable[..., HostilePeer]]:
    started: list[HostilePeer] = []

    def start(answer: Callable[[Seen], Any]) -> HostilePeer:
        peer = HostilePeer(answer)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


def knows(token_hash: str | None) -> Callable[[Seen], Any]:
    """A sender that knows only the connection with this token hash."""

    def answer(seen: Seen) -> Any:
        if token_hash is not None and seen.json.get("auth_token_hash") == token_hash:
            return json_answer({"success": True, "status": "active", "name": "real"})
        return json_answer({"success": False, "error": "Connection not found"}, 404)

    return answer


def test_the_caller_is_the_address_the_proxy_added(receiver: Receiver) -> None:
    """A client writes what it likes left of the proxy's entry, and a
    `Forwarded` header: neither moves it out of its throttle."""
    receiver.reset("require_password", password="the right one")
    statuses = [
        receiver.register(
            f"http://127.0.0.1:{20000 + i}",
            caller=f"203.0.113.{i}, 198.51.100.7",
            password="a guess",
            headers={"Forwarded": f"for=192.0.2.{i}"},
        )
        for i in range(7)
    ]
    assert [(r.status_code, r.json()["error"]) for r in statuses] == [
        (401, "Invalid password")
    ] * 5 + [(429, "Too many failed attempts")] * 2
    assert receiver.sql("SELECT key, count FROM dbsync_counters ORDER BY key") == [
        ("register-all", 7),
        ("register-fail:198.51.100.7", 5),
        ("register-from:198.51.100.7", 7),
    ]
    # Another address behind the proxy, with the right password, registers;
    # the address stored is the proxy's entry, never the client's own words.
    ok = receiver.register(
        "http://127.0.0.1:20100",
        caller="6.6.6.6, 198.51.100.8",
        password="the right one",
        headers={"Forwarded": "for=6.6.6.6"},
    )
    assert ok.status_code == 200, ok.text
    (ip,) = receiver.sql(
        "SELECT metadata->>'remote_ip' FROM dbsync_connections"
        " WHERE site_url = 'http://127.0.0.1:20100'"
    )
    assert ip == ("198.51.100.8",)
    # A right password gives back its place: that address has none counted.
    assert receiver.sql(
        "SELECT count FROM dbsync_counters WHERE key = 'register-fail:198.51.100.8'"
    ) == [(0,)]


def test_parallel_guesses_cannot_pass_the_limit(receiver: Receiver) -> None:
    receiver.reset("require_password", password="the right one")

    def guess(i: int) -> tuple[int, str]:
        r = receiver.register(
            f"http://127.0.0.1:{20200 + i}",
            caller="198.51.100.20",
            password=f"guess {i}",
        )
        return r.status_code, r.json()["error"]

    with ThreadPoolExecutor(20) as pool:
        answers = sorted(pool.map(guess, range(20)))
    # Exactly five guesses reach the password check; the rest wait. Those
    # past the address's 8 registrations are refused before the (costly)
    # password hash is even computed.
    assert answers[:5] == [(401, "Invalid password")] * 5
    assert (
        answers[5:]
        == [(429, "Too many failed attempts")] * 3
        + [(429, "Too many registrations")] * 12
    )
    assert receiver.sql(
        "SELECT count FROM dbsync_counters WHERE key = 'register-fail:198.51.100.20'"
    ) == [(5,)]
    assert receiver.receivers() == []


def test_registrations_are_limited_per_address_and_in_total(
    receiver: Receiver, senders: Callable[..., HostilePeer]
) -> None:
    """auto_accept: each registration makes the site call the URL; a stranger
    gets 8 from one address, 30 from many, and the site calls only those."""
    receiver.reset("auto_accept")
    stranger = senders(knows(None))
    first = [
        receiver.register(f"{stranger.url}/a{i}", caller="198.51.100.30")
        for i in range(9)
    ]
    assert [r.status_code for r in first] == [200] * 8 + [429]
    assert first[-1].json()["error"] == "Too many registrations"
    assert int(first[-1].headers["retry-after"]) > 3000
    # Others behind the proxy still register, until the site's total.
    others = [
        receiver.register(f"{stranger.url}/b{i}", caller=f"198.51.100.{100 + i}")
        for i in range(23)
    ]
    assert [r.status_code for r in others] == [200] * 22 + [429]
    assert others[-1].json()["error"] == "Too many registrations"
    # Each was polled once, answered 404, and dropped: its URL is free, and no
    # verify calls it again.
    eventually(lambda: receiver.receivers() == [], timeout=60)
    eventually(lambda: len(stranger.requests) == 30, timeout=30)
    polled = sorted(seen.path.rsplit("/sync/api/", 1)[0] for seen in stranger.requests)
    assert polled == sorted(
        [f"/a{i}" for i in range(8)] + [f"/b{i}" for i in range(22)]
    )
    assert set(stranger.endpoints()) == {"get-connection-status"}
    assert receiver.sql(
        "SELECT count(*) FROM dbsync_audit_events WHERE action = 'connection.dropped'"
    ) == [(30,)]


def test_a_stranger_cannot_keep_the_real_senders_url(
    receiver: Receiver, senders: Callable[..., HostilePeer]
) -> None:
    """The stranger registers the real sender's URL first; the sender answers
    404 for a token it never made, so the row is dropped and the real
    registration then succeeds and stays, confirmed."""
    receiver.reset("auto_accept")
    real_hash = hash_token(REAL_TOKEN)
    sender = senders(knows(real_hash))
    taken = receiver.register(sender.url, caller="198.51.100.40")
    assert taken.status_code == 200, taken.text
    eventually(lambda: receiver.receivers() == [], timeout=30)
    real = receiver.register(sender.url, caller="198.51.100.41", token=REAL_TOKEN)
    assert real.status_code == 200, real.text
    eventually(
        lambda: receiver.receivers() == [(sender.url, "active", False)], timeout=30
    )
    with receiver.site.db.session() as session:
        conn = session.get_one(Connection, uuid.UUID(real.json()["connection_uuid"]))
        assert conn.auth_token_hash == real_hash
    assert sender.endpoints()[:2] == ["get-connection-status"] * 2


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, {"success": False}), (404, {"errors": {"detail": "Not Found"}})],
    ids=["unavailable", "not-the-protocol"],
)
def test_an_unanswered_registration_is_dropped_in_time(
    receiver: Receiver,
    senders: Callable[..., HostilePeer],
    status: int,
    body: dict[str, Any],
) -> None:
    """A URL that never confirms (503 to every poll, or a web server's own
    404 page: no answer of the protocol) is dropped after
    SYNC_REGISTER_CONFIRM_SECONDS (10 here), and its URL is free again."""
    receiver.reset("auto_accept")
    silent = senders(lambda seen: json_answer(body, status))
    answer = receiver.register(silent.url, caller="198.51.100.50")
    assert answer.status_code == 200, answer.text
    assert receiver.receivers() == [(silent.url, "active", True)]
    eventually(lambda: silent.requests, timeout=20)
    assert receiver.receivers() == [(silent.url, "active", True)]
    eventually(lambda: receiver.receivers() == [], timeout=40)
    (reason,) = receiver.sql(
        "SELECT reason FROM dbsync_audit_events WHERE action = 'connection.dropped'"
    )
    assert reason == ("the sender did not confirm the token in time",)
    assert receiver.register(silent.url, caller="198.51.100.50").status_code == 200


def test_pending_registrations_are_capped(
    receiver: Receiver, senders: Callable[..., HostilePeer]
) -> None:
    """require_approval: unconfirmed rows stop at the cap (40; 37 are there
    from earlier strangers); approving a stranger's row asks its URL, whose
    404 drops it."""
    receiver.reset("require_approval")
    stranger = senders(knows(None))
    with receiver.site.db.session() as session:
        for i in range(37):
            session.add(
                Connection(
                    name=f"earlier {i}",
                    direction="receiver",
                    site_url=f"{stranger.url}/earlier{i}",
                    auth_token_hash=hash_token(f"earlier {i}"),
                    status="pending",
                    awaiting_confirmation=True,
                    meta={},
                )
            )
    answers = [
        receiver.register(f"{stranger.url}/p{i}", caller=f"198.51.100.{60 + i}")
        for i in range(4)
    ]
    assert [r.status_code for r in answers] == [200] * 3 + [429]
    assert answers[-1].json()["error"] == (
        "Too many registrations awaiting confirmation"
    )
    assert int(answers[-1].headers["retry-after"]) == 10
    assert stranger.requests == []  # nothing is asked before approval
    with receiver.site.db.session() as session:
        connections.approve(
            session,
            receiver.site,
            connections.get(session, answers[0].json()["connection_uuid"]),
        )
    # The worker's outbox sweep delivers the poll the approval owes.
    eventually(lambda: len(receiver.receivers()) == 39, timeout=60)
    assert [seen.path.split("/sync/api/")[0] for seen in stranger.requests] == ["/p0"]
    assert stranger.endpoints() == ["get-connection-status"]
    assert (f"{stranger.url}/p0",) not in [(url,) for url, _, _ in receiver.receivers()]
