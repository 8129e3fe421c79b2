"""Render JSON rows as COPY text by the target's own column kinds.

A PostgreSQL receiver writes a JSON page through COPY (shared.data.receiver.
copy_in), so each wire value becomes a COPY text field here. Rendering costs
a few type checks per value: the wire forms of the common kinds already are
PostgreSQL's input syntax, so they are checked and passed through, and only
other values take the full decoder of shared.data.wire. Both ways store the
same value; a value that does not decode fails its row alone, with the
decoder's reason.

Each fast path is written once, in ``FAST_PATHS``: the per-column renderer
and the generated per-page line renderer are both compiled from it, so the
two cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from shared.data import wire
from shared.data.receiver.pages import PageResult
from shared.data.schema import ColumnInfo, TableInfo

_CHUNK_ROWS = 2000  # rendered rows per chunk handed to COPY
NULL = "\\N"

Render = Callable[[Any], str]
LineRender = Callable[[Mapping[str, Any]], str]


def _escape(text: str) -> str:
    """A string as a COPY text field. NUL cannot be stored: ValueError."""
    if text.isprintable() and "\\" not in text:  # the common case, two C scans
        return text
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _field(param: Any) -> str:
    """A bind parameter of shared.data.wire (``pg_param``) as a COPY text field."""
    if param is None:
        return NULL
    if param is True or param is False:
        return "t" if param else "f"
    if isinstance(param, bytes):
        return "\\\\x" + param.hex()
    return _escape(str(param))


@functools.cache
def full_renderer(kind: str) -> Render:
    """Any value of ``kind`` through the full wire decoder (ValueError if it does
    not fit): the way every value a fast path does not take goes."""
    bind = wire.binder_for(kind, "postgresql")

    def render(value: Any) -> str:
        return _field(bind(value))

    return render


def _parses(
    shape: Callable[[str], Any], parse: Callable[[str], Any]
) -> Callable[[str], bool]:
    """A check: the text has the shape and ``parse`` takes it (a real day...)."""

    def check(text: str) -> bool:
        if not shape(text):
            return False
        try:
            parse(text)
        except ValueError:
            return False
        return True

    return check


def _jsonb_text(value: Any) -> str | None:
    """A JSON value as jsonb input, or None for the decoder to take it.

    jsonb keeps values, not spelling, so orjson's compact text will do; a
    json column keeps the text itself and takes the decoder's.
    """
    if type(value) is dict and value.get(wire.JSON_NULL_MARKER) is True:
        return None
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
        return None
    if "null" in text and not _finite(value):
        return None  # orjson writes NaN and infinities as null; jsonb refuses them
    return text.replace("\\", "\\\\") if "\\" in text else text


def _finite(value: Any) -> bool:
    """Whether a parsed JSON value holds no NaN or infinity (the standard
    library's parser, which shared.data.wire falls back to, reads them)."""
    if type(value) is float:
        return value - value == 0.0
    if type(value) is dict:
        return all(_finite(v) for v in value.values())
    if type(value) is list:
        return all(_finite(v) for v in value)
    return True


# What the fast paths' source may name besides ``v`` and the fallback.
_ENV: dict[str, Any] = {
    "NULL": NULL,
    "BACKSLASH": "\\",
    "CANONICAL_UUID": re.compile(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    ).fullmatch,
    "IS_DATE": _parses(
        re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII).fullmatch, dt.date.fromisoformat
    ),
    # A naive timestamp reads as UTC in the COPY session (PG_READ_SETTINGS), as
    # the decoder takes it; a timestamp column takes no offset as it is.
    "IS_TIMESTAMP": _parses(
        re.compile(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?", re.ASCII
        ).fullmatch,
        dt.datetime.fromisoformat,
    ),
    "IS_TIMESTAMPTZ": _parses(
        re.compile(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[+-]\d{2}:\d{2})?",
            re.ASCII,
        ).fullmatch,
        dt.datetime.fromisoformat,
    ),
    "JSONB": _jsonb_text,
}

_TEXT = "v if type(v) is str and v.isprintable() and BACKSLASH not in v else {slow}"

# Each kind's fast path: one expression over the wire value ``v`` that gives
# its COPY text field when ``v`` already is what the full decoder would bind,
# and ``{slow}`` (NULL for None, else the decoder) for anything else.
FAST_PATHS: dict[str, str] = {
    "int": "str(v) if type(v) is int else {slow}",  # not bool: no integer here
    "text": _TEXT,
    "enum": _TEXT,
    "bool": "'t' if v is True else ('f' if v is False else {slow})",
    "float": "repr(v) if type(v) is float and v - v == 0.0 else {slow}",  # finite
    # A plain decimal ("-12.50"), what PostgreSQL's numeric::text prints:
    # digits, then a point and digits if any. ASCII only: Decimal reads other
    # scripts' digits, PostgreSQL does not.
    "numeric": "v if type(v) is str and v.isascii()"
    " and (w := v.removeprefix('-').partition('.'))[0].isdigit()"
    " and (not w[1] or w[2].isdigit()) else {slow}",
    "uuid": "v if type(v) is str and CANONICAL_UUID(v) else {slow}",
    "date": "v if type(v) is str and IS_DATE(v) else {slow}",
    "timestamp": "v if type(v) is str and IS_TIMESTAMP(v) else {slow}",
    "timestamptz": "v if type(v) is str and IS_TIMESTAMPTZ(v) else {slow}",
    "jsonb": "t if v is not None and (t := JSONB(v)) is not None else {slow}",
}
_SLOW = "{slow}"


def fast_kind(col: ColumnInfo) -> str:
    """The key of ``col``'s fast path: its wire kind, told apart for jsonb."""
    return "jsonb" if col.kind == "json" and col.type == "jsonb" else col.kind


