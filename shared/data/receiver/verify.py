"""Run a transfer's tables in delta mode, and verify every table after a pull.

The pull job (shared.data.receiver.pulls) calls in here per table and once
at the end, so its own paging stays as it is:

- ``delta_table``: a table of a transfer in ``delta`` mode is compared and
  only its differing ranges pulled (shared.data.receiver.delta); when that
  cannot run (a PhoenixKit sender, an empty or unkeyed table) the caller
  does the full pull.
- ``after_full``: with mirror-deletes, a full pull is followed by a delta
  pass, which deletes what the sender no longer has.
- ``verify_all``: whole-table count and fingerprint compared with the
  sender's. The transfer records per table ``verified``, ``differs`` with
  the first differing range, or ``unavailable`` with the reason; a table that
  differs leaves the transfer's error set, so the run never reads as a
  clean success.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from shared.data.receiver import bulk_in, checkpoints, delta, drift, incremental
from shared.data.receiver.writer import Writes
from shared.data.schema import TableInfo
from shared.data.sender import changes, tracking
from shared.state.models import Transfer, TransferTable

log = logging.getLogger("dbsync.verify")

MODES = ("delta", "full", "cursor")


def options(job: Any) -> dict[str, Any]:
    """The transfer's sync options (mode, mirror_deletes), read once per run."""
    if not hasattr(job, "_sync_options"):
        with job.site.db.session() as session:
            meta = dict(session.get_one(Transfer, job.transfer_id).meta or {})
        job._sync_options = {
            "mode": meta.get("mode") or "full",
            "mirror_deletes": bool(meta.get("mirror_deletes")),
            "evolve": bool(meta.get("evolve")),
        }
    return dict(job._sync_options)


def _note(job: Any, key: str, table: str, value: Any) -> None:
    with job.site.db.session() as session:
        transfer = session.get_one(Transfer, job.transfer_id)
        meta = dict(transfer.meta or {})
        meta[key] = {**(meta.get(key) or {}), table: value}
        transfer.meta = meta


def _schema(job: Any, name: str) -> Any:
    schema = job._schemas.get(name)
    if schema is None:
        schema = job.call("table-schema", {"table_name": name}).get("schema")
        job._schemas[name] = schema
    return schema


def _run_delta(job: Any, name: str, mirror: bool) -> delta.Outcome:
    from shared.data.receiver.pulls import PullFailed

    info = job.target(name)
    try:
        return delta.sync_table(
            job.sender,
            job.site.db.data_engine,
            info,
            name,
            _schema(job, name),
            job.strategy,
            mirror,
            own_txids(job, name),
        )
    except delta.Failed as ex:
        raise PullFailed(str(ex)) from None


def check_drift(job: Any, name: str) -> None:
    """Report the table's column drift on the transfer; with evolve, add the
    sender's new columns first (PullFailed when it cannot)."""
    from shared.data.receiver.pulls import PullFailed

    info = job.target(name)
    try:
        found = drift.report(info, _schema(job, name))
    except Exception as ex:  # a sender without table-schema: nothing to report
        log.info("drift %s: not checked (%s)", name, ex)
        return
    if not found:
        return
    _note(job, "drift", name, found)
    if options(job)["evolve"]:
        try:
            drift.evolve(job.site.db.data_engine, info, _schema(job, name), found)
        except drift.Drifted as ex:
            raise PullFailed(str(ex)) from None
        job.catalog = job.site.catalog()


def own_txids(job: Any, name: str) -> Writes:
    """The ids of the transactions this run wrote ``name``'s rows in."""
    if not hasattr(job, "_own_txids"):
        job._own_txids = {}
    found: Writes = job._own_txids.setdefault(name, Writes())
    return found


def _states(job: Any) -> dict[str, Any]:
    if not hasattr(job, "_xmin_states"):
        job._xmin_states = {}
    found: dict[str, Any] = job._xmin_states
    return found


