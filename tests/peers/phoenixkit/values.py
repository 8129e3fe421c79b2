"""Values as PhoenixKit holds, sends, reads and binds them.

PhoenixKit is Elixir: rows come out of Postgrex as Elixir terms, go on the
wire through ``serialize_value/1`` and Jason, come back in through Jason and
``Prepare.value/3``, and are bound to SQL parameters by Postgrex, which is
strict about the term it gets for each column type. The stand-in models those
terms in Python so that it fails where PhoenixKit fails:

- ``Binary`` values are ``str`` (valid UTF-8) or ``bytes`` (any bytes); both
  are one Elixir type (a binary), so a ``str`` of 16 bytes binds to a uuid.
- ``DateTimeT`` / ``NaiveT`` / ``TimeT`` carry Elixir's microsecond precision,
  which decides how many fraction digits ISO 8601 output has.
- ``Atom`` is what Postgrex gives for float NaN and infinities.
- ``Struct`` is a term Jason cannot encode (intervals, inet, ...).

Facts file sections: §4 "Wire value encoding" and "Import-side decoding",
§3.4 (the import paths that bind these values).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import struct
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

BINARY_KEY = "__phoenix_kit_binary__"

# -- Elixir terms ---------------------------------------------------------------


@dataclass(frozen=True)
class DateTimeT:
    """%DateTime{} in UTC (Postgrex gives every timestamptz in UTC)."""

    value: dt.datetime
    precision: int


@dataclass(frozen=True)
class NaiveT:
    """%NaiveDateTime{}."""

    value: dt.datetime
    precision: int


@dataclass(frozen=True)
class TimeT:
    """%Time{}."""

    value: dt.time
    precision: int


@dataclass(frozen=True)
class Atom:
    name: str


@dataclass(frozen=True)
class Struct:
    """A struct Jason has no encoder for (Postgrex.Interval, Postgrex.INET, ...)."""

    name: str
    text: str


class DecodeFailure(Exception):
    """Postgrex could not turn a column value into a term (raised inside the query)."""


class JasonError(Exception):
    """Jason.EncodeError: a term that cannot become JSON."""


class EncodeError(Exception):
    """DBConnection.EncodeError: Postgrex refused to bind a term to a parameter."""


# -- column types ---------------------------------------------------------------

TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "citext", "char"})
INT_RANGES = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
    "oid": (0, 2**32 - 1),
}
STRUCT_NAMES = {
    "interval": "Postgrex.Interval",
    "inet": "Postgrex.INET",
    "cidr": "Postgrex.INET",
    "macaddr": "Postgrex.MACADDR",
    "point": "Postgrex.Point",
    "box": "Postgrex.Box",
    "lseg": "Postgrex.LineSegment",
    "path": "Postgrex.Path",
    "polygon": "Postgrex.Polygon",
    "circle": "Postgrex.Circle",
    "line": "Postgrex.Line",
    "tsvector": "Postgrex.Lexeme",
}


@dataclass(frozen=True)
class ColType:
    """What Postgrex knows of a column: its (base) type, and element for arrays."""

    name: str
    typname: str
    typtype: str
    typmod: int
    elem: ColType | None = None

    @property
    def textlike(self) -> bool:
        return self.typname in TEXT_TYPES or self.typtype == "e"

    @property
    def precision(self) -> int:
        """Postgrex's microsecond precision: the type modifier, else 6."""
        return self.typmod if 0 <= self.typmod <= 6 else 6


