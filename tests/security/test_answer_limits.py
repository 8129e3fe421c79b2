"""Finding 2: a peer's answer may not take unbounded memory or time.

65 KB of gzip on the wire used to become 64 MiB in memory (``gzip, gzip``
too), and a peer that sent its answer a byte at a time held a call for as
long as it liked: only each read had a timeout. Now every answer is decoded
here within a size limit (control answers 64 KiB, list-tables and the like
SYNC_PEER_ANSWER_MAX_BYTES, JSON pages per row asked, COPY pages per row
announced and each text row by itself) and every call has a total deadline.
The data-path tests run the pull worker's code (pulls.run) against a hostile
sender on loopback, into real PostgreSQL: each ends ``failed`` with the
reason, with nothing written and the receiver's own table untouched.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from shared.context import Site
from shared.control import healing
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.data import copy_format
from shared.state.models import Connection
from tests.helpers import make_settings
from tests.security.kit import (
    TOKEN_HASH,
    Answer,
    HostilePeer,
    Receiver,
    gzipped,
    json_bomb,
    sender,
)

MIB = 1024 * 1024


def _drip(first: bytes, every: float, part: bytes = b" ") -> Iterator[bytes]:
    """``first``, then ``part`` every ``every`` seconds, forever."""
    yield first
    while True:
        time.sleep(every)
        yield part


@pytest.fixture
def client() -> Iterator[PeerClient]:
    made = PeerClient(make_settings("sqlite://", SYNC_PEER_CALL_SECONDS="1"))
    yield made
    made.close()


# ------------------------------------------------------------ control answers


@pytest.mark.parametrize(
    "encoding, body",
    [
        ("gzip", json_bomb(64 * MIB)),
        ("gzip, gzip", json_bomb(64 * MIB, times=2)),
        ("identity", b'{"success": true, "pad": "' + b"a" * MIB + b'"}'),
    ],
    ids=["gzip", "gzip-gzip", "plain"],
)
def test_a_control_answer_stops_at_64_kib_decoded(
    peers: Callable[..., HostilePeer], client: PeerClient, encoding: str, body: bytes
) -> None:
    assert len(body) < 1.1 * MIB  # 64 MiB in 65 KB (or a few hundred bytes)
    peer = peers(
        lambda seen: Answer(
            200,
            {"content-type": "application/json", "content-encoding": encoding},
            body,
        )
    )
    with pytest.raises(
        PeerRefused, match=r"^verify-connection: answer larger than 65536 bytes$"
    ):
        client.post(peer.url, "verify-connection", {"auth_token_hash": "h"})


def test_verify_records_a_bomb_as_the_reason_and_keeps_the_connection(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    bomb = json_bomb(64 * MIB, times=2)
    peer = peers(
        lambda seen: Answer(
            200,
            {"content-type": "application/json", "content-encoding": "gzip, gzip"},
            bomb,
        )
    )
    receiver = receivers(peer.url)
    site = receiver.site
    with site.db.session() as session:
        conn_id = str(session.query(Connection).one().id)
    assert healing.verify(site, clients(site), conn_id) == "unreachable"
    with site.db.session() as session:
        conn = session.get_one(Connection, uuid.UUID(conn_id))
        assert conn.status == "active"
        assert conn.last_verify_error == (
            "get-connection-status: answer larger than 65536 bytes"
        )


@pytest.mark.timeout(60, method="thread")  # a hang must not hold the run
def test_a_control_answer_dripped_forever_ends_at_the_call_deadline(
    peers: Callable[..., HostilePeer], client: PeerClient
) -> None:
    peer = peers(
        lambda seen: Answer(200, {"content-type": "application/json"}, _drip(b"{", 0.1))
    )
    started = time.monotonic()
    with pytest.raises(
        PeerUnavailable, match=r"^verify-connection: no complete answer within 1 s$"
    ):
        client.post(peer.url, "verify-connection", {})
    assert time.monotonic() - started < 5


@pytest.mark.timeout(60, method="thread")  # a hang must not hold the run
def test_headers_dripped_forever_end_at_the_call_deadline(
    peers: Callable[..., HostilePeer], client: PeerClient
) -> None:
    peer = peers(
        lambda seen: Answer(raw=_drip(b"HTTP/1.1 200 OK\r\n", 0.1, b"X-A: b\r\n"))
    )
    started = time.monotonic()
    with pytest.raises(
        PeerUnavailable, match=r"^verify-connection: no complete answer within 1 s$"
    ):
        client.post(peer.url, "verify-connection", {})
    assert time.monotonic() - started < 5


# ------------------------------------------------------------ the data path


def _fail_reason(
    receiver: Receiver, clients: Callable[[Site], PeerClient]
) -> tuple[str, float]:
    """Pull t once; the transfer must fail, writing nothing: its reason and time."""
    keep = receiver.checksum("keep")
    started = time.monotonic()
    state, transfer = receiver.pull(clients(receiver.site))
    elapsed = time.monotonic() - started
    assert (state, transfer.status) == ("failed", "failed")
    assert receiver.count("t") == 0
    assert receiver.checksum("keep") == keep
    return str(transfer.error_message), elapsed


def test_a_list_tables_bomb_fails_the_pull(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    bomb = json_bomb(64 * MIB)
    peer = peers(
        lambda seen: Answer(
            200, {"content-type": "application/json", "content-encoding": "gzip"}, bomb
        )
    )
    receiver = receivers(peer.url)
    reason, _ = _fail_reason(receiver, clients)
    assert reason == "list-tables: answer larger than 4194304 bytes"


def _page(*rows: dict[str, object]) -> dict[str, object]:
    return {
        "success": True,
        "table": "t",
        "data": list(rows),
        "count": len(rows),
        "has_more": False,
        "next_cursor": None,
    }


def test_a_json_page_may_take_its_row_budget_for_each_row_asked(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    """100 rows asked at 1 KiB each: a 2-row page of 2 MiB (stacked gzip,
    a few KB on the wire) is refused at 100 KiB."""
    page = json.dumps(_page({"id": 1, "v": "a" * (2 * MIB)}, {"id": 2, "v": "b"}))
    body = gzip.compress(gzip.compress(page.encode()))
    peer = peers(
        sender(
            lambda seen: Answer(
                200,
                {"content-type": "application/json", "content-encoding": "gzip, gzip"},
                body,
            )
        )
    )
    receiver = receivers(
        peer.url,
        SYNC_PULL_FORMAT="json",
        SYNC_JSON_PAGE_CAP="100",
        SYNC_PULL_JSON_ROW_BYTES="1024",
    )
    reason, _ = _fail_reason(receiver, clients)
    assert reason == "pull-data: answer larger than 102400 bytes"
    (asked,) = [s.json for s in peer.requests if s.endpoint == "pull-data"]
    assert asked["limit"] == 100 and asked["auth_token_hash"] == TOKEN_HASH


def _copy_headers(wire_format: str, count: int) -> dict[str, str]:
    return {
        "content-type": copy_format.MEDIA_TYPES[wire_format],
        "x-sync-table": "t",
        "x-sync-format": wire_format,
        "x-sync-columns": '["id", "v"]',
        "x-sync-count": str(count),
        "x-sync-has-more": "false",
        "x-sync-next-cursor": f"[{count}]",
    }


def test_a_copy_text_row_longer_than_allowed_fails_the_pull(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    """99 short rows, then one of 5,000 bytes: the page is within its limit
    (100 rows announced), the row is not."""
    body = b"".join(b"%d\tshort\n" % i for i in range(1, 100))
    body += b"100\t" + b"x" * 5000 + b"\n"
    peer = peers(
        sender(lambda seen: Answer(200, _copy_headers(copy_format.TEXT, 100), body))
    )
    receiver = receivers(
        peer.url, SYNC_PULL_FORMAT="pg_copy_text", SYNC_PULL_ROW_MAX_BYTES="1024"
    )
    reason, _ = _fail_reason(receiver, clients)
    assert reason == "Invalid response from remote site (a row of t over 1024 bytes)"


def test_a_copy_page_may_take_its_row_limit_for_each_row_announced(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    """One row announced, 16 MiB of gzip bomb sent: refused at 1 KiB + framing."""
    bomb = gzipped(16 * MIB, fill=b"\x00")
    headers = {**_copy_headers(copy_format.BINARY, 1), "content-encoding": "gzip"}
    peer = peers(sender(lambda seen: Answer(200, headers, bomb)))
    receiver = receivers(peer.url, SYNC_PULL_ROW_MAX_BYTES="1024")
    reason, _ = _fail_reason(receiver, clients)
    assert reason == "pull-data: answer larger than 1088 bytes"
    (asked,) = [s.json for s in peer.requests if s.endpoint == "pull-data"]
    assert asked["format"] == copy_format.BINARY


def test_a_copy_page_of_more_rows_than_asked_fails_the_pull(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    body = b"".join(b"%d\tv\n" % i for i in range(1, 1001))
    peer = peers(
        sender(lambda seen: Answer(200, _copy_headers(copy_format.TEXT, 1000), body))
    )
    receiver = receivers(
        peer.url, SYNC_PULL_FORMAT="pg_copy_text", SYNC_BULK_PAGE_ROWS="10"
    )
    reason, _ = _fail_reason(receiver, clients)
    assert reason == (
        "Invalid response from remote site (a page of 1000 rows, asked for 10)"
    )


@pytest.mark.timeout(60, method="thread")  # a hang must not hold the run
def test_a_json_page_dripped_forever_ends_at_the_page_deadline(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    peer = peers(
        sender(
            lambda seen: Answer(
                200, {"content-type": "application/json"}, _drip(b"{", 0.1)
            )
        )
    )
    receiver = receivers(
        peer.url,
        SYNC_PULL_FORMAT="json",
        SYNC_PULL_PAGE_SECONDS="2",
        SYNC_PULL_MAX_ATTEMPTS="1",
    )
    reason, elapsed = _fail_reason(receiver, clients)
    assert reason == "Sender unreachable: pull-data: no complete answer within 2 s"
    assert elapsed < 10


@pytest.mark.timeout(60, method="thread")  # a hang must not hold the run
def test_a_copy_body_dripped_forever_ends_at_the_page_deadline(
    peers: Callable[..., HostilePeer],
    receivers: Callable[..., Receiver],
    clients: Callable[[Site], PeerClient],
) -> None:
    """Rows keep coming a few a second into COPY: the page is cut at its
    deadline and rolled back, none of its rows kept."""

    def rows() -> Iterator[bytes]:
        n = 0
        while True:
            n += 1
            yield b"%d\tv\n" % n
            time.sleep(0.05)

    peer = peers(
        sender(lambda seen: Answer(200, _copy_headers(copy_format.TEXT, 2), rows()))
    )
    receiver = receivers(
        peer.url,
        SYNC_PULL_FORMAT="pg_copy_text",
        SYNC_PULL_PAGE_SECONDS="2",
        SYNC_PULL_MAX_ATTEMPTS="1",
    )
    reason, elapsed = _fail_reason(receiver, clients)
    assert reason == "Sender unreachable: pull-data: no complete answer within 2 s"
    assert elapsed < 10
