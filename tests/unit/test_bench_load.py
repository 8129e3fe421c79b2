"""The load benchmark's pure parts: its options, and how it reads what the
sender did (access-log lines, /proc/net/tcp, latency summaries). The run
itself is a benchmark (`python -m bench.load`), never a timed test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import Call, app_errors, latency_summary, parse, parse_mix
from bench.probes import listen_queue, parse_access, sockets

# /proc/net/tcp: a socket listening on 127.0.0.1:8000 (0x1F40) with 3
# connections waiting to be accepted, one client connected to it, one
# connection to PostgreSQL (5432 = 0x1538).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000800:00000003 00:00000000 00000000     0        0 1111 1
   1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
"""


def test_defaults_are_the_issue_numbers() -> None:
    args = parse([])
    assert (args.receivers, args.rows, args.rate, args.baseline) == (
        8,
        200_000,
        50.0,
        10.0,
    )
    assert args.quick is False
    assert args.mix_weights == {"status": 80, "verify": 15, "list": 5}
    assert args.web_concurrency is None and args.sender_nice is None


def test_quick_is_small_and_explicit_options_win() -> None:
    quick = parse(["--quick"])
    assert (quick.receivers, quick.rows, quick.rate, quick.baseline) == (
        2,
        20_000,
        10.0,
        2.0,
    )
    mixed = parse(["--quick", "--rows", "5000", "--receivers", "3"])
    assert (mixed.receivers, mixed.rows, mixed.rate) == (3, 5000, 10.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rows", "0"],
        ["--rate", "0"],
        ["--receivers", "-1"],
        ["--mix", "status=1,bogus=2"],
        ["--mix", "status=0"],
        ["--sender-nice", "-21"],
    ],
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(argv)
    assert raised.value.code == 2


def test_mix() -> None:
    assert parse_mix("status=9, list=1") == {"status": 9, "list": 1}
    with pytest.raises(ValueError, match="unknown call kind 'x'"):
        parse_mix("x=1")


def test_access_line_with_request_time_and_pid() -> None:
    line = (
        b'127.0.0.1 - - [27/Nov/2026:17:20:21 +0000] "GET /sync/api/status?n=42 '
        b'HTTP/1.1" 200 128 "-" "-" 1058252 <13823>'
    )
    served = parse_access(line, seen=5.0)
    assert served is not None
    assert (served.method, served.endpoint, served.n, served.status, served.pid) == (
        "GET",
        "status",
        42,
        200,
        13823,
    )
    assert served.seconds == pytest.approx(1.058252)
    # gunicorn's default format (no request time, no pid) and app log lines
    assert parse_access(line.rsplit(b" ", 2)[0], 5.0) is None
    assert parse_access(b"2026-11-27 17:20:21,000 INFO dbsync.audit x", 5.0) is None


def test_accept_queue_and_sockets_from_proc_net_tcp() -> None:
    assert listen_queue(8000, [TCP]) == 3
    assert listen_queue(8001, [TCP]) is None
    assert sockets([TCP], 8000) == {
        "1111": "listening socket",
        "2222": "a client's connection",
        "3333": "postgres",
    }


def test_latency_summary() -> None:
    calls = [
        Call(n=i, kind="status", phase="pulls", due=0.0, latency=ms / 1000, status=200)
        for i, ms in enumerate(range(1, 101))
    ]
    calls.append(Call(n=100, kind="status", phase="pulls", due=0.0, latency=2.0))
    s = latency_summary(calls)
    assert s["calls"] == 101
    assert s["statuses"] == {"0": 1, "200": 100}
    assert s["errors"] == 1
    assert (s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"]) == (
        51.0,
        96.0,
        100.0,
        2000.0,
    )


def test_app_errors_name_the_exception(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text(
        '127.0.0.1 - - [27/Nov/2026:17:20:21 +0000] "GET /sync/api/status HTTP/1.1"'
        ' 500 51 "-" "-" 1200 <7>\n'
        "2026-11-27 17:20:21,001 ERROR dbsync.api unhandled error on GET "
        "/sync/api/status\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    connect()\n"
        "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) too many "
        "clients already\n"
        '127.0.0.1 - - [27/Nov/2026:17:20:22 +0000] "GET /sync/api/status HTTP/1.1"'
        ' 200 51 "-" "-" 1200 <7>\n'
    )
    (error,) = app_errors(log)
    assert error["line"].endswith("unhandled error on GET /sync/api/status")
    assert error["exception"] == (
        "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) too many "
        "clients already"
    )
    assert app_errors(tmp_path / "missing.log") == []