COLUMNS_SQL = """
SELECT a.attname,
       a.atttypmod,
       bt.typname, bt.typtype,
       et.typname AS elem_typname, et.typtype AS elem_typtype
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et0 ON et0.oid = bt.typelem AND bt.typcategory = 'A'
LEFT JOIN pg_type et
       ON et.oid = CASE WHEN et0.typtype = 'd' THEN et0.typbasetype ELSE et0.oid END
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def column_types(cur: Any, relid: int) -> list[ColType]:
    cur.execute(COLUMNS_SQL, (relid,))
    found = []
    for name, typmod, typname, typtype, elem_name, elem_type in cur.fetchall():
        elem = (
            ColType(name, elem_name, elem_type, typmod)
            if elem_name is not None
            else None
        )
        found.append(ColType(name, typname, typtype, typmod, elem))
    return found


def select_list(columns: list[ColType]) -> str:
    """Every column as text (arrays as text[]), aliased c0..cn.

    The aliases keep an ``ORDER BY <column>`` on the table's own column, not
    on its text.
    """
    return ", ".join(f"{_as_text(c)} AS c{i}" for i, c in enumerate(columns))


def _as_text(col: ColType) -> str:
    if col.elem is not None:
        return f'"{col.name}"::text[]'
    if col.typname == "bpchar":  # its output keeps the padding a cast drops
        return f'CASE WHEN "{col.name}" IS NULL THEN NULL ELSE concat("{col.name}") END'
    return f'"{col.name}"::text'


# -- reading: what Postgrex returns ------------------------------------------------


def _float(text: str, single: bool) -> Any:
    specials = {"NaN": Atom("NaN"), "Infinity": Atom("inf"), "-Infinity": Atom("-inf")}
    if text in specials:
        return specials[text]
    value = float(text)
    if single:  # float4 comes out of Postgrex as the float32 value, widened
        value = struct.unpack("f", struct.pack("f", value))[0]
    return value


def _parse_time(text: str) -> tuple[dt.time, dt.timedelta]:
    """'HH:MM:SS[.ffffff][+HH[:MM[:SS]]]' -> (naive time, offset)."""
    m = re.fullmatch(
        r"(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?",
        text,
    )
    if not m:
        raise DecodeFailure(f"cannot decode time {text!r}")
    hh, mm, ss, frac, sign, oh, om, os_ = m.groups()
    if int(hh) == 24:
        raise DecodeFailure(f"cannot decode time {text!r}")
    us = int((frac or "").ljust(6, "0")[:6] or 0)
    offset = dt.timedelta(0)
    if sign:
        offset = dt.timedelta(
            hours=int(oh), minutes=int(om or 0), seconds=int(os_ or 0)
        )
        if sign == "-":
            offset = -offset
    return dt.time(int(hh), int(mm), int(ss), us), offset


def _parse_timestamp(text: str) -> tuple[dt.datetime, dt.timedelta | None]:
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d) (.*)", text)
    if not m:  # infinity, BC dates, years past 9999
        raise DecodeFailure(f"cannot decode timestamp {text!r}")
    time, offset = _parse_time(m.group(4))
    has_offset = "+" in m.group(4) or "-" in m.group(4)
    naive = dt.datetime.combine(
        dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))), time
    )
    return naive, offset if has_offset else None


def decode_text(text: str | None, col: ColType) -> Any:
    """The term Postgrex would give for a column value (read here as text)."""
    if text is None:
        return None
    t = col.typname
    if t in INT_RANGES:
        return int(text)
    if t == "numeric":
        return Decimal(text)
    if t in ("float4", "float8"):
        return _float(text, t == "float4")
    if t == "bool":
        return text in ("t", "true")
    if col.textlike:
        return text
    if t == "bytea":
        return bytes.fromhex(text[2:])
    if t == "uuid":
        return uuid.UUID(text).bytes
    if t == "date":
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", text):
            raise DecodeFailure(f"cannot decode date {text!r}")
        return dt.date.fromisoformat(text)
    if t == "time":
        return TimeT(_parse_time(text)[0], col.precision)
    if t == "timetz":
        # Postgrex shifts a timetz to UTC and drops the offset.
        time, offset = _parse_time(text)
        at = dt.datetime.combine(dt.date(2000, 1, 1), time) - offset
        return TimeT(at.time(), col.precision)
    if t == "timestamp":
        return NaiveT(_parse_timestamp(text)[0], col.precision)
    if t == "timestamptz":
        naive, offset = _parse_timestamp(text)
        utc = (naive - (offset or dt.timedelta(0))).replace(tzinfo=dt.UTC)
        return DateTimeT(utc, col.precision)
    if t in ("json", "jsonb"):
        return json.loads(text)
    return Struct(STRUCT_NAMES.get(t, f"unknown type {t}"), text)


def decode_value(value: Any, col: ColType) -> Any:
    if col.elem is not None and value is not None:
        return [decode_value(v, col.elem) for v in value]
    return decode_text(value, col)


# -- ISO 8601 as Elixir writes it ----------------------------------------------------


def _fraction(us: int, precision: int) -> str:
    return "." + f"{us:06d}"[:precision] if precision > 0 else ""


def iso_time(t: TimeT) -> str:
    v = t.value
    return f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}" + _fraction(
        v.microsecond, t.precision
    )


def iso_date(d: dt.date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def iso_naive(n: NaiveT) -> str:
    v = n.value
    return f"{iso_date(v.date())}T" + iso_time(TimeT(v.time(), n.precision))


def iso_datetime(d: DateTimeT) -> str:
    return iso_naive(NaiveT(d.value.replace(tzinfo=None), d.precision)) + "Z"


def decimal_text(d: Decimal) -> str:
    """Decimal.to_string/1 (scientific form, as the General Decimal Arithmetic
    spec writes it; Python's str() follows the same spec)."""
    if d.is_nan():
        return "NaN"
    return str(d)


# -- sending: serialize_value/1 then Jason -------------------------------------------


def serialize(value: Any) -> Any:
    """§4 table "Wire value encoding" (api_controller serialize_value/1).

    Only the top-level value is looked at; anything inside a list or map goes
    to Jason as it is (see ``jason``).
    """
    if isinstance(value, DateTimeT):
        return iso_datetime(value)
    if isinstance(value, NaiveT):
        return iso_naive(value)
    if isinstance(value, dt.date):
        return iso_date(value)
    if isinstance(value, TimeT):
        return iso_time(value)
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {BINARY_KEY: base64.b64encode(value).decode()}
    return value


def jason(value: Any) -> Any:
    """Jason.encode of a term: a JSON-ready Python value, or JasonError."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Atom):
        return value.name
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise JasonError(f"invalid byte in {inspect(value)}") from None
    if isinstance(value, (DateTimeT, NaiveT, TimeT, Decimal, dt.date)):
        return serialize(value)
    if isinstance(value, list):
        return [jason(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jason(v) for k, v in value.items()}
    raise JasonError(f"Jason.Encoder not implemented for {inspect(value)}")


def wire_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row as pull-data / table-records put it on the wire."""
    return {name: jason(serialize(value)) for name, value in row.items()}


# -- receiving: Prepare.value/3 and value/1 ------------------------------------------

# §4 "Import-side decoding" (connection_notifier/prepare.ex).
_DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"
)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^\d{2}:\d{2}:\d{2}(\.\d+)?$")
_DECIMAL_RE = re.compile(r"^-?\d+\.\d+$")
_ISO_PARTS = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
)


