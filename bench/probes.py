"""What a loaded site's processes did, read from /proc and the access log.

- `WebProbe` watches one gunicorn: it tails its access log (with the request
  time and worker pid added to each line), samples the depth of its accept
  queue, and each worker's CPU time and time spent waiting for a CPU
  (/proc/PID/schedstat).
- `CpuAccount` splits the machine's CPU time over a window between the
  benchmark's own process trees, the PostgreSQL backends serving its
  databases, and everything else on the machine.
"""

from __future__ import annotations

import os
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import CLK_TCK, _stat_fields, groups, system_cpu
from bench.latency import percentile

# gunicorn's default access log format plus the request time (microseconds)
# and the pid of the worker that served it: what tells which worker was busy.
ACCESS_FORMAT = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %(p)s'
)
ACCESS_LINE = re.compile(
    rb'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" '
    rb'(?P<status>\d{3}) (?P<bytes>\S+) "[^"]*" "[^"]*" (?P<us>\d+) <(?P<pid>\d+)>\s*$'
)


def r1(value: float | None) -> float | None:
    """Round to 0.1; NaN (an empty percentile) becomes None."""
    return None if value is None or value != value else round(value, 1)


@dataclass
class Served:
    """One request a gunicorn answered, from its access-log line."""

    seen: (
        float  # perf_counter when the line was read: the request's end, late by < 0.1 s
    )
    method: str
    path: str
    status: int
    seconds: float  # gunicorn's request time
    pid: int  # the worker that served it

    @property
    def endpoint(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def n(self) -> int | None:
        m = re.search(r"[?&]n=(\d+)", self.path)
        return int(m.group(1)) if m else None


def parse_access(line: bytes, seen: float) -> Served | None:
    m = ACCESS_LINE.match(line)
    if not m:
        return None
    return Served(
        seen=seen,
        method=m["method"].decode(),
        path=m["path"].decode(errors="replace"),
        status=int(m["status"]),
        seconds=int(m["us"]) / 1e6,
        pid=int(m["pid"]),
    )


def listen_queue(port: int, tables: list[str]) -> int | None:
    """Connections waiting in the accept queue of the socket listening on
    `port`, from /proc/net/tcp{,6} text (for a listening socket the kernel
    shows the accept queue's length as rx_queue). None: nothing listens."""
    found = None
    for text in tables:
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 5 or parts[3] != "0A":
                continue
            if int(parts[1].rsplit(":", 1)[1], 16) != port:
                continue
            found = (found or 0) + int(parts[4].split(":")[1], 16)
    return found


def schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of a process,
    all its threads together (the live ones: /proc/PID/task/*/schedstat)."""
    on_cpu = waiting = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a, b, _ = f.read().split()
        except (OSError, ValueError):
            continue
        on_cpu += int(a)
        waiting += int(b)
    return on_cpu / 1e9, waiting / 1e9


# x86_64 numbers of the system calls a web worker blocks in
SYSCALLS = {
    0: "read",
    1: "write",
    3: "close",
    7: "poll",
    20: "writev",
    23: "select",
    35: "nanosleep",
    42: "connect",
    43: "accept",
    44: "sendto",
    45: "recvfrom",
    46: "sendmsg",
    47: "recvmsg",
    61: "wait4",
    74: "fsync",
    202: "futex",
    230: "clock_nanosleep",
    232: "epoll_wait",
    270: "pselect6",
    271: "ppoll",
    281: "epoll_pwait",
    288: "accept4",
}
_FD_CALLS = {0, 1, 3, 20, 42, 43, 44, 45, 46, 47, 74, 288}


def sockets(tables: list[str], port: int) -> dict[str, str]:
    """socket inode -> what it connects to, from /proc/net/tcp{,6} text."""
    out = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 10:
                continue
            local = int(parts[1].rsplit(":", 1)[1], 16)
            remote = int(parts[2].rsplit(":", 1)[1], 16)
            if parts[3] == "0A":
                kind = "listening socket"
            elif remote == 5432:
                kind = "postgres"
            elif remote == 6379:
                kind = "redis"
            elif local == port:
                kind = "a client's connection"
            else:
                kind = "socket"
            out[parts[9]] = kind
    return out


def where(pid: int, socks: dict[str, str]) -> list[str]:
    """What each thread of a process is doing: 'running' (on a CPU or waiting
    for one), or the system call it is blocked in, with what its file
    descriptor is when it has one (from /proc/PID/task/TID/syscall)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                words = f.read().split()
        except OSError:
            continue
        out.append(_syscall_text(pid, words, socks))
    return out


def _syscall_text(pid: int, words: list[str], socks: dict[str, str]) -> str:
    if not words or words[0] == "running":
        return "running"
    try:
        nr = int(words[0])
    except ValueError:
        return words[0]
    name = SYSCALLS.get(nr, f"syscall {nr}")
    if nr in _FD_CALLS and len(words) > 1:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{int(words[1], 16)}")
        except (OSError, ValueError):
            return name
        if target.startswith("socket:["):
            return f"{name} on {socks.get(target[8:-1], 'a socket')}"
        return f"{name} on a file"
    return name


def _delta(samples: list[tuple[float, Any]], start: float, end: float) -> Any:
    """Last minus first of the samples taken within [start, end]."""
    inside = [v for t, v in samples if start <= t <= end]
    if len(inside) < 2:
        return None
    return inside[-1], inside[0]


class WebProbe:
    """A thread that watches one gunicorn (its process group `pgid`, listening
    on `port`, access log `log`) every `every` seconds."""

    def __init__(self, log: Path, port: int, pgid: int, every: float = 0.1) -> None:
        self.log, self.port, self.pgid, self.every = log, port, pgid, every
        self.served: list[Served] = []
        self.queue: list[tuple[float, int]] = []
        self.sched: dict[int, list[tuple[float, tuple[float, float]]]] = {}
        # pid -> (t, what one of its threads was doing), each thread each tick
        self.where: dict[int, list[tuple[float, str]]] = {}
        self._stop = threading.Event()
        self._offset = log.stat().st_size if log.exists() else 0
        self._partial = b""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read_log(time.perf_counter())

    def _read_log(self, now: float) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            entry = parse_access(line, now)
            if entry is not None:
                self.served.append(entry)

    def _run(self) -> None:
        ticks, pids = 0, []
        while not self._stop.is_set():
            now = time.perf_counter()
            self._read_log(now)
            tables = []
            for name in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    tables.append(Path(name).read_text())
                except OSError:
                    pass
            depth = listen_queue(self.port, tables)
            socks = sockets(tables, self.port)
            if depth is not None:
                self.queue.append((now, depth))
            if ticks % 20 == 0:  # a scan of /proc: not every tick
                pids = groups([self.pgid])[self.pgid]
            ticks += 1
            for pid in pids:
                st = schedstat(pid)
                if st is not None:
                    self.sched.setdefault(pid, []).append((now, st))
                for spot in where(pid, socks):
                    self.where.setdefault(pid, []).append((now, spot))
            self._stop.wait(self.every)

    def report(
        self, start: float, end: float, client_latency: dict[int, float]
    ) -> dict[str, Any]:
        """What the web did between start and end (perf_counter).

        `client_latency`: the client's latency (s) of each status call by its
        number, to split it into the time before gunicorn's worker took the
        request (accept queue, waiting for a free worker) and the time after.
        """
        window = max(end - start, 1e-9)
        # A line is read up to `every` s after its request ended.
        served = [s for s in self.served if start < s.seen <= end + self.every * 2]
        by_pid: dict[int, list[Served]] = {}
        for s in served:
            by_pid.setdefault(s.pid, []).append(s)
        workers = []
        for pid in sorted(set(by_pid) | set(self.sched)):
            items = by_pid.get(pid, [])
            sched = _delta(self.sched.get(pid, []), start, end)
            if not items and sched is None:
                continue
            entry: dict[str, Any] = {
                "pid": pid,
                "requests": len(items),
                "pull_data_requests": sum(
                    1 for s in items if s.endpoint == "pull-data"
                ),
                # Sum of request times / window: for a sync worker (one request
                # at a time) the share of the window it was taken by requests.
                "in_requests_fraction": round(
                    sum(s.seconds for s in items) / window, 3
                ),
                "in_pull_data_fraction": round(
                    sum(s.seconds for s in items if s.endpoint == "pull-data") / window,
                    3,
                ),
            }
            if sched is not None:
                (cpu1, wait1), (cpu0, wait0) = sched
                entry["on_cpu_fraction"] = round((cpu1 - cpu0) / window, 3)
                entry["waiting_for_cpu_fraction"] = round((wait1 - wait0) / window, 3)
            spots = Counter(w for t, w in self.where.get(pid, []) if start <= t <= end)
            total = sum(spots.values())
            if total:
                entry["threads_where"] = {
                    k: round(v / total, 3) for k, v in spots.most_common(8)
                }
            workers.append(entry)
        codes = Counter(f"{s.endpoint} {s.status}" for s in served)
        pull_times = sorted(s.seconds for s in served if s.endpoint == "pull-data")
        in_app = {
            s.n: s.seconds
            for s in served
            if s.endpoint == "status" and s.n in client_latency
        }
        app_ms = sorted(v * 1000 for v in in_app.values())
        before_ms = sorted((client_latency[n] - v) * 1000 for n, v in in_app.items())
        depth = [d for t, d in self.queue if start <= t <= end]
        cpu_s = sum(w.get("on_cpu_fraction", 0) for w in workers) * window
        return {
            # CPU the whole web tree (master and workers) spent per answer
            "cpu_ms_per_request": r1(cpu_s * 1000 / len(served)) if served else None,
            "requests_by_endpoint_and_status": dict(sorted(codes.items())),
            "http_5xx": sum(1 for s in served if s.status >= 500),
            "workers": workers,
            "pull_data_request_seconds": {
                "requests": len(pull_times),
                "p50": r1(percentile(pull_times, 50)),
                "max": r1(pull_times[-1]) if pull_times else None,
            },
            "status_in_worker_ms": {
                "matched_calls": len(app_ms),
                "p50": r1(percentile(app_ms, 50)),
                "p95": r1(percentile(app_ms, 95)),
                "max": r1(app_ms[-1]) if app_ms else None,
            },
            "status_before_worker_ms": {
                "p50": r1(percentile(before_ms, 50)),
                "p95": r1(percentile(before_ms, 95)),
                "max": r1(before_ms[-1]) if before_ms else None,
            },
            "accept_queue": {
                "samples": len(depth),
                "mean": r1(sum(depth) / len(depth)) if depth else None,
                "max": max(depth) if depth else None,
            },
        }

    def queue_max(self, start: float, end: float) -> int | None:
        depth = [d for t, d in self.queue if start <= t < end]
        return max(depth) if depth else None


class CpuAccount:
    """CPU seconds used between `begin()` and `end()`, by category.

    Every `every` s it reads the CPU time of every process on the machine and
    files each process once, on first sight, under `classify(pid, pgid,
    cmdline)`: a category, None for a process that is not ours, or "" for
    one counted otherwise. A process first seen after `begin()` started
    during the window and counts from zero. This process counts through
    getrusage, and so do the children it waited for during the window (the
    commands it ran), under `children`. `other` is what the machine spent
    (from /proc/stat) minus all of the above: other users of the machine.
    """

    def __init__(
        self,
        classify: Callable[[int, int, str], str | None],
        children: str,
        every: float = 1.0,
    ) -> None:
        self.classify, self.children, self.every = classify, children, every
        self._seen: dict[int, tuple[str | None, float, float]] = {}  # cat, base, last
        self._others: dict[int, str] = {}  # pid -> short command, not ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan(self, first: bool) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            rest = _stat_fields(pid)
            if rest is None:
                continue
            cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
            known = self._seen.get(pid)
            if known is None:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmd = ""
                category = self.classify(pid, int(rest[2]), cmd)
                if category is None:
                    self._others[pid] = short_command(cmd) or f"[{pid}]"
                self._seen[pid] = (category, cpu if first else 0.0, cpu)
            else:
                self._seen[pid] = (known[0], known[1], cpu)

    def _usage(self) -> tuple[float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    def begin(self) -> None:
        self._sys0 = system_cpu()
        self._own0 = self._usage()
        self._t0 = time.perf_counter()
        self._scan(first=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._scan(first=False)

    def end(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._scan(first=False)
        seconds = time.perf_counter() - self._t0
        busy1, total1 = system_cpu()
        cpus = len(os.sched_getaffinity(0)) or 1
        machine = (busy1 - self._sys0[0]) / CLK_TCK
        idle = ((total1 - self._sys0[1]) - (busy1 - self._sys0[0])) / CLK_TCK
        spent: Counter[str] = Counter()
        for category, base, last in self._seen.values():
            if category:
                spent[category] += last - base
        own, kids = self._usage()
        spent["benchmark process (control calls, probes)"] += own - self._own0[0]
        spent[self.children] += kids - self._own0[1]
        ours = sum(spent.values())
        spent["other (not this benchmark)"] = max(0.0, machine - ours)
        others: Counter[str] = Counter()
        for pid, label in self._others.items():
            _, base, last = self._seen[pid]
            others[label] += last - base
        return {
            "window_s": round(seconds, 1),
            "cpus": cpus,
            "machine_busy_cpu_s": round(machine, 1),
            "machine_idle_cpu_s": round(idle, 1),
            "cpu_s": {k: round(v, 1) for k, v in spent.most_common()},
            "share_of_machine": {
                k: round(v / max(seconds * cpus, 1e-9), 3)
                for k, v in spent.most_common()
            },
            "other_top_commands_cpu_s": {
                k: round(v, 1) for k, v in others.most_common(8) if v >= 0.05
            },
        }


def short_command(cmd: str) -> str:
    """A process's command line cut to what tells it apart: the program (with
    its folder, which tells whose virtualenv it runs from) and a few words."""
    words = cmd.split()
    if not words:
        return ""
    if words[0].startswith("postgres:"):
        return " ".join(words[:4])
    return " ".join(words[:5])[:120]
