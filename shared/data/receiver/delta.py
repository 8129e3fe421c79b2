"""Bring a table level with its sender by moving only the key ranges that differ.

The receiver asks the sender (``table-fingerprints``) for the count and
fingerprint of the whole table and computes the same over its own rows
(shared.data.sender.fingerprints). Where they differ it asks for the range
cut into SPLIT parts by the sender's rows, fingerprints its own rows on the
same boundaries, and descends into the parts that differ, until a differing
part holds at most LEAF_ROWS of the sender's rows (about one page). Adjacent
leaves are pulled together, page by page, with pull-data's ``after`` and
``until``, and applied with the transfer's strategy; with mirror-deletes the
local rows of a pulled range that the sender did not send are deleted in
the same transaction as the range's last page.

A sender without the extension (PhoenixKit answers 404), a table without a
single-column key, or a receiver that is not PostgreSQL gets the full pull
(``NotAvailable``).

What one run guarantees: every range the run compared and found equal was
equal in the sender's snapshot of that comparison; every pulled range holds
what the sender served for it. Rows the sender changes while the run works
may be missed; the next run finds them, so once writes stop one more run
leaves the two tables identical.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from shared.control.peer import PeerRefused, PeerResponse, PeerStream
from shared.data import copy_format, wire
from shared.data.keyset import Keyset, decode_cursor
from shared.data.receiver import bulk_in, drift, sources
from shared.data.receiver.copy_in import BrokeOff, Rejected
from shared.data.receiver.pages import (
    BulkPage,
    ImportRefused,
    JsonPage,
    Page,
    PageResult,
)
from shared.data.receiver.writer import Writer, Writes
from shared.data.schema import TableInfo, quote_text
from shared.data.sender import changes, fingerprints
from shared.data.sender.fingerprints import RangePrint

log = logging.getLogger("dbsync.delta")

SPLIT = 64
LEAF_ROWS = 64
Range = tuple[Any, Any]  # (after, until): wire-encoded keys, None for open ends


class NotAvailable(Exception):
    """Delta mode cannot run for this table; the message says why."""


class Failed(Exception):
    """The sender's answer or this site refused the work (the run fails)."""


@dataclass
class Outcome:
    """What a delta pass did to one table."""

    compared: bool = False
    equal_before: bool = False
    ranges_pulled: int = 0
    rows_pulled: int = 0
    deleted: int = 0
    result: PageResult = field(default_factory=PageResult)
    requests: int = 0


class Remote:
    """The sender's ``table-fingerprints`` for one table."""

    def __init__(
        self,
        sender: sources.Sender,
        table: str,
        columns: list[str],
        hashing: fingerprints.Hashing = fingerprints.TEXT_HASHING,
        keys_format: str | None = None,
    ):
        self.sender = sender
        self.table = table
        self.columns = columns
        self.hashing = hashing
        # The COPY format rows fetched by key are asked in (None: JSON).
        self.keys_format = keys_format
        self.requests = 0
        self.leaf_counts: dict[str, int] = {}  # the sender's rows in each leaf

    def _ask(self, body: dict[str, Any]) -> list[Any]:
        try:
            resp = self.sender.post(
                "table-fingerprints", {**body, **self.hashing.as_wire()}
            )
        except PeerRefused as ex:
            raise Failed(str(ex)) from None
        self.requests += 1
        if resp.status in (404, 405):
            raise NotAvailable("the sender does not offer table-fingerprints")
        if resp.status != 200 or resp.body.get("success") is not True:
            raise Failed(f"table-fingerprints: {resp.error}")
        if resp.body.get("algorithm") != self.hashing.algorithm:
            raise NotAvailable("the sender fingerprints rows another way")
        got = resp.body.get("ranges")
        if not isinstance(got, list) or len(got) != len(body["ranges"]):
            raise Failed("table-fingerprints: the answer does not match the ask")
        return got

    def rows(self, ranges: Sequence[Range]) -> dict[str, str]:
        """The sender's rows of these ranges: canonical key -> row hash."""
        got = self._ask(
            {
                "table_name": self.table,
                "ranges": [{"after": a, "until": u} for a, u in ranges],
                "columns": self.columns,
                "rows": True,
            }
        )
        out: dict[str, str] = {}
        if not all(isinstance(e, dict) and "rows" in e for e in got):
            raise NotAvailable("the sender lists no rows of a range")
        try:
            for entry in got:
                for key, digest in entry["rows"]:
                    out[wire.canonical_json(key)] = str(digest)
        except (KeyError, TypeError, ValueError):
            raise Failed(
                "table-fingerprints: the rows in the answer are malformed"
            ) from None
        return out

    def prints(self, ranges: Sequence[Range], split: int = 1) -> list[RangePrint]:
        out: list[RangePrint] = []
        step = fingerprints.MAX_RANGES if split == 1 else 1000 // max(1, split // 16)
        for start in range(0, len(ranges), max(1, step)):
            chunk = ranges[start : start + step]
            body = {
                "table_name": self.table,
                "ranges": [{"after": a, "until": u} for a, u in chunk],
                "columns": self.columns,
                "split": split,
            }
            out.extend(_range_print(r) for r in self._ask(body))
        return out


