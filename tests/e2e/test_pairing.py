"""Two sites paired through the CLI, in every incoming mode, across the lifecycle."""

from __future__ import annotations

import hashlib

import pytest

from tests.e2e.conftest import create, field, pair
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_auto_accept_activates_both_sides(two_sites) -> None:
    sender, receiver = two_sites
    created = pair(sender, receiver)
    s = sender.only_connection()
    assert s["registration"] == "registered"
    assert s["direction"] == "sender"
    assert s["site_url"] == receiver.url
    assert s["metadata"]["auto_activated"] is True
    r = receiver.only_connection()
    assert r["name"] == "to-receiver"
    assert r["direction"] == "receiver"
    assert r["site_url"] == sender.url
    assert r["metadata"]["remote_ip"] == "127.0.0.1"
    assert s["metadata"]["remote_connection_uuid"] == r["id"]
    # Both are dbsync sites: each has seen the other sign its control calls.
    assert (s["peer_signs"], r["peer_signs"]) == (True, True)
    # The raw token is shown once and stored nowhere, on either side.
    token_hash = hashlib.sha256(created["token"].encode()).hexdigest()
    for site in (sender, receiver):
        dump = site.cli("connections", "show", field(site, "id"), "--json").stdout
        assert created["token"] not in dump
        assert token_hash not in dump


def test_require_approval_is_pending_until_approved(two_sites) -> None:
    sender, receiver = two_sites
    receiver.cli("settings", "set", "incoming_mode", "require_approval")
    create(sender, receiver)
    eventually(lambda: field(sender, "registration") == "pending")
    assert field(receiver, "status") == "pending"
    # Verification keeps running on both sides; nothing activates by itself.
    assert field(sender, "status") == "pending"
    receiver.cli("connections", "approve", field(receiver, "id"))
    assert field(receiver, "status") == "active"
    eventually(lambda: field(sender, "status") == "active")
    assert sender.only_connection()["metadata"]["auto_activated_reason"] == (
        "receiver queried connection status"
    )


def test_require_password(two_sites) -> None:
    sender, receiver = two_sites
    receiver.cli("settings", "set", "incoming_mode", "require_password")
    receiver.cli("settings", "set", "incoming_password", "-", stdin="correct horse\n")
    assert receiver.cli_json("settings", "show")["incoming_password_set"] is True

    create(sender, receiver, "--password", "wrong")
    eventually(lambda: field(sender, "registration") == "failed: Invalid password")
    sender.cli("connections", "delete", field(sender, "id"))

    create(sender, receiver)
    eventually(lambda: field(sender, "registration") == "failed: Password required")
    assert receiver.connections() == []
    sender.cli("connections", "delete", field(sender, "id"))

    create(sender, receiver, "--password", "correct horse")
    eventually(lambda: field(sender, "registration") == "registered")
    eventually(lambda: field(sender, "status") == "active")
    assert field(receiver, "status") == "active"
    logs = sender.all_logs() + receiver.all_logs()
    assert "correct horse" not in logs


def test_deny_all_fails_with_the_peers_reason(two_sites) -> None:
    sender, receiver = two_sites
    receiver.cli("settings", "set", "incoming_mode", "deny_all")
    create(sender, receiver)
    eventually(
        lambda: (
            field(sender, "registration")
            == "failed: Incoming connections are not allowed"
        )
    )
    assert field(sender, "status") == "pending"
    assert receiver.connections() == []


def test_sender_changes_reach_the_receiver_and_delete_removes_both(two_sites) -> None:
    sender, receiver = two_sites
    pair(sender, receiver)
    sid = field(sender, "id")
    sender.cli("connections", "suspend", sid, "--reason", "maintenance")
    eventually(lambda: field(receiver, "status") == "suspended")
    assert field(receiver, "suspended_reason") == "Suspended by the peer site"
    eventually(lambda: field(sender, "peer_sync") == "delivered")

    sender.cli("connections", "reactivate", sid)
    eventually(lambda: field(receiver, "status") == "active")

    sender.cli("connections", "revoke", sid, "--reason", "contract ended")
    eventually(lambda: field(receiver, "status") == "revoked")
    assert field(sender, "revoked_reason") == "contract ended"
    assert field(receiver, "revoked_reason") == "Revoked by the peer site"

    sender.cli("connections", "delete", sid)
    assert sender.connections() == []
    eventually(lambda: receiver.connections() == [])