def previous_state(job: Any, name: str) -> dict[str, Any] | None:
    """The states the last transfer of this connection that pulled ``name``
    stored (only when that table verified there)."""
    if not hasattr(job, "_previous_states"):
        job._previous_states = {}
    if name not in job._previous_states:
        job._previous_states[name] = _previous_state(job, name)
    found: dict[str, Any] | None = job._previous_states[name]
    return found


def known_tables(job: Any, requested: list[str], all_tables: bool) -> list[str] | None:
    """The tables of a delta run in the order to pull them, without asking
    the sender's list-tables, when the last transfer of this connection
    pulled exactly these tables and every one of them verified from a
    dbsync sender (it kept their states): a table the sender stopped
    offering then fails at its first call (403/404) as it would have at
    list-tables; the order is the one list-tables gave that run (a foreign
    key added at the sender since counts from the next full listing); the
    run does not know the row counts ahead (rows_expected empty)."""
    if all_tables or not requested or options(job)["mode"] != "delta":
        return None
    meta = _last_meta(job) or {}
    tables = meta.get("tables")
    kept = meta.get("sync_state") or {}
    if (
        not isinstance(tables, list)
        or sorted(tables) != sorted(set(requested))
        or meta.get("phoenixkit")
        or not all(isinstance(kept.get(t), dict) for t in tables)
    ):
        return None
    return [str(t) for t in tables]


def _use_kept_schema(job: Any, name: str) -> None:
    """In delta mode, take the sender's schema the last verified run kept
    instead of asking table-schema, provisionally: when it shows no drift
    here, and until the sender's ``changes`` answer confirms it unchanged
    (``columns_mark``; incremental.run stops before writing otherwise)."""
    if (
        options(job)["mode"] != "delta"
        or name in job._schemas
        or job.site.db.data_engine.dialect.name != "postgresql"
    ):
        return
    schema = (previous_state(job, name) or {}).get("schema")
    if not isinstance(schema, dict):
        return
    try:
        info = job.catalog.describe(name)
        if drift.report(info, schema):
            return
    except Exception:  # not here, or not comparable: ask the sender
        return
    job._schemas[name] = schema
    _marks(job)[name] = changes.columns_mark(schema)


def _marks(job: Any) -> dict[str, str | None]:
    if not hasattr(job, "_schema_marks"):
        job._schema_marks = {}
    found: dict[str, str | None] = job._schema_marks
    return found


def _last_meta(job: Any, table: str | None = None) -> dict[str, Any] | None:
    """The metadata of this connection's last receive transfer before this
    one (that pulled ``table``, when named)."""
    with job.site.db.session() as session:
        me = session.get_one(Transfer, job.transfer_id)
        if me.connection_id is None:
            return None
        query = select(Transfer).where(
            Transfer.connection_id == me.connection_id,
            Transfer.direction == "receive",
            Transfer.id != me.id,
            Transfer.created_at <= me.created_at,
        )
        if table is not None:
            query = query.join(
                TransferTable, TransferTable.transfer_id == Transfer.id
            ).where(TransferTable.table_name == table)
        last = session.scalars(
            query.order_by(Transfer.created_at.desc()).limit(1)
        ).first()
        return None if last is None else dict(last.meta or {})


def _previous_state(job: Any, name: str) -> dict[str, Any] | None:
    found = ((_last_meta(job, name) or {}).get("sync_state") or {}).get(name)
    return found if isinstance(found, dict) else None


