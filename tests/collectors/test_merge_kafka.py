"""Downstream never loses: real consumers drifting apart or killed, real collector, real
broker. The processors write output partition = input partition, so the collector merges one
stream per partition and gives an id up only when it knows the id will not come."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from pvaflow import codec
from pvaflow.frame import Frame
from pvaflow.kafka.client import Kafka

from .helpers import PLUGIN, ids_of, produce_frames, read_records, wait_for

pytestmark = pytest.mark.integration

HOLDS = re.compile(r"assigned \S+\[\d+\]")  # a consumer's log: it holds a partition


def final_stats(proc) -> dict:
    line = [ln for ln in proc.text().splitlines() if "final stats:" in ln][-1]
    return json.loads(line.split("final stats: ", 1)[1])


def consumer(procs, b, frames, processed, group, ctl, cid, *extra):
    return procs(f"consumer-{cid}", "pvaflow-consumer", "--input-topic", frames,
                 "--output-topic", processed, "--group", group, "--consumer-id", str(cid),
                 "--processor-file", PLUGIN, "--processor-class", "Jitter", "-b", b,
                 "--report-period", "1", *ctl, *extra)


def collector(procs, b, processed, ordered, group, ctl, *extra):
    return procs("collector", "pvaflow-collector", "--input-topic", processed,
                 "--output-topic", ordered, "--group", group, "-b", b, "--report-period", "1",
                 *ctl, *extra)


def paced_feed(b: str, topic: str, n: int, batch: int, pause: float
               ) -> tuple[threading.Thread, list[int]]:
    """Frames 1..n into ``topic``'s 2 partitions, ``batch`` at a time with ``pause`` between,
    from a started thread; the list holds how many were produced so far."""
    fed = [0]

    def feed() -> None:
        for k in range(1, n + 1, batch):
            fed[0] += produce_frames(b, topic, range(k, min(k + batch, n + 1)), partitions=2)
            time.sleep(pause)

    feeder = threading.Thread(target=feed)
    feeder.start()
    return feeder, fed


def flowing(b: str, topic: str, count: int) -> bool:
    return len(read_records(b, topic, lambda r: len(r) >= count, 5)) >= count


def test_two_consumers_far_apart_every_frame_in_order_none_missed(
        kafka_bootstrap, make_topic, procs, ctl):
    """One consumer is fast, the other slow: their streams end up thousands of ids apart,
    far more than the collector's cache. The collector pauses the stream that runs ahead
    instead of giving ids up: every frame comes out once, in order, none missed."""
    frames, processed, ordered = make_topic(2), make_topic(2), make_topic(1)
    n = 6000
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--collector-cache-size", "500")  # default --max-delay (5 s)
    group = f"c-{frames}"
    members = [
        consumer(procs, kafka_bootstrap, frames, processed, group, ctl, 1,
                 "--processor-args", '{"max_delay": 0}'),
        consumer(procs, kafka_bootstrap, frames, processed, group, ctl, 2,
                 "--processor-args", '{"max_delay": 0.016}'),  # ~8 ms a frame: ~24 s for 3,000
    ]
    for m in members:
        wait_for(lambda m=m: HOLDS.search(m.text()), 90, "each consumer to hold a partition")
    produce_frames(kafka_bootstrap, frames, range(1, n + 1), partitions=2)

    # the drift really happens: one partition of the processed topic far ahead of the other
    spread = [0]

    def drift() -> bool:
        recs = read_records(kafka_bootstrap, processed, None, 10, partitions=2)
        per = [[uid for uid, m in zip(ids_of(recs), recs, strict=True)
                if m.partition() == p] for p in (0, 1)]
        if all(per):
            spread[0] = max(spread[0], abs(max(per[0]) - max(per[1])))
        return len(recs) >= n

    wait_for(drift, 240, "every frame processed")
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 120))
    assert got == list(range(1, n + 1))
    time.sleep(1)
    col.stop()
    s = final_stats(col)
    assert (s["emitted"], s["missed"], s["late"], s["duplicates"]) == (n, 0, 0, 0)
    assert spread[0] > 2000, f"the consumers did not drift apart ({spread[0]} ids)"
    assert s["peak_cache_depth"] <= 500 + 1
    assert s["pauses"] > 0


def test_one_consumer_of_two_killed_mid_stream_every_id_once_in_order(
        kafka_bootstrap, make_topic, procs, ctl):
    """One consumer of two SIGKILLed mid-stream with the collector's default --max-delay
    (5 s, shorter than the group's 10 s session timeout): the dead member's stream stays
    silent until the group gives its partition to the survivor, which repeats what was not
    committed. Every id reaches the ordered output once, in order; nothing is missed or
    late, and the repeats are counted as duplicates exactly.

    The victim never commits before it dies: with a periodic commit the kill could land just
    after a commit, in a pause of the paced feed, and leave nothing to repeat."""
    frames, processed, ordered = make_topic(2), make_topic(2), make_topic(1)
    n = 4000
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl)
    group = f"c-{frames}"
    survivor = consumer(procs, kafka_bootstrap, frames, processed, group, ctl, 1,
                        "--processor-args", '{"max_delay": 0.002}')
    # no commit within the test: every output it delivered is processed again by the survivor
    victim = consumer(procs, kafka_bootstrap, frames, processed, group, ctl, 2,
                      "--processor-args", '{"max_delay": 0.002}', "--commit-interval", "3600")
    # both in the group before the feed: a late join would revoke, and so commit, the victim's
    for m in (survivor, victim):
        wait_for(lambda m=m: HOLDS.search(m.text()), 90, "each consumer to hold a partition")

    feeder, fed = paced_feed(kafka_bootstrap, frames, n, 40, 0.1)  # ~400 frames/s, ~10 s
    try:
        wait_for(lambda: flowing(kafka_bootstrap, ordered, 800), 60,
                 "output flowing before the kill")
        victim.kill()  # SIGKILL: its uncommitted frames are processed again by the survivor
        killed_at = fed[0]
    finally:
        feeder.join()
    assert killed_at < n - 1000, "the kill came too late to be mid-stream"
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 180))
    assert got == list(range(1, n + 1))
    time.sleep(2)  # anything emitted twice or late would show up now
    assert ids_of(read_records(kafka_bootstrap, ordered, None, 30)) == list(range(1, n + 1))
    written = read_records(kafka_bootstrap, processed, None, 30, partitions=2)
    col.stop()
    s = final_stats(col)
    assert sorted(set(ids_of(written))) == list(range(1, n + 1))
    assert (s["emitted"], s["missed"], s["late"]) == (n, 0, 0)
    assert s["received"] == len(written)
    assert s["duplicates"] == len(written) - n > 0


def test_a_fenced_collector_consumer_is_replaced_and_nothing_is_lost_or_repeated(
        kafka_bootstrap, make_topic, procs, ctl):
    """A newer member joins with the collector's group.instance.id (what the collector's own
    rejoin does after a broker restart): the collector's consumer is fenced. It carries on
    with a new consumer from its committed state: every id once, in order."""
    processed, ordered = make_topic(2), make_topic(1)
    n, group = 3000, f"g-{ordered}"
    col = collector(procs, kafka_bootstrap, processed, ordered, group, ctl)

    feeder, _fed = paced_feed(kafka_bootstrap, processed, n, 50, 0.05)
    try:
        wait_for(lambda: flowing(kafka_bootstrap, ordered, 300), 60, "output flowing")
        # the same client settings as the collector's own consumer, the same static id
        intruder = Kafka(kafka_bootstrap).consumer(group, **{
            "group.instance.id": "collector-1", "enable.auto.commit": False})
        intruder.subscribe([processed])
        try:
            wait_for(lambda: intruder.poll(0.5) is not None or intruder.assignment(), 60,
                     "the intruder to join")
            wait_for(lambda: intruder.poll(0.5) is None and "new consumer" in col.text(), 60,
                     "the fence")
        finally:
            intruder.close()
    finally:
        feeder.join()
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 120))
    time.sleep(2)
    assert ids_of(read_records(kafka_bootstrap, ordered, None, 30)) == list(range(1, n + 1))
    assert got == list(range(1, n + 1))
    assert col.stop() == 0
    s = final_stats(col)
    assert (s["emitted"], s["missed"], s["late"], s["recoveries"]) == (n, 0, 0, 1)


def test_a_topic_with_fewer_partitions_than_the_upstream_is_mixed_from_its_first_record(
        kafka_bootstrap, make_topic, procs, ctl):
    """Processors whose output topic has fewer partitions than their input spread outputs by
    hash: one partition carries two upstream streams. When one processor's first outputs come
    before the other's (two processors joining far apart, seen beside CPU hogs), the
    collector must not apply the merge rule to what looks like one in-order stream: ids 1 and
    3 of the later upstream still come, and come out in order (the stream is mixed from its
    first record, by the partition counts, and the start waits on --max-delay)."""
    frames, processed, ordered = make_topic(2), make_topic(1), make_topic(1)
    n = 40
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "30")
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})

    def write(ids: range) -> None:
        for i in ids:
            up = (i - 1) % 2  # the bridge's plan: the upstream partition of id i
            codec.produce(p, processed, Frame(np.full((4, 4), i % 251, np.uint8), unique_id=i),
                          extra_headers=[("pf.proc", b"procs/1"),
                                         ("pf.in", f"{frames}/{up}".encode())])
        p.flush(30)

    write(range(2, 7, 2))  # upstream 1 first: 2, 4, 6
    wait_for(lambda: re.search(r"received [1-9]", col.text()), 90,
             "the collector to receive the first upstream's records", logs=[col])
    write(range(1, 6, 2))  # then upstream 0: 1, 3, 5
    write(range(7, n + 1))
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 120))
    assert got == list(range(1, n + 1))
    col.stop()
    s = final_stats(col)
    assert (s["emitted"], s["missed"], s["late"], s["duplicates"]) == (n, 0, 0, 0)
    assert "carries outputs of more than one upstream" in col.text()
