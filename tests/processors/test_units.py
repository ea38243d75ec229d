"""Consumer building blocks without a broker: commit tracking, sequence checks, histogram,
command bus, metrics exposition, status schema, --n-consumers argument rewriting."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry, generate_latest
from pvaflow.processors.runner import Runner, RunnerConfig
from pvaflow.processors.spawn import child_argv, exit_code
from pvaflow.processors.stats import (
    STATUS_SCHEMA,
    Histogram,
    PartitionSeq,
    Stats,
    StatsCollector,
)
from pvaflow.processors.tracking import DeliveryFailed, OffsetTracker

from pvaflow.control import CommandBus
from pvaflow.errors import SchemaError
from pvaflow.plugin import Processor


def test_commit_waits_for_every_delivery_of_earlier_records() -> None:
    t = OffsetTracker()
    a, b, c = (t.add("in", 0, off) for off in (10, 11, 12))
    a.left, b.left = 1, 2  # c had no outputs
    other = t.add("in", 1, 5)
    assert [(tp.partition, tp.offset) for tp in t.committable()] == [(1, 6)]
    a(None, None)
    assert [(tp.partition, tp.offset) for tp in t.committable()] == [(0, 11)]
    b(None, None)
    assert t.committable() == []  # b still has one output in flight; c must wait behind it
    b(None, None)
    assert [(tp.partition, tp.offset) for tp in t.committable()] == [(0, 13)]
    assert t.committable() == [] and other.left == 0 and c.left == 0


def test_failed_delivery_blocks_commit_and_raises() -> None:
    t = OffsetTracker()
    r = t.add("in", 0, 1)
    r.left = 1
    r(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    with pytest.raises(DeliveryFailed, match="in\\[0\\]@1"):
        t.committable()


def test_commit_limited_to_revoked_partitions_and_drop() -> None:
    from confluent_kafka import TopicPartition

    t = OffsetTracker()
    t.add("in", 0, 1)
    t.add("in", 1, 1)
    assert [tp.partition for tp in t.committable(only={("in", 1)})] == [1]
    t.drop([TopicPartition("in", 0)])
    assert t.committable() == []


def test_partition_sequence_gaps_and_repeats() -> None:
    p = PartitionSeq()
    for s in (0, 1, 2, 5, 6, 6, 3, 7):
        p.see(s, lambda: b"run1")
    assert (p.gaps, p.repeats, p.last) == (2, 2, 7)
    q = PartitionSeq()
    q.see(40, lambda: b"run1")  # a consumer joining mid-stream starts wherever the offset is
    assert q.gaps == 0


def test_a_restarted_bridge_is_a_new_sequence_not_repeats() -> None:
    """A restarted bridge numbers each partition from 0 under a new session: neither its
    records are repeats nor a gap in them goes unseen."""
    p = PartitionSeq()
    reads = []

    def session(name: bytes) -> Callable[[], bytes]:
        return lambda: reads.append(name) or name

    for s in range(100):
        p.see(s, session(b"run1"))
    assert reads == [b"run1"]  # read once, on the partition's first record
    for s in (0, 1, 2, 4):
        p.see(s, session(b"run2"))
    assert (p.gaps, p.repeats, p.last) == (1, 0, 4)
    p.see(4, session(b"run2"))  # and within the new session a redelivery is one again
    assert p.repeats == 1


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.002, 0.003, 5.0):
        h.observe(v)
    assert h.buckets() == [("0.001", 1.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert h.count() == 4 and h.quantile(0.5) == 0.01 and h.sum == pytest.approx(5.0055)


def test_snapshot_has_the_keys_the_monitor_aggregates() -> None:
    s = Stats(lambda: {"x": 1})
    s.received, s.processed = 3, 2
    s.saw_uid(5)
    s.saw_uid(9)
    s.partition("t", 0).see(0, lambda: b"run1")
    s.partition("t", 0).see(3, lambda: b"run1")
    snap = s.snapshot()
    for key in ("received", "processed", "errors", "dlq", "first_unique_id",
                "last_unique_id", "sequence_gaps", "lag", "rate"):
        assert key in snap
    assert (snap["first_unique_id"], snap["last_unique_id"], snap["sequence_gaps"]) == (5, 9, 2)
    assert snap["plugin"] == {"x": 1}


def test_broken_plugin_stats_do_not_break_the_snapshot_and_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("nope")

    s = Stats(boom)
    with caplog.at_level(logging.WARNING, "pvaflow.processors.stats"):
        for _ in range(3):
            assert s.snapshot()["plugin"] == {"error": "RuntimeError: nope"}
    assert [r.getMessage() for r in caplog.records] == [
        "plugin get_stats() failed, its stats are left out: RuntimeError: nope"]


def test_status_schema_matches_the_real_snapshot() -> None:
    STATUS_SCHEMA.check(Stats().snapshot())
    runner = Runner(Processor(), RunnerConfig("frames", "g", consumer_id=3))  # no I/O
    assert runner.schema is STATUS_SCHEMA and str(runner.identity) == "consumer/g/3"
    STATUS_SCHEMA.check(runner.stats())


@pytest.mark.parametrize("key", sorted(STATUS_SCHEMA.keys()))
def test_status_schema_fails_on_a_renamed_stats_key(key: str) -> None:
    snap = Stats().snapshot()
    snap[f"{key}_renamed"] = snap.pop(key)
    with pytest.raises(SchemaError, match=key):
        STATUS_SCHEMA.check(snap)


def test_metrics_exposition_names_and_labels() -> None:
    s = Stats()
    s.received, s.dlq = 4, 1
    s.processing.observe(0.002)
    s.lag = {("frames", 2): 17}
    reg = CollectorRegistry()
    reg.register(StatsCollector(s, {"component": "consumer", "group": "g", "consumer_id": "1",
                                    "topic": "frames"}))
    text = generate_latest(reg).decode()
    labels = 'component="consumer",consumer_id="1",group="g",topic="frames"'
    assert f"pvaflow_frames_in_total{{{labels}}} 4.0" in text
    assert f"pvaflow_dlq_frames_total{{{labels}}} 1.0" in text
    assert "pvaflow_processing_latency_seconds_bucket" in text
    assert f'pvaflow_processing_latency_seconds_count{{{labels}}} 1.0' in text
    assert 'pvaflow_consumer_lag_messages{component="consumer",consumer_id="1",group="g",' \
           'partition="2",topic="frames"} 17.0' in text


def test_command_bus_runs_commands_on_the_runner_thread() -> None:
    bus = CommandBus()
    seen: list[str] = []

    def execute(command: str, args: dict[str, Any]) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        if command == "stop":
            raise ValueError("not now")
        return {"echo": args}

    results: dict[str, Any] = {}

    def caller() -> None:
        results["ok"] = bus.call("configure", {"x": 1}, timeout=5)
        with pytest.raises(ValueError):
            bus.call("stop", timeout=5)
        results["done"] = True

    t = threading.Thread(target=caller)
    t.start()
    while t.is_alive():
        bus.run_pending(execute)
        t.join(0.01)
    assert results == {"ok": {"echo": {"x": 1}}, "done": True}
    assert set(seen) == {threading.current_thread().name}


def test_child_argv_rewrites_ids_and_ports() -> None:
    argv = ["--input-topic", "f", "--n-consumers", "3", "--consumer-id=4", "--metrics-port",
            "9000", "--group", "g"]
    assert child_argv(argv, 5, 9001) == ["--input-topic", "f", "--group", "g", "--n-consumers",
                                         "1", "--consumer-id", "5", "--metrics-port", "9001"]
    assert "--metrics-port" not in child_argv(argv, 5, None)
    short = ["-it", "f", "-nc", "3", "-id=4", "-g", "g"]
    assert child_argv(short, 6, None) == ["-it", "f", "-g", "g", "--n-consumers", "1",
                                          "--consumer-id", "6"]


def test_a_child_killed_by_a_signal_is_a_failure() -> None:
    assert [exit_code(c) for c in (0, 1, 3, -9, -15)] == [0, 1, 3, 137, 143]