def _from_xmin(job: Any, name: str) -> bool:
    """The delta run from xmin (shared.data.receiver.incremental); False:
    compare the whole table."""
    opts = options(job)
    engine = job.site.db.data_engine
    info = job.target(name)
    columns = delta.shared_columns(info, _schema(job, name))
    prev = previous_state(job, name)
    if prev is not None and prev.get("columns") != columns:
        prev = None  # a column added or dropped changes rows without xmin
    # Installed before this run's state is taken: the next run can list the
    # changes made here since from the log.
    tracked = job.site.settings.tracks_changes(name) and tracking.ensure(engine, info)
    try:
        got = incremental.run(
            job.sender,
            engine,
            info,
            name,
            columns,
            job.strategy,
            opts["mirror_deletes"],
            prev,
            own_txids(job, name),
            delta.hashing_for(engine, info, _schema(job, name)),
            tracked,
            _marks(job).get(name),
            delta.keys_format(engine, info, _schema(job, name), job.strategy),
        )
    except (incremental.Skip, delta.NotAvailable) as ex:
        log.info("delta %s: not from xmin (%s)", name, ex)
        if _marks(job).pop(name, None) is not None:  # not confirmed: ask
            job._schemas.pop(name, None)
            check_drift(job, name)
        return False
    except delta.Failed as ex:
        from shared.data.receiver.pulls import PullFailed

        raise PullFailed(str(ex)) from None
    if got.schema_moved:
        # The schema kept from the last run is not the sender's now: ask.
        log.info("delta %s: the sender's schema changed, asking for it", name)
        job._schemas.pop(name, None)
        _marks(job).pop(name, None)
        check_drift(job, name)
        return _from_xmin(job, name)
    _marks(job).pop(name, None)  # confirmed by the sender's answer
    _states(job)[name] = got.states
    if (got.note or {}).get("here") == "log" and prev is not None:
        tracking.note_reader(
            engine,
            info,
            f"receiver:{job.sender.site_url}",
            int(prev["local_log"]["xid"]),
        )
    if got.outcome is not None and prev is not None:
        got.states["own_before"] = (prev.get("local") or {}).get("own")
        got.states["written"] = got.written
    job._xmin_notes = {**getattr(job, "_xmin_notes", {}), name: got.note or {}}
    if got.outcome is None:
        return False
    if got.verified:
        job._sync_options.setdefault("equal", set()).add(name)
    _finish(job, name, got.outcome, from_xmin=True)
    return True


def delta_table(job: Any, name: str) -> bool:
    """Bring ``name`` level by its differing ranges; False: do the full pull.

    Checks the table's column drift first (``check_drift``).
    """
    opts = options(job)
    _use_kept_schema(job, name)
    check_drift(job, name)
    if opts["mode"] != "delta":
        try:
            info = job.catalog.describe(name)
        except Exception:  # not here yet: the pull creates it
            info = None
        states = incremental.begin(job.sender, job.site.db.data_engine, info, name)
        if states is not None:
            _states(job)[name] = states
        return False
    if job.site.db.data_engine.dialect.name == "postgresql" and _from_xmin(job, name):
        return True
    try:
        outcome = _run_delta(job, name, opts["mirror_deletes"])
    except delta.NotAvailable as ex:
        log.info("delta %s: %s; pulling it whole", name, ex)
        _note(job, "delta", name, {"mode": "full", "reason": str(ex)})
        return False
    if outcome.equal_before:
        # Compared equal and nothing written: that comparison is the verification.
        job._sync_options.setdefault("equal", set()).add(name)
    _finish(job, name, outcome)
    return True


def _finish(
    job: Any, name: str, outcome: delta.Outcome, from_xmin: bool = False
) -> None:
    cp = checkpoints.Checkpoint(str(job.transfer_id), name)
    cp.done = True
    cp.pages = outcome.ranges_pulled
    cp.rows_done = outcome.rows_pulled
    r = outcome.result
    cp.created, cp.updated, cp.skipped, cp.failed = (
        r.created,
        r.updated,
        r.skipped,
        r.failed,
    )
    cp.errors = list(r.errors)
    job._progress(name, cp, status="completed")
    _note(
        job,
        "delta",
        name,
        {
            "mode": "delta",
            "equal_before": outcome.equal_before,
            "ranges_pulled": outcome.ranges_pulled,
            "rows_pulled": outcome.rows_pulled,
            "deleted": outcome.deleted,
            "requests": outcome.requests,
            **({"from": _source(job, name)} if from_xmin else {}),
            **getattr(job, "_xmin_notes", {}).get(name, {}),
        },
    )


def _source(job: Any, name: str) -> str:
    """``log`` when both sides listed their changes from change logs."""
    note = getattr(job, "_xmin_notes", {}).get(name, {})
    return "log" if note.get("there") == note.get("here") == "log" else "xmin"


