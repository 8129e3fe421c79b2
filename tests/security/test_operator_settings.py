"""Credentials in settings: never printed, and readable from files (secrets).

Plays whoever reads a traceback, a debug log or ``ps e``/``docker inspect``:
the settings' repr must show no password, and every credential can come from
a file instead of the environment.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from shared.settings import Settings, SettingsError
from tests.helpers import DBSYNC, ScratchDatabases

STATE = "postgresql://dbsync_state:st4te-pw@db.internal:5432/state?sslmode=require"
DATA = "postgresql://dbsync_data:d4ta-pw@db.internal:5432/data?password=q-pw"
BROKER = "redis://:r3dis-pw@redis.internal:6379/0"
PASSWORDS = ("st4te-pw", "d4ta-pw", "q-pw", "r3dis-pw")


def test_repr_and_str_of_settings_show_no_password() -> None:
    s = Settings.from_env(
        {
            "SYNC_DATABASE_URL": STATE,
            "SYNC_DATA_DATABASE_URL": DATA,
            "SYNC_BROKER_URL": BROKER,
        }
    )
    for shown in (repr(s), str(s), f"{s!r}", repr(vars(s))):
        assert not [p for p in PASSWORDS if p in shown], shown
    assert (
        "database_url=SecretURL('postgresql+psycopg2://dbsync_state:***"
        "@db.internal:5432/state?sslmode=require')" in repr(s)
    )
    assert (
        "data_database_url=SecretURL('postgresql+psycopg2://dbsync_data:***"
        "@db.internal:5432/data?password=***')" in repr(s)
    )
    assert "broker_url=SecretURL('redis://:***@redis.internal:6379/0')" in repr(s)
    # What the engines and the broker are given is still the whole URL.
    assert s.database_url == "postgresql+psycopg2" + STATE.removeprefix("postgresql")
    assert f"{s.broker_url}" == BROKER and str(s.broker_url) == BROKER
    assert s.broker_url.startswith("redis://")


def test_a_lone_redis_user_part_is_treated_as_the_password() -> None:
    s = Settings.from_env({"SYNC_BROKER_URL": "redis://onlysecret@redis:6379/0"})
    assert "onlysecret" not in repr(s)
    assert "broker_url=SecretURL('redis://***@redis:6379/0')" in repr(s)


def test_embedded_urls_print_as_they_are(tmp_path: Path) -> None:
    s = Settings.from_env({"SYNC_HOME": str(tmp_path)})
    assert f"database_url=SecretURL('sqlite:///{tmp_path}/dbsync.sqlite3')" in repr(s)


def test_each_credential_may_come_from_a_file(tmp_path: Path) -> None:
    for name, value in (("state", STATE), ("data", DATA), ("broker", BROKER)):
        (tmp_path / name).write_text(value + "\n")  # as `echo ... > file` writes it
    s = Settings.from_env(
        {
            "SYNC_DATABASE_URL_FILE": str(tmp_path / "state"),
            "SYNC_DATA_DATABASE_URL_FILE": str(tmp_path / "data"),
            "SYNC_BROKER_URL_FILE": str(tmp_path / "broker"),
        }
    )
    assert s.database_url == "postgresql+psycopg2" + STATE.removeprefix("postgresql")
    assert s.data_database_url == "postgresql+psycopg2" + DATA.removeprefix(
        "postgresql"
    )
    assert s.broker_url == BROKER


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SYNC_DATABASE_URL": STATE, "SYNC_DATABASE_URL_FILE": "{dir}/state"},
            "set SYNC_DATABASE_URL or SYNC_DATABASE_URL_FILE, not both",
        ),
        (
            {"SYNC_BROKER_URL_FILE": "{dir}/missing"},
            "SYNC_BROKER_URL_FILE: cannot read {dir}/missing: No such file or directory",
        ),
        (
            {"SYNC_DATA_DATABASE_URL_FILE": "{dir}/empty"},
            "SYNC_DATA_DATABASE_URL_FILE: {dir}/empty is empty",
        ),
    ],
    ids=["both", "missing", "empty"],
)
def test_a_secret_file_that_cannot_be_used_is_an_error(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "state").write_text(STATE)
    (tmp_path / "empty").write_text("\n")
    env = {k: v.format(dir=tmp_path) for k, v in env.items()}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message.format(dir=tmp_path)


def test_the_cli_migrates_the_database_named_in_a_secret_file(
    tmp_path: Path, scratch_db_factory: ScratchDatabases
) -> None:
    url = scratch_db_factory.create("secretfile")
    secret = tmp_path / "database_url"
    secret.write_text(url + "\n")
    secret.chmod(0o400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(SYNC_DATABASE_URL_FILE=str(secret), SYNC_HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [DBSYNC, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "database is up to date\n")
    engine = create_engine(url)
    try:
        assert "dbsync_connections" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert not (tmp_path / "home" / "dbsync.sqlite3").exists()
