"""Reprocessing a recorded run: the time grammar, the replay group, and a consumer that
reprocesses "yesterday's" run out of a topic that also holds today's, in a new group, leaving
the live group's committed offsets untouched."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from pvaflow.codec import decode, encode
from pvaflow.errors import ConfigError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec, parse_time, replay_group
from pvaflow.options import Parser, add_replay_args
from pvaflow.testing import make_frames

NOW = 1_714_600_000_000  # 2024-05-01T21:46:40Z


def local_ms(*args: int) -> int:
    return round(dt.datetime(*args).astimezone().timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("1h ago", NOW - 3_600_000),
    ("30 min ago", NOW - 1_800_000),
    ("90s ago", NOW - 90_000),
    ("2 days ago", NOW - 2 * 86_400_000),
    ("1 week ago", NOW - 7 * 86_400_000),
    ("@1714600000", 1_714_600_000_000),
    ("2024-05-01T20:00:00Z", 1_714_593_600_000),
    ("2024-05-01T22:00+02:00", 1_714_593_600_000),
    ("2024-05-01 20:00:00.250Z", 1_714_593_600_250),
])
def test_time_grammar(text: str, expected: int) -> None:
    assert parse_time(text, now_ms=NOW) == expected


def test_local_times_and_days() -> None:
    today = dt.datetime.fromtimestamp(NOW / 1000).astimezone().date()
    yesterday = today - dt.timedelta(days=1)
    ymd = (yesterday.year, yesterday.month, yesterday.day)
    assert parse_time("yesterday 22:00", now_ms=NOW) == local_ms(*ymd, 22, 0)
    assert parse_time("Yesterday", now_ms=NOW) == local_ms(*ymd, 0, 0)
    tmd = (today.year, today.month, today.day)
    assert parse_time("today 06:30:15", now_ms=NOW) == local_ms(*tmd, 6, 30, 15)
    assert parse_time("06:30", now_ms=NOW) == local_ms(*tmd, 6, 30)
    assert parse_time("2024-05-01T22:00") == local_ms(2024, 5, 1, 22, 0)


@pytest.mark.parametrize("text", ["soon", "3 fortnights ago", "yesterday 25:00", "@x", ""])
def test_bad_times_name_the_grammar(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a time|unknown unit"):
        parse_time(text, now_ms=NOW)


def test_options_and_the_replay_group() -> None:
    p = Parser(prog="x")
    add_replay_args(p)
    args = p.parse_args(["--from-time", "@1714600000", "--to-time", "@1714603600"])
    spec = ReplaySpec.from_args(args)
    assert spec == ReplaySpec(1_714_600_000_000, 1_714_603_600_000, None)
    assert replay_group("pvaflow.frames", spec) == \
        "pvaflow.frames.replay-20240501T214640Z-20240501T224640Z"
    assert ReplaySpec.from_args(p.parse_args([])) is None
    spec = ReplaySpec.from_args(p.parse_args(["--from-offset", "7"]))
    assert spec is not None and replay_group("g", spec) == "g.replay-offset7"
    with pytest.raises(ConfigError, match="before --from-time"):
        ReplaySpec.from_args(p.parse_args(["--from-time", "@20", "--to-time", "@10"]))
    with pytest.raises(ConfigError, match="both say where to start"):
        ReplaySpec.from_args(p.parse_args(["--from-time", "@20", "--from-offset", "1"]))


def test_a_bad_time_is_one_line_and_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "pvaflow.cli", "consume", "--input-topic", "t",
                        "--processor", "passthrough", "--from-time", "tomorrowish"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--from-time" in lines[0] and "not a time" in lines[0]
    assert "Traceback" not in r.stderr


# -- a real broker: yesterday's run reprocessed ------------------------------------------------

def record_two_runs(bootstrap: str, topic: str) -> tuple[int, int]:
    """Yesterday 22:00 (uniqueIds 1-20) and a minute ago (1-15, the source restarted), over
    two partitions, with the Kafka record times set explicitly. Returns the first run's
    (first, last) record time in ms."""
    y = (dt.datetime.now().astimezone() - dt.timedelta(days=1)).replace(
        hour=22, minute=0, second=0, microsecond=0)
    yesterday = round(y.timestamp() * 1000)
    today = time.time_ns() // 1_000_000 - 60_000
    producer = Kafka(bootstrap).producer()
    for start, n, seed in ((yesterday, 20, 1), (today, 15, 2)):
        for i, f in enumerate(make_frames(n, (4, 6), "uint16", seed=seed)):
            key, value, headers = encode(f)
            producer.produce(topic, value.tobytes(), key, partition=i % 2, headers=headers,
                             timestamp=start + 1000 * i)
    assert producer.flush(30) == 0
    return yesterday, yesterday + 19_000


def read_all(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list:  # type: ignore[type-arg]
    kafka = Kafka(bootstrap)
    c = kafka.consumer(f"reader-{time.monotonic_ns()}")
    md = c.list_topics(topic, timeout=15).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(100, 0.5):
                if m.error() is None:
                    out.append(m)
        # anything more would be a bug: look a little longer
        out += [m for m in c.consume(100, 2.0) if m.error() is None]
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str) -> list[tuple[int, int]]:
    c = Kafka(bootstrap).consumer(group)
    try:
        return [(tp.partition, tp.offset) for tp in
                c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)]
    finally:
        c.close()


@pytest.mark.integration
def test_yesterdays_run_is_reprocessed_in_a_new_group(
        kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    src, out = make_topic(2), make_topic(suffix="out")
    first, _last = record_two_runs(kafka_bootstrap, src)
    live = f"pvaflow.{src}"
    # the live group has been at work: 3 records of each partition done
    c = Kafka(kafka_bootstrap).consumer(live)
    c.commit(offsets=[TopicPartition(src, 0, 3), TopicPartition(src, 1, 3)],
             asynchronous=False)
    c.close()
    before = committed(kafka_bootstrap, live, src)
    assert before == [(0, 3), (1, 3)]

    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pvaflow.cli", "consume", "--input-topic", src,
         "--output-topic", out, "--processor", "passthrough", "--from-time",
         "yesterday 21:00", "--to-time", "yesterday 23:00", "-b", kafka_bootstrap,
         "--runtime", "120", "--report-period", "0", "--control-topic", "",
         "--status-topic", ""],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.monotonic() - t0 < 110  # it ended on its own, at the end of the window
    got = read_all(kafka_bootstrap, out, 20)
    frames = [decode(m.key(), m.value(), m.headers()) for m in got]
    assert sorted(f.unique_id for f in frames) == list(range(1, 21))
    expected = {f.unique_id: f.array for f in make_frames(20, (4, 6), "uint16", seed=1)}
    for f in frames:
        assert (f.array == expected[f.unique_id]).all()  # yesterday's pixels, not today's
    # the live group never moved; the replay group holds the replay's progress
    assert committed(kafka_bootstrap, live, src) == before
    spec = ReplaySpec(parse_time("yesterday 21:00"), parse_time("yesterday 23:00"))
    assert first >= spec.from_ms  # type: ignore[operator]
    replay = committed(kafka_bootstrap, replay_group(live, spec), src)
    assert replay == [(0, 10), (1, 10)]  # just past yesterday's 10 records of each


@pytest.mark.integration
def test_from_offset_and_a_window_without_records(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    src, out = make_topic(2), make_topic(suffix="out")
    record_two_runs(kafka_bootstrap, src)
    base = [sys.executable, "-m", "pvaflow.cli", "consume", "--input-topic", src,
            "--output-topic", out, "--processor", "passthrough", "-b", kafka_bootstrap,
            "--runtime", "120", "--report-period", "0", "--control-topic", "",
            "--status-topic", ""]
    # offsets 8.. of each partition up to yesterday 23:00: yesterday's records 8 and 9
    r = subprocess.run([*base, "--from-offset", "8", "--to-time", "yesterday 23:00"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    got = read_all(kafka_bootstrap, out, 4)
    assert sorted(decode(m.key(), m.value(), m.headers()).unique_id for m in got) == \
        [17, 18, 19, 20]
