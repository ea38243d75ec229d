import json
import os
import shutil
from pathlib import Path

from confluent_kafka import Producer

from pvaflow.metrics import KafkaThreadsCpu, consumer_lag, thread_cpu


def _stats(**parts):
    return json.dumps({"topics": {"frames": {"partitions": parts}}})


def test_lag_falls_back_to_committed_lag_when_nothing_is_stored():
    stats = _stats(**{
        "0": {"fetch_state": "active", "consumer_lag_stored": -1, "consumer_lag": 40},
        "1": {"fetch_state": "active", "consumer_lag_stored": 7, "consumer_lag": 9},
    })
    assert consumer_lag(stats) == {("frames", 0): 40, ("frames", 1): 7}


def test_unassigned_and_internal_partitions_are_left_out():
    stats = _stats(**{
        "-1": {"fetch_state": "active", "consumer_lag": 5},
        "2": {"fetch_state": "none", "consumer_lag": 5},
        "3": {"fetch_state": "active", "consumer_lag_stored": -1, "consumer_lag": -1},
    })
    assert consumer_lag(stats) == {}


def _stat(tid: int, name: str, utime: int, stime: int, start: int) -> str:
    # /proc/<pid>/task/<tid>/stat: utime, stime and starttime are fields 14, 15 and 22
    fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 6 + [str(start)] + ["0"] * 5
    return f"{tid} ({name}) {' '.join(fields)}\n"


def _write(task_dir: Path, tid: int, name: str, utime: int, stime: int, start: int) -> None:
    (task_dir / str(tid)).mkdir(exist_ok=True)
    (task_dir / str(tid) / "stat").write_text(_stat(tid, name, utime, stime, start))


def _value(c: KafkaThreadsCpu) -> float:
    [family] = list(c.collect())
    [sample] = family.samples
    assert sample.name == "pvaflow_kafka_threads_cpu_seconds_total"
    assert sample.labels == {"component": "bridge"}
    return float(sample.value)


def test_kafka_threads_cpu_counts_librdkafka_threads_only_and_never_goes_back(
        tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    _write(tmp_path, 10, "python", 500, 500, 1)
    _write(tmp_path, 11, "rdk:broker1", 3 * tick, tick, 2)   # 4 s
    _write(tmp_path, 12, "rdk:main", tick, 0, 2)             # 1 s
    c = KafkaThreadsCpu("bridge", task_dir=str(tmp_path))
    assert _value(c) == 5.0
    # the broker thread ends (its client closed): its 4 s stay counted
    shutil.rmtree(tmp_path / "11")
    _write(tmp_path, 12, "rdk:main", 2 * tick, 0, 2)
    assert _value(c) == 6.0
    # a new thread reuses id 11 (another start time): counted from its own zero
    _write(tmp_path, 11, "rdk:broker2", tick // 2, 0, 9)
    assert _value(c) == 6.5


def test_kafka_threads_cpu_finds_a_real_clients_threads() -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})  # no broker needed
    try:
        names = {name for _, name, _ in thread_cpu()}
        assert any(n.startswith("rdk:") for n in names), names
        assert _value(KafkaThreadsCpu("bridge")) >= 0.0
    finally:
        producer.purge()
        del producer
