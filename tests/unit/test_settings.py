"""Settings come from SYNC_* variables with embedded defaults."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError


def test_embedded_defaults_need_no_server() -> None:
    s = Settings.from_env({"SYNC_HOME": "/tmp/x"})
    assert s.database_url == "sqlite:////tmp/x/dbsync.sqlite3"
    assert s.data_database_url == s.database_url
    assert s.broker_url == "sqla+sqlite:////tmp/x/broker.sqlite3"
    assert s.verify_interval_seconds == 900
    assert s.api_prefix == "/sync/api"


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_postgres_urls_use_psycopg2(scheme: str) -> None:
    s = Settings.from_env({"SYNC_DATABASE_URL": scheme + "u@h:5432/db"})
    assert s.database_url == "postgresql+psycopg2://u@h:5432/db"


def test_values_are_typed_and_checked() -> None:
    s = Settings.from_env(
        {
            "SYNC_VERIFY_INTERVAL_SECONDS": "30",
            "SYNC_URL_PREFIX": "pk/",
            "SYNC_ALLOW_PRIVATE_URLS": "yes",
        }
    )
    assert s.verify_interval_seconds == 30
    assert s.api_prefix == "/pk/sync/api"
    assert s.allow_private_urls is True
    with pytest.raises(SettingsError, match="SYNC_VERIFY_INTERVAL_SECONDS"):
        Settings.from_env({"SYNC_VERIFY_INTERVAL_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="SYNC_ALLOW_PRIVATE_URLS"):
        Settings.from_env({"SYNC_ALLOW_PRIVATE_URLS": "maybe"})


@pytest.mark.parametrize(
    ("value", "tracked"),
    [
        (None, ("*",)),
        ("off", ()),
        ("OFF", ()),
        ("none", ()),
        ("", ()),
        ("orders, items", ("orders", "items")),
        ("*", ("*",)),
    ],
)
def test_change_tracking_is_on_unless_turned_off(
    value: str | None, tracked: tuple[str, ...]
) -> None:
    env = {} if value is None else {"SYNC_CHANGE_TRACKING": value}
    s = Settings.from_env(env)
    assert s.change_tracking == tracked
    assert s.tracks_changes("orders") is bool(tracked)
    assert s.tracks_changes("other") is (tracked == ("*",))