def _date_or_none(y: str, m: str, d: str) -> dt.date | None:
    try:
        return dt.date(int(y), int(m), int(d))
    except ValueError:
        return None


def _time_parts(h: str, mi: str, s: str, frac: str | None) -> TimeT | None:
    if not (int(h) <= 23 and int(mi) <= 59 and int(s) <= 59):
        return None
    digits = frac or ""
    us = int(digits[:6].ljust(6, "0")) if digits else 0
    return TimeT(dt.time(int(h), int(mi), int(s), us), min(len(digits), 6))


def parse_datetime_string(value: str) -> Any:
    """DateTime.from_iso8601 (shifted to UTC), else NaiveDateTime.from_iso8601."""
    if not _DATETIME_RE.match(value):
        return None
    m = _ISO_PARTS.match(value)
    assert m is not None
    y, mo, d, h, mi, s, frac, offset = m.groups()
    day = _date_or_none(y, mo, d)
    time = _time_parts(h, mi, s, frac)
    if day is None or time is None:
        return None
    naive = dt.datetime.combine(day, time.value)
    if offset is None:  # {:error, :missing_offset}: the naive parse takes it
        return NaiveT(naive, time.precision)
    if offset == "Z":
        delta = dt.timedelta(0)
    else:
        if offset == "-00:00":  # RFC 3339 "unknown offset": Elixir refuses it
            return None
        sign = 1 if offset[0] == "+" else -1
        delta = sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        if int(offset[1:3]) > 23 or int(offset[4:6]) > 59:
            return None
    return DateTimeT((naive - delta).replace(tzinfo=dt.UTC), time.precision)