def before_full(job: Any, name: str, info: TableInfo) -> None:
    """Before a full pull into an empty table tracked here: its triggers come
    off, so the pull's rows are not logged one by one (1M keys for a 1M-row
    table). They go on again before the verification
    (``_track_before_verifying``) with a new epoch: a reader of this table's
    log then compares it whole once, as it must after a refill."""
    engine = job.site.db.data_engine
    with engine.connect() as conn:  # (epoch: None where it cannot be tracked)
        if tracking.epoch(conn, info) is None or not bulk_in.table_is_empty(conn, info):
            return
    if tracking.remove(engine, info.schema or "public", info.name):
        states = _states(job).get(name) or {}
        (states.get("local") or {}).pop("epoch", None)
        states.pop("local_log", None)


def after_full(job: Any, name: str) -> None:
    """With mirror-deletes, delete what a full pull left that the sender lacks."""
    if not options(job)["mirror_deletes"]:
        return
    try:
        outcome = _run_delta(job, name, True)
    except delta.NotAvailable as ex:
        _note(job, "delta", name, {"mode": "full", "deletes": f"not mirrored: {ex}"})
        return
    _note(job, "delta", name, {"mode": "full", "deleted": outcome.deleted})


def _remote(job: Any, name: str) -> tuple[Any, delta.Remote]:
    engine = job.site.db.data_engine
    info = job.catalog.describe(name)
    delta.check_local(engine, info)
    schema = _schema(job, name)
    return info, delta.Remote(
        job.sender,
        name,
        delta.shared_columns(info, schema),
        delta.hashing_for(engine, info, schema),
    )


def prefetch(job: Any, name: str) -> None:
    """Ask the sender for ``name``'s whole-table print as the last page but
    one of its full pull arrives (by the rows list-tables counted; else the
    last), so the sender's scan runs while this site still writes; the
    comparison (``verify_table``) is then with the sender as of that
    moment, as it would be with any moment near the pull's end.

    Not after a pull whose delete pass (mirror-deletes) writes on: the print
    must be of the sender as this site's rows last followed it.
    """
    if options(job)["mirror_deletes"] or getattr(job, "phoenixkit", False):
        return
    pending = getattr(job, "_prefetched", None)
    if pending is None:
        pending = job._prefetched = {}
    if name in pending:
        return
    try:
        info, remote = _remote(job, name)
    except Exception:  # verify_table finds and reports it
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbsync-verify")
    pending[name] = (remote, pool.submit(remote.prints, [(None, None)]))
    pool.shutdown(wait=False)


def verify_table(job: Any, name: str) -> dict[str, Any]:
    """Compare ``name`` whole with the sender: verified, differs, or unavailable."""
    if name in options(job).get("equal", ()):
        return {"status": "verified"}
    engine = job.site.db.data_engine
    try:
        remote, theirs = getattr(job, "_prefetched", {}).get(name, (None, None))
        info, fresh = _remote(job, name)
        equal, leaves = delta.differing(
            remote or fresh,
            engine,
            info,
            first_only=True,
            asked=theirs,
            parallel=job.site.settings.verify_scan_processes - 1,
        )
    except delta.NotAvailable as ex:
        return {"status": "unavailable", "reason": str(ex)}
    except Exception as ex:  # verification must not undo a pull that landed
        log.warning("verify %s: %s", name, ex)
        return {"status": "unavailable", "reason": f"{type(ex).__name__}: {ex}"[:300]}
    if equal:
        return {"status": "verified"}
    first = leaves[0] if leaves else (None, None)
    return {"status": "differs", "first_range": {"after": first[0], "until": first[1]}}


def _track_before_verifying(job: Any, name: str) -> None:
    """With change tracking, a table whose log this run's state could not
    use gets its triggers now and a state taken now, before the whole-table
    verification: a change made here before it is seen by the verification,
    one made after it by the log (``local_log`` of the kept state)."""
    states = _states(job).get(name)
    if (
        not job.site.settings.tracks_changes(name)
        or not states
        or "epoch" in (states.get("local") or {})
        or name in options(job).get("equal", ())
    ):
        return
    engine = job.site.db.data_engine
    try:
        info = job.catalog.describe(name)
        if not tracking.ensure(engine, info):
            return
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                now = changes.state(conn, info)
                mark = tracking.epoch(conn, info)
    except Exception as ex:  # the next run compares without the log
        log.info("state %s: no change log (%s)", name, ex)
        return
    if mark is not None:
        states["local_log"] = {**now, "epoch": mark}


