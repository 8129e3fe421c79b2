"""Fixtures for the hostile-peer suite; the kit itself is tests/security/kit.py."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shared.context import Site
from shared.control.peer import PeerClient
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.state.models import Base
from tests.helpers import ScratchDatabases, make_settings, open_to_peer
from tests.security.kit import (
    TOKEN_HASH,
    Answer,
    HostilePeer,
    Network,
    Receiver,
    Resolver,
    Seen,
)


@pytest.fixture
def peers() -> Iterator[Callable[..., HostilePeer]]:
    """Start hostile peers; all are stopped at the end of the test."""
    started: list[HostilePeer] = []

    def start(
        answer: Callable[[Seen], Answer] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> HostilePeer:
        peer = HostilePeer(answer, tls)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    fake = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Network:
    fake = Network(socket.socket.connect)

    def connect(sock: socket.socket, address: Any) -> None:
        fake.connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return fake


@pytest.fixture
def clients() -> Iterator[Callable[[Site], PeerClient]]:
    """Real peer clients (no test transport) for sites; closed at the end."""
    made: list[PeerClient] = []

    def build(site: Site) -> PeerClient:
        client = PeerClient(site.settings)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A self-signed certificate (and its key, in one file) for a host name."""
    folder = tmp_path_factory.mktemp("certs")

    def make(host: str) -> Path:
        path = folder / f"{host}.pem"
        if not path.exists():
            key = folder / f"{host}.key"
            crt = folder / f"{host}.crt"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    f"/CN={host}",
                    "-addext",
                    f"subjectAltName=DNS:{host}",
                    "-keyout",
                    str(key),
                    "-out",
                    str(crt),
                ],
                check=True,
                capture_output=True,
            )
            path.write_bytes(crt.read_bytes() + key.read_bytes())
        return path

    return make


@pytest.fixture(scope="module")
def receiver_db(module_db_factory: ScratchDatabases) -> str:
    return module_db_factory.create("sec_r", migrate=True)


@pytest.fixture
def sites(receiver_db: str) -> Iterator[Callable[..., Site]]:
    """Build a site on the module's database with these SYNC_* settings, its
    own tables emptied."""
    made: list[Site] = []

    def build(**env: str) -> Site:
        settings = make_settings(receiver_db, **env)
        site = Site(settings, Database(settings.database_url), DeferredDispatcher())
        made.append(site)
        own = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with site.db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {own} RESTART IDENTITY CASCADE"))
        return site

    yield build
    for site in made:
        site.db.dispose()


@pytest.fixture
def receivers(sites: Callable[..., Site]) -> Callable[..., Receiver]:
    """Build the module's receiver with these SYNC_* settings: an empty ``t``,
    a ``keep`` table of its own with two rows, one active connection to
    ``peer_url``."""

    def build(peer_url: str, **env: str) -> Receiver:
        site = sites(**env)
        with site.db.data_engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS t, keep, dbsync_pull_checkpoints"))
            conn.execute(text("CREATE TABLE t (id integer PRIMARY KEY, v text)"))
            conn.execute(text("CREATE TABLE keep (id integer PRIMARY KEY, v text)"))
            conn.execute(text("INSERT INTO keep VALUES (1, 'one'), (2, 'two')"))
        open_to_peer(site, "receiver", peer_url, TOKEN_HASH)
        return Receiver(site)

    return build
