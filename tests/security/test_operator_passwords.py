"""Passwords reach the CLI from a hidden prompt or stdin, not from ``ps``.

Plays a local user reading other users' command lines (``ps``, shell
history): the operator gives the receiver's password to ``connections
create`` and the site's incoming password to ``settings set`` without putting
it in the arguments, on a real terminal (a pseudo-terminal this test drives,
with the password never echoed) or through stdin for scripts. Each password is
checked where it is used: the registration a fake receiver on loopback gets,
and the register-connection the site answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from falcon import testing
from sqlalchemy import select as sql_select

from api.app import create_app
from shared.context import Site
from shared.control import notices
from shared.control.peer import PeerClient
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.state.models import PeerNotice
from tests.helpers import (
    DBSYNC,
    SITE_URL,
    ScratchDatabases,
    configure,
    free_port,
    make_settings,
    post,
)

WARNING = (
    "Warning: a password in the arguments shows in `ps` and in the shell's"
    " history; use --password with no value (asked for, hidden) or"
    " --password-stdin\n"
)


class _Receiver(BaseHTTPRequestHandler):
    """Records the password of every register-connection it is sent."""

    passwords: dict[str, str | None] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.passwords[self.path.split("/sync/api/")[0]] = body.get("password")
        data = b'{"success": true, "message": "ok", "connection_status": "pending"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver_url() -> Iterator[str]:
    # One receiver a test: a site holds one sender connection per peer site
    # (a path in the URL is the peer's API prefix, not another site).
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def site(module_db_factory: ScratchDatabases) -> Iterator[Site]:
    settings = make_settings(module_db_factory.create("passwords", migrate=True))
    db = Database(settings.database_url, settings.data_database_url)
    current = Site(settings, db, DeferredDispatcher())
    configure(current, mode="require_password")
    yield current
    db.dispose()


@pytest.fixture(scope="module")
def env(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    values.update(
        SYNC_DATABASE_URL=site.settings.database_url,
        SYNC_SITE_URL=SITE_URL,
        SYNC_ALLOW_PRIVATE_URLS="true",
        SYNC_HOME=str(tmp_path_factory.mktemp("passwords-home")),
    )
    return values


def dbsync(
    env: dict[str, str], *args: str, stdin: str | None = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DBSYNC, *args],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def on_terminal(env: dict[str, str], *args: str, typed: list[str]) -> tuple[int, str]:
    """Run ``dbsync`` on a pseudo-terminal, typing each of ``typed`` at a prompt."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [DBSYNC, *args],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    shown, answered = b"", 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            shown += chunk
            prompts = shown.count(b"Password: ") + shown.count(b"confirmation: ")
            while answered < min(prompts, len(typed)):
                os.write(master, typed[answered].encode() + b"\r")
                answered += 1
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, shown.decode(errors="replace")


def delivered_password(site: Site, url: str) -> str | None:
    """Deliver the registration owed to ``url`` and return what the receiver got."""
    with site.db.session() as session:
        # A path in the URL is the peer's prefix: the notice keeps it apart.
        parts = urlsplit(url)
        notice_id = session.scalar(
            sql_select(PeerNotice.id).where(
                PeerNotice.site_url == f"{parts.scheme}://{parts.netloc}",
                PeerNotice.peer_prefix == parts.path,
            )
        )
    assert notice_id is not None
    notices.deliver(site, PeerClient(site.settings), notice_id)
    return _Receiver.passwords[urlsplit(url).path]


def create(name: str, url: str, *extra: str) -> tuple[str, ...]:
    # The site has no table of its own: it offers tables made later.
    return (
        "connections", "create", "--name", name, "--url", url, "--json",
        "--offer-new-tables", *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "path"),
    [(("--password-stdin",), "stdin-flag"), (("--password", "-"), "dash")],
    ids=["--password-stdin", "--password -"],
)
def test_a_script_pipes_the_password_on_stdin(
    site: Site,
    env: dict[str, str],
    receiver_url: str,
    option: tuple[str, ...],
    path: str,
) -> None:
    url = f"{receiver_url}/{path}"
    result = dbsync(env, *create("piped", url, *option), stdin="correct horse\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["registration"] == "queued"
    assert delivered_password(site, url) == "correct horse"


def test_password_alone_asks_on_the_terminal_without_echo(
    site: Site, env: dict[str, str], receiver_url: str
) -> None:
    url = f"{receiver_url}/typed"
    code, shown = on_terminal(
        env, *create("typed", url, "--password"), typed=["battery staple"]
    )
    assert code == 0, shown
    assert shown.startswith("Password: ")
    assert "battery staple" not in shown
    assert delivered_password(site, url) == "battery staple"


def test_password_alone_with_no_terminal_is_an_error(
    site: Site, env: dict[str, str], receiver_url: str
) -> None:
    url = f"{receiver_url}/no-terminal"
    result = dbsync(env, *create("no-terminal", url, "--password"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: --password with no value asks on a terminal and there is none:"
        " pipe the password to --password-stdin\n"
    )
    listed = json.loads(dbsync(env, "connections", "list", "--json").stdout)
    assert url not in [c["site_url"] for c in listed]


def test_a_password_in_the_arguments_still_works_with_a_warning(
    site: Site, env: dict[str, str], receiver_url: str
) -> None:
    url = f"{receiver_url}/literal"
    result = dbsync(env, *create("literal", url, "--password", "in plain sight"))
    assert (result.returncode, result.stderr) == (0, WARNING)
    assert delivered_password(site, url) == "in plain sight"


def test_a_password_in_two_places_is_refused(
    env: dict[str, str], receiver_url: str
) -> None:
    url = f"{receiver_url}/both"
    args = create("both", url, "--password", "x", "--password-stdin")
    result = dbsync(env, *args, stdin="y\n")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith(
        "Error: give --password or --password-stdin, not both\n"
    )


def _registers(site: Site, password: str) -> int:
    client = testing.TestClient(create_app(site))
    body = {
        "sender_url": f"http://127.0.0.1:{free_port()}",
        "connection_name": "probe",
        "auth_token": "p" * 43,
        "password": password,
    }
    return post(client, "register-connection", body).status_code


def test_the_incoming_password_is_asked_twice_on_the_terminal(
    site: Site, env: dict[str, str]
) -> None:
    code, shown = on_terminal(
        env,
        "settings",
        "set",
        "incoming_password",
        typed=["tr0ub4dor&3", "tr0ub4dor&3"],
    )
    assert code == 0, shown
    assert "tr0ub4dor&3" not in shown
    assert shown.endswith("incoming_password: set\r\n")
    assert (_registers(site, "tr0ub4dor&3"), _registers(site, "wrong")) == (200, 401)


def test_the_incoming_password_with_no_value_and_no_terminal_is_an_error(
    site: Site, env: dict[str, str]
) -> None:
    result = dbsync(env, "settings", "set", "incoming_password")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: incoming_password with no value asks on a terminal and there is"
        " none: pipe the password to `dbsync settings set incoming_password -`\n"
    )
