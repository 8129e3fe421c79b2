"""A Phoenix application's credential tables are offered only when named."""

from __future__ import annotations

from sqlalchemy import create_engine

from shared.data.sender.offer import Catalog
from shared.settings import Settings

SENSITIVE = [
    "oban_jobs",
    "phoenix_kit_settings",
    "phoenix_kit_sync_connections",
    "phoenix_kit_user_tokens",
    "schema_migrations",
]


def test_sensitive_tables_are_offered_only_when_the_operator_names_them() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        for name in [*SENSITIVE, "phoenix_kit_users", "plain"]:
            conn.exec_driver_sql(f"CREATE TABLE {name} (id integer PRIMARY KEY)")
    assert Catalog(engine).offered_tables() == ["phoenix_kit_users", "plain"]
    assert not Catalog(engine).is_offerable("phoenix_kit_sync_transfers")
    named = Catalog(engine, sensitive_offered=["oban_jobs", "schema_migrations"])
    assert named.offered_tables() == [
        "oban_jobs",
        "phoenix_kit_users",
        "plain",
        "schema_migrations",
    ]
    # Naming a table offers it, never one an exclusion removes.
    both = Catalog(engine, excluded=["oban_jobs"], sensitive_offered=["oban_jobs"])
    assert "oban_jobs" not in both.offered_tables()


def test_the_setting_reads_a_comma_separated_list() -> None:
    env = {
        "SYNC_DATABASE_URL": "sqlite://",
        "SYNC_OFFER_SENSITIVE_TABLES": " oban_jobs, ,schema_migrations ",
    }
    assert Settings.from_env(env).offer_sensitive_tables == (
        "oban_jobs",
        "schema_migrations",
    )
    assert (
        Settings.from_env({"SYNC_DATABASE_URL": "sqlite://"}).offer_sensitive_tables
        == ()
    )
