"""The hostile-sender sweep: generated hostile answers on every data endpoint.

A sender on loopback (tests/security/hostile_sender.py, real HTTP) answers
list-tables, table-schema and pull-data (JSON pages and COPY data) honestly
from a source database, except where a generated mutation replaces or
changes an answer: wrong types, huge and nested values, NUL, escapes,
unpaired surrogates, lies about counts, cursors that repeat or go back,
COPY headers that lie, bodies cut short or padded with garbage, error
statuses with hostile texts. A mutation hits the first answer of its
endpoint only, or every one.

For each generated case the receiver (in this process; ``pulls.run`` is what
the worker's task runs, its retries waited out as the task would) pulls for
real into its PostgreSQL database, which runs with
``standard_conforming_strings = off``. Every pull must:

- end ``failed`` with a reason, or ``completed``, within its attempts, with
  nothing left for beat's sweep to dispatch again;
- be exact: for each table, created + updated + skipped + failed is the rows
  received, and the table holds exactly the rows counted created (every
  target starts empty);
- leave every other table of the receiver as it was: definitions,
  constraints on or onto them, triggers and rows (checksummed), and create
  no table but the ones pulled.

Examples per test: SYNC_HOSTILE_SWEEP_EXAMPLES (default 20). The cases are
derandomised, so a run is repeatable; SYNC_HOSTILE_SWEEP_RANDOM=1 draws new
ones (as a longer hunt: SYNC_HOSTILE_SWEEP_EXAMPLES=200).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.helpers import ScratchDatabases, run
from tests.security.hostile_sender import (
    Answer,
    HostileSender,
    Pulled,
    Receiver,
    copy_answer,
    json_answer,
    nested,
    open_pair,
    raw_answer,
)

MAX_ATTEMPTS = 2
PULLED = ("items", "categories")
SWEEP = settings(
    max_examples=int(os.environ.get("SYNC_HOSTILE_SWEEP_EXAMPLES", "20")),
    deadline=None,
    database=None,
    derandomize=os.environ.get("SYNC_HOSTILE_SWEEP_RANDOM") != "1",
    # No shrinking: each step is a pull; the failing case is printed as drawn.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# ---------------------------------------------------------------- values

NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "items\n",
    "\x1b]52;c;cHduZWQ=\x07",
    "\x1b[2J\x1b[H",
    "[/bold]",
    "\\",
    "\\.",
    "'",
    "x\\'",
    "' ); DROP TABLE victim; CREATE TABLE pwned (id int, --'",
    "\ud800",
    "\u202eevil",
    "%s%(x)s",
    "null",
    "9" * 30,
    "<huge>",  # 70,000 characters once sent (see ``expand``)
    "categories",
    "users",
    "victim",
    "id",
]
HUGE = "x" * 70_000
# Shapes a field is most often wrong with.
WRONG = [5, -1, 2**63, 2**64, 1.5, "5", [], [["x"]], {"a": 1}, None, True, "items\n"]
scalars = st.one_of(
    st.sampled_from(NASTY),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40, -1, 0]),
    st.floats(),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(NASTY[:14]), st.text(max_size=6)),
            children,
            max_size=4,
        ),
    ),
    max_leaves=10,
)
deep = st.builds(
    lambda depth, inner: json.loads(nested(depth, json.dumps(inner))),
    st.integers(500, 990),
    scalars,
)
values = st.one_of(st.sampled_from(WRONG), junk, deep)


def expand(value: Any) -> Any:
    """A generated value as sent: "<huge>" becomes 70,000 characters (kept
    short in the drawn case, so a failing case prints readably)."""
    if value == "<huge>":
        return HUGE
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {expand(k): expand(v) for k, v in value.items()}
    return value


# Bodies by name, so a failing case prints its name, not 200 kB of brackets.
RAW_BODIES = {
    "empty": b"",
    "text": b"not json",
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "null": b"null",
    "list": b"[]",
    "object": b"{}",
    "success-only": b'{"success": true}',
    "string": b'"success"',
    "cut-json": b'{"success": tru',
    "binary": b"\xff\xfe\x00garbage",
    "nested": nested(100_000),
    "nested-tables": b'{"success": true, "tables": ' + nested(100_000) + b"}",
    "nested-schema": b'{"success": true, "schema": ' + nested(100_000) + b"}",
    "nested-row": b'{"success": true, "data": [' + nested(100_000) + b"]}",
    "empty-page-more": b'{"success": true, "data": [], "has_more": true,'
    b' "next_cursor": [1]}',
    "hostile-error": b'{"success": false,'
    b' "error": "\\u0000\\ud800\\u001b]52;c;eA==\\u0007"}',
}
body_mutations = st.one_of(
    st.tuples(st.just("raw"), st.sampled_from(sorted(RAW_BODIES))),
    st.tuples(
        st.just("status"),
        st.sampled_from([200, 400, 401, 403, 404, 409, 500, 502, 503]),
        values,
    ),
    st.tuples(st.just("cut")),
)
when = st.sampled_from(["first", "every"])


def set_path(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set ``obj[path...] = value`` where the path exists; else do nothing."""
    for key in path[:-1]:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        obj[path[-1]] = value
    except (IndexError, TypeError):
        return


