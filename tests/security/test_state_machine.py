"""A receiver holding one valid token attacks its sender's connection state.

Issue 12, findings 1-3: the sender's operator owns the connection's state.
One real sender (gunicorn) for the module; each test pairs fresh connections
with it and plays the hostile receiver over HTTP.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.control import connections, healing
from shared.errors import SyncError
from tests.helpers import ScratchDatabases
from tests.security.hostile_receiver import (
    Receiver,
    Sender,
    accepted,
    gone,
    receiver_url,
    refused,
    run_sender,
)

pytestmark = pytest.mark.e2e

NOT_ACTIVE = {"success": False, "error": "Connection is not active"}
NOT_FOUND = {"success": False, "error": "Connection not found"}
SUSPENDED_HERE = {"success": False, "error": "Connection was suspended by this site"}


@pytest.fixture(scope="module")
def sender(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Sender]:
    workdir: Path = tmp_path_factory.mktemp("state")
    yield from run_sender(workdir, module_db_factory.create("state_sender"), 11)


class Pairs:
    """Pair fresh connections with the sender, as two sites pair."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._receivers: list[Receiver] = []

    def __call__(self, **options: object) -> tuple[uuid.UUID, Receiver]:
        """An active connection: the receiver accepted the registration, then
        asked for the connection's status."""
        url = receiver_url()
        conn_id, token = self._sender.create(url, **options)
        assert self._sender.deliver_registration(accepted) == "delivered"
        receiver = Receiver(self._sender, url, token)
        self._receivers.append(receiver)
        r = receiver.poll()
        assert (r.status_code, r.json()["status"]) == (200, "active"), r.text
        return conn_id, receiver

    def many(self, count: int) -> list[tuple[uuid.UUID, Receiver]]:
        """Active connections made the short way (for the races): created as
        the operator creates them, in one transaction, their rows then set as
        pairing leaves them."""
        made = []
        with self._sender.site.db.session() as session:
            for _ in range(count):
                url = receiver_url()
                conn, token = connections.create_sender(
                    session, self._sender.site, name="raced", url=url
                )
                conn.status, conn.registration_status = "active", "registered"
                conn.approved_at = conn.created_at
                made.append((conn.id, Receiver(self._sender, url, token)))
        self._sender.site.dispatcher.notices.clear()  # type: ignore[attr-defined]
        self._receivers.extend(receiver for _, receiver in made)
        return made

    def close(self) -> None:
        for receiver in self._receivers:
            receiver.close()


@pytest.fixture
def pair(sender: Sender) -> Iterator[Pairs]:
    pairs = Pairs(sender)
    yield pairs
    pairs.close()


def test_a_receiver_cannot_lift_a_suspension_made_here(
    sender: Sender, pair: Pairs
) -> None:
    # The operator suspends with the CLI; the receiver says "active".
    conn_id, receiver = pair()
    sender.processes.cli(
        "connections", "suspend", str(conn_id), "--reason", "caught exfiltrating"
    )
    r = receiver.update_status("active")
    assert (r.status_code, r.json()) == (409, SUSPENDED_HERE)
    r = receiver.list_tables()
    assert (r.status_code, r.json()) == (403, NOT_ACTIVE)
    assert sender.row(conn_id, "status", "suspended_reason") == (
        "suspended",
        "caught exfiltrating",
    )
    assert ("peer", "connection.reactivated") not in sender.actions(conn_id)
    # Saying "suspended" first, then "active", does not make it the peer's.
    assert receiver.update_status("suspended").status_code == 200
    r = receiver.update_status("active")
    assert (r.status_code, r.json()) == (409, SUSPENDED_HERE)
    assert receiver.list_tables().status_code == 403

    # Verify suspended it (the receiver's side answered 404 twice).
    conn_id, receiver = pair()
    with closing(sender.client(gone)) as client:
        assert healing.verify(sender.site, client, str(conn_id)) == "not_found"
        assert healing.verify(sender.site, client, str(conn_id)) == "suspended"
    r = receiver.update_status("active")
    assert (r.status_code, r.json()) == (409, SUSPENDED_HERE)
    assert receiver.list_tables().status_code == 403
    assert sender.row(conn_id, "status")[0] == "suspended"

    # Expiry: "active" from the peer does not bring it back either.
    conn_id, receiver = pair()
    sender.sql(
        "UPDATE dbsync_connections SET expires_at = now() - interval '1 second'"
        " WHERE id = :id",
        id=conn_id,
    )
    r = receiver.list_tables()
    assert (r.status_code, r.json()["error"]) == (403, "Connection expired")
    receiver.update_status("active")
    assert receiver.list_tables().json() == NOT_ACTIVE
    assert sender.row(conn_id, "status")[0] == "expired"

    # What the peer suspended, the peer may lift.
    conn_id, receiver = pair()
    assert receiver.update_status("suspended").status_code == 200
    assert receiver.list_tables().status_code == 403
    r = receiver.update_status("active")
    assert (r.status_code, r.json()) == (
        200,
        {"success": True, "message": "Status updated to active"},
    )
    assert receiver.list_tables().status_code == 200


