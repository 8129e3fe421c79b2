"""Fetch the pages of one table from its sender, as JSON rows or as COPY data.

A page source asks the sender's pull-data endpoint for the page after a
cursor and hands it over as a shared.data.receiver.pages page, for the
writer to apply. It owns how pages are fetched: the sender's pacing (a 429
is waited out as its Retry-After says, without spending one of the
transfer's attempts), and for JSON the page fetched one ahead while the one
before it is written. What to pull, and what a failure means for the
transfer, is the pull's (shared.data.receiver.pulls).

The sender is not trusted with this site's memory or time: every page is
fetched within SYNC_PULL_PAGE_SECONDS, a JSON page may take
SYNC_PULL_JSON_ROW_BYTES per row asked for (decoded), and a COPY page
SYNC_PULL_ROW_MAX_BYTES per row its headers announce (at most
SYNC_PULL_PAGE_MAX_BYTES), with each text row checked as it streams. A page
past a limit fails the transfer (BadAnswer, AnswerRefused).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.control.peer import PeerClient, PeerResponse, PeerStream, RateLimited
from shared.data import copy_format, wire
from shared.data.receiver import bulk_in
from shared.data.receiver.pages import BulkPage, JsonPage, Page

RATE_LIMIT_WAITS = 120  # answers of 429 waited out for one request
COPY_FRAMING = 64  # binary COPY's header and trailer, with room to spare
FETCH_SWITCH_INTERVAL = 0.0005  # seconds

T = TypeVar("T")


def tune_for_pulls() -> None:
    """Hand the interpreter between threads every 0.5 ms instead of 5 ms.

    Call once when a process that runs pulls starts (a pool process of the
    worker). A JSON source fetches the next page in a thread while the pull
    writes this one: the fetching thread reads a page in dozens of socket
    reads, each needing the interpreter lock that the writing thread holds
    while it renders rows. At the default interval each read may wait 5 ms,
    up to a third of a second for a 4 MB page, which is about as long as
    writing one.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), FETCH_SWITCH_INTERVAL))


class BadAnswer(Exception):
    """The sender answered, but not with the page asked for (the transfer fails)."""


def retry_after_wait(hint: float | None) -> float:
    """Seconds to wait on a 429: as the sender says, between 0.5 s and a minute."""
    return float(min(max(hint or 1.0, 0.5), 60.0))


def paced(call: Callable[[], T], *, sleep: Callable[[float], Any] = time.sleep) -> T:
    """``call()``, waiting out the sender's 429s as told, up to RATE_LIMIT_WAITS
    tries; the last RateLimited is raised as it came."""
    for attempt in range(1, RATE_LIMIT_WAITS + 1):
        try:
            return call()
        except RateLimited as ex:
            if attempt == RATE_LIMIT_WAITS:
                raise
            sleep(retry_after_wait(ex.retry_after))
    raise AssertionError("unreachable")  # the last try returns or raises


@dataclass(frozen=True)
class Sender:
    """Where a pull asks: the sender's URL and this connection's token."""

    client: PeerClient
    site_url: str
    token_hash: str
    prefix: str | None = None  # the peer's API prefix; None: this site's own

    def post(self, endpoint: str, body: dict[str, Any]) -> PeerResponse:
        """POST for a JSON answer, waiting out the sender's pacing."""
        return paced(
            lambda: self.client.post(
                self.site_url,
                endpoint,
                {"auth_token_hash": self.token_hash, **body},
                prefix=self.prefix,
            )
        )

    def open(self, endpoint: str, body: dict[str, Any], max_bytes: int) -> PeerStream:
        """POST for a streamed answer, waiting out the sender's pacing.

        The answer may take ``max_bytes`` decoded, and the call, its body
        read included, SYNC_PULL_PAGE_SECONDS.
        """
        return paced(
            lambda: self.client.post_stream(
                self.site_url,
                endpoint,
                {"auth_token_hash": self.token_hash, **body},
                copy_format.ACCEPT,
                max_bytes=max_bytes,
                seconds=self.client.settings.pull_page_seconds,
                prefix=self.prefix,
            )
        )


