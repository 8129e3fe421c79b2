"""Write pulled rows into a PostgreSQL table through COPY, with a conflict strategy.

Every page a PostgreSQL receiver pulls ends here: a bulk page's COPY bytes
as they arrive (shared.data.receiver.bulk_in), and a JSON page, rendered here as COPY text
by the target's own column kinds (``import_rows``). The rows go into a
temporary staging table and one set-based statement per strategy applies
them; or, when the target should hold none of their keys, straight into
the target. Rows the database rejects send the page through smaller
statements, down to one row, so the rest still lands. The caller's
transaction, which also saves the checkpoint, is never committed here.

Rendering a JSON row costs a few type checks per value: the wire forms of
the common kinds already are PostgreSQL's input syntax, so they are checked
and passed through, and only other values take the full decoder of
shared.data.wire. Both ways store the same value; a value that does not decode
fails its row alone, with the decoder's reason.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection

from shared.control.peer import PeerUnavailable
from shared.data import wire
from shared.data.schema import PG_READ_SETTINGS, ColumnInfo, TableInfo, quote
from shared.errors import SyncError

MAX_ERRORS = 100
_READ_SIZE = 1024 * 1024  # what COPY FROM asks of its source at a time
_FALLBACK_BATCH = 1000  # rows per statement once a page has been rejected
_CHUNK_ROWS = 2000  # rendered rows per chunk handed to COPY
_TYPMOD = re.compile(r"\(\d+(?:,\s*-?\d+)?\)")
_FIXED_LENGTH = re.compile(r"^(character|bit)(?=$|\[)")


class ImportRefused(SyncError):
    """A page that cannot be applied to this table at all (the transfer fails)."""

    def __init__(self, message: str) -> None:
        super().__init__("conflict", message)


class Rejected(Exception):
    """The page's bytes could not be applied as asked; fetch it again staged.

    ``as_text`` asks for the text format too (binary data the database
    refused). The caller's transaction must be rolled back.
    """

    def __init__(self, message: str, *, as_text: bool = False) -> None:
        super().__init__(message)
        self.as_text = as_text


@dataclass
class PageResult:
    """Exact outcome of one page."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def fail(self, key: Any, error: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"key": key, "error": error})

    def add_failures(self, other: PageResult) -> None:
        self.failed += other.failed
        self.errors.extend(other.errors[: max(0, MAX_ERRORS - len(self.errors))])


def db_error_text(ex: BaseException) -> str:
    """The database's message for a rejected row: first line, never the values."""
    orig = getattr(ex, "orig", ex)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        return str(primary)
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def pg_upsert_sql(
    info: TableInfo, columns: list[ColumnInfo], strategy: str, source: str
) -> str:
    """INSERT from ``source``, RETURNING true per created row, false per updated.

    psycopg2 SQL: ``source`` is placed as given, identifiers have % doubled.
    """
    cols = ", ".join(_pct(c.name) for c in columns)
    always = any(c.identity == "always" for c in columns)
    overriding = " OVERRIDING SYSTEM VALUE" if always else ""
    head = f"INSERT INTO {_pct_table(info)} AS t ({cols}){overriding} {source}"
    if strategy == "append":
        return head + " RETURNING true"
    pk = ", ".join(_pct(n) for n in info.primary_key)
    if strategy == "skip":
        return head + f" ON CONFLICT ({pk}) DO NOTHING RETURNING true"
    others = [c for c in columns if c.name not in info.primary_key]
    if not others:  # nothing to change, but the conflict must still be seen
        sets = [f"{_pct(n)} = EXCLUDED.{_pct(n)}" for n in info.primary_key]
    elif strategy == "overwrite":
        sets = [f"{_pct(c.name)} = EXCLUDED.{_pct(c.name)}" for c in others]
    else:
        sets = [
            f"{_pct(c.name)} = COALESCE(EXCLUDED.{_pct(c.name)}, t.{_pct(c.name)})"
            for c in others
        ]
    # xmax is 0 on a row version this statement inserted, and set on one it updated.
    return (
        head
        + f" ON CONFLICT ({pk}) DO UPDATE SET {', '.join(sets)}"
        + " RETURNING (t.xmax = 0)"
    )


