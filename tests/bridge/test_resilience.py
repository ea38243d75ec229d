"""No silent loss: source restarts, broker outages and oversize frames are all accounted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from pvaflow.ops.broker import LocalBroker

from .conftest import BridgeProcess, read_topic

pytestmark = pytest.mark.integration


def test_sim_server_restart_reconnects_and_counts_the_gap(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    topic = make_topic(1)
    sim = sim_server(nx=16, ny=16, fps=20, start_delay=4)
    bridge = bridge_process("--input-channel", sim.channel, "--topic", topic)
    bridge.wait_for(f"channel {sim.channel} connected", timeout=20)
    bridge.wait_stats("received", 60)                 # ~3 s of the first run
    sim.restart()                                     # uniqueIds start again at 1
    bridge.wait_for("restarted (uniqueId", timeout=30)
    bridge.wait_stats("received", 60 + 20)
    s = bridge.final()
    assert s["restarts"] == 1
    assert s["received"] == s["delivered"] and s["dropped"] == 0
    ids = [r.uid for r in sorted(read_topic(kafka_bootstrap, topic, expect=s["delivered"]),
                                 key=lambda r: r.offset)]
    assert len(ids) == s["delivered"]
    cut = next(i for i in range(1, len(ids)) if ids[i] <= ids[i - 1])
    first_run, second_run = ids[:cut], ids[cut:]
    assert first_run == list(range(first_run[0], first_run[-1] + 1))
    assert second_run == list(range(second_run[0], second_run[-1] + 1))
    # the gap: new-run frames published before the bridge reconnected, counted as missed
    assert s["missed"] == second_run[0] - 1
    print(f"reconnected at uniqueId {second_run[0]}; missed {s['missed']}")


def test_broker_outage_buffers_then_delivers_and_counts_the_overflow(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    private_broker: Callable[..., LocalBroker],
) -> None:
    kafka = private_broker()
    sim = sim_server(nx=128, ny=128, datatype="uint16", fps=50, start_delay=3)  # 32 KiB frames
    bridge = bridge_process(
        "--input-channel", sim.channel, "--topic", "outage", "--max-buffer-wait", "0.5",
        "-X", "queue.buffering.max.kbytes=4096",   # room for ~120 frames: < 10 s at 50 fps
        bootstrap=kafka.bootstrap)
    bridge.wait_for(f"channel {sim.channel} connected", timeout=20)
    bridge.wait_stats("delivered", 50)
    kafka.stop()
    time.sleep(10)
    kafka.start()
    time.sleep(3)
    bridge.wait_for("producer buffer has room again", timeout=60)
    bridge.wait_stats("delivered", 700)
    s = bridge.final()
    assert s["received"] == s["delivered"] + s["dropped"]          # exactly
    assert s["dropped"] == s["dropped_by_reason"]["buffer_full"] > 0
    # nothing lost at the source during the outage (a bridge that connected after the first
    # frames on a loaded machine counts those as missed at start, not as gaps)
    assert s["delivery_errors"] == 0 and s["missed"] == s["missed_at_start"]
    records = read_topic(kafka.bootstrap, "outage", expect=s["delivered"], timeout=60)
    ids = [r.uid for r in records]
    assert len(ids) == len(set(ids)) == s["delivered"]              # idempotent: no duplicates
    assert "producer buffer full for 0.5 s" in bridge.stderr


def test_frame_larger_than_the_topic_limit_is_a_counted_clear_error(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic(1, config={"max.message.bytes": "100000"})
    sim = sim_server(nx=256, ny=256, datatype="uint16", fps=10, start_delay=3)  # 128 KiB
    bridge = bridge_process("--input-channel", sim.channel, "--topic", topic)
    bridge.wait_for(f"channel {sim.channel} connected", timeout=20)
    bridge.wait_for("accepts at most 100000", timeout=20)
    bridge.wait_stats("received", 10)
    s = bridge.final()
    assert s["dropped_by_reason"]["too_large"] == s["received"] == s["dropped"] >= 10
    assert s["delivered"] == 0
    assert bridge.stderr.count("accepts at most") == 1               # said once, clearly
    assert "Traceback" not in bridge.stderr


def test_existing_topic_with_another_partition_count_is_refused(
    bridge_process: Callable[..., BridgeProcess], make_topic: Callable[..., str],
) -> None:
    topic = make_topic(3)
    bridge = bridge_process("--input-channel", "nobody:image", "--topic", topic,
                            "--partitions", "2")
    assert bridge.proc.wait(60) == 2
    assert f"topic {topic!r} exists with 3 partitions, not 2" in bridge.stderr