def del_path(obj: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        del obj[path[-1]]
    except (KeyError, IndexError, TypeError):
        return


def apply_body(answer: Answer, mutation: tuple[Any, ...]) -> Answer:
    kind = mutation[0]
    if kind == "raw":
        return raw_answer(RAW_BODIES[mutation[1]])
    if kind == "status":
        return json_answer(
            {"success": False, "error": expand(mutation[2])}, mutation[1]
        )
    answer.cut = True
    return answer


class Hostility:
    """The sender's behaviour: one mutation on one endpoint, first time or always."""

    def __init__(
        self, endpoint: str, mutation: tuple[Any, ...], when: str, hits: str = "items"
    ) -> None:
        self.endpoint = endpoint
        self.mutation = mutation
        self.when = when
        self.hits = hits
        self.seen = 0

    def __call__(self, endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        table = body.get("table_name") if isinstance(body, dict) else None
        if endpoint != self.endpoint or (table is not None and table != self.hits):
            return answer
        self.seen += 1
        if self.when == "first" and self.seen > 1:
            return answer
        return mutate(answer, self.mutation, body)

    def __repr__(self) -> str:
        return f"Hostility({self.endpoint!r}, {self.mutation!r}, {self.when!r})"


def mutate(answer: Answer, mutation: tuple[Any, ...], request: Any) -> Answer:
    kind = mutation[0]
    if kind in ("raw", "status", "cut"):
        return apply_body(answer, mutation)
    if copy_answer(answer):
        return mutate_copy(answer, mutation)
    obj = answer.obj
    if obj is None:
        return answer
    if kind == "set":
        set_path(obj, mutation[1], expand(mutation[2]))
    elif kind == "del":
        del_path(obj, mutation[1])
    elif kind == "cursor":
        mutate_cursor(obj, mutation[1], request)
    elif kind == "rows":
        mutate_rows(obj, mutation[1])
    elif kind == "defaults":  # text columns from the second on, these defaults
        for column, default in zip(obj["schema"]["columns"][1:], mutation[1]):
            column.update(type="text", default=default, precision=None, scale=None)
    elif kind == "append":
        target = obj
        for key in mutation[1]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, list):
            target.append(expand(mutation[2]))
    return json_answer(obj, answer.status)


def mutate_cursor(obj: dict[str, Any], how: str, request: Any) -> None:
    after = request.get("after") if isinstance(request, dict) else None
    obj["has_more"] = True
    if how == "repeat":
        obj["next_cursor"] = after if after is not None else [0]
    elif how == "back":
        obj["next_cursor"] = [-5]
    elif how == "huge":
        obj["next_cursor"] = ["k" * 100_000]
    elif how == "string":
        obj["next_cursor"] = "2"
    elif how == "null":
        obj["next_cursor"] = None
    elif how == "more-forever":
        last = obj["data"][-1]["id"] if obj.get("data") else 0
        obj["next_cursor"] = [last]


def mutate_rows(obj: dict[str, Any], how: str) -> None:
    rows = obj.get("data")
    if not isinstance(rows, list) or not rows:
        return
    if how == "duplicate":
        obj["data"] = rows + rows
    elif how == "reverse":
        obj["data"] = rows[::-1]
    elif how == "drop-id":
        for row in rows:
            row.pop("id", None)
    elif how == "extra-column":
        for row in rows:
            row["\x00evil\n"] = 1
            row["users"] = "x"
    elif how == "repeat-first-page":
        for i, row in enumerate(rows):
            row["id"] = i + 1
    elif how == "many":
        obj["data"] = [dict(rows[0], id=1000 + i) for i in range(300)]
        obj["count"] = 3


# ---------------------------------------------------------------- COPY data

COPY_HEADERS = [
    "X-Sync-Table",
    "X-Sync-Format",
    "X-Sync-Columns",
    "X-Sync-Count",
    "X-Sync-Has-More",
    "X-Sync-Next-Cursor",
]
HEADER_VALUES = [
    "",
    "items",
    "users",
    "pg_copy_text",
    "pg_copy_binary",
    "json",
    "-1",
    "0",
    "1",
    "99",
    str(2**64),
    "9" * 5000,
    "true",
    "false",
    "null",
    "[]",
    '["id"]',
    '["id","id"]',
    '["id\\n"]',
    '["\\u0000"]',
    '["users"]',
    "[1]",
    "[0]",
    "[-5]",
    '{"a": 1}',
    "[" * 2000 + "]" * 2000,
    '["' + "k" * 3000 + '"]',
]
copy_mutations = st.one_of(
    st.tuples(
        st.just("header"),
        st.sampled_from(COPY_HEADERS),
        st.one_of(st.none(), st.sampled_from(HEADER_VALUES)),
    ),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
    st.tuples(
        st.just("append"),
        st.sampled_from(
            [
                b"\xff" * 10,
                b"6\tx\n",
                b"\\.\n",
                b"7\t\\0\t1\t1\t{}\t\\N\t\\N\n",
                b"\x00\x00",
                b"garbage",
            ]
        ),
    ),
    st.tuples(
        st.just("replace"),
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + b"\xff\xff",
                    b"1\tok\n2\n",
                    b"1\t\\x\t\t\t\t\t\n",
                    b"1\tx\t1\t1\t1\t1\t1\t1\t1\t1\n",
                ]
            ),
        ),
    ),
)


