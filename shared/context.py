"""Bundle what every service needs about the running site."""

from __future__ import annotations

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
        from shared.state.models import OWN_TABLES

        engine = self.db.data_engine
        return Catalog(
            engine,
            schema=self.settings.data_schema
            if engine.dialect.name == "postgresql"
            else None,
            excluded=set(OWN_TABLES)
            | {CHECKPOINT_TABLE}
            | set(self.settings.excluded_tables),
            checksum_row_limit=self.settings.checksum_row_limit,
        )