def parse_date_string(value: str) -> Any:
    if not _DATE_RE.match(value):
        return None
    return _date_or_none(value[0:4], value[5:7], value[8:10])


def parse_time_string(value: str) -> Any:
    if not _TIME_RE.match(value):
        return None
    h, mi, rest = value.split(":", 2)
    s, _, frac = rest.partition(".")
    return _time_parts(h, mi, s, frac or None)


def parse_decimal_string(value: str) -> Any:
    return Decimal(value) if _DECIMAL_RE.match(value) else None


def _first(*candidates: Any) -> Any:
    for c in candidates:
        if c is not None:
            return c
    return None


def prepare(value: Any, column: str, numeric_cols: list[str]) -> Any:
    """Prepare.value/3: the term a received value becomes before it is bound.

    ISO strings become temporal terms whatever the column (so a text column
    holding "2024-01-01" gets a %Date{}: the known heuristic risk, §4); decimal
    strings become %Decimal{} only in the columns ``numeric_columns`` lists;
    binary wrappers become bytes (value/1 handles every non-string).
    """
    if isinstance(value, str):
        found = _first(
            parse_datetime_string(value),
            parse_date_string(value),
            parse_time_string(value),
        )
        if found is None and column in numeric_cols:
            found = parse_decimal_string(value)
        return value if found is None else found
    return prepare_key(value)


def prepare_key(value: Any) -> Any:
    """Prepare.value/1: the broad form used for key lookups (decimals anywhere)."""
    if isinstance(value, str):
        found = _first(
            parse_datetime_string(value),
            parse_date_string(value),
            parse_time_string(value),
            parse_decimal_string(value),
        )
        return value if found is None else found
    if isinstance(value, dict) and set(value) == {BINARY_KEY}:
        encoded = value[BINARY_KEY]
        if isinstance(encoded, str):
            try:
                return base64.b64decode(encoded, validate=True)
            except (ValueError, TypeError):
                return encoded
    return value


# §4: Prepare.numeric_columns/1 filters column types with
# ~w[numeric decimal double precision real], which splits on spaces: the list
# is numeric, decimal, double, precision, real, so a "double precision" column
# never matches (the facts file lists it; the source's list does not hold it).
NUMERIC_TYPE_WORDS = ("numeric", "decimal", "double", "precision", "real")


# -- binding: what Postgrex accepts for each parameter type ---------------------------


def _expected(value: Any, expected: str) -> EncodeError:
    return EncodeError(
        f"Postgrex expected {expected}, got {inspect(value)}. Please make sure the "
        "value you are passing matches the definition in your table or in your "
        "query or convert the value accordingly."
    )


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return None


def bind(value: Any, col: ColType) -> tuple[str, Any]:
    """A SQL placeholder and parameter for ``value`` in a column of type ``col``.

    Raises EncodeError where Postgrex raises DBConnection.EncodeError (or has no
    clause for the term at all).
    """
    if value is None:
        return "%s", None
    if col.elem is not None:
        if not isinstance(value, list):
            raise _expected(value, "a list")
        return f"%s::{col.elem.typname}[]", _bind_list(value, col.elem)
    return _bind_scalar(value, col)


def _bind_list(values: list[Any], elem: ColType) -> list[Any]:
    out = []
    for v in values:
        if isinstance(v, list):
            out.append(_bind_list(v, elem))
        else:
            out.append(_bind_scalar(v, elem)[1] if v is not None else None)
    return out


