"""Bundle what every service needs about the running site."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.db import Database
from shared.dispatch import Dispatcher
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.data.sender.offer import Catalog


@dataclass
class Site:
    settings: Settings
    db: Database
    dispatcher: Dispatcher

    def catalog(self) -> Catalog:
        """A fresh view of the offered tables of this site's data database.

        Build one per request or per pull: a Catalog caches table descriptions.
        """
        from shared.data.receiver.checkpoints import CHECKPOINT_TABLE
        from shared.data.sender.offer import Catalog
        from shared.data.sender.tracking import TABLES as TRACKING_TABLES
        from shared.state.models import OWN_TABLES

        engine = self.db.data_engine
        return Catalog(
            engine,
            schema=self.settings.data_schema
            if engine.dialect.name == "postgresql"
            else None,
            excluded=set(OWN_TABLES)
            | {CHECKPOINT_TABLE}
            | TRACKING_TABLES
            | set(self.settings.excluded_tables),
            sensitive_offered=self.settings.offer_sensitive_tables,
            checksum_row_limit=self.settings.checksum_row_limit,
        )


def site_from_env(
    dispatcher: Callable[[Settings], Dispatcher],
    settings: Settings | None = None,
    **engine_options: object,
) -> Site:
    """The site a process runs, from ``SYNC_*`` variables unless settings are given.

    Every entry point (web, worker, CLI) builds its site here and differs only
    in how it hands work to the workers.
    """
    if settings is None:
        settings = Settings.from_env()
        settings.ensure_home()
    db = Database(settings.database_url, settings.data_database_url, **engine_options)
    return Site(settings, db, dispatcher(settings))
