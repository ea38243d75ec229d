"""kill -9 of one of two group members mid-stream: the group rebalances onto the survivor and
nothing is lost (at-least-once); with --exactly-once a read_committed reader sees each uniqueId
exactly once (the victim's open transaction is aborted, its uncommitted outputs discarded)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from pvaflow.testing import make_frames

from .conftest import HERE, Proc, Record, feed, read_topic, wait_for

pytestmark = pytest.mark.integration

N = 300


def _run_and_kill(kafka_bootstrap: str, make_topic: Callable[..., str],
                  consumer: Callable[..., Proc], *extra: str) -> tuple[str, str, Proc, Proc]:
    src, out = make_topic(4), make_topic(2, suffix="out")
    feed(kafka_bootstrap, src, make_frames(N, (16, 16)), lambda f: f.unique_id % 4)
    group = f"kill-{uuid.uuid4().hex[:6]}"
    common = ("--input-topic", src, "--output-topic", out, "--group", group,
              "--processor", "slow_plugin:Slow", "--processor-args", '{"delay": 0.04}',
              "--batch-size", "8", "--max-queue-size", "16", "--report-period", "2",
              "-X", "session.timeout.ms=6000", *extra)
    env = {"PYTHONPATH": str(HERE)}
    victim = consumer(*common, "--consumer-id", "1", name="victim", env=env)
    survivor = consumer(*common, "--consumer-id", "2", name="survivor", env=env)

    def both_working() -> bool:
        recs = read_topic(kafka_bootstrap, out, count=10**9, timeout=1.5)
        procs = Counter(r.proc for r in recs)
        return procs[f"{group}/1"] >= 30 and procs[f"{group}/2"] >= 1

    wait_for(both_working, 60, "both consumers producing")
    victim.kill()
    return src, out, victim, survivor


def _all_seen(recs: list[Record]) -> bool:
    return {r.uid for r in recs} >= set(range(1, N + 1))


def test_kill9_at_least_once_every_frame_processed(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    _src, out, _victim, survivor = _run_and_kill(kafka_bootstrap, make_topic, consumer)
    recs = read_topic(kafka_bootstrap, out, count=0, until=_all_seen, timeout=90)
    survivor.stop()
    assert {r.uid for r in recs} == set(range(1, N + 1)), "frames lost after kill -9"
    assert "revoked" in survivor.text() or "assigned" in survivor.text()
    assert "'sequence_gaps': 0" in survivor.text().rsplit("'final': True", 1)[0][-3000:]


def test_kill9_exactly_once_read_committed_sees_each_frame_once(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    _src, out, _victim, survivor = _run_and_kill(kafka_bootstrap, make_topic, consumer,
                                                 "--exactly-once")
    recs = read_topic(kafka_bootstrap, out, count=0, until=_all_seen, timeout=120,
                      read_committed=True, settle=4)
    survivor.stop()
    counts = Counter(r.uid for r in recs)
    assert set(counts) == set(range(1, N + 1)), "frames lost after kill -9"
    assert [uid for uid, n in counts.items() if n > 1] == [], "duplicates under exactly-once"
