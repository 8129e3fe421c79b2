"""The attacker's kit: a hostile peer on loopback, a resolver and a network the
test controls, hostile bodies, and a receiver that pulls from the peer.

HostilePeer is a real HTTP/1.1 server (http.server in a thread) whose every
answer the test writes, down to its bytes and their pace. Resolver answers
chosen host names with chosen addresses (socket.getaddrinfo, in-process),
like a DNS server under the attacker's control. Network sees every TCP
connect this process makes: it routes chosen public addresses to loopback
servers and refuses any other public one, so nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import text

from shared.context import Site
from shared.control.peer import PeerClient
from shared.data.receiver import pulls
from shared.state.models import Connection, Transfer

PUBLIC = "93.184.216.34"  # a public address; the test's network routes it
TOKEN_HASH = hashlib.sha256(b"security-test-token").hexdigest()


# ------------------------------------------------------------ the hostile peer


@dataclasses.dataclass
class Answer:
    """What the peer sends back: a framed answer, or ``raw`` bytes as they come.

    A ``body`` of bytes goes with Content-Length; an iterable goes chunked,
    each part when the iterable yields it (a generator may sleep between
    parts, or never end).
    """

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    raw: Iterable[bytes] | None = None


@dataclasses.dataclass
class Seen:
    """One request the peer received."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def endpoint(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def json_answer(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Answer:
    return Answer(
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(data).encode(),
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    peer: HostilePeer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.peer.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up on the peer is what these tests expect


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        peer = self.server.peer
        peer.requests.append(seen)
        try:
            self._write(peer.answer(seen))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    do_GET = do_POST

    def _write(self, answer: Answer) -> None:
        if answer.raw is not None:
            for part in answer.raw:
                self.wfile.write(part)
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if isinstance(answer.body, bytes):
            self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for part in answer.body:
            if part:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HostilePeer:
    """A real HTTP server on 127.0.0.1 that answers as ``answer`` says."""

    def __init__(
        self,
        answer: Callable[[Seen], Answer] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer or (lambda seen: json_answer({"success": True}))
        self.requests: list[Seen] = []
        self.connections = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.peer = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoints(self) -> list[str]:
        return [seen.endpoint for seen in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# ------------------------------------------------------------ resolver and network


class Resolver:
    """socket.getaddrinfo with scripted answers for chosen names.

    Each lookup of a scripted name takes the next of its addresses, round
    and round: ``script(name, PUBLIC, "127.0.0.1")`` answers a public
    address first and 127.0.0.1 second, as a rebinding DNS server does.
    """

    def __init__(self, real: Callable[..., Any]) -> None:
        self._real = real
        self._scripts: dict[str, Iterator[str]] = {}
        self.lookups: list[tuple[str, str]] = []

    def script(self, host: str, *addresses: str) -> None:
        def cycle() -> Iterator[str]:
            while True:
                yield from addresses

        self._scripts[host] = cycle()

    def __call__(
        self,
        host: Any,
        port: Any,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self._scripts:
            return self._real(host, port, family, type, proto, flags)
        address = next(self._scripts[name])
        self.lookups.append((name, address))
        number = int(port or 0)
        if ":" in address:
            return [
                (
                    socket.AF_INET6,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, number, 0, 0),
                )
            ]
        return [
            (
                socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, number),
            )
        ]


class Network:
    """Every TCP connect of this process: recorded, public ones routed or refused."""

    def __init__(self, real: Callable[[socket.socket, Any], None]) -> None:
        self._real = real
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        self.attempts: list[tuple[str, int]] = []

    def route(self, address: tuple[str, int], to: tuple[str, int]) -> None:
        self.routes[address] = to

    def connect(self, sock: socket.socket, address: Any) -> None:
        if not isinstance(address, tuple):
            return self._real(sock, address)  # a unix socket
        host, port = str(address[0]), int(address[1])
        self.attempts.append((host, port))
        if ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
            return self._real(sock, address)
        if (host, port) in self.routes:
            return self._real(sock, self.routes[(host, port)])
        raise ConnectionRefusedError(111, "refused by the test's network")


# ------------------------------------------------------------ certificates


# ------------------------------------------------------------ bodies


def gzipped(total: int, times: int = 1, fill: bytes = b"a") -> bytes:
    """``total`` bytes of ``fill`` under ``times`` layers of gzip, built in pieces."""
    body = _gzip_stream(total, fill)
    for _ in range(times - 1):
        body = gzip.compress(body)
    return body


def _gzip_stream(total: int, fill: bytes) -> bytes:
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = fill * (1024 * 1024 // len(fill))
    parts = []
    left = total
    while left > 0:
        piece = block[: min(left, len(block))]
        parts.append(out.compress(piece))
        left -= len(piece)
    parts.append(out.flush())
    return b"".join(parts)


def json_bomb(total: int, times: int = 1) -> bytes:
    """A JSON control answer of about ``total`` bytes once ungzipped."""
    head, tail = b'{"success": true, "pad": "', b'"}'
    body = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [body.compress(head)]
    block = b"a" * (1024 * 1024)
    left = total
    while left > 0:
        piece = block[: min(left, len(block))]
        parts.append(body.compress(piece))
        left -= len(piece)
    parts.append(body.compress(tail))
    parts.append(body.flush())
    data = b"".join(parts)
    for _ in range(times - 1):
        data = gzip.compress(data)
    return data


# ------------------------------------------------------------ a receiver that pulls


SCHEMA_T = {
    "columns": [
        {
            "name": "id",
            "type": "integer",
            "nullable": False,
            "primary_key": True,
            "default": None,
            "max_length": None,
            "precision": None,
            "scale": None,
        },
        {
            "name": "v",
            "type": "text",
            "nullable": True,
            "primary_key": False,
            "default": None,
            "max_length": None,
            "precision": None,
            "scale": None,
        },
    ],
    "primary_key": ["id"],
    "foreign_keys": [],
    "unique": [],
}


def sender(pull_data: Callable[[Seen], Answer]) -> Callable[[Seen], Answer]:
    """A sender that offers table t honestly and answers pull-data as told."""

    def answer(seen: Seen) -> Answer:
        if seen.endpoint == "list-tables":
            table = {
                "name": "t",
                "row_count": 2,
                "size_bytes": 0,
                "primary_key": ["id"],
                "depends_on": [],
                "checksum": None,
            }
            return json_answer({"success": True, "tables": [table]})
        if seen.endpoint == "table-schema":
            return json_answer({"success": True, "table": "t", "schema": SCHEMA_T})
        if seen.endpoint == "pull-data":
            return pull_data(seen)
        return json_answer({"success": False, "error": "Not found"}, 404)

    return answer


@dataclasses.dataclass
class Receiver:
    """A receiver site whose data database holds an empty ``t`` and a ``keep``
    table of its own, with one active connection to the peer."""

    site: Site

    def checksum(self, table: str) -> str:
        with self.site.db.data_engine.connect() as conn:
            return str(
                conn.execute(
                    text(
                        f"SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text),"
                        f" '')) FROM {table} x"
                    )
                ).scalar()
            )

    def count(self, table: str = "t") -> int:
        with self.site.db.data_engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    def checkpoints(self) -> int:
        with self.site.db.data_engine.connect() as conn:
            exists = conn.execute(
                text("SELECT to_regclass('dbsync_pull_checkpoints') IS NOT NULL")
            ).scalar()
            if not exists:
                return 0
            return int(
                conn.execute(
                    text("SELECT count(*) FROM dbsync_pull_checkpoints")
                ).scalar_one()
            )

    def pull(self, client: PeerClient) -> tuple[str, Transfer]:
        """Start a pull of t and run it once, as a pull worker does."""
        with self.site.db.session() as session:
            conn = session.query(Connection).one()
            transfer_id = str(
                pulls.start(session, self.site, conn, ["t"], strategy="skip").id
            )
        outcome = pulls.run(self.site, client, transfer_id, f"test:{uuid.uuid4()}")
        with self.site.db.session() as session:
            transfer = session.get_one(Transfer, uuid.UUID(transfer_id))
            session.expunge(transfer)
        return outcome.state, transfer