def race(
    sender: Sender,
    receiver: Receiver,
    conn_id: uuid.UUID,
    local_change: str,
    threads: int = 4,
    calls: int = 2,
) -> set[int]:
    """``threads`` callers alternate suspended/active while the operator acts;
    return the HTTP statuses they got."""
    start = threading.Barrier(threads + 1)
    answers: set[int] = set()

    def flip(first: int) -> None:
        start.wait()
        for i in range(calls):
            r = receiver.update_status(("suspended", "active")[(first + i) % 2])
            answers.add(r.status_code)

    workers = [threading.Thread(target=flip, args=(n % 2,)) for n in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    time.sleep(random.uniform(0, 0.03))
    with sender.site.db.session() as session:
        conn = connections.get(session, conn_id)
        try:
            getattr(connections, local_change)(session, sender.site, conn, "race")
        except SyncError:
            pass  # the code before the fix refused a suspend of a suspended row
    for w in workers:
        w.join()
    return answers


def test_revoke_and_local_suspend_hold_against_racing_update_status(
    sender: Sender, pair: Pairs
) -> None:
    losses: list[tuple[str, int, tuple[object, ...], int]] = []
    answers: set[int] = set()
    trials = {"revoke": 200, "suspend": 20}
    for local_change, count in trials.items():
        for trial, (conn_id, receiver) in enumerate(pair.many(count)):
            answers |= race(sender, receiver, conn_id, local_change)
            row = sender.row(conn_id, "status", "revoked_at", "suspended_reason")
            answer = receiver.list_tables().status_code
            if local_change == "revoke":
                held = row[0] == "revoked" and row[1] is not None
            else:
                held = row[0] == "suspended" and row[2] == "race"
            if not held or answer != 403:
                losses.append((local_change, trial, row, answer))
            receiver.close()
    lost = {kind: sum(1 for k, *_ in losses if k == kind) for kind in trials}
    assert losses == [], f"lost {lost} of {trials}"
    # Each call either applied or was refused, none failed.
    assert answers <= {200, 409}, answers


def test_control_calls_are_rate_limited_per_connection(
    sender: Sender, pair: Pairs
) -> None:
    conn_id, receiver = pair(rate_limit_requests_per_minute=5)
    # The poll that activated it counted once.
    answers = [receiver.verify() for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 4 + [429]
    assert answers[-1].json() == {"success": False, "error": "Rate limit exceeded"}
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    r = receiver.update_status("revoked")
    assert r.status_code == 429
    assert sender.row(conn_id, "status")[0] == "active"
    # Another connection has a window of its own; data calls are not counted
    # against control calls.
    _, other = pair()
    assert other.verify().status_code == 200
    assert receiver.list_tables().status_code == 200


def test_status_poll_activates_only_an_accepted_registration_at_its_own_url(
    sender: Sender,
) -> None:
    # Registration still queued: the token leaked, the receiver never answered.
    url = receiver_url()
    queued_id, token = sender.create(url)
    attacker = Receiver(sender, url, token)
    r = attacker.poll("http://evil.example")
    assert (r.status_code, r.json()) == (404, NOT_FOUND)
    r = attacker.poll()
    assert (r.status_code, r.json()) == (
        200,
        {"success": True, "status": "pending", "name": "to-receiver"},
    )
    assert attacker.list_tables().json() == NOT_ACTIVE
    assert sender.row(queued_id, "status", "approved_at") == ("pending", None)

    # Registration refused: whoever got the token must not activate it.
    url = receiver_url()
    refused_id, token = sender.create(url)
    assert sender.deliver_registration(refused) == "failed"
    leaked = Receiver(sender, url, token)
    for claimed in ("http://evil.example", url):
        leaked.poll(claimed)
    assert leaked.list_tables().json() == NOT_ACTIVE
    assert sender.row(refused_id, "status", "registration_status") == (
        "pending",
        "failed",
    )

    # Accepted: the receiver at the connection's URL activates it.
    url = receiver_url()
    accepted_id, token = sender.create(url)
    assert sender.deliver_registration(accepted) == "delivered"
    receiver = Receiver(sender, url, token)
    assert receiver.poll("http://evil.example").status_code == 404
    assert sender.row(accepted_id, "status")[0] == "pending"
    assert receiver.poll().json()["status"] == "active"
    assert receiver.list_tables().status_code == 200
    for client in (attacker, leaked, receiver):
        client.close()


def test_a_poll_that_overtakes_the_registration_answer_waits_for_it(
    sender: Sender,
) -> None:
    """The receiver polls as soon as it accepted, maybe before the sender's
    worker recorded that answer: the poll waits for the delivery in flight."""
    url = receiver_url()
    conn_id, token = sender.create(url)
    delivering = threading.Event()

    def worker_delivering() -> None:
        # What notices.deliver holds while register-connection is on the wire.
        with sender.site.db.engine.begin() as db:
            db.execute(
                text(
                    "SELECT id FROM dbsync_peer_notices"
                    " WHERE connection_id = :id AND kind = 'register' FOR UPDATE"
                ),
                {"id": conn_id},
            )
            delivering.set()
            time.sleep(0.5)
            db.execute(
                text(
                    "UPDATE dbsync_connections SET registration_status = 'registered'"
                    " WHERE id = :id"
                ),
                {"id": conn_id},
            )
            db.execute(
                text(
                    "UPDATE dbsync_peer_notices SET state = 'delivered'"
                    " WHERE connection_id = :id AND kind = 'register'"
                ),
                {"id": conn_id},
            )

    worker = threading.Thread(target=worker_delivering)
    worker.start()
    delivering.wait()
    receiver = Receiver(sender, url, token)
    with closing(receiver):
        r = receiver.poll()
        worker.join()
        assert (r.status_code, r.json()["status"]) == (200, "active")
        assert receiver.list_tables().status_code == 200
