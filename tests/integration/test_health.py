"""Readiness checks on a real PostgreSQL and Redis, through /readyz and directly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from shared import dispatch
from shared.context import Site
from shared.control import health
from shared.db import Database, utcnow
from shared.dispatch import DeferredDispatcher
from tests.helpers import REDIS_URL, free_port, make_settings

REDIS = {"SYNC_BROKER_URL": f"{REDIS_URL}/15"}
CHECKS = ["state_database", "data_database", "broker", "migrations", "beat"]


def _states(body: dict[str, Any]) -> dict[str, str]:
    return {name: check["state"] for name, check in body["checks"].items()}


def test_livez_answers_without_asking_anything(client: testing.TestClient) -> None:
    resp = client.simulate_get("/livez")
    assert (resp.status_code, resp.json) == (200, {"status": "ok"})
    assert resp.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("settings_env", [REDIS])
def test_readyz_is_200_once_beat_started(
    site: Site, client: testing.TestClient
) -> None:
    health.record(site.db, health.BEAT_STARTED)
    resp = client.simulate_get("/readyz")
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "ready"
    assert _states(resp.json) == dict.fromkeys(CHECKS, "ok")
    jobs = resp.json["checks"]["beat"]["jobs"]
    assert set(jobs) == {
        dispatch.VERIFY_ALL,
        dispatch.EXPIRE_CONNECTIONS,
        dispatch.SWEEP_NOTICES,
    }
    assert {j["state"] for j in jobs.values()} == {"ok"}
    assert client.simulate_get("/sync/api/readyz").status_code == 404


@pytest.mark.parametrize("settings_env", [REDIS])
def test_readyz_names_beat_when_it_never_started(
    client: testing.TestClient,
) -> None:
    resp = client.simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.json["failing"] == ["beat"]
    assert resp.json["checks"]["beat"]["detail"] == (
        "beat has never started on this site"
    )


@pytest.mark.parametrize(
    "settings_env", [{"SYNC_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}]
)
def test_readyz_names_an_unreachable_broker(
    site: Site, client: testing.TestClient
) -> None:
    health.record(site.db, health.BEAT_STARTED)
    resp = client.simulate_get("/readyz")
    assert resp.status_code == 503
    assert resp.json["failing"] == ["broker"]
    assert resp.json["checks"]["broker"]["detail"].startswith("ConnectionError")


@pytest.mark.parametrize("settings_env", [REDIS])
def test_readyz_names_migrations_behind_the_code(
    site: Site, client: testing.TestClient
) -> None:
    health.record(site.db, health.BEAT_STARTED)
    with site.db.engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    try:
        resp = client.simulate_get("/readyz")
    finally:
        with site.db.engine.begin() as conn:
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": head}
            )
    assert resp.status_code == 503
    assert resp.json["failing"] == ["migrations"]
    migrations = resp.json["checks"]["migrations"]
    assert migrations["database"] == ["0002"]
    assert migrations["expected"] == [head]
    assert migrations["detail"].endswith("run `dbsync db upgrade`")


def _at(site: Site, job: str, when: dt.datetime) -> None:
    with site.db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dbsync_beat_heartbeats (job, last_run_at, runs)"
                " VALUES (:job, :at, 1)"
            ),
            {"job": job, "at": when},
        )


@pytest.mark.parametrize(
    ("started_ago", "verify_ago", "on_time"),
    [
        (None, 10, True),  # ran within 3 intervals (interval 900 s by default)
        (None, 2700, True),  # exactly 3 intervals: still on time
        (None, 2701, False),  # past 3 intervals
        (60, None, True),  # never ran, but beat started a minute ago
        (2701, None, False),  # never ran since beat started 3 intervals ago
        (60, 5000, True),  # beat restarted: its jobs get their grace again
    ],
)
def test_a_job_is_late_after_three_of_its_intervals(
    site: Site, started_ago: int | None, verify_ago: int | None, on_time: bool
) -> None:
    now = utcnow()
    for job in (dispatch.EXPIRE_CONNECTIONS, dispatch.SWEEP_NOTICES):
        _at(site, job, now)
    if started_ago is not None:
        _at(site, health.BEAT_STARTED, now - dt.timedelta(seconds=started_ago))
    if verify_ago is not None:
        _at(site, dispatch.VERIFY_ALL, now - dt.timedelta(seconds=verify_ago))
    check = health.beat_check(site.db.engine, site.settings, now=now)
    assert check.ok is on_time
    assert check.facts["jobs"][dispatch.VERIFY_ALL]["state"] == (
        "ok" if on_time else "late"
    )
    if not on_time:
        ago = f"{verify_ago} s ago" if verify_ago else "never"
        assert check.detail == (
            f"beat has missed 3 intervals: {dispatch.VERIFY_ALL} last ran {ago}"
            " (every 900 s); is `dbsync beat` running, with a worker on the peer"
            " queue?"
        )


def test_record_counts_every_run(site: Site) -> None:
    for _ in range(3):
        health.record(site.db, dispatch.VERIFY_ALL)
    with site.db.engine.connect() as conn:
        runs = conn.execute(text("SELECT runs FROM dbsync_beat_heartbeats")).scalar()
    assert runs == 3


def test_file_scheduler_makes_its_folder(tmp_path: Path) -> None:
    from workers.celery_app import FileScheduler, app

    path = tmp_path / "made" / "by" / "beat" / "celerybeat-schedule"
    scheduler = FileScheduler(app=app, schedule_filename=str(path), lazy=False)
    try:
        assert path.parent.is_dir()
    finally:
        scheduler.close()


def test_beat_config_per_broker() -> None:
    from workers.celery_app import beat_config

    redis = beat_config(
        make_settings(
            "sqlite://", SYNC_BROKER_URL=f"{REDIS_URL}/3", SYNC_QUEUE_PREFIX="a."
        )
    )
    assert redis["beat_scheduler"] == "workers.beat_scheduler:BrokerScheduler"
    assert redis["redbeat_redis_url"] == f"{REDIS_URL}/3"
    assert redis["redbeat_key_prefix"] == "a.redbeat"
    assert (redis["beat_max_loop_interval"], redis["redbeat_lock_timeout"]) == (10, 30)
    assert "beat_schedule_filename" not in redis
    embedded = beat_config(make_settings("sqlite://", SYNC_HOME="/srv/site"))
    assert embedded["beat_scheduler"] == "workers.celery_app:FileScheduler"
    assert embedded["beat_schedule_filename"] == "/srv/site/celerybeat-schedule"


def test_a_database_that_refuses_connections_is_503_not_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "too many clients", a restart, a database that is gone: the caller comes back."""
    closed = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"
    settings = make_settings(closed)
    db = Database(settings.database_url, settings.data_database_url)
    client = testing.TestClient(create_app(Site(settings, db, DeferredDispatcher())))
    try:
        with caplog.at_level("WARNING", logger="dbsync.api"):
            resp = client.simulate_get("/sync/api/status")
    finally:
        db.dispose()
    assert resp.status_code == 503
    assert resp.json == {"success": False, "error": "Database temporarily unavailable"}
    assert resp.headers["retry-after"] == "5"
    lines = [r for r in caplog.records if r.name == "dbsync.api"]
    assert [r.levelname for r in lines] == ["WARNING"]
    assert (
        lines[0].getMessage().startswith("database unavailable on GET /sync/api/status")
    )
    assert lines[0].exc_info is None