def _range_print(data: Any) -> RangePrint:
    try:
        parts = [
            fingerprints.Part(p["until"], int(p["count"]), str(p["fingerprint"]))
            for p in data.get("parts") or []
        ]
        return RangePrint(int(data["count"]), str(data["fingerprint"]), parts)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise Failed("table-fingerprints: a range in the answer is malformed") from None


def check_local(engine: Engine, info: TableInfo) -> None:
    """NotAvailable unless this site can fingerprint ``info``'s rows."""
    if engine.dialect.name != "postgresql":
        raise NotAvailable("this site's data database is not PostgreSQL")
    if len(info.primary_key) != 1:
        raise NotAvailable(f"{info.name} has no single-column primary key")


def local_prints(
    engine: Engine,
    info: TableInfo,
    ranges: Sequence[Range],
    columns: list[str],
    hashing: fingerprints.Hashing = fingerprints.TEXT_HASHING,
    parallel: int = 0,
) -> list[RangePrint]:
    """This site's fingerprints of wire-encoded ranges, in one snapshot."""
    pk = info.pk_columns
    decoded = [
        tuple(None if b is None else decode_cursor(b, pk) for b in r) for r in ranges
    ]
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return fingerprints.fingerprint_ranges(
                conn,
                info,
                decoded,  # type: ignore[arg-type]
                columns=columns,
                hashing=hashing,
                parallel=parallel,
            )


def shared_columns(info: TableInfo, schema: Any) -> list[str]:
    """The columns both sides have (by name), which the fingerprints cover."""
    theirs = set()
    if isinstance(schema, dict) and isinstance(schema.get("columns"), list):
        theirs = {c.get("name") for c in schema["columns"] if isinstance(c, dict)}
    return sorted(c.name for c in info.columns if c.name in theirs)