def mutate_copy(answer: Answer, mutation: tuple[Any, ...]) -> Answer:
    kind = mutation[0]
    if kind == "header":
        name, value = mutation[1], mutation[2]
        if value is None:
            answer.headers.pop(name, None)
        else:
            answer.headers[name] = value
    elif kind == "truncate":
        answer.body = answer.body[: int(len(answer.body) * mutation[1])]
    elif kind == "append":
        answer.body += mutation[1]
    elif kind == "replace":
        answer.body = mutation[1]
    return answer


# ---------------------------------------------------------------- the sites


@pytest.fixture(scope="module")
def pair(
    module_db_factory: ScratchDatabases,
) -> Iterator[tuple[HostileSender, Receiver]]:
    for sender, receiver in open_pair(
        module_db_factory, SYNC_PULL_MAX_ATTEMPTS=str(MAX_ATTEMPTS)
    ):
        assert receiver.conforming_strings() == "off"
        yield sender, receiver


EXISTING_ITEMS = (
    "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'unnamed',"
    " qty bigint, price numeric(10,2), data jsonb, at timestamptz,"
    " category_id integer)"
)


def sweep_one(
    pair: tuple[HostileSender, Receiver],
    hostility: Hostility,
    *,
    json_only: bool,
    existing_target: bool,
    all_tables: bool,
) -> Pulled:
    """Pull under ``hostility`` and check every promise of the sweep."""
    sender, receiver = pair
    receiver.reset()
    if existing_target:
        run(receiver.data, EXISTING_ITEMS)
    sender.json_only = json_only
    sender.behaviour = hostility
    before = receiver.fingerprint(skip=PULLED)
    pulled = receiver.pull(all_tables=True) if all_tables else receiver.pull("items")
    transfer = pulled.transfer
    note = f"{hostility!r}: {transfer.status} {transfer.error_message!r}"

    assert transfer.status in ("failed", "completed"), note
    if transfer.status == "failed":
        assert isinstance(transfer.error_message, str), note
        assert transfer.error_message.strip(), note
    else:
        assert transfer.error_message is None, note
        assert all(t.status == "completed" for t in pulled.tables), note
    assert pulled.runs <= MAX_ATTEMPTS and transfer.attempts <= MAX_ATTEMPTS, note
    assert set(pulled.outcomes[:-1]) <= {"retrying"}, (note, pulled.outcomes)
    assert str(transfer.id) not in receiver.swept(), note

    # Exact: counts add up, and each table holds what was counted created.
    present = set(receiver.tables())
    for t in pulled.tables:
        assert t.created + t.updated + t.skipped + t.failed == t.rows_done, note
        if t.table_name in present:
            assert receiver.count(t.table_name) == t.created, note
        else:
            assert t.created == 0, note
    assert transfer.records_transferred == sum(t.rows_done for t in pulled.tables)

    # The receiver's own tables as they were; no table but the pulled ones.
    assert receiver.fingerprint(skip=PULLED) == before, note
    assert present <= {"users", "victim", "dbsync_pull_checkpoints", *PULLED}, note
    return pulled


