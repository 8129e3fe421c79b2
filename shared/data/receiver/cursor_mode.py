"""Run a table of a transfer in cursor mode: only the rows whose cursor column
(``updated_at``, a serial) moved beyond the last run's high-water mark.

A scheduled sync in cursor mode keeps, per table, the high-water mark its
last run brought back (``marks`` on the sync; beat copies it from the run's
transfer when the run ends, for the tables it pulled whole). The next run
asks pull-data for the rows whose column is greater than that mark minus the
look-back (``since``, dbsync's extension of pull-data): rows committed late
with a value at or below the mark (a transaction that set ``updated_at`` at
its start and committed after the mark was read) are still seen when they
are within the look-back. A run without a mark asks for every row, and
learns the mark all the same. The pull itself (paging, checkpoints, the
strategy, the verification after it) is the full pull's
(shared.data.receiver.pulls).

The mark a run brings back is the column's largest value at the sender read
before the run's first page (shared.data.sender.pages.high_water): every row
at or below it was committed by then, so a run that completes has seen each
of them in a version at least that new.

A sender that ignores ``since`` (a site without the extension) serves every
row: the run is a full pull and says so on the transfer (``cursor`` note);
the mark stays where it was. PhoenixKit senders are pulled whole.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.data import wire
from shared.data.keyset import CURSOR_KINDS
from shared.data.receiver.sources import SinceSeen
from shared.data.schema import ColumnInfo
from shared.errors import ErrorKind, SyncError
from shared.state.models import Transfer

NOTE = "cursor"  # the transfer's note, per table
MAX_MARK_CHARS = 200
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPORAL = ("timestamp", "timestamptz", "date")
DEFAULT_LOOK_BACK = {"timestamp": "1m", "timestamptz": "1m", "date": "1d"}
_INT_MIN = {"smallint": -(1 << 15), "integer": -(1 << 31), "bigint": -(1 << 63)}


def look_back_problem(text: str | None, kind: str) -> str | None:
    """Why ``text`` is no look-back for a cursor column of ``kind``; None if it is.

    A number of values for integer and numeric columns (``100``); a duration
    for dates and timestamps (``90``, ``30s``, ``5m``, ``2h``, ``1d``)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text)
    if not match:
        return "--look-back takes a number (100) or a duration (30s, 5m, 2h, 1d)"
    if kind not in _TEMPORAL and match.group(2):
        return (
            f"--look-back {text.strip()} is a duration; "
            "a number column takes a plain number"
        )
    return None


def _look_back(text: str | None, kind: str) -> int:
    """The look-back in the column's units: values, or seconds for time."""
    text = text if text is not None else DEFAULT_LOOK_BACK.get(kind, "0")
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text)
    if match is None:
        return 0
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def lower_bound(mark: Any, col: ColumnInfo, look_back: str | None) -> Any:
    """The wire value a run asks for rows beyond: ``mark`` minus the look-back
    (None, every row, when there is no mark or it cannot be lowered)."""
    if mark is None or col.kind not in CURSOR_KINDS:
        return None
    back = _look_back(look_back, col.kind)
    try:
        value = wire.decode_value(mark, col.kind, col.name)
        if col.kind == "int":
            lowered = value - back
            floor = _INT_MIN.get(col.type, -(1 << 63))
            return lowered if lowered >= floor else None
        if col.kind == "numeric":
            if not isinstance(value, Decimal) or not value.is_finite():
                return None
            return wire.encode_value(value - back, "numeric")
        if col.kind == "date":
            days = math.ceil(back / 86400)
            return wire.encode_value(value - dt.timedelta(days=days), "date")
        return wire.encode_value(value - dt.timedelta(seconds=back), col.kind)
    except (wire.WireError, OverflowError, InvalidOperation):
        return None