def test_receiver_changes_reach_the_sender(two_sites) -> None:
    sender, receiver = two_sites
    pair(sender, receiver)
    receiver.cli("connections", "revoke", field(receiver, "id"))
    eventually(lambda: field(sender, "status") == "revoked")
    assert field(sender, "revoked_reason") == "Revoked by the peer site"
    failed = sender.cli("connections", "reactivate", field(sender, "id"), check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip() == "Error: Connection is revoked, not suspended"

    receiver.cli("connections", "delete", field(receiver, "id"))
    assert receiver.connections() == []
    eventually(lambda: sender.connections() == [])


def test_revoke_reaches_a_receiver_that_was_down(two_sites) -> None:
    sender, receiver = two_sites
    pair(sender, receiver)
    receiver.stop()
    sender.cli("connections", "revoke", field(sender, "id"))
    eventually(lambda: field(sender, "peer_sync") == "retrying")
    assert "ConnectError" in field(sender, "peer_sync_error")
    receiver.start()
    eventually(lambda: field(receiver, "status") == "revoked", timeout=45)
    eventually(lambda: field(sender, "peer_sync") == "delivered")


@pytest.mark.parametrize(
    "two_sites", [{"receiver": {"SYNC_RETRY_HORIZON_SECONDS": "3"}}], indirect=True
)
def test_sender_suspends_itself_when_the_receiver_deleted_while_it_was_down(
    two_sites,
) -> None:
    sender, receiver = two_sites
    pair(sender, receiver)
    sender.stop()
    receiver.cli("connections", "delete", field(receiver, "id"))
    # The receiver gives up telling the sender after its (short) horizon.
    eventually(
        lambda: "gave up" in receiver.all_logs() or "gave_up" in receiver.all_logs(),
        timeout=30,
    )
    sender.start()
    eventually(lambda: field(sender, "status") == "suspended", timeout=45)
    assert (
        field(sender, "suspended_reason") == "Remote site reports connection not found"
    )


def test_logs_of_a_full_lifecycle_hold_no_secret(two_sites) -> None:
    sender, receiver = two_sites
    receiver.cli("settings", "set", "incoming_mode", "require_password")
    receiver.cli("settings", "set", "incoming_password", "-", stdin="pa55-word-xyz\n")
    created = create(sender, receiver, "--password", "pa55-word-xyz")
    eventually(lambda: field(sender, "status") == "active")
    sid = field(sender, "id")
    sender.cli("connections", "suspend", sid)
    eventually(lambda: field(receiver, "status") == "suspended")
    sender.cli("connections", "reactivate", sid)
    eventually(lambda: field(receiver, "status") == "active")
    sender.cli("connections", "verify", sid)
    sender.cli("connections", "delete", sid)
    eventually(lambda: receiver.connections() == [])
    token = created["token"]
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    for site in (sender, receiver):
        text = site.all_logs()
        assert "audit action=connection.deleted" in text or site is sender
        assert token not in text
        assert token_hash[:9] not in text
        assert "pa55-word-xyz" not in text


def test_a_status_change_survives_losing_the_worker_and_its_queue(two_sites) -> None:
    """The notice row is the source of truth: with the worker gone and every
    queued message lost, the beat sweep still delivers the change."""
    sender, receiver = two_sites
    pair(sender, receiver)
    sender.stop("worker")
    sender.cli("connections", "suspend", field(sender, "id"))
    import redis

    queue = redis.Redis.from_url(sender.redis_url)
    assert queue.delete(f"{sender.queue_prefix}peer") == 1  # the message is gone
    assert field(sender, "peer_sync") == "queued"
    assert field(receiver, "status") == "active"
    sender.start(web=False, worker=True, beat=False)
    eventually(lambda: field(receiver, "status") == "suspended", timeout=45)
    eventually(lambda: field(sender, "peer_sync") == "delivered")
