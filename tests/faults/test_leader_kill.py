"""The leader of the frames topic's partition 0 is SIGKILLed mid-stream on a 3-broker cluster
and restarted ~10 s later: the real sim server -> ``pvaflow bridge`` (topics replicated 3
times, ``acks=all``, idempotent) -> ``pvaflow consumer --n-consumers 2`` (passthrough,
at-least-once) -> ``pvaflow collector`` (exactly-once, read_committed).

The account, per stage, from each component's final status (published on the status topic)
and from the topics themselves:

* bridge: received = delivered + counted drops; the frames topic holds each delivered
  uniqueId exactly once (idempotence: a retried batch is not written twice);
* consumers: every frame of the frames topic processed (at-least-once: some twice, none lost);
* collector: emitted + counted missed = the ids the bridge sent (first to last), and the
  ordered topic, read with read_committed, holds every uniqueId the bridge delivered, each
  once, in increasing order: nothing acknowledged was lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pvaflow.ops.broker import LocalCluster

from .conftest import Proc, final_statuses, read_uids, wait_for

log = logging.getLogger(__name__)

FRAMES = 4500          # published by the sim server, then it exits
FPS = 100              # ~45 s of stream
# Partition 0 stalls while its leader is replaced: a bridge write held up longer than
# --max-delay with the partition's processing committed to its end would come out "late"
# (docs/collector.md), so the bound covers the election with room to spare.
MAX_DELAY = 20
DOWN_FOR = 10.0        # seconds the killed leader stays down
BOUND = 240.0


def _partition_leader(admin: AdminClient, topic: str, partition: int = 0) -> int:
    md = admin.list_topics(topic=topic, timeout=10).topics[topic]
    return int(md.partitions[partition].leader)


def _replicas(admin: AdminClient, topic: str) -> list[int]:
    md = admin.list_topics(topic=topic, timeout=10).topics[topic]
    return [len(p.replicas) for p in md.partitions.values()]


def _topic_config(admin: AdminClient, topic: str, key: str) -> str:
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return str(admin.describe_configs([res])[res].result(30)[key].value)


@pytest.mark.timeout(600)
def test_leader_killed_mid_stream_loses_nothing_acknowledged_and_emits_each_id_once(
        kafka_cluster: LocalCluster, sim_server: Callable[..., Any],
        run: Callable[..., Proc], tag: str) -> None:
    boot = kafka_cluster.bootstrap
    admin = AdminClient({"bootstrap.servers": boot, "log_level": 0})
    frames, processed, ordered = f"f-{tag}", f"p-{tag}", f"o-{tag}"
    ctl = ["--control-topic", f"ctl-{tag}", "--status-topic", f"st-{tag}"]
    common = ["-b", boot, "--replication-factor", "3", "--report-period", "2", *ctl]
    sim = sim_server(nx=64, ny=64, fps=FPS, total_frames=FRAMES, start_delay=5.0,
                     ready_timeout=60)
    collector = run("collector", "pvaflow", "collector", "--input-topic", processed,
                    "--output-topic", ordered, "--group", f"gc-{tag}",
                    "--collector-cache-size", "8000", "--max-delay", str(MAX_DELAY), *common)
    consumers = run("consumers", "pvaflow", "consumer", "--input-topic", frames,
                    "--output-topic", processed, "--n-consumers", "2",
                    "--processor", "passthrough", "--group", f"gp-{tag}",
                    "-X", "session.timeout.ms=10000", *common)
    bridge = run("bridge", "pvaflow", "bridge", "--input-channel", sim.channel,
                 "--topic", frames, "--partitions", "2", *common)
    procs = (collector, consumers, bridge)
    running = list(procs)

    def alive() -> None:
        for p in running:
            assert p.poll() is None, f"{p.name} exited {p.poll()}:\n{p.text()[-4000:]}"

    # The stream flows end to end (the collector emits and commits) before the fault.
    def flowing() -> bool:
        alive()
        return len(read_uids(boot, ordered, 1, timeout=10, until=lambda ids: len(ids) >= 100)) \
            >= 100 if ordered in admin.list_topics(timeout=10).topics else False

    wait_for(flowing, BOUND, "100 ordered frames before the fault", every=1.0)
    assert sim.is_running(), "the stream ended before the fault: slow start, raise FRAMES"
    assert _replicas(admin, frames) == [3, 3]
    assert _topic_config(admin, frames, "min.insync.replicas") == "2"

    leader = _partition_leader(admin, frames)
    victim = kafka_cluster.index_of(leader)
    log.info("killing node %d (index %d), leader of %s[0]", leader, victim, frames)
    t_kill = time.monotonic()
    kafka_cluster.kill(victim)
    wait_for(lambda: _partition_leader(admin, frames) not in (leader, -1), 60,
             "a new leader for partition 0")
    time.sleep(max(0.0, DOWN_FOR - (time.monotonic() - t_kill)))  # the outage itself
    kafka_cluster.start(victim)
    log.info("node %d back after %.1f s", leader, time.monotonic() - t_kill)

    # The sim server publishes its last frame and exits; the bridge has nothing more.
    wait_for(lambda: not sim.is_running(), BOUND, "the sim server to publish every frame")
    alive()

    def bridge_idle() -> bool:
        alive()
        st = final_or_last(boot, f"st-{tag}", "bridge")
        if st is None or st["time"] < time.time() - 5:
            return False
        s = st["stats"]
        return bool(s["in_flight"] == 0 and s["received"] == s["delivered"] + s["dropped"]
                    + s["delivery_errors"])
    wait_for(bridge_idle, BOUND, "the bridge to have delivered everything", every=1.0)
    running.remove(bridge)
    assert bridge.stop(60) == 0, bridge.text()[-4000:]

    sent = read_uids(boot, frames, 2, timeout=BOUND)
    sent_set = set(sent)
    wait_for(lambda: set(read_uids(boot, ordered, 1, timeout=60)) >= sent_set, BOUND,
             "every delivered frame in the ordered topic", every=2.0)
    alive()
    assert consumers.stop(60) == 0, consumers.text()[-4000:]
    assert collector.stop(60) == 0, collector.text()[-4000:]

    out = read_uids(boot, ordered, 1, timeout=BOUND)
    finals = final_statuses(f"st-{tag}", boot)
    b = _one(finals, "bridge")["stats"]
    cons = [m["stats"] for k, m in finals.items() if m["kind"] == "consumer"]
    c = _one(finals, "collector")["stats"]
    first, last = min(sent), max(sent)
    account = {
        "bridge": {k: b.get(k) for k in ("received", "delivered", "dropped",
                                          "delivery_errors", "missed", "in_flight")},
        "frames_topic": {"records": len(sent), "unique": len(sent_set),
                         "first": first, "last": last},
        "consumers": [{k: s.get(k) for k in ("received", "processed", "errors", "dlq",
                                             "sequence_gaps")} for s in cons],
        "collector": {k: c.get(k) for k in ("received", "emitted", "missed", "late",
                                             "duplicates", "replayed")},
        "ordered_topic": {"records": len(out), "unique": len(set(out))},
    }
    print("leader-kill account:", json.dumps(account))
    log.info("leader-kill account: %s", json.dumps(account))

    # bridge: everything received is delivered or counted
    assert b["received"] == b["delivered"] + b["dropped"] + b["delivery_errors"], account
    assert b["delivered"] == len(sent) == len(sent_set), account  # each id once in Kafka
    # consumers: at-least-once, every frame processed
    assert len(cons) == 2, finals.keys()
    assert sum(s["processed"] for s in cons) >= len(sent_set), account
    # collector: emitted + missed = ids sent, the output complete, ordered and once each
    assert c["emitted"] + c["missed"] == last - first + 1, account
    assert c["emitted"] == len(sent_set), account
    assert [u for u, n in Counter(out).items() if n > 1] == [], "a uniqueId twice"
    assert out == sorted(sent_set), "ordered output differs from what the bridge delivered"
    for p in procs:
        assert "Traceback" not in p.text(), p.name


def _one(finals: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in finals.values() if m["kind"] == kind]
    assert len(found) == 1, f"final status of {kind}: {sorted(finals)}"
    return found[0]


def final_or_last(boot: str, topic: str, kind: str) -> dict[str, Any] | None:
    """The newest status message of the component of ``kind`` on ``topic``."""
    from pvaflow.kafka.client import Kafka
    from pvaflow.kafka.topics import read_partition

    records, _ = read_partition(topic, Kafka(boot), tail=50, timeout=15)
    newest = None
    for _k, v in records:
        msg = json.loads(v or b"{}")
        if msg.get("type") == "status" and msg.get("kind") == kind:
            newest = msg
    return newest
