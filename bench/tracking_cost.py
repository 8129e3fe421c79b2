"""What change tracking costs the writes of a table's own users.

Two databases hold the same bench table (bench/dataset.py); one has change
tracking installed (shared.data.sender.tracking: four statement-level
triggers logging each touched key). The same workloads run on both,
alternating, each repeated; the result is the median time of each, and the
tracked one as a ratio to the plain one:

- ``single-row updates``: 2,000 UPDATEs of one row, each its own transaction
  (what an application does);
- ``single-row inserts``: 2,000 INSERTs of one row, each committed;
- ``bulk update``: one UPDATE of 1% of the rows;
- ``bulk insert``: one INSERT of 1% more rows;
- ``bulk delete``: one DELETE of 1% of the rows.

Every workload is undone after its run (the bulk ones inside a rolled-back
transaction are not: a commit is part of what is measured), so each run
starts from the same table.

    .venv/bin/python -m bench.tracking_cost              # 200,000 rows
    .venv/bin/python -m bench.tracking_cost --rows 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from bench import dataset
from bench.harness import Postgres
from shared.data.schema import Tables
from shared.data.sender import tracking

T = dataset.TABLE
SINGLE = 2_000


def _workloads(rows: int) -> dict[str, tuple[Callable[[Any], None], str]]:
    """name -> (the work, given an autocommit psycopg2 connection; SQL that undoes it)."""
    step = 100  # 1%: every 100th key
    top = rows + rows // step

    def single_updates(conn: Any) -> None:
        with conn.cursor() as cur:
            for k in range(1, SINGLE + 1):
                cur.execute(f"UPDATE {T} SET qty = qty + 1 WHERE id = %s", (k * 7,))

    def single_inserts(conn: Any) -> None:
        with conn.cursor() as cur:
            for k in range(1, SINGLE + 1):
                cur.execute(
                    f"INSERT INTO {T} SELECT %s, qty, score, counter, price, rate, sku,"
                    " tag, title, description, active, born, created_at, updated_at,"
                    f" ref, attrs FROM {T} WHERE id = %s",
                    (top + k, k),
                )

    def statement(sql: str) -> Callable[[Any], None]:
        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(sql)

        return run

    bulk_insert = dataset.fill_sql(rows + 1, top)
    return {
        "single-row updates": (
            single_updates,
            f"UPDATE {T} SET qty = qty - 1 WHERE id % 7 = 0 AND id <= {SINGLE * 7}",
        ),
        "single-row inserts": (single_inserts, f"DELETE FROM {T} WHERE id > {top}"),
        "bulk update": (
            statement(f"UPDATE {T} SET qty = qty + 1 WHERE id % {step} = 5"),
            f"UPDATE {T} SET qty = qty - 1 WHERE id % {step} = 5",
        ),
        "bulk insert": (statement(bulk_insert), f"DELETE FROM {T} WHERE id > {rows}"),
        "bulk delete": (
            statement(f"DELETE FROM {T} WHERE id % {step} = 9"),
            dataset.fill_sql(1, rows).replace("AS g\n", f"AS g WHERE g % {step} = 9\n"),
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
    pg = Postgres(args.pg_url)
    names = {"plain": f"dbsync_bench_{tag}_plain", "tracked": f"dbsync_bench_{tag}_trk"}
    try:
        for db in names.values():
            pg.create(db)
            pg.query(db, dataset.DDL)
            pg.query(db, dataset.fill_sql(1, args.rows))
            pg.query(db, f"VACUUM (ANALYZE) {T}")
        engine = create_engine(
            pg.url(names["tracked"]).replace("postgresql://", "postgresql+psycopg2://")
        )
        info = Tables(engine).describe(T)
        if not tracking.ensure(engine, info):
            raise SystemExit("change tracking could not be installed")
        engine.dispose()
        conns = {side: pg.connect(db) for side, db in names.items()}
        times: dict[str, dict[str, list[float]]] = {}
        for name, (work, undo) in _workloads(args.rows).items():
            times[name] = {"plain": [], "tracked": []}
            for _ in range(args.repeat):
                for side in ("plain", "tracked"):
                    conn = conns[side]
                    started = time.perf_counter()
                    work(conn)
                    times[name][side].append(time.perf_counter() - started)
                    with conn.cursor() as cur:
                        cur.execute(undo)
        logged = pg.query(names["tracked"], "SELECT count(*) FROM dbsync_change_log")[
            0
        ][0]
        for conn in conns.values():
            conn.close()
        result: dict[str, Any] = {
            "rows": args.rows,
            "repeat": args.repeat,
            "workloads": {
                name: {
                    "plain_s": round(statistics.median(t["plain"]), 4),
                    "tracked_s": round(statistics.median(t["tracked"]), 4),
                    "ratio": round(
                        statistics.median(t["tracked"]) / statistics.median(t["plain"]),
                        2,
                    ),
                }
                for name, t in times.items()
            },
            "log_rows_written": logged,
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "cpus": os.cpu_count(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        out = (
            Path(__file__).parent / "results" / f"tracking-cost-{args.rows}-{tag}.json"
        )
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result["workloads"], indent=1))
        print(f"results: {out}")
        return result
    finally:
        pg.drop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"
        ),
    )
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