LIST_PATHS = [
    ("tables",),
    ("tables", 0),
    ("tables", -1, "name"),
    ("tables", -1, "row_count"),
    ("tables", -1, "depends_on"),
    ("tables", -1, "primary_key"),
    ("tables", -1, "checksum"),
    ("tables", -1, "size_bytes"),
    ("success",),
]


@SWEEP
@given(
    mutation=st.one_of(
        body_mutations,
        st.tuples(st.just("set"), st.sampled_from(LIST_PATHS), values),
        st.tuples(st.just("del"), st.sampled_from(LIST_PATHS)),
        st.tuples(st.just("append"), st.just(("tables",)), values),
    ),
    when=when,
    all_tables=st.booleans(),
)
def test_hostile_list_tables(
    pair: tuple[HostileSender, Receiver],
    mutation: tuple[Any, ...],
    when: str,
    all_tables: bool,
) -> None:
    sweep_one(
        pair,
        Hostility("list-tables", mutation, when),
        json_only=False,
        existing_target=False,
        all_tables=all_tables,
    )


SCHEMA_FIELDS = [
    "name",
    "type",
    "nullable",
    "primary_key",
    "default",
    "max_length",
    "precision",
    "scale",
]
SCHEMA_PATHS = [
    ("schema",),
    ("schema", "columns"),
    ("schema", "primary_key"),
    ("schema", "foreign_keys"),
    ("schema", "unique"),
    ("table",),
    *[("schema", "columns", i, f) for i in (0, 1, 3, 4) for f in SCHEMA_FIELDS],
]
TYPES = [
    "int); DROP TABLE victim; CREATE TABLE pwned (a int",
    "numeric(2000)",
    "numeric",
    "varchar",
    "int; DROP TABLE victim",
    "text[][]",
    "character varying(0)",
    "interval year to month(3)",
    "users",
    "serial",
    "bit(0)",
    "json",
]
DEFAULTS = [
    "'x\\'",
    "' ); DROP TABLE victim; CREATE TABLE pwned (id int, --'",
    "nextval('users_id_seq'::regclass)",
    "pg_sleep(5)",
    "'a'::text || current_user",
    "1e999999",
    "-0",
    "now()",
    "'\\x00'",
    "E'\\''",
    "$$x$$",
]
FOREIGN_KEYS = [
    {
        "columns": ["category_id"],
        "references_table": "users",
        "references_columns": ["id"],
    },
    {"columns": ["id"], "references_table": "victim", "references_columns": ["id"]},
    {"columns": ["qty"], "references_table": "items", "references_columns": ["id"]},
    {"columns": ["id"], "references_table": "pg_class", "references_columns": ["oid"]},
    {
        "columns": ["id"],
        "references_table": "dbsync_transfers",
        "references_columns": ["id"],
    },
]


