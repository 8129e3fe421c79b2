"""Metrics scraped during a real pull, and the JSON logs of a whole lifecycle.

One pair of sites, run as an operator runs them with ``SYNC_LOG_FORMAT=json``:
the receiver's ``/metrics`` is scraped while its workers pull a table page by
page, the sender's while it serves; then every line the sites' processes
logged must parse as a JSON object, carry request or task ids, and hold no
secret.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import SiteProcesses, field, pair
from tests.helpers import ScratchDatabases, eventually, free_port

pytestmark = pytest.mark.e2e

ROWS = 240_000
PAGE = 12_000
ENV = {
    "SYNC_LOG_FORMAT": "json",
    "SYNC_BULK_PAGE_ROWS": str(PAGE),
    "SYNC_PULL_LEASE_SECONDS": "6",
}
SHARED: dict[str, str] = {}  # the pairing's token, for the last test's log check
TABLE = """
CREATE TABLE metered (id bigint PRIMARY KEY, label text, n integer);
INSERT INTO metered SELECT g, 'row ' || g || repeat('y', g % 50), g % 97
FROM generate_series(1, :n) g;
"""


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[SiteProcesses, SiteProcesses]]:
    workdir = tmp_path_factory.mktemp("observe")
    sender = SiteProcesses(
        "sender", workdir, module_db_factory.create("obs_sender"), 13, **ENV
    )
    receiver = SiteProcesses(
        "receiver", workdir, module_db_factory.create("obs_receiver"), 14, **ENV
    )
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def scrape(site: SiteProcesses) -> dict[str, float]:
    """Every sample of the site's /metrics, by name and sorted labels."""
    text = httpx.get(f"{site.url}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


class Scraper(threading.Thread):
    """Scrape a site every 0.2 s until stopped, keeping every answer."""

    def __init__(self, site: SiteProcesses) -> None:
        super().__init__(daemon=True)
        self._site = site
        self.seen: list[dict[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.seen.append(scrape(self._site))
            time.sleep(0.2)


def test_metrics_move_during_a_pull(sites: tuple[SiteProcesses, SiteProcesses]) -> None:
    sender, receiver = sites
    sender.sql(TABLE, n=ROWS)
    created = pair(sender, receiver)
    SHARED["token"] = created["token"]
    before = scrape(receiver)
    assert before["dbsync_pull_rows_written_total{}"] == 0
    assert before["dbsync_pulls_total{outcome=completed}"] == 0

    watcher = Scraper(receiver)
    watcher.start()
    rid = field(receiver, "id")
    started = receiver.cli_json("pull", rid, "metered", "--create-missing")
    transfer_id = started["id"]

    def done() -> bool:
        rows = receiver.cli_json("transfers", "show", transfer_id)
        assert rows["status"] in ("pending", "running", "completed"), rows
        return rows["status"] == "completed"

    eventually(done, timeout=120, every=0.5)
    time.sleep(0.5)
    watcher.stopping.set()
    watcher.join(timeout=15)

    written = [s["dbsync_pull_rows_written_total{}"] for s in watcher.seen]
    # The rows rose page by page: several values strictly between none and all.
    partial = sorted({w for w in written if 0 < w < ROWS})
    assert len(partial) >= 2, written
    assert written == sorted(written)
    after = scrape(receiver)
    assert after["dbsync_pull_rows_written_total{}"] == ROWS
    assert after["dbsync_pull_pages_written_total{}"] == ROWS // PAGE
    assert after["dbsync_pulls_total{outcome=started}"] == 1
    assert after["dbsync_pulls_total{outcome=completed}"] == 1
    assert after["dbsync_pulls_total{outcome=failed}"] == 0
    assert any(s["dbsync_pulls_running{}"] == 1 for s in watcher.seen)
    assert after["dbsync_pulls_running{}"] == 0
    assert after["dbsync_connections{direction=receiver,status=active}"] == 1
    # Beat ran its jobs; their age is seconds, not the epoch.
    ages = {k: v for k, v in after.items() if k.startswith("dbsync_beat_last_run_age")}
    assert "dbsync_beat_last_run_age_seconds{job=beat_started}" in ages
    assert all(0 <= v < 120 for v in ages.values()), ages

    served = scrape(sender)
    assert served["dbsync_served_rows_total{format=copy}"] == ROWS
    assert served["dbsync_served_bytes_total{format=copy}"] > ROWS * 10
    pulls = served[
        "dbsync_http_requests_total{method=POST,route=/sync/api/pull-data,status=200}"
    ]
    assert pulls == ROWS // PAGE
    assert (
        served[
            "dbsync_http_request_duration_seconds_count{method=POST,route=/sync/api/pull-data}"
        ]
        == pulls
    )
    # No label carries a connection's name or a peer's address.
    text = httpx.get(f"{sender.url}/metrics", timeout=10).text
    assert "to-receiver" not in text and str(receiver.port) not in text


def test_the_notice_backlog_and_delivery_failures(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, _receiver = sites
    before = scrape(sender)
    assert before["dbsync_notice_backlog{}"] == 0
    dead = f"http://127.0.0.1:{free_port()}"
    sender.cli_json("connections", "create", "--name", "nowhere", "--url", dead)
    seen = eventually(
        lambda: (
            (s := scrape(sender))["dbsync_notice_delivery_failures_total{}"] >= 2 and s
        ),
        timeout=60,
    )
    assert seen["dbsync_notice_backlog{}"] == 1
    assert seen["dbsync_connections{direction=sender,status=pending}"] == 1


def _records(site: SiteProcesses) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(Path(site.home).glob("*.log")):
        if path.name == "cli.log":
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                out.append((path.name, json.loads(line)))  # one object per line
    return out


def test_json_logs_parse_and_carry_ids_and_no_secret(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    """Runs last: the pairing, pull and failed notices above are the lifecycle."""
    sender, receiver = sites
    token = SHARED["token"]
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    for site in (sender, receiver):
        records = _records(site)
        assert {name for name, _ in records} == {"web.log", "worker.log", "beat.log"}
        for name, record in records:
            assert isinstance(record, dict) and "event" in record, (name, record)
            raw = json.dumps(record)
            assert token not in raw and token_hash[:9] not in raw, (name, raw[:300])
        web = [r for name, r in records if name == "web.log"]
        requests = [r for r in web if r.get("logger") == "dbsync.http"]
        # Made here (32 hex), or a peer's task id (a uuid) that called us.
        assert requests and all(
            re.fullmatch(r"[0-9a-f]{32}|[0-9a-f-]{36}", r["request_id"])
            for r in requests
        )
        tasks = [r for name, r in records if name == "worker.log" and "task_id" in r]
        assert tasks, "no worker line carried a task id"
        assert all(
            re.fullmatch(r"[0-9a-f-]{36}", r["task_id"]) and r["task"] for r in tasks
        )
    receiver_tasks = {r.get("task") for _, r in _records(receiver) if "task_id" in r}
    # The receiver's pull task sent its id to the sender as X-Request-ID: the
    # sender's lines of those pull-data calls carry it.
    pull_ids = {
        r["task_id"]
        for _, r in _records(receiver)
        if r.get("task") == "dbsync.run_pull"
    }
    served = {
        r["request_id"]
        for _, r in _records(sender)
        if r.get("logger") == "dbsync.http" and "pull-data" in r["event"]
    }
    assert pull_ids and served and served <= pull_ids
    assert "dbsync.run_pull" in receiver_tasks, receiver_tasks
