"""The workers' app: built from settings, no runtime at import, lease owner per process."""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path
from types import ModuleType

import pytest

from shared import dispatch
from shared.settings import Settings


@pytest.fixture
def celery_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for name in [k for k in os.environ if k.startswith("SYNC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SYNC_HOME", str(tmp_path))
    return importlib.import_module("workers.celery_app")


def _settings(broker: str) -> Settings:
    return Settings(
        database_url="sqlite://", data_database_url="sqlite://", broker_url=broker
    )


def test_importing_the_app_builds_no_runtime(celery_app: ModuleType) -> None:
    from workers.base import SiteTask

    assert SiteTask._runtime is None


@pytest.mark.parametrize(
    ("broker", "options"),
    [
        ("redis://127.0.0.1:6379/0", {"visibility_timeout": 7200}),
        ("sqla+sqlite:///broker.sqlite3", {}),
    ],
)
def test_workers_and_web_share_the_broker_options(
    celery_app: ModuleType, broker: str, options: dict[str, int]
) -> None:
    settings = _settings(broker)
    app = celery_app.create_app(settings)
    assert app.conf.broker_url == broker
    assert (app.conf.broker_transport_options or {}) == options
    assert dispatch.celery_config(settings).get("broker_transport_options", {}) == (
        options
    )


def test_every_task_name_is_registered(celery_app: ModuleType) -> None:
    app = celery_app.create_app(_settings("memory://"))
    app.loader.import_default_modules()
    names = {
        dispatch.DELIVER_NOTICE,
        dispatch.SWEEP_NOTICES,
        dispatch.VERIFY_ALL,
        dispatch.VERIFY_CONNECTION,
        dispatch.EXPIRE_CONNECTIONS,
        dispatch.RUN_PULL,
        dispatch.RUN_SYNCS,
    }
    assert names <= set(celery_app.app.tasks)
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled <= names


def test_the_lease_owner_is_the_running_process(celery_app: ModuleType) -> None:
    from workers.tasks.pull import run_pull

    run_pull.push_request(id="task-1")
    try:
        owner = run_pull.lease_owner
    finally:
        run_pull.pop_request()
    assert owner == f"{socket.gethostname()}:{os.getpid()}:task-1"
