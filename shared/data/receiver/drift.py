"""Report how a sender's table differs in columns from this site's, and evolve it.

Columns added at the sender, dropped there, or retyped are reported on the
run (the transfer's ``drift``). With ``evolve`` a column added at the sender
is added here, nullable, before the table's rows are applied; a dropped or
retyped column then fails the table with the reason, as nothing safe can be
done about it automatically.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from shared.data import ddl
from shared.data.schema import TableInfo, quote_text


class Drifted(Exception):
    """The table cannot be evolved to the sender's columns (the message says why)."""


def _sender_columns(schema: Any) -> dict[str, dict[str, Any]]:
    columns = schema.get("columns") if isinstance(schema, dict) else None
    if not isinstance(columns, list):
        return {}
    return {
        c["name"]: c
        for c in columns
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }


def _shape(col: dict[str, Any]) -> tuple[Any, ...]:
    raw = col.get("type")
    kind = " ".join(raw.lower().split()) if isinstance(raw, str) else raw
    return (kind, col.get("max_length"), col.get("precision"), col.get("scale"))


def report(info: TableInfo, schema: Any) -> dict[str, Any]:
    """Columns ``added`` and ``dropped`` at the sender, and ``retyped`` ones."""
    theirs = _sender_columns(schema)
    if not theirs:
        return {}
    ours = {c.name: c for c in info.columns}
    retyped = []
    for name in sorted(set(theirs) & set(ours)):
        here = ours[name]
        mine = _shape(
            {
                "type": here.type,
                "max_length": here.max_length,
                "precision": here.precision,
                "scale": here.scale,
            }
        )
        if _shape(theirs[name]) != mine:
            retyped.append(
                {"column": name, "sender": theirs[name].get("type"), "here": here.type}
            )
    found = {
        "added": sorted(set(theirs) - set(ours)),
        "dropped": sorted(set(ours) - set(theirs)),
        "retyped": retyped,
    }
    return {k: v for k, v in found.items() if v}


def evolve(engine: Engine, info: TableInfo, schema: Any, found: dict[str, Any]) -> None:
    """Add the sender's new columns here (nullable); Drifted for anything else."""
    if found.get("dropped") or found.get("retyped"):
        raise Drifted(
            f"{info.name}: columns dropped {found.get('dropped', [])} or retyped"
            f" {[r['column'] for r in found.get('retyped', [])]} at the sender;"
            " only added columns evolve"
        )
    theirs = _sender_columns(schema)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for name in found.get("added", []):
            try:
                checked = ddl._checked_name(name)
                sql_type, _, _ = ddl._column_type(theirs[name], single_pk=False, pg=pg)
            except ddl.UnsafeSchema as ex:
                raise Drifted(f"{info.name}: cannot add column: {ex}") from None
            conn.execute(
                text(
                    f"ALTER TABLE {info.qualified_text}"
                    f" ADD COLUMN {quote_text(checked)} {sql_type}"
                )
            )
