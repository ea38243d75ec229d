"""``pvaflow status`` and ``pvaflow control`` against real consumers: configure changes every
member's plugin, stop ends one cleanly, silent and unknown targets are reported."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from pvaflow.ops import control_cli
from pvaflow.ops.monitor import latest_from_messages, pipeline_view
from pvaflow.ops.status_cli import render

from pvaflow.status import StatusSchema
from tests.collectors.helpers import (  # noqa: F401 (fixtures)
    PLUGIN,
    ctl,
    procs,
    produce_frames,
    read_records,
    wait_for,
)

SCHEMA = StatusSchema("consumer", "received", "processed", {"dlq": "dlq"},
                      extra=("errors", "outputs"))


def test_render_prints_one_row_per_stage_with_losses():
    msg = {"type": "status", "component": "consumer/g/1", "kind": "consumer", "group": "g",
           "id": "1", "time": 0, "stats": {"received": 5, "processed": 4, "dlq": 1,
                                           "errors": 2, "outputs": 0},
           "schema": SCHEMA.to_json()}
    text = render(pipeline_view(latest_from_messages([msg]), now=1), components=True)
    assert "consumer/g  0/1" not in text and "consumer/g" in text and "dlq=1" in text
    assert "lost in the pipeline: 1" in text and "consumer/g/1" in text
    header, row = text.splitlines()[:2]
    assert header.split()[-1] == "OTHER" and row.split()[-1] == "errors=2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("argv", [
    ["status"],
    ["status", "--from-topic"],
    ["control", "all", "get_stats"],
    ["control", "all", "get_stats", "--from-topic"],
])
def test_unreachable_broker_is_one_line_naming_the_bootstrap(argv):
    bootstrap, monitor = f"127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pvaflow.cli", *argv, "-b", bootstrap,
                        "--monitor", monitor], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert r.returncode == 3, r.stderr
    naming = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(naming) == 1 and "error:" in naming[0] and bootstrap in naming[0], r.stderr
    assert "Traceback" not in r.stderr and "KafkaError{" not in r.stderr
    assert "status topic pvaflow.status could not be read" in naming[0]
    if "--from-topic" not in argv:  # the monitor's own error is kept, not dropped
        assert f"the monitor at {monitor} did not answer" in naming[0]
    assert elapsed < 15


def test_unknown_command_and_bad_args_are_refused_before_sending(capsys):
    for argv in (["all", "frob"], ["all", "configure", "[1]"]):
        with pytest.raises(SystemExit) as exc:
            control_cli.main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'frob'" in err and "ARGS must be a JSON object" in err


# Where every component is expected to answer: the command returns with the last reply, so a
# bound generous for a loaded machine costs nothing (the default is 10 s).
REPLIES = ("--timeout", "90")


def cli(b: str, opts: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvaflow.cli", *args, "--from-topic", "-b", b,
                           *opts], capture_output=True, text=True, timeout=180)


@pytest.mark.integration
def test_control_configures_every_member_stops_one_and_names_the_silent(
        kafka_bootstrap, make_topic, procs, ctl):  # noqa: F811 (fixtures)
    frames, processed = make_topic(4), make_topic(1)
    members = {cid: procs(f"consumer{cid}", "pvaflow-consumer", "--input-topic", frames,
                          "--output-topic", processed, "--group", "cg", "--consumer-id", cid,
                          "--processor-file", PLUGIN, "--processor-class", "Jitter",
                          "--report-period", "1", "-b", kafka_bootstrap, *ctl)
               for cid in ("1", "2")}
    produce_frames(kafka_bootstrap, frames, range(1, 41), partitions=4)
    wait_for(lambda: len(read_records(kafka_bootstrap, processed, lambda r: len(r) >= 40, 3))
             >= 40, 60, "first frames processed")
    wait_for(lambda: "cg  2/2" in cli(kafka_bootstrap, ctl[2:], "status").stdout, 30,
             "both members in pvaflow status")

    r = cli(kafka_bootstrap, ctl, "control", "cg", "configure", '{"tag": "X"}', *REPLIES)
    assert r.returncode == 0, r.stderr
    assert "consumer/cg/1: ok" in r.stdout and "consumer/cg/2: ok" in r.stdout
    produce_frames(kafka_bootstrap, frames, range(41, 81), partitions=4)
    later = read_records(kafka_bootstrap, processed, lambda r: len(r) >= 80, 60)[40:]
    tags = {dict(m.headers()).get("pf.attrs", b"") for m in later}
    assert len(later) == 40 and all(b'"tag"' in t and b'"X"' in t for t in tags)
    r = cli(kafka_bootstrap, ctl, "control", "cg", "get_stats", "--json", *REPLIES)
    stats = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(s["result"]["plugin"]["tag"] for s in stats) == ["X", "X"]

    r = cli(kafka_bootstrap, ctl, "control", "consumer/cg/1", "stop", *REPLIES)
    assert r.returncode == 0 and "consumer/cg/1: ok" in r.stdout
    assert members["1"].wait(30) == 0
    members["2"].kill()  # silent from now on, but its last status says running
    r = cli(kafka_bootstrap, ctl, "control", "cg", "get_stats", "--timeout", "3")
    assert r.returncode == 1
    assert "no reply within 3 s from: consumer/cg/2" in r.stderr
    r = cli(kafka_bootstrap, ctl, "control", "nosuch", "get_stats")
    assert r.returncode == 2 and "unknown target 'nosuch'" in r.stderr


@pytest.mark.integration
def test_status_from_topic_uses_the_schema_and_names_a_missing_topic(
        kafka_bootstrap, ctl):  # noqa: F811 (fixture)
    from pvaflow.kafka.client import Kafka

    status_topic = ctl[3]
    r = cli(kafka_bootstrap, ctl[2:], "status")
    assert r.returncode == 1 and f"status topic {status_topic}" in r.stderr
    assert "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    producer = Kafka(kafka_bootstrap).producer()
    msg = {"v": 1, "type": "status", "component": "consumer/sg/1", "kind": "consumer",
           "group": "sg", "id": "1", "time": time.time(), "final": False,
           "stats": {"received": 12, "processed": 11, "dlq": 1, "errors": 3, "outputs": 11},
           "schema": SCHEMA.to_json()}
    producer.produce(status_topic, key=b"consumer/sg/1", value=json.dumps(msg).encode())
    assert producer.flush(30) == 0
    r = cli(kafka_bootstrap, ctl[2:], "status", "--json")
    assert r.returncode == 0, r.stderr
    (stage,) = json.loads(r.stdout)["stages"]
    assert (stage["frames_in"], stage["frames_out"], stage["lost"]) == (12, 11, {"dlq": 1})
    assert stage["extras"] == {"errors": 3, "outputs": 11}


@pytest.mark.integration
def test_status_reads_a_topic_that_is_written_all_the_time(kafka_bootstrap, ctl):  # noqa: F811
    """Many components report every second: the topic is appended to between any two
    fetches, and librdkafka's end-of-partition event may never come. The read ends at the
    high watermark taken when it starts (before: "could not be read to its end" every time
    with 5 writers at 20 Hz, and beside CPU hogs over SASL_SSL at 1 Hz)."""
    import threading

    from confluent_kafka import Producer

    status_topic = ctl[3]
    stop = threading.Event()

    def write(i: int) -> None:
        p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        while not stop.is_set():
            msg = {"v": 1, "type": "status", "component": f"consumer/busy/{i}",
                   "kind": "consumer", "group": "busy", "id": str(i), "time": time.time(),
                   "final": False, "stats": {"received": 1, "processed": 1}}
            p.produce(status_topic, json.dumps(msg).encode(), key=str(i).encode())
            p.poll(0)
            stop.wait(0.05)
        p.flush(10)

    writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(5)]
    for w in writers:
        w.start()
    try:
        wait_for(lambda: "busy" in cli(kafka_bootstrap, ctl[2:], "status", "--timeout",
                                       "5").stdout, 120, "a status read while written")
        r = cli(kafka_bootstrap, ctl[2:], "status", "--timeout", "60")
        assert r.returncode == 0 and "busy  5/5" in r.stdout, r.stderr
    finally:
        stop.set()
        for w in writers:
            w.join(15)
