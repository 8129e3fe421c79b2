"""Delta runs against a full pull: 1% of a 1M-row table changed, and no change.

Fills the bench table (bench/dataset.py) at a sender, leaving out 0.3% of
its keys spread over the key range; pulls it whole into an empty table at
the receiver; then at the sender updates 0.4% of the rows, inserts the 0.3%
left out and deletes another 0.3% (all spread over the key range), and runs
``dbsync pull --mode delta --mirror-deletes --strategy overwrite``; then the
same run again with nothing changed. Each run's time is its transfer's
started_at -> completed_at (the worker's work, as the full pull's), with the
CLI's wall time beside it; every run must leave the target equal to the
source (row digest). Peak RSS of the receiver's worker and the sender's web
is sampled during each run.

    .venv/bin/python -m bench.delta                 # 1,000,000 rows
    .venv/bin/python -m bench.delta --rows 100000
    .venv/bin/python -m bench.delta --no-tracking   # SYNC_CHANGE_TRACKING=off on both sites
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import dataset
from bench.harness import (
    BenchError,
    Postgres,
    RssSampler,
    Site,
    clean_redis,
    pair,
    stop_all,
)

T = dataset.TABLE
LEFT_OUT = "id % 331 = 17"  # 0.3%: inserted after the full pull
UPDATED = "id % 250 = 3"  # 0.4%
DELETED = "id % 333 = 101"  # 0.3%


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:4]}"
    pg = Postgres(args.pg_url)
    work = Path(tempfile.mkdtemp(prefix="dbsync-bench-delta-"))
    source, target = f"dbsync_bench_{tag}_dsrc", f"dbsync_bench_{tag}_dtgt"
    redis = [f"{args.redis_url.rstrip('/')}/{args.redis_db + i}" for i in (0, 1)]
    sites: list[Site] = []
    try:
        for db in (source, target):
            pg.create(db)
            pg.query(db, dataset.DDL)
        for start in range(1, args.rows + 1, 250_000):
            stop = min(args.rows, start + 249_999)
            pg.query(source, dataset.fill_sql(start, stop))
        pg.query(source, f"DELETE FROM {T} WHERE {LEFT_OUT}")
        pg.query(source, f"VACUUM (ANALYZE) {T}")
        for name, url, db in (
            ("sender", redis[0], source),
            ("receiver", redis[1], target),
        ):
            site = Site(
                name=name,
                pg=pg,
                workdir=work,
                redis_url=url,
                state_db=f"dbsync_bench_{tag}_{name}_dstate",
                data_db_url=pg.url(db),
                queue_prefix=f"bench-{tag}-{name}-",
                # Default settings (change tracking on) unless --no-tracking.
                extra_env={} if args.tracking else {"SYNC_CHANGE_TRACKING": "off"},
            )
            sites.append(site)
            site.cli("db", "upgrade")
            site.cli("settings", "set", "enabled", "true")
            site.cli("settings", "set", "incoming_mode", "auto_accept")
            site.start()
        for site in sites:
            site.wait_ready()
        sender, receiver = sites
        rid, _ = pair(sender, receiver, "--rate-limit", "100000")

        def measured(*extra: str) -> dict[str, Any]:
            trees = {
                "receiver_worker": receiver.pgid("worker"),
                "sender_web": sender.pgid("web"),
            }
            started = time.perf_counter()
            with RssSampler(trees) as rss:
                done = receiver.cli(
                    "pull",
                    rid,
                    T,
                    *extra,
                    "--wait",
                    "--json",
                    timeout=3600,
                    check=False,
                )
                out = json.loads(done.stdout)
            wall = time.perf_counter() - started
            if out["status"] != "completed":
                raise BenchError(f"pull {extra} ended {out['status']}: {out['error']}")
            took = (
                dt.datetime.fromisoformat(out["completed_at"])
                - dt.datetime.fromisoformat(out["started_at"])
            ).total_seconds()
            digest = pg.query(target, dataset.DIGEST)[0]
            exact = digest == pg.query(source, dataset.DIGEST)[0]
            return {
                "args": list(extra),
                "seconds": round(took, 3),
                "wall_seconds": round(wall, 3),
                "exact": exact,
                "verification": out.get("verification"),
                "delta": out.get("delta"),
                "records": [
                    out[k]
                    for k in (
                        "records_transferred",
                        "records_created",
                        "records_updated",
                        "records_skipped",
                        "records_failed",
                    )
                ],
                "rss_mb": rss.result(),
                "loadavg": loadavg(),
            }

        full = measured("--mode", "full")
        print("full pull:", json.dumps(full)[:400], flush=True)
        pg.query(
            source,
            f"UPDATE {T} SET qty = qty + 1, title = title || ' (changed)' WHERE {UPDATED}",
        )
        pg.query(source, f"DELETE FROM {T} WHERE {DELETED}")
        pg.query(
            source,
            dataset.fill_sql(1, args.rows).replace(
                "AS g\n", "AS g WHERE g % 331 = 17\n"
            ),
        )
        changed = {
            "updated": pg.query(source, f"SELECT count(*) FROM {T} WHERE {UPDATED}")[0][
                0
            ],
            "inserted": pg.query(source, f"SELECT count(*) FROM {T} WHERE {LEFT_OUT}")[
                0
            ][0],
            "deleted": pg.query(target, f"SELECT count(*) FROM {T} WHERE {DELETED}")[0][
                0
            ],
        }
        # ANALYZE, not VACUUM: a manual VACUUM may freeze rows, so a delta run
        # after one compares the whole table (README, "Delta runs from xmin").
        pg.query(source, f"ANALYZE {T}")
        delta = measured(
            "--mode", "delta", "--mirror-deletes", "--strategy", "overwrite"
        )
        print("delta run:", json.dumps(delta)[:400], flush=True)
        calm = measured(
            "--mode", "delta", "--mirror-deletes", "--strategy", "overwrite"
        )
        print("no change:", json.dumps(calm)[:400], flush=True)
        result = {
            "rows": args.rows,
            "change_tracking": args.tracking,
            "changed": changed,
            "full": full,
            "delta": delta,
            "no_change": calm,
            "delta_ratio": round(delta["seconds"] / full["seconds"], 3),
            "no_change_ratio": round(calm["seconds"] / full["seconds"], 3),
            "cpus": os.cpu_count(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        out = (
            Path(__file__).parent
            / "results"
            / f"delta-{args.rows}{'' if args.tracking else '-untracked'}-{tag}.json"
        )
        out.write_text(json.dumps(result, indent=2))
        print(
            json.dumps(
                {k: result[k] for k in ("changed", "delta_ratio", "no_change_ratio")}
            )
        )
        print(f"results: {out}")
        return result
    finally:
        stop_all(sites)
        for url in redis:
            clean_redis(url, tag)
        pg.drop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="both sites compare by xmin scans (SYNC_CHANGE_TRACKING=off)",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"
        ),
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("SYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
    )
    p.add_argument(
        "--redis-db", type=int, default=7, help="two databases from it (7, 8)"
    )
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