def bump_sequence(cursor: Any, info: TableInfo) -> None:
    """Move a serial/identity key's sequence past keys written explicitly."""
    if len(info.primary_key) != 1:
        return
    col = info.pk_columns[0]
    if col.identity is None and not (col.default or "").startswith("nextval("):
        return
    cursor.execute(
        f"SELECT setval(s.seq, m.mx) FROM"
        f" (SELECT pg_get_serial_sequence(%s, %s) AS seq) s,"
        f" (SELECT max({_pct(col.name)}) AS mx FROM {_pct_table(info)}) m"
        f" WHERE s.seq IS NOT NULL AND m.mx IS NOT NULL"
        f" AND m.mx > COALESCE(pg_sequence_last_value(s.seq::regclass), 0)",
        (info.qualified, col.name),
    )


def _pct(name: str) -> str:
    """A quoted identifier inside psycopg2 SQL, where % starts a placeholder."""
    return quote(name).replace("%", "%%")


def _pct_table(info: TableInfo) -> str:
    return info.qualified.replace("%", "%%")


def unbounded_type(sql_type: str) -> str:
    """``sql_type`` without its length or precision, to cast staged text to.

    The assignment to the column then enforces lengths the way an INSERT of
    the value would: an explicit cast to varchar(n) would cut the text short,
    and a bare ``character`` or ``bit`` means length 1, so those become
    ``bpchar`` and ``bit varying``.
    """
    base = _TYPMOD.sub("", sql_type)
    return _FIXED_LENGTH.sub(
        lambda m: "bpchar" if m.group(1) == "character" else "bit varying", base
    )


# --- JSON rows as COPY text -------------------------------------------------------

_NULL = "\\N"
_PLAIN_DECIMAL = re.compile(r"-?\d{1,1000}(?:\.\d{1,1000})?", re.ASCII).fullmatch
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII).fullmatch
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?", re.ASCII
).fullmatch
_TIMESTAMPTZ = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[+-]\d{2}:\d{2})?", re.ASCII
).fullmatch
_from_date = dt.date.fromisoformat
_from_datetime = dt.datetime.fromisoformat

Render = Callable[[Any], str]


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
        return _NULL
    if param is True or param is False:
        return "t" if param else "f"
    if isinstance(param, bytes):
        return "\\\\x" + param.hex()
    return _escape(str(param))


def _full(col: ColumnInfo) -> Render:
    """Any value through the full wire decoder (raises ValueError if it does not fit)."""
    bind = wire.binder_for(col.kind, "postgresql")

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


# Strings that are already PostgreSQL input for their kind, as checked here.
# A naive timestamp reads as UTC in the COPY session (PG_READ_SETTINGS), as
# the decoder takes it; a timestamp column takes no offset as it is.
_STRING_CHECKS: dict[str, Callable[[str], Any]] = {
    "numeric": _PLAIN_DECIMAL,
    "uuid": _CANONICAL_UUID,
    "date": _parses(_DATE, _from_date),
    "timestamp": _parses(_TIMESTAMP, _from_datetime),
    "timestamptz": _parses(_TIMESTAMPTZ, _from_datetime),
}


def _checked_string(check: Callable[[str], Any], full: Render) -> Render:
    """Pass a string through when ``check`` takes it; anything else to ``full``."""

    def render(value: Any) -> str:
        if type(value) is str and check(value):
            return value
        return _NULL if value is None else full(value)

    return render


def _renderer(col: ColumnInfo) -> Render:
    """The fastest exact way to render ``col``'s wire values as COPY text.

    Each fast path accepts only a value whose text is already what the full
    decoder would bind, and hands anything else to it.
    """
    full = _full(col)
    kind = col.kind
    if kind == "int":

        def render(value: Any) -> str:
            if type(value) is int:  # not bool: a boolean is no integer here
                return str(value)
            return _NULL if value is None else full(value)

    elif kind in ("text", "enum"):

        def render(value: Any) -> str:
            if type(value) is str:
                return _escape(value)
            return _NULL if value is None else full(value)

    elif kind in _STRING_CHECKS:
        render = _checked_string(_STRING_CHECKS[kind], full)

    elif kind == "float":

        def render(value: Any) -> str:
            if type(value) is float and value - value == 0.0:  # finite
                return repr(value)
            return _NULL if value is None else full(value)

    elif kind == "bool":

        def render(value: Any) -> str:
            if value is True:
                return "t"
            if value is False:
                return "f"
            return _NULL if value is None else full(value)

    elif kind == "json" and col.type == "jsonb":
        # jsonb keeps values, not spelling, so orjson's compact text will do;
        # a json column keeps the text itself and takes the decoder's.

        def render(value: Any) -> str:
            if value is None:
                return _NULL
            if type(value) is dict and value.get(wire.JSON_NULL_MARKER) is True:
                return full(value)
            try:
                text = orjson.dumps(value).decode()
            except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
                return full(value)
            return text.replace("\\", "\\\\") if "\\" in text else text

    else:

        def render(value: Any) -> str:
            return _NULL if value is None else full(value)

    return render