def _bind_scalar(value: Any, col: ColType) -> tuple[str, Any]:
    t = col.typname
    if t in INT_RANGES:
        low, high = INT_RANGES[t]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
        ):
            raise _expected(value, f"{low}..{high}")
        return "%s", value
    if t == "numeric":
        if isinstance(value, bool) or not isinstance(value, (Decimal, int, float)):
            raise _expected(value, "a Decimal, integer or float")
        if isinstance(value, float):  # Decimal.from_float: the shortest form
            value = Decimal(repr(value))
        return "%s::numeric", value
    if t in ("float4", "float8"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _expected(value, "a float")
        return f"%s::{t}", float(value)
    if t == "bool":
        if not isinstance(value, bool):
            raise _expected(value, "a boolean")
        return "%s", value
    if col.textlike:
        raw = _as_bytes(value)
        if raw is None:
            raise _expected(value, "a binary")
        return f'%s::"{t}"' if t == "char" else f"%s::{t}", _pg_text(raw)
    if t == "bytea":
        raw = _as_bytes(value)
        if raw is None:
            raise _expected(value, "a binary")
        return "%s::bytea", raw
    if t == "uuid":
        raw = _as_bytes(value)
        if raw is None or len(raw) != 16:
            raise _expected(value, "a binary of 16 bytes")
        return "%s::uuid", str(uuid.UUID(bytes=raw))
    if t == "date":
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise _expected(value, "Date")
        return "%s::date", value
    if t == "time":
        if not isinstance(value, TimeT):
            raise _expected(value, "Time")
        return "%s::time", value.value
    if t == "timetz":
        if not isinstance(value, TimeT):
            raise _expected(value, "Time")
        return "%s::timetz", value.value.isoformat() + "+00"
    if t == "timestamp":
        if not isinstance(value, (NaiveT, DateTimeT)):
            raise _expected(value, "{DateTime, NaiveDateTime}")
        return "%s::timestamp", value.value.replace(tzinfo=None)
    if t == "timestamptz":
        if not isinstance(value, DateTimeT):
            raise _expected(value, "DateTime")
        return "%s::timestamptz", value.value
    if t in ("json", "jsonb"):
        try:
            encoded = json.dumps(jason(value), ensure_ascii=False)
        except JasonError as ex:
            raise EncodeError(str(ex)) from None
        return f"%s::{t}", encoded
    raise _expected(value, f"a {STRUCT_NAMES.get(t, t)}")


class PgTextError(Exception):
    """PostgreSQL refuses the bytes as text (invalid UTF-8, or a NUL)."""


def _pg_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        bad = raw[ex.start : ex.start + 1].hex()
        raise PgTextError(
            f'[character_not_in_repertoire] invalid byte sequence for encoding "UTF8": 0x{bad}'
        ) from None
    if "\x00" in text:
        raise PgTextError(
            '[character_not_in_repertoire] invalid byte sequence for encoding "UTF8": 0x00'
        )
    return text


# -- inspect/1, for messages ------------------------------------------------------


def inspect(value: Any) -> str:
    """Roughly how Elixir's inspect/1 prints a term (for error texts and keys)."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            return "<<" + ", ".join(str(b) for b in value) + ">>"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Decimal):
        return f'Decimal.new("{decimal_text(value)}")'
    if isinstance(value, DateTimeT):
        return f"~U[{iso_datetime(value).replace('T', ' ')}]"
    if isinstance(value, NaiveT):
        return f"~N[{iso_naive(value).replace('T', ' ')}]"
    if isinstance(value, TimeT):
        return f"~T[{iso_time(value)}]"
    if isinstance(value, dt.date):
        return f"~D[{iso_date(value)}]"
    if isinstance(value, Atom):
        return f":{value.name}"
    if isinstance(value, list):
        return "[" + ", ".join(inspect(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "%{"
            + ", ".join(f"{inspect(k)} => {inspect(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, Struct):
        return f"%{value.name}{{}}"
    return repr(value)
