"""Concurrent loopback clients against one endpoint: latency percentiles and rate."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def hammer(
    url: str,
    body: Callable[[int], dict[str, Any]],
    *,
    requests: int,
    concurrency: int,
    warmup: int = 50,
    headers: Callable[[bytes], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """POST `requests` bodies to `url` from `concurrency` threads, each with its
    own httpx client; `warmup` requests first, not counted. Every request is
    timed from just before the client sends it to the full response.
    ``headers`` gives each body's extra headers (a control call's signature)."""

    def run(total: int, offset: int) -> tuple[list[float], Counter[int], float]:
        counter = itertools.count()
        lock = threading.Lock()
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        errors: list[str] = []

        def client() -> None:
            mine: list[float] = []
            codes: Counter[int] = Counter()
            with httpx.Client(timeout=30) as http:
                while True:
                    with lock:
                        i = next(counter)
                    if i >= total:
                        break
                    payload = json.dumps(body(offset + i)).encode()
                    extra = {"Content-Type": "application/json"}
                    if headers is not None:
                        extra.update(headers(payload))
                    t0 = time.perf_counter()
                    try:
                        status = http.post(
                            url, content=payload, headers=extra
                        ).status_code
                    except httpx.HTTPError as ex:
                        errors.append(repr(ex))
                        status = 0
                    mine.append(time.perf_counter() - t0)
                    codes[status] += 1
            with lock:
                latencies.extend(mine)
                statuses.update(codes)

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies, statuses, time.perf_counter() - start

    if warmup:
        run(warmup, requests)
    latencies, statuses, elapsed = run(requests, 0)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": len(ms),
        "concurrency": concurrency,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else None,
        "max_ms": round(ms[-1], 2) if ms else None,
        "req_per_s": round(len(ms) / elapsed, 1) if elapsed else None,
        "seconds": round(elapsed, 3),
    }
