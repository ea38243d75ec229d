"""The local 3-node cluster: all brokers visible, topics replicated 3 times, the loss of a
partition leader survived by ``acks=all`` producers, and a clean stop.

Every wait is on a condition with a generous bound: the machine running the suite is shared
and small, and three JVMs run here beside the session broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pvaflow.ops.broker import LocalCluster
from pvaflow.ops.broker.procs import pid_alive

BOUND = 120.0


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def _wait(what: str, check: Callable[[], bool], bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {bound:.0f} s")
        time.sleep(0.2)


def _partition(admin: Any, topic: str, partition: int = 0) -> Any | None:
    """Partition metadata (leader, replicas, isrs), or None while the cluster cannot tell."""
    from confluent_kafka import KafkaException

    try:
        md = admin.list_topics(topic=topic, timeout=10).topics.get(topic)
    except KafkaException:
        return None
    if md is None or md.error is not None:
        return None
    return md.partitions.get(partition)


def _create(admin: Any, topic: str, replication_factor: int) -> None:
    from confluent_kafka.admin import NewTopic

    futures = admin.create_topics([NewTopic(topic, 1, replication_factor)],
                                  operation_timeout=60, request_timeout=60)
    futures[topic].result(BOUND)

    def fully_replicated() -> bool:
        p = _partition(admin, topic)
        return p is not None and p.leader >= 0 and len(p.isrs) == 3

    _wait(f"{topic}: leader and 3 in-sync replicas", fully_replicated)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    errors: list[Any] = []
    p = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
        "linger.ms": 0, "message.timeout.ms": int(BOUND * 1000), "log_level": 0,
    })
    for v in values:
        p.produce(topic, v, on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(BOUND) == 0, f"records still queued after {BOUND} s"
    assert errors == []


def _consume_all(bootstrap: str, topic: str, n: int) -> list[bytes]:
    """Read partition 0 from the start by assignment: no group coordinator is needed, so
    reading does not depend on the offsets topic while a member is down."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "log_level": 0,
    })
    out: list[bytes] = []
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + BOUND
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            out.append(bytes(msg.value() or b""))
    finally:
        c.close()
    return out


# ------------------------------------------------------------------------------------------
# Unit level (no JVM)


def test_members_share_a_quorum_and_replicate_three_times(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 3, ports=[19192, 19193, 19194],
                     controller_ports=[19195, 19196, 19197])
    assert c.bootstrap == "127.0.0.1:19192,127.0.0.1:19193,127.0.0.1:19194"
    props = [b.server_properties() for b in c.brokers]
    assert [p["node.id"] for p in props] == [1, 2, 3]
    voters = "1@127.0.0.1:19195,2@127.0.0.1:19196,3@127.0.0.1:19197"
    for p in props:
        assert p["controller.quorum.voters"] == voters
        assert p["process.roles"] == "broker,controller"
        assert p["default.replication.factor"] == 3 and p["min.insync.replicas"] == 2
        assert p["offsets.topic.replication.factor"] == 3
        assert p["transaction.state.log.replication.factor"] == 3
        assert p["transaction.state.log.min.isr"] == 2
    assert len({b.data_dir for b in c.brokers}) == 3
    assert c.index_of(2) == 1


def test_free_ports_do_not_collide(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 3, exclude_ports=[19292])
    ports = [p for b in c.brokers for p in (b.port, b.controller_port)]
    assert len(set(ports)) == 6 and 19292 not in ports


# ------------------------------------------------------------------------------------------
# Real cluster (one per module, beside the session broker)


@pytest.mark.integration
def test_all_brokers_visible(kafka_cluster: LocalCluster) -> None:
    assert kafka_cluster.is_running() and len(kafka_cluster.brokers) == 3
    for b in kafka_cluster.brokers:
        md = _admin(b.bootstrap).list_topics(timeout=30)
        assert set(md.brokers) == {1, 2, 3}
        assert md.cluster_id == kafka_cluster.cluster_id
    admin = _admin(kafka_cluster.bootstrap)  # the client must outlive its futures
    desc = admin.describe_cluster(request_timeout=30).result(60)
    assert {n.id for n in desc.nodes} == {1, 2, 3}


@pytest.mark.integration
def test_topic_gets_three_replicas(kafka_cluster: LocalCluster) -> None:
    admin = _admin(kafka_cluster.bootstrap)
    explicit = f"t-rf3-{uuid.uuid4().hex[:8]}"
    _create(admin, explicit, 3)
    by_default = f"t-rfdefault-{uuid.uuid4().hex[:8]}"
    _create(admin, by_default, -1)  # the broker's default.replication.factor
    for topic in (explicit, by_default):
        p = _partition(admin, topic)
        assert p is not None
        assert sorted(p.replicas) == [1, 2, 3] and sorted(p.isrs) == [1, 2, 3]


@pytest.mark.integration
def test_leader_loss_keeps_acks_all_writes(kafka_cluster: LocalCluster) -> None:
    bootstrap = kafka_cluster.bootstrap
    admin = _admin(bootstrap)
    topic = f"t-failover-{uuid.uuid4().hex[:8]}"
    _create(admin, topic, 3)
    before = [f"before-{i}".encode() for i in range(50)]
    _produce(bootstrap, topic, before)

    p = _partition(admin, topic)
    assert p is not None
    leader = p.leader
    victim = kafka_cluster.index_of(leader)
    pid = kafka_cluster.brokers[victim].pid
    assert pid is not None
    kafka_cluster.kill(victim)
    assert not pid_alive(pid)

    def failed_over() -> bool:
        q = _partition(admin, topic)
        return (q is not None and q.leader not in (-1, leader) and leader not in q.isrs
                and len(q.isrs) == 2)

    _wait(f"{topic}: a new leader and an ISR without node {leader}", failed_over)
    after = [f"after-{i}".encode() for i in range(50)]
    _produce(bootstrap, topic, after)  # acks=all with min.insync.replicas=2 of the 2 left
    assert _consume_all(bootstrap, topic, 100) == before + after

    kafka_cluster.start(victim)  # same data dir and ports
    assert kafka_cluster.brokers[victim].pid not in (None, pid)

    def rejoined() -> bool:
        q = _partition(admin, topic)
        return q is not None and sorted(q.isrs) == [1, 2, 3]

    _wait(f"{topic}: node {leader} back in the ISR", rejoined)
    assert _consume_all(kafka_cluster.brokers[victim].bootstrap, topic, 100) == before + after


@pytest.mark.integration
def test_stop_leaves_no_process(kafka_cluster: LocalCluster) -> None:
    pids = [p for p in kafka_cluster.pids if p is not None]
    assert len(pids) == 3
    kafka_cluster.stop()
    assert not kafka_cluster.is_running(0)
    assert kafka_cluster.pids == [None, None, None]
    assert [p for p in pids if pid_alive(p)] == []
    data = str(kafka_cluster.data_dir).encode()
    for proc in Path("/proc").iterdir():  # nothing else runs on the cluster's data either
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert not (b"kafka.Kafka" in cmdline and data in cmdline), proc.name
