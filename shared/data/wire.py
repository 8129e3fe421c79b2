"""Encode database values for the wire and decode them for a receiver's own columns.

The wire is JSON, so every value must survive ``json.loads(json.dumps(v))``
unchanged. The rules (PROTOCOL.md, "Values on the wire"), per column *kind*
(a short tag the catalog derives from the column type):

- ``int``, ``bool``: native JSON.
- ``numeric``: an exact string in plain notation that keeps the scale
  (``"1.50"``, ``"0.000000000000000001"``); ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` for PostgreSQL's special values.
- ``float``: a JSON number, except that JSON has no NaN or infinities, so those
  three travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
  ``-0.0`` stays ``-0.0``.
- ``date``, ``time``, ``timestamp``: ISO 8601 (``datetime.isoformat``).
  ``timetz`` keeps its own offset; ``timestamptz`` is given in UTC
  (``+00:00``) so the same instant always encodes to the same text whatever
  the session time zone of the sender (checksums depend on it). psycopg2 maps
  PostgreSQL's ``infinity`` dates to ``date.max``/``datetime.max``, so those
  travel as the largest finite value.
- ``interval``: an ISO 8601 duration exactly as PostgreSQL prints it with
  ``IntervalStyle = iso_8601``: years, months, days and the time part each
  carry their own sign (``"P1Y2M3DT4H5M6.5S"``, ``"P-1Y-2M3DT-4H-5M-6.5S"``,
  ``"PT0S"``). Months, days and microseconds are separate fields in
  PostgreSQL, and this form keeps all three, which a ``timedelta`` cannot.
  PostgreSQL reads it back with a plain ``::interval`` cast.
- ``uuid``: canonical lower-case string.
- ``bytea``: ``{"__phoenix_kit_binary__": "<base64>"}`` (PhoenixKit's convention).
- ``json``: the JSON value itself. A JSON ``null`` stored in a json column
  travels as ``{"__dbsync_json_null__": true}`` so that it stays distinct from
  SQL NULL (``null``); a receiver that does not know the marker stores it as
  an object, which is the closest it can come.
- ``array:<kind>``: a JSON list (nested for multi-dimensional arrays),
  elements encoded by their own kind, SQL NULL elements as ``null``.
- ``enum``, ``text``, ``other``: a string.

Decoding goes by the receiver's own column kind, never by the look of the
value; a value that does not fit raises :class:`WireError`, which the importer
counts as a failed row.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson

BINARY_KEY = "__phoenix_kit_binary__"

KINDS = frozenset(
    {
        "int", "numeric", "float", "text", "bool", "date", "time", "timetz",
        "timestamp", "timestamptz", "interval", "uuid", "bytea", "json",
        "enum", "other",
    }
)  # fmt: skip

# Checked with fullmatch: ``$`` would also take the text before a final newline.
_ISO_DURATION = re.compile(
    r"P(?!\Z)(-?\d+Y)?(-?\d+M)?(-?\d+W)?(-?\d+D)?"
    r"(T(?=-?\d)(-?\d+H)?(-?\d+M)?(-?\d+(\.\d+)?S)?)?",
    re.ASCII,
)
_INT_TEXT = re.compile(r"[+-]?\d+", re.ASCII)
# No two parts may take the same digits (``\d+\.?\d*`` did, and backtracked
# quadratically over a long run of digits ending in a letter).
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# Longest number texts decoded: a float has 17 significant digits, and the
# longest plain PostgreSQL numeric is 131,072 digits before the point and
# 16,383 after it (its limits; a numeric beyond them cannot be stored).
FLOAT_TEXT_MAX = 1_000
NUMERIC_DIGITS_BEFORE_POINT = 131_072
NUMERIC_DIGITS_AFTER_POINT = 16_383
NUMERIC_TEXT_MAX = NUMERIC_DIGITS_BEFORE_POINT + NUMERIC_DIGITS_AFTER_POINT + 32
_FLOAT_SPECIALS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class Column(Protocol):
    """What row encoding needs to know about a column."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


class WireError(ValueError):
    """A wire value that does not fit the receiving column."""

    def __init__(self, column: str | None, message: str) -> None:
        super().__init__(f"{column}: {message}" if column else message)
        self.column = column
        self.message = message


def is_array(kind: str) -> bool:
    return kind.startswith("array:")


def element_kind(kind: str) -> str:
    return kind[len("array:") :]