def keys_format(
    engine: Engine, info: TableInfo, schema: Any, strategy: str
) -> str | None:
    """The COPY format to fetch rows by key in (bulk_in.plan), None: JSON."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        plan = bulk_in.plan(conn, info, schema, strategy)
    return None if plan is None else plan.wire_format


def hashing_for(engine: Engine, info: TableInfo, schema: Any) -> fingerprints.Hashing:
    """The typed row hashing (shared.data.sender.fingerprints), with every
    column whose type differs between the two sides hashed as text."""
    retyped = [r["column"] for r in drift.report(info, schema).get("retyped", [])]
    return fingerprints.typed_hashing(engine, retyped)


def differing(
    remote: Remote,
    engine: Engine,
    info: TableInfo,
    *,
    first_only: bool = False,
    asked: Future[list[RangePrint]] | None = None,
    parallel: int = 0,
) -> tuple[bool, list[Range]]:
    """Whether the whole table was equal, and the leaf ranges that differ.

    ``first_only`` stops at the first differing leaf (verification).
    ``asked``: the sender's whole-table print, already asked for.
    ``parallel``: parallel workers this site's whole-table scan may add.
    """
    whole: list[Range] = [(None, None)]
    # The two sides fingerprint the whole table at the same time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbsync-fp") as pool:
        pending = asked or pool.submit(remote.prints, whole)
        ours = local_prints(
            engine, info, whole, remote.columns, remote.hashing, parallel
        )[0]
        if _same(pending.result()[0], ours):
            return True, []
    leaves: list[Range] = []
    frontier = whole
    while frontier:
        answers = remote.prints(frontier, split=SPLIT)
        children: list[tuple[Range, RangePrint]] = []
        mine: list[RangePrint] = []
        for (after, until), theirs in zip(frontier, answers):
            if theirs.count <= LEAF_ROWS or not theirs.parts:
                leaves.append((after, until))
                remote.leaf_counts[_range_key((after, until))] = theirs.count
                continue
            lower = after
            for i, part in enumerate(theirs.parts):
                upper = until if i == len(theirs.parts) - 1 else part.until
                children.append(
                    ((lower, upper), RangePrint(part.count, part.fingerprint))
                )
                lower = part.until
            mine.extend(_local_parts(engine, info, (after, until), theirs, remote))
        frontier = []
        for (rng, theirs), ours in zip(children, mine):
            if _same(theirs, ours):
                continue
            if theirs.count <= LEAF_ROWS:
                leaves.append(rng)
                remote.leaf_counts[_range_key(rng)] = theirs.count
            else:
                frontier.append(rng)
        if first_only and leaves:
            break
    return False, _in_key_order(leaves, info)


def _local_parts(
    engine: Engine, info: TableInfo, rng: Range, theirs: RangePrint, remote: Remote
) -> list[RangePrint]:
    """This site's fingerprints of a range cut where the sender cut it, in one
    scan (shared.data.sender.fingerprints.bucket_prints)."""
    pk = info.pk_columns
    after, until = (None if b is None else decode_cursor(b, pk) for b in rng)
    bounds = [decode_cursor(p.until, pk)[0] for p in theirs.parts[:-1]]
    with engine.connect() as conn:
        return fingerprints.bucket_prints(
            conn,
            info,
            after,
            until,
            bounds,
            columns=remote.columns,
            hashing=remote.hashing,
        )


def _range_key(rng: Range) -> str:
    return wire.canonical_json(list(rng))


def _same(a: RangePrint, b: RangePrint) -> bool:
    return a.count == b.count and int(a.fingerprint) == int(b.fingerprint)


def _in_key_order(leaves: list[Range], info: TableInfo) -> list[Range]:
    """Leaves sorted by their lower bound (the open one first)."""
    pk = info.pk_columns

    def key(rng: Range) -> tuple[int, Any]:
        after = rng[0]
        return (0, None) if after is None else (1, decode_cursor(after, pk)[0])

    return sorted(leaves, key=key)


def merge(leaves: list[Range]) -> list[Range]:
    """Adjacent leaves (one's upper bound the next one's lower) as one range."""
    merged: list[Range] = []
    for after, until in leaves:
        if merged and merged[-1][1] is not None and merged[-1][1] == after:
            merged[-1] = (merged[-1][0], until)
        else:
            merged.append((after, until))
    return merged


def pull_range(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    strategy: str,
    rng: Range,
    mirror_deletes: bool,
    outcome: Outcome,
    txids: Writes | None = None,
) -> None:
    """Pull the sender's rows of one range page by page and apply them; with
    ``mirror_deletes`` delete the local rows the sender did not send, page by
    page: each page covers the keys from the one before it up to its own
    last (the range's end for the last page), so only one page's keys are
    ever held."""
    settings = sender.client.settings
    rows_cap = settings.json_page_cap
    writer = Writer(info, strategy)
    if txids is not None:
        writer.txids = txids
    pk = info.pk_columns[0]
    cursor = rng[0]
    while True:
        body: dict[str, Any] = {
            "table_name": name,
            "conflict_strategy": strategy,
            "limit": rows_cap,
        }
        if cursor is not None:
            body["after"] = cursor
        if rng[1] is not None:
            body["until"] = rng[1]
        try:
            with sender.open(
                "pull-data", body, rows_cap * settings.pull_json_row_bytes
            ) as resp:
                content = resp.read()
                page = sources.json_page(
                    PeerResponse.parse(resp.status, content), resp.bytes_read
                )
        except (PeerRefused, sources.BadAnswer) as ex:
            raise Failed(f"{name}: {ex}") from None
        outcome.requests += 1
        last = not page.has_more
        with engine.begin() as conn:
            try:
                result = writer.apply(conn, page)
            except ImportRefused as ex:
                raise Failed(f"{name}: {ex}") from None
            if mirror_deletes:
                try:
                    keys = [
                        wire.pg_param(wire.decode_value(r[pk.name], pk.kind), pk.kind)
                        for r in page.rows
                        if r.get(pk.name) is not None
                    ]
                except wire.WireError as ex:
                    raise Failed(f"{name}: a key the sender sent: {ex}") from None
                span = (cursor, rng[1] if last else page.next_cursor)
                outcome.deleted += _delete_missing(conn, info, span, keys)
        for attr in ("created", "updated", "skipped", "failed"):
            setattr(
                outcome.result,
                attr,
                getattr(outcome.result, attr) + getattr(result, attr),
            )
        outcome.result.errors.extend(result.errors[: 20 - len(outcome.result.errors)])
        outcome.rows_pulled += page.count
        if last:
            return
        cursor = page.next_cursor


def _delete_missing(conn: Any, info: TableInfo, rng: Range, keys: list[Any]) -> int:
    pk = info.pk_columns
    after = None if rng[0] is None else decode_cursor(rng[0], pk)
    until = None if rng[1] is None else decode_cursor(rng[1], pk)
    keyset = Keyset.after_key(info, after, pg=True, until=until)
    col = pk[0]
    keep = f"{quote_text(col.name)} = ANY(CAST(:keep AS {col.type}[]))"
    where = (
        f"{keyset.where} AND NOT ({keep})" if keyset.where else f" WHERE NOT ({keep})"
    )
    result = conn.execute(
        text(f"DELETE FROM {info.qualified_text}{where}"),
        {**keyset.params, "keep": keys},
    )
    return int(result.rowcount or 0)


def sync_table(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    schema: Any,
    strategy: str,
    mirror_deletes: bool,
    txids: Writes | None = None,
) -> Outcome:
    """Compare ``name`` with its sender and pull (and delete) what differs.

    ``txids`` collects the ids of the transactions that wrote rows here."""
    check_local(engine, info)
    remote = Remote(
        sender,
        name,
        shared_columns(info, schema),
        hashing_for(engine, info, schema),
        keys_format(engine, info, schema, strategy),
    )
    outcome = Outcome()
    with engine.connect() as conn:
        if (
            conn.execute(text(f"SELECT 1 FROM {info.qualified_text} LIMIT 1")).first()
            is None
        ):
            raise NotAvailable(f"{name} is empty here")
    equal, leaves = differing(remote, engine, info)
    outcome.compared, outcome.equal_before = True, equal
    settler: RowSettler | None = RowSettler(
        remote, engine, info, strategy, mirror_deletes, outcome
    )
    if txids is not None:
        settler.writer.txids = txids  # type: ignore[union-attr]
    for chunk in _chunks(leaves, remote.leaf_counts):
        if settler is not None:
            try:
                settler.add(chunk)
                continue
            except NotAvailable as ex:
                log.info("delta %s: %s; pulling whole ranges", name, ex)
                settler.flush()
                settler = None
        for rng in merge(chunk):
            pull_range(
                sender,
                engine,
                info,
                name,
                strategy,
                rng,
                mirror_deletes,
                outcome,
                txids,
            )
            outcome.ranges_pulled += 1
    if settler is not None:
        settler.flush()
    outcome.requests += remote.requests
    log.info(
        "delta %s: %s, %d range(s), %d row(s) pulled, %d deleted",
        name,
        "equal" if equal else "differed",
        outcome.ranges_pulled,
        outcome.rows_pulled,
        outcome.deleted,
    )
    return outcome


def _chunks(leaves: list[Range], counts: dict[str, int]) -> list[list[Range]]:
    """Leaves in key order, grouped so each group holds at most half
    fingerprints.MAX_ROWS of the sender's rows and MAX_RANGES ranges (one
    ``rows`` call)."""
    groups: list[list[Range]] = []
    # Half the most a ``rows`` answer may list: rows the sender gains after
    # the descent counted them must still fit.
    most = fingerprints.MAX_ROWS // 2
    total = 0
    for rng in leaves:
        count = counts.get(_range_key(rng), LEAF_ROWS)
        if (
            not groups
            or total + count > most
            or len(groups[-1]) >= fingerprints.MAX_RANGES
        ):
            groups.append([])
            total = 0
        groups[-1].append(rng)
        total += count
    return groups


def _local_rows(
    engine: Engine, info: TableInfo, ranges: Sequence[Range], remote: Remote
) -> dict[str, tuple[Any, str]]:
    """This site's rows of these ranges: canonical key -> (key, row hash)."""
    pk = info.pk_columns
    decoded = [
        (
            None if a is None else decode_cursor(a, pk),
            None if u is None else decode_cursor(u, pk),
        )
        for a, u in ranges
    ]
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            listed = fingerprints.range_rows(
                conn,
                info,
                decoded,
                columns=remote.columns,
                limit=10**12,
                hashing=remote.hashing,
            )
    return {
        wire.canonical_json(key): (key, str(digest))
        for rows in listed
        for key, digest in rows
    }