class SinceSeen:
    """What a sender said of a pull's ``since`` filter (cursor mode), page by page.

    A sender that applied the filter repeats it in each answer; one that does
    not know it (an older site) ignores it and sends every row, which is a
    full pull: ``ignored`` says so. ``high_water`` is the mark the first page
    (the one asked without a cursor) carried.
    """

    def __init__(self, since: dict[str, Any] | None) -> None:
        self.since = since
        self.ignored = False
        self.first: dict[str, Any] | None = None

    def body(self, body: dict[str, Any]) -> None:
        if self.since is not None:
            body["since"] = self.since

    def answer(self, echo: Any, cursor: Any) -> None:
        if self.since is None:
            return
        applied = (
            isinstance(echo, dict)
            and echo.get("column") == self.since["column"]
            and echo.get("after") == self.since["after"]
        )
        if not applied:
            self.ignored = True
        elif cursor is None and "high_water" in echo:
            self.first = echo

    def header(self, text: str | None, cursor: Any) -> None:
        try:
            echo = None if text is None else wire.parse_json(text)
        except ValueError:
            echo = None
        self.answer(echo, cursor)


def json_page(answer: PeerResponse, size: int) -> JsonPage:
    """The JSON page in a pull-data answer; BadAnswer if it holds none."""
    if answer.status != 200 or answer.body.get("success") is not True:
        raise BadAnswer(answer.error)
    rows = answer.body.get("data")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BadAnswer("Invalid response from remote site")
    next_cursor = answer.body.get("next_cursor")
    has_more = answer.body.get("has_more") is True and next_cursor is not None
    return JsonPage(rows, next_cursor, has_more, size)


class JsonSource:
    """JSON pages of one table, each fetched while the one before it is written.

    The sender encodes a page while this site writes the previous one, so a
    pull takes about the longer of the two rather than their sum. A page
    fetched ahead of a failure is dropped: the next run asks for it again
    from the checkpoint. Use as a context manager (it owns the fetching
    thread).
    """

    def __init__(
        self,
        sender: Sender,
        table: str,
        strategy: str,
        *,
        direct: bool,
        since: dict[str, Any] | None = None,
    ) -> None:
        self._sender = sender
        self._table = table
        self._strategy = strategy
        self.direct = direct  # whether its pages may be copied straight in
        self.seen = SinceSeen(since)
        self._ahead = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dbsync-fetch"
        )
        self._upcoming: tuple[Any, Future[tuple[int, bytes, int]]] | None = None

    def __enter__(self) -> JsonSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancel()
        self._ahead.shutdown()

    def may_go_direct(self, page: Page) -> bool:
        return self.direct

    def restage(self, *, as_text: bool) -> None:
        """Write the pages staged from now on (JSON is text already)."""
        self.direct = False

    @contextmanager
    def page(self, cursor: Any) -> Iterator[Page]:
        """The page after ``cursor``; the one after it is asked for meanwhile."""
        upcoming = self._upcoming
        self._upcoming = None
        if upcoming is None or upcoming[0] != cursor:
            if upcoming is not None:
                upcoming[1].cancel()
            upcoming = (cursor, self._ahead.submit(self._fetch, cursor))
        # Parsed here, not in the fetching thread: the two would only take
        # turns at the interpreter lock, and that thread's socket reads
        # would wait behind the parse.
        status, content, size = upcoming[1].result()
        answer = PeerResponse.parse(status, content)
        page = self._parse(answer, size, cursor)
        self.seen.answer(answer.body.get("since"), cursor)
        del content, upcoming, answer  # parsed: only one page's body and rows at a time
        if page.has_more:
            self._upcoming = (
                page.next_cursor,
                self._ahead.submit(self._fetch, page.next_cursor),
            )
        try:
            yield page
        except BaseException:
            self._cancel()
            raise

    def _cancel(self) -> None:
        if self._upcoming is not None:
            self._upcoming[1].cancel()
            self._upcoming = None

    def _parse(self, answer: PeerResponse, size: int, cursor: Any) -> JsonPage:
        return json_page(answer, size)

    def _fetch(self, cursor: Any) -> tuple[int, bytes, int]:
        """Ask for the JSON page after ``cursor``: its status, body and size.

        It asks for SYNC_JSON_PAGE_CAP rows, and the page may take
        SYNC_PULL_JSON_ROW_BYTES for each (a PhoenixKit sender ignores the
        limit and sends its connection's max_records_per_request).
        """
        settings = self._sender.client.settings
        rows = settings.json_page_cap
        body: dict[str, Any] = {
            "table_name": self._table,
            "conflict_strategy": self._strategy,
            "limit": rows,
        }
        if cursor is not None:
            body["after"] = cursor
        self.seen.body(body)
        with self._sender.open(
            "pull-data", body, rows * settings.pull_json_row_bytes
        ) as resp:
            content = resp.read()
            return resp.status, content, resp.bytes_read


