"""Bundle what the sender does with its offered tables into one object per request.

The data endpoints describe, page, preview and checksum the same tables in
one request; a Catalog holds the descriptions (read once) and the site's
checksum limit, and each method is one call into pages, preview or checksum.
The receiver's pull job uses it only as the ``Tables`` it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine

from shared.data.keyset import Since
from shared.data.schema import Tables
from shared.data.sender import checksum, pages, preview
from shared.data.sender.pages import Page


class Catalog(Tables):
    """The offered tables of one data database: described, paged, previewed,
    checksummed.

    Build one per request or per pull: it caches table descriptions.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None = None,
        excluded: Iterable[str] = (),
        sensitive_offered: Iterable[str] = (),
        checksum_row_limit: int = 100_000,
    ) -> None:
        super().__init__(
            engine,
            schema=schema,
            excluded=excluded,
            sensitive_offered=sensitive_offered,
        )
        self._checksum_row_limit = checksum_row_limit

    def fetch_page(
        self,
        table: str,
        *,
        after: list[Any] | None,
        limit: int,
        for_body: bool = False,
        max_bytes: int | None = None,
        until: list[Any] | None = None,
        since: Since | None = None,
    ) -> Page:
        """See ``pages.fetch_page``."""
        return pages.fetch_page(
            self,
            table,
            after=after,
            limit=limit,
            for_body=for_body,
            max_bytes=max_bytes,
            until=until,
            since=since,
        )

    def preview(
        self,
        table: str,
        *,
        limit: int,
        offset: int = 0,
        ids: Sequence[Any] | None = None,
        id_start: Any = None,
        id_end: Any = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """See ``preview.preview``."""
        return preview.preview(
            self,
            table,
            limit=limit,
            offset=offset,
            ids=ids,
            id_start=id_start,
            id_end=id_end,
        )

    def checksum(self, table: str) -> str:
        """See ``checksum.checksum``."""
        return checksum.checksum(self, table)

    def table_summaries(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """See ``checksum.table_summaries``."""
        return checksum.table_summaries(
            self, names, checksum_row_limit=self._checksum_row_limit
        )
