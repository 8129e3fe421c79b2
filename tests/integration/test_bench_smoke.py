"""A tiny run of the benchmark (bench/run.py), so it cannot rot.

It runs the real thing end to end (four sites, every copy method, the latency
part) on 2,000 rows, once, and checks the shape and honesty of its JSON: every
method measured, every pull moved exactly the table, the latency section there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = 2000
METHODS = {
    "reference",
    "pull_empty",
    "present_skip",
    "present_overwrite",
    "present_merge",
    "json_pages",
    "pull_default",
}
EXPECTED = {
    "pull_empty": {"created": ROWS},
    "present_skip": {"skipped": ROWS},
    "present_overwrite": {"updated": ROWS},
    "present_merge": {"updated": ROWS},
    "json_pages": {"created": ROWS},
    "pull_default": {"created": ROWS},
}


@pytest.mark.timeout(240)
def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--rows",
            str(ROWS),
            "--repeat",
            "1",
            "--latency-requests",
            "100",
            "--out",
            str(out),
            # Redis databases apart from the default run's, so a real run may go on.
            "--redis-db",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads(out.read_text())

    assert data["config"]["rows"] == ROWS
    assert data["machine"]["nproc"] >= 1 and data["machine"]["postgresql"]
    summary = {s["method"]: s for s in data["summary"]}
    assert set(summary) == METHODS
    for entry in summary.values():
        assert entry["rows_per_s"] > 0, entry
        assert entry["runs"] == 1
        assert entry["content_ok"] is True, entry
    assert summary["reference"]["ratio_to_reference"] == 1.0

    for method, expect in EXPECTED.items():
        (run,) = data["runs"][method]
        counts = {
            "transferred": ROWS,
            "created": 0,
            "updated": 0,
            "skipped": 0,
            "failed": 0,
            **expect,
        }
        assert run["counts"] == counts, (method, run)
        assert run["rows_per_s"] > 0
        assert run["seconds"] <= run["wall_seconds"]
        assert run["wire_bytes"] > 0 and run["pull_data_answers"] >= 1, (method, run)
        peak = run["memory_peak"]
        for tree in ("sender_web", "receiver_worker"):
            assert peak[tree]["tree_rss_mb"] > 0, (method, peak)
            assert peak[tree]["processes"] >= 2, (method, peak)

    latency = data["latency"]["results"]
    assert set(latency) == {
        "bare_falcon",
        "verify_connection",
        "register_connection",
        "register_connection_409",
    }
    for name, r in latency.items():
        assert r["requests"] == 100 and r["all_expected"], (name, r)
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"], (name, r)
    assert latency["verify_connection"]["p95_ratio_to_bare"] > 0

    # It cleaned up after itself: no benchmark database is left behind.
    from sqlalchemy import create_engine, text

    from tests.helpers import PG_ADMIN_URL

    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            left = (
                conn.execute(
                    text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                    {"p": f"dbsync_bench_{data['run_tag']}%"},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert left == []
