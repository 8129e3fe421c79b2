"""Delta runs from xmin: move what changed since the last verified run.

Each run keeps, per table, a *state* of each side (shared.data.sender.changes)
taken before it writes anything: the sender's from its ``table-fingerprints``
``changes`` answer, this site's from its own snapshot, with the ids of the
transactions this run wrote in. A run whose table verified stores them on
its transfer (``meta.sync_state``); the next run of the same connection and
table starts from them:

1. At the same time: the sender lists ``[KEY, hash]`` of its rows changed
   since its stored horizon, with its whole-table key print (count and sum
   of key hashes) and its new state, in one snapshot; this site lists its
   own rows changed since its horizon by anyone but itself, and its key
   print.
2. Rows the sender changed whose hash here differs, and rows changed here,
   are fetched by key (``pull-keys``) and applied with the strategy.
3. When the key prints differ (inserts or deletes on either side), both
   sides count and sum key hashes per bucket of 64 key values; the sender
   lists the keys of the buckets that differ (``keys_in``); keys missing
   here are fetched, keys the sender lacks deleted (with mirror-deletes).
4. Verification: the key prints compared again after the writes, and the
   hash of every fetched row compared with the sender's. With both equal,
   and the last run verified, the table equals the sender's snapshot.

Any doubt (no stored state, a state ``xmin`` cannot vouch for, a sender
without ``changes``, a key that is not one integer column, too many rows
changed) runs the whole-table comparison instead (shared.data.receiver.delta),
which stores fresh states when it verifies.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from shared.control.peer import PeerRefused
from shared.data.receiver import delta, sources
from shared.data.receiver.writer import Writes
from shared.data.schema import TableInfo
from shared.data.sender import changes, fingerprints, tracking

log = logging.getLogger("dbsync.incremental")


class Skip(Exception):
    """The sender offers no ``changes``."""


@dataclass
class Run:
    states: dict[str, Any]
    outcome: delta.Outcome | None = None  # None: compare the whole table
    verified: bool = False
    note: dict[str, Any] | None = None  # why not, or what xmin found
    written: list[int] | None = None  # the keys fetched and applied
    schema_moved: bool = False  # the sender's columns are not the ones assumed


def _ask(
    sender: sources.Sender,
    table: str,
    ask: dict[str, Any],
    columns: Any,
    hashing: fingerprints.Hashing = fingerprints.TEXT_HASHING,
) -> Any:
    body: dict[str, Any] = {
        "table_name": table,
        "ranges": [{"after": None, "until": None}],
        "changes": ask,
        **hashing.as_wire(),
    }
    if columns is not None:
        body["columns"] = columns
    try:
        resp = sender.post("table-fingerprints", body)
    except PeerRefused as ex:
        raise delta.Failed(str(ex)) from None
    if resp.status in (404, 405):
        raise Skip("the sender does not offer table-fingerprints")
    if resp.status != 200 or resp.body.get("success") is not True:
        raise delta.Failed(f"table-fingerprints: {resp.error}")
    got = resp.body.get("changes")
    if not isinstance(got, dict):
        raise Skip("the sender does not offer changes")
    if resp.body.get("algorithm") != hashing.algorithm:
        raise Skip("the sender fingerprints rows another way")
    return got


def local_state(engine: Engine, info: TableInfo | None) -> dict[str, Any]:
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return changes.state(conn, info)


def begin(
    sender: sources.Sender, engine: Engine, info: TableInfo | None, name: str
) -> dict[str, Any] | None:
    """Both sides' states before a run that compares or pulls whole."""
    if engine.dialect.name != "postgresql":
        return None
    try:
        theirs = _ask(sender, name, {}, None)
    except (Skip, delta.Failed):
        return None
    return {"sender": theirs.get("state"), "local": local_state(engine, info)}


