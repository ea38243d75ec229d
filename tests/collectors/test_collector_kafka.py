"""The collector against a real broker, fed by the real bridge and processors or by a plain
codec producer where the point is a precise input (gaps, late frames, duplicates)."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from pvaflow import codec

from .helpers import FAILING, PLUGIN, ids_of, produce_frames, read_records, wait_for

pytestmark = pytest.mark.integration


def collector(procs, b, inp, out, group, ctl, *extra, name="collector"):
    return procs(name, "pvaflow-collector", "--input-topic", inp, "--output-topic", out,
                 "--group", group, "-b", b, "--report-period", "1", *ctl, *extra)


def final_stats(proc) -> dict:
    line = [ln for ln in proc.text().splitlines() if "final stats:" in ln][-1]
    return json.loads(line.split("final stats: ", 1)[1])


def test_bridge_4_partitions_2_jittery_consumers_come_out_ordered_complete_once(
        kafka_bootstrap, make_topic, sim_server, procs, ctl):
    """Must-show 1: real bridge -> 4 partitions -> 2 consumers with random delays -> collector."""
    frames, processed, ordered = make_topic(4), make_topic(4), make_topic(1)
    sim = sim_server(nx=32, ny=32, fps=100)
    bridge = procs("bridge", "pvaflow-bridge", "--input-channel", sim.channel, "--topic", frames,
          "--partitions", "4", "-sqs", "300", "-rqs", "300", "-b", kafka_bootstrap, *ctl)
    procs("consumers", "pvaflow-consumer", "--input-topic", frames, "--output-topic", processed,
          "--n-consumers", "2", "--processor-file", PLUGIN, "--processor-class", "Jitter",
          "--processor-args", '{"max_delay": 0.03}', "-b", kafka_bootstrap, *ctl)
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "10")
    wait_for(lambda: len(read_records(kafka_bootstrap, frames, lambda r: len(r) >= 300, 3, 4))
             >= 300, 90, "300 frames from the bridge")
    bridge.stop()
    sent = sorted(ids_of(read_records(kafka_bootstrap, frames, partitions=4)))
    assert sent == list(range(sent[0], sent[0] + len(sent)))
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= len(sent), 90))
    assert got == sent  # strictly increasing, complete, no duplicates
    col.stop()
    s = final_stats(col)
    assert s["emitted"] == len(sent) and s["missed"] == 0 and s["late"] == 0


def test_redelivered_frames_are_dropped_and_counted(kafka_bootstrap, make_topic, procs, ctl):
    """Must-show 2: a consumer killed before committing; its successor redoes the frames."""
    frames, processed, ordered = make_topic(4), make_topic(1), make_topic(1)
    n = 200
    produce_frames(kafka_bootstrap, frames, range(1, n + 1), partitions=4)
    common = ["--input-topic", frames, "--output-topic", processed, "--group", f"c-{frames}",
              "--processor-file", PLUGIN, "--processor-class", "Jitter", "-b", kafka_bootstrap,
              *ctl]
    first = procs("consumer-a", "pvaflow-consumer", *common, "--commit-interval", "3600")
    wait_for(lambda: len(read_records(kafka_bootstrap, processed, lambda r: len(r) >= n,
                                      5)) >= n, 60, "first consumer output")
    first.kill()  # SIGKILL: nothing committed, everything is redelivered
    procs("consumer-b", "pvaflow-consumer", *common)
    wait_for(lambda: len(read_records(kafka_bootstrap, processed, lambda r: len(r) >= 2 * n,
                                      5)) >= 2 * n, 60, "redelivered output")
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "2")
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 60))
    time.sleep(1)
    col.stop()
    assert got == list(range(1, n + 1))
    s = final_stats(col)
    assert s["received"] == 2 * n and s["duplicates"] == n and s["emitted"] == n


def test_gap_every_partition_passed_is_missed_and_late_frame_is_counted_not_emitted(
        kafka_bootstrap, make_topic, procs, ctl):
    """Must-show 3: ids removed upstream (in no partition: both partitions have passed them,
    so they are given up without waiting); a late frame goes to the late topic only."""
    processed, ordered, late = make_topic(2), make_topic(1), make_topic(1)
    produce_frames(kafka_bootstrap, processed, [1, 2, 3, 7, 8], partitions=2)
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "30", "--late-topic", late)
    first = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= 5, 25))
    assert first == [1, 2, 3, 7, 8]
    produce_frames(kafka_bootstrap, processed, [5, 9, 10], partitions=2)  # 5 is late now
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= 7, 30))
    assert got == [1, 2, 3, 7, 8, 9, 10]
    assert ids_of(read_records(kafka_bootstrap, late, lambda r: len(r) >= 1, 30)) == [5]
    col.stop()
    s = final_stats(col)
    assert (s["missed"], s["late"], s["emitted"], s["last_emitted_unique_id"]) == (3, 1, 7, 10)
    assert s["missed_by"] == {"passed": 3}


def test_a_silent_partition_without_a_known_upstream_is_given_up_after_max_delay(
        kafka_bootstrap, make_topic, procs, ctl):
    """Records not written by a pvaflow processor name no upstream: a partition that falls
    silent holding ids back is waited for --max-delay, then its ids are given up (counted
    under "delay")."""
    processed, ordered = make_topic(2), make_topic(1)
    produce_frames(kafka_bootstrap, processed, [1, 2, 3, 5, 7, 9], partitions=2)  # 4, 6, 8?
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "3")
    t0 = time.monotonic()
    assert ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= 3, 30)) == [1, 2, 3]
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= 6, 60))
    assert got == [1, 2, 3, 5, 7, 9] and time.monotonic() - t0 >= 3
    col.stop()
    s = final_stats(col)
    assert (s["missed"], s["late"], s["missed_by"]) == (3, 0, {"delay": 3})


def test_collector_killed_and_restarted_mid_stream_emits_each_id_once(
        kafka_bootstrap, make_topic, procs, ctl):
    """Must-show 4: SIGKILL mid-stream, restart: no id twice, none lost."""
    processed, ordered = make_topic(4), make_topic(1)
    n, group = 1500, f"g-{ordered}"
    rng = random.Random(7)
    order = sorted(range(1, n + 1), key=lambda i: i + rng.uniform(0, 20))
    # partitions drift apart, each stays in increasing order (as the processors write them)
    per = {p: iter(sorted(i for i in order if (i - 1) % 4 == p)) for p in range(4)}
    order = [next(per[(i - 1) % 4]) for i in order]

    def feed() -> None:
        for k in range(0, n, 50):
            produce_frames(kafka_bootstrap, processed, order[k:k + 50], partitions=4)
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    args = ("--max-delay", "30", "--collector-cache-size", "500", "--commit-interval", "0.1")
    first = collector(procs, kafka_bootstrap, processed, ordered, group, ctl, *args, name="c1")
    wait_for(lambda: len(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= 200, 3))
             >= 200, 60, "some output before the kill")
    first.kill()
    collector(procs, kafka_bootstrap, processed, ordered, group, ctl, *args, name="c2")
    feeder.join()
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 120))
    time.sleep(2)  # anything emitted twice would show up now
    got = ids_of(read_records(kafka_bootstrap, ordered, None, 30))
    assert len(got) == len(set(got)), "an id was emitted twice"
    assert sorted(set(range(1, n + 1)) - set(got)) == [], "ids lost"
    assert got == list(range(1, n + 1))


def test_backlog_in_8_partitions_through_a_small_cache_loses_nothing(
        kafka_bootstrap, make_topic, procs, ctl):
    """A fresh collector over a prefilled backlog (uniqueId i in partition (i-1) % 8, each
    partition in order) with a cache far smaller than the backlog: flow control must keep the
    cache from overflowing, so no id is skipped and none arrives late."""
    processed, ordered = make_topic(8), make_topic(1)
    n = 4000
    produce_frames(kafka_bootstrap, processed, range(1, n + 1), partitions=8, shape=(64, 64))
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "120", "--collector-cache-size", "200")
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= n, 120))
    col.stop()
    s = final_stats(col)
    assert (s["missed"], s["late"]) == (0, 0)
    assert got == list(range(1, n + 1))
    assert s["peak_cache_depth"] <= 200 + 1


def test_frames_a_collector_plugin_fails_on_go_to_the_dlq_with_their_reason(
        kafka_bootstrap, make_topic, procs, ctl):
    """The failing frames are dead letters (original record + reason, in the same transactions
    as the output); the others are emitted in order."""
    processed, ordered, dlq = make_topic(2), make_topic(1), make_topic(1)
    n = 40
    produce_frames(kafka_bootstrap, processed, range(1, n + 1), partitions=2)
    col = collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl,
                    "--max-delay", "2", "--dlq-topic", dlq, "-pf", FAILING, "-pc", "FailEvery",
                    "-pa", '{"every": 5}')
    good = [i for i in range(1, n + 1) if i % 5]
    got = ids_of(read_records(kafka_bootstrap, ordered, lambda r: len(r) >= len(good), 60))
    dead = read_records(kafka_bootstrap, dlq, lambda r: len(r) >= n // 5, 60)
    col.stop()
    assert got == good
    assert sorted(ids_of(dead)) == list(range(5, n + 1, 5))
    for m in dead:
        h = dict(m.headers())
        uid = codec.decode_key(m.key())
        assert h["pf.dlq.stage"] == b"process"
        assert h["pf.dlq.reason"] == f"refusing uniqueId {uid}".encode()
        assert h["pf.dlq.error"] == b"ValueError"
        assert h["pf.dlq.consumer"] == f"collector/g-{ordered}/1".encode()
        assert codec.decode(m.key(), m.value(), m.headers()).unique_id == uid  # untouched
    s = final_stats(col)
    assert (s["received"], s["emitted"], s["dlq"], s["missed"]) == (n, len(good), n // 5, 0)
