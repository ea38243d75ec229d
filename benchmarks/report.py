"""Shared by the benchmarks: robust statistics and writing one section of docs/performance.md.

Each benchmark owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` so the
benchmarks can be rerun one at a time without clobbering each other's results.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pvaflow.metrics import kafka_threads_cpu

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
IMG = ROOT / "docs" / "img"
RESULTS = ROOT / "benchmarks" / "results"


def median_rate(fn: Callable[[], int], repeats: int = 5, min_seconds: float = 0.3) -> float:
    """Median items/s over ``repeats`` runs of ``fn`` (which returns how many items it did)."""
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            n += fn()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        rates.append(n / dt)
    return statistics.median(rates)


def rss_mib(field: str = "VmHWM", pid: int | str = "self") -> float:
    """A process's peak (``VmHWM``) or current (``VmRSS``) RSS in MiB, from /proc (this
    process by default; ``ru_maxrss`` would carry the parent's peak across fork + exec).
    A process that has gone raises OSError."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:,.3g}" if isinstance(v, float) and abs(v) < 100 else (
            f"{v:,.0f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, markdown: str, data: Any = None) -> None:
    """Replace (or append) this benchmark's section in docs/performance.md."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    stamp = f"_Measured {time.strftime('%Y-%m-%d')} on {machine()}._"
    body = f"{begin}\n{markdown.strip()}\n\n{stamp}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    if data is not None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def load_average() -> float:
    """The 1-minute load average (the machine is shared: every trial records it)."""
    return round(os.getloadavg()[0], 2)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, linear between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return kids


def descendants(pid: int) -> Iterator[int]:
    """``pid`` and its live descendants."""
    todo = [pid]
    while todo:
        p = todo.pop()
        yield p
        todo += children(p)


def kafka_thread_cpu(pid: int) -> float:
    """CPU seconds of the librdkafka threads (named ``rdk:*``) in ``pid`` and its live
    descendants: the share of a process's CPU that its Kafka clients' own threads spend
    (a busy-waiting producer shows here, not in the Python threads)."""
    return sum((sum(kafka_threads_cpu(f"/proc/{p}/task").values()) for p in descendants(pid)), 0.0)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Deletes benchmark topics; a topic that stays is a warning, not a failed run. A run's
    topics stay on its broker otherwise, and ladders of 2 MiB frames filled the disk."""
    from confluent_kafka.admin import AdminClient

    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics(list(topics), operation_timeout=30).values():
        try:
            f.result(60)
        except Exception as exc:
            print(f"warning: could not delete topic: {exc}", file=sys.stderr)