def check_columns(
    column: str, columns: dict[str, list[dict[str, Any]]], look_back: str | None
) -> dict[str, str]:
    """The kind of ``column`` in each table's table-schema ``columns``;
    SyncError naming the tables where it cannot be a cursor column."""
    kinds: dict[str, str] = {}
    problems = []
    for table, cols in sorted(columns.items()):
        found = next((c for c in cols if c.get("name") == column), None)
        kind = _schema_kind(found)
        if found is None:
            problems.append(f"{table} has no column {column}")
        elif kind is None:
            problems.append(
                f"{table}.{column} is {found.get('type')}, not an integer, numeric,"
                " date or timestamp column"
            )
        else:
            kinds[table] = kind
    if problems:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            f"--cursor-column {column}: {'; '.join(problems)}",
        )
    for kind in sorted(set(kinds.values())):
        problem = look_back_problem(look_back, kind)
        if problem is not None:
            raise SyncError(ErrorKind.BAD_REQUEST, problem)
    return kinds


# table-schema's types (PostgreSQL's format_type) of the cursor kinds.
_SCHEMA_KINDS = {
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "numeric": "numeric",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}


def _schema_kind(col: dict[str, Any] | None) -> str | None:
    if col is None or not isinstance(col.get("type"), str):
        return None
    base = re.sub(r"\(.*\)", "", col["type"]).strip().lower()
    base = re.sub(r"\s+", " ", base)
    return _SCHEMA_KINDS.get(base)


# -- the run (worker side) ------------------------------------------------------


def _meta(job: Any) -> dict[str, Any]:
    with job.site.db.session() as session:
        return dict(session.get_one(Transfer, job.transfer_id).meta or {})


def _note(job: Any, name: str, **values: Any) -> None:
    with job.site.db.session() as session:
        transfer = session.get_one(Transfer, job.transfer_id)
        meta = dict(transfer.meta or {})
        notes = dict(meta.get(NOTE) or {})
        notes[name] = {**(notes.get(name) or {}), **values}
        meta[NOTE] = notes
        transfer.meta = meta


def since_for(job: Any, name: str, info: Any) -> dict[str, Any] | None:
    """The ``since`` filter of ``name``'s pull in this run; None: not cursor mode.

    Worked out once per transfer and kept on it, so a run taken up again
    after a failure asks for the same rows."""
    meta = _meta(job)
    column = meta.get("cursor_column")
    if meta.get("mode") != "cursor" or not column:
        return None
    kept = (meta.get(NOTE) or {}).get(name)
    if isinstance(kept, dict) and "after" in kept:
        return {"column": column, "after": kept["after"]}
    if job.phoenixkit:
        _note(job, name, column=column, filtered=False, reason="PhoenixKit sender")
        return None
    mark = (meta.get("cursor_marks") or {}).get(name)
    look_back = meta.get("look_back")
    col = next((c for c in info.columns if c.name == column), None)
    after = None if col is None else lower_bound(mark, col, look_back)
    _note(
        job,
        name,
        column=column,
        mark_before=mark,
        look_back=look_back or DEFAULT_LOOK_BACK.get(col.kind if col else "", "0"),
        after=after,
    )
    return {"column": column, "after": after}


def seen(job: Any, name: str, source: Any) -> None:
    """After a page is written: keep the mark the first page brought (once)."""
    got: SinceSeen | None = getattr(source, "seen", None)
    if got is None or got.first is None:
        return
    mark = got.first.get("high_water")
    got.first = None
    if not _plain_value(mark):
        return  # not a value this site keeps: no mark, the next run asks as this one
    _note(job, name, high_water=mark, filtered=True)


def _plain_value(value: Any) -> bool:
    """Whether a sender's high-water mark is a value to keep: a JSON scalar,
    text short and without NUL (the sender chooses it)."""
    if isinstance(value, str):
        return len(value) <= MAX_MARK_CHARS and "\x00" not in value
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def finish(job: Any, name: str, source: Any) -> None:
    """After the table's last page: note a sender that ignored the filter."""
    got: SinceSeen | None = getattr(source, "seen", None)
    if got is None or got.since is None or not got.ignored:
        return
    _note(
        job,
        name,
        filtered=False,
        reason="the sender does not filter by cursor: pulled whole",
    )


def marks(meta: dict[str, Any], completed: set[str]) -> dict[str, Any]:
    """The high-water marks a run's transfer brings back: those of the tables
    it pulled to the end with the filter applied."""
    found = {}
    for name, note in (meta.get(NOTE) or {}).items():
        if (
            name in completed
            and isinstance(note, dict)
            and note.get("filtered") is True
            and "high_water" in note
        ):
            found[name] = note["high_water"]
    return found
