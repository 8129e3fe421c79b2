"""Check request bodies field by field, in the protocol's order and wording."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import SyncError, bad_request

_INT_TEXT = re.compile(r"\s*-?[0-9]{1,18}\s*")


@dataclass(frozen=True)
class Field:
    name: str
    kind: type | tuple[type, ...] = str
    required: bool = False
    max_length: int = 2048
    minimum: int | None = None
    maximum: int | None = None


def is_missing(value: Any) -> bool:
    return value is None or value == ""


def validate(body: Mapping[str, Any], fields: list[Field]) -> dict[str, Any]:
    """Return the declared fields, or raise a 400 naming what is wrong.

    Missing required fields come first, all named in field order; then the
    first field of the wrong type or size. Unknown fields are ignored.
    """
    if not isinstance(body, Mapping):
        raise bad_request("Invalid JSON body")
    missing = [f.name for f in fields if f.required and is_missing(body.get(f.name))]
    if missing:
        raise bad_request("Missing required fields", fields=missing)
    out: dict[str, Any] = {}
    for f in fields:
        value = body.get(f.name)
        if is_missing(value):
            out[f.name] = None
            continue
        out[f.name] = check_value(f, value)
    return out


def check_value(f: Field, value: Any) -> Any:
    kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
    if int in kinds and isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = int(value)  # PhoenixKit peers send numeric strings for limits
    if isinstance(value, bool) and bool not in kinds:
        raise _wrong(f)
    if not isinstance(value, kinds):
        raise _wrong(f)
    if isinstance(value, str) and len(value) > f.max_length:
        raise bad_request(f"Field {f.name} is too long", field=f.name)
    if isinstance(value, str) and "\x00" in value:
        raise bad_request(f"Field {f.name} contains a NUL character", field=f.name)
    if isinstance(value, int) and not isinstance(value, bool):
        if f.minimum is not None and value < f.minimum:
            raise bad_request(f"Field {f.name} must be >= {f.minimum}", field=f.name)
        if f.maximum is not None and value > f.maximum:
            raise bad_request(f"Field {f.name} must be <= {f.maximum}", field=f.name)
    return value


def _wrong(f: Field) -> SyncError:
    names = {
        str: "a string",
        int: "an integer",
        list: "a list",
        bool: "a boolean",
        dict: "an object",
    }
    kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
    want = " or ".join(names.get(k, k.__name__) for k in kinds)
    return bad_request(f"Field {f.name} must be {want}", field=f.name)