# How the common kinds render inline in a generated line renderer; {i} is the
# column's position. Anything else calls the column's renderer.
_INLINE = {
    "int": "str(v) if type(v) is int else (NULL if v is None else r{i}(v))",
    "text": "v if type(v) is str and v.isprintable() and BACKSLASH not in v"
    " else (NULL if v is None else r{i}(v))",
    "bool": "'t' if v is True else ('f' if v is False else"
    " (NULL if v is None else r{i}(v)))",
}
_INLINE["enum"] = _INLINE["text"]
# A plain decimal ("-12.50"): what PostgreSQL's numeric::text prints. ASCII
# only: Decimal reads other scripts' digits, PostgreSQL does not.
_INLINE["numeric"] = (
    "v if type(v) is str and v.isascii()"
    " and v.removeprefix('-').replace('.', '', 1).isdigit()"
    " else (NULL if v is None else r{i}(v))"
)
_CALL = "NULL if v is None else r{i}(v)"


def _line_renderer(
    columns: Sequence[ColumnInfo], renderers: Sequence[Render]
) -> Callable[[Mapping[str, Any]], str]:
    """One function rendering a whole row as a COPY text line (no newline).

    Generated per page, like namedtuple builds its classes, so that the
    common kinds render inline instead of through a call per value (about a
    fifth less time a row of the benchmark's table). Every other value goes
    through its column's renderer, so the result is the same. Only column
    positions are written into the code; names and renderers are looked up
    by position.
    """
    env: dict[str, Any] = {"NULL": _NULL, "BACKSLASH": "\\"}
    code = ["def line(row):", "    get = row.get"]
    for i, (col, render) in enumerate(zip(columns, renderers)):
        env[f"n{i}"] = col.name
        env[f"r{i}"] = render
        code.append(f"    v = get(n{i})")
        code.append(f"    f{i} = " + _INLINE.get(col.kind, _CALL).format(i=i))
    fields = "".join(f"f{i}, " for i in range(len(columns)))
    code.append(f"    return '\\t'.join(({fields}))")
    exec("\n".join(code), env)
    return env["line"]  # type: ignore[no-any-return]


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
        self._plan = [(c.name, _renderer(c)) for c in columns]
        self._line = _line_renderer(columns, [render for _, render in self._plan])
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
                result.fail([row.get(c.name) for c in pk], _reason(row, self._plan))
                continue
            if len(batch) == _CHUNK_ROWS:
                self.count += len(batch)
                yield b"".join(batch)
                batch = []
        if batch:
            self.count += len(batch)
            yield b"".join(batch)


_PLAIN_KEY = {"int": int, "text": str}


