"""Answer the data calls a receiver makes: list-tables, table-schema,
table-records (preview) and pull-data (keyset pages, as JSON or, between two
PostgreSQL sites, as COPY data: see shared.data.sender.copy_out).

Every call passes every connection control first (shared.control.access).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import access
from shared.control.handlers import TOKEN_HASH, require_enabled
from shared.data import copy_format, wire
from shared.data.keyset import BadCursor, BadSince, Since, decode_cursor, decode_since
from shared.data.schema import NoPrimaryKey, quote_text
from shared.data.sender import (
    changes,
    copy_out,
    delivery,
    fingerprints,
    pages,
    streams,
    tracking,
)
from shared.data.sender.offer import Catalog
from shared.data.sender.preview import BadFilter
from shared.db import utcnow
from shared.errors import ErrorKind, SyncError, bad_request
from shared.state.models import STRATEGIES, Connection, Transfer
from shared.validation import Field, validate

TABLE = Field("table_name", str, required=True, max_length=255)
PREVIEW_MAX = 100


def _authorise(
    session: Session,
    site: Site,
    body: Mapping[str, Any],
    fields: list[Field],
    ip: str,
    serves_rows: bool = False,
) -> tuple[Connection, dict[str, Any]]:
    """Validate the body and pass every control (a call that ``serves_rows``
    holds the connection's row until it has counted them)."""
    require_enabled(session)
    data = validate(body, [TOKEN_HASH, *fields])
    caller = access.Caller(ip, serves_rows=serves_rows)
    conn = access.authorise(session, site, data["auth_token_hash"], caller)
    return conn, data


def _serving(session: Session, data: dict[str, Any]) -> Transfer | None:
    """The unfinished ``send`` transfer this pull continues, locked; None if it starts one.

    A page continues a pull only when its ``after`` is a cursor this site
    handed out for that pull: the next page's (the transfer keeps its
    fingerprint) or the last page's own start (a retried page). Any other
    ``after`` (forged, or a cursor of a finished or stale pull) starts a new
    pull there, counted as a download: a caller cannot dodge the download
    limit by naming a key. The cursor itself stays the plain key PROTOCOL.md
    describes, so every receiver keeps working as it is.

    The row lock makes concurrent pages of one pull take turns, so only one
    of them can claim the pull's next cursor (see ``_next_page``).
    """
    key = _cursor_key(data["after"])
    if key is None:
        return None
    stmt = (
        select(Transfer)
        .join(Connection, Transfer.connection_id == Connection.id)
        .where(
            Connection.auth_token_hash == data["auth_token_hash"],
            Connection.direction == "sender",
            Transfer.direction == "send",
            Transfer.table_name == data["table_name"],
            Transfer.status == "in_progress",
        )
        .order_by(Transfer.created_at.desc())
    )
    for transfer in session.scalars(stmt).all():
        if not _continues(transfer, key):
            continue
        if session.get_bind().dialect.name == "postgresql":
            session.refresh(transfer, with_for_update=True)
            if transfer.status != "in_progress" or not _continues(transfer, key):
                return None
        return transfer
    return None


def _continues(transfer: Transfer, key: str) -> bool:
    meta = transfer.meta or {}
    return key in (meta.get(_NEXT_KEY), meta.get(_AFTER_KEY))


def close_stale_send_transfers(
    session: Session, idle_seconds: int, now: dt.datetime | None = None
) -> int:
    """Close ``send`` transfers no page was asked of for ``idle_seconds``.

    An unfinished pull is what lets a cursor continue without counting a
    download; one its receiver abandoned (PhoenixKit asks pull-data once per
    table and never follows has_more) must not stay ``in_progress`` for ever.
    Its receiver's next page then starts a new, counted pull. Returns how many.
    """
    now = now or utcnow()
    horizon = now - dt.timedelta(seconds=idle_seconds)
    stale = session.scalars(
        select(Transfer)
        .where(
            Transfer.direction == "send",
            Transfer.status == "in_progress",
            Transfer.updated_at < horizon,
        )
        .with_for_update(skip_locked=True)
    ).all()
    for transfer in stale:
        transfer.status = "failed"
        transfer.error_message = (
            f"Abandoned: the receiver asked for no page in {idle_seconds} s"
            f" ({transfer.records_transferred} rows sent)"
        )
        transfer.completed_at = now
    return len(stale)


def _cursor_key(cursor: list[Any] | None) -> str | None:
    """A short fixed-size fingerprint of a cursor, to keep on the transfer."""
    if cursor is None:
        return None
    try:
        text = wire.canonical_json(cursor)
    except (TypeError, ValueError):
        return None  # a key this site cannot fingerprint: its next page just counts
    return hashlib.sha256(text.encode()).hexdigest()


def _next_page(serving: Transfer | None, after: list[Any] | None) -> bool:
    """Whether ``after`` is the cursor this site handed out for the pull's last page.

    Only then is the page free of the rate limit: each pull moves forward
    one page at a time from a start that was counted, while a retried page
    or any other cursor counts like any call.
    """
    if serving is None or after is None:
        return False
    expected = (serving.meta or {}).get(_NEXT_KEY)
    return expected is not None and expected == _cursor_key(after)


_NEXT_KEY = delivery.NEXT_KEY
_AFTER_KEY = delivery.AFTER_KEY


def _table(site: Site, conn: Connection, name: str) -> Catalog:
    """Check the table rules, then that the table is offered; return the catalog."""
    access.check_table(conn, name)
    catalog = site.catalog()
    if name not in catalog.offered_tables():
        raise SyncError(ErrorKind.NOT_FOUND, "Table not found")
    if name not in _readable(catalog, conn, [name]):
        raise SyncError(
            ErrorKind.FORBIDDEN,
            "This connection is not authorised to access that table",
        )
    return catalog


def _readable(catalog: Catalog, conn: Connection, names: list[str]) -> list[str]:
    """The tables of ``names`` this connection may read: allowed by its rules,
    and not a parent whose plain SELECT would also read rows of a table it
    may not (an excluded or not offered inheritance child)."""
    offered = set(catalog.offered_tables())
    excluded = set(conn.excluded_tables or [])
    inheritance = catalog.inheritance()
    return [
        name
        for name in names
        if access.table_allowed(conn, name)
        and not any(
            child not in offered or child in excluded
            for child in inheritance.get(name, ())
        )
    ]


def list_tables(
    session: Session, site: Site, body: Mapping[str, Any], ip: str
) -> dict[str, Any]:
    conn, _ = _authorise(session, site, body, [], ip)
    catalog = site.catalog()
    names = _readable(catalog, conn, catalog.offered_tables())
    conn.last_connected_at = utcnow()
    tables = catalog.table_summaries(names)
    readable = set(names)
    for table in tables:  # references only to what the connection may read
        table["depends_on"] = [t for t in table["depends_on"] if t in readable]
    return {"success": True, "tables": tables}


def table_schema(
    session: Session, site: Site, body: Mapping[str, Any], ip: str
) -> dict[str, Any]:
    conn, data = _authorise(session, site, body, [TABLE], ip)
    catalog = _table(site, conn, data["table_name"])
    schema = catalog.schema_payload(data["table_name"])
    readable = set(_readable(catalog, conn, catalog.offered_tables()))
    schema["foreign_keys"] = [
        fk for fk in schema["foreign_keys"] if fk["references_table"] in readable
    ]
    return {"success": True, "table": data["table_name"], "schema": schema}


PREVIEW_FIELDS = [
    TABLE,
    Field("limit", int, minimum=1),
    Field("offset", int, minimum=0),
    Field("ids", list),
    Field("id_start", (str, int, float)),
    Field("id_end", (str, int, float)),
]


def table_records(
    session: Session, site: Site, body: Mapping[str, Any], ip: str
) -> dict[str, Any]:
    require_enabled(session)
    data = validate(body, [TOKEN_HASH, *PREVIEW_FIELDS])
    offset = data["offset"] or 0
    if offset > site.settings.preview_max_offset:
        raise bad_request(
            f"Field offset must be <= {site.settings.preview_max_offset}",
            field="offset",
        )
    caller = access.Caller(ip, serves_rows=True, preview=True)
    conn = access.authorise(session, site, data["auth_token_hash"], caller)
    name = data["table_name"]
    catalog = _table(site, conn, name)
    wanted = min(data["limit"] or 10, PREVIEW_MAX, conn.max_records_per_request)
    limit = max(1, access.records_left(conn, wanted))
    ids = data["ids"]
    if ids is not None and len(ids) > 1000:
        raise bad_request("Field ids may hold at most 1000 values", field="ids")
    try:
        rows, has_more = catalog.preview(
            name,
            limit=limit,
            offset=offset,
            ids=ids or None,
            id_start=data["id_start"],
            id_end=data["id_end"],
        )
    except BadFilter as ex:
        raise bad_request(f"Invalid filter: {ex}") from None
    except DataError:
        raise bad_request(
            "Invalid filter: a key value is out of range for its column"
        ) from None
    access.count_page(session, conn, len(rows), False, 0)
    return {
        "success": True,
        "table": name,
        "records": rows,
        "limit": limit,
        "offset": offset,
        "has_more": has_more,
    }


PULL_FIELDS = [
    TABLE,
    Field("conflict_strategy", str, max_length=32),
    Field("after", list),
    Field("until", list),
    Field("limit", int, minimum=1),
    Field("format", str, max_length=32),
    Field("since", dict),
]


def pull_data(
    session: Session,
    site: Site,
    body: Mapping[str, Any],
    ip: str,
    *,
    phoenixkit: bool = False,
) -> delivery.Served:
    """One page: a JSON answer, or a copy_out.CopyPage when the receiver asked for a
    COPY format this site can serve, with what serving it counted
    (shared.data.sender.delivery: the caller writes it, then closes it; a page
    not delivered whole is taken off the counts).

    The answer holds one of the connection's and the site's pull-data slots
    (shared.data.sender.streams) until it is closed; without one, 503.

    A bulk page is at most the connection's max_records_per_request and this
    site's bulk_page_rows; a JSON page at most max_records_per_request and
    json_page_cap. An unknown format, or a table that cannot go as COPY data
    (SQLite, no primary key), gets the JSON page.

    A pull starts a download when it has no ``after`` or its ``after`` is no
    cursor this site handed out for an unfinished pull of that table
    (``_serving``); its next page is free of the rate limit
    (shared.control.access).

    To a PhoenixKit receiver (``phoenixkit``) uuid values go as PhoenixKit
    sends them, their 16 bytes wrapped (its import binds a uuid only so).

    ``since`` (dbsync's cursor extension, see ``_since``) keeps only the rows
    whose cursor column is beyond a value.
    """
    require_enabled(session)
    data = validate(body, [TOKEN_HASH, *PULL_FIELDS])
    serving = _serving(session, data)
    new_download = serving is None
    caller = access.Caller(
        ip, new_download, _next_page(serving, data["after"]), serves_rows=True
    )
    conn = access.authorise(session, site, data["auth_token_hash"], caller)
    name = data["table_name"]
    catalog = _table(site, conn, name)
    strategy = data["conflict_strategy"] or "skip"
    if strategy not in STRATEGIES:
        raise bad_request("Invalid conflict_strategy", field="conflict_strategy")
    wire_format = data["format"]
    if wire_format not in copy_format.COPY_FORMATS or not copy_out.can_serve(
        catalog, name
    ):
        wire_format = None
    served = _serve_page(
        session, site, catalog, conn, data, serving, wire_format, new_download, ip
    )
    if phoenixkit and isinstance(served.answer, dict):
        _uuids_as_binary(catalog, name, served.answer["data"])
    return served


def _uuids_as_binary(catalog: Catalog, table: str, rows: list[dict[str, Any]]) -> None:
    """Put the rows' uuid values in PhoenixKit's wire form, in place."""
    uuids = [c.name for c in catalog.describe(table).columns if c.kind == "uuid"]
    if not uuids:
        return
    for row in rows:
        for name in uuids:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = wire.uuid_as_binary(value)


def _serve_page(
    session: Session,
    site: Site,
    catalog: Catalog,
    conn: Connection,
    data: dict[str, Any],
    serving: Transfer | None,
    wire_format: str | None,
    new_download: bool,
    ip: str,
) -> delivery.Served:
    name = data["table_name"]
    strategy = data["conflict_strategy"] or "skip"
    since, since_answer = _since(catalog, name, data)
    cap = site.settings.bulk_page_rows if wire_format else site.settings.json_page_cap
    limit = min(
        data["limit"] or conn.max_records_per_request, conn.max_records_per_request, cap
    )
    limit = max(1, access.records_left(conn, limit))
    try:
        if wire_format:
            copy_page = copy_out.open_page(
                site.db.data_engine,
                catalog,
                name,
                after=data["after"],
                limit=limit,
                wire_format=wire_format,
                max_bytes=site.settings.page_max_bytes,
                until=data["until"],
                since=since,
                since_answer=since_answer,
            )
            if copy_page is not None:
                try:
                    slot = _slot(session, site, conn)
                    access.count_page(session, conn, copy_page.count, new_download, 0)
                    receipt = _record_send(
                        session,
                        conn,
                        serving,
                        name,
                        strategy,
                        copy_page.count,
                        copy_page.next_cursor,
                        ip,
                        new_download,
                        data["after"],
                    )
                except BaseException:
                    copy_page.close()
                    raise
                return delivery.Served(copy_page, receipt, slot)
        page = catalog.fetch_page(
            name,
            after=data["after"],
            limit=min(limit, site.settings.json_page_cap),
            for_body=True,
            max_bytes=site.settings.page_max_bytes,
            until=data["until"],
            since=since,
        )
    except BadCursor as ex:
        raise bad_request(f"Invalid cursor: {ex}", field="after") from None
    except DataError:
        raise bad_request(
            "Invalid cursor: a key value is out of range for its column", field="after"
        ) from None
    except NoPrimaryKey as ex:
        raise SyncError(ErrorKind.CONFLICT, str(ex)) from None
    count = len(page.rows)
    slot = _slot(session, site, conn)
    access.count_page(session, conn, count, new_download, 0)
    receipt = _record_send(
        session,
        conn,
        serving,
        name,
        strategy,
        count,
        page.next_cursor,
        ip,
        new_download,
        data["after"],
    )
    answer = {
        "success": True,
        "table": name,
        "data": page.rows,
        "count": count,
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }
    if since_answer is not None:
        answer["since"] = since_answer
    return delivery.Served(answer, receipt, slot)


def _since(
    catalog: Catalog, name: str, data: dict[str, Any]
) -> tuple[Since | None, dict[str, Any] | None]:
    """pull-data's ``since`` filter, decoded, and what the answer says of it.

    ``{"column": C, "after": VALUE}``: only rows whose C is greater than
    VALUE (wire-encoded as C's type; null: every row). The answer repeats
    column and after, which tells the receiver the filter was applied; the
    first page of a pull (no ``after`` cursor) adds ``high_water``, the
    largest C in the table read before the page (``pages.high_water``).
    """
    raw = data["since"]
    if raw is None:
        return None, None
    info = catalog.describe(name)
    try:
        since = decode_since(raw, info, pg=catalog.pg)
    except BadSince as ex:
        raise bad_request(f"Invalid since: {ex.message}", field="since") from None
    answer: dict[str, Any] = {"column": since.column.name, "after": raw.get("after")}
    if data["after"] is None:
        answer["high_water"] = pages.high_water(catalog, info, since.column.name)
    return since, answer


def _slot(session: Session, site: Site, conn: Connection) -> streams.StreamSlot:
    """One of the connection's and the site's pull-data slots, taken in the
    request's transaction (it commits with the page's counts), or 503."""
    settings = site.settings
    return streams.acquire(
        session,
        conn.id,
        per_connection=settings.pull_streams_per_connection,
        per_site=settings.pull_streams_per_site,
        ttl=streams.ttl_for(settings.stream_stall_seconds),
    )


def _record_send(
    session: Session,
    conn: Connection,
    serving: Transfer | None,
    table: str,
    strategy: str,
    count: int,
    next_cursor: list[Any] | None,
    ip: str,
    new_download: bool,
    after: list[Any] | None,
) -> delivery.PageReceipt:
    """Keep one ``send`` transfer per pull with its counts, timestamps and the
    fingerprint of the cursor its next page will start after; return what
    this page added, to take it off again if the page is not delivered."""
    now = utcnow()
    transfer = serving
    created = transfer is None
    if transfer is None:
        transfer = Transfer(
            id=uuid.uuid4(),
            direction="send",
            connection_id=conn.id,
            connection_name=conn.name,
            remote_site_url=conn.site_url,
            table_name=table,
            status="in_progress",
            conflict_strategy=strategy,
            requester_ip=ip[:64],
            started_at=now,
            meta={"pages": 0},
            records_transferred=0,
        )
        session.add(transfer)
    transfer.records_transferred += count
    meta = {**transfer.meta, "pages": int(transfer.meta.get("pages", 0)) + 1}
    prior_key = meta.pop(_NEXT_KEY, None)
    prior_after_key = meta.pop(_AFTER_KEY, None)
    if next_cursor is not None:  # the pull goes on: its cursors continue it
        if (after_key := _cursor_key(after)) is not None:
            meta[_AFTER_KEY] = after_key
        if (key := _cursor_key(next_cursor)) is not None:
            meta[_NEXT_KEY] = key
    transfer.meta = meta
    if next_cursor is None:  # the last page (has_more false)
        transfer.status = "completed"
        transfer.completed_at = now
    return delivery.PageReceipt(
        connection_id=conn.id,
        transfer_id=transfer.id,
        records=count,
        new_download=new_download,
        transfer_created=created,
        pages_after=meta["pages"],
        prior_next_key=prior_key,
        prior_after_key=prior_after_key,
        completed=next_cursor is None,
    )


FINGERPRINT_FIELDS = [
    TABLE,
    Field("ranges", list, required=True),
    Field("split", int, minimum=1, maximum=fingerprints.MAX_SPLIT),
    Field("columns", list),
    Field("rows", bool),
    Field("changes", dict),
    Field("algorithm", str, max_length=64),
    Field("text_columns", list),
]


def table_fingerprints(
    session: Session, site: Site, body: Mapping[str, Any], ip: str
) -> dict[str, Any]:
    """The ``table-fingerprints`` extension: count and fingerprint of each key
    range the receiver names, in one snapshot (shared.data.sender.fingerprints).

    Same controls as a pull-data call that continues no pull (rate limit
    included); it moves no rows, so it counts no records or downloads.
    """
    conn, data = _authorise(session, site, body, FINGERPRINT_FIELDS, ip)
    name = data["table_name"]
    catalog = _table(site, conn, name)
    if not catalog.pg:
        raise SyncError(ErrorKind.NOT_FOUND, "table-fingerprints is not offered here")
    hashing = _hashing(site, catalog.describe(name), data)
    if data["changes"] is not None:
        answer_changes = _changes(
            site, catalog.describe(name), data, hashing, reader=conn.id
        )
        if "state" in answer_changes:
            answer_changes["columns_mark"] = changes.columns_mark(
                catalog.schema_payload(name)
            )
        conn.last_connected_at = utcnow()
        return {
            "success": True,
            "table": name,
            "algorithm": hashing.algorithm,
            "changes": answer_changes,
        }
    ranges, split = data["ranges"], data["split"] or 1
    if not 1 <= len(ranges) <= fingerprints.MAX_RANGES:
        raise bad_request(
            f"Field ranges must hold 1 to {fingerprints.MAX_RANGES} ranges",
            field="ranges",
        )
    if len(ranges) * split > 16 * fingerprints.MAX_RANGES:
        raise bad_request("Too many parts asked for (ranges x split)", field="split")
    columns = data["columns"]
    if columns is not None and not all(isinstance(c, str) for c in columns):
        raise bad_request("Field columns must be a list of names", field="columns")
    info = catalog.describe(name)
    decoded = []
    try:
        for r in ranges:
            if not isinstance(r, dict):
                raise BadCursor("each range is an object with after and until")
            after, until = (
                None if b is None else decode_cursor(b, info.pk_columns)
                for b in (r.get("after"), r.get("until"))
            )
            decoded.append((after, until))
        with site.db.data_engine.connect() as db:
            db = db.execution_options(isolation_level="REPEATABLE READ")
            with db.begin():
                if data["rows"]:
                    listed = fingerprints.range_rows(
                        db, info, decoded, columns=columns, hashing=hashing
                    )
                    return {
                        "success": True,
                        "table": name,
                        "algorithm": hashing.algorithm,
                        "ranges": [{"rows": rows} for rows in listed],
                    }
                answer = fingerprints.fingerprint_ranges(
                    db, info, decoded, columns=columns, split=split, hashing=hashing
                )
    except BadCursor as ex:
        raise bad_request(f"Invalid range: {ex}", field="ranges") from None
    except DataError:
        raise bad_request(
            "Invalid range: a key value is out of range for its column", field="ranges"
        ) from None
    except fingerprints.Unsupported as ex:
        raise bad_request(str(ex)) from None
    conn.last_connected_at = utcnow()
    return {
        "success": True,
        "table": name,
        "algorithm": hashing.algorithm,
        "ranges": [r.as_wire() for r in answer],
    }


def _hashing(site: Site, info: Any, data: Mapping[str, Any]) -> fingerprints.Hashing:
    """The row hashing the receiver names (``algorithm``, ``text_columns``);
    the text algorithm when it names none, or when this site's PostgreSQL
    lacks the typed one."""
    algorithm = data["algorithm"] or fingerprints.ALGORITHM
    if algorithm not in fingerprints.ALGORITHMS:
        raise bad_request(
            f"Field algorithm must be one of {', '.join(fingerprints.ALGORITHMS)}",
            field="algorithm",
        )
    listed = data["text_columns"] or []
    if not all(isinstance(c, str) for c in listed):
        raise bad_request(
            "Field text_columns must be a list of names", field="text_columns"
        )
    if listed:
        try:
            fingerprints.check_columns(info, listed)
        except fingerprints.Unsupported as ex:
            raise bad_request(str(ex), field="text_columns") from None
    if algorithm == fingerprints.ALGORITHM:
        return fingerprints.TEXT_HASHING
    return fingerprints.typed_hashing(site.db.data_engine, listed)


def _changes(
    site: Site,
    info: Any,
    data: Mapping[str, Any],
    hashing: fingerprints.Hashing,
    reader: Any = None,
) -> dict[str, Any]:
    """``table-fingerprints``' ``changes``: see shared.data.sender.changes and
    the README ("Delta runs from xmin")."""
    ask = data["changes"]
    columns = data["columns"]
    if columns is not None and not all(isinstance(c, str) for c in columns):
        raise bad_request("Field columns must be a list of names", field="columns")
    keyed = changes.keyed_by_int(info)
    for field in ("keys_in", "hashes_of"):
        listed = ask.get(field)
        if listed is None:
            continue
        if not keyed:
            raise bad_request(f"{info.name} has no single-column integer key")
        if (
            not isinstance(listed, list)
            or len(listed) > changes.MAX_CHANGED
            or (field == "keys_in" and len(listed) > fingerprints.MAX_RANGES)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in listed)
            or not all(-(1 << 63) <= v < (1 << 63) for v in listed)
        ):
            raise bad_request(
                f"Field changes.{field} must be a list of integers", field="changes"
            )
    engine = site.db.data_engine
    listing = ask.get("keys_in") is None and ask.get("hashes_of") is None
    tracked = (
        listing
        and site.settings.tracks_changes(info.name)
        and tracking.ensure(engine, info)
    )
    wants_print = ask.get("key_print") is not False
    since = ask.get("since")
    from_log = False
    try:
        with engine.connect() as db:
            db = db.execution_options(isolation_level="REPEATABLE READ")
            with db.begin():
                if ask.get("keys_in") is not None:
                    return {"keys": changes.bucket_keys(db, info, ask["keys_in"])}
                if ask.get("hashes_of") is not None:
                    got = changes.hashes_of(
                        db,
                        info,
                        ask["hashes_of"],
                        columns or [c.name for c in info.columns],
                        hashing,
                    )
                    answer: dict[str, Any] = {
                        "hashes": [[k, h] for k, h in sorted(got.items())]
                    }
                    if wants_print:
                        answer["key_print"] = changes.key_print(db, info)
                    return answer
                now = changes.state(db, info)
                if tracked and (mark := tracking.epoch(db, info)) is not None:
                    now["epoch"] = mark
                out: dict[str, Any] = {"state": changes.public(now)}
                if (
                    ask.get("log") is True
                    and "epoch" in now
                    and tracking.covers(db, info, since, now)
                ):
                    try:
                        out["rows"] = tracking.changed_rows(
                            db,
                            info,
                            since,
                            columns,
                            limit=changes.MAX_CHANGED,
                            hashing=hashing,
                        )
                        out["source"] = "log"
                        from_log = True
                    except fingerprints.Unsupported:
                        pass
                from_xmin = (
                    not from_log and since is not None and changes.usable(since, now)
                )
                xmin_rows: list[list[Any]] | None = None
                listed = False  # xmin asked (Unsupported: no rows, as before)
                if keyed and (wants_print or not from_log):
                    if from_xmin:  # one scan for both when no row changed
                        listed = True
                        try:
                            xmin_rows, out["key_print"] = changes.changed_and_print(
                                db, info, since, now, columns, hashing=hashing
                            )
                        except fingerprints.Unsupported:
                            out["key_print"] = changes.key_print(db, info)
                    else:
                        out["key_print"] = changes.key_print(db, info)
                    small = out["key_print"][0] <= changes.MAX_CHANGED * changes.BUCKET
                    if ask.get("buckets") is True and small:  # answer size bound
                        sums = ask.get("key_sums") is True
                        out["buckets"] = [
                            [b, int(v[0]), *v[1:]]
                            for b, v in sorted(
                                changes.key_buckets(db, info, sums=sums).items()
                            )
                        ]
                if from_xmin and not listed:
                    try:
                        xmin_rows = changes.changed_rows(
                            db, info, since, now, columns, hashing=hashing
                        )
                    except fingerprints.Unsupported:
                        pass
                if xmin_rows is not None:
                    out["rows"] = xmin_rows
                out["complete"] = "rows" in out
    except fingerprints.Unsupported as ex:
        raise bad_request(str(ex)) from None
    except DataError:
        raise bad_request("Invalid changes: a value is out of range") from None
    if from_log:
        tracking.note_reader(engine, info, str(reader), int(since["xid"]))
    return out