def run(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    columns: list[str],
    strategy: str,
    mirror: bool,
    prev: dict[str, Any] | None,
    txids: Writes,
    hashing: fingerprints.Hashing = fingerprints.TEXT_HASHING,
    tracked: bool = False,
    columns_mark: str | None = None,
    keys_format: str | None = None,
) -> Run:
    """The steps of the module docstring; Run.outcome None: compare whole.

    ``tracked``: this site logs the table's changes (shared.data.sender.tracking).
    ``columns_mark``: the mark of the schema the caller took from the last
    run; when the sender's differs, nothing is done (Run.schema_moved).
    ``keys_format``: the COPY format to fetch rows by key in (None: JSON).
    """
    delta.check_local(engine, info)
    if not changes.keyed_by_int(info):
        prev = None  # the sender need not list rows this site cannot use
    since = (prev or {}).get("sender")
    mine = (prev or {}).get("local") or {}
    logged = (prev or {}).get("local_log") if tracked else None
    # Whether this site's log can list its changes (checked again in the
    # snapshot that lists them): then the sender need not scan for a key print.
    log_here = isinstance(logged, dict) and _log_covers(engine, info, logged)

    def here() -> tuple[dict[str, Any], list[list[Any]] | None, list[Any] | None, bool]:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                now = _state(conn, info, tracked)
                if not changes.keyed_by_int(info):
                    return now, None, None, False
                try:
                    if log_here and tracking.covers(conn, info, logged, now):
                        assert isinstance(logged, dict)
                        listed = tracking.changed_rows(
                            conn,
                            info,
                            logged,
                            columns,
                            exclude=logged.get("own_xids") or [],
                            limit=changes.MAX_CHANGED,
                            hashing=hashing,
                        )
                        return now, listed, None, True
                    if not changes.usable(mine, now):
                        return now, None, None, False
                    # One scan for both when no row changed here.
                    rows, printed = changes.changed_and_print(
                        conn,
                        info,
                        mine,
                        now,
                        columns,
                        exclude=mine.get("own") or [],
                        hashing=hashing,
                    )
                except fingerprints.Unsupported:
                    return now, None, None, False
                return now, rows, None if rows is None else printed, False

    ask: dict[str, Any] = {"since": since, "log": True}
    if log_here:
        ask["key_print"] = False
    clock = _Clock()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbsync-xmin") as pool:
        pending = pool.submit(_ask, sender, name, ask, columns, hashing)
        now, local_rows, local_print, local_logged = here()
        clock.mark("here")
        theirs = pending.result()
        clock.mark("there")
    states = {"sender": theirs.get("state"), "local": now}
    if columns_mark is not None and theirs.get("columns_mark") != columns_mark:
        return Run(states, schema_moved=True)
    their_logged = theirs.get("source") == "log"
    why = None
    if prev is None:
        why = "no state kept by a verified run (or a key not one integer column)"
    elif not theirs.get("complete") or not isinstance(theirs.get("rows"), list):
        why = "the sender's state cannot vouch (or too many rows changed)"
    elif local_rows is None:
        why = "this site's state cannot vouch (or too many rows changed)"
    elif not their_logged and not isinstance(theirs.get("key_print"), list):
        why = "the sender sent no key print"
    if why is not None or local_rows is None:
        return Run(states, note={"xmin": f"not used: {why}"})
    outcome = delta.Outcome(compared=True, requests=1)
    try:
        their_rows: dict[int, str | None] = {
            int(k): None if h is None else str(h) for k, h in theirs["rows"]
        }
        if not their_logged and None in their_rows.values():
            raise ValueError("a row without a hash")
    except (TypeError, ValueError, IndexError):
        raise delta.Failed("table-fingerprints: the changes are malformed") from None
    if their_logged and local_logged:
        return _from_logs(
            sender,
            engine,
            info,
            name,
            columns,
            strategy,
            mirror,
            txids,
            hashing,
            states,
            their_rows,
            local_rows,
            outcome,
            clock,
            keys_format,
        )
    if local_print is None or not isinstance(theirs.get("key_print"), list):
        with engine.connect() as conn:
            local_print = changes.key_print(conn, info)
        if not isinstance(theirs.get("key_print"), list):
            return Run(states, note={"xmin": "not used: the sender sent no key print"})
    try:
        their_print = [int(theirs["key_print"][0]), str(theirs["key_print"][1])]
    except (TypeError, ValueError, IndexError):
        raise delta.Failed("table-fingerprints: the changes are malformed") from None
    with engine.connect() as conn:
        ours = changes.hashes_of(conn, info, list(their_rows), columns, hashing)
    clock.mark("hashes")
    wanted = {k for k, h in their_rows.items() if h is not None and ours.get(k) != h}
    wanted |= {int(k) for k, _ in local_rows}
    # Keys the sender listed as changed that this site lacks (its inserts),
    # and that it logged as deleted and this site has.
    new = {k for k, h in their_rows.items() if h is not None and k not in ours}
    dropped = {k for k, h in their_rows.items() if h is None and k in ours}
    extra: set[int] = set(dropped) if mirror else set()
    if their_print != _expected_print(engine, info, local_print, new, dropped):
        found, gone, asked = _key_difference(sender, engine, info, name, new, dropped)
        outcome.requests += asked
        wanted |= found
        if mirror:
            extra |= gone
        clock.mark("keys")
    outcome.equal_before = not wanted and not extra and their_print == local_print
    remote = delta.Remote(sender, name, columns, hashing, keys_format)
    settler = delta.RowSettler(remote, engine, info, strategy, mirror, outcome)
    settler.writer.txids = txids
    settler.wanted = sorted(wanted)
    settler.extra = sorted(extra)
    if wanted or extra:
        settler.flush(settler.step)
        clock.mark("applied")
    outcome.requests += remote.requests
    outcome.ranges_pulled = 0
    verified = outcome.equal_before or _check(
        sender, engine, info, name, remote, wanted, their_rows, outcome
    )
    clock.mark("checked")
    log.info(
        "delta %s from xmin: %d fetched, %d deleted, %s (%s)",
        name,
        outcome.rows_pulled,
        outcome.deleted,
        "verified" if verified else "not verified",
        clock,
    )
    note = {
        "changed_there": len(their_rows),
        "changed_here": len(local_rows),
        **({"there": "log"} if their_logged else {}),
        **({"here": "log"} if local_logged else {}),
    }
    return Run(states, outcome, verified, note, written=sorted(wanted))