@SWEEP
@given(
    mutation=st.one_of(
        body_mutations,
        st.tuples(st.just("set"), st.sampled_from(SCHEMA_PATHS), values),
        st.tuples(
            st.just("set"),
            st.sampled_from([("schema", "columns", i, "type") for i in (1, 2, 3)]),
            st.sampled_from(TYPES),
        ),
        st.tuples(
            st.just("set"),
            st.sampled_from([("schema", "columns", i, "default") for i in (1, 2, 3)]),
            st.sampled_from(DEFAULTS),
        ),
        st.tuples(st.just("del"), st.sampled_from(SCHEMA_PATHS)),
        st.tuples(st.just("defaults"), st.lists(st.sampled_from(DEFAULTS), max_size=6)),
        st.tuples(
            st.just("append"),
            st.just(("schema", "foreign_keys")),
            st.sampled_from(FOREIGN_KEYS),
        ),
        st.tuples(
            st.just("append"),
            st.sampled_from([("schema", "columns"), ("schema", "unique")]),
            values,
        ),
    ),
    when=when,
    json_only=st.booleans(),
)
def test_hostile_table_schema(
    pair: tuple[HostileSender, Receiver],
    mutation: tuple[Any, ...],
    when: str,
    json_only: bool,
) -> None:
    sweep_one(
        pair,
        Hostility("table-schema", mutation, when),
        json_only=json_only,
        existing_target=False,
        all_tables=False,
    )


ROW_FIELDS = ["id", "name", "qty", "price", "data", "at", "category_id"]
PAGE_PATHS = [
    ("data",),
    ("data", 0),
    ("count",),
    ("has_more",),
    ("next_cursor",),
    ("success",),
    ("table",),
    *[("data", i, f) for i in (0, 1) for f in ROW_FIELDS],
]


@SWEEP
@given(
    mutation=st.one_of(
        body_mutations,
        st.tuples(st.just("set"), st.sampled_from(PAGE_PATHS), values),
        st.tuples(st.just("del"), st.sampled_from(PAGE_PATHS)),
        st.tuples(
            st.just("cursor"),
            st.sampled_from(
                ["repeat", "back", "huge", "string", "null", "more-forever"]
            ),
        ),
        st.tuples(
            st.just("rows"),
            st.sampled_from(
                [
                    "duplicate",
                    "reverse",
                    "drop-id",
                    "extra-column",
                    "repeat-first-page",
                    "many",
                ]
            ),
        ),
    ),
    when=when,
    existing_target=st.booleans(),
)
def test_hostile_json_pages(
    pair: tuple[HostileSender, Receiver],
    mutation: tuple[Any, ...],
    when: str,
    existing_target: bool,
) -> None:
    sweep_one(
        pair,
        Hostility("pull-data", mutation, when),
        json_only=True,
        existing_target=existing_target,
        all_tables=False,
    )


@SWEEP
@given(
    mutation=st.one_of(copy_mutations, body_mutations),
    when=when,
    existing_target=st.booleans(),
)
def test_hostile_copy_pages(
    pair: tuple[HostileSender, Receiver],
    mutation: tuple[Any, ...],
    when: str,
    existing_target: bool,
) -> None:
    """COPY data: binary into a created target (same types), text into the
    existing one (its types differ from the sender's description)."""
    sweep_one(
        pair,
        Hostility("pull-data", mutation, when),
        json_only=False,
        existing_target=existing_target,
        all_tables=False,
    )