KEYS_FIELDS = [
    TABLE,
    Field("keys", list, required=True),
    Field("conflict_strategy", str, max_length=32),
    Field("format", str, max_length=32),
]


def pull_keys(
    session: Session, site: Site, body: Mapping[str, Any], ip: str
) -> dict[str, Any] | copy_out.KeysCopy:
    """The ``pull-keys`` extension: the rows of the keys named (a delta run's
    changed rows, which are rarely next to each other), as a JSON pull-data
    page in key order; keys the table lacks are left out. With a bulk
    ``format`` (as pull-data's) the same rows as COPY data, with pull-data's
    bulk headers (copy_out.KeysCopy), when the table can go so.

    Same controls as a pull-data call that continues no pull; its rows count
    against the connection's records, not as a download.
    """
    conn, data = _authorise(session, site, body, KEYS_FIELDS, ip, serves_rows=True)
    name = data["table_name"]
    catalog = _table(site, conn, name)
    keys = data["keys"]
    cap = min(conn.max_records_per_request, site.settings.json_page_cap)
    if not 1 <= len(keys) <= cap:
        raise bad_request(f"Field keys must hold 1 to {cap} keys", field="keys")
    if access.records_left(conn, len(keys)) < len(keys):
        # Never a page cut short that says it is whole.
        raise SyncError(ErrorKind.FORBIDDEN, "Record limit reached")
    if not catalog.pg:
        raise SyncError(ErrorKind.NOT_FOUND, "pull-keys is not offered here")
    info = catalog.describe(name)
    if len(info.primary_key) != 1:
        raise bad_request(f"table {name} has no single-column primary key")
    col = info.pk_columns[0]
    try:
        values = [decode_cursor(k, info.pk_columns)[0] for k in keys]
    except BadCursor as ex:
        raise bad_request(f"Invalid key: {ex}", field="keys") from None
    params: dict[str, Any] = {"keys": [wire.pg_param(v, col.kind) for v in values]}
    if col.kind == "int":  # one literal: read far faster than 10,000 parameters
        params["keys"] = changes.int_array(params["keys"])
    if data["format"] in copy_format.COPY_FORMATS and copy_out.can_serve(catalog, name):
        try:
            bulk = copy_out.keys_copy(
                site.db.data_engine, info, params["keys"], data["format"]
            )
        except DataError:
            raise bad_request(
                "Invalid key: a key value is out of range for its column", field="keys"
            ) from None
        if bulk is not None:
            access.count_page(session, conn, bulk.count, False, 0)
            return bulk
    sql = (
        f"SELECT {pages.select_list(catalog, info)} FROM {info.qualified_text}"
        f" WHERE {quote_text(col.name)} = ANY(CAST(:keys AS {col.type}[]))"
        f" ORDER BY {quote_text(col.name)}"
    )
    try:
        with pages.reader(catalog) as db:
            rows = pages.encode_all(catalog, info, db.execute(text(sql), params))
    except DataError:
        raise bad_request(
            "Invalid key: a key value is out of range for its column", field="keys"
        ) from None
    access.count_page(session, conn, len(rows), False, 0)
    return {
        "success": True,
        "table": name,
        "data": rows,
        "count": len(rows),
        "has_more": False,
        "next_cursor": None,
    }