class RowSettler:
    """Compare ranges row by row and bring the rows that differ, in batches.

    ``add`` lists a group of ranges on both sides and notes the keys to
    fetch (differing, or missing here) and, with mirror-deletes, the keys to
    delete; once a page's worth is noted (SYNC_JSON_PAGE_CAP) ``flush``
    fetches them (``pull-keys``), applies them with the strategy and deletes,
    in one transaction. Call ``flush`` once more at the end.
    """

    def __init__(
        self,
        remote: Remote,
        engine: Engine,
        info: TableInfo,
        strategy: str,
        mirror_deletes: bool,
        outcome: Outcome,
    ) -> None:
        self.remote = remote
        self.engine = engine
        self.info = info
        self.mirror_deletes = mirror_deletes
        self.outcome = outcome
        self.writer = Writer(info, strategy)
        self.strategy = strategy
        self.step = remote.sender.client.settings.json_page_cap
        self.wanted: list[Any] = []
        self.extra: list[Any] = []
        # Rows fetched ahead (``prefetch``), with the keys asked: the first
        # batch takes its rows from them when they hold every key it wants
        # (COPY data: when it wants exactly the keys asked).
        self.prefetched: Page | None = None
        self.prefetched_keys: set[str] = set()

    def prefetch(self, keys: list[Any], parts: int = 1) -> Any:
        """Start fetching the rows of ``keys`` (at most one batch) in
        ``parts`` calls at once (a sender serves one connection's row calls
        one at a time); call the result to wait and keep them."""
        step = max(1, -(-len(keys) // parts))
        chunks = [keys[i : i + step] for i in range(0, len(keys), step)]
        pool = ThreadPoolExecutor(max_workers=len(chunks) or 1)
        pending = [
            pool.submit(_fetch_keys, self.remote, chunk, self.strategy)
            for chunk in chunks
        ]

        def done() -> None:
            try:
                pages = [p.result() for p in pending]
            finally:
                pool.shutdown()
            json_pages = [p for p in pages if isinstance(p, JsonPage)]
            if len(pages) == 1:
                self.prefetched = pages[0]
            elif pages and len(json_pages) == len(pages):
                self.prefetched = JsonPage(
                    [r for p in json_pages for r in p.rows],
                    None,
                    False,
                    sum(p.size for p in json_pages),
                )
            self.prefetched_keys = {wire.canonical_json(k) for k in keys}

        return done

    def add(self, ranges: list[Range]) -> None:
        spans = merge(ranges)  # rows are listed one by one: adjacent ranges as one
        theirs = self.remote.rows(spans)
        ours = _local_rows(self.engine, self.info, spans, self.remote)
        self.wanted.extend(
            wire.parse_json(k)
            for k, digest in theirs.items()
            if ours.get(k, (0, ""))[1] != digest
        )
        if self.mirror_deletes:
            self.extra.extend(key for k, (key, _) in ours.items() if k not in theirs)
        self.outcome.ranges_pulled += len(ranges)
        while len(self.wanted) >= self.step or len(self.extra) >= self.step:
            self.flush(self.step)

    def flush(self, most: int | None = None) -> None:
        """Fetch, apply and delete up to ``most`` keys of each kind (all: None)."""
        most = most or max(len(self.wanted), len(self.extra), 1)
        batch, self.wanted = self.wanted[:most], self.wanted[most:]
        gone, self.extra = self.extra[:most], self.extra[most:]
        page: Any = None
        if self.prefetched is not None and batch:
            wanted = {wire.canonical_json(k) for k in batch}
            ahead, self.prefetched = self.prefetched, None
            if isinstance(ahead, JsonPage):
                rows = [r for r in ahead.rows if _row_key(r, self.info) in wanted]
                if len(rows) == len(wanted):  # else not all there: ask for them
                    page = JsonPage(rows, None, False, ahead.size)
            elif wanted == self.prefetched_keys:  # COPY data holds what was asked
                page = ahead
        if page is None and batch:
            page = _fetch_keys(self.remote, batch, self.strategy)
        try:
            self._write(page, gone)
        except Rejected as ex:
            # COPY data this database refused as sent (binary): the batch
            # again as text COPY data, or as JSON.
            text_asked = self.remote.keys_format == copy_format.TEXT
            self.remote.keys_format = (
                copy_format.TEXT if ex.as_text and not text_asked else None
            )
            log.info("%s: rows by key asked again (%s)", self.remote.table, ex)
            self._write(_fetch_keys(self.remote, batch, self.strategy), gone)
        if self.wanted or self.extra:
            self.flush(most)

    def _write(self, page: Page | None, gone: list[Any]) -> None:
        """Apply ``page`` and delete the keys ``gone``, in one transaction."""
        pk = self.info.pk_columns[0]
        with self.engine.begin() as conn:
            if page is not None:
                try:
                    result = self.writer.apply(conn, page)
                except (ImportRefused, BrokeOff) as ex:
                    raise Failed(f"{self.remote.table}: {ex}") from None
                _add(self.outcome, result)
                self.outcome.rows_pulled += page.count
            if gone:
                if page is None:  # the writer did not note this transaction
                    self.writer.txids.add(
                        int(
                            conn.exec_driver_sql(
                                "SELECT pg_current_xact_id()::text"
                            ).scalar_one()
                        )
                    )
                keys: Any = [
                    wire.pg_param(wire.decode_value(k, pk.kind), pk.kind) for k in gone
                ]
                if pk.kind == "int":
                    keys = changes.int_array(keys)
                deleted = conn.execute(
                    text(
                        f"DELETE FROM {self.info.qualified_text}"
                        f" WHERE {quote_text(pk.name)} = ANY(CAST(:keys AS {pk.type}[]))"
                    ),
                    {"keys": keys},
                )
                self.outcome.deleted += int(deleted.rowcount or 0)


def _row_key(row: dict[str, Any], info: TableInfo) -> str:
    return wire.canonical_json(row.get(info.pk_columns[0].name))


def _fetch_keys(remote: Remote, keys: list[Any], strategy: str) -> Page:
    """The sender's rows of ``keys``: COPY data read whole when
    ``remote.keys_format`` asks for it and the sender sends it, else a JSON
    page."""
    settings = remote.sender.client.settings
    body: dict[str, Any] = {
        "table_name": remote.table,
        "keys": [[k] for k in keys],
        "conflict_strategy": strategy,
    }
    if remote.keys_format is not None:
        body["format"] = remote.keys_format
    try:
        with remote.sender.open(
            "pull-keys", body, len(keys) * settings.pull_json_row_bytes
        ) as resp:
            bulk = remote.keys_format is not None and resp.status == 200
            if bulk and copy_format.is_bulk(resp.media_type):
                page = _held_copy(remote, resp, len(keys))
                remote.requests += 1
                return page
            content = resp.read()
            status, size = resp.status, resp.bytes_read
    except PeerRefused as ex:
        raise Failed(f"{remote.table}: {ex}") from None
    except sources.BadAnswer as ex:
        raise Failed(f"{remote.table}: pull-keys: {ex}") from None
    remote.requests += 1
    if status in (404, 405):
        raise NotAvailable("the sender does not offer pull-keys")
    try:
        return sources.json_page(PeerResponse.parse(status, content), size)
    except sources.BadAnswer as ex:
        raise Failed(f"{remote.table}: pull-keys: {ex}") from None


@dataclass
class _Held:
    """A COPY body read whole, to be applied later."""

    chunks: list[bytes]
    bytes_read: int

    def iter_bytes(self) -> Iterator[bytes]:
        return iter(self.chunks)


def _held_copy(remote: Remote, resp: PeerStream, asked: int) -> BulkPage:
    """A pull-keys answer of COPY data, checked as a pull-data page's
    (sources.CopySource) and read whole."""
    try:
        incoming = bulk_in.read_headers(
            resp.headers, resp.media_type, remote.table, str(remote.keys_format)
        )
    except bulk_in.BadPage as ex:
        raise sources.BadAnswer(f"Invalid response from remote site ({ex})") from None
    if incoming.count > asked or incoming.has_more:
        raise sources.BadAnswer(
            f"Invalid response from remote site ({incoming.count} rows for"
            f" {asked} keys)"
        )
    settings = remote.sender.client.settings
    row_max = settings.pull_row_max_bytes
    resp.max_bytes = min(
        settings.pull_page_max_bytes,
        max(incoming.count, 1) * row_max + sources.COPY_FRAMING,
    )
    body: Any = (
        sources.TextRows(resp, row_max, remote.table)
        if incoming.format == copy_format.TEXT
        else resp
    )
    chunks = list(body.iter_bytes())
    return BulkPage(incoming, _Held(chunks, resp.bytes_read))


def _add(outcome: Outcome, result: PageResult) -> None:
    r = outcome.result
    r.created += result.created
    r.updated += result.updated
    r.skipped += result.skipped
    r.failed += result.failed
    r.errors.extend(result.errors[: max(0, 20 - len(r.errors))])