def _state(conn: Any, info: TableInfo, tracked: bool) -> dict[str, Any]:
    now = changes.state(conn, info)
    if tracked and (mark := tracking.epoch(conn, info)) is not None:
        now["epoch"] = mark
    return now


def _log_covers(engine: Engine, info: TableInfo, logged: dict[str, Any]) -> bool:
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return tracking.covers(conn, info, logged, _state(conn, info, True))


def _expected_print(
    engine: Engine,
    info: TableInfo,
    local_print: list[Any],
    new: set[int],
    dropped: set[int],
) -> list[Any]:
    """This site's key print once ``new`` are added and ``dropped`` deleted."""
    if not new and not dropped:
        return local_print
    with engine.connect() as conn:
        hashes = changes.key_hashes(conn, info, sorted(new | dropped))
    total = int(local_print[1])
    total += sum(hashes[k][0] for k in new) - sum(hashes[k][0] for k in dropped)
    return [local_print[0] + len(new) - len(dropped), str(total)]


def _from_logs(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    columns: list[str],
    strategy: str,
    mirror: bool,
    txids: Writes,
    hashing: fingerprints.Hashing,
    states: dict[str, Any],
    their_rows: dict[int, str | None],
    local_rows: list[list[Any]],
    outcome: delta.Outcome,
    clock: _Clock,
    keys_format: str | None,
) -> Run:
    """Both sides listed their changes from their logs: every other key is
    unchanged on both since the last verified run, so only these are
    compared, fetched or deleted, and compared again after (no scan)."""
    only_here = sorted({int(k) for k, _ in local_rows} - set(their_rows))
    if only_here:
        got = _ask(
            sender, name, {"hashes_of": only_here, "key_print": False}, columns, hashing
        )
        outcome.requests += 1
        try:
            listed = {int(k): str(h) for k, h in got["hashes"]}
        except (KeyError, TypeError, ValueError):
            raise delta.Failed("table-fingerprints: the hashes are malformed") from None
        their_rows.update({k: listed.get(k) for k in only_here})
    remote = delta.Remote(sender, name, columns, hashing, keys_format)
    settler = delta.RowSettler(remote, engine, info, strategy, mirror, outcome)
    # The rows the sender listed are nearly always the ones that differ:
    # they are fetched while this site's hashes are read.
    present = sorted(k for k, h in their_rows.items() if h is not None)
    fetched = settler.prefetch(present) if 0 < len(present) <= settler.step else None
    with engine.connect() as conn:
        ours = changes.hashes_of(conn, info, list(their_rows), columns, hashing)
    if fetched is not None:
        fetched()
    clock.mark("hashes")
    wanted = {k for k, h in their_rows.items() if h is not None and ours.get(k) != h}
    extra = {k for k, h in their_rows.items() if h is None and k in ours}
    outcome.equal_before = not wanted and not extra
    settler.writer.txids = txids
    settler.wanted = sorted(wanted)
    settler.extra = sorted(extra) if mirror else []
    if wanted or settler.extra:
        settler.flush(settler.step)
        clock.mark("applied")
    outcome.requests += remote.requests
    verified = outcome.equal_before
    if not verified:
        with engine.connect() as conn:
            after = changes.hashes_of(conn, info, list(their_rows), columns, hashing)
        verified = all(after.get(k) == h for k, h in their_rows.items())
        clock.mark("checked")
    log.info(
        "delta %s from the change logs: %d fetched, %d deleted, %s (%s)",
        name,
        outcome.rows_pulled,
        outcome.deleted,
        "verified" if verified else "not verified",
        clock,
    )
    note = {
        "changed_there": len(their_rows) - len(only_here),
        "changed_here": len(local_rows),
        "there": "log",
        "here": "log",
    }
    return Run(states, outcome, verified, note, written=sorted(wanted))


