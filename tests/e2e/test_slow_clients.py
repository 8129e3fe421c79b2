"""A site stays up under slow and idle clients (issue: six half-open sockets took
the whole API down).

Two real sites run the Procfile's lines (gunicorn as `dbsync serve` starts it).
While 50 half-open connections and 10 authenticated pull-data streams that
read 1 KB/s press on the sender, its control endpoints keep answering fast,
the slow streams are cut after the stall timeout and not counted, and a
normal pull at the same time lands exactly.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from bench.harness import NO_REGISTER_LIMITS
from shared.data.sender.offer import Catalog
from tests.e2e.conftest import SiteProcesses, field, pair
from tests.helpers import ScratchDatabases, eventually, free_port

pytestmark = pytest.mark.e2e

STALL = 4  # SYNC_STREAM_STALL_SECONDS
HEADER = 5  # SYNC_HEADER_TIMEOUT_SECONDS
BODY = 3  # SYNC_BODY_TIMEOUT_SECONDS
ENV = {
    "SYNC_STREAM_STALL_SECONDS": str(STALL),
    "SYNC_HEADER_TIMEOUT_SECONDS": str(HEADER),
    "SYNC_BODY_TIMEOUT_SECONDS": str(BODY),
    "SYNC_PULL_LEASE_SECONDS": "4",
    **NO_REGISTER_LIMITS,  # the register probe registers from one address
}
ROWS = 150_000
BIG_TABLE = """
CREATE TABLE big (
    id bigint PRIMARY KEY, n integer, label text, at timestamptz, doc jsonb
);
INSERT INTO big
SELECT g, g % 1000, 'row ' || g || repeat('x', g % 40),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       jsonb_build_object('g', g, 'tags', jsonb_build_array(g % 7))
FROM generate_series(1, :n) g;
"""
TCP_CLOSE = 7  # tcpi_state once the peer reset the connection


def canned(status: str, error: str) -> bytes:
    body = json.dumps({"success": False, "error": error}).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


TIMED_OUT = canned("408 Request Timeout", "Request timed out")
TOO_LARGE = canned("413 Payload Too Large", "Request body too large")


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sites:
    def __init__(self, sender: SiteProcesses, receiver: SiteProcesses) -> None:
        self.sender = sender
        self.receiver = receiver
        self.dead = free_port()
        # Three more sender connections, as an unknown receiver would hold:
        # the slow streams use them, at most 4 each (the default per connection).
        self.slow: list[tuple[str, str]] = []
        for i in range(3):
            made = sender.cli_json(
                "connections",
                "create",
                "--name",
                f"slow-{i}",
                "--url",
                # A site per connection: a path would only be a peer's prefix.
                f"http://127.0.0.1:{free_port()}",
            )
            sender.sql(
                "UPDATE dbsync_connections SET status = 'active' WHERE id = :id",
                id=made["id"],
            )
            self.slow.append((made["id"], sha(made["token"])))
        # A receiver connection on the sender site, for verify-connection. The
        # site keeps its default incoming mode (require_approval): a
        # registration is recorded pending and owes no notice to a peer.
        token = secrets.token_urlsafe(32)
        self.verify_url = f"http://127.0.0.1:{self.dead}/verify"
        r = httpx.post(
            f"{sender.url}/sync/api/register-connection",
            json={
                "sender_url": self.verify_url,
                "connection_name": "verify",
                "auth_token": token,
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        # The probes call verify-connection about twice a second for minutes:
        # they measure, they are not the attack, so the connection's control
        # rate limit (60 a minute by default) is lifted for them.
        sender.sql(
            "UPDATE dbsync_connections SET rate_limit_requests_per_minute = 100000"
            " WHERE site_url = :url",
            url=self.verify_url,
        )
        self.verify_body = {
            "sender_url": self.verify_url,
            "auth_token_hash": sha(token),
        }


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Sites]:
    workdir: Path = tmp_path_factory.mktemp("slow")
    sender = SiteProcesses(
        "sender", workdir, module_db_factory.create("slow_sender"), 13, **ENV
    )
    receiver = SiteProcesses(
        "receiver", workdir, module_db_factory.create("slow_receiver"), 14, **ENV
    )
    ok = False
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        pair(sender, receiver)
        sender.sql(BIG_TABLE, n=ROWS)
        yield Sites(sender, receiver)
        ok = True
    finally:
        if not ok:
            print(sender.logs())
            print(receiver.logs())
        sender.close()
        receiver.close()


def checksum(site: SiteProcesses, table: str) -> str:
    engine = create_engine(site.db_url)
    try:
        return Catalog(engine, checksum_row_limit=10**9).checksum(table)
    finally:
        engine.dispose()


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def pull_request(port: int, token_hash: str, **extra: Any) -> bytes:
    body = json.dumps(
        {
            "auth_token_hash": token_hash,
            "table_name": "big",
            "format": "pg_copy_text",
            **extra,
        }
    ).encode()
    return (
        f"POST /sync/api/pull-data HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


class Probe(threading.Thread):
    """Ask one control endpoint again and again, each time on a new connection."""

    def __init__(self, name: str, call: Any, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.name = name
        self.call = call
        self.stop = stop
        self.results: list[tuple[float, float, int]] = []  # (when, seconds, status)

    def run(self) -> None:
        n = 0
        # No kept-alive connection: every call connects anew, as a peer does.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5, limits=limits) as http:
            while not self.stop.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    status = self.call(http, n).status_code
                except httpx.HTTPError:
                    status = 0
                self.results.append((t0, time.monotonic() - t0, status))
                self.stop.wait(0.15)


class HalfOpen(threading.Thread):
    """Keep `count` connections that sent a request line and Host, then nothing;
    one the server closes is opened again at once."""

    def __init__(self, port: int, count: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.stop = stop
        self.answers: list[bytes] = []

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(
            f"POST /sync/api/register-connection HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n".encode()
        )
        s.setblocking(False)
        return s

    def run(self) -> None:
        socks = [self._open() for _ in range(self.count)]
        while not self.stop.is_set():
            readable, _, _ = select.select(socks, [], [], 0.2)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                self.answers.append(data)
                s.close()
                socks[socks.index(s)] = self._open()
        for s in socks:
            s.close()


class SlowStream(threading.Thread):
    """pull-data pages read at 1 KB/s, one after another: each the server cuts."""

    def __init__(self, port: int, token_hash: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.request = pull_request(port, token_hash, limit=100_000)
        self.port = port
        self.stop = stop
        self.status_lines: list[bytes] = []
        self.cuts: list[float] = []  # seconds from the first byte to the reset

    def run(self) -> None:
        while not self.stop.is_set():
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            try:
                s.sendall(self.request)
                first = s.recv(1024)
                started = time.monotonic()
                self.status_lines.append(first.split(b"\r\n", 1)[0])
                if not first.startswith(b"HTTP/1.1 200"):
                    return
                s.settimeout(0.1)
                while not self.stop.is_set():
                    if tcp_state(s) == TCP_CLOSE:
                        self.cuts.append(time.monotonic() - started)
                        break
                    try:
                        s.recv(100)  # 10 reads a second: 1 KB/s
                    except TimeoutError:
                        pass
                    except OSError:
                        self.cuts.append(time.monotonic() - started)
                        break
                    self.stop.wait(0.1)
            finally:
                s.close()


def test_control_calls_answer_while_slow_clients_press_and_a_pull_lands(
    sites: Sites,
) -> None:
    sender, receiver = sites.sender, sites.receiver
    api = f"{sender.url}/sync/api"
    stop = threading.Event()

    def status(http: httpx.Client, _n: int) -> httpx.Response:
        return http.get(f"{api}/status")

    def verify(http: httpx.Client, _n: int) -> httpx.Response:
        return http.post(f"{api}/verify-connection", json=sites.verify_body)

    def register(http: httpx.Client, n: int) -> httpx.Response:
        return http.post(
            f"{api}/register-connection",
            json={
                "sender_url": f"http://127.0.0.1:{sites.dead}/probe/{n}",
                "connection_name": f"probe-{n}",
                "auth_token": secrets.token_urlsafe(32),
            },
        )

    probes = [
        Probe("status", status, stop),
        Probe("verify", verify, stop),
        Probe("register", register, stop),
    ]
    half_open = HalfOpen(sender.port, 50, stop)
    slow = [SlowStream(sender.port, sites.slow[i % 3][1], stop) for i in range(10)]
    for t in probes:
        t.start()
    time.sleep(3)  # the probes alone first: the machine's own latency
    started = time.monotonic()
    for t in [half_open, *slow]:
        t.start()
    try:
        time.sleep(2)
        # A normal pull of the receiver, at the same time.
        result = receiver.cli(
            "pull", field(receiver, "id"), "big", "--create-missing", "--wait", "--json"
        )
        pulled_after = time.monotonic() - started
        # Press on for at least 18 s: every slow stream cut at least once,
        # every half-open socket timed out at least once.
        time.sleep(max(0.0, 18 - (time.monotonic() - started)))
    finally:
        stop.set()
        for t in [half_open, *slow, *probes]:
            t.join(timeout=15)

    data = json.loads(result.stdout)
    assert data["status"] == "completed", data
    assert (data["records_transferred"], data["records_created"]) == (ROWS, ROWS)
    assert receiver.sql("SELECT count(*) FROM big") == [(ROWS,)]
    assert checksum(receiver, "big") == checksum(sender, "big")

    def ms(values: list[float]) -> float:
        return round(p95(values) * 1000, 1)

    before = {p.name: ms([r[1] for r in p.results if r[0] < started]) for p in probes}
    during = {p.name: [r[1] for r in p.results if r[0] >= started] for p in probes}
    report = {name: (len(v), ms(v)) for name, v in during.items()}
    print(
        f"pull done after {pulled_after:.1f} s; p95 ms before the attack {before};"
        f" during (count, p95 ms) {report}"
    )
    for p in probes:
        statuses = Counter(r[2] for r in p.results)
        assert statuses == {200: len(p.results)}, (p.name, statuses)
        assert len(during[p.name]) >= 20, (p.name, during[p.name])
        slowest = sorted(
            (round(r[1] * 1000), round(r[0] - started, 1))
            for r in p.results
            if r[0] >= started
        )[-8:]
        assert p95(during[p.name]) < 0.3, (p.name, "slowest (ms, at s):", slowest)

    cuts = [c for s in slow for c in s.cuts]
    print(f"slow streams cut after (s from first byte): {sorted(cuts)}")
    for s in slow:
        assert s.status_lines and set(s.status_lines) == {b"HTTP/1.1 200 OK"}
        assert s.cuts, "a slow stream was never cut"
    assert max(cuts) <= STALL + 2, cuts

    # Each half-open socket was answered 408 after the header timeout.
    assert len(half_open.answers) >= 50
    assert set(half_open.answers) == {TIMED_OUT}

    # The normal pull counted exactly; the cut pages not at all.
    main = sender.sql(
        "SELECT downloads_used, records_downloaded FROM dbsync_connections"
        " WHERE direction = 'sender' AND name = 'to-receiver'"
    )
    assert main == [(1, ROWS)]
    for conn_id, _hash in sites.slow:
        assert sender.sql(
            "SELECT downloads_used, records_downloaded, total_records_transferred"
            " FROM dbsync_connections WHERE id = :id",
            id=conn_id,
        ) == [(0, 0, 0)]
        transfers = sender.sql(
            "SELECT status, records_transferred FROM dbsync_transfers"
            " WHERE connection_id = :id",
            id=conn_id,
        )
        assert transfers and set(transfers) == {("failed", 0)}, transfers
    # Every answer gave its slot back.
    eventually(
        lambda: (
            sender.sql("SELECT count(*) FROM dbsync_counters WHERE key LIKE 'stream:%'")
            == [(0,)]
        ),
        timeout=STALL + 10,
    )


def test_requests_that_arrive_too_slowly_or_too_large_are_refused(
    sites: Sites,
) -> None:
    port = sites.sender.port

    def raw(payload: bytes) -> tuple[socket.socket, float]:
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        s.sendall(payload)
        return s, time.monotonic()

    def answer(sent: tuple[socket.socket, float]) -> tuple[bytes, float]:
        s, t0 = sent
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        return data, time.monotonic() - t0

    head_only = raw(b"POST /sync/api/verify-connection HTTP/1.1\r\nHost: x\r\n")
    short_body = raw(
        b"POST /sync/api/verify-connection HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"sender'
    )
    too_large = raw(
        b"POST /sync/api/verify-connection HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{}"
    )
    data, seconds = answer(too_large)
    assert data == TOO_LARGE
    assert seconds < 1
    # Deadlines are checked once a second by each web process's event loop.
    data, seconds = answer(short_body)
    assert data == TIMED_OUT
    assert BODY <= seconds <= BODY + 1.5
    data, seconds = answer(head_only)
    assert data == TIMED_OUT
    assert HEADER <= seconds <= HEADER + 1.5

    # A chunked body, sent in pieces, is read whole and answered as usual.
    body = json.dumps(sites.verify_body).encode()
    chunked = raw(
        b"POST /sync/api/verify-connection HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    for piece in (body[:10], body[10:]):
        chunked[0].sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.2)
    chunked[0].sendall(b"0\r\n\r\n")
    data, _ = answer(chunked)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(payload) == {"success": True, "exists": True}


def test_a_connection_gets_503_beyond_its_concurrent_pages(sites: Sites) -> None:
    port = sites.sender.port
    _conn_id, token_hash = sites.slow[0]
    held = []
    try:
        for _ in range(4):  # the default per connection; none of them read
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(pull_request(port, token_hash, limit=100_000))
            assert s.recv(64).startswith(b"HTTP/1.1 200 OK")
            held.append(s)
        r = httpx.post(
            f"{sites.sender.url}/sync/api/pull-data",
            json={"auth_token_hash": token_hash, "table_name": "big", "limit": 1},
            timeout=10,
        )
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (
            503,
            {
                "success": False,
                "error": "Too many concurrent pull-data requests on this connection",
            },
            "5",
        )
        # Another connection is not held back.
        r = httpx.post(
            f"{sites.sender.url}/sync/api/pull-data",
            json={"auth_token_hash": sites.slow[1][1], "table_name": "big", "limit": 1},
            timeout=10,
        )
        assert (r.status_code, r.json()["count"]) == (200, 1)
    finally:
        for s in held:
            s.close()
