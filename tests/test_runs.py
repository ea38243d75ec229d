"""``pvaflow runs``: the runs a topic holds, a new one after a source restart; and the one-line
errors of runs, export and replay."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pvaflow.ops.runs import RunFinder, find_runs, missing

from pvaflow.codec import encode
from pvaflow.kafka.client import Kafka
from pvaflow.testing import make_frames


def test_a_uniqueid_going_back_or_jumping_starts_a_run() -> None:
    f = RunFinder(max_jump=100)
    for uid in range(1, 11):  # run 1 over two partitions
        f.add(uid % 2, uid, 1000 + uid)
    for uid in range(1, 6):  # restart: counts from 1 again
        f.add(uid % 2, uid, 5000 + uid)
    for uid in range(900, 905):  # restart that continued higher up
        f.add(uid % 2, uid, 9000 + uid)
    runs = f.runs()
    assert [(r.first_uid, r.last_uid, r.frames) for r in runs] == \
        [(1, 10, 10), (1, 5, 5), (900, 904, 5)]
    assert runs[0].partitions == {0, 1}
    assert "went back from" in runs[1].why and "jumped from" in runs[2].why
    assert [missing(r) for r in runs] == [0, 0, 0]


def test_missing_ids_and_records_that_are_not_frames() -> None:
    key = (7).to_bytes(8, "big")
    recs = [(0, (i).to_bytes(8, "big"), [("pf.uid", str(i).encode())], i) for i in (1, 2, 5)]
    recs += [(0, b"x", None, 9), (0, key, None, 10)]  # junk, and a key-only record
    report = find_runs(recs)
    [run] = report.runs
    assert (run.first_uid, run.last_uid, run.frames, missing(run)) == (1, 7, 4, 3)
    assert report.records == 5 and report.not_frames == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvaflow.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.integration
def test_runs_shows_two_runs_after_a_source_restart(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic(2)
    p = Kafka(kafka_bootstrap).producer()
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    for first_ms, n in ((t0, 30), (t0 + 600_000, 12)):  # the source restarted 10 min later
        for i, f in enumerate(make_frames(n, (8, 8))):
            key, value, headers = encode(f)
            p.produce(topic, value.tobytes(), key, partition=i % 2, headers=headers,
                      timestamp=first_ms + 100 * i)
    assert p.flush(30) == 0
    r = cli("runs", topic, "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{topic}: 42 records, 2 run(s)"
    assert "uniqueId went back from" in r.stdout and "(source restart)" in r.stdout
    r = cli("runs", topic, "--json", "-b", kafka_bootstrap)
    runs = json.loads(r.stdout)["runs"]
    assert [(x["first_uid"], x["last_uid"], x["frames"], x["partitions"]) for x in runs] == \
        [(1, 30, 30, [0, 1]), (1, 12, 12, [0, 1])]
    assert runs[0]["first_ms"] == t0 and runs[1]["last_ms"] == t0 + 600_000 + 1100
    # a window: only the second run
    r = cli("runs", topic, "--json", "--from-time", f"@{(t0 + 300_000) / 1000}", "-b",
            kafka_bootstrap)
    assert [x["frames"] for x in json.loads(r.stdout)["runs"]] == [12]


@pytest.mark.parametrize("command", [
    ["runs", "t"], ["export", "t", "--to", "{tmp}/x.h5"], ["replay", "{tmp}/x.npy", "-t", "t"]])
def test_unreachable_kafka_is_one_line_exit_3(command: list[str], tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 2, 2), np.uint8))
    bootstrap = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = cli(*[c.format(tmp=tmp_path) for c in command], "-b", bootstrap)
    assert time.monotonic() - t0 < 15
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and bootstrap in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["runs", "t"], ["export", "t", "--to", "{tmp}/x.h5"]])
def test_a_refused_setting_is_one_line_exit_2(command: list[str], tmp_path: Path) -> None:
    r = cli(*[c.format(tmp=tmp_path) for c in command], "-b", f"127.0.0.1:{free_port()}",
            "-X", "no.such.property=1")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "no.such.property" in lines[0]