def _last_of_each_key(
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
    key_plan = [(c.name, _renderer(c)) for c in pk]
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
    plan = [(c.name, _renderer(c)) for c in columns]
    names = [c.name for c in columns]
    key_idx = [names.index(n) for n in info.primary_key]
    last: dict[tuple[str, ...], int] = {}
    valid = 0
    for i, row in enumerate(rows):
        try:
            fields = [render(row.get(name)) for name, render in plan]
            "\t".join(fields).encode("utf-8")
        except ValueError:
            result.fail([row.get(c.name) for c in info.pk_columns], _reason(row, plan))
            continue
        valid += 1
        last[tuple([fields[k] for k in key_idx])] = i
    result.skipped += valid - len(last)
    return sorted(last.values())


def _reason(row: Mapping[str, Any], plan: list[tuple[str, Render]]) -> str:
    """Why a row does not render: the first column at fault."""
    for name, render in plan:
        try:
            render(row.get(name)).encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: not valid text (an unpaired surrogate)"
        except ValueError as ex:
            return str(wire.WireError(name, str(ex)))
    return "row could not be rendered"


def import_rows(
    conn: Connection,
    info: TableInfo,
    columns: list[ColumnInfo],
    rows: Sequence[Mapping[str, Any]],
    strategy: str,
    result: PageResult,
    *,
    direct: bool = False,
) -> None:
    """Apply wire rows, decoded by the target's column kinds, through COPY.

    Counts go into ``result``. ``direct`` copies straight into the target
    when it should hold none of the rows' keys; if one is there after all,
    the page is staged instead.
    """
    keep = (
        None if strategy == "append" else _last_of_each_key(info, columns, rows, result)
    )
    if keep == []:
        return
    rendered = RenderedRows(info, columns, rows, keep)
    source = CopySource("text", [c.name for c in columns], None)
    applier = CopyApplier(conn, info, source, columns, strategy, result)
    if direct and strategy != "append":
        unrendered = PageResult()  # counted only if the direct copy stands
        savepoint = conn.begin_nested()
        try:
            applier.copy_direct(rendered.chunks(unrendered))
        except Rejected:
            savepoint.rollback()
        else:
            savepoint.commit()
            result.add_failures(unrendered)
            return
    applier.copy_staged(rendered.chunks(result))


def copies_like_insert(conn: Connection, info: TableInfo) -> bool:
    """Whether COPY into the table acts like INSERT: no rules, no row security."""
    return not conn.exec_driver_sql(
        "SELECT relhasrules OR relrowsecurity FROM pg_class"
        " WHERE oid = CAST(%(t)s AS regclass)",
        {"t": info.qualified},
    ).scalar()


# --- COPY into the table ----------------------------------------------------------


@dataclass(frozen=True)
class CopySource:
    """What COPY data holds: its format (text or binary), columns and row count."""

    copy_format: str
    columns: list[str]
    count: int | None  # rows it must hold; None when this site made the data


class ByteReader:
    """A ``read(size)`` file over byte chunks, for COPY FROM STDIN.

    An error raised by the chunks is kept in ``error``: psycopg2 replaces it
    with a cancelled COPY, and the caller wants the original (a peer that
    went away is worth retrying).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        while not self._pending:  # an empty read means the end to COPY
            try:
                chunk = next(self._chunks, None)
            except BaseException as ex:
                self.error = ex
                raise
            if chunk is None:
                return b""
            self._pending = chunk
        if size < 0 or len(self._pending) <= size:
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class CopyApplier:
    """COPY data into one table with one strategy, counted into a PageResult."""

    def __init__(
        self,
        conn: Connection,
        info: TableInfo,
        source: CopySource,
        columns: list[ColumnInfo],
        strategy: str,
        result: PageResult,
    ) -> None:
        self._conn = conn
        self._info = info
        self._source_data = source
        self._columns = columns
        self._strategy = strategy
        self._result = result
        self._copy_format = source.copy_format
        self._dbapi_error = conn.dialect.loaded_dbapi.Error
        self._stage = quote(f"_dbsync_stage_{uuid.uuid4().hex[:12]}")
        self._failed = 0

    def _cursor(self) -> Any:
        return self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _copy_in(self, cur: Any, target: str, chunks: Iterable[bytes]) -> int:
        """COPY the data into ``target``; the rows copied, checked against the count."""
        cols = ", ".join(quote(n) for n in self._source_data.columns)
        reader = ByteReader(chunks)
        try:
            cur.copy_expert(
                f"COPY {target} ({cols}) FROM STDIN (FORMAT {self._copy_format})",
                reader,
                size=_READ_SIZE,
            )
        except self._dbapi_error:
            reader.raise_error()
            raise
        expected = self._source_data.count
        if expected is not None and cur.rowcount != expected:
            raise PeerUnavailable(
                f"pull-data: page of {self._info.name} broke off"
                f" ({cur.rowcount} of {self._source_data.count} rows)"
            )
        return int(cur.rowcount)

    def copy_direct(self, chunks: Iterable[bytes]) -> None:
        cur = self._cursor()
        try:
            cur.execute(PG_READ_SETTINGS, ())  # text input read as it was written
            try:
                copied = self._copy_in(cur, self._info.qualified, chunks)
            except self._dbapi_error as ex:
                raise Rejected(
                    f"{self._info.name}: COPY into the table refused"
                    f" ({db_error_text(ex)})"
                ) from None
            self._result.created += copied
            if copied:
                bump_sequence(cur, self._info)
        finally:
            cur.close()

    def copy_staged(self, chunks: Iterable[bytes]) -> None:
        binary = self._copy_format == "binary"
        here = {c.name: c for c in self._info.columns}
        sent = self._source_data.columns
        if binary and any(n not in here for n in sent):
            raise Rejected(
                f"{self._info.name}: a sent column is not here", as_text=True
            )
        defs = ", ".join(
            f"{_pct(n)} {here[n].type if binary else 'text'}" for n in sent
        )
        cur = self._cursor()
        try:
            cur.execute(PG_READ_SETTINGS, ())
            cur.execute(f"CREATE TEMP TABLE {self._stage} ({defs}) ON COMMIT DROP", ())
            try:
                staged = self._copy_in(cur, self._stage, chunks)
            except self._dbapi_error as ex:
                if binary:
                    raise Rejected(
                        f"{self._info.name}: binary COPY data refused"
                        f" ({db_error_text(ex)})",
                        as_text=True,
                    ) from None
                raise ImportRefused(
                    f"{self._info.name}: COPY data refused ({db_error_text(ex)})"
                ) from None
            written = self._apply(cur, "", ())
            if written is None:
                written = self._fallback(cur)
            created, updated = written
            result = self._result
            result.created += created
            result.updated += updated
            result.skipped += staged - created - updated - self._failed
            if created and self._strategy != "append":
                bump_sequence(cur, self._info)
            cur.execute(f"DROP TABLE {self._stage}", ())
        finally:
            cur.close()

    def _source(self, where: str) -> str:
        """SELECT the staged rows as the target's types; ``where`` filters them."""
        if self._copy_format == "binary":
            exprs = [f"s.{_pct(c.name)}" for c in self._columns]
        else:
            exprs = [
                f"CAST(s.{_pct(c.name)} AS {unbounded_type(c.type)})"
                for c in self._columns
            ]
        sql = f"SELECT {', '.join(exprs)} FROM {self._stage} s{where}"
        if self._strategy == "append":
            sql += " ORDER BY s.ctid"  # page order, as a fresh heap holds it
        return sql

    def _apply(self, cur: Any, where: str, params: Any) -> tuple[int, int] | None:
        """One set-based statement over the staged rows: (created, updated), or
        None when the database refused it (nothing of it is left)."""
        upsert = pg_upsert_sql(
            self._info, self._columns, self._strategy, self._source(where)
        )
        savepoint = self._conn.begin_nested()
        try:
            cur.execute(
                f"WITH written (created) AS ({upsert})"
                " SELECT count(*) FILTER (WHERE created),"
                " count(*) FILTER (WHERE NOT created) FROM written",
                params,
            )
            created, updated = cur.fetchone()
        except self._dbapi_error:
            savepoint.rollback()
            return None
        savepoint.commit()
        return int(created), int(updated)

    def _fallback(self, cur: Any) -> tuple[int, int]:
        """Apply a refused page in batches, and a refused batch row by row."""
        keys = ", ".join(f"s.{_pct(c.name)}::text" for c in self._info.pk_columns)
        ints = [c.kind == "int" for c in self._info.pk_columns]
        created = updated = 0
        after = "(0,0)"
        while True:
            cur.execute(
                f"SELECT s.ctid::text AS row_tid{', ' + keys if keys else ''}"
                f" FROM {self._stage} s WHERE s.ctid > %s::tid ORDER BY s.ctid"
                f" LIMIT {_FALLBACK_BATCH}",
                (after,),
            )
            batch = cur.fetchall()
            if not batch:
                return created, updated
            after = batch[-1][0]
            written = self._apply(
                cur, " WHERE s.ctid = ANY(%s::tid[])", ([r[0] for r in batch],)
            )
            if written is not None:
                created, updated = created + written[0], updated + written[1]
                continue
            for tid, *key in batch:
                one = self._apply_row(cur, tid)
                if isinstance(one, str):
                    self._failed += 1
                    self._result.fail(
                        [
                            int(v) if i and v is not None else v
                            for v, i in zip(key, ints)
                        ],
                        one,
                    )
                else:
                    created, updated = created + one[0], updated + one[1]

    def _apply_row(self, cur: Any, tid: str) -> tuple[int, int] | str:
        """One staged row: (created, updated), or the database's reason for refusing it."""
        upsert = pg_upsert_sql(
            self._info,
            self._columns,
            self._strategy,
            self._source(" WHERE s.ctid = %s::tid"),
        )
        savepoint = self._conn.begin_nested()
        try:
            cur.execute(upsert, (tid,))
            flags = [r[0] for r in cur.fetchall()]
        except self._dbapi_error as ex:
            savepoint.rollback()
            return db_error_text(ex)
        savepoint.commit()
        created = sum(1 for f in flags if f)
        return created, len(flags) - created