def _expression(fast: str, full: str) -> str:
    return FAST_PATHS.get(fast, _SLOW).format(
        slow=f"(NULL if v is None else {full}(v))"
    )


@functools.cache
def _renderer_for(kind: str, fast: str) -> Render:
    env = {**_ENV, "full": full_renderer(kind)}
    exec(f"def render(v):\n    return {_expression(fast, 'full')}", env)
    return env["render"]


def renderer(col: ColumnInfo) -> Render:
    """The fastest exact way to render ``col``'s wire values as COPY text.

    Each fast path accepts only a value whose text is already what the full
    decoder would bind, and hands anything else to it.
    """
    return _renderer_for(col.kind, fast_kind(col))


def line_renderer(columns: Sequence[ColumnInfo]) -> LineRender:
    """One function rendering a whole row as a COPY text line (no newline)."""
    return _line_renderer(tuple((c.name, c.kind, fast_kind(c)) for c in columns))


@functools.lru_cache(maxsize=256)
def _line_renderer(columns: tuple[tuple[str, str, str], ...]) -> LineRender:
    """Generated once per column set, like namedtuple builds its classes, so
    that the fast paths run inline instead of through a call per value (about
    a fifth less time a row of the benchmark's table). Every other value goes
    through its kind's full renderer, so the result is the same. Only column
    positions are written into the code; names are looked up by position.
    """
    env: dict[str, Any] = dict(_ENV)
    code = ["def line(row):", "    get = row.get"]
    for i, (name, kind, fast) in enumerate(columns):
        env[f"n{i}"] = name
        env[f"full{i}"] = full_renderer(kind)
        code.append(f"    v = get(n{i})")
        code.append(f"    f{i} = " + _expression(fast, f"full{i}"))
    fields = "".join(f"f{i}, " for i in range(len(columns)))
    code.append(f"    return '\\t'.join(({fields}))")
    exec("\n".join(code), env)
    return env["line"]


class RenderedRows:
    """JSON rows rendered as COPY text chunk by chunk, as COPY asks for them,
    so the database stores one chunk while the next is rendered.

    A row with a value that does not fit its column is left out and counted
    failed, with the first such column's reason, in the result given to
    ``chunks``. ``keep`` limits the rows to those indices, in order.
    """

    def __init__(
        self,
        info: TableInfo,
        columns: Sequence[ColumnInfo],
        rows: Sequence[Mapping[str, Any]],
        keep: Sequence[int] | None = None,
    ):
        self._columns = columns
        self._line = line_renderer(columns)
        self._pk = info.pk_columns
        self._rows = rows
        self._keep = keep
        self.count = 0

    def chunks(self, result: PageResult) -> Iterator[bytes]:
        line, pk, rows = self._line, self._pk, self._rows
        self.count = 0
        batch: list[bytes] = []
        for i in range(len(rows)) if self._keep is None else self._keep:
            row = rows[i]
            try:
                batch.append((line(row) + "\n").encode("utf-8"))
            except ValueError:  # UnicodeEncodeError too: an unpaired surrogate
                result.fail([row.get(c.name) for c in pk], _reason(row, self._columns))
                continue
            if len(batch) == _CHUNK_ROWS:
                self.count += len(batch)
                yield b"".join(batch)
                batch = []
        if batch:
            self.count += len(batch)
            yield b"".join(batch)


_PLAIN_KEY = {"int": int, "text": str}


def last_of_each_key(
    info: TableInfo,
    columns: Sequence[ColumnInfo],
    rows: Sequence[Mapping[str, Any]],
    result: PageResult,
) -> list[int] | None:
    """The rows to write when the page repeats a key: the last valid row of
    each key, the earlier ones counted skipped and invalid ones failed in
    ``result``. None when no key repeats, as in every keyset page."""
    pk = info.pk_columns
    if len(pk) == 1 and pk[0].kind in _PLAIN_KEY:
        # Integers and strings render one to one: distinct values, distinct keys.
        values = [row.get(pk[0].name) for row in rows]
        if set(map(type, values)) == {_PLAIN_KEY[pk[0].kind]} and len(
            set(values)
        ) == len(values):
            return None
    key_plan = [(c.name, renderer(c)) for c in pk]
    seen: set[tuple[str, ...]] = set()
    for row in rows:
        try:
            key = tuple([render(row.get(name)) for name, render in key_plan])
        except ValueError:
            continue  # the row fails when rendered whole
        if key in seen:
            break
        seen.add(key)
    else:
        return None
    # Rare: render every row first, so that a last row which fails leaves
    # the valid one before it to be written.
    plan = [(c.name, renderer(c)) for c in columns]
    names = [c.name for c in columns]
    key_idx = [names.index(n) for n in info.primary_key]
    last: dict[tuple[str, ...], int] = {}
    valid = 0
    for i, row in enumerate(rows):
        try:
            fields = [render(row.get(name)) for name, render in plan]
            "\t".join(fields).encode("utf-8")
        except ValueError:
            result.fail(
                [row.get(c.name) for c in info.pk_columns], _reason(row, columns)
            )
            continue
        valid += 1
        last[tuple([fields[k] for k in key_idx])] = i
    result.skipped += valid - len(last)
    return sorted(last.values())


def _reason(row: Mapping[str, Any], columns: Sequence[ColumnInfo]) -> str:
    """Why a row does not render: the first column at fault."""
    for col in columns:
        try:
            renderer(col)(row.get(col.name)).encode("utf-8")
        except UnicodeEncodeError:
            return f"{col.name}: not valid text (an unpaired surrogate)"
        except ValueError as ex:
            return str(wire.WireError(col.name, str(ex)))
    return "row could not be rendered"