def verify_all(job: Any, names: list[str]) -> None:
    """Verify each table; a table that differs sets the transfer's error."""
    for name in names:
        _track_before_verifying(job, name)
    results = {name: verify_table(job, name) for name in names}
    differs = [n for n, r in results.items() if r["status"] == "differs"]
    kept = {
        n: st
        for n in names
        if results[n]["status"] == "verified"
        and (st := _kept_state(job, n)) is not None
    }
    with job.site.db.session() as session:
        transfer = session.get_one(Transfer, job.transfer_id)
        transfer.meta = {
            **(transfer.meta or {}),
            "verification": results,
            "sync_state": kept,
        }
        if differs:
            first = results[differs[0]]["first_range"]
            transfer.error_message = (
                f"Verification: {', '.join(differs)} differ(s) from the sender"
                f" (first differing range of {differs[0]}: after {first['after']}"
                f" until {first['until']})"
            )[:2000]


def _kept_state(job: Any, name: str) -> dict[str, Any] | None:
    """The states the next run of ``name`` starts from, when they can vouch:
    this site's file node and manual vacuums unchanged since the run began
    (autovacuums are judged by the next run, shared.data.sender.changes).

    The transactions that wrote rows here since this run began are this
    run's own (``own``): the next run leaves them out of the local changes.
    They are the ids its writers recorded, or the ids of the rows it wrote;
    after a page written in a savepoint (any but a direct COPY page) a scan
    takes every write since the run began, a local one that committed
    meanwhile included."""
    states = _states(job).get(name)
    if not states or not isinstance(states.get("sender"), dict):
        return None
    local = dict(states["local"])
    engine = job.site.db.data_engine
    try:
        info = job.catalog.describe(name)
        columns = delta.shared_columns(info, _schema(job, name))
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                marks = changes.table_marks(conn, info)
                before = states.get("own_before")
                written = states.get("written")
                if not own_txids(job, name) and isinstance(before, list):
                    # This run wrote no row: the last run's writers stay its own,
                    # and a local write during this run is seen next time.
                    own: list[int] | None = before
                elif isinstance(written, list) and isinstance(before, list):
                    # A run from xmin wrote only these keys: their rows' xmin
                    # are its writers (sub-transactions included), and the last
                    # run's writers still at or after the horizon stay its own.
                    now = changes.state(conn, info)
                    own = sorted(
                        set(changes.xids_of(conn, info, written))
                        | set(changes.at_or_after(before, local, now))
                    )
                elif own_txids(job, name) and not own_txids(job, name).subtransactions:
                    # Every row this run wrote carries one of its writers' ids.
                    own = sorted({x % changes.WRAP for x in own_txids(job, name)})
                else:
                    own = changes.xids_since(conn, info, local)
    except Exception as ex:
        log.info("state %s: not kept (%s)", name, ex)
        return None
    if own is None:
        return None
    if "node" not in local:  # created by this run: its counts began at 0
        local.update({**marks, "autovacuums": 0})
    if any(local[k] != marks[k] for k in ("node", "vacuums")):
        return None
    kept = {
        "sender": states["sender"],
        "local": {**changes.public(local), "own": own},
        "columns": columns,
        "schema": _schema(job, name),
    }
    # The log's horizon: this run's start when its state saw the triggers,
    # else the state taken before the verification; the writers of this run
    # by their top-level ids (the log's, savepoints included).
    logged = states["local"] if "epoch" in states["local"] else states.get("local_log")
    if job.site.settings.tracks_changes(name) and isinstance(logged, dict):
        kept["local_log"] = {
            **changes.public(logged),
            "own_xids": sorted(own_txids(job, name)),
        }
    return kept
