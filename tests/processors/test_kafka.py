"""The consumer against a real broker: DLQ, plugin routes, encryption chain, topic control.

Frames are fed through the codec (as the bridge writes them); the seed examples with the real
bridge and simulator are in test_seed.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from pvaflow.codec import decode
from pvaflow.control import command_message
from pvaflow.testing import make_frames

from .conftest import HERE, Proc, feed, produce_raw, read_exactly, read_topic, wait_for

pytestmark = pytest.mark.integration

KEY_HEX = bytes(range(100, 132)).hex()


def _decode(r) -> np.ndarray:  # type: ignore[no-untyped-def]
    return decode(r.uid.to_bytes(8, "big"), r.value, list(r.headers.items())).array


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_plugin_failures_go_to_the_dlq_and_processing_goes_on(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc], exactly_once: bool) -> None:
    """With --exactly-once the dead letters are written in the outputs' transaction: a
    read_committed reader sees each once (and only once the transaction commits)."""
    src, out, dlq = make_topic(2), make_topic(suffix="out"), make_topic(suffix="dlq")
    feed(kafka_bootstrap, src, make_frames(100, (8, 8)), lambda f: f.unique_id % 2)
    produce_raw(kafka_bootstrap, src, b"not a frame", b"junk", partition=1)
    mode = ["--exactly-once"] if exactly_once else []
    c = consumer("--input-topic", src, "--output-topic", out, "--dlq-topic", dlq,
                 "--processor", "flaky_plugin:EveryTenthFails", "--runtime", "40",
                 "--report-period", "1", *mode, env={"PYTHONPATH": str(HERE)})
    outputs = read_exactly(kafka_bootstrap, out, 90, read_committed=exactly_once)
    dead = read_exactly(kafka_bootstrap, dlq, 11, read_committed=exactly_once)
    if exactly_once:  # transactional writes: commit markers take offsets beside the records
        from confluent_kafka import Consumer

        from pvaflow.kafka.topics import watermarks

        probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "wm"})
        try:
            assert watermarks(probe, dlq)[1] > 11
        finally:
            probe.close()
    c.stop()
    assert sorted(r.uid for r in outputs) == [i for i in range(1, 101) if i % 10]
    assert len(dead) == 11
    by_stage: dict[str, list] = {}
    for r in dead:
        by_stage.setdefault(r.headers["pf.dlq.stage"].decode(), []).append(r)
    assert sorted(r.uid for r in by_stage["process"]) == list(range(10, 101, 10))
    for r in by_stage["process"]:
        assert r.headers["pf.dlq.reason"] == f"frame {r.uid} is a multiple of ten".encode()
        assert r.headers["pf.dlq.error"] == b"RuntimeError"
        assert r.headers["pf.dlq.origin"].startswith(src.encode())
        assert _decode(r).shape == (8, 8)  # the original record, replayable
    [junk] = by_stage["decode"]
    assert junk.value == b"not a frame" and b"pf.v is missing" in junk.headers["pf.dlq.reason"]
    log = c.text()
    assert "'errors': 10" in log and "'dlq': 11" in log and "'decode_errors': 1" in log
    assert "'sequence_gaps': 0" in log


def test_pvapy_user_data_processor_runs_unchanged(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    frames = make_frames(20, (6, 10), "uint16")
    feed(kafka_bootstrap, src, frames)
    c = consumer("--input-topic", src, "--output-topic", out, "--processor-file",
                 str(HERE / "pvapy_rotate_plugin.py"), "--processor-class",
                 "HpcAdImageProcessor", "--runtime", "30", "--report-period", "1")
    got = read_exactly(kafka_bootstrap, out, 20)
    c.stop()
    assert [r.uid for r in got] == list(range(1, 21))
    for f, r in zip(frames, got, strict=True):
        np.testing.assert_array_equal(_decode(r), f.array.T)
    assert "'nProcessed': 20" in c.text()  # the plugin's own getStats, in the report


def test_entry_point_plugin_from_an_installed_package(
        kafka_bootstrap: str, make_topic: Callable[..., str], consumer: Callable[..., Proc],
        plugin_package: str) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    frames = make_frames(10, (4, 4), "uint16")
    feed(kafka_bootstrap, src, frames)
    c = consumer("--input-topic", src, "--output-topic", out, "--processor", plugin_package,
                 "--processor-args", '{"factor": 3}', "--runtime", "30")
    got = read_exactly(kafka_bootstrap, out, 10)
    c.stop()
    for f, r in zip(frames, got, strict=True):
        np.testing.assert_array_equal(_decode(r), (f.array.astype(np.int64) * 3)
                                      .astype(np.uint16))


def test_encrypt_decrypt_chain_is_bit_identical_and_tampering_is_rejected(
        kafka_bootstrap: str, make_topic: Callable[..., str], consumer: Callable[..., Proc],
        tmp_path: Path) -> None:
    src, enc, dec = make_topic(), make_topic(suffix="enc"), make_topic(suffix="dec")
    dlq = make_topic(suffix="dlq")
    keyfile = tmp_path / "frames.key"
    keyfile.write_text(KEY_HEX)
    frames = make_frames(30, (32, 16), "float32") + make_frames(10, (8, 8), "int64",
                                                                 first_id=31)
    feed(kafka_bootstrap, src, frames)
    e = consumer("--input-topic", src, "--output-topic", enc, "--processor", "encrypt",
                 "--processor-args", json.dumps({"key_file": str(keyfile)}), "--runtime", "60",
                 "--log-level", "debug", name="encryptor")
    d = consumer("--input-topic", enc, "--output-topic", dec, "--dlq-topic", dlq,
                 "--processor", "decrypt", "--runtime", "60", "--log-level", "debug",
                 env={"PVAFLOW_FRAME_KEY": KEY_HEX}, name="decryptor")
    encrypted = read_exactly(kafka_bootstrap, enc, 40)
    assert all(r.headers["pf.codec"] == b"aes-gcm" for r in encrypted)
    decrypted = read_exactly(kafka_bootstrap, dec, 40)
    assert [r.uid for r in decrypted] == list(range(1, 41))
    for f, r in zip(frames, decrypted, strict=True):
        assert "pf.codec" not in r.headers
        assert r.value == f.array.tobytes()  # bit-identical, dtype and shape restored
        assert _decode(r).dtype == f.array.dtype and _decode(r).shape == f.array.shape
    # Tamper with one encrypted record (one payload bit) and append it to the encrypted topic.
    bad = encrypted[5]
    value = bytearray(bad.value)
    value[40] ^= 0x80
    produce_raw(kafka_bootstrap, enc, bytes(value), bad.uid.to_bytes(8, "big"),
                list(bad.headers.items()))
    [rejected] = read_exactly(kafka_bootstrap, dlq, 1)
    assert rejected.uid == bad.uid
    assert b"failed authentication" in rejected.headers["pf.dlq.reason"]
    time.sleep(1)
    e.stop()
    d.stop()
    assert KEY_HEX not in e.text() + d.text()  # debug logs never show the key


def test_control_topic_commands_reach_the_plugin_and_stop_ends_the_process(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    control, status = make_topic(suffix="control"), make_topic(suffix="status")
    group = f"ctl-{uuid.uuid4().hex[:6]}"
    feed(kafka_bootstrap, src, make_frames(5, (4, 4)))
    c = consumer("--input-topic", src, "--output-topic", out, "--group", group,
                 "--processor-file", str(HERE / "pvapy_rotate_plugin.py"),
                 "--processor-class", "HpcAdImageProcessor", "--control-topic", control,
                 "--status-topic", status, "--report-period", "1", "--consumer-id", "7")
    read_topic(kafka_bootstrap, out, count=5, timeout=60)
    me = f"consumer/{group}/7"

    def status_messages() -> list[dict]:
        recs = read_topic(kafka_bootstrap, status, count=10**9, timeout=2)
        return [json.loads(r.value) for r in recs]

    wait_for(lambda: any(m["type"] == "status" and m["component"] == me and
                         m["stats"]["processed"] == 5 for m in status_messages()),
             30, "a status report")
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = {}
    for target, command, args in ((me, "configure", {"x": 100}), (group, "get_stats", {}),
                                  ("other-group", "stop", {}), ("all", "reset_stats", {})):
        msg = command_message(target, command, args)
        sent[command] = msg["request_id"]
        p.produce(control, json.dumps(msg).encode())
    p.flush(10)

    def replies() -> dict[str, dict]:
        return {m["request_id"]: m for m in status_messages() if m["type"] == "reply"}

    got = wait_for(lambda: (r := replies()) and len(r) >= 3 and r, 30, "three replies")
    assert got[sent["configure"]]["ok"]
    stats = got[sent["get_stats"]]["result"]
    assert stats["processed"] == 5 and stats["plugin"]["lastConfigX"] == 100
    assert sent["stop"] not in got  # addressed to another group
    assert got[sent["reset_stats"]]["ok"]
    assert c.popen.poll() is None
    p.produce(control, json.dumps(command_message("consumer", "stop")).encode())
    p.flush(10)
    assert c.wait(30) == 0
    # one read of the status topic may end before a slow broker serves it all: wait for it
    final = wait_for(lambda: [m for m in status_messages()
                              if m["type"] == "status" and m.get("final")], 30, "a final status")
    assert final[-1]["stats"]["processed"] == 0  # reset_stats took effect


def test_codec_encoded_output_keeps_key_as_unique_id(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    """Outputs are keyed by uniqueId (8-byte big-endian) and say which consumer made them."""
    src, out = make_topic(), make_topic(suffix="out")
    frames = make_frames(3, (2, 2))
    feed(kafka_bootstrap, src, frames)
    c = consumer("--input-topic", src, "--output-topic", out, "--processor", "passthrough",
                 "--group", "gk", "--consumer-id", "4", "--runtime", "30")
    got = read_exactly(kafka_bootstrap, out, 3)
    c.stop()
    assert [r.key for r in got] == [(1).to_bytes(8, "big"), (2).to_bytes(8, "big"),
                                    (3).to_bytes(8, "big")]
    assert [r.proc for r in got] == ["gk/4"] * 3
    for f, r in zip(frames, got, strict=True):
        np.testing.assert_array_equal(_decode(r), f.array)


def test_large_outputs_get_a_producer_with_smaller_batches(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    """Frames of 400 KB: the consumer's producer takes about two to a request (the batch size
    follows the first output's size) and every output is still bit-identical, in order."""
    src, out = make_topic(), make_topic(suffix="out")
    frames = make_frames(12, (640, 640))
    feed(kafka_bootstrap, src, frames)
    c = consumer("--input-topic", src, "--output-topic", out, "--processor", "passthrough",
                 "--runtime", "60")
    got = read_exactly(kafka_bootstrap, out, 12)
    wait_for(lambda: "producer batch.size 1048576" in c.text(), 30,
             "the consumer to log its batch size")
    c.stop()
    assert [r.uid for r in got] == [f.unique_id for f in frames]
    for f, r in zip(frames, got, strict=True):
        np.testing.assert_array_equal(_decode(r), f.array)


def test_prometheus_metrics_count_frames_and_latency(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    import urllib.request

    from .conftest import free_port

    src, out = make_topic(), make_topic(suffix="out")
    feed(kafka_bootstrap, src, make_frames(12, (4, 4)))
    port = free_port()
    c = consumer("--input-topic", src, "--output-topic", out, "--processor", "rotate",
                 "--group", "gm", "--metrics-port", str(port), "--runtime", "60")
    read_topic(kafka_bootstrap, out, count=12, timeout=60)

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    labels = f'component="consumer",consumer_id="1",group="gm",topic="{src}"'
    text = wait_for(lambda: (t := scrape()) and
                    f"pvaflow_frames_processed_total{{{labels}}} 12.0" in t and t, 30,
                    "12 processed frames on /metrics")
    c.stop()
    assert f"pvaflow_frames_out_total{{{labels}}} 12.0" in text
    assert f"pvaflow_processing_latency_seconds_count{{{labels}}} 12.0" in text
    assert f"pvaflow_sequence_gaps_total{{{labels}}} 0.0" in text
    assert "pvaflow_end_to_end_latency_seconds_bucket" in text
