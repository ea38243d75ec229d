"""``--from-time/--to-time`` on ``collect`` and ``mirror``: given "yesterday's" window of a
topic that also holds today's run (record times set explicitly, as the bridge sets them), each
reads exactly that window, ends on its own, and commits nothing into its live group."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from pvaflow.bridge.mirror import Mirror

from pvaflow import codec
from pvaflow.component import RunOptions, run_component
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec, parse_time, replay_group
from pvaflow.testing import make_frames

pytestmark = pytest.mark.integration

WINDOW = ("yesterday 21:00", "yesterday 23:00")
YESTERDAY, TODAY = 20, 15  # frames of each run


def record_two_runs(bootstrap: str, topic: str) -> None:
    """Yesterday 22:00 uniqueIds 1-20 and a minute ago 1-15 (the source restarted), over two
    partitions, with the Kafka record times set explicitly."""
    y = (dt.datetime.now().astimezone() - dt.timedelta(days=1)).replace(
        hour=22, minute=0, second=0, microsecond=0)
    yesterday = round(y.timestamp() * 1000)
    today = time.time_ns() // 1_000_000 - 60_000
    producer = Kafka(bootstrap).producer()
    for start, n, seed in ((yesterday, YESTERDAY, 1), (today, TODAY, 2)):
        for i, f in enumerate(make_frames(n, (4, 6), "uint16", seed=seed)):
            key, value, headers = codec.encode(f)
            producer.produce(topic, value.tobytes(), key, partition=i % 2, headers=headers,
                             timestamp=start + 1000 * i)
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str) -> list[int]:
    c = Kafka(bootstrap).consumer(group)
    try:
        return [tp.offset for tp in
                c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)]
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, partitions: int = 1) -> list[Any]:
    """Every committed record of ``topic``, read to its end."""
    c = Kafka(bootstrap).consumer(f"reader-{uuid.uuid4().hex[:8]}", **{
        "enable.partition.eof": True, "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            for m in c.consume(100, 0.5):
                if m.error() is None:
                    out.append(m)
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
    finally:
        c.close()
    return out


def test_collector_regathers_yesterdays_window_only(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    src, out, state = make_topic(2), make_topic(suffix="ordered"), make_topic(suffix="state")
    record_two_runs(kafka_bootstrap, src)
    live = f"g-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pvaflow.cli", "collect", "-it", src, "--output-topic", out,
         "--group", live, "--state-topic", state, "--dlq-topic", "", "--max-delay", "2",
         "--from-time", WINDOW[0], "--to-time", WINDOW[1], "-b", kafka_bootstrap,
         "--runtime", "120", "--report-period", "0", "--control-topic", "",
         "--status-topic", ""],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.monotonic() - t0 < 110  # it ended on its own, at the end of the window
    got = read_topic(kafka_bootstrap, out)
    assert [codec.decode_key(m.key()) for m in got] == list(range(1, YESTERDAY + 1))
    expected = {f.unique_id: f.array for f in make_frames(YESTERDAY, (4, 6), "uint16", seed=1)}
    for m in got:  # yesterday's pixels, not today's frames with the same ids
        f = codec.decode(m.key(), m.value(), m.headers())
        assert (f.array == expected[f.unique_id]).all()
    # nothing in the live group: neither offsets nor reorder state
    assert all(o < 0 for o in committed(kafka_bootstrap, live, src))
    spec = ReplaySpec(parse_time(WINDOW[0]), parse_time(WINDOW[1]))
    assert all(o >= YESTERDAY // 2 for o in committed(kafka_bootstrap,
                                                      replay_group(live, spec), src))
    keys = {m.key().decode() for m in read_topic(kafka_bootstrap, state)}
    assert keys == {replay_group(live, spec)}


class GatedMirror(Mirror):
    """The real mirror, whose steps wait until the test's PVA client is subscribed (a replay
    is served as fast as Kafka delivers it: a client connecting afterwards would only see the
    last frame), and whose close waits until the client has had every frame served."""

    def __init__(self, *args: Any, gate: threading.Event, seen: list[int],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.seen = gate, seen

    def step(self) -> None:
        if self.gate.wait(0.2):
            super().step()

    def close(self) -> int:
        deadline = time.monotonic() + 30
        while len(self.seen) < self.counts.served and time.monotonic() < deadline:
            time.sleep(0.1)
        return super().close()


def test_mirror_serves_yesterdays_window_only(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    import pvaccess as pva

    src = make_topic(2)
    record_two_runs(kafka_bootstrap, src)
    channel = f"replay:{uuid.uuid4().hex[:8]}"
    group = f"pvaflow-mirror-{channel}"  # the mirror's own (live) group
    spec = ReplaySpec(parse_time(WINDOW[0]), parse_time(WINDOW[1]))
    gate, seen, failures = threading.Event(), [], []
    mirror = GatedMirror(src, channel, replay=spec, gate=gate, seen=seen)
    holder: dict[str, Any] = {}

    def client() -> None:
        try:
            deadline = time.monotonic() + 60
            while mirror.ready() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            first = threading.Event()

            def on_frame(pv: Any) -> None:
                uid = pv["uniqueId"]
                if uid:  # the record's initial, empty value has uniqueId 0
                    seen.append(uid)
                first.set()

            ch = pva.Channel(channel)
            holder["ch"] = ch
            ch.monitor(on_frame, "record[queueSize=100]field()")
            assert first.wait(60), "no first monitor update"
        except BaseException as exc:
            failures.append(exc)
        finally:
            gate.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    t0 = time.monotonic()
    code = run_component(mirror, RunOptions("pvaflow-mirror", runtime=120, report_period=0,
                                            control_topic=None, status_topic=None),
                         Kafka(kafka_bootstrap))
    thread.join(60)
    if "ch" in holder:
        holder["ch"].stopMonitor()
    assert not failures, failures
    assert code == 0
    assert time.monotonic() - t0 < 110  # it ended on its own, at the end of the window
    assert sorted(seen) == list(range(1, YESTERDAY + 1))
    assert mirror.counts.served == YESTERDAY
    assert all(o < 0 for o in committed(kafka_bootstrap, group, src))