RECORDS_PAGE_ROWS = 100  # PhoenixKit's table-records cap


class RecordsSource(JsonSource):
    """Pages of a PhoenixKit sender's table, read exactly with table-records.

    PhoenixKit's pull-data is one unordered shot of at most
    max_records_per_request rows, with no way to ask for the rest.
    Its table-records answers at most 100 rows ordered by the table's first
    key column, from ``id_start`` on, skipping ``offset`` rows: that pages a
    table exactly. The cursor is ``[start, skip]``: ``start`` the key value
    to start from (canonical JSON; null: the beginning), ``skip`` the rows
    from there already read. An integer key moves on to the next value; a
    text key starts at the last value, past the rows read at it. Other keys
    (uuid, numeric...) are bound by PhoenixKit's driver only in forms JSON
    cannot carry: those tables page by ``offset`` alone. A page shorter than
    asked for is not the end (a sender may lose rows on the way; the count
    check after the table tells); an empty page is.
    """

    def __init__(
        self, sender: Sender, table: str, strategy: str, key: str, key_kind: str
    ) -> None:
        super().__init__(sender, table, strategy, direct=False)
        self._key = key
        self._key_kind = key_kind

    def _parse(self, answer: PeerResponse, size: int, cursor: Any) -> JsonPage:
        if answer.status != 200 or answer.body.get("success") is not True:
            raise BadAnswer(answer.error)
        rows = answer.body.get("records")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadAnswer("Invalid response from remote site")
        if not rows:
            return JsonPage([], None, False, size)
        if len(rows) > RECORDS_PAGE_ROWS or any(self._key not in r for r in rows):
            raise BadAnswer(
                f"Invalid response from remote site (table-records of {self._table}:"
                f" more than {RECORDS_PAGE_ROWS} rows, or rows without {self._key})"
            )
        return JsonPage(rows, self._next(rows, cursor), True, size)

    def _next(self, rows: list[dict[str, Any]], cursor: Any) -> list[Any]:
        start: str = cursor[0] if cursor is not None else "null"
        skip: int = cursor[1] if cursor is not None else 0
        last = rows[-1][self._key]
        if self._key_kind == "int" and type(last) is int:
            return [wire.canonical_json(last + 1), 0]
        if self._key_kind == "text" and isinstance(last, str):
            tied = 0
            for row in reversed(rows):
                if row[self._key] != last:
                    break
                tied += 1
            here = wire.canonical_json(last)
            if here == start and tied == len(rows):
                tied += skip  # the whole page shares the key it started at
            return [here, tied]
        return [start, skip + len(rows)]

    def _fetch(self, cursor: Any) -> tuple[int, bytes, int]:
        settings = self._sender.client.settings
        body: dict[str, Any] = {"table_name": self._table, "limit": RECORDS_PAGE_ROWS}
        if cursor is not None:
            start = wire.parse_json(cursor[0])
            if start is not None:
                body["id_start"] = start
            body["offset"] = cursor[1]
        with self._sender.open(
            "table-records", body, RECORDS_PAGE_ROWS * settings.pull_json_row_bytes
        ) as resp:
            content = resp.read()
            return resp.status, content, resp.bytes_read