def valid_kind(kind: str) -> bool:
    while is_array(kind):
        kind = element_kind(kind)
    return kind in KINDS


# --- encoding -----------------------------------------------------------------


def _enc_identity(value: Any) -> Any:
    return value


def _enc_int(value: Any) -> Any:
    return int(value)


def _enc_bool(value: Any) -> Any:
    return bool(value)


def _enc_numeric(value: Any) -> Any:
    if isinstance(value, Decimal):
        # format "f" keeps the scale and never switches to exponent notation
        # (str(Decimal("0.000000000000000001")) would be "1E-18").
        return format(value, "f")
    if isinstance(value, float):
        return encode_float(value) if not math.isfinite(value) else repr(value)
    return str(value)


def encode_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _enc_float(value: Any) -> Any:
    if isinstance(value, str):  # SQLite may hold text in a REAL column
        return value
    return encode_float(float(value))


def _enc_temporal(value: Any) -> Any:
    return value if isinstance(value, str) else value.isoformat()


def _enc_timestamptz(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if value.tzinfo is dt.UTC:  # as the catalog reads them
        return value.isoformat()
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _enc_interval(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        return timedelta_to_iso(value)
    return str(value)


def _enc_uuid(value: Any) -> Any:
    if isinstance(value, str) and len(value) == 36 and value == value.lower():
        return value  # already canonical, as PostgreSQL always prints it
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def uuid_as_binary(value: str) -> dict[str, str]:
    """A uuid as PhoenixKit sends one: its 16 bytes, wrapped as binaries are."""
    raw = uuid.UUID(value).bytes
    return {BINARY_KEY: base64.b64encode(raw).decode("ascii")}


def _enc_bytes(value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return {BINARY_KEY: base64.b64encode(bytes(value)).decode("ascii")}


class _JsonNull:
    """A JSON ``null`` held in a json column, as opposed to SQL NULL."""

    def __repr__(self) -> str:
        return "JSON_NULL"


JSON_NULL = _JsonNull()
JSON_NULL_MARKER = "__dbsync_json_null__"


def _enc_json(value: Any) -> Any:
    # The catalog selects json as text (psycopg2 would parse 'null' to None);
    # SQLite hands back the text too.
    if isinstance(value, (str, bytes)):
        value = parse_json(value)
    if value is None or value is JSON_NULL:
        return {JSON_NULL_MARKER: True}
    return value


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_BEFORE_NUMBER = frozenset(b" \t\r\n-")
_STARTS_VALUE = frozenset(b":,[")


def _may_hold_long_integer(text: str | bytes) -> bool:
    """Whether a number token of 19 digits or more may be in the JSON text.

    A run of digits counts when what comes before it (past blanks and a
    minus) starts a value: a colon, comma, bracket, or nothing. Digits in a
    string seldom follow one of those; when they do, the text is only parsed
    more slowly. (Runs are found with C-speed byte operations: a regular
    expression over a 4 MB page took longer than parsing it.)
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    digits = data.translate(_DIGITS_AS_ZERO)
    at = digits.find(_NINETEEN_DIGITS)
    while at != -1:  # ``at`` starts a run: a digit before it would match first
        i = at - 1
        while i >= 0 and data[i] in _BEFORE_NUMBER:
            i -= 1
        if i < 0 or data[i] in _STARTS_VALUE:
            return True
        end = at + len(_NINETEEN_DIGITS)
        while end < len(digits) and digits[end] == 0x30:
            end += 1
        at = digits.find(_NINETEEN_DIGITS, end)
    return False


def parse_json(text: str | bytes) -> Any:
    """Parse JSON text exactly: orjson, unless a number may exceed 64 bits.

    orjson turns such integers into floats, losing digits; the standard
    library keeps them (and reads 1e400 as infinity where orjson refuses).
    Raises ValueError for text that is not JSON, or nested too deep to read.
    """
    if not _may_hold_long_integer(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(text)
    except RecursionError:
        # A peer's JSON nested deeper than the interpreter's stack: not an
        # answer this site reads, and never an error that escapes as a crash.
        raise ValueError("JSON nested too deep") from None


def _enc_text(value: Any) -> Any:
    return value if isinstance(value, str) else str(value)


def _enc_other(value: Any) -> Any:
    # PostgreSQL "other" columns are selected as text; SQLite untyped columns
    # hold whatever was stored, which is JSON-able except for blobs.
    if isinstance(value, (bytes, memoryview)):
        return _enc_bytes(value)
    return value


_ENCODERS: dict[str, Encoder] = {
    "int": _enc_int,
    "numeric": _enc_numeric,
    "float": _enc_float,
    "text": _enc_text,
    "enum": _enc_text,
    "bool": _enc_bool,
    "date": _enc_temporal,
    "time": _enc_temporal,
    "timetz": _enc_temporal,
    "timestamp": _enc_temporal,
    "timestamptz": _enc_timestamptz,
    "interval": _enc_interval,
    "uuid": _enc_uuid,
    "bytea": _enc_bytes,
    "json": _enc_json,
    "other": _enc_other,
}


def encoder_for(kind: str) -> Encoder:
    """Return a function that encodes one non-NULL value of ``kind``."""
    if is_array(kind):
        inner = encoder_for(element_kind(kind))

        def encode_array(value: Any) -> Any:
            if isinstance(value, str):  # a JSON array stored as text (SQLite)
                value = json.loads(value)
            return [
                None
                if v is None
                else (encode_array(v) if isinstance(v, list) else inner(v))
                for v in value
            ]

        return encode_array
    try:
        fn = _ENCODERS[kind]
    except KeyError:
        raise ValueError(f"unknown column kind {kind!r}") from None
    return fn


def encode_value(value: Any, kind: str) -> Any:
    """Encode a value as the database driver returned it into its wire form."""
    if value is None:
        return None
    return encoder_for(kind)(value)


def row_encoder(
    columns: Iterable[Column],
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Return a fast encoder for rows of these columns (encoders looked up once)."""
    plan = [(c.name, encoder_for(c.kind)) for c in columns]

    def encode(row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in plan:
            value = row[name]
            out[name] = None if value is None else fn(value)
        return out

    return encode


def encode_row(row: Mapping[str, Any], columns: list[Column]) -> dict[str, Any]:
    """Encode one row (a mapping by column name) into its wire dict."""
    return row_encoder(columns)(row)


def timedelta_to_iso(value: dt.timedelta) -> str:
    """Write a timedelta as an ISO 8601 duration (days and a signed time part)."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    days, rest = divmod(micros, 86_400 * 1_000_000)
    hours, rest = divmod(rest, 3_600 * 1_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000)
    seconds, frac = divmod(rest, 1_000_000)
    out = "P" + (f"{sign}{days}D" if days else "")
    time = ""
    if hours:
        time += f"{sign}{hours}H"
    if minutes:
        time += f"{sign}{minutes}M"
    if seconds or frac:
        text = f"{seconds}.{frac:06d}".rstrip("0") if frac else str(seconds)
        time += f"{sign}{text}S"
    if time:
        out += "T" + time
    return out if out != "P" else "PT0S"


# --- decoding -----------------------------------------------------------------


def _dec_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {_show(value)}")


def _dec_numeric(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("expected a decimal number, got a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return (
            Decimal(repr(value))
            if math.isfinite(value)
            else Decimal(encode_float(value))
        )
    if isinstance(value, str):
        if len(value) > NUMERIC_TEXT_MAX:
            raise ValueError(f"a decimal number of {len(value)} characters is too long")
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"expected a decimal number, got {_show(value)}") from None
        if number.is_snan():
            raise ValueError("signalling NaN is not a number PostgreSQL knows")
        return _numeric_in_range(number)
    raise ValueError(f"expected a decimal number, got {_show(value)}")


def _numeric_in_range(number: Decimal) -> Decimal:
    """Refuse a decimal whose plain form PostgreSQL cannot hold, before anything
    writes it out: ``1e100000000`` is 138 bytes as text and 100 MB in plain
    digits (what pg_param binds)."""
    if not number.is_finite():
        return number
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if not number.is_zero() and number.adjusted() >= NUMERIC_DIGITS_BEFORE_POINT:
        raise ValueError(
            "decimal number out of range (too many digits before the point)"
        )
    if exponent < -NUMERIC_DIGITS_AFTER_POINT:
        raise ValueError(
            "decimal number out of range (too many digits after the point)"
        )
    return number


def check_key_range(value: Any, column: Any) -> None:
    """Raise WireError when a decoded key value cannot be a value of ``column``'s
    type (a ``numeric(p, s)`` holds less than 10^(p - s)), so a caller's key is
    refused before it is bound, expanded or sent to the database."""
    precision = getattr(column, "precision", None)
    if column.kind != "numeric" or precision is None or not isinstance(value, Decimal):
        return
    scale = getattr(column, "scale", None) or 0
    if (
        value.is_finite()
        and not value.is_zero()
        and value.adjusted() >= precision - scale
    ):
        raise WireError(column.name, f"out of range for {column.type}")


def _dec_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if value in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[value]
        if len(value) <= FLOAT_TEXT_MAX and _FLOAT_TEXT.fullmatch(value):
            return float(value)
    raise ValueError(f"expected a number, got {_show(value)}")


def _dec_text(value: Any) -> str:
    if isinstance(value, str):
        return _no_nul(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a string, got {_show(value)}")


_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def _dec_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean, got {_show(value)}")


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {_show(value)}")
    return _no_nul(value)


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here as a bad value.
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _dec_date(value: Any) -> dt.date:
    text = _need_str(value, "an ISO 8601 date")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date, got {_show(value)}") from None


def _dec_time(value: Any) -> dt.time:
    text = _need_str(value, "an ISO 8601 time")
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time, got {_show(value)}") from None


def _dec_timestamp(value: Any) -> dt.datetime:
    """A naive timestamp; an aware value is converted to UTC first."""
    parsed = _parse_datetime(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _dec_timestamptz(value: Any) -> dt.datetime:
    """An aware timestamp; a value without an offset is taken as UTC."""
    parsed = _parse_datetime(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _parse_datetime(value: Any) -> dt.datetime:
    text = _need_str(value, "an ISO 8601 timestamp")
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 timestamp, got {_show(value)}"
        ) from None


def _dec_interval(value: Any) -> str:
    text = _need_str(value, "an ISO 8601 duration")
    if not _ISO_DURATION.fullmatch(text):
        raise ValueError(f"expected an ISO 8601 duration, got {_show(value)}")
    return text


def _dec_uuid(value: Any) -> str:
    # PhoenixKit sends a uuid as its 16 raw bytes: wrapped in base64, or as a
    # 16-character string when those bytes happen to be valid UTF-8.
    if isinstance(value, dict) and set(value) == {BINARY_KEY}:
        raw = _dec_bytes(value)
        if len(raw) == 16:
            return str(uuid.UUID(bytes=raw))
    elif isinstance(value, str) and len(value) == 16:
        raw = value.encode("utf-8")
        if len(raw) == 16:
            return str(uuid.UUID(bytes=raw))
    text = _need_str(value, "a UUID")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(f"expected a UUID, got {_show(value)}") from None


def _dec_bytes(value: Any) -> bytes:
    if isinstance(value, dict) and set(value) == {BINARY_KEY}:
        try:
            return base64.b64decode(
                _need_str(value[BINARY_KEY], "base64"), validate=True
            )
        except binascii.Error:
            raise ValueError("invalid base64 in binary value") from None
    if isinstance(value, str):
        # A peer may send a binary that is valid UTF-8 as a plain string.
        return value.encode("utf-8")
    raise ValueError(f"expected a binary value, got {_show(value)}")


def _dec_json(value: Any) -> Any:
    if isinstance(value, dict) and value == {JSON_NULL_MARKER: True}:
        return JSON_NULL
    return value


def _dec_other(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    raise ValueError(f"expected a string, got {_show(value)}")


_DECODERS: dict[str, Decoder] = {
    "int": _dec_int,
    "numeric": _dec_numeric,
    "float": _dec_float,
    "text": _dec_text,
    "enum": _dec_text,
    "bool": _dec_bool,
    "date": _dec_date,
    "time": _dec_time,
    "timetz": _dec_time,
    "timestamp": _dec_timestamp,
    "timestamptz": _dec_timestamptz,
    "interval": _dec_interval,
    "uuid": _dec_uuid,
    "bytea": _dec_bytes,
    "json": _dec_json,
    "other": _dec_other,
}


def decoder_for(kind: str) -> Decoder:
    """Return a function decoding one non-null wire value (raises ValueError)."""
    if is_array(kind):
        inner = decoder_for(element_kind(kind))

        def decode_array(value: Any) -> list[Any]:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {_show(value)}")
            return [
                None
                if v is None
                else (decode_array(v) if isinstance(v, list) else inner(v))
                for v in value
            ]

        return decode_array
    try:
        return _DECODERS[kind]
    except KeyError:
        raise ValueError(f"unknown column kind {kind!r}") from None


def decode_value(value: Any, kind: str, column: str | None = None) -> Any:
    """Decode a wire value for a receiving column of ``kind``.

    Returns a plain Python value (int, Decimal, float, str, bool, date, time,
    datetime, bytes, a JSON value, a list) that the importer binds for its
    engine. Intervals and UUIDs stay (validated) strings.
    """
    if value is None:
        return None
    try:
        return decoder_for(kind)(value)
    except ValueError as ex:
        raise WireError(column, str(ex)) from None


def decode_row(row: Mapping[str, Any], columns: list[Column]) -> dict[str, Any]:
    """Decode the wire values of ``columns`` from ``row``; missing ones become NULL."""
    out: dict[str, Any] = {}
    for col in columns:
        value = row.get(col.name)
        if value is None:
            out[col.name] = None
            continue
        try:
            out[col.name] = decoder_for(col.kind)(value)
        except ValueError as ex:
            raise WireError(col.name, str(ex)) from None
    return out


def _show(value: Any) -> str:
    """A short sample of a value for an error message, whatever the value."""
    if isinstance(value, str) and len(value) > 60:
        value = value[:60]
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except RecursionError:  # a peer's value nested deeper than the stack
        return f"a {type(value).__name__} nested too deep"
    except ValueError:  # an integer with more digits than int() shows
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


# --- canonical JSON -----------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys, as checksum lines are written.

    The standard library writes it, not orjson: the two format some floats
    differently (``1e+308`` against ``1e308``) and the checksum is defined by
    the ``json.dumps`` spelling.
    """
    return _CANONICAL.encode(obj)


# What json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# builds on every call, built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- bind forms -----------------------------------------------------------------


def pg_param(value: Any, kind: str) -> Any:
    """Turn a decoded value into what psycopg2 binds losslessly for ``kind``.

    The result is None, int, bool, bytes or a string in PostgreSQL's input
    syntax for the column type, so the database (not the driver) does the
    conversion: ``-0.0``, ``NaN``, numeric infinities, ``timetz`` offsets and
    month-carrying intervals all survive, which driver adaptation does not
    guarantee (psycopg2 writes ``-0.0`` as a numeric literal, and a ``time``
    with an offset as ``::time``).
    """
    if value is None:
        return None
    if is_array(kind):
        return _pg_array_literal(value, element_kind(kind))
    if kind == "numeric":
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    if kind == "float":
        return _float_text(value)
    if kind in ("date", "time", "timetz", "timestamp", "timestamptz"):
        return value.isoformat()
    if kind == "json":
        if value is JSON_NULL:
            return "null"
        try:
            return json.dumps(value, ensure_ascii=False)
        except RecursionError:  # fails the row, not the page
            raise ValueError("JSON value nested too deep") from None
    if kind == "bytea":
        return bytes(value)
    return value


def _float_text(value: float) -> str:
    special = encode_float(value)
    return special if isinstance(special, str) else repr(value)


def _pg_array_literal(value: list[Any], kind: str) -> str:
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(_pg_array_literal(item, kind))
        else:
            text = _pg_element_text(pg_param(item, kind))
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def _pg_element_text(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def binder_for(kind: str, dialect: str) -> Callable[[Any], Any]:
    """Return wire value -> bind parameter for ``kind`` on ``dialect``.

    Raises ValueError for a value that does not fit the kind.
    """
    decode = decoder_for(kind)
    to_param = pg_param if dialect == "postgresql" else sqlite_param

    def bind(value: Any) -> Any:
        return None if value is None else to_param(decode(value), kind)

    return bind


def sqlite_param(value: Any, kind: str) -> Any:
    """Turn a decoded value into what sqlite3 stores for ``kind``.

    Numerics are stored as exact text, temporal values as ISO 8601 text,
    JSON values and arrays as JSON text. SQLite has no NaN: it stores NULL.
    """
    if value is None:
        return None
    if is_array(kind):
        return json.dumps(encode_value(value, kind), ensure_ascii=False)
    if kind == "numeric":
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    if kind in ("date", "time", "timetz", "timestamp", "timestamptz"):
        return value.isoformat()
    if kind == "json":
        return "null" if value is JSON_NULL else json.dumps(value, ensure_ascii=False)
    return value