class _Clock:
    """Seconds between the marks of a run, for its log line."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.marks: list[str] = []

    def mark(self, what: str) -> None:
        now = time.monotonic()
        self.marks.append(f"{what} {now - self.last:.3f} s")
        self.last = now

    def __str__(self) -> str:
        return ", ".join(self.marks)


def _key_difference(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    new: set[int],
    dropped: set[int],
) -> tuple[set[int], set[int], int]:
    """Keys the sender has and this site lacks, and the reverse, by buckets.

    Both sides count each bucket's keys and sum their hashes and their
    values. ``new`` (keys the sender listed as changed that this site lacks)
    are taken out of the sender's buckets first, ``dropped`` (keys it logged
    as deleted that this site has) out of this site's; a bucket that then differs
    by one key whose value and hash are the differences of the sums has
    that key as its difference (checked here: its hash, and whether this
    site has it). The keys of the other differing buckets are listed by the
    sender (``keys_in``). The key prints compared after the writes check
    the result whole.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbsync-keys") as pool:
        pending = pool.submit(
            _ask, sender, name, {"buckets": True, "key_sums": True}, None
        )
        with engine.connect() as conn:
            ours = changes.key_buckets(conn, info, sums=True)
            peeled = (
                changes.key_hashes(conn, info, sorted(new | dropped))
                if new or dropped
                else {}
            )
        theirs = pending.result()
    if "buckets" not in theirs:
        raise delta.NotAvailable("too many rows to compare keys by buckets")
    try:
        their_buckets: dict[int, tuple[int, int, int | None]] = {
            int(e[0]): (int(e[1]), int(e[2]), int(e[3]) if len(e) > 3 else None)
            for e in theirs["buckets"]
        }
    except (KeyError, TypeError, ValueError, IndexError):
        raise delta.Failed("table-fingerprints: the buckets are malformed") from None
    local = {b: (int(c), int(h), int(k)) for b, (c, h, k) in ours.items()}
    found = {k for k in new if not peeled[k][1]}
    gone: set[int] = {k for k in dropped if peeled[k][1]}
    for k in gone:
        b = k >> changes.SHIFT
        lc, lh, ls = local.get(b, (0, 0, 0))
        local[b] = (lc - 1, lh - peeled[k][0], ls - k)
    for k in found:
        b = k >> changes.SHIFT
        c, h, sums = their_buckets.get(b, (0, 0, 0))
        # (a sender without key sums: its differing buckets are all listed)
        their_buckets[b] = (c - 1, h - peeled[k][0], None if sums is None else sums - k)
    undecided: list[int] = []
    guesses: dict[int, tuple[int, int, int]] = {}  # key -> (bucket, +1/-1, hash)
    for b in sorted(set(local) | set(their_buckets)):
        c, h, s = their_buckets.get(b, (0, 0, 0))
        lc, lh, ls = local.get(b, (0, 0, 0))
        if (c, h) == (lc, lh) and s in (ls, None):
            continue
        dc = c - lc
        if s is not None and dc in (1, -1):
            key = (s - ls) * dc
            if key >> changes.SHIFT == b:
                guesses[key] = (b, dc, (h - lh) * dc)
                continue
        undecided.append(b)
    if guesses:
        with engine.connect() as conn:
            checked = changes.key_hashes(conn, info, sorted(guesses))
        for key, (b, side, digest) in guesses.items():
            got, here = checked.get(key, (None, None))
            if got != digest or here != (side < 0):
                undecided.append(b)
            elif side > 0:
                found.add(key)
            else:
                gone.add(key)
    asked = 1
    step = fingerprints.MAX_RANGES
    undecided.sort()
    for start in range(0, len(undecided), step):
        chunk = undecided[start : start + step]
        got = _ask(sender, name, {"keys_in": chunk}, None)
        asked += 1
        try:
            there = {int(k) for k in got["keys"]}
        except (KeyError, TypeError, ValueError):
            raise delta.Failed("table-fingerprints: the keys are malformed") from None
        with engine.connect() as conn:
            here_keys = set(changes.bucket_keys(conn, info, chunk))
        found |= there - here_keys
        gone |= here_keys - there
    return found, gone, asked


def _check(
    sender: sources.Sender,
    engine: Engine,
    info: TableInfo,
    name: str,
    remote: delta.Remote,
    fetched: set[int],
    their_rows: dict[int, str | None],
    outcome: delta.Outcome,
) -> bool:
    """After the writes: key prints equal, and every fetched row's hash the
    sender's."""
    unknown = sorted(k for k in fetched if k not in their_rows)
    if len(unknown) > changes.MAX_CHANGED:
        return False  # the whole-table verification decides
    expected: dict[int, str | None] = dict(their_rows)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbsync-check") as pool:
        pending = pool.submit(
            _ask, sender, name, {"hashes_of": unknown}, remote.columns, remote.hashing
        )
        with engine.connect() as conn:
            local_print = changes.key_print(conn, info)
            ours = changes.hashes_of(
                conn, info, sorted(fetched), remote.columns, remote.hashing
            )
        got = pending.result()
    outcome.requests += 1
    try:
        their_print = [int(got["key_print"][0]), str(got["key_print"][1])]
        expected.update({int(k): str(h) for k, h in got.get("hashes") or []})
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    if their_print != local_print:
        return False
    return all(ours.get(k) == expected.get(k) for k in fetched)