class CopySource:
    """Bulk (COPY data) pages of one table, each streamed as it is written.

    A sender that cannot serve the table as COPY data answers with a JSON
    page; that page is handed over as it is, never to be copied straight in.
    """

    def __init__(
        self,
        sender: Sender,
        table: str,
        strategy: str,
        plan: bulk_in.Plan,
        page_rows: int,
        since: dict[str, Any] | None = None,
    ) -> None:
        self._sender = sender
        self._table = table
        self._strategy = strategy
        self._page_rows = page_rows
        self.plan = plan
        self.seen = SinceSeen(since)

    def __enter__(self) -> CopySource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def may_go_direct(self, page: Page) -> bool:
        return self.plan.direct and isinstance(page, BulkPage)

    def restage(self, *, as_text: bool) -> None:
        """Ask again for pages staged, never straight in (as text if told)."""
        wire_format = copy_format.TEXT if as_text else self.plan.wire_format
        self.plan = bulk_in.Plan(wire_format, False)

    @contextmanager
    def page(self, cursor: Any) -> Iterator[Page]:
        """The page after ``cursor``, its body open while the page is written."""
        body: dict[str, Any] = {
            "table_name": self._table,
            "conflict_strategy": self._strategy,
            "format": self.plan.wire_format,
            "limit": self._page_rows,
        }
        if cursor is not None:
            body["after"] = cursor
        self.seen.body(body)
        settings = self._sender.client.settings
        # A sender that cannot serve COPY data answers with a JSON page (of
        # SYNC_JSON_PAGE_CAP rows at most, from dbsync): it may take what a
        # JSON page may, until the headers say the page is COPY data.
        json_max = settings.json_page_cap * settings.pull_json_row_bytes
        with self._sender.open("pull-data", body, json_max) as resp:
            if copy_format.is_bulk(resp.media_type):
                try:
                    incoming = bulk_in.read_headers(
                        resp.headers, resp.media_type, self._table, body["format"]
                    )
                except bulk_in.BadPage as ex:
                    raise BadAnswer(
                        f"Invalid response from remote site ({ex})"
                    ) from None
                if incoming.count > self._page_rows:
                    raise BadAnswer(
                        "Invalid response from remote site (a page of"
                        f" {incoming.count} rows, asked for {self._page_rows})"
                    )
                self.seen.header(resp.headers.get("x-sync-since"), cursor)
                row_max = settings.pull_row_max_bytes
                resp.max_bytes = min(
                    settings.pull_page_max_bytes,
                    max(incoming.count, 1) * row_max + COPY_FRAMING,
                )
                checked = (
                    TextRows(resp, row_max, self._table)
                    if incoming.format == copy_format.TEXT
                    else resp
                )
                yield BulkPage(incoming, checked)
                return
            # Asked for COPY data, answered with JSON: a table the sender
            # cannot serve as COPY data (see the sender's pull_data).
            answer = resp.response()
            page = json_page(answer, resp.bytes_read)
            self.seen.answer(answer.body.get("since"), cursor)
        yield page


class TextRows:
    """A text COPY body that fails as soon as one row is longer than allowed.

    A text row is one line (COPY escapes the newlines inside values), so the
    check is a search for newlines in each chunk. Binary COPY rows would need
    every field's length read in Python, too slow for the bulk path: a binary
    page is held to its row count times the row limit instead.
    """

    def __init__(self, body: PeerStream, row_max: int, table: str) -> None:
        self._body = body
        self._row_max = row_max
        self._table = table
        self.bytes_read = 0

    def iter_bytes(self) -> Iterator[bytes]:
        row = 0  # bytes of the row still open at the end of the last chunk
        for chunk in self._body.iter_bytes():
            first = chunk.find(b"\n")
            if first < 0:
                row += len(chunk)
            else:
                self._check(row + first + 1)
                last = chunk.rfind(b"\n")
                if last - first > self._row_max:  # a line between may be too long
                    start = first + 1
                    while start <= last:
                        end = chunk.find(b"\n", start)
                        self._check(end - start + 1)
                        start = end + 1
                row = len(chunk) - last - 1
            self._check(row)
            self.bytes_read = self._body.bytes_read
            yield chunk

    def _check(self, size: int) -> None:
        if size > self._row_max:
            raise BadAnswer(
                f"Invalid response from remote site (a row of {self._table}"
                f" over {self._row_max} bytes)"
            )
