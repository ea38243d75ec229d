"""The local Kafka broker: real multi-MB frames fit, restarts keep data, the CLI fails cleanly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pvaflow.ops import broker as broker_mod
from pvaflow.ops.broker import LocalBroker, new_cluster_id, procs

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    errors: list[Any] = []
    p = Producer({
        "bootstrap.servers": bootstrap,
        "message.max.bytes": broker_mod.MAX_MESSAGE_BYTES,
        "enable.idempotence": True,
        "linger.ms": 0,
    })
    for i, v in enumerate(values):
        p.produce(topic, v, key=str(i).encode(),
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(60) == 0, "messages still queued after 60 s"
    assert errors == []


def _consume(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[bytes]:
    from confluent_kafka import Consumer

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"g-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 * MiB,
        "max.partition.fetch.bytes": 32 * MiB,
    })
    out: list[bytes] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            out.append(bytes(value))
    finally:
        c.close()
    return out


# ------------------------------------------------------------------------------------------
# Unit level (no JVM)


def test_cluster_id_is_kafka_uuid() -> None:
    for _ in range(200):
        cid = new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_logging_binding_follows_major_version() -> None:
    four = {a for _, a, _ in broker_mod.maven_artifacts("4.1.1")}
    three = {a for _, a, _ in broker_mod.maven_artifacts("3.9.1")}
    assert {"kafka_2.13", "log4j-slf4j-impl", "log4j-core"} <= four
    assert {"kafka_2.13", "slf4j-reload4j", "reload4j"} <= three


def test_properties_fit_frames_and_stay_on_loopback(tmp_path: Path) -> None:
    b = LocalBroker(tmp_path, 19092, controller_port=19093, kafka_version="4.1.1")
    props = b.server_properties()
    assert int(str(props["message.max.bytes"])) >= 16 * MiB
    assert int(str(props["replica.fetch.max.bytes"])) >= int(str(props["message.max.bytes"]))
    assert int(str(props["socket.request.max.bytes"])) >= 100 * MiB
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == 1
    assert props["group.initial.rebalance.delay.ms"] == 0
    assert b.bootstrap == "127.0.0.1:19092"
    assert LocalBroker(tmp_path, 1, controller_port=2, properties={"num.partitions": 3}
                       ).server_properties()["num.partitions"] == 3


def test_jvm_options_come_from_a_variable_no_client_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The variable once shared the PVAFLOW_KAFKA_ prefix of librdkafka settings, and every
    # client started beside such a broker failed on an unknown setting "opts".
    monkeypatch.setenv("PVAFLOW_BROKER_JVM_OPTS", "-XX:G1HeapRegionSize=16m -Da=b")
    cmd = LocalBroker(tmp_path, 1, controller_port=2)._jvm(tmp_path, "-Dlog")
    assert cmd[cmd.index("-XX:G1HeapRegionSize=16m") + 1] == "-Da=b"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pvaflow.ops.broker", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["start", "--port", "abc"], ["start", "--port", "70000"],
    ["run", "--timeout", "0"], ["start", "--kafka-version", "four"], ["stop", "--bogus"],
    ["run", "--brokers", "0"], ["start", "--brokers", "many"],
])
def test_cli_wrong_arguments_give_one_line_error(args: list[str]) -> None:
    r = _cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pvaflow-broker") and "error:" in lines[0]
    assert r.stdout == ""


def test_cli_help_and_wrapper_script() -> None:
    r = _cli("--help")
    assert r.returncode == 0 and "fetch" in r.stdout and "start" in r.stdout
    w = subprocess.run([str(REPO / "scripts" / "kafka-local"), "stop", "--nope"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert w.returncode == 2 and len(w.stderr.strip().splitlines()) == 1


def test_cli_stop_without_broker_is_harmless(tmp_path: Path) -> None:
    r = _cli("stop", "--data-dir", str(tmp_path))
    assert r.returncode == 0
    assert _cli("status", "--data-dir", str(tmp_path)).returncode == 1


# ------------------------------------------------------------------------------------------
# Real broker


@pytest.mark.integration
def test_broker_answers_metadata(kafka_bootstrap: str, kafka_admin: Any) -> None:
    md = kafka_admin.list_topics(timeout=10)
    assert md.brokers, md
    assert kafka_bootstrap.startswith("127.0.0.1:") or os.environ.get("PVAFLOW_BOOTSTRAP")


@pytest.mark.integration
@pytest.mark.parametrize("size", [8 * MiB, 16 * MiB])
def test_multi_mib_message_round_trips(kafka_bootstrap: str, topic: str, size: int) -> None:
    payload = os.urandom(size)
    _produce(kafka_bootstrap, topic, [payload])
    got = _consume(kafka_bootstrap, topic, 1)
    assert len(got) == 1
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.integration
def test_topics_get_requested_partitions(make_topic: Callable[..., str],
                                         kafka_admin: Any) -> None:
    name = make_topic(4, suffix="four")
    assert "-four-" in name
    assert len(kafka_admin.list_topics(name, timeout=10).topics[name].partitions) == 4


@pytest.mark.integration
def test_session_broker_object(broker: LocalBroker, kafka_bootstrap: str) -> None:
    assert broker.bootstrap == kafka_bootstrap and broker.is_running()
    assert broker.log_path.exists() and "Kafka Server started" in broker.log_path.read_text()


@pytest.mark.integration
def test_stop_start_keeps_data(private_broker: Callable[..., LocalBroker]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    b = private_broker()
    bootstrap = b.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(30)
    _produce(bootstrap, "kept", [b"before-restart", os.urandom(MiB)])

    b.stop()
    assert not b.is_running()
    b.start()
    assert b.bootstrap == bootstrap
    _produce(bootstrap, "kept", [b"after-restart"])
    got = _consume(bootstrap, "kept", 3)
    assert got[0] == b"before-restart" and len(got[1]) == MiB and got[2] == b"after-restart"

    b.kill()  # crash: unflushed logs are recovered on the next start
    b.start()
    got = _consume(bootstrap, "kept", 3)
    assert got[0] == b"before-restart" and got[2] == b"after-restart"


@pytest.mark.integration
def test_pause_makes_broker_unresponsive(private_broker: Callable[..., LocalBroker]) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    b = private_broker()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.list_topics(timeout=10)
    b.pause()
    try:
        with pytest.raises(KafkaException):
            AdminClient({"bootstrap.servers": b.bootstrap, "log_level": 0}).list_topics(
                timeout=2)
    finally:
        b.resume()
    b.wait_ready(30)


@pytest.mark.integration
def test_cli_start_status_stop(exclusive_kafka: list[int], tmp_path: Path) -> None:
    data = tmp_path / "cli"
    r = _cli("start", "--data-dir", str(data), "--port", "0")
    try:
        assert r.returncode == 0, r.stderr
        fields = dict(kv.split("=", 1) for kv in r.stdout.split())
        assert set(fields) == {"bootstrap", "pid", "log"}
        assert Path(fields["log"]).exists()
        st = _cli("status", "--data-dir", str(data), "--bootstrap")
        assert st.returncode == 0 and st.stdout.strip() == fields["bootstrap"]
        again = _cli("start", "--data-dir", str(data), "--port", "0")
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stop = _cli("stop", "--data-dir", str(data))
    assert stop.returncode == 0, stop.stderr
    assert not procs.pid_alive(int(fields["pid"]))
