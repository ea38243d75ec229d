"""Frames of a few hundred KB: the bridge's producer takes a batch size that holds about two
of them (pvaflow.kafka.settings.batch_size_for) once the first frame comes, and every frame
still arrives, in order, with gap-free sequence numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .conftest import BridgeProcess, by_partition, read_topic

pytestmark = pytest.mark.integration

FRAMES = 20


def test_the_bridge_sizes_its_batches_by_the_first_frame(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    sim = sim_server(nx=640, ny=640, datatype="uint8", fps=20, total_frames=FRAMES, gated=True)
    topic = make_topic(2)
    bridge = bridge_process("--input-channel", sim.channel, "--topic", topic,
                            "--partitions", "2")
    bridge.wait_for(f"channel {sim.channel} connected", timeout=120)
    sim.release()
    bridge.wait_stats("delivered", FRAMES, timeout=120)
    bridge.wait_for("producer batch.size 1048576", timeout=30)
    s = bridge.final()
    assert (s["received"], s["delivered"], s["missed"], s["dropped"]) == (FRAMES, FRAMES, 0, 0)
    records = read_topic(kafka_bootstrap, topic, expect=FRAMES, timeout=90)
    assert sorted(r.uid for r in records) == list(range(1, FRAMES + 1))
    for part, ids in by_partition(records).items():
        assert ids == sorted(ids), f"partition {part} out of order: {ids}"
        seqs = [int(r.header("pf.seq") or b"-1") for r in records if r.partition == part]
        assert seqs == list(range(len(seqs))), f"partition {part}: pf.seq {seqs}"
