"""Exact loss accounting: every record is counted once, and only as what happened to it.

* consumer: a record that reached the consumer and was dead-lettered is ``dlq``, not a
  sequence gap (its ``pf.seq`` header is read even when the frame cannot be decoded);
  ``sequence_gaps`` counts only records that never arrived;
* bridge: frames the source published before the bridge's first frame are counted
  (``missed_at_start``, included in ``missed``), not silently lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pvaflow.bridge.stats import parse_final

from tests.faults._records import final_stats, good, produce, truncated
from tests.processors.conftest import Proc, consumer, read_exactly, run_proc  # noqa: F401


def test_dead_lettered_records_are_not_sequence_gaps(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:  # noqa: F811
    src, out, dlq = make_topic(suffix="in"), make_topic(suffix="out"), make_topic(suffix="dlq")
    records = []
    for seq in range(40):  # every fourth record truncated, headers (pf.seq too) intact
        uid = seq + 1
        records.append(truncated(uid, seq) if seq % 4 == 3 else good(uid, seq))
    for seq in range(45, 50):  # pf.seq 40..44 never arrive: 5 real gaps
        records.append(good(seq + 1, seq))
    produce(kafka_bootstrap, src, records)
    c = consumer("--input-topic", src, "--output-topic", out, "--dlq-topic", dlq,
                 "--processor", "passthrough", "--runtime", "120", "--report-period", "1")
    read_exactly(kafka_bootstrap, out, 35)
    read_exactly(kafka_bootstrap, dlq, 10)
    assert c.stop() == 0, c.text()[-3000:]
    stats = final_stats(c.text())
    assert stats["received"] == 45
    assert (stats["processed"], stats["dlq"], stats["decode_errors"]) == (35, 10, 10)
    assert stats["received"] == stats["processed"] + stats["dlq"]
    assert stats["sequence_gaps"] == 5  # only pf.seq 40..44


def test_a_late_bridge_counts_what_it_never_saw(
        kafka_bootstrap: str, make_topic: Callable[..., str], sim_server: Callable[..., Any],
        run_proc: Callable[..., Proc]) -> None:  # noqa: F811
    sim = sim_server(nx=8, ny=8, fps=20, wait_frames=30)  # started well before the bridge
    early = sim.current_unique_id()
    topic = make_topic(suffix="frames")
    bridge = run_proc("pvaflow.bridge.cli", "--input-channel", sim.channel, "--topic", topic,
                      "--runtime", "8", "--report-period", "2", "--control-topic", "",
                      "--status-topic", "", name="bridge")
    assert bridge.wait(120) == 0, bridge.text()[-3000:]
    [s] = parse_final(bridge.text())
    assert s["first_id"] > early >= 30
    assert s["missed_at_start"] == s["first_id"] - 1
    # every uniqueId up to the last one seen is either received or counted missed
    assert s["received"] + s["missed"] == s["last_id"], s
    assert s["missed"] >= s["missed_at_start"]
    assert s["received"] == s["delivered"] > 0


def test_loss_tracker_counts_the_start_gap_only_with_a_known_first_id() -> None:
    from pvaflow.bridge.loss import LossTracker, Seen

    late = LossTracker(start_first=1)
    assert late.observe(525) is Seen.FIRST
    assert (late.missed, late.missed_at_start, late.gap) == (524, 524, 524)
    late.observe(527)  # a gap later on is missed, not missed_at_start
    assert (late.missed, late.missed_at_start) == (525, 524)
    on_time = LossTracker(start_first=1)
    on_time.observe(1)
    assert on_time.missed == on_time.missed_at_start == 0
    auto = LossTracker(start_first=None)  # --distributor-first auto: nothing is known
    auto.observe(525)
    assert auto.missed == auto.missed_at_start == 0
