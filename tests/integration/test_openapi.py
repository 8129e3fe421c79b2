"""The peer API's OpenAPI document, and schemathesis against a live site.

The site runs as an operator runs it (the Procfile's web line, gunicorn on a
loopback port) with a sender connection and an offered table, so fuzzed
bodies meet every check. Every answer must be a documented status with a body
of its documented schema and content type, and none a 5xx.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import SiteProcesses
from tests.helpers import ScratchDatabases, free_port

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def live_site(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[SiteProcesses]:
    site = SiteProcesses(
        "openapi",
        tmp_path_factory.mktemp("openapi"),
        module_db_factory.create("oas"),
        15,
    )
    site.sql(
        "CREATE TABLE things (id integer PRIMARY KEY, label text);"
        "INSERT INTO things SELECT g, 'thing ' || g FROM generate_series(1, 30) g;"
    )
    site.cli("settings", "set", "enabled", "true")
    site.cli("settings", "set", "incoming_mode", "auto_accept")
    site.start(worker=False, beat=False)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(scope="module")
def api_schema(live_site: SiteProcesses) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_site.url}/sync/api/openapi.json")


def test_the_document_lists_every_endpoint(live_site: SiteProcesses) -> None:
    got = httpx.get(f"{live_site.url}/sync/api/openapi.json", timeout=10)
    assert got.status_code == 200
    doc = got.json()
    assert doc["openapi"] == "3.1.0"
    names = {path.rsplit("/", 1)[1] for path in doc["paths"]}
    assert names == {
        "status",
        "register-connection",
        "get-connection-status",
        "update-status",
        "delete-connection",
        "verify-connection",
        "list-tables",
        "table-schema",
        "table-records",
        "pull-data",
    }
    pull = doc["paths"]["/sync/api/pull-data"]["post"]["responses"]["200"]
    assert set(pull["headers"]) == {
        "X-Sync-Table",
        "X-Sync-Format",
        "X-Sync-Columns",
        "X-Sync-Count",
        "X-Sync-Has-More",
        "X-Sync-Next-Cursor",
    }
    assert "application/vnd.dbsync.pgcopy" in pull["content"]


ENDPOINTS = [
    ("GET", "status"),
    *(
        ("POST", name)
        for name in (
            "register-connection",
            "get-connection-status",
            "update-status",
            "delete-connection",
            "verify-connection",
            "list-tables",
            "table-schema",
            "table-records",
            "pull-data",
        )
    ),
]


@pytest.mark.parametrize(("method", "name"), ENDPOINTS)
def test_every_answer_conforms(
    api_schema: schemathesis.BaseSchema, method: str, name: str
) -> None:
    """Bodies generated from the document, valid and not, 40 per endpoint."""
    operation = api_schema[f"/sync/api/{name}"][method]
    cases = operation.as_strategy()
    if method == "POST":  # bodies that break the schema too
        cases = cases | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()


def test_a_logged_lifecycle_of_the_folder(live_site: SiteProcesses) -> None:
    """The fuzzing left the site answering and its log without a traceback."""
    assert httpx.get(f"{live_site.url}/sync/api/status", timeout=5).status_code == 200
    log = (Path(live_site.home) / "web.log").read_text()
    assert "Traceback" not in log


def test_real_answers_of_an_active_connection_conform(
    live_site: SiteProcesses, api_schema: schemathesis.BaseSchema
) -> None:
    """The success shapes: a connection's token, so every data call answers 200."""
    created = live_site.cli_json(
        "connections",
        "create",
        "--name",
        "probe",
        "--url",
        f"http://127.0.0.1:{free_port()}",
    )
    live_site.sql(
        "UPDATE dbsync_connections SET status = 'active' WHERE id = :id",
        id=created["id"],
    )
    token_hash = hashlib.sha256(created["token"].encode()).hexdigest()
    table = {"auth_token_hash": token_hash, "table_name": "things"}
    calls = [
        ("list-tables", {"auth_token_hash": token_hash}, "application/json"),
        ("table-schema", table, "application/json"),
        ("table-records", {**table, "limit": 5}, "application/json"),
        ("pull-data", {**table, "limit": 7}, "application/json"),
        (
            "pull-data",
            {**table, "limit": 7, "format": "pg_copy_text"},
            "text/vnd.dbsync.pgcopy",
        ),
        (
            "pull-data",
            {**table, "limit": 7, "format": "pg_copy_binary"},
            "application/vnd.dbsync.pgcopy",
        ),
    ]
    for name, body, content_type in calls:
        case = api_schema[f"/sync/api/{name}"]["POST"].Case(
            body=body, media_type="application/json"
        )
        answer = case.call_and_validate(checks=CHECKS, timeout=30)
        assert answer.status_code == 200, (name, answer.text[:300])
        assert answer.headers["content-type"][0].startswith(content_type)
        if content_type != "application/json":
            assert answer.headers["x-sync-count"] == ["7"]
            assert answer.headers["x-sync-has-more"] == ["true"]
